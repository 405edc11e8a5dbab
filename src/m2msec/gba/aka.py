"""3G Authentication and Key Agreement (3GPP TS 33.102 6.3) on MILENAGE, both sides.

The home network (our HSS simulator, :class:`Hss`) makes an authentication vector
(TS 33.102 6.3.2)::

    SQN (48 bits), RAND (128 bits, random)
    MAC-A = f1_K(SQN || RAND || AMF)     XRES = f2_K(RAND)   CK = f3_K(RAND)
    IK = f4_K(RAND)                      AK = f5_K(RAND)
    AUTN  = SQN xor AK || AMF || MAC-A   (16 octets)
    AV    = RAND || XRES || CK || IK || AUTN

The USIM (:class:`Usim`, 6.3.3) recovers SQN = (SQN xor AK) xor f5_K(RAND), checks MAC-A
(else :class:`MacFailure`) and then the freshness of SQN (else :class:`SyncFailure`
carrying AUTS), and answers RES, CK, IK. A resynchronisation token (6.3.3, 6.3.5) is::

    AUTS = SQN_MS xor f5*_K(RAND) || MAC-S,  MAC-S = f1*_K(SQN_MS || RAND || AMF = 0000)

from which the HSS (:meth:`Hss.resync`) recovers SQN_MS, checks MAC-S and resets its
counter so that the next vector is accepted.

SQN and freshness (TS 33.102 Annex C, our profile of it): SQN = SEQ || IND with an
``ind_bits``-bit index (default 5, Annex C.3.2's example; 0 gives a plain counter). The
HSS gives every new vector SEQ = SEQ_HE + 1 and the next IND in turn (C.3.2). The USIM
keeps, per IND value, the highest SEQ it accepted (the array of C.2.2 / C.3.3) and accepts
a vector when its SEQ is above the entry of its IND (so up to 2**ind_bits vectors may
arrive out of order) and not more than ``delta`` (Δ, 2**28 by default, C.2.2's wrap-around
protection) above the highest SEQ accepted so far. The optional age limit L of C.2.2 is
not implemented. SQN_MS in AUTS is the highest SQN accepted so far (C.3.4 and 6.3.5); a
USIM that never accepted a vector sends the SQN it was provisioned with.

Secrets are compared with :func:`hmac.compare_digest`; error messages never carry keys,
RES or MACs.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from typing import Final, Protocol

from m2msec.crypto.milenage import AMF_LENGTH, KEY_LENGTH, RAND_LENGTH, SQN_LENGTH, Milenage
from m2msec.errors import M2MSecError

__all__ = [
    "AMF_RESYNC",
    "AUTN_LENGTH",
    "AUTS_LENGTH",
    "DEFAULT_AMF",
    "DEFAULT_DELTA",
    "DEFAULT_IND_BITS",
    "AkaError",
    "AkaResult",
    "AuthVector",
    "Hss",
    "MacFailure",
    "SqnStore",
    "SubscriberKeys",
    "SyncFailure",
    "Usim",
    "make_autn",
    "make_auts",
    "next_sqn",
    "open_autn",
    "open_auts",
    "sqn_bytes",
    "sqn_int",
]

AUTN_LENGTH: Final = 16
AUTS_LENGTH: Final = 14
#: AMF of the resynchronisation MAC-S (TS 33.102 6.3.3: a dummy value of all zeros).
AMF_RESYNC: Final = b"\x00\x00"
#: AMF of our vectors: the AMF separation bit (TS 33.102 Annex H) is 0, as GBA vectors are
#: not for E-UTRAN; the other bits are operator-specific and left 0.
DEFAULT_AMF: Final = b"\x00\x00"
DEFAULT_IND_BITS: Final = 5
#: Δ of TS 33.102 C.2.2 (the largest accepted jump of SEQ).
DEFAULT_DELTA: Final = 1 << 28
SQN_MAX: Final = (1 << 48) - 1


# ----------------------------------------------------------------------------- errors


class AkaError(M2MSecError):
    """An AKA run failed; the message is safe to log (no key material)."""


class MacFailure(AkaError):
    """MAC-A (at the USIM) or MAC-S (at the HSS) did not verify: the peer does not know K."""


class SyncFailure(AkaError):
    """The USIM found SQN out of range; ``auts`` (14 octets) lets the HSS resynchronise."""

    def __init__(self, auts: bytes, reason: str = "SQN out of range") -> None:
        super().__init__(f"synchronisation failure: {reason}")
        self.auts = auts


# ----------------------------------------------------------------------------- SQN helpers


def sqn_int(sqn: bytes | int) -> int:
    """SQN as an integer (from 6 octets or an int in range)."""
    if isinstance(sqn, int):
        if not 0 <= sqn <= SQN_MAX:
            raise ValueError("SQN is a 48-bit value")
        return sqn
    if len(sqn) != SQN_LENGTH:
        raise ValueError(f"SQN must be {SQN_LENGTH} octets, not {len(sqn)}")
    return int.from_bytes(sqn, "big")


def sqn_bytes(sqn: bytes | int) -> bytes:
    """SQN as 6 octets."""
    return sqn_int(sqn).to_bytes(SQN_LENGTH, "big")


def _check_ind_bits(ind_bits: int) -> int:
    if not 0 <= ind_bits <= 16:
        raise ValueError("ind_bits must be 0 to 16")
    return ind_bits


def next_sqn(last: int, ind_bits: int = DEFAULT_IND_BITS) -> int:
    """The SQN after ``last`` at the HSS: SEQ + 1 and the next IND (TS 33.102 C.3.2)."""
    _check_ind_bits(ind_bits)
    mask = (1 << ind_bits) - 1
    seq = (last >> ind_bits) + 1
    ind = ((last & mask) + 1) & mask
    value = (seq << ind_bits) | ind
    if value > SQN_MAX:
        raise AkaError("SQN exhausted: the 48-bit sequence number space is used up")
    return value


# ----------------------------------------------------------------------------- AUTN / AUTS


def _check_len(value: bytes, length: int, name: str) -> bytes:
    if len(value) != length:
        raise AkaError(f"{name} must be {length} octets, not {len(value)}")
    return bytes(value)


def make_autn(milenage: Milenage, rand: bytes, sqn: bytes, amf: bytes) -> tuple[bytes, bytes]:
    """(AUTN, AK): AUTN = SQN xor AK || AMF || MAC-A (TS 33.102 6.3.2)."""
    mac_a, _, _, _, ak = milenage.f1_f2345(rand, sqn, amf)
    concealed = bytes(a ^ b for a, b in zip(sqn, ak, strict=True))
    return concealed + amf + mac_a, ak


def open_autn(milenage: Milenage, rand: bytes, autn: bytes) -> tuple[bytes, bytes]:
    """Check AUTN (USIM side, 6.3.3) and return (SQN, AMF); :class:`MacFailure` if MAC-A
    does not verify."""
    autn = _check_len(autn, AUTN_LENGTH, "AUTN")
    _, _, _, ak = milenage.f2345(rand)
    sqn = bytes(a ^ b for a, b in zip(autn[:6], ak, strict=True))
    amf, mac_a = autn[6:8], autn[8:16]
    if not hmac.compare_digest(milenage.f1(rand, sqn, amf), mac_a):
        raise MacFailure("MAC-A does not verify: the network does not know this subscriber's key")
    return sqn, amf


def make_auts(milenage: Milenage, rand: bytes, sqn_ms: bytes) -> bytes:
    """AUTS = SQN_MS xor AK* || MAC-S with AMF = 0000 (TS 33.102 6.3.3)."""
    sqn_ms = sqn_bytes(sqn_ms)
    ak_star = milenage.f5star(rand)
    mac_s = milenage.f1star(rand, sqn_ms, AMF_RESYNC)
    return bytes(a ^ b for a, b in zip(sqn_ms, ak_star, strict=True)) + mac_s


def open_auts(milenage: Milenage, rand: bytes, auts: bytes) -> bytes:
    """SQN_MS from AUTS (HSS side, 6.3.5); :class:`MacFailure` if MAC-S does not verify."""
    auts = _check_len(auts, AUTS_LENGTH, "AUTS")
    ak_star = milenage.f5star(rand)
    sqn_ms = bytes(a ^ b for a, b in zip(auts[:6], ak_star, strict=True))
    if not hmac.compare_digest(milenage.f1star(rand, sqn_ms, AMF_RESYNC), auts[6:]):
        raise MacFailure("MAC-S of AUTS does not verify")
    return sqn_ms


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class AkaResult:
    """What the USIM answers to a valid challenge: RES, CK and IK (never in repr)."""

    res: bytes = field(repr=False)
    ck: bytes = field(repr=False)
    ik: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthVector:
    """An authentication vector (TS 33.102 6.3.2); only RAND and AUTN appear in repr."""

    rand: bytes
    autn: bytes
    xres: bytes = field(repr=False)
    ck: bytes = field(repr=False)
    ik: bytes = field(repr=False)


# ----------------------------------------------------------------------------- the USIM


class Usim:
    """A USIM-like credential of Entity A: K, OPc and the SQN freshness state.

    ``sqn`` is SQN_MS, the highest sequence number accepted so far (6 octets or an int;
    provision it equal to the HSS's SQN). ``amf``, when given, is the only AMF accepted in
    AUTN (after MAC-A verified; a mismatch raises :class:`AkaError`); None accepts any.
    See the module docstring for ``ind_bits`` and ``delta``. Not thread-safe.
    """

    def __init__(
        self,
        k: bytes,
        opc: bytes,
        sqn: bytes | int = 0,
        amf: bytes | None = None,
        *,
        ind_bits: int = DEFAULT_IND_BITS,
        delta: int = DEFAULT_DELTA,
    ) -> None:
        _check_len(k, KEY_LENGTH, "K")
        _check_len(opc, KEY_LENGTH, "OPc")
        if amf is not None:
            _check_len(amf, AMF_LENGTH, "AMF")
        if delta < 1:
            raise ValueError("delta must be positive")
        self._milenage = Milenage(k, opc)
        self.amf = None if amf is None else bytes(amf)
        self.ind_bits = _check_ind_bits(ind_bits)
        self.delta = delta
        start = sqn_int(sqn)
        self._highest = start
        seq = start >> ind_bits
        self._seq_ms = [seq] * (1 << ind_bits)

    def __repr__(self) -> str:
        return f"Usim(<K and OPc hidden>, sqn_ms={self.sqn_ms.hex()})"

    @property
    def sqn_ms(self) -> bytes:
        """The highest SQN accepted so far (what AUTS carries)."""
        return sqn_bytes(self._highest)

    def _fresh(self, sqn: int) -> str | None:
        seq = sqn >> self.ind_bits
        ind = sqn & ((1 << self.ind_bits) - 1)
        if seq <= self._seq_ms[ind]:
            return "SQN already used or older than one accepted (replay?)"
        if seq - (self._highest >> self.ind_bits) > self.delta:
            return "SQN too far ahead of the last one accepted"
        return None

    def authenticate(self, rand: bytes, autn: bytes) -> AkaResult:
        """Run the USIM side of AKA on (RAND, AUTN) (TS 33.102 6.3.3).

        Raises :class:`MacFailure` (the network is not authentic), :class:`SyncFailure`
        with AUTS (SQN out of range) or :class:`AkaError` (malformed input, AMF refused).
        """
        rand = _check_len(rand, RAND_LENGTH, "RAND")
        sqn_b, amf = open_autn(self._milenage, rand, autn)
        if self.amf is not None and not hmac.compare_digest(amf, self.amf):
            raise AkaError(f"AMF {amf.hex()} is not accepted by this USIM")
        sqn = int.from_bytes(sqn_b, "big")
        reason = self._fresh(sqn)
        if reason is not None:
            raise SyncFailure(make_auts(self._milenage, rand, self.sqn_ms), reason)
        seq = sqn >> self.ind_bits
        self._seq_ms[sqn & ((1 << self.ind_bits) - 1)] = seq
        if seq > self._highest >> self.ind_bits:
            self._highest = sqn
        res, ck, ik, _ = self._milenage.f2345(rand)
        return AkaResult(res, ck, ik)


# ----------------------------------------------------------------------------- the HSS


@dataclass(frozen=True, slots=True)
class SubscriberKeys:
    """What the HSS needs of a subscriber to make vectors (K, OPc never in repr)."""

    impi: str
    k: bytes = field(repr=False)
    opc: bytes = field(repr=False)
    amf: bytes = DEFAULT_AMF


class SqnStore(Protocol):
    """The part of the subscriber store the HSS uses (see :mod:`m2msec.gba.subscribers`)."""

    def subscriber_keys(self, impi: str) -> SubscriberKeys:
        """K, OPc and AMF of ``impi``; raises :class:`~m2msec.errors.UnknownCredentialError`."""
        ...

    def advance_sqn(self, impi: str, ind_bits: int) -> int:
        """Atomically move SQN_HE to :func:`next_sqn` of it and return the new value."""
        ...

    def reset_sqn(self, impi: str, sqn_ms: int) -> None:
        """Set SQN_HE to ``sqn_ms`` (resynchronisation, TS 33.102 6.3.5)."""
        ...


class Hss:
    """The HSS/AuC simulator: authentication vectors and resynchronisation on a store.

    ``subscriber`` arguments are IMPIs (or :class:`SubscriberKeys`, whose IMPI is used).
    """

    def __init__(self, store: SqnStore, *, ind_bits: int = DEFAULT_IND_BITS) -> None:
        self.store = store
        self.ind_bits = _check_ind_bits(ind_bits)

    def _keys(self, subscriber: str | SubscriberKeys) -> SubscriberKeys:
        impi = subscriber.impi if isinstance(subscriber, SubscriberKeys) else subscriber
        return self.store.subscriber_keys(impi)

    def generate_vector(
        self, subscriber: str | SubscriberKeys, *, rand: bytes | None = None
    ) -> AuthVector:
        """A fresh vector; SQN_HE advances by one step first (``rand`` is for tests)."""
        keys = self._keys(subscriber)
        sqn = sqn_bytes(self.store.advance_sqn(keys.impi, self.ind_bits))
        rand = os.urandom(RAND_LENGTH) if rand is None else _check_len(rand, RAND_LENGTH, "RAND")
        mac_a, xres, ck, ik, ak = Milenage(keys.k, keys.opc).f1_f2345(rand, sqn, keys.amf)
        autn = bytes(a ^ b for a, b in zip(sqn, ak, strict=True)) + keys.amf + mac_a
        return AuthVector(rand, autn, xres, ck, ik)

    def resync(self, subscriber: str | SubscriberKeys, rand: bytes, auts: bytes) -> bytes:
        """Check AUTS for the challenge ``rand`` and reset SQN_HE to SQN_MS (6.3.5).

        Returns SQN_MS; raises :class:`MacFailure` if MAC-S does not verify (SQN_HE is
        then left alone).
        """
        keys = self._keys(subscriber)
        rand = _check_len(rand, RAND_LENGTH, "RAND")
        sqn_ms = open_auts(Milenage(keys.k, keys.opc), rand, auts)
        self.store.reset_sqn(keys.impi, int.from_bytes(sqn_ms, "big"))
        return sqn_ms
