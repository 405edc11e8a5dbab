"""The M2M Enrolment Function server (TS-0003 8.3.2.1, seed 004): ``m2msec mef serve``.

Listeners, each on the one HTTP service loop (:class:`~m2msec.service.server.HttpService`),
handing requests to the sans-IO :class:`~m2msec.mef.service.MefService` (docs/mef.md):

* **Enrolee listeners** run the Bootstrap Security Handshake: TLS-PSK with psk_identity =
  KpmID and psk = Kpm (``framework=psk``, the cipher suites of 10.2.2, TLS 1.2 and 1.3),
  looked up through :meth:`MefService.kpm_for` off the event loop (an unknown KpmID or a
  wrong Kpm fails that handshake only), or mutual TLS with certificates
  (``framework=certificate``, the suites of 10.2.3; seed 004 NOTE 2: the same Enrolment
  Key Generation). After the handshake the session exports 48 octets with
  ``EXPORTER-oneM2M-Bootstrap`` and no context (10.3.1, docs/readings.md A-04); the
  Enrolment Exchange (``POST /mef/enrolment``) commits Ke, in a worker thread and in one
  transaction with the other sessions' (group commit), before it is
  answered. One Ke per handshake: the export is spent by the enrolment that stored it.
* the **target listener** runs mutual TLS with the MEF's FQDN certificate (10.1.1.6): the
  identity the target's certificate names (a MAF FQDN, a CSE-ID or an AE-ID) is the
  requester of ``GET /fetchCredentials/<KeID>/<SUID>`` and of MEF Key Retrieval
  ``GET /mef/keys/<RelativeKeyID>`` (8.3.5.2.8), both answered by
  :meth:`MefService.answer_target`. A MAF is recognised by its FQDN
  among the MAF targets allowed when the server starts (a MAF allowed later needs a
  restart; Enrolee B targets need none).
* ``dtls://`` Enrolee listeners (:mod:`m2msec.servers.mef_coap`) run the TLS-PSK bootstrap
  over DTLS 1.2 and carry the Enrolment Exchange over CoAP. The session and its export are
  :mod:`m2msec.servers.mef_session`'s, for both transports.

No key (Kpm, Ke, Km, Kpsa) is ever logged; refusals are audited by the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest
from m2msec.config.listeners import ListenerSpec
from m2msec.config.mef import MefConfig
from m2msec.errors import (
    ConfigurationError,
    HandshakeError,
    IdentifierError,
    StoreError,
)
from m2msec.frameworks.service_certificate import service_responder_profile
from m2msec.ids import PeerKind
from m2msec.maf.protocol import refusal_response
from m2msec.mef.reads import BootstrapReads
from m2msec.mef.records import Bootstrap, TargetKind, check_kpm_id
from m2msec.mef.service import MefPolicy, MefRefusal, MefService
from m2msec.mef.store import MefStore, default_mef_store_path
from m2msec.servers.mef_coap import CoapSettings, MefCoapEnrolees
from m2msec.servers.mef_session import (
    BOOTSTRAP_EXPORT_OCTETS,
    BOOTSTRAP_EXPORTER_LABEL,
    BootstrapSession,
    EnrolmentCommits,
    enrolee_identity,
    target_identity,
)
from m2msec.servers.metrics import mef_families
from m2msec.service.group_commit import GroupCommit
from m2msec.service.lifecycle import ServerLifecycle
from m2msec.service.limits import HttpLimits
from m2msec.service.metrics import Readiness, store_ready
from m2msec.service.server import HttpService, ServiceHooks
from m2msec.store.schema import require_initialised
from m2msec.tls.aio import TLSConnection, TLSServer
from m2msec.tls.context import Framework, PeerBinding
from m2msec.tls.profiles import TLSProfile, Transport, new_profile, psk_suites

__all__ = ["MefListener", "MefServer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MefListener:
    """A bound listener: ``role`` "enrolee" or "target", its URL scheme, framework, port."""

    role: str
    scheme: str
    framework: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class MefServer(ServerLifecycle):
    """The MEF (module documentation): ``async with MefServer(config) as mef: ...``.

    ``store`` overrides the configured store (and is not closed by the server); ``clock``
    gives "now" to the service (tests). ``stats`` counts decisions and connections by name.
    """

    what = "MEF server"
    kind = "mef"

    def __init__(
        self,
        config: MefConfig,
        store: MefStore | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(config.metrics)
        self.config = config
        self.stats: Counter[str] = Counter()
        self.metrics.register(lambda: mef_families(self.stats))
        #: Refuse a missing or schema-less SQLite store instead of creating one.
        self.require_existing_store = False
        self.listeners: list[MefListener] = []
        self._store = store
        self._own_store = store is None
        self._clock = clock
        self._service: MefService | None = None
        self._commits: EnrolmentCommits | None = None
        self._servers: list[Any] = []  # TLSServer or the DTLS endpoint: start/close/port
        self._purge_task: asyncio.Task[None] | None = None
        counts = self.stats
        hooks = ServiceHooks(
            internal_error=self._internal_error,
            close_after_error=False,  # a bug of ours fails the request, not the session
            on_bad_request=lambda _event: counts.update(["bad_requests"]),
            on_request=lambda: counts.update(["requests"]),
            close_stream=False,  # TLSServer ends the association with close_notify
        )
        self._http = HttpService(HttpLimits.of(config), hooks, name="MEF")

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def store(self) -> MefStore:
        assert self._store is not None, "start() the server first"
        return self._store

    @property
    def service(self) -> MefService:
        assert self._service is not None, "start() the server first"
        return self._service

    @property
    def commits(self) -> EnrolmentCommits:
        """The one committer of enrolments: concurrent sessions share its transactions."""
        assert self._commits is not None, "start() the server first"
        return self._commits

    def listener(self, role: str, framework: str = "psk", scheme: str = "tls") -> MefListener:
        """The first bound listener of ``role`` (and, for Enrolees, framework and scheme)."""
        for found in self.listeners:
            if found.role == role and (
                role == "target" or (found.framework, found.scheme) == (framework, scheme)
            ):
                return found
        raise LookupError(f"no {role} listener {scheme}/{framework}")

    async def _open(self) -> None:
        cfg = self.config
        if self._store is None:
            if self.require_existing_store:  # serve without --init (issue 9 item 3)
                require_initialised(
                    cfg.store or default_mef_store_path(),
                    label="MEF store",
                    create="m2msec mef add-enrolee",
                )
            self._store = await asyncio.to_thread(MefStore, cfg.store)
        # A handshake's read of its Enrolee is kept until its session asks (the deadline
        # and a margin), for at most as many handshakes as all listeners may hold.
        reads = BootstrapReads(
            cfg.handshake_timeout + 1.0,
            capacity=max(1024, 2 * cfg.max_handshakes * max(1, len(cfg.enrolee_listeners()))),
        )
        self._service = MefService(
            MefPolicy(cfg.fqdn.lower()),
            self._store,
            stats=self.stats,
            clock=self._clock,
            reads=reads,
        )
        self._commits = GroupCommit(self._service.commit_enrolments, name="mef-commit")
        for spec in cfg.enrolee_listeners():
            await self._start_enrolee(spec)
        if cfg.target_listen is not None:
            spec = cfg.target_listener()
            profile = await self._target_profile()
            await self._start_tls(spec, "target", "certificate", profile, self._serve_target)
        self._purge_task = asyncio.get_running_loop().create_task(self._purge_loop())

    async def _start_enrolee(self, spec: ListenerSpec) -> None:
        if spec.scheme == "dtls":
            cfg = self.config
            settings = CoapSettings(
                cfg.max_handshakes, cfg.idle_timeout, cfg.handshake_timeout, cfg.max_body
            )
            dtls = MefCoapEnrolees(
                self.service,
                self.commits,
                self.psk_profile(Transport.DTLS),
                settings,
                self.stats,
                self._handshake_failed,
                metrics=self.metrics,
            )
            await dtls.start(spec.host, spec.port)
            self._bound(spec, "enrolee", "psk", dtls)
            return
        if spec.framework == "certificate":
            profile = self._certificate_profile(services=())
            bootstrap = Bootstrap.CERTIFICATE
        else:
            profile = self.psk_profile(Transport.TLS)
            bootstrap = Bootstrap.PSK

        async def serve(conn: TLSConnection) -> None:
            await self._serve_enrolee(conn, bootstrap)

        await self._start_tls(spec, "enrolee", spec.framework or "psk", profile, serve)

    async def _start_tls(
        self,
        spec: ListenerSpec,
        role: str,
        framework: str,
        profile: TLSProfile,
        serve: Callable[[TLSConnection], Any],
    ) -> None:
        cfg = self.config
        server = TLSServer(
            profile,
            self.metrics.counted(profile, serve),
            handshake_timeout=cfg.handshake_timeout,
            max_handshakes=cfg.max_handshakes,
            on_failure=self.metrics.failure_hook(profile, self._handshake_failed),
        )
        await server.start(spec.host, spec.port)
        self._bound(spec, role, framework, server)

    def _bound(self, spec: ListenerSpec, role: str, framework: str, server: Any) -> None:
        self._servers.append(server)
        bound = MefListener(role, spec.scheme, framework, spec.host, server.port)
        self.listeners.append(bound)
        log.info("MEF %s listener (%s) on %s", role, framework, bound.url)

    async def _shutdown(self) -> None:
        """Let requests in progress finish, stop listening, end the sessions, close the
        store."""
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        await self._http.close(self.drain_timeout)
        for server in self._servers:
            await server.close()
        if self._commits is not None:
            await self._commits.close(self.drain_timeout)
        if self._own_store and self._store is not None:
            self._store.close()
        if self.listeners:
            log.info("MEF stopped: %s", dict(sorted(self.stats.items())))

    # -- profiles -------------------------------------------------------------------------
    def psk_profile(self, transport: Transport) -> TLSProfile:
        """The TLS-PSK bootstrap (8.3.2.1): the suites of 10.2.2, KpmID -> Kpm."""
        profile = new_profile(
            Framework.PROVISIONED_PSK,
            transport,
            server_side=True,
            suites=psk_suites(transport),
            tls13=self.config.tls13,
            local_id=self.config.fqdn.lower(),
        )
        return replace(profile, psk_async_resolver=self.resolve_kpm)

    async def resolve_kpm(self, identity: bytes, suite: int | None) -> tuple[bytes, PeerBinding]:
        """The bootstrap handshake's PSK lookup: KpmID -> Kpm (the store read in a thread);
        an unknown KpmID raises, so the handshake fails with an alert."""
        try:
            kpm_id = check_kpm_id(identity.decode("ascii"))
        except (UnicodeDecodeError, IdentifierError):
            raise HandshakeError("malformed KpmID") from None
        kpm = await asyncio.to_thread(self.service.kpm_for, kpm_id)
        if kpm is None:
            raise HandshakeError(f"unknown KpmID {kpm_id!r}")
        return kpm, PeerBinding(peer_id=kpm_id, kind=PeerKind.CREDENTIAL, key_id=kpm_id)

    def _certificate_profile(
        self, services: tuple[str, ...], cfg: MefConfig | None = None
    ) -> TLSProfile:
        return service_responder_profile(
            cfg or self.config, services=services, what="MEF certificate"
        )

    async def _target_profile(self, cfg: MefConfig | None = None) -> TLSProfile:
        # A MAF's certificate names its FQDN (10.1.1.6), which only the allowed MAF
        # targets tell apart from a CSE's public domain name.
        targets = await asyncio.to_thread(self.store.list_targets)
        mafs = tuple(t.canonical for t in targets if t.kind is TargetKind.MAF)
        return self._certificate_profile(services=mafs, cfg=cfg)

    async def _reload(self, config: Any) -> str:
        """A new MEF certificate (cert/key/ca/crl) for the target listener and the
        certificate Enrolee listeners, or ConfigurationError with nothing changed
        (:mod:`m2msec.servers.service_reload`); the TLS-PSK listeners keep theirs."""
        from m2msec.servers.service_reload import reload_service_certificates

        if not isinstance(config, MefConfig):
            raise ConfigurationError("a reload needs a MEF configuration")

        async def target() -> TLSProfile:
            return await self._target_profile(config)

        async def enrolee() -> TLSProfile:
            return self._certificate_profile(services=(), cfg=config)

        swaps: list[tuple[TLSServer, Callable[[], Awaitable[TLSProfile]]]] = []
        for bound, server in zip(self.listeners, self._servers, strict=True):
            if bound.role == "target":
                swaps.append((server, target))
            elif bound.framework == "certificate" and isinstance(server, TLSServer):
                swaps.append((server, enrolee))
        message = await reload_service_certificates(self.config, config, "mef", swaps)
        self.config = config
        return message

    # -- connections ----------------------------------------------------------------------
    async def _serve_enrolee(self, conn: TLSConnection, bootstrap: Bootstrap) -> None:
        who = enrolee_identity(conn.context, bootstrap)
        if who is None:
            self.stats["enrolee_identity_refused"] += 1
            return
        self.stats["bootstrap_sessions"] += 1
        exported = conn.export_keying_material(BOOTSTRAP_EXPORTER_LABEL, BOOTSTRAP_EXPORT_OCTETS)
        session = BootstrapSession(self.service, self.commits, who, exported)

        async def answer(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            return await session.enrol(request), False

        await self._http.serve(conn, answer)

    async def _serve_target(self, conn: TLSConnection) -> None:
        requester = target_identity(conn.context)
        if requester is None:
            self.stats["target_identity_refused"] += 1
            return
        self.stats["target_sessions"] += 1
        service = self.service

        async def answer(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            return await asyncio.to_thread(service.answer_target, request, requester), False

        await self._http.serve(conn, answer)

    def readiness(self) -> Readiness:
        """``/readyz``: the MEF store answers a read (of a KpmID no Enrolee is given)."""
        return store_ready(
            "MEF store", lambda: self.store.get_enrolee(Bootstrap.PSK, " m2msec readyz probe ")
        )

    def _handshake_failed(self, peer: tuple[Any, ...] | None, reason: str) -> None:
        self.stats["handshakes_failed"] += 1

    def _internal_error(self, request: OneM2MRequest) -> HttpResponse:
        self.stats["internal_errors"] += 1
        return refusal_response(
            MefRefusal(RSC.INTERNAL_SERVER_ERROR, "MEF internal error"), request
        )

    # -- housekeeping ---------------------------------------------------------------------
    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.purge_interval)
            try:
                await asyncio.to_thread(self.store.purge_expired, self._clock())
            except StoreError as exc:
                log.warning("purging expired enrolments failed: %s", exc)
