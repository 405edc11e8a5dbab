"""GBA-based Security Association Establishment (seed 000 clause 8.2.3.2; legacy, A-10).

Entity A holds 3GPP credentials (a USIM-like K, OPc, SQN). It bootstraps with the BSF over
Ub (3GPP TS 33.220 4.5.2, TS 24.109; :mod:`m2msec.gba.ub`) to share Ks and a B-TID, derives
the NAF key for Entity B and uses it as the TLS-PSK (RFC 4279) Kc of the association.
Entity B, the NAF (here: the gateway in front of the IN-CSE), learns the same key from the
BSF over Zn (:mod:`m2msec.gba.zn`, our HTTP mapping of TS 29.109).

The handshake (TS 33.222 5.4, TS 24.109 Annex F, seed 000 8.2.3.2):

1. Entity A offers PSK suites and names Entity B in server_name (SNI = B's host name).
2. Entity B picks a suite (ServerHello) and sends the identity hint ``3GPP-bootstrapping``
   in ServerKeyExchange, or ``3GPP-bootstrapping-uicc`` when its policy requires GBA_U
   with Ks_int_NAF (docs/readings.md A-08).
3. Entity A (re)uses a valid Ks, or bootstraps first (the Centralized Key Distribution
   Server Handshake), computes NAF_Id = B's host name || 01 00 01 yy zz with ``yy zz`` the
   suite of the ServerHello (TS 33.220 Annex H, docs/readings.md A-09) and Kc = Ks_ext_NAF
   (= Ks_NAF of GBA_ME), or Ks_int_NAF when its ``uicc`` flag is set, and sends the
   psk_identity ``3GPP-bootstrapping;<B-TID>`` (``-uicc`` prefix with the flag).
4. Entity B parses the identity (:func:`parse_identity`), computes NAF_Id from its own
   FQDN and the suite it chose, fetches Ks_NAF, its lifetime and the user's security
   settings (USS) over Zn, and binds the session to the identity the BSF returns.

Readings followed: A-01 (send ";", accept ";" or "." after the longest prefix, never split
on the last dot), A-02 (ASCII 0x2D hyphen only, checked as octets), A-03 (GBA is TLS 1.2
only: TLS 1.3 has no ServerKeyExchange and so no hint), A-07 ("GBA, ME" is GBA_ME; Kc here
is not the MAF's Kc), A-08 (one ``uicc`` flag on A; B refuses a plain prefix only when it
requires GBA_U), A-09 (NAF_Id from the negotiated suite, on both sides), A-10 (legacy),
A-25 (the B-TID is the key identifier, verbatim; Credential-ID ``12-<B-TID>``).

This module holds what both roles share (the psk_identity and its hint, NAF_Id, the
suites) and Entity B, the NAF (:class:`GbaResponder`, with :func:`zn_profile` for its Zn
client). Entity A, the device, and its saved state are :mod:`m2msec.frameworks.gba_device`.

Binding at Entity B: an AE-ID or CSE-ID named in the subscriber's USS for this NAF
(``aeId`` / ``cseId``) when present; otherwise the Credential-ID ``12-<B-TID>``, built
verbatim (A-25), which the gateway lets register one AE and then binds to its AE-ID. The
association is valid until the NAF key expires (the Ks lifetime the BSF reports).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from m2msec.crypto.gba import SUITE_IDS, naf_id, ua_protocol_id_tls_psk
from m2msec.errors import HandshakeError, IdentifierError, M2MSecError
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.gba.wire import NafKey
from m2msec.ids import check_fqdn
from m2msec.keyids import CredentialId, CredIdType
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import (
    PSK_SUITES_DTLS,
    PSK_SUITES_TLS,
    TLSProfile,
    Transport,
    new_profile,
)

__all__ = [
    "HINT",
    "HINT_UICC",
    "SEPARATOR",
    "GbaResponder",
    "NafKeySource",
    "assume_utc",
    "binding_for_naf_key",
    "format_identity",
    "gba_naf_id",
    "gba_profile",
    "is_btid",
    "parse_identity",
    "zn_profile",
]

log = logging.getLogger(__name__)

#: PSK identity hints and identity prefixes (seed 000 8.2.3.2), ASCII 0x2D hyphen (A-02).
HINT: Final = b"3GPP-bootstrapping"
HINT_UICC: Final = b"3GPP-bootstrapping-uicc"
#: The separator Entity A sends (A-01); "." (TS 36.508) is accepted on receipt.
SEPARATOR: Final = b";"
_SEPARATORS: Final = (b";", b".")
#: Longest prefix first (A-01).
_PREFIXES: Final = ((HINT_UICC, True), (HINT, False))
#: What a non-ASCII hyphen (U+2011 non-breaking, U+2010, U+2013 ...) looks like in UTF-8.
_LOOKALIKE_HYPHENS: Final = ("\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2212")
#: Longest B-TID accepted: the identity must fit RFC 4279's 128 octets.
MAX_BTID_LENGTH: Final = 128 - len(HINT_UICC) - 1
#: Suites of the GBA profile: the PSK suites of TS-0003 10.2.2, TLS 1.2 only (A-03).
GBA_SUITES: Final = PSK_SUITES_TLS
#: Over DTLS 1.2 (our extension): the same suites, CCM_8 first (TS-0003 10.2.1).
GBA_SUITES_DTLS: Final = PSK_SUITES_DTLS


# ----------------------------------------------------------------------------- identity


def _check_btid(btid: str) -> str:
    """A B-TID is an NAI ``base64(RAND)@BSF-domain`` (TS 33.220 4.5.2): visible ASCII,
    an '@' and a domain; the local part is not decoded here (the BSF owns its format)."""
    if not btid:
        raise IdentifierError("B-TID is empty")
    if len(btid) > MAX_BTID_LENGTH:
        raise IdentifierError(f"B-TID longer than {MAX_BTID_LENGTH} characters")
    if not all(0x21 <= ord(c) <= 0x7E for c in btid):
        raise IdentifierError(f"B-TID {btid[:80]!r} has characters outside visible ASCII")
    if btid[0] in ";.":
        raise IdentifierError(
            f"B-TID {btid[:80]!r} starts with a separator: exactly one ';' or '.' follows "
            "the prefix (docs/readings.md A-01)"
        )
    local, sep, domain = btid.rpartition("@")
    if not sep or not local:
        raise IdentifierError(f"B-TID {btid[:80]!r} is not of the form <local>@<BSF domain>")
    check_fqdn(domain, "BSF domain of the B-TID")
    return btid


def is_btid(text: str) -> bool:
    """Whether ``text`` has the form of a B-TID (``<local>@<BSF domain>``, visible ASCII)."""
    try:
        _check_btid(text)
    except IdentifierError:
        return False
    return True


def format_identity(btid: str, uicc: bool = False) -> bytes:
    """The psk_identity of Entity A: ``3GPP-bootstrapping[-uicc]`` ";" B-TID (A-01)."""
    _check_btid(btid)
    return (HINT_UICC if uicc else HINT) + SEPARATOR + btid.encode("ascii")


def parse_identity(identity: bytes) -> tuple[str, bool]:
    """(B-TID, uicc) of a received psk_identity; :class:`IdentifierError` if not GBA.

    The longer prefix ``3GPP-bootstrapping-uicc`` is tried first, then exactly one
    separator, ";" or ".", and the rest is the B-TID, whose domain has dots of its own
    (docs/readings.md A-01). Prefixes are compared as octets: only the ASCII hyphen 0x2D (A-02).
    """
    for prefix, uicc in _PREFIXES:
        sep = identity[len(prefix) : len(prefix) + 1]
        if not identity.startswith(prefix) or sep not in _SEPARATORS:
            continue  # "...-uiccX" falls through to the plain prefix, which then fails too
        try:
            btid = identity[len(prefix) + 1 :].decode("ascii")
        except UnicodeDecodeError:
            raise IdentifierError("B-TID in the psk_identity is not ASCII") from None
        return _check_btid(btid), uicc
    text = identity[:48].decode("utf-8", "backslashreplace")
    if any(h in text for h in _LOOKALIKE_HYPHENS):
        raise IdentifierError(
            f"psk_identity {text!r} uses a non-ASCII hyphen; the GBA prefix is "
            "'3GPP-bootstrapping' with ASCII 0x2D (docs/readings.md A-02)"
        )
    if identity.startswith(HINT):
        raise IdentifierError(
            f"psk_identity {text!r}: the GBA prefix must be followed by exactly one ';' or '.' "
            "and the B-TID (docs/readings.md A-01)"
        )
    raise IdentifierError(f"psk_identity {text!r} has no 3GPP-bootstrapping prefix")


def gba_profile(
    transport: Transport, *, server_side: bool, local_id: str | None = None
) -> TLSProfile:
    """The start of either role's profile: (D)TLS 1.2 only (A-03) with :data:`GBA_SUITES`
    (:data:`GBA_SUITES_DTLS` over DTLS); each role adds its callables."""
    suites = GBA_SUITES_DTLS if transport is Transport.DTLS else GBA_SUITES
    return new_profile(
        Framework.GBA,
        transport,
        server_side=server_side,
        suites=suites,
        tls13=False,
        local_id=local_id,
    )


def gba_naf_id(naf_fqdn: str, cipher_suite: int) -> bytes:
    """NAF_Id for shared-key TLS: NAF FQDN || 01 00 01 yy zz (TS 33.220 H.2, A-09)."""
    return naf_id(naf_fqdn, ua_protocol_id_tls_psk(cipher_suite))


# ----------------------------------------------------------------------------- key sources


class NafKeySource(Protocol):
    """The NAF's side of Zn (:class:`m2msec.gba.zn.ZnClient`), or any stand-in for it."""

    async def fetch(self, btid: str, naf_id: bytes, gba_u: bool) -> NafKey: ...


def zn_profile(
    credential: CertificateCredential, bsf_fqdn: str, *, in_domain: str | None = None
) -> TLSProfile:
    """The NAF's TLS client profile towards the BSF for :class:`m2msec.gba.zn.ZnClient`.

    Zn is mutually authenticated (TS 33.220 4.4.3): the NAF presents ``credential``, whose
    dNSName is the NAF FQDN the BSF accepts in NAF_Id, and the BSF's certificate must name
    ``bsf_fqdn`` (TS-0003 10.1.1.6, also the SNI), as for any FQDN-named service of the
    certificate framework. ``in_domain`` only serves to read our own certificate
    (default: ``bsf_fqdn``).
    """
    initiator = CertificateInitiator.for_service(
        credential, bsf_fqdn, in_domain=in_domain or bsf_fqdn
    )
    return initiator.profile()


def assume_utc(when: datetime) -> datetime:
    """``when``, read as UTC if naive (a stand-in key source or bootstrapper may say so)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _uss_identity(uss: Mapping[str, Any] | None) -> tuple[str, PeerKind] | None:
    """An AE-ID or CSE-ID the USS names for this NAF, if any."""
    if not uss:
        return None
    from m2msec.ids import AeId, parse_entity_id

    for key, kind in (("aeId", PeerKind.AE), ("cseId", PeerKind.CSE)):
        value = uss.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise HandshakeError(f"the BSF's USS carries an unusable {key}")
        try:
            entity = parse_entity_id(value)
        except IdentifierError as exc:
            raise HandshakeError(f"the BSF's USS carries an invalid {key}: {exc}") from None
        if (kind is PeerKind.AE) != isinstance(entity, AeId):
            raise HandshakeError(f"the BSF's USS {key} {value!r} names the wrong kind of entity")
        return value, kind
    return None


def binding_for_naf_key(key: NafKey) -> PeerBinding:
    """The identity Entity B binds a GBA session to (module docstring; A-25)."""
    named = _uss_identity(key.uss)
    valid_until = assume_utc(key.expires)
    if named is not None:
        return PeerBinding(named[0], named[1], key_id=key.btid, valid_until=valid_until)
    credential = CredentialId(CredIdType.SAEF_KEY, key.btid, verbatim=True)
    return PeerBinding(str(credential), PeerKind.CREDENTIAL, key.btid, valid_until)


# ----------------------------------------------------------------------------- Entity B


@dataclass(frozen=True, slots=True)
class _Cached:
    key: bytes
    binding: PeerBinding
    expires: datetime


class GbaResponder:
    """Entity B of the GBA-based framework: the NAF (seed 000 8.2.3.2).

    ``zn`` fetches NAF keys from the BSF (:class:`m2msec.gba.zn.ZnClient`). ``naf_fqdn``
    is this NAF's FQDN, the host name clients put in SNI (for a CSE, its public domain
    name). With ``require_uicc`` the hint is ``3GPP-bootstrapping-uicc`` and identities
    with the plain prefix are refused (docs/readings.md A-08).

    Keys are cached per (B-TID, NAF_Id, GBA_U) until they expire, so a device that
    reconnects costs no Zn round trip; concurrent handshakes with the same B-TID share one
    fetch. Identities without the GBA prefix are refused without any network call.
    """

    def __init__(
        self,
        zn: NafKeySource,
        naf_fqdn: str,
        *,
        local_id: str | None = None,
        require_uicc: bool = False,
        require_sni: bool = False,
        cache_size: int = 4096,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.zn = zn
        self.naf_fqdn = check_fqdn(naf_fqdn.rstrip("."), "NAF FQDN").lower()
        self.local_id = local_id
        self.require_uicc = require_uicc
        self.require_sni = require_sni
        self.cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[tuple[str, bytes, bool], _Cached] = OrderedDict()
        self._inflight: dict[tuple[str, bytes, bool], asyncio.Future[_Cached]] = {}
        #: Counters: Zn fetches made, answers served from the cache, refusals.
        self.zn_fetches = 0
        self.cache_hits = 0
        self.refusals = 0

    def __repr__(self) -> str:
        return f"GbaResponder(naf_fqdn={self.naf_fqdn!r}, require_uicc={self.require_uicc})"

    @property
    def hint(self) -> bytes:
        return HINT_UICC if self.require_uicc else HINT

    def forget(self, btid: str | None = None) -> None:
        """Drop cached keys (of one B-TID, or all)."""
        for entry in [k for k in self._cache if btid is None or k[0] == btid]:
            del self._cache[entry]

    async def resolve(self, identity: bytes, cipher_suite: int | None) -> tuple[bytes, PeerBinding]:
        """The async PSK resolver: psk_identity and negotiated suite -> (Ks_NAF, binding)."""
        try:
            return await self._resolve(identity, cipher_suite)
        except HandshakeError:
            self.refusals += 1
            raise

    async def _resolve(
        self, identity: bytes, cipher_suite: int | None
    ) -> tuple[bytes, PeerBinding]:
        try:
            btid, uicc = parse_identity(identity)
        except IdentifierError as exc:
            raise HandshakeError(f"not a GBA psk_identity: {exc}") from None
        if self.require_uicc and not uicc:
            raise HandshakeError(
                "this NAF requires GBA_U with Ks_int_NAF (3GPP-bootstrapping-uicc); "
                f"B-TID {btid!r} was offered with the plain prefix"
            )
        if cipher_suite is None:
            raise HandshakeError(
                "GBA needs TLS 1.2 (no identity hint in TLS 1.3, docs/readings.md A-03)"
            )
        return await self.naf_key(btid, gba_naf_id(self.naf_fqdn, cipher_suite), uicc)

    def cached(self, btid: str, nid: bytes, uicc: bool) -> tuple[bytes, PeerBinding] | None:
        """The NAF key of ``btid`` held and unexpired, without a Zn call, or None."""
        entry = self._cache.get((btid, nid, uicc))
        if entry is None or entry.expires <= self._clock():
            return None
        return entry.key, entry.binding

    async def naf_key(self, btid: str, nid: bytes, uicc: bool) -> tuple[bytes, PeerBinding]:
        """Ks_(ext/int)_NAF of ``btid`` for NAF_Id ``nid`` and the binding the USS gives,
        from the cache or over Zn (one fetch for concurrent callers). Also the seed 004 GBA
        bootstrap's Kpsa (:mod:`m2msec.frameworks.mef.gba`); refusals raise HandshakeError."""
        slot = (btid, nid, uicc)
        now = self._clock()
        cached = self._cache.get(slot)
        if cached is not None:
            if cached.expires > now:
                self._cache.move_to_end(slot)
                self.cache_hits += 1
                return cached.key, cached.binding
            del self._cache[slot]
        pending = self._inflight.get(slot)
        if pending is not None:
            entry = await asyncio.shield(pending)
        else:
            future: asyncio.Future[_Cached] = asyncio.get_running_loop().create_future()
            self._inflight[slot] = future
            try:
                entry = await self._fetch(btid, nid, uicc)
            except BaseException as exc:
                if not future.done():
                    future.set_exception(
                        exc
                        if isinstance(exc, HandshakeError)
                        else HandshakeError("the Zn request for this B-TID was abandoned")
                    )
                    future.exception()  # retrieved: no "never retrieved" warning
                raise
            else:
                future.set_result(entry)
            finally:
                del self._inflight[slot]
            self._cache[slot] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if entry.expires <= self._clock():
            raise HandshakeError(f"the NAF key of B-TID {btid!r} has expired")
        return entry.key, entry.binding

    async def _fetch(self, btid: str, nid: bytes, uicc: bool) -> _Cached:
        self.zn_fetches += 1
        try:
            key = await self.zn.fetch(btid, nid, uicc)
        except HandshakeError:
            raise
        except M2MSecError as exc:
            raise HandshakeError(f"B-TID {btid!r} refused by the BSF: {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise HandshakeError(f"the BSF cannot be reached over Zn: {exc}") from None
        if key.btid != btid:
            raise HandshakeError("the BSF answered for another B-TID")
        expires = assume_utc(key.expires)
        if expires <= self._clock():
            raise HandshakeError(f"the NAF key of B-TID {btid!r} has expired")
        if not 16 <= len(key.ks_naf) <= 64:
            raise HandshakeError("the BSF returned a NAF key of unusable length")
        binding = binding_for_naf_key(key)
        log.info(
            "GBA: NAF key for B-TID %s (%s) until %s, bound to %s",
            btid,
            "GBA_U" if uicc else "GBA_ME",
            expires.isoformat(),
            binding.peer_id,
        )
        return _Cached(bytes(key.ks_naf), binding, expires)

    def profile(self, transport: Transport = Transport.TLS) -> TLSProfile:
        """TLS 1.2, PSK suites of 10.2.2, the GBA hint, the Zn-backed async resolver.

        ``transport=Transport.DTLS``: the same over DTLS 1.2 (CCM_8 first, TS-0003 10.2.1).
        The seed names TLS-PSK only; DTLS-PSK with the same psk_identity and hint, NAF_Id
        built from the suite the DTLS ServerHello chose, is our extension (conformance.md).
        """
        return replace(
            gba_profile(transport, server_side=True, local_id=self.local_id),
            psk_async_resolver=self.resolve,
            psk_hint=self.hint,
            require_sni=self.require_sni,
        )


#: IANA ids of the suites offered, for docs and tests.
GBA_SUITE_IDS: Final = {name: SUITE_IDS[name] for name in GBA_SUITES}
