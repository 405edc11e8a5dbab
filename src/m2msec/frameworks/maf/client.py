"""MAF-Based Symmetric Key Security Association Establishment (TS-0003 8.2.2.3, seed 001).

Three parties: Entity A (the Source MAF Client, e.g. TR-0038's smartphone), the M2M
Authentication Function (MAF) and Entity B (an Infrastructure Node; our gateway in front
of the IN-CSE, acting as Target MAF Client).

* **MAF Handshake** (8.8.2.2): Entity A and the MAF run TLS-PSK (10.2.2) with
  psk_identity = KmID (10.6) and psk = Km. :class:`MafClient` opens it and runs, over the
  HTTP mapping of ``docs/maf.md`` (ours: TS-0032 is not available), Client Registration,
  Configuration Retrieval, Registration Update and De-Registration (8.8.2.3-8.8.2.6) and
  Key Registration, Update and De-Registration (8.8.2.7, 8.8.2.9, 8.8.2.10).
* **Kc and KcId** (10.3.1, 10.3.5): Key Registration without a key value makes both ends
  export 48 octets with ``EXPORTER-oneM2M-Connection`` from that very TLS session; the
  first 16 are KcID, the last 32 are Kc (:func:`m2msec.crypto.keyexport.split_export`).
  The Key Identifier sent later as psk_identity is ``hexBinary(KcID)@MAF-FQDN``
  (:class:`m2msec.keyids.KcId`). The whole 32-octet Kc is the psk (our reading; V3.18 8.8.1
  says "first half" where a protocol needs one key: a documented deviation).
* **Association** (8.2.2.3): :class:`MafInitiator` (Entity A) runs TLS-PSK with Entity B,
  psk_identity = KcId, psk = Kc, and binds the session to its configured IdB. It reuses a
  valid Kc; once the Kc is past its lifetime, or a handshake with it fails in a way that
  says Entity B refused it (docs/readings.md A-16), it runs a fresh MAF Handshake and Key
  Registration by itself and retries once.
* **Key Retrieval** (8.8.2.8, docs/readings.md A-17): :class:`MafKeyRetriever` (Entity B) reads
  the MAF-FQDN from the KcId, picks that MAF's address from its configuration and asks
  for the RelativeKeyID over mutual TLS with certificates (8.2.2.2 credentials; the MAF's
  certificate must name its FQDN, 10.1.1.6). Answers are cached until the Kc expires
  (bounded LRU); concurrent lookups of the same KcId share one request.
* **Entity B's binding** (8.2.2.3, docs/readings.md A-06): :class:`MafResponder` resolves the
  psk_identity with the engine's asynchronous PSK hook
  (:attr:`m2msec.tls.profiles.TLSProfile.psk_async_resolver`) and binds the session to
  the CSE-ID or AE-ID the MAF returned, else to the Credential-ID ``11-<KmID>`` (10.4);
  key_id = KcId and valid_until = the Kc's expirationTime. Identities that are not KcIds
  of a configured MAF are refused without any network call; unknown, expired or refused
  keys fail the handshake (unknown_psk_identity in TLS 1.2).

Keys never appear in ``repr``, logs or error messages; key identifiers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import h11

from m2msec.crypto.keyexport import (
    EXPORT_LENGTH,
    LABEL_CONNECTION,
    RELATIVE_ID_LENGTH,
    split_export,
)
from m2msec.errors import (
    CertificateError,
    ConfigurationError,
    HandshakeError,
    IdentifierError,
    M2MSecError,
)
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.ids import AeId, check_fqdn, entity_kind, parse_entity_id
from m2msec.keyids import CredentialId, KcId, KmId
from m2msec.maf import wire
from m2msec.service.onem2m_client import OneM2MClient, OneM2MResponse
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
    "DEFAULT_CLIENT_LIFETIME",
    "DEFAULT_KEY_LIFETIME",
    "SUID_MAF_SAEF",
    "IssuedKc",
    "KeyRetrievalError",
    "MafClient",
    "MafClientRegistration",
    "MafError",
    "MafInitiator",
    "MafKeyRetriever",
    "MafResponder",
    "MafSession",
    "RetrievedKc",
    "RetrieverStats",
    "absolute_target",
    "format_time",
    "parse_time",
]

log = logging.getLogger(__name__)

#: m2m:suid 32: a key distributed by a MAF for the MAF-based SAEF (TS-0004 6.3.4.2.39).
SUID_MAF_SAEF = 32
#: expirationTime proposed for a Kc when the caller names no lifetime (the MAF may cut it).
DEFAULT_KEY_LIFETIME = timedelta(hours=24)
#: expirationTime proposed for a Client Registration when the caller names none.
DEFAULT_CLIENT_LIFETIME = timedelta(days=30)

_DBG_LIMIT = 200
Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- wire format


def format_time(when: datetime) -> str:
    """A oneM2M timestamp (TS-0004 6.3.3) in UTC, written as the MAF writes it
    (:mod:`m2msec.maf.wire`); a naive datetime raises ``WireError`` on both ends."""
    return wire.format_time(when)


def parse_time(text: object, what: str = "expirationTime") -> datetime:
    """Read a oneM2M timestamp as UTC, as the MAF reads it (:mod:`m2msec.maf.wire`): a zone
    designator (``Z``, ``+02:00``) or padding is refused."""
    try:
        return wire.parse_time(text, what)
    except wire.WireError as exc:
        raise MafError(str(exc)) from None


def _printable(data: bytes | str, limit: int = 128) -> str:
    text = data if isinstance(data, str) else data[:limit].decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _debug_info(response: OneM2MResponse) -> str:
    """The MAF's ``m2m:dbg`` text (the contract makes it safe to show), shortened."""
    try:
        doc = response.json()
    except (ValueError, UnicodeDecodeError):
        return ""
    dbg = doc.get("m2m:dbg") if isinstance(doc, dict) else None
    return _printable(dbg, _DBG_LIMIT) if isinstance(dbg, str) else ""


def _labels(value: object) -> tuple[str, ...]:
    try:
        return wire.parse_labels(value) or ()
    except wire.WireError as exc:
        raise MafError(str(exc)) from None


# ----------------------------------------------------------------------------- errors


class MafError(M2MSecError):
    """A MAF procedure failed. ``rsc`` is the MAF's Response Status Code when it answered.

    Messages name identifiers, never keys.
    """

    def __init__(self, reason: str, rsc: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rsc = rsc


class KeyRetrievalError(MafError):
    """Entity B could not obtain the Kc of a KcId (8.8.2.8): unknown, expired, refused..."""


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class IssuedKc:
    """A Kc registered at the MAF by Entity A (8.8.2.7): what both ends store."""

    kc_id: KcId
    kc: bytes = field(repr=False)
    expires: datetime
    target_id: str
    source_client_id: str | None = None
    admin_fqdn: str | None = None
    suid: int = SUID_MAF_SAEF
    labels: tuple[str, ...] = ()

    def expired(self, now: datetime | None = None, margin: float = 0.0) -> bool:
        """True once fewer than ``margin`` seconds of the Kc Lifetime remain."""
        return (now or _now()) + timedelta(seconds=margin) >= self.expires


@dataclass(frozen=True, slots=True)
class RetrievedKc:
    """A Kc as Entity B received it from the MAF (8.8.2.8, docs/readings.md A-17)."""

    kc_id: KcId
    kc: bytes = field(repr=False)
    expires: datetime
    km_id: str
    """Source MAF Client ID: the KmID the MAF authenticated Entity A with."""
    entity_id: str | None = None
    """Entity A's CSE-ID or AE-ID, when the MAF is configured with one."""
    suid: int = SUID_MAF_SAEF
    admin_fqdn: str | None = None
    labels: tuple[str, ...] = ()

    def expired(self, now: datetime | None = None) -> bool:
        return (now or _now()) >= self.expires


@dataclass(frozen=True, slots=True)
class MafClientRegistration:
    """A MAF Client Registration record (8.8.2.3, table 8.8.2.3-2)."""

    reg_id: str
    expires: datetime | None
    client_id: str | None = None
    admin_fqdn: str | None = None
    labels: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- Entity A <-> MAF


def _expect(response: OneM2MResponse, want: int, what: str, maf: str) -> dict[str, Any]:
    if response.rsc != want:
        dbg = _debug_info(response)
        detail = f": {dbg}" if dbg else ""
        raise MafError(
            f"{what} refused by the MAF {maf}: RSC {response.rsc} (HTTP {response.status}){detail}",
            response.rsc,
        )
    if not response.body:
        return {}
    try:
        doc = response.json()
    except (ValueError, UnicodeDecodeError):
        raise MafError(f"{what}: the MAF {maf} answered with malformed JSON") from None
    if not isinstance(doc, dict):
        raise MafError(f"{what}: the MAF {maf} answered with malformed JSON")
    return doc


def _member(doc: dict[str, Any], name: str, what: str, maf: str) -> dict[str, Any]:
    inner = doc.get(name)
    if not isinstance(inner, dict):
        raise MafError(f"{what}: the MAF {maf} answered without {name}")
    return inner


def absolute_target(entity_id: str, sp_fqdn: str) -> str:
    """The Absolute CSE-ID or AE-ID of ``entity_id`` under ``sp_fqdn`` for targetIDs
    (8.8.2.7: "exactly one Absolute AE-ID or Absolute CSE-ID"); an absolute id and a bare
    AE-ID-Stem (whose registrar is unknown) are returned as given."""
    entity = parse_entity_id(entity_id)
    check_fqdn(sp_fqdn, "M2M-SP FQDN")
    if entity.sp_fqdn is not None or (isinstance(entity, AeId) and entity.as_stem):
        return entity_id
    return f"//{sp_fqdn}{entity.sp_relative()}"


def _same_entity(a: str, b: str) -> bool:
    """Whether two ids name the same entity; an SP-relative id matches its absolute form
    (the MAF may echo targetIDs in either)."""
    try:
        ea, eb = parse_entity_id(a), parse_entity_id(b)
        if type(ea) is not type(eb):
            return False
        fqdns = {e.sp_fqdn.lower() for e in (ea, eb) if e.sp_fqdn is not None}
        return len(fqdns) <= 1 and ea.sp_relative() == eb.sp_relative()
    except IdentifierError:
        return a == b


class MafSession:
    """One MAF Handshake (8.8.2.2) and the procedures run over it.

    Obtain one with ``async with maf_client.session() as s:``. At most one Kc can be
    exported from a session (the MAF answers 4105 to a second one), so
    :meth:`register_key` without a key value works once per session.
    """

    def __init__(self, owner: MafClient, conn: TLSConnection) -> None:
        self._owner = owner
        self.conn = conn
        self._http = OneM2MClient(conn, host=owner.maf_fqdn)
        self._exported = False

    @property
    def maf(self) -> str:
        return self._owner.maf_fqdn

    async def _call(
        self, method: str, target: str, content: Any, want: int, what: str
    ) -> dict[str, Any]:
        try:
            response = await asyncio.wait_for(
                self._http.request(method, target, origin=self._owner.origin, content=content),
                self._owner.timeout,
            )
        except TimeoutError:
            raise MafError(f"{what}: the MAF {self.maf} did not answer in time") from None
        except (ConnectionError, OSError, h11.ProtocolError) as exc:
            raise MafError(f"{what}: the connection to the MAF {self.maf} failed ({exc})") from None
        return _expect(response, want, what, self.maf)

    # -- 8.8.2.3 - 8.8.2.6 ----------------------------------------------------------------
    async def register_client(
        self, lifetime: timedelta | None = None, labels: Iterable[str] | None = None
    ) -> MafClientRegistration:
        """MAF Client Registration (8.8.2.3)."""
        what = "MAF Client Registration"
        body = wire.client_registration_request(
            self.maf,
            self._owner.clock() + (lifetime or DEFAULT_CLIENT_LIFETIME),
            self._owner.admin_fqdn,
            None if labels is None else list(labels),
        )
        doc = await self._call("POST", "/maf/clients", body, 2001, what)
        out = _member(doc, "mafClientReg", what, self.maf)
        try:
            answer = wire.MafClientRegBody.parse(out)
        except wire.WireError as exc:
            raise MafError(f"{what}: the MAF {self.maf} {exc}") from None
        return MafClientRegistration(
            reg_id=answer.reg_id,
            expires=answer.expires,
            client_id=answer.client_id,
            admin_fqdn=answer.admin_fqdn,
            labels=answer.labels or (),
        )

    async def client_config(self, reg_id: str) -> dict[str, Any]:
        """MAF Client Configuration Retrieval (8.8.2.4): the ``mafClientCfg`` object."""
        what = "MAF Client Configuration Retrieval"
        doc = await self._call("GET", f"/maf/clients/{quote(reg_id, safe='')}/config", None,
                               2000, what)  # fmt: skip
        return _member(doc, "mafClientCfg", what, self.maf)

    async def update_client(
        self,
        reg_id: str,
        *,
        lifetime: timedelta | None = None,
        labels: Iterable[str] | None = None,
    ) -> MafClientRegistration:
        """MAF Client Registration Update (8.8.2.5): a new lifetime and/or labels."""
        what = "MAF Client Registration Update"
        reg: dict[str, Any] = {}
        if lifetime is not None:
            reg["expirationTime"] = format_time(self._owner.clock() + lifetime)
        if labels is not None:
            reg["labels"] = list(labels)
        if not reg:
            raise ValueError("give a lifetime or labels (8.8.2.5: at least one)")
        doc = await self._call(
            "PUT", f"/maf/clients/{quote(reg_id, safe='')}", {"mafClientReg": reg}, 2004, what
        )
        out = doc.get("mafClientReg", {}) if isinstance(doc.get("mafClientReg"), dict) else {}
        expires = out.get("expirationTime")
        return MafClientRegistration(
            reg_id=reg_id,
            expires=parse_time(expires) if expires is not None else None,
            labels=_labels(out.get("labels")),
        )

    async def deregister_client(self, reg_id: str) -> None:
        """MAF Client De-Registration (8.8.2.6)."""
        await self._call("DELETE", f"/maf/clients/{quote(reg_id, safe='')}", None, 2002,
                         "MAF Client De-Registration")  # fmt: skip

    # -- 8.8.2.7, 8.8.2.9, 8.8.2.10 -------------------------------------------------------
    async def register_key(
        self,
        target_id: str,
        *,
        lifetime: timedelta | None = None,
        labels: Iterable[str] | None = None,
        key_value: bytes | None = None,
    ) -> IssuedKc:
        """MAF Key Registration (8.8.2.7) for one Target MAF Client (IdB), SUID 32.

        Without ``key_value`` Kc and KcID come from this session's exporter (10.3.1); the
        MAF's RelativeKeyID must equal our KcID, or the two ends did not share the session.
        """
        what = "MAF Key Registration"
        kc_rel: bytes | None = None
        if key_value is None:
            if self._exported:
                raise MafError(f"{what}: one Kc per MAF Handshake; open a new session for another")
            self._exported = True
            exported = self.conn.export_keying_material(LABEL_CONNECTION, EXPORT_LENGTH, None)
            kc_rel, kc = split_export(exported)
        else:
            if not 16 <= len(key_value) <= 64:
                raise ValueError("a self-generated Kc must be 16 to 64 octets")
            kc = bytes(key_value)
        body = wire.key_registration_request(
            self.maf,
            self._owner.clock() + (lifetime or DEFAULT_KEY_LIFETIME),
            self._owner.admin_fqdn,
            SUID_MAF_SAEF,
            [target_id],
            None if labels is None else list(labels),
            None if key_value is None else kc,
        )
        doc = await self._call("POST", "/maf/keys", body, 2001, what)
        out = _member(doc, "mafKeyReg", what, self.maf)
        try:
            answer = wire.MafKeyRegBody.parse(out)
        except wire.WireError as exc:
            raise MafError(f"{what}: the MAF {self.maf} {exc}") from None
        rel = answer.relative_id
        if kc_rel is not None and not hmac.compare_digest(rel, kc_rel):
            raise MafError(
                f"{what}: the MAF {self.maf} names RelativeKeyID {rel.hex()} but this session "
                f"exported {kc_rel.hex()}; the two ends did not share the TLS session"
            )
        if answer.suid not in (None, SUID_MAF_SAEF):
            raise MafError(f"{what}: the MAF {self.maf} registered SUID {answer.suid!r}, not 32")
        targets = (target_id,) if answer.target_ids is None else answer.target_ids
        if len(targets) != 1 or not _same_entity(targets[0], target_id):
            raise MafError(
                f"{what}: the MAF {self.maf} changed targetIDs to {list(targets)!r}; "
                f"the Kc would not serve {target_id}"
            )
        try:
            kc_id = KcId.from_relative(rel, self.maf)
        except IdentifierError as exc:
            raise MafError(f"{what}: {exc}") from None
        issued = IssuedKc(
            kc_id=kc_id,
            kc=kc,
            expires=answer.expires,
            target_id=target_id,
            source_client_id=answer.source_client_id,
            admin_fqdn=answer.admin_fqdn,
            labels=answer.labels or (),
        )
        log.info(
            "Kc registered at MAF %s: KcId=%s target=%s expires=%s",
            self.maf,
            issued.kc_id,
            target_id,
            format_time(issued.expires),
        )
        return issued

    async def update_key(
        self,
        kc_id: KcId | str,
        *,
        lifetime: timedelta | None = None,
        labels: Iterable[str] | None = None,
    ) -> datetime | None:
        """MAF Key Registration Update (8.8.2.9); returns the new expirationTime if given."""
        what = "MAF Key Registration Update"
        rel = self._relative(kc_id)
        reg: dict[str, Any] = {}
        if lifetime is not None:
            reg["expirationTime"] = format_time(self._owner.clock() + lifetime)
        if labels is not None:
            reg["labels"] = list(labels)
        if not reg:
            raise ValueError("give a lifetime or labels (8.8.2.9: at least one)")
        doc = await self._call("PUT", f"/maf/keys/{rel}", {"mafKeyReg": reg}, 2004, what)
        out = doc.get("mafKeyReg")
        expires = out.get("expirationTime") if isinstance(out, dict) else None
        return parse_time(expires) if expires is not None else None

    async def deregister_key(self, kc_id: KcId | str) -> None:
        """MAF Key De-Registration (8.8.2.10): the MAF stops distributing the Kc."""
        rel = self._relative(kc_id)
        await self._call("DELETE", f"/maf/keys/{rel}", None, 2002, "MAF Key De-Registration")

    def _relative(self, kc_id: KcId | str) -> str:
        kc = kc_id if isinstance(kc_id, KcId) else KcId.parse(kc_id)
        if kc.maf_fqdn.lower() != self.maf.lower():
            raise MafError(f"{kc} was not issued by the MAF {self.maf}")
        return kc.relative_hex

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.close()


class _SessionContext:
    def __init__(self, owner: MafClient) -> None:
        self._owner = owner
        self._session: MafSession | None = None

    async def __aenter__(self) -> MafSession:
        self._session = await self._owner.open_session()
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()


class MafClient:
    """Entity A as Source MAF Client: the MAF Handshake with KmID/Km (8.8.2.2).

    ``maf_host``/``maf_port`` address the MAF's client listener; ``maf_fqdn`` (default:
    the FQDN part of ``km_id``, 10.6) names it in requests and KcIds and is the SNI.
    ``admin_fqdn`` (the administrating stakeholder of 8.8.2.3) defaults to ``maf_fqdn``.
    ``origin`` fills X-M2M-Origin (informative; the MAF authorises by the KmID).

    Each procedure method opens one MAF Handshake, runs the procedure and closes; use
    :meth:`session` to run several over one handshake.
    """

    def __init__(
        self,
        maf_host: str,
        maf_port: int,
        maf_fqdn: str | None,
        km_id: KmId | str,
        km: bytes,
        *,
        admin_fqdn: str | None = None,
        origin: str | None = None,
        server_name: str | None = None,
        tls13: bool = True,
        timeout: float = 10.0,
        clock: Clock = _now,
    ) -> None:
        self.km_id = km_id if isinstance(km_id, KmId) else KmId.parse(km_id)
        if not 0 < len(km) <= 64:
            raise ValueError("Km must be 1 to 64 octets")
        self._km = bytes(km)
        self.maf_host = maf_host
        self.maf_port = maf_port
        self.maf_fqdn = check_fqdn(maf_fqdn or self.km_id.maf_fqdn, "MAF FQDN")
        self.admin_fqdn = check_fqdn(admin_fqdn or self.maf_fqdn, "adminFQDN")
        self.origin = origin or str(self.km_id)
        self.server_name = server_name or self.maf_fqdn
        self.tls13 = tls13
        self.timeout = timeout
        self.clock = clock
        self._profile: TLSProfile | None = None

    def __repr__(self) -> str:
        return (
            f"MafClient(maf={self.maf_fqdn!r} at {self.maf_host}:{self.maf_port}, "
            f"km_id={str(self.km_id)!r})"
        )

    def _offer(self, hint: bytes | None) -> tuple[bytes, bytes, PeerBinding]:
        binding = PeerBinding(
            peer_id=self.maf_fqdn.lower(), kind=PeerKind.SERVICE, key_id=str(self.km_id)
        )
        return str(self.km_id).encode(), self._km, binding

    def profile(self) -> TLSProfile:
        """Entity A's TLS-PSK profile towards the MAF (psk_identity KmID, psk Km)."""
        if self._profile is None:
            ctx = new_context(
                Transport.TLS, server_side=False, suites=PSK_SUITES_TLS, tls13=self.tls13
            )
            self._profile = TLSProfile(
                framework=Framework.MAF,
                transport=Transport.TLS,
                server_side=False,
                ssl_context=ctx,
                local_id=self.origin,
                psk_offer=self._offer,
                server_name=self.server_name,
            )
        return self._profile

    async def open_session(self) -> MafSession:
        """Run the MAF Handshake; the caller closes the session."""
        try:
            conn = await tls_connect(
                self.maf_host, self.maf_port, self.profile(), timeout=self.timeout
            )
        except HandshakeError as exc:
            raise MafError(
                f"MAF Handshake with {self.maf_fqdn} ({self.maf_host}:{self.maf_port}) as "
                f"{self.km_id} failed: {exc.reason}"
            ) from None
        return MafSession(self, conn)

    def session(self) -> _SessionContext:
        """``async with client.session() as s:`` one MAF Handshake for several procedures."""
        return _SessionContext(self)

    async def register_client(
        self, lifetime: timedelta | None = None, labels: Iterable[str] | None = None
    ) -> MafClientRegistration:
        async with self.session() as s:
            return await s.register_client(lifetime, labels)

    async def client_config(self, reg_id: str) -> dict[str, Any]:
        async with self.session() as s:
            return await s.client_config(reg_id)

    async def update_client(
        self,
        reg_id: str,
        *,
        lifetime: timedelta | None = None,
        labels: Iterable[str] | None = None,
    ) -> MafClientRegistration:
        async with self.session() as s:
            return await s.update_client(reg_id, lifetime=lifetime, labels=labels)

    async def deregister_client(self, reg_id: str) -> None:
        async with self.session() as s:
            await s.deregister_client(reg_id)

    async def register_key(
        self,
        target_id: str,
        lifetime: timedelta | float | None = None,
        *,
        labels: Iterable[str] | None = None,
        key_value: bytes | None = None,
    ) -> IssuedKc:
        """One MAF Handshake and a Key Registration for ``target_id`` (IdB)."""
        if isinstance(lifetime, int | float):
            lifetime = timedelta(seconds=lifetime)
        async with self.session() as s:
            return await s.register_key(
                target_id, lifetime=lifetime, labels=labels, key_value=key_value
            )

    async def update_key(
        self,
        kc_id: KcId | str,
        *,
        lifetime: timedelta | None = None,
        labels: Iterable[str] | None = None,
    ) -> datetime | None:
        async with self.session() as s:
            return await s.update_key(kc_id, lifetime=lifetime, labels=labels)

    async def deregister_key(self, kc_id: KcId | str) -> None:
        async with self.session() as s:
            await s.deregister_key(kc_id)


# ----------------------------------------------------------------------------- Entity A <-> B


def _kc_refused(reason: str) -> bool:
    """Whether a failed handshake may mean Entity B refused our Kc (docs/readings.md A-16).

    Entity B fails the handshake with an alert (unknown_psk_identity in TLS 1.2; TLS 1.3
    falls back to a handshake_failure). A peer we could not reach, or that did not answer
    in time, says nothing about the Kc.
    """
    lowered = reason.lower()
    return not (lowered.startswith("cannot reach") or "timed out" in lowered)


class MafInitiator:
    """Entity A of the MAF-based framework towards one Entity B (8.2.2.3).

    ``target_id`` is IdB as registered in targetIDs (an Absolute CSE-ID or AE-ID, 8.8.2.7;
    with ``sp_fqdn`` an SP-relative one is made absolute under it); ``id_b`` the identity
    the session is bound to (default: ``target_id`` as given). ``server_name`` is the SNI
    for Entity B. ``lifetime`` is the Kc lifetime to propose; a Kc is renewed
    ``renew_before`` seconds before it expires. ``entity_a_kind="cse"`` declares Entity A a
    CSE, which seed 001 (8.2.2.3 Credential Configuration) requires to be configured with
    its CSE-ID: ``local_id`` must then be that CSE-ID.
    """

    def __init__(
        self,
        maf_client: MafClient,
        target_id: str,
        server_name: str | None = None,
        *,
        id_b: str | None = None,
        local_id: str | None = None,
        lifetime: timedelta | float | None = None,
        renew_before: float = 5.0,
        tls13: bool = True,
        sp_fqdn: str | None = None,
        clock: Clock | None = None,
        entity_a_kind: str | None = None,
    ) -> None:
        if entity_a_kind not in (None, "cse", "ae"):
            raise ValueError(f"unknown Entity A kind {entity_a_kind!r}; cse or ae")
        if entity_a_kind == "cse" and (
            local_id is None or entity_kind(local_id) is not PeerKind.CSE
        ):
            raise ValueError("an Entity A that is a CSE needs its CSE-ID (seed 001)")
        self.entity_a_kind = entity_a_kind
        self.maf_client = maf_client
        parse_entity_id(target_id)  # a malformed IdB fails here, not at the MAF
        self.id_b = id_b or target_id
        self.target_id = absolute_target(target_id, sp_fqdn) if sp_fqdn else target_id
        self._kind = entity_kind(self.id_b)
        self.server_name = server_name
        self.local_id = local_id
        if isinstance(lifetime, int | float):
            lifetime = timedelta(seconds=lifetime)
        self.lifetime = lifetime
        self.renew_before = renew_before
        self.tls13 = tls13
        self.clock = clock or maf_client.clock
        self._current: IssuedKc | None = None
        self._profile: TLSProfile | None = None
        self._dtls_profile: TLSProfile | None = None
        self._lock = asyncio.Lock()
        #: How many Key Registrations this initiator has run (for tests and logs).
        self.registrations = 0

    def __repr__(self) -> str:
        return f"MafInitiator(target_id={self.target_id!r}, maf={self.maf_client.maf_fqdn!r})"

    @property
    def current(self) -> IssuedKc | None:
        """The Kc in use, if any (Entity A's store of Kc and KcId)."""
        return self._current

    def _usable(self, issued: IssuedKc | None) -> bool:
        return issued is not None and not issued.expired(self.clock(), self.renew_before)

    def invalidate(self) -> None:
        """Forget the current Kc (e.g. after Entity B answered 4107 on expiry)."""
        self._current = None
        self._profile = None
        self._dtls_profile = None

    async def kc(self) -> IssuedKc:
        """A Kc valid for a while yet, registering a fresh one when needed."""
        current = self._current
        if current is not None and self._usable(current):
            return current
        return await self._renew(current)

    async def _renew(self, stale: IssuedKc | None) -> IssuedKc:
        async with self._lock:
            current = self._current
            if current is not None and current is not stale and self._usable(current):
                return current  # another task renewed meanwhile
            issued = await self.maf_client.register_key(self.target_id, self.lifetime)
            self.registrations += 1
            self._current = issued
            self._profile = None
            self._dtls_profile = None
            return issued

    async def update_key(
        self, *, lifetime: timedelta | None = None, labels: Iterable[str] | None = None
    ) -> IssuedKc:
        """Key Registration Update (8.8.2.9) of the current Kc; the Kc in use then carries
        the expiry the MAF granted, so it is not renewed before that."""
        async with self._lock:
            current = self._current
            if current is None:
                raise MafError("no Kc yet: call kc() or connect() first")
            new_labels = tuple(labels) if labels is not None else None
            expires = await self.maf_client.update_key(
                current.kc_id, lifetime=lifetime, labels=new_labels
            )
            updated = replace(
                current,
                expires=expires if expires is not None else current.expires,
                labels=new_labels if new_labels is not None else current.labels,
            )
            self._current = updated
            self._profile = None  # its binding's valid_until was the old expiry
            self._dtls_profile = None
            return updated

    def profile(
        self, issued: IssuedKc | None = None, transport: Transport = Transport.TLS
    ) -> TLSProfile:
        """The TLS-PSK (or, with ``transport=Transport.DTLS``, DTLS-PSK: TS-0003 10.2.1,
        CCM_8 first) profile offering ``issued`` (default: the current Kc)."""
        issued = issued or self._current
        if issued is None:
            raise MafError("no Kc yet: call kc() or connect() first")
        cached = self._dtls_profile if transport is Transport.DTLS else self._profile
        if cached is not None and issued is self._current:
            return cached
        binding = PeerBinding(
            peer_id=self.id_b,
            kind=self._kind,
            key_id=str(issued.kc_id),
            valid_until=issued.expires,
        )
        identity = str(issued.kc_id).encode()
        kc = issued.kc

        def offer(hint: bytes | None) -> tuple[bytes, bytes, PeerBinding]:
            return identity, kc, binding  # any identity hint is ignored

        suites = PSK_SUITES_DTLS if transport is Transport.DTLS else PSK_SUITES_TLS
        profile = TLSProfile(
            framework=Framework.MAF,
            transport=transport,
            server_side=False,
            ssl_context=new_context(transport, server_side=False, suites=suites, tls13=self.tls13),
            local_id=self.local_id,
            psk_offer=offer,
            server_name=self.server_name,
        )
        if issued is self._current:
            if transport is Transport.DTLS:
                self._dtls_profile = profile
            else:
                self._profile = profile
        return profile

    async def connect(self, host: str, port: int, *, timeout: float = 10.0) -> TLSConnection:
        """Associate with Entity B; renew the Kc and retry once if B refuses it."""
        before = self._current
        issued = await self.kc()
        fresh = issued is not before
        try:
            return await tls_connect(host, port, self.profile(issued), timeout=timeout)
        except HandshakeError as exc:
            if fresh or not _kc_refused(exc.reason):
                raise
            log.info(
                "handshake with KcId %s failed (%s); running a fresh MAF Handshake",
                issued.kc_id,
                exc.reason,
            )
        renewed = await self._renew(issued)
        try:
            return await tls_connect(host, port, self.profile(renewed), timeout=timeout)
        except HandshakeError as exc:
            raise HandshakeError(f"{exc.reason} (also with a fresh Kc {renewed.kc_id})") from None

    async def connect_dtls(self, host: str, port: int, *, timeout: float = 10.0) -> DTLSAssociation:
        """:meth:`connect` over DTLS 1.2 (CoAP binding, TS-0003 10.2.1): the same Kc and
        KcId as psk_identity, the DTLS-PSK suites; renew and retry once if B refuses it."""
        from m2msec.tls.aio_dtls import dtls_connect

        before = self._current
        issued = await self.kc()
        fresh = issued is not before
        try:
            return await dtls_connect(
                self.profile(issued, Transport.DTLS), host, port, timeout=timeout
            )
        except HandshakeError as exc:
            if fresh or not _kc_refused(exc.reason):
                raise
            log.info(
                "DTLS handshake with KcId %s failed (%s); fresh MAF Handshake",
                issued.kc_id,
                exc.reason,
            )
        renewed = await self._renew(issued)
        try:
            return await dtls_connect(
                self.profile(renewed, Transport.DTLS), host, port, timeout=timeout
            )
        except HandshakeError as exc:
            raise HandshakeError(f"{exc.reason} (also with a fresh Kc {renewed.kc_id})") from None


# ----------------------------------------------------------------------------- Entity B <-> MAF


@dataclass(slots=True)
class RetrieverStats:
    """Counters of a :class:`MafKeyRetriever` (no identifiers, no keys)."""

    cache_hits: int = 0
    retrievals: int = 0
    coalesced: int = 0
    refused: int = 0
    failed: int = 0
    connections: int = 0


@dataclass(slots=True)
class _Link:
    conn: TLSConnection
    http: OneM2MClient


_CacheKey = tuple[bytes, str]


def _key(kc_id: KcId) -> _CacheKey:
    return (kc_id.relative_bytes, kc_id.maf_fqdn.lower())


def _address(value: object, fqdn: str) -> tuple[str, int]:
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
    elif isinstance(value, str) and ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host.strip("[]")
        port = int(port_text) if port_text.isdigit() else -1
    else:
        raise ConfigurationError(f"MAF {fqdn}: address must be HOST:PORT, got {value!r}")
    if not isinstance(host, str) or not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"MAF {fqdn}: address must be HOST:PORT, got {value!r}")
    return host, port


class MafKeyRetriever:
    """Entity B as Target MAF Client: Key Retrieval (8.8.2.8) over mutual TLS.

    ``credential`` is Entity B's certificate (naming its CSE-ID, 10.1.1.5), which the MAF
    checks against the key's targetIDs. ``maf_addresses`` maps each MAF-FQDN Entity B may
    use to the address of that MAF's retrieval listener (``(host, port)`` or
    ``"host:port"``); the MAF's certificate must name the FQDN (10.1.1.6). ``in_domain``,
    ``local_id`` and ``sp_fqdn`` are as for :class:`CertificateInitiator`.

    Retrieved keys are cached until their expirationTime (at most ``cache_size``, least
    recently used first out); concurrent retrievals of one KcId share one request; at most
    ``max_concurrent`` requests are in flight, over at most ``pool_size`` kept-alive
    connections per MAF.
    """

    def __init__(
        self,
        credential: CertificateCredential,
        maf_addresses: Mapping[str, tuple[str, int] | str],
        *,
        in_domain: str,
        local_id: str | None = None,
        sp_fqdn: str | None = None,
        cache_size: int = 1024,
        timeout: float = 5.0,
        max_concurrent: int = 64,
        pool_size: int = 4,
        tls13: bool = True,
        clock: Clock = _now,
    ) -> None:
        if cache_size < 1 or max_concurrent < 1 or pool_size < 0:
            raise ValueError("cache_size and max_concurrent must be positive")
        if not maf_addresses:
            raise ConfigurationError("no MAF configured for Key Retrieval")
        self._addresses: dict[str, tuple[str, int]] = {}
        self._profiles: dict[str, TLSProfile] = {}
        self.local_id: str | None = None
        for fqdn_raw, value in maf_addresses.items():
            fqdn = check_fqdn(fqdn_raw, "MAF FQDN").lower()
            self._addresses[fqdn] = _address(value, fqdn)
            try:
                initiator = CertificateInitiator.for_service(
                    credential, fqdn, in_domain=in_domain, local_id=local_id, sp_fqdn=sp_fqdn
                )
            except (CertificateError, IdentifierError) as exc:
                raise ConfigurationError(f"MAF Key Retrieval credential: {exc}") from None
            self.local_id = initiator.local_id
            self._profiles[fqdn] = initiator.profile(tls13=tls13)
        self.cache_size = cache_size
        self.timeout = timeout
        self.pool_size = pool_size
        self.clock = clock
        self.stats = RetrieverStats()
        self._cache: OrderedDict[_CacheKey, RetrievedKc] = OrderedDict()
        self._inflight: dict[_CacheKey, asyncio.Task[RetrievedKc]] = {}
        self._idle: dict[str, list[_Link]] = {fqdn: [] for fqdn in self._addresses}
        self._limit = asyncio.Semaphore(max_concurrent)
        self._closed = False

    def __repr__(self) -> str:
        return f"MafKeyRetriever(mafs={sorted(self._addresses)!r}, local_id={self.local_id!r})"

    @property
    def mafs(self) -> dict[str, tuple[str, int]]:
        return dict(self._addresses)

    def knows(self, maf_fqdn: str) -> bool:
        """Whether ``maf_fqdn`` is a configured MAF (no network call)."""
        return maf_fqdn.lower() in self._addresses

    def cached(self, kc_id: KcId) -> RetrievedKc | None:
        """The cached, unexpired answer for ``kc_id``, if any."""
        key = _key(kc_id)
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit.expired(self.clock()):
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return hit

    def invalidate(self, kc_id: KcId | str) -> None:
        """Drop a cached key (the next handshake asks the MAF again)."""
        kc = kc_id if isinstance(kc_id, KcId) else KcId.parse(kc_id)
        self._cache.pop(_key(kc), None)

    async def retrieve(self, kc_id: KcId | str) -> RetrievedKc:
        """Kc and its metadata for ``kc_id``; :class:`KeyRetrievalError` with a reason."""
        if self._closed:
            raise KeyRetrievalError("the key retriever is closed")
        try:
            kc = kc_id if isinstance(kc_id, KcId) else KcId.parse(kc_id)
        except IdentifierError as exc:
            raise KeyRetrievalError(str(exc)) from None
        if not self.knows(kc.maf_fqdn):
            self.stats.refused += 1
            raise KeyRetrievalError(f"{kc} names the MAF {kc.maf_fqdn}, which is not configured")
        if len(kc.relative_bytes) != RELATIVE_ID_LENGTH:
            self.stats.refused += 1
            raise KeyRetrievalError(
                f"{kc}: a RelativeKeyID is {RELATIVE_ID_LENGTH} octets (TS-0003 10.3.1)"
            )
        hit = self.cached(kc)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit
        key = _key(kc)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(kc))
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._done(k, t))  # type: ignore[misc]
        else:
            self.stats.coalesced += 1
        # shield: one caller giving up (its handshake timed out) must not cancel the others.
        return await asyncio.shield(task)

    def _done(self, key: _CacheKey, task: asyncio.Task[RetrievedKc]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so that no waiter left is no warning

    async def _fetch(self, kc: KcId) -> RetrievedKc:
        fqdn = kc.maf_fqdn.lower()
        async with self._limit:
            try:
                response = await asyncio.wait_for(self._request(fqdn, kc), self.timeout)
            except TimeoutError:
                self.stats.failed += 1
                raise KeyRetrievalError(
                    f"Key Retrieval of {kc}: the MAF {fqdn} did not answer in time"
                ) from None
            except HandshakeError as exc:
                self.stats.failed += 1
                host, port = self._addresses[fqdn]
                raise KeyRetrievalError(
                    f"Key Retrieval of {kc}: no channel to the MAF {fqdn} at {host}:{port}: "
                    f"{exc.reason}"
                ) from None
            except (ConnectionError, OSError, h11.ProtocolError) as exc:
                self.stats.failed += 1
                raise KeyRetrievalError(
                    f"Key Retrieval of {kc}: the connection to the MAF {fqdn} failed ({exc})"
                ) from None
        self.stats.retrievals += 1
        got = self._read(kc, response)
        if got.expired(self.clock()):
            self.stats.refused += 1
            raise KeyRetrievalError(f"Kc of {kc} expired at {format_time(got.expires)}")
        self._cache[_key(kc)] = got
        self._cache.move_to_end(_key(kc))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return got

    async def _request(self, fqdn: str, kc: KcId) -> OneM2MResponse:
        host, port = self._addresses[fqdn]
        target = f"/maf/keys/{kc.relative_hex}"
        origin = self.local_id or ""
        for _ in range(2):
            idle = self._idle[fqdn]
            link = idle.pop() if idle else None
            reused = link is not None
            if link is None:
                conn = await tls_connect(host, port, self._profiles[fqdn], timeout=self.timeout)
                self.stats.connections += 1
                link = _Link(conn, OneM2MClient(conn, host=fqdn))
            try:
                response = await link.http.request("GET", target, origin=origin)
            except (ConnectionError, OSError, h11.ProtocolError):
                link.conn.abort()
                if reused:
                    # The MAF closed a kept-alive connection; the other idle ones are likely
                    # as old: drop them all and try once more on a fresh connection.
                    self._drop_idle(fqdn)
                    continue
                raise
            except BaseException:
                link.conn.abort()  # cancelled mid-request: the HTTP state is unknown
                raise
            keep = response.headers.get("connection", "").lower() != "close"
            if keep and not self._closed and len(self._idle[fqdn]) < self.pool_size:
                self._idle[fqdn].append(link)
            else:
                with contextlib.suppress(Exception):
                    await link.conn.close()
            return response
        raise ConnectionError("the MAF closed the connection")

    def _drop_idle(self, fqdn: str) -> None:
        links, self._idle[fqdn] = self._idle[fqdn], []
        for link in links:
            link.conn.abort()

    def _read(self, kc: KcId, response: OneM2MResponse) -> RetrievedKc:
        fqdn = kc.maf_fqdn.lower()
        if response.rsc == 4004:
            self.stats.refused += 1
            raise KeyRetrievalError(
                f"the MAF {fqdn} does not know {kc} (unknown, expired or de-registered)", 4004
            )
        if response.rsc == 4103:
            self.stats.refused += 1
            raise KeyRetrievalError(
                f"the MAF {fqdn} refuses to give us the Kc of {kc}: "
                f"{self.local_id} is not among its targetIDs",
                4103,
            )
        try:
            doc = _expect(response, 2000, f"Key Retrieval of {kc}", fqdn)
            key = _member(doc, "mafKey", f"Key Retrieval of {kc}", fqdn)
            return self._parse(kc, key)
        except KeyRetrievalError:
            self.stats.failed += 1
            raise
        except MafError as exc:
            self.stats.failed += 1
            raise KeyRetrievalError(exc.reason, exc.rsc) from None

    def _parse(self, kc: KcId, key: dict[str, Any]) -> RetrievedKc:
        fqdn = kc.maf_fqdn.lower()
        what = f"Key Retrieval of {kc}: the MAF {fqdn} answered"
        try:
            body = wire.MafKeyBody.parse(key)
        except wire.WireError as exc:
            raise KeyRetrievalError(f"{what}: {exc}") from None
        if not hmac.compare_digest(body.relative_id, kc.relative_bytes):
            raise KeyRetrievalError(f"{what} for another relativeKeyID")
        if body.suid != SUID_MAF_SAEF:
            raise KeyRetrievalError(
                f"{what} SUID {body.suid!r}: the key is not for the MAF-based SAEF (32)"
            )
        return RetrievedKc(
            kc_id=kc,
            kc=body.key_value,
            expires=body.expires,
            km_id=body.source_client_id,
            entity_id=body.entity_id,
            suid=SUID_MAF_SAEF,
            admin_fqdn=body.admin_fqdn,
            labels=body.labels or (),
        )

    async def close(self) -> None:
        """Close kept-alive connections and cancel retrievals in flight."""
        self._closed = True
        for task in list(self._inflight.values()):
            task.cancel()
        for links in self._idle.values():
            while links:
                link = links.pop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.conn.close(), 1.0)
        self._cache.clear()

    async def __aenter__(self) -> MafKeyRetriever:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ----------------------------------------------------------------------------- Entity B


def _km_credential(km_id: str) -> str:
    try:
        km = KmId.parse(km_id)
    except IdentifierError:
        km = KmId.parse(km_id, verbatim=True)  # a GBA B-TID as KmID (docs/readings.md A-25)
    return str(CredentialId.for_km_id(km))


class MafResponder:
    """Entity B of the MAF-based framework (8.2.2.3): TLS-PSK server resolving KcIds.

    ``local_id`` is Entity B's own CSE-ID; ``sp_fqdn`` the local M2M-SP FQDN, under which
    absolute identities from the MAF are shortened to their SP-relative form (docs/readings.md
    A-14), as the other frameworks bind them.
    """

    def __init__(
        self,
        retriever: MafKeyRetriever,
        local_id: str | None = None,
        *,
        sp_fqdn: str | None = None,
        require_sni: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.retriever = retriever
        self.local_id = local_id
        self.sp_fqdn = check_fqdn(sp_fqdn, "M2M-SP FQDN").lower() if sp_fqdn else None
        self.require_sni = require_sni
        self.clock = clock or retriever.clock

    def __repr__(self) -> str:
        return f"MafResponder(local_id={self.local_id!r}, mafs={sorted(self.retriever.mafs)!r})"

    def binding_for(self, got: RetrievedKc) -> PeerBinding:
        """IdA from the MAF (AE-ID or CSE-ID), else the Credential-ID ``11-<KmID>`` (10.4)."""
        if got.entity_id:
            try:
                entity = parse_entity_id(got.entity_id)
            except IdentifierError as exc:
                raise HandshakeError(
                    f"the MAF gave an unusable entity ID for {got.kc_id}: {exc}"
                ) from None
            if entity.sp_fqdn is not None and entity.sp_fqdn.lower() == self.sp_fqdn:
                peer = entity.sp_relative()
            else:
                peer = str(entity)
            kind = PeerKind.CSE if entity_kind(str(entity)) is PeerKind.CSE else PeerKind.AE
            return PeerBinding(peer, kind, key_id=str(got.kc_id), valid_until=got.expires)
        try:
            credential = _km_credential(got.km_id)
        except IdentifierError as exc:
            raise HandshakeError(
                f"the MAF gave an unusable Source MAF Client ID for {got.kc_id}: {exc}"
            ) from None
        return PeerBinding(
            credential, PeerKind.CREDENTIAL, key_id=str(got.kc_id), valid_until=got.expires
        )

    async def resolve(
        self, identity: bytes, cipher_suite: int | None = None
    ) -> tuple[bytes, PeerBinding]:
        """The engine's asynchronous PSK lookup: KcId -> (Kc, binding); refusals raise."""
        try:
            kc_id = KcId.parse(identity.decode("ascii"))
        except (UnicodeDecodeError, IdentifierError):
            raise HandshakeError(
                f"psk_identity {_printable(identity)!r} is not a MAF Key Identifier "
                "(hexBinary(KcID)@MAF-FQDN, TS-0003 10.3.5)"
            ) from None
        if not self.retriever.knows(kc_id.maf_fqdn):
            raise HandshakeError(f"{kc_id} names the MAF {kc_id.maf_fqdn}, which is not ours")
        try:
            got = await self.retriever.retrieve(kc_id)
        except KeyRetrievalError as exc:
            raise HandshakeError(exc.reason) from None
        if got.expired(self.clock()):
            raise HandshakeError(f"Kc of {kc_id} expired at {format_time(got.expires)}")
        return got.kc, self.binding_for(got)

    def resumption_check(self, binding: PeerBinding) -> PeerBinding | None:
        """Before a session is resumed (when resumption is enabled, m2msec.tls.sessions):
        its Kc must still be held and unexpired; otherwise a full handshake asks the MAF."""
        try:
            kc_id = KcId.parse(binding.key_id or "")
        except IdentifierError:
            raise HandshakeError("session not resumed: it carries no KcId") from None
        if self.retriever.cached(kc_id) is None:
            raise HandshakeError(f"session not resumed: the Kc of {kc_id} is no longer held")
        return None

    def profile(self, transport: Transport = Transport.TLS, *, tls13: bool = True) -> TLSProfile:
        """Entity B's profile: the 10.2.2 PSK suites and the asynchronous KcId lookup."""
        suites = PSK_SUITES_DTLS if transport is Transport.DTLS else PSK_SUITES_TLS
        ctx = new_context(transport, server_side=True, suites=suites, tls13=tls13)
        return TLSProfile(
            framework=Framework.MAF,
            transport=transport,
            server_side=True,
            ssl_context=ctx,
            local_id=self.local_id,
            psk_async_resolver=self.resolve,
            require_sni=self.require_sni,
            resumption_check=self.resumption_check,
        )
