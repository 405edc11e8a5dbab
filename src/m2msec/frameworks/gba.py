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

Binding at Entity B: an AE-ID or CSE-ID named in the subscriber's USS for this NAF
(``aeId`` / ``cseId``) when present; otherwise the Credential-ID ``12-<B-TID>``, built
verbatim (A-25), which the gateway lets register one AE and then binds to its AE-ID. The
association is valid until the NAF key expires (the Ks lifetime the BSF reports).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from m2msec.crypto.gba import SUITE_IDS, ks_ext_naf, ks_int_naf, naf_id, ua_protocol_id_tls_psk
from m2msec.errors import ConfigurationError, HandshakeError, IdentifierError, M2MSecError
from m2msec.gba.aka import Usim
from m2msec.ids import check_fqdn, entity_kind
from m2msec.keyids import CredentialId, CredIdType
from m2msec.tls.aio import TLSConnection
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import (
    PSK_SUITES_DTLS,
    PSK_SUITES_TLS,
    TLSProfile,
    Transport,
    new_context,
)

if TYPE_CHECKING:
    from m2msec.tls.aio_dtls import DTLSAssociation

__all__ = [
    "HINT",
    "HINT_UICC",
    "SEPARATOR",
    "BootstrapInfo",
    "DeviceState",
    "GbaDevice",
    "GbaResponder",
    "NafKeyInfo",
    "NafKeySource",
    "binding_for_naf_key",
    "device_naf_key",
    "format_identity",
    "gba_naf_id",
    "parse_identity",
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


def gba_naf_id(naf_fqdn: str, cipher_suite: int) -> bytes:
    """NAF_Id for shared-key TLS: NAF FQDN || 01 00 01 yy zz (TS 33.220 H.2, A-09)."""
    return naf_id(naf_fqdn, ua_protocol_id_tls_psk(cipher_suite))


# ----------------------------------------------------------------------------- key sources


class BootstrapInfo(Protocol):
    """A GBA bootstrap as Entity A keeps it (:class:`m2msec.gba.ub.Bootstrap`)."""

    @property
    def btid(self) -> str: ...

    @property
    def rand(self) -> bytes: ...

    @property
    def ks(self) -> bytes: ...

    @property
    def impi(self) -> str: ...

    @property
    def expires(self) -> datetime: ...


class NafKeyInfo(Protocol):
    """What the BSF answers on Zn (:class:`m2msec.gba.zn.NafKey`)."""

    @property
    def ks_naf(self) -> bytes: ...

    @property
    def expires(self) -> datetime: ...

    @property
    def impi(self) -> str: ...

    @property
    def btid(self) -> str: ...

    @property
    def uss(self) -> Mapping[str, Any] | None: ...


class NafKeySource(Protocol):
    """The NAF's side of Zn (:class:`m2msec.gba.zn.ZnClient`), or any stand-in for it."""

    async def fetch(self, btid: str, naf_id: bytes, gba_u: bool) -> NafKeyInfo: ...


def device_naf_key(
    bootstrap: BootstrapInfo, naf_fqdn: str, cipher_suite: int, *, uicc: bool = False
) -> bytes:
    """Kc of Entity A for NAF ``naf_fqdn`` and the negotiated suite (TS 33.220 B.3).

    Ks_int_NAF with ``uicc`` (GBA_U, the application in the UICC), else Ks_ext_NAF
    (which is Ks_NAF with GBA_ME): seed 000 8.2.3.2, docs/readings.md A-07, A-08.
    """
    nid = gba_naf_id(naf_fqdn, cipher_suite)
    derive = ks_int_naf if uicc else ks_ext_naf
    return derive(bootstrap.ks, bootstrap.rand, bootstrap.impi, nid)


def _aware(when: datetime) -> datetime:
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


def binding_for_naf_key(key: NafKeyInfo) -> PeerBinding:
    """The identity Entity B binds a GBA session to (module docstring; A-25)."""
    named = _uss_identity(key.uss)
    valid_until = _aware(key.expires)
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
        nid = gba_naf_id(self.naf_fqdn, cipher_suite)
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
        expires = _aware(key.expires)
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
        suites = GBA_SUITES_DTLS if transport is Transport.DTLS else GBA_SUITES
        ctx = new_context(transport, server_side=True, suites=suites, tls13=False)
        return TLSProfile(
            framework=Framework.GBA,
            transport=transport,
            server_side=True,
            ssl_context=ctx,
            local_id=self.local_id,
            psk_async_resolver=self.resolve,
            psk_hint=self.hint,
            require_sni=self.require_sni,
        )


# ----------------------------------------------------------------------------- Entity A

Bootstrapper = Callable[[], Awaitable[BootstrapInfo]]
"""Runs one Ub bootstrapping and returns the new bootstrap."""


class GbaDevice:
    """Entity A of the GBA-based framework (seed 000 8.2.3.2).

    ``usim`` is the USIM-like credential (:class:`m2msec.gba.aka.Usim`), ``impi`` the
    subscriber's private identity and ``bsf_url`` the BSF's Ub address (``http://...``).
    ``uicc`` selects GBA_U with Ks_int_NAF and the ``-uicc`` prefix (docs/readings.md A-08).

    A valid bootstrap is reused (no Ub run) until ``renew_before`` ahead of its expiry;
    ``bootstrap`` seeds it (e.g. from disk) and ``on_bootstrap`` is told of each new one
    (to persist it). ``bootstrapper`` replaces the Ub client (tests, other transports).
    """

    def __init__(
        self,
        usim: Usim,
        impi: str,
        bsf_url: str,
        *,
        uicc: bool = False,
        bootstrap: BootstrapInfo | None = None,
        on_bootstrap: Callable[[BootstrapInfo], None] | None = None,
        bootstrapper: Bootstrapper | None = None,
        renew_before: timedelta = timedelta(seconds=30),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.usim = usim
        self.impi = impi
        self.bsf_url = bsf_url
        self.uicc = uicc
        self._bootstrap = bootstrap
        self._on_bootstrap = on_bootstrap
        self._bootstrapper = bootstrapper
        self.renew_before = renew_before
        self._clock = clock
        self._lock = asyncio.Lock()
        self._profiles: dict[tuple[str, str | None, Transport], TLSProfile] = {}
        #: How many Ub bootstrappings this device ran.
        self.bootstraps = 0

    def __repr__(self) -> str:
        btid = self._bootstrap.btid if self._bootstrap else None
        return f"GbaDevice(impi={self.impi!r}, uicc={self.uicc}, btid={btid!r})"

    @property
    def bootstrap(self) -> BootstrapInfo | None:
        """The current bootstrap (B-TID, RAND, Ks, lifetime), or None."""
        return self._bootstrap

    def bootstrap_valid(self, margin: timedelta | None = None) -> bool:
        b = self._bootstrap
        if b is None:
            return False
        margin = self.renew_before if margin is None else margin
        return _aware(b.expires) - margin > self._clock()

    async def ensure_bootstrap(self, *, force: bool = False) -> BootstrapInfo:
        """Reuse a valid Ks (seed 000 8.2.3.2), or bootstrap with the BSF over Ub."""
        async with self._lock:
            if not force and self.bootstrap_valid():
                assert self._bootstrap is not None
                return self._bootstrap
            if self._bootstrapper is not None:
                fresh = await self._bootstrapper()
            else:
                from m2msec.gba.ub import bootstrap as ub_bootstrap

                fresh = await ub_bootstrap(self.bsf_url, self.usim, self.impi)
            self.bootstraps += 1
            self._bootstrap = fresh
            log.info("GBA: bootstrapped, B-TID %s until %s", fresh.btid, fresh.expires)
            if self._on_bootstrap is not None:
                self._on_bootstrap(fresh)
            return fresh

    def _offer(
        self, server_name: str, id_b: str | None, hint: bytes | None, suite: int | None
    ) -> tuple[bytes, bytes, PeerBinding]:
        b = self._bootstrap
        if b is None or _aware(b.expires) <= self._clock():
            raise HandshakeError("no valid GBA bootstrap (run the Ub bootstrapping first)")
        if hint not in (HINT, HINT_UICC):
            shown = "none" if hint is None else repr(hint[:48].decode("ascii", "replace"))
            raise HandshakeError(
                f"Entity B sent identity hint {shown}, not 3GPP-bootstrapping: it is not a NAF"
            )
        if hint == HINT_UICC and not self.uicc:
            raise HandshakeError(
                "Entity B requires GBA_U with Ks_int_NAF (hint 3GPP-bootstrapping-uicc); "
                "this device is not configured with a UICC"
            )
        if suite is None:
            raise HandshakeError("negotiated cipher suite unknown: GBA needs TLS 1.2")
        key = device_naf_key(b, server_name, suite, uicc=self.uicc)
        if id_b is not None:

            binding = PeerBinding(id_b, entity_kind(id_b), b.btid, _aware(b.expires))
        else:
            binding = PeerBinding(server_name, PeerKind.SERVICE, b.btid, _aware(b.expires))
        return format_identity(b.btid, self.uicc), key, binding

    def profile(
        self, server_name: str, *, id_b: str | None = None, transport: Transport = Transport.TLS
    ) -> TLSProfile:
        """A TLS 1.2 PSK profile for Entity B ``server_name`` (its NAF FQDN, sent as SNI).
        ``transport=Transport.DTLS``: DTLS 1.2 instead (our extension, see
        :meth:`GbaResponder.profile`).

        Entity A binds the session to ``id_b`` (B's CSE-ID) when given, else to the
        server name; the BSF vouched for it, since only the NAF holding a certificate
        for that FQDN gets the key. Call :meth:`ensure_bootstrap` before handshaking.
        """
        name = check_fqdn(server_name.rstrip("."), "Entity B host name (NAF FQDN)").lower()
        cached = self._profiles.get((name, id_b, transport))
        if cached is not None:
            return cached

        def offer(hint: bytes | None, suite: int | None) -> tuple[bytes, bytes, PeerBinding]:
            return self._offer(name, id_b, hint, suite)

        suites = GBA_SUITES_DTLS if transport is Transport.DTLS else GBA_SUITES
        ctx = new_context(transport, server_side=False, suites=suites, tls13=False)
        profile = TLSProfile(
            framework=Framework.GBA,
            transport=transport,
            server_side=False,
            ssl_context=ctx,
            psk_suite_offer=offer,
            server_name=name,
        )
        self._profiles[(name, id_b, transport)] = profile
        return profile

    async def connect(
        self,
        host: str,
        port: int,
        server_name: str | None = None,
        *,
        id_b: str | None = None,
        timeout: float = 10.0,
    ) -> TLSConnection:
        """Bootstrap if needed, then run the TLS-PSK handshake with Entity B.

        ``server_name`` (default ``host``) is Entity B's host name: the SNI and the FQDN in
        NAF_Id. When a reused B-TID is refused as unknown (the BSF forgot it), the device
        bootstraps once more and retries. Returns the :class:`~m2msec.tls.aio.TLSConnection`.
        """
        profile = self.profile(server_name or host, id_b=id_b)
        reused = self.bootstrap_valid()
        await self.ensure_bootstrap()
        try:
            return await tls_connect(host, port, profile, timeout=timeout)
        except HandshakeError as exc:
            if not reused or "unknown psk identity" not in exc.reason:
                raise
            log.info("GBA: Entity B does not know B-TID; bootstrapping again")
        await self.ensure_bootstrap(force=True)
        return await tls_connect(host, port, profile, timeout=timeout)

    async def connect_dtls(
        self,
        host: str,
        port: int,
        server_name: str | None = None,
        *,
        id_b: str | None = None,
        timeout: float = 10.0,
    ) -> DTLSAssociation:
        """:meth:`connect` over DTLS 1.2 (CoAP binding; our extension, see
        :meth:`GbaResponder.profile`): NAF_Id from the suite of the DTLS ServerHello."""
        from m2msec.tls.aio_dtls import dtls_connect

        profile = self.profile(server_name or host, id_b=id_b, transport=Transport.DTLS)
        reused = self.bootstrap_valid()
        await self.ensure_bootstrap()
        try:
            return await dtls_connect(profile, host, port, timeout=timeout)
        except HandshakeError as exc:
            if not reused or "unknown psk identity" not in exc.reason:
                raise
            log.info("GBA: Entity B does not know B-TID; bootstrapping again")
        await self.ensure_bootstrap(force=True)
        return await dtls_connect(profile, host, port, timeout=timeout)


# ----------------------------------------------------------------------------- persistence


class DeviceState:
    """Entity A's GBA state kept between runs (``m2msec connect --gba``).

    One JSON file (mode 0600, in the data directory by default) holding, per IMPI, SQN_MS
    (the highest SQN the USIM accepted, so a later run does not accept an old challenge)
    and the last bootstrap with Ks sealed by :mod:`m2msec.store.seal` under the data
    directory's key-encryption key (associated data: IMPI, B-TID, BSF URL and expiry), so a
    second run within the key lifetime reuses Ks instead of bootstrapping again (seed 000
    8.2.3.2). K and OPc are never written here.
    """

    FILE_NAME: Final = "gba-device.json"

    def __init__(self, path: Path | None = None, *, kek: bytes | None = None) -> None:
        from m2msec.paths import data_dir

        self.path = path if path is not None else data_dir() / self.FILE_NAME
        self._kek = kek

    def _sealer(self) -> Any:
        from m2msec.paths import ensure_private_dir
        from m2msec.store.seal import KEK_FILE_NAME, Sealer, load_kek

        if self._kek is None:
            ensure_private_dir(self.path.parent)
            self._kek = load_kek(self.path.parent / KEK_FILE_NAME, create=True)
        return Sealer(self._kek)

    @staticmethod
    def _aad(impi: str, btid: str, bsf_url: str, expires: str) -> bytes:
        return "\x1f".join(("m2msec/gba-device/ks", impi, btid, bsf_url, expires)).encode()

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigurationError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(text)
        except ValueError:
            raise ConfigurationError(f"{self.path} is not a GBA device state file") from None
        if not isinstance(doc, dict):
            raise ConfigurationError(f"{self.path} is not a GBA device state file")
        return doc

    def load(self, impi: str, bsf_url: str) -> tuple[int | None, BootstrapInfo | None]:
        """(SQN_MS, bootstrap) saved for ``impi``; the bootstrap only if it was made with
        ``bsf_url`` and has not expired."""
        from m2msec.gba.ub import Bootstrap

        entry = self._read().get(impi)
        if not isinstance(entry, dict):
            return None, None
        sqn = entry.get("sqnMs")
        sqn_ms = int(sqn, 16) if isinstance(sqn, str) and sqn else None
        boot = entry.get("bootstrap")
        if not isinstance(boot, dict) or boot.get("bsf") != bsf_url:
            return sqn_ms, None
        try:
            expires_text = str(boot["expires"])
            expires = datetime.fromisoformat(expires_text)
            if expires <= datetime.now(UTC):
                return sqn_ms, None
            btid = str(boot["btid"])
            ks = self._sealer().unseal(
                bytes.fromhex(str(boot["ks"])),
                self._aad(impi, btid, bsf_url, expires_text),
                what=f"Ks of B-TID {btid}",
            )
            rand = bytes.fromhex(str(boot["rand"]))
        except (KeyError, ValueError, M2MSecError) as exc:
            log.warning("ignoring the saved GBA bootstrap of %s: %s", impi, exc)
            return sqn_ms, None
        return sqn_ms, Bootstrap(btid, rand, ks, impi, expires)

    def save(self, impi: str, bsf_url: str, sqn_ms: bytes, bootstrap: BootstrapInfo | None) -> None:
        """Record SQN_MS and the bootstrap of ``impi`` (atomically, mode 0600)."""
        from m2msec.paths import ensure_private_dir

        doc = self._read()
        entry: dict[str, Any] = {"sqnMs": sqn_ms.hex()}
        if bootstrap is not None:
            expires = _aware(bootstrap.expires).isoformat()
            sealed = self._sealer().seal(
                bootstrap.ks, self._aad(impi, bootstrap.btid, bsf_url, expires)
            )
            entry["bootstrap"] = {
                "bsf": bsf_url,
                "btid": bootstrap.btid,
                "rand": bootstrap.rand.hex(),
                "ks": sealed.hex(),
                "expires": expires,
            }
        doc[impi] = entry
        ensure_private_dir(self.path.parent)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


#: IANA ids of the suites offered, for docs and tests.
GBA_SUITE_IDS: Final = {name: SUITE_IDS[name] for name in GBA_SUITES}
