"""Entity A as Source MAF Client: the MAF Handshake and the procedures over it (TS-0003 8.8.2).

* **MAF Handshake** (8.8.2.2): Entity A and the MAF run TLS-PSK (10.2.2) with
  psk_identity = KmID (10.6) and psk = Km. :class:`MafClient` opens it; a
  :class:`MafSession` runs over it, on the HTTP mapping of ``docs/maf.md`` (ours: TS-0032
  is not available), Client Registration, Configuration Retrieval, Registration Update and
  De-Registration (8.8.2.3-8.8.2.6) and Key Registration, Update and De-Registration
  (8.8.2.7, 8.8.2.9, 8.8.2.10).
* **Kc and KcId** (10.3.1, 10.3.5): Key Registration without a key value makes both ends
  export 48 octets with ``EXPORTER-oneM2M-Connection`` from that very TLS session; the
  first 16 are KcID, the last 32 are Kc (:func:`m2msec.crypto.keyexport.split_export`).
  The Key Identifier sent later as psk_identity is ``hexBinary(KcID)@MAF-FQDN``
  (:class:`m2msec.keyids.KcId`).

Keys never appear in ``repr``, logs or error messages; key identifiers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

from m2msec.crypto.keyexport import EXPORT_LENGTH, LABEL_CONNECTION, split_export
from m2msec.errors import HandshakeError, IdentifierError
from m2msec.frameworks.maf.common import (
    SUID_MAF_SAEF,
    Clock,
    IssuedKc,
    MafClientRegistration,
    MafError,
    expect,
    labels_of,
    maf_profile,
    member,
    parse_time,
    utc_now,
)
from m2msec.ids import AeId, check_fqdn, parse_entity_id
from m2msec.keyids import KcId, KmId
from m2msec.maf import wire
from m2msec.service.onem2m_client import OneM2MClient
from m2msec.tls.aio import TLSConnection
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.context import PeerBinding, PeerKind
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = [
    "DEFAULT_CLIENT_LIFETIME",
    "DEFAULT_KEY_LIFETIME",
    "MafClient",
    "MafSession",
    "absolute_target",
]

log = logging.getLogger(__name__)

#: expirationTime proposed for a Kc when the caller names no lifetime (the MAF may cut it).
DEFAULT_KEY_LIFETIME = timedelta(hours=24)
#: expirationTime proposed for a Client Registration when the caller names none.
DEFAULT_CLIENT_LIFETIME = timedelta(days=30)

_Body = TypeVar("_Body")
_Args = ParamSpec("_Args")
_Result = TypeVar("_Result")


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
        except (ConnectionError, OSError) as exc:
            raise MafError(f"{what}: the connection to the MAF {self.maf} failed ({exc})") from None
        return expect(response, want, what, self.maf)

    def _answer(
        self,
        doc: dict[str, Any],
        name: str,
        parse: Callable[[Mapping[str, Any]], _Body],
        what: str,
    ) -> _Body:
        """The object ``name`` of an answer, read by :mod:`m2msec.maf.wire`."""
        try:
            return parse(member(doc, name, what, self.maf))
        except wire.WireError as exc:
            raise MafError(f"{what}: the MAF {self.maf} {exc}") from None

    def _update(
        self, lifetime: timedelta | None, labels: Iterable[str] | None, clause: str
    ) -> dict[str, Any]:
        """The attributes a Registration Update changes (8.8.2.5, 8.8.2.9: at least one)."""
        reg: dict[str, Any] = {}
        if lifetime is not None:
            reg["expirationTime"] = wire.format_time(self._owner.clock() + lifetime)
        if labels is not None:
            reg["labels"] = list(labels)
        if not reg:
            raise ValueError(f"give a lifetime or labels ({clause}: at least one)")
        return reg

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
        answer = self._answer(doc, "mafClientReg", wire.MafClientRegBody.parse, what)
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
        return member(doc, "mafClientCfg", what, self.maf)

    async def update_client(
        self,
        reg_id: str,
        *,
        lifetime: timedelta | None = None,
        labels: Iterable[str] | None = None,
    ) -> MafClientRegistration:
        """MAF Client Registration Update (8.8.2.5): a new lifetime and/or labels."""
        what = "MAF Client Registration Update"
        reg = self._update(lifetime, labels, "8.8.2.5")
        doc = await self._call(
            "PUT", f"/maf/clients/{quote(reg_id, safe='')}", {"mafClientReg": reg}, 2004, what
        )
        out = doc.get("mafClientReg", {}) if isinstance(doc.get("mafClientReg"), dict) else {}
        expires = out.get("expirationTime")
        return MafClientRegistration(
            reg_id=reg_id,
            expires=parse_time(expires) if expires is not None else None,
            labels=labels_of(out.get("labels")),
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
        answer = self._answer(doc, "mafKeyReg", wire.MafKeyRegBody.parse, what)
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
            wire.format_time(issued.expires),
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
        reg = self._update(lifetime, labels, "8.8.2.9")
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


def _one_handshake(
    procedure: Callable[Concatenate[MafSession, _Args], Awaitable[_Result]],
) -> Callable[Concatenate[MafClient, _Args], Coroutine[Any, Any, _Result]]:
    """A :class:`MafClient` method that runs ``procedure`` over a MAF Handshake of its own."""

    @functools.wraps(procedure)
    async def run(client: MafClient, /, *args: _Args.args, **kwargs: _Args.kwargs) -> _Result:
        async with client.session() as session:
            return await procedure(session, *args, **kwargs)

    return run


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
        clock: Clock = utc_now,
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
            start = maf_profile(
                Transport.TLS, server_side=False, tls13=self.tls13, local_id=self.origin
            )
            self._profile = replace(start, psk_offer=self._offer, server_name=self.server_name)
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

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[MafSession]:
        """``async with client.session() as s:`` one MAF Handshake for several procedures."""
        session = await self.open_session()
        try:
            yield session
        finally:
            await session.close()

    # The MafSession procedures, each over a MAF Handshake of its own.
    register_client = _one_handshake(MafSession.register_client)
    client_config = _one_handshake(MafSession.client_config)
    update_client = _one_handshake(MafSession.update_client)
    deregister_client = _one_handshake(MafSession.deregister_client)
    update_key = _one_handshake(MafSession.update_key)
    deregister_key = _one_handshake(MafSession.deregister_key)

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
