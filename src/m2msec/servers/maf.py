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

With ``mef`` (``--mef URL``) the MAF is also an Enrolment Target of that MEF (seed 004,
8.3.2.1): a KmID the store does not know that is a KeID of the MEF is resolved by fetching
Km there (:mod:`m2msec.servers.maf_enrolled`), while the handshake waits.

Requests are HTTP/1.1 (:mod:`m2msec.bindings.http`); this module keeps the listeners, their
TLS profiles and the connections' lifecycle, and hands each request to the sans-IO
procedures of :class:`m2msec.maf.service.MafService` (mapping in :mod:`m2msec.maf.protocol`).
Every write they plan (key registrations above all) and every audit record goes through one
*journal* (:mod:`m2msec.servers.maf_journal`) that commits what has queued up in one
store transaction (each request in its own savepoint, the batch's audit records in the
``audit`` table of the same transaction), copies the records to the ``audit.log`` file, and
only then lets the requests be answered: a 2001 CREATED is never sent for a key that is not
committed, and concurrent requests share the cost of the commit (group commit).

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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from prometheus_client.metrics_core import Metric

from m2msec.bindings.http import BadRequest
from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest
from m2msec.config.maf import MafConfig
from m2msec.errors import (
    ConfigurationError,
    HandshakeError,
    IdentifierError,
    StoreError,
)
from m2msec.keyids import CredentialId
from m2msec.maf import protocol as p
from m2msec.maf.audit import AuditEvent, AuditLog, audit_record
from m2msec.maf.service import ClientSession, MafService, MafStats, Retriever, Step, Write
from m2msec.maf.store import (
    MafStore,
    MafWriter,
    MasterCredential,
    default_maf_store_path,
    open_maf_store,
    parse_km_id,
)
from m2msec.servers.maf_enrolled import EnrolledClients
from m2msec.servers.maf_journal import MafJournal
from m2msec.servers.metrics import maf_families, observe_store
from m2msec.service.lifecycle import ServerLifecycle
from m2msec.service.limits import HttpLimits
from m2msec.service.metrics import Readiness, store_ready
from m2msec.service.server import HttpService, ServiceHooks
from m2msec.store.outage import StoreOutage
from m2msec.store.schema import require_initialised
from m2msec.tls.aio import TLSConnection, TLSServer
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import PSK_SUITES_TLS, TLSProfile, Transport, new_context

__all__ = ["MafServer"]

log = logging.getLogger(__name__)

AUDIT_LOG_NAME: Final = "audit.log"
#: TLSServer's reasons for connections that never reached a decision.
#: A KmId no MAF Client is given (the ``.invalid`` TLD): its configuration read always
#: reaches the store, so ``/readyz`` sees an outage.
_PROBE_KM_ID: Final = "readyz-probe@maf.invalid"

_NOT_AUDITED: Final = (
    "connection lost during the handshake",
    "connection closed during the handshake",
    "handshake timed out",
    "too many handshakes in progress",
)


class MafServer(ServerLifecycle):
    """The MAF (module documentation): ``async with MafServer(config) as maf: ...``.

    ``store`` overrides the configured store (and is not closed by the server; its own
    ``synchronous`` setting then decides the durability); ``clock`` gives "now" to the
    procedures (tests).
    """

    what = "MAF server"
    kind = "maf"

    def __init__(
        self,
        config: MafConfig,
        store: MafStore | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(config.metrics)
        self.config = config
        self.policy = config.policy()
        self.stats = MafStats()
        self.metrics.register(self._metric_families)
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
        self._service: MafService | None = None
        self._client_server: TLSServer | None = None
        self._retrieval_server: TLSServer | None = None
        self._purge_task: asyncio.Task[None] | None = None
        #: KeIDs of the MEF as KmIDs (``mef``), once started.
        self.enrolled: EnrolledClients | None = None
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
    def service(self) -> MafService:
        """The procedures (:class:`m2msec.maf.service.MafService`), once started."""
        assert self._service is not None, "start() the server first"
        return self._service

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

    async def _open(self) -> None:
        """Open the store, the audit log, the journal and the listeners."""
        cfg = self.config
        client_spec = cfg.listener("listen")
        retrieval_spec = cfg.listener("retrieval_listen") if cfg.retrieval_listen else None
        retrieval_profile = self._retrieval_profile() if retrieval_spec else None
        self.enrolled = EnrolledClients.from_config(cfg)
        if self._store is None:
            if self.require_existing_store:  # serve without --init (issue 9 item 3)
                require_initialised(
                    cfg.store or default_maf_store_path(),
                    label="MAF store",
                    create="m2msec maf add-client",
                )
            self._store = open_maf_store(cfg.store, synchronous=cfg.effective_durability)
        observe_store(self.metrics, "maf", self._store)
        self._audit = AuditLog(self.audit_path, fsync=False)
        # Commit on the loop's thread only when commits do not fsync (never for
        # PostgreSQL: a commit there is a network round trip).
        inline = self._store.synchronous != "full" and self._store.in_process
        self._journal = MafJournal(
            self._store, self._audit, inline=inline, outage=self._store_outage
        )
        self._journal.start()
        self._service = MafService(
            self._store, self.policy, self._clock, stats=self.stats, clients=self._client
        )
        client_profile = self._client_profile()
        self._client_server = TLSServer(
            client_profile,
            self.metrics.counted(client_profile, self._serve_client),
            handshake_timeout=cfg.handshake_timeout,
            max_handshakes=cfg.max_handshakes,
            on_failure=self.metrics.failure_hook(
                client_profile, lambda peer, reason: self._handshake_failed("client", peer, reason)
            ),
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
                self.metrics.counted(retrieval_profile, self._serve_retrieval),
                handshake_timeout=cfg.handshake_timeout,
                max_handshakes=cfg.max_handshakes,
                on_failure=self.metrics.failure_hook(
                    retrieval_profile,
                    lambda peer, reason: self._handshake_failed("retrieval", peer, reason),
                ),
            )
            await self._retrieval_server.start(retrieval_spec.host, retrieval_spec.port)
            log.info(
                "MAF retrieval listener (Key Retrieval, mutual TLS) on %s:%d",
                retrieval_spec.host,
                self.retrieval_port,
            )
        self._purge_task = asyncio.get_running_loop().create_task(self._purge_loop())

    async def _reload(self, config: Any) -> str:
        """A new MAF certificate (cert/key/ca/crl) for Key Retrieval, or ConfigurationError
        with nothing changed (:mod:`m2msec.servers.service_reload`)."""
        from m2msec.servers.service_reload import reload_service_certificates

        if not isinstance(config, MafConfig):
            raise ConfigurationError("a reload needs a MAF configuration")
        server = self._retrieval_server

        async def build() -> TLSProfile:
            return self._retrieval_profile(config)

        message = await reload_service_certificates(
            self.config, config, "maf", [] if server is None else [(server, build)]
        )
        self.config = config
        return message

    async def _shutdown(self) -> None:
        """Let requests in progress finish, stop listening, end the sessions, commit what
        is queued, close files."""
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        await self._http.close(self.drain_timeout)
        for server in (self._client_server, self._retrieval_server):
            if server is not None:
                await server.close()
        if self._journal is not None:
            await self._journal.close()
        if self.enrolled is not None:
            await self.enrolled.close()
        if self._audit is not None:
            self._audit.close()
        if self._own_store and self._store is not None:
            self._store.close()
        if self._client_server is not None:
            log.info("MAF stopped: %s", self.stats.as_dict())

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
            psk_async_resolver=None if self.enrolled is None else self._resolve_km_or_ke,
        )

    def _retrieval_profile(self, cfg: MafConfig | None = None) -> TLSProfile:
        from m2msec.frameworks.service_certificate import service_responder_profile

        cfg = cfg or self.config
        missing = [n for n in ("cert", "key", "ca") if getattr(cfg, n) is None]
        if missing:
            raise ConfigurationError(
                "the retrieval listener needs the MAF's certificate: give "
                + ", ".join(f"--{n}" for n in missing)
                + " ([certificates] in the config file), or turn Key Retrieval off "
                '(--retrieval-listen off, retrieval_listen = "")'
            )
        return service_responder_profile(cfg, services=[cfg.fqdn], what="MAF certificate")

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

    async def _resolve_km_or_ke(
        self, identity: bytes, cipher_suite: int | None = None
    ) -> tuple[bytes, PeerBinding]:
        """With ``mef``: a KmId of the store, else a KeID of the MEF (Km fetched there)."""
        assert self.enrolled is not None
        try:
            return self.resolve_km(identity)
        except HandshakeError:
            if not self.enrolled.owns(identity):
                raise
        return await self.enrolled.resolve(identity)

    def _client(self, key_id: str) -> MasterCredential | None:
        """A MAF Client by canonical KmId: the store's, else one enrolled at the MEF."""
        km = self.store.get_client(key_id)
        if km is None and self.enrolled is not None:
            km = self.enrolled.client(key_id)
        return km

    def _metric_families(self) -> Iterator[Metric]:
        lookups = None if self._store is None else self._store.lookups
        return maf_families(self.stats, lookups)

    def readiness(self) -> Readiness:
        """``/readyz``: the MAF store answers a read."""
        return store_ready("MAF store", lambda: self.store.get_client_config(_PROBE_KM_ID))

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
        km = self._client(ctx.key_id or "")
        if km is None or not km.enabled:
            return  # removed between the PSK lookup and now
        self.stats.client_associations += 1
        session = ClientSession(km, ctx.sa_id, conn.export_keying_material)
        log.debug("MAF Handshake with %s (%s, %s)", km.km_id, ctx.protocol, ctx.cipher_suite)
        service = self.service

        async def answer(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            return await self._run(service.handle_client(session, request)), False

        await self._http.serve(conn, answer)

    async def _serve_retrieval(self, conn: TLSConnection) -> None:
        ctx = conn.context
        self.stats.retrieval_associations += 1
        entity = ctx.peer_id if ctx.peer_kind in (PeerKind.AE, PeerKind.CSE) else None
        peer = Retriever(entity, ctx.peer_id, ctx.peer_kind.value, ctx.sa_id)
        log.debug("retrieval channel with %s (%s)", ctx.peer_id, ctx.peer_kind.value)
        service = self.service

        async def answer(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            return await self._run(service.handle_retrieval(peer, request)), False

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

    # -- the procedures (maf.service) through the journal --------------------------------
    async def _run(self, step: Step) -> HttpResponse:
        """Commit each write the service plans, then answer as it says (maf.service)."""
        assert self._journal is not None
        while isinstance(step, Write):
            try:
                outcome = await self._journal.submit(step.op, step.audit, atomic=step.atomic)
            except StoreError as exc:
                if step.op is not None:
                    raise  # a failed commit: answered 5000 as an internal error
                self._store_outage.failed(exc)  # one line per outage
                outcome = exc  # an audit record not written: the service refuses
            step = step.then(outcome)
        return step

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
