"""The M2M Authentication Function server (TS-0003 8.2.2.3, 8.8.2): ``m2msec maf serve``.

Two TLS listeners, one framework each:

* the **client listener** runs the MAF Handshake (8.8.2.2): TLS-PSK with psk_identity =
  KmId and psk = Km (cipher suites of 10.2.2, TLS 1.2 and 1.3), looked up in the MAF store
  by a synchronous :data:`~m2msec.tls.profiles.PskResolver`; an unknown or disabled KmId
  fails the handshake. Source MAF Clients (Entity A) use it for Client Registration,
  Configuration Retrieval, Registration Update and De-Registration (8.8.2.3-8.8.2.6) and
  Key Registration, Update and De-Registration (8.8.2.7, 8.8.2.9, 8.8.2.10). A Key
  Registration without ``keyValue`` takes Kc and KcID from the session's RFC 5705 exporter
  (``EXPORTER-oneM2M-Connection``, 48 octets, no context; 10.3.1), once per session.
* the **retrieval listener** runs the certificate framework (8.2.2.2) with the MAF's FQDN
  certificate (10.1.1.6) and requires a client certificate: the "mutually authenticated
  secure channel" of the seed CR over which Entity B (an IN-CSE, e.g. our gateway) runs Key
  Retrieval (8.8.2.8). The identity read from its certificate is what is checked against
  the allowed Entity Bs and the key's targetIDs.

Requests are HTTP/1.1 (:mod:`m2msec.bindings.http`) mapped onto the procedures by
:mod:`m2msec.maf.protocol`. Every write (key registrations above all) and every audit record
goes through one *journal* that commits what has queued up in one SQLite transaction
(each request in its own savepoint, the batch's audit records in the ``audit`` table of the
same transaction), copies the records to the ``audit.log`` file, and only then lets the
requests be answered: a 2001 CREATED is never sent for a key that is not committed, and
concurrent requests share the cost of the commit (group commit).

Durability (``durability``): "normal" commits on the loop's thread without fsync (SQLite
``synchronous=NORMAL``, WAL): a committed key survives the MAF process being killed, but
not necessarily a power cut, after which Entity A's next handshake with Entity B fails and
it runs a fresh MAF Handshake (8.2.2.3). "full" fsyncs every commit, from the journal's
worker thread while the event loop goes on serving. The default is "normal" for SQLite and
"full" for PostgreSQL, where "normal" would let a crash of the database server (which
several MAF instances share) lose acknowledged keys. See docs/maf.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from m2msec.bindings.http import (
    BadRequest,
)
from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest
from m2msec.config.maf import (
    DEFAULT_LISTEN,
    DEFAULT_RETRIEVAL_LISTEN,
    MafConfig,
    load_maf_config,
    parse_maf_config,
)
from m2msec.crypto.keyexport import EXPORT_LENGTH, LABEL_CONNECTION
from m2msec.errors import (
    CertificateError,
    ConfigurationError,
    HandshakeError,
    IdentifierError,
    M2MSecError,
    StoreError,
)
from m2msec.keyids import CredentialId
from m2msec.maf import protocol as p
from m2msec.maf import requests as rq
from m2msec.maf import rules
from m2msec.maf.audit import AuditEvent, AuditLog, audit_record
from m2msec.maf.store import (
    MafStore,
    MafWriter,
    MasterCredential,
    NewKey,
    default_maf_store_path,
    open_maf_store,
    parse_km_id,
)
from m2msec.servers.maf_journal import AuditFor, MafJournal
from m2msec.service.limits import HttpLimits
from m2msec.service.server import HttpService, ServiceHooks
from m2msec.store.outage import StoreOutage
from m2msec.store.schema import require_initialised
from m2msec.tls.aio import TLSConnection, TLSServer
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import PSK_SUITES_TLS, TLSProfile, Transport, new_context

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_RETRIEVAL_LISTEN",
    "MafConfig",
    "MafServer",
    "MafStats",
    "load_maf_config",
    "parse_maf_config",
]

log = logging.getLogger(__name__)

AUDIT_LOG_NAME: Final = "audit.log"
#: TLSServer's reasons for connections that never reached a decision.
_NOT_AUDITED: Final = (
    "connection lost during the handshake",
    "connection closed during the handshake",
    "handshake timed out",
    "too many handshakes in progress",
)


@dataclass(slots=True)
class MafStats:
    """Counters since start (no identities, no keys)."""

    client_associations: int = 0
    retrieval_associations: int = 0
    handshakes_failed: int = 0
    requests: int = 0
    keys_issued: int = 0
    keys_retrieved: int = 0
    keys_updated: int = 0
    keys_deregistered: int = 0
    client_registrations: int = 0
    requests_refused: int = 0
    bad_requests: int = 0
    internal_errors: int = 0
    store_errors: int = 0
    refused_by_rsc: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name != "refused_by_rsc"
        }
        out["refused_by_rsc"] = {str(k): v for k, v in sorted(self.refused_by_rsc.items())}
        return out


@dataclass(slots=True, eq=False)
class _ClientSession:
    """One MAF Handshake session of a Source MAF Client."""

    conn: TLSConnection
    km: MasterCredential
    exported_used: bool = False


Handle = Callable[[OneM2MRequest], Awaitable[HttpResponse]]


class MafServer:
    """The MAF (module documentation): ``async with MafServer(config) as maf: ...``.

    ``store`` overrides the configured store (and is not closed by the server; its own
    ``synchronous`` setting then decides the durability); ``clock`` gives "now" to the
    procedures (tests).
    """

    def __init__(
        self,
        config: MafConfig,
        store: MafStore | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.policy = config.policy()
        self.stats = MafStats()
        #: Refuse a missing or schema-less SQLite store instead of creating one.
        self.require_existing_store = False
        self._store_outage = StoreOutage(
            "MAF store", logger=log, on_failure=self._count_store_error
        )
        self._store = store
        self._own_store = store is None
        self._clock = clock
        self._audit: AuditLog | None = None
        self._journal: MafJournal | None = None
        self._client_server: TLSServer | None = None
        self._retrieval_server: TLSServer | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._http = HttpService(
            HttpLimits.of(config),
            ServiceHooks(
                internal_error=self._internal_error,
                close_after_error=False,
                on_bad_request=self._count_bad_request,
                on_request=self._count_request,
                close_stream=False,  # TLSServer ends the association with close_notify
            ),
            name="MAF",
        )

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def store(self) -> MafStore:
        assert self._store is not None, "start() the server first"
        return self._store

    @property
    def audit_path(self) -> Path:
        if self.config.audit_log:
            return Path(self.config.audit_log).expanduser()
        if self._store is not None:
            return self._store.path.parent / AUDIT_LOG_NAME
        return default_maf_store_path().parent / AUDIT_LOG_NAME

    @property
    def client_port(self) -> int:
        assert self._client_server is not None
        return self._client_server.port

    @property
    def retrieval_port(self) -> int | None:
        return None if self._retrieval_server is None else self._retrieval_server.port

    @property
    def journal_batches(self) -> tuple[int, int]:
        """(transactions committed, jobs in them): how much the group commit grouped."""
        j = self._journal
        return (0, 0) if j is None else (j.batches, j.jobs)

    async def __aenter__(self) -> MafServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store, the audit log and the listeners. Raises ConfigurationError (bad
        configuration or credentials), StoreError, or OSError (a port in use)."""
        if self._started:
            raise RuntimeError("MAF server already started")
        self._started = True
        cfg = self.config
        try:
            client_spec = cfg.listener("listen")
            retrieval_spec = cfg.listener("retrieval_listen") if cfg.retrieval_listen else None
            retrieval_profile = self._retrieval_profile() if retrieval_spec else None
            if self._store is None:
                if self.require_existing_store:  # serve without --init (issue 9 item 3)
                    require_initialised(
                        cfg.store or default_maf_store_path(),
                        label="MAF store",
                        create="m2msec maf add-client",
                    )
                self._store = open_maf_store(cfg.store, synchronous=cfg.effective_durability)
            self._audit = AuditLog(self.audit_path, fsync=False)
            # Commit on the loop's thread only when commits do not fsync (never for
            # PostgreSQL: a commit there is a network round trip).
            inline = self._store.synchronous != "full" and self._store.in_process
            self._journal = MafJournal(
                self._store, self._audit, inline=inline, outage=self._store_outage
            )
            self._journal.start()
            self._client_server = TLSServer(
                self._client_profile(),
                self._serve_client,
                handshake_timeout=cfg.handshake_timeout,
                max_handshakes=cfg.max_handshakes,
                on_failure=lambda peer, reason: self._handshake_failed("client", peer, reason),
            )
            await self._client_server.start(client_spec.host, client_spec.port)
            log.info(
                "MAF client listener (MAF Handshake, TLS-PSK) on %s:%d",
                client_spec.host,
                self.client_port,
            )
            if retrieval_spec is not None and retrieval_profile is not None:
                self._retrieval_server = TLSServer(
                    retrieval_profile,
                    self._serve_retrieval,
                    handshake_timeout=cfg.handshake_timeout,
                    max_handshakes=cfg.max_handshakes,
                    on_failure=lambda peer, reason: self._handshake_failed(
                        "retrieval", peer, reason
                    ),
                )
                await self._retrieval_server.start(retrieval_spec.host, retrieval_spec.port)
                log.info(
                    "MAF retrieval listener (Key Retrieval, mutual TLS) on %s:%d",
                    retrieval_spec.host,
                    self.retrieval_port,
                )
            self._purge_task = asyncio.get_running_loop().create_task(self._purge_loop())
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening, end the sessions, commit what is queued, close files."""
        if self._closed:
            return
        self._closed = True
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        for server in (self._client_server, self._retrieval_server):
            if server is not None:
                await server.close()
        if self._journal is not None:
            await self._journal.close()
        if self._audit is not None:
            self._audit.close()
        if self._own_store and self._store is not None:
            self._store.close()
        if self._client_server is not None:
            log.info("MAF stopped: %s", self.stats.as_dict())

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then close."""
        try:
            await stop.wait()
        finally:
            await self.close()

    # -- profiles -------------------------------------------------------------------------
    def _client_profile(self) -> TLSProfile:
        ctx = new_context(
            Transport.TLS, server_side=True, suites=PSK_SUITES_TLS, tls13=self.config.tls13
        )
        return TLSProfile(
            framework=Framework.MAF,
            transport=Transport.TLS,
            server_side=True,
            ssl_context=ctx,
            local_id=self.config.fqdn.lower(),
            psk_resolver=self.resolve_km,
        )

    def _retrieval_profile(self) -> TLSProfile:
        from m2msec.frameworks.certificate import CertificateCredential, CertificateResponder

        cfg = self.config
        missing = [n for n in ("cert", "key", "ca") if getattr(cfg, n) is None]
        if missing:
            raise ConfigurationError(
                "the retrieval listener needs the MAF's certificate: give "
                + ", ".join(f"--{n}" for n in missing)
                + " ([certificates] in the config file), or turn Key Retrieval off "
                '(--retrieval-listen off, retrieval_listen = "")'
            )
        assert cfg.cert is not None and cfg.key is not None and cfg.ca is not None
        try:
            credential = CertificateCredential.from_files(cfg.cert, cfg.key, cfg.ca)
            responder = CertificateResponder(
                credential,
                in_domain=cfg.effective_in_domain,
                local_id=cfg.fqdn.lower(),
                services=[cfg.fqdn],
                sp_fqdn=cfg.effective_sp_fqdn,
                crl=cfg.crl,
            )
        except (CertificateError, IdentifierError) as exc:
            raise ConfigurationError(f"MAF certificate: {exc}") from None
        return responder.profile(tls13=cfg.tls13)

    def resolve_km(self, identity: bytes) -> tuple[bytes, PeerBinding]:
        """The MAF Handshake's PSK lookup (8.8.2.2): KmId -> Km; refusals raise."""
        try:
            text = identity.decode("utf-8")
            km_id = parse_km_id(text)
        except (UnicodeDecodeError, IdentifierError) as exc:
            raise HandshakeError(f"malformed KmId: {exc}") from None
        try:
            cred = self.store.get_client(text)
        except StoreError as exc:
            self._store_outage.failed(exc)
            raise HandshakeError("the MAF store cannot be read") from None
        self._store_outage.succeeded()
        if cred is None:
            raise HandshakeError(f"unknown KmId {text!r}")
        if not cred.enabled:
            raise HandshakeError(f"KmId {text!r} is disabled")
        binding = PeerBinding(
            peer_id=str(CredentialId.for_km_id(km_id)),
            kind=PeerKind.CREDENTIAL,
            key_id=cred.canonical,
        )
        return cred.km, binding

    def _count_store_error(self) -> None:
        self.stats.store_errors += 1

    def _handshake_failed(self, listener: str, peer: tuple[Any, ...] | None, reason: str) -> None:
        self.stats.handshakes_failed += 1
        # Connections that ended before a handshake was judged (port probes, timeouts,
        # load shedding) are counted and logged by TLSServer, not audited.
        if reason.startswith(_NOT_AUDITED):
            return
        if self._journal is not None:
            self._journal.note(
                [
                    audit_record(
                        AuditEvent.HANDSHAKE_REFUSED,
                        listener=listener,
                        peer=_addr(peer),
                        reason=reason,
                    )
                ]
            )

    # -- connections ----------------------------------------------------------------------
    async def _serve_client(self, conn: TLSConnection) -> None:
        ctx = conn.context
        km = self.store.get_client(ctx.key_id or "")
        if km is None or not km.enabled:
            return  # removed between the PSK lookup and now
        self.stats.client_associations += 1
        session = _ClientSession(conn, km)
        log.debug("MAF Handshake with %s (%s, %s)", km.km_id, ctx.protocol, ctx.cipher_suite)

        async def handle(request: OneM2MRequest) -> HttpResponse:
            return await self._handle_client(session, request)

        await self._http_loop(conn, handle)

    async def _serve_retrieval(self, conn: TLSConnection) -> None:
        ctx = conn.context
        self.stats.retrieval_associations += 1
        retriever = ctx.peer_id if ctx.peer_kind in (PeerKind.AE, PeerKind.CSE) else None
        log.debug("retrieval channel with %s (%s)", ctx.peer_id, ctx.peer_kind.value)

        async def handle(request: OneM2MRequest) -> HttpResponse:
            return await self._handle_retrieval(conn, retriever, request)

        await self._http_loop(conn, handle)

    async def _http_loop(self, conn: TLSConnection, handle: Handle) -> None:
        async def answer(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            return await handle(request), False

        await self._http.serve(conn, answer)

    def _count_bad_request(self, event: BadRequest) -> None:
        self.stats.bad_requests += 1

    def _count_request(self) -> None:
        self.stats.requests += 1

    def _internal_error(self, request: OneM2MRequest) -> HttpResponse:
        self.stats.internal_errors += 1
        return p.refusal_response(
            p.MafRefusal(RSC.INTERNAL_SERVER_ERROR, "MAF internal error"), request
        )

    # -- procedures: client listener --------------------------------------------------------
    async def _handle_client(self, s: _ClientSession, request: OneM2MRequest) -> HttpResponse:
        try:
            rq.request_id(request)
            r = rq.route(request.method, request.target)
            proc = r.procedure
            if proc is rq.Procedure.KEY_REGISTRATION:
                return await self._key_registration(s, request)
            if proc is rq.Procedure.KEY_UPDATE:
                assert r.param is not None
                return await self._key_update(s, r.param, request)
            if proc is rq.Procedure.KEY_DEREGISTRATION:
                assert r.param is not None
                return await self._key_deregistration(s, r.param, request)
            if proc is rq.Procedure.CLIENT_REGISTRATION:
                return await self._client_registration(s, request)
            if proc is rq.Procedure.CONFIG_RETRIEVAL:
                assert r.param is not None
                return self._config_retrieval(s, r.param, request)
            if proc is rq.Procedure.REGISTRATION_UPDATE:
                assert r.param is not None
                return await self._registration_update(s, r.param, request)
            if proc is rq.Procedure.DEREGISTRATION:
                assert r.param is not None
                return await self._deregistration(s, r.param, request)
            raise p.MafRefusal(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                "Key Retrieval is served on the retrieval listener (mutual TLS with "
                "certificates), not over a MAF Handshake",
            )
        except p.MafRefusal as refusal:
            return self._refused(refusal, request, s.km.km_id)

    def _refused(self, refusal: p.MafRefusal, request: OneM2MRequest, who: str) -> HttpResponse:
        self.stats.requests_refused += 1
        self.stats.refused_by_rsc[refusal.rsc] += 1
        log.info(
            "refused %s %s from %s: %d %s",
            request.method,
            request.target[:120],
            who,
            refusal.rsc,
            refusal.audit,
        )
        return p.refusal_response(refusal, request)

    async def _submit(
        self, op: Callable[[MafWriter], Any] | None, audit: AuditFor, *, atomic: bool = False
    ) -> Any:
        assert self._journal is not None
        outcome = await self._journal.submit(op, audit, atomic=atomic)
        if isinstance(outcome, p.MafRefusal):
            raise outcome
        if isinstance(outcome, M2MSecError | ValueError):
            raise p.MafRefusal(RSC.BAD_REQUEST, str(outcome))
        if isinstance(outcome, BaseException):
            log.error("MAF write failed: %r", outcome)
            raise p.MafRefusal(RSC.INTERNAL_SERVER_ERROR, "MAF internal error")
        return outcome

    async def _key_registration(self, s: _ClientSession, request: OneM2MRequest) -> HttpResponse:
        """8.8.2.7."""
        km = s.km
        sa = s.conn.context.sa_id
        try:
            req = rq.parse_key_registration(request, self.policy)
            exported: bytes | None = None
            if req.key_value is None and not s.exported_used:
                exported = s.conn.export_keying_material(LABEL_CONNECTION, EXPORT_LENGTH)
            now = self._clock()
            plan = rules.plan_key_registration(
                self.store,
                self.policy,
                km,
                req,
                now,
                exported=exported,
                random_id=secrets.token_bytes(16),
            )
        except p.MafRefusal as refusal:
            await self._audit_now(
                audit_record(
                    AuditEvent.KEY_REFUSED,
                    kmId=km.km_id,
                    rsc=refusal.rsc,
                    reason=refusal.audit,
                    sa=sa,
                )
            )
            raise
        source = "keyValue" if req.key_value is not None else "exporter"
        for _attempt in range(3):
            kc_id = str(self.policy.kc_id(plan.relative_hex))
            target = ",".join(plan.target_ids)

            def audit(
                outcome: Any, kc_id: str = kc_id, target: str = target, key: NewKey = plan
            ) -> list[dict[str, str | int]]:
                if outcome is True:
                    return [
                        audit_record(
                            AuditEvent.KEY_ISSUED,
                            kcId=kc_id,
                            kmId=km.km_id,
                            target=target,
                            expires=p.format_m2m_time(key.expires_at),
                            suid=key.suid,
                            adminFQDN=key.admin_fqdn,
                            regId=key.reg_id,
                            source=source,
                            sa=sa,
                        )
                    ]
                why = "RelativeKeyID already in use" if outcome is False else str(outcome)
                return [
                    audit_record(
                        AuditEvent.KEY_REFUSED,
                        kcId=kc_id,
                        kmId=km.km_id,
                        target=target,
                        rsc=p.CONFLICT if outcome is False else RSC.INTERNAL_SERVER_ERROR,
                        reason=why,
                        sa=sa,
                    )
                ]

            def op(w: MafWriter, key: NewKey = plan) -> bool:
                return w.insert_key(key, now=now)

            stored = await self._submit(op, audit, atomic=True)
            if stored:
                break
            if req.key_value is None:
                raise p.MafRefusal(
                    p.CONFLICT,
                    f"RelativeKeyID {plan.relative_hex} is already in use",
                    audit="exported RelativeKeyID already in use",
                )
            # A random RelativeKeyID collided (not expected in practice): draw another.
            plan = rules.plan_key_registration(
                self.store,
                self.policy,
                km,
                req,
                now,
                exported=None,
                random_id=secrets.token_bytes(16),
            )
        else:
            raise p.MafRefusal(RSC.INTERNAL_SERVER_ERROR, "no free RelativeKeyID")
        if exported is not None:
            s.exported_used = True
        self.stats.keys_issued += 1
        return p.maf_response(RSC.CREATED, rules.key_registration_body(plan, km), request)

    async def _key_update(
        self, s: _ClientSession, rel_id: str, request: OneM2MRequest
    ) -> HttpResponse:
        """8.8.2.9."""
        req = rq.parse_key_update(request, self.policy)
        now = self._clock()
        key = rules.owned_key(self.store, s.km, rel_id, now)
        changes, body = rules.plan_key_update(self.store, self.policy, key, req, now)
        kc_id = str(self.policy.kc_id(rel_id))

        def op(w: MafWriter) -> Any:
            updated = w.update_key(rel_id, **changes)
            if updated is None:
                raise p.MafRefusal(RSC.NOT_FOUND, "no such key registration", audit="vanished")
            return updated

        def audit(outcome: Any) -> list[dict[str, str | int]]:
            if isinstance(outcome, BaseException):
                return []
            return [
                audit_record(
                    AuditEvent.KEY_UPDATED,
                    kcId=kc_id,
                    kmId=s.km.km_id,
                    target=",".join(outcome.target_ids),
                    expires=p.format_m2m_time(outcome.expires_at),
                )
            ]

        await self._submit(op, audit)
        self.stats.keys_updated += 1
        return p.maf_response(RSC.UPDATED, body, request)

    async def _key_deregistration(
        self, s: _ClientSession, rel_id: str, request: OneM2MRequest
    ) -> HttpResponse:
        """8.8.2.10."""
        now = self._clock()
        rules.owned_key(self.store, s.km, rel_id, now)
        kc_id = str(self.policy.kc_id(rel_id))

        def audit(outcome: Any) -> list[dict[str, str | int]]:
            if outcome is not True:
                return []
            return [audit_record(AuditEvent.KEY_DEREGISTERED, kcId=kc_id, kmId=s.km.km_id)]

        if not await self._submit(lambda w: w.deregister_key(rel_id), audit):
            raise p.MafRefusal(RSC.NOT_FOUND, "no such key registration", audit="vanished")
        self.stats.keys_deregistered += 1
        return p.maf_response(RSC.DELETED, None, request)

    async def _client_registration(self, s: _ClientSession, request: OneM2MRequest) -> HttpResponse:
        """8.8.2.3."""
        req = rq.parse_client_registration(request, self.policy)
        reg = rules.plan_client_registration(
            self.policy, s.km, req, self._clock(), secrets.token_hex(16)
        )

        def audit(outcome: Any) -> list[dict[str, str | int]]:
            if isinstance(outcome, BaseException):
                return []
            return [
                audit_record(
                    AuditEvent.CLIENT_REGISTERED,
                    kmId=s.km.km_id,
                    regId=reg.reg_id,
                    adminFQDN=reg.admin_fqdn,
                    expires=p.format_m2m_time(reg.expires_at),
                )
            ]

        await self._submit(lambda w: w.insert_registration(reg), audit)
        self.stats.client_registrations += 1
        return p.maf_response(RSC.CREATED, rules.client_registration_body(reg, s.km), request)

    def _config_retrieval(
        self, s: _ClientSession, reg_id: str, request: OneM2MRequest
    ) -> HttpResponse:
        """8.8.2.4."""
        rules.owned_registration(self.store, s.km, reg_id, self._clock())
        config = self.store.get_client_config(s.km.canonical)
        if config is None:
            raise p.MafRefusal(
                RSC.NOT_FOUND, "no MAF Client Configuration is associated with this registration"
            )
        return p.maf_response(RSC.OK, {"mafClientCfg": config}, request)

    async def _registration_update(
        self, s: _ClientSession, reg_id: str, request: OneM2MRequest
    ) -> HttpResponse:
        """8.8.2.5."""
        req = rq.parse_registration_update(request, self.policy)
        now = self._clock()
        reg = rules.owned_registration(self.store, s.km, reg_id, now)
        expires, body = rules.plan_registration_update(self.policy, reg, req, now)
        kwargs: dict[str, Any] = {"expires_at": expires}
        if req.has_labels:
            kwargs["labels"] = req.labels

        def audit(outcome: Any) -> list[dict[str, str | int]]:
            if isinstance(outcome, BaseException):
                return []
            return [
                audit_record(
                    AuditEvent.CLIENT_UPDATED,
                    kmId=s.km.km_id,
                    regId=reg_id,
                    expires=p.format_m2m_time(outcome.expires_at),
                )
            ]

        await self._submit(lambda w: w.update_registration(reg_id, **kwargs), audit)
        return p.maf_response(RSC.UPDATED, body, request)

    async def _deregistration(
        self, s: _ClientSession, reg_id: str, request: OneM2MRequest
    ) -> HttpResponse:
        """8.8.2.6: the registration and the keys registered under it are removed."""
        rules.owned_registration(self.store, s.km, reg_id, self._clock())

        def audit(outcome: Any) -> list[dict[str, str | int]]:
            if isinstance(outcome, BaseException) or not outcome[0]:
                return []
            return [
                audit_record(
                    AuditEvent.CLIENT_DEREGISTERED,
                    kmId=s.km.km_id,
                    regId=reg_id,
                    keys=outcome[1],
                )
            ]

        found, _keys = await self._submit(lambda w: w.delete_registration(reg_id), audit)
        if not found:
            raise p.MafRefusal(RSC.NOT_FOUND, "no such MAF Client Registration", audit="vanished")
        return p.maf_response(RSC.DELETED, None, request)

    # -- procedures: retrieval listener ---------------------------------------------------
    async def _handle_retrieval(
        self, conn: TLSConnection, retriever: str | None, request: OneM2MRequest
    ) -> HttpResponse:
        """8.8.2.8."""
        who = retriever or conn.context.peer_id
        if retriever is not None:
            with contextlib.suppress(IdentifierError):
                who = p.canonical_entity(retriever, self.policy.sp_fqdn)
        sa = conn.context.sa_id
        rel_id: str | None = None
        try:
            rq.request_id(request)
            r = rq.route(request.method, request.target)
            if r.procedure is not rq.Procedure.KEY_RETRIEVAL:
                raise p.MafRefusal(
                    RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                    "the retrieval listener serves Key Retrieval (GET /maf/keys/{id}) only",
                )
            rel_id = r.param
            assert rel_id is not None
            if retriever is None:
                raise p.MafRefusal(
                    RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                    "the authenticated identity is not an AE-ID or CSE-ID",
                    audit=f"retriever {who} ({conn.context.peer_kind.value}) is not an AE or CSE",
                )
            key = rules.decide_retrieval(self.store, self.policy, retriever, rel_id, self._clock())
        except p.MafRefusal as refusal:
            kc_id: str | None = None
            if rel_id is not None:
                # A RelativeKeyID too long for a psk_identity makes no KcId (10.3.5).
                with contextlib.suppress(IdentifierError):
                    kc_id = str(self.policy.kc_id(rel_id))
            await self._audit_now(
                audit_record(
                    AuditEvent.RETRIEVAL_REFUSED,
                    kcId=kc_id,
                    retriever=who,
                    rsc=refusal.rsc,
                    reason=refusal.audit,
                    sa=sa,
                )
            )
            return self._refused(refusal, request, who)
        client = self.store.get_client(key.km_id)
        await self._audit_now(
            audit_record(
                AuditEvent.KEY_RETRIEVED,
                kcId=str(self.policy.kc_id(key.relative_id)),
                kmId=client.km_id if client else key.km_id,
                retriever=who,
                target=",".join(key.target_ids),
                expires=p.format_m2m_time(key.expires_at),
                entityId=client.entity_id if client else None,
                sa=sa,
            )
        )
        self.stats.keys_retrieved += 1
        return p.maf_response(RSC.OK, rules.retrieval_body(key, client), request)

    async def _audit_now(self, record: dict[str, str | int]) -> None:
        """Write one audit record (durably) before answering."""
        assert self._journal is not None
        try:
            await self._journal.submit(None, lambda _o: [record])
        except StoreError as exc:
            self._store_outage.failed(exc)  # one line per outage
            raise p.MafRefusal(RSC.INTERNAL_SERVER_ERROR, "MAF internal error") from None

    # -- housekeeping ---------------------------------------------------------------------
    async def _purge_loop(self) -> None:
        retention = timedelta(seconds=self.config.retention)
        audit_retention = timedelta(seconds=self.config.audit_retention)
        while True:
            await asyncio.sleep(self.config.purge_interval)
            now = self._clock()

            def purge(w: MafWriter, now: datetime = now) -> tuple[int, int]:
                w.purge_audit(now - audit_retention)
                return w.purge(now, retention)

            try:
                assert self._journal is not None
                await self._journal.submit(purge, lambda _o: [])
            except StoreError as exc:
                log.warning("purging expired keys failed: %s", exc)


def _addr(peer: Any) -> str | None:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return None if peer is None else str(peer)
