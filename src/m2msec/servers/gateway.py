"""The CSE security gateway: Entity B in front of a real oneM2M CSE.

The gateway terminates the Security Association Establishment of TS-0003 clause 8.2
(provisioned PSK, 8.2.2.1; certificates, 8.2.2.2; GBA with the gateway as NAF, seed 000
8.2.3.2, :mod:`m2msec.frameworks.gba`; MAF-based, 8.2.2.3, the gateway resolving KcIds by
Key Retrieval at the MAF, :mod:`m2msec.frameworks.maf`) on ``tls://`` listeners (and, all
four, on ``dtls://``; GBA over DTLS-PSK is our extension), then reads
oneM2M HTTP requests (:mod:`m2msec.bindings.http`) from each association, checks every
request's originator against the identity the association was bound to, and forwards the
requests it accepts to the CSE behind it (the *backend*, for example ACME).
``dtls://`` listeners do the same for the CoAP binding over DTLS 1.2 (TS-0003 10.2.1,
TS-0008; :mod:`m2msec.servers.coap_gateway`): a CoAP request is read as the same oneM2M
request and goes through the same pipeline (:meth:`Gateway.process`), so the rules below
hold alike for both transports. Session resumption (``[gateway] resumption``, on by
default) is enabled on both; a session is resumed only after the framework re-validates
its binding (:func:`m2msec.tls.resumption.revalidate`: key expiry for all, the
psk-lookup-table row for provisioned PSK, the held Kc for MAF, the certificate's notAfter
for certificates).

Each request of an association is decided by the pure rules (a)-(d) of
:mod:`m2msec.servers.request_checks` (lifetime, originator, AE registration, refusal codes)
against the association's record (:mod:`m2msec.servers.association`); what it accepts is
forwarded with the headers of :mod:`m2msec.servers.forwarding` (``X-M2MSec-*`` identity,
no hop-by-hop fields), and a registration's answer binds the association
(:mod:`m2msec.servers.registration`). The responder profile of each framework comes from
:mod:`m2msec.servers.gateway_profiles`; this module holds the listeners, their lifecycle
and the pipeline that ties those together. The gateway is the Responder of seed 003's SA
services: every handshake, request and session end of its listeners goes through
:class:`m2msec.servers.gateway_sa.GatewaySa` (the SA records, the Responder Agent, the
operator's ``m2msec sa`` commands on the admin socket; docs/sa.md).

``http://`` listeners are plain: every request there is answered 4107
SECURITY_ASSOCIATION_REQUIRED (TS-0004 table 6.6.3.5-1) and nothing is forwarded.

``egress://`` listeners go the other way: the CSE behind the gateway sends its own
requests there, and the gateway relays them to an upstream peer over an SA it establishes
as Entity A (:mod:`m2msec.servers.egress`; ``Gateway.egress``).

Requests travel over a pool of persistent HTTP/1.1 connections
(:class:`m2msec.servers.backend.BackendPool`, on the one HTTP client). A backend that cannot
be reached is answered 5103 TARGET_NOT_REACHABLE (4008 REQUEST_TIMEOUT when it does not
answer within ``backend_timeout``); the gateway keeps serving.

Reload (issue 14 item 2; :meth:`ServerLifecycle.reload`, docs/operations.md "Reload"):
:meth:`Gateway._reload` builds a new :class:`ResponderProfiles` from the re-read
configuration (certificates, keys, trust anchors, CRLs, the MAF/MEF/GBA clients) over the
same psk store, and only once every profile is built swaps each ``tls://`` and ``dtls://``
listener's profile: new handshakes use it, live associations keep their sessions. What the
listeners, the stores and the backend pool were opened with
(:data:`~m2msec.servers.gateway_reload.RESTART_ONLY`) is refused by name. The replaced
profiles' clients are closed once the handshakes that may still use them are over.

One of the two files allowed past ~600 lines: :class:`Gateway` is the one place where the
listeners, the lifecycle, the SA hooks and the request pipeline meet; the logic each of
them runs lives in its own module (``gateway_sa``, ``request_checks``, ``forwarding``,
``gateway_profiles``, ``gateway_reload``, ``gateway_stats``, ``egress``), and what stays
here is the wiring between them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from m2msec.app_rules import AppRule
from m2msec.bindings.http import BadRequest
from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest, error_response
from m2msec.config import GatewayConfig, ListenerSpec
from m2msec.errors import ConfigurationError
from m2msec.sa.agent import ResponderAgent
from m2msec.servers.association import Association, log_fields, sp_fqdn_of
from m2msec.servers.backend import (
    BackendError,
    BackendPool,
    BackendRequestError,
    BackendTimeout,
    BackendTooLarge,
)
from m2msec.servers.coap_gateway import CoapListener
from m2msec.servers.cse_base import retrieve_cse_id
from m2msec.servers.egress import Egress
from m2msec.servers.forwarding import forwarded_headers, response_headers
from m2msec.servers.gateway_profiles import Profiles, ResponderProfiles, pick
from m2msec.servers.gateway_reload import RESTART_ONLY, reloaded_profiles
from m2msec.servers.gateway_sa import GatewaySa, LiveSa, default_instance
from m2msec.servers.gateway_stats import GatewayStats
from m2msec.servers.metrics import (
    backend_error_kind,
    gateway_families,
    gateway_readiness,
    observe_store,
)
from m2msec.servers.registration import bind_recorded, bind_registration
from m2msec.servers.request_checks import Forward, OwnerOf, Refuse, Rule, check_request
from m2msec.service.lifecycle import (
    ServerLifecycle,
    refuse_restart_only,
    stop_accepting,
    wait_closed,
)
from m2msec.service.limits import HttpLimits
from m2msec.service.metrics import Readiness
from m2msec.service.server import HttpService, PlainConnections, ServiceHooks
from m2msec.store.app_rules import AppRuleStore
from m2msec.store.base import PskStore
from m2msec.store.psk import SealedPskStore
from m2msec.store.registry import IdentityRegistry
from m2msec.tls.aio import EVICTED, NO_FIRST_FLIGHT, TLSConnection, TLSServer
from m2msec.tls.context import HandshakeFailure, SecurityContext
from m2msec.tls.profiles import Transport
from m2msec.tls.sessions import ServerSessionCache

__all__ = ["Gateway", "GatewayStats", "ListenerInfo"]

if TYPE_CHECKING:
    from m2msec.frameworks.gba import GbaResponder
    from m2msec.frameworks.maf import MafResponder
    from m2msec.frameworks.mef_responder import MefResponder

log = logging.getLogger(__name__)

#: How many SA records Entity B keeps in ``Gateway.recent_associations``.
RECENT_ASSOCIATIONS = 1024

#: Largest backend answer relayed; beyond it the client gets 5000 (a CSE answer this
#: large is a discovery gone wrong, not something to hold in memory).
MAX_RESPONSE_BODY = 64 * 1024 * 1024
#: Connections to the backend: at most this many open, this many kept idle between requests.
BACKEND_CONNECTIONS = 100
BACKEND_IDLE_CONNECTIONS = 20


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    """A running listener: its configuration and the address it is bound to."""

    spec: ListenerSpec
    host: str
    port: int
    framework: str | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = f"?framework={self.spec.framework}" if self.spec.framework else ""
        if self.spec.upstream:
            suffix = f"?upstream={self.spec.upstream}"
        return f"{self.spec.scheme}://{host}:{self.port}{suffix}"


class Gateway(ServerLifecycle):
    """The CSE security gateway (module docstring): ``await start()``, ``await close()``.

    ``store`` overrides the configured psk-lookup-table (the gateway does not close a
    store it was given). ``agent`` is the application's Responder Agent (seed 003
    7.3.1.1.2.3), asked about every SA after the gateway's own policy. Requests are
    forwarded over a :class:`~m2msec.servers.backend.BackendPool` of persistent HTTP/1.1
    connections (``backend`` once started).
    """

    what = "gateway"
    kind = "gateway"

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: PskStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        agent: ResponderAgent | None = None,
    ) -> None:
        super().__init__(config.metrics, drain_timeout=config.drain_timeout)
        #: The SA services of the gateway as Responder (records, admin API, sweep).
        self.sa = GatewaySa(
            config.sa, default_instance(str(config.cse_id)), agent=agent, clock=clock
        )
        self.config = config
        # A stand-in owner_of (tests); otherwise the identity registry of the psk store.
        self.owner_of: OwnerOf | None = None
        self.stats = GatewayStats()
        self._live_by_credential: Counter[str] = Counter()
        self._responders = ResponderProfiles(config, store)
        self._registry: IdentityRegistry | None = None
        self._rule_store: AppRuleStore | None = None
        self._clock = clock
        #: The client of the backend CSE, once started.
        self.backend: BackendPool | None = None
        self._tls: list[TLSServer] = []
        self._coap: list[CoapListener] = []
        #: The listeners' configurations, beside ``_tls`` / ``_coap`` (for a reload).
        self._tls_specs: list[ListenerSpec] = []
        self._coap_specs: list[ListenerSpec] = []
        #: Replaced responder profiles whose clients close once their handshakes are over.
        self._retired: set[asyncio.Task[None]] = set()
        self.reloads = 0
        self._servers: list[asyncio.Server] = []
        self._listeners: list[ListenerInfo] = []
        self._http = HttpService(
            HttpLimits.of(config),
            ServiceHooks(
                internal_error=lambda request: _answer(
                    request, RSC.INTERNAL_SERVER_ERROR, "gateway error"
                ),
                on_bad_request=self._count_bad_request,
                on_head_timeout=self._count_head_timeout,
            ),
            name="gateway",
        )
        #: The security contexts of the most recent associations, by SA identifier, open
        #: or closed (bounded); the SA records themselves are in ``sa.store``.
        self.recent_associations: OrderedDict[str, SecurityContext] = OrderedDict()
        self._plain = PlainConnections(self._http)
        #: The egress listeners (the CSE's way out over SAs we establish), their records.
        self.egress = Egress(
            config, self._http, sink=self.sa, store=lambda: self.sa.store, clock=clock
        )
        self.sa.add_initiator_side(self.egress)  # m2msec sa list/update/remove reach it
        self.metrics.register(lambda: gateway_families(self))

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def listeners(self) -> list[ListenerInfo]:
        return list(self._listeners)

    @property
    def store(self) -> PskStore | None:
        return self._responders.store

    @property
    def gba(self) -> GbaResponder | None:
        """The NAF of the GBA framework (``[gba]``), once started."""
        return self._responders.gba

    @property
    def maf(self) -> MafResponder | None:
        """Entity B of the MAF framework (``[maf]``), once started."""
        return self._responders.maf

    @property
    def mef(self) -> MefResponder | None:
        """Enrolee B of seed 004 (``[mef]``), once started."""
        return self._responders.mef

    @property
    def registry(self) -> IdentityRegistry | None:
        """The identity registry beside the psk store's table (None without one)."""
        store = self.store
        if self._registry is None and isinstance(store, SealedPskStore):
            prefix = f"{self.config.cse_id}/"

            def forms(entity_id: str) -> tuple[str, ...]:
                # A psk row may spell a local AE-ID as its stem.
                if entity_id.startswith(prefix):
                    return (entity_id, entity_id[len(prefix) :])
                return (entity_id,)

            self._registry = IdentityRegistry(store.database, psk_forms=forms)
        return self._registry

    @property
    def rule_store(self) -> AppRuleStore | None:
        """The stored serviceSubscribedAppRules (``m2msec gateway rule``), beside the registry."""
        store = self.store
        if self._rule_store is None and isinstance(store, SealedPskStore):
            self._rule_store = AppRuleStore(store.database, cache_ttl=store.cache_ttl)
        return self._rule_store

    def app_rules(self) -> tuple[AppRule, ...]:
        """The TOML's rules, then the stored ones (re-read within the lookup cache lifetime)."""
        stored = self.rule_store
        return self.config.app_rules + (() if stored is None else stored.rules())

    def url(self, index: int = 0) -> str:
        return self._listeners[index].url

    async def _open(self) -> None:
        """Open the SA services, the backend pool and the listeners, by URL scheme."""
        cfg = self.config
        self.backend = BackendPool(
            cfg.backend,
            max_connections=BACKEND_CONNECTIONS,
            max_idle=BACKEND_IDLE_CONNECTIONS,
            timeout=cfg.backend_timeout,
            connect_timeout=min(cfg.backend_timeout, 5.0),
            max_body=MAX_RESPONSE_BODY,
        )
        if cfg.cse_id_source == "pending":
            cfg = await self._learn_cse_id(self.backend)
        await self.sa.open()
        if self.sa.admin_server is not None:
            self.sa.admin_server.reload_hook = self.reload  # POST /reload (m2msec gateway reload)
        profiles = {
            Transport.TLS: self._responders.for_transport(Transport.TLS),
            Transport.DTLS: self._responders.for_transport(Transport.DTLS),
        }
        self.sa.psk_check = self._responders.psk_revalidate
        self.sa.remote.key_source = self._responders.key_source  # MAF/MEF de-registrations
        self.sa.cache_ttl = float(getattr(self.store, "cache_ttl", 2.0))
        observe_store(self.metrics, "psk", self.store)
        self.sa.start_sweeping()
        openers = {
            "tls": self._open_tls,
            "dtls": self._open_dtls,
            "http": self._open_http,
            "egress": self._open_egress,
        }
        for spec in cfg.listen:
            info = await openers[spec.scheme](spec, profiles)
            self._listeners.append(info)
            log.info(
                "listening on %s (%s%s)",
                info.url,
                info.framework or "plain",
                ", CoAP" if spec.scheme == "dtls" else "",
            )

    async def _learn_cse_id(self, backend: BackendPool) -> GatewayConfig:
        """No ``cse_id`` configured: the csi of the backend's CSEBase (issue 14 item 6,
        :mod:`m2msec.servers.cse_base`), and every part built from the config told."""
        cfg = self.config
        cse_id = await retrieve_cse_id(
            backend, origin=cfg.cse_base_origin, timeout=cfg.cse_base_timeout
        )
        self.config = self._responders.config = self.egress.config = cfg.with_cse_id(cse_id)
        self.sa.instance = self.sa.config.instance or default_instance(str(cse_id))
        log.info("CSE-ID %s learned from the backend %s (its CSEBase csi)", cse_id, cfg.backend)
        return self.config

    # -- listeners, by URL scheme ---------------------------------------------------------
    async def _open_tls(self, spec: ListenerSpec, profiles: _ByTransport) -> ListenerInfo:
        cfg = self.config
        framework, profile = pick(profiles[Transport.TLS], spec)
        tls = TLSServer(
            profile,
            self.metrics.counted(profile, self._serve_tls),
            handshake_timeout=cfg.handshake_timeout,
            max_handshakes=cfg.max_handshakes,
            on_failure=self.metrics.failure_hook(profile, self.handshake_failed),
            first_flight_timeout=cfg.first_flight_timeout,
            source_share=cfg.source_share,
            on_handshake_failure=self._sa_failure(framework),
        )
        server = await tls.start(spec.host, spec.port)
        self._tls.append(tls)
        self._tls_specs.append(spec)
        return self._bound(spec, server, framework)

    async def _open_dtls(self, spec: ListenerSpec, profiles: _ByTransport) -> ListenerInfo:
        name, dtls = pick(profiles[Transport.DTLS], spec)
        coap = CoapListener(
            self,
            dtls,
            metrics=self.metrics,
            on_established=self.sa.attach_dtls,
            on_handshake_failure=self._sa_failure(name),
        )
        self._coap.append(coap)
        self._coap_specs.append(spec)
        host, port = await coap.start(spec.host, spec.port)
        return ListenerInfo(spec, host, port, name)

    async def _open_http(self, spec: ListenerSpec, profiles: _ByTransport) -> ListenerInfo:
        server = await asyncio.start_server(self._serve_plain, spec.host, spec.port)
        return self._bound(spec, server, None)

    async def _open_egress(self, spec: ListenerSpec, profiles: _ByTransport) -> ListenerInfo:
        server, framework = await self.egress.open(spec)
        return self._bound(spec, server, framework)

    def _bound(
        self, spec: ListenerSpec, server: asyncio.Server, framework: str | None
    ) -> ListenerInfo:
        self._servers.append(server)
        sock = server.sockets[0].getsockname()
        return ListenerInfo(spec, sock[0], sock[1], framework)

    async def _shutdown(self) -> None:
        stop_accepting(self._servers)
        await self._http.close(self.drain_timeout)
        for tls in self._tls:
            await tls.close()
        for coap in self._coap:
            await coap.close(self.drain_timeout)
        await self._plain.cancel()
        await self.egress.aclose()
        await wait_closed(self._servers)
        if self.backend is not None:
            await self.backend.aclose()
        if self._registry is not None:
            self._registry.close()
            self._registry = None
        if self._rule_store is not None:
            self._rule_store.close()
            self._rule_store = None
        for task in list(self._retired):
            task.cancel()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        await self._responders.aclose()
        await self.sa.close()
        log.info("gateway stopped: %s", self.stats.as_dict())

    # -- reload ---------------------------------------------------------------------------
    async def _reload(self, config: Any) -> str:
        """Put ``config`` in force for new handshakes (module docstring); ConfigurationError
        (nothing changed) for a setting that needs a restart or a credential that fails."""
        if not isinstance(config, GatewayConfig):
            raise ConfigurationError("a reload needs a gateway configuration")
        if config.cse_id_source == "pending" and self.config.cse_id_source == "backend":
            config = config.with_cse_id(self.config.cse_id)  # keep what the backend told us
        refuse_restart_only(self.config, config, RESTART_ONLY)
        old = self._responders
        fresh, tls, dtls = await reloaded_profiles(
            config, old.store, self._tls_specs, self._coap_specs
        )
        # Everything is built: swap. A listener's next accept uses its new profile.
        for server, profile in zip(self._tls, tls, strict=True):
            server.profile = profile
        for listener, profile in zip(self._coap, dtls, strict=True):
            listener.use_profile(profile)
        fresh.own_store, old.own_store = old.own_store, False
        self._responders = fresh
        self.sa.psk_check = fresh.psk_revalidate
        self.sa.remote.key_source = fresh.key_source
        self.config = config
        self.drain_timeout = config.drain_timeout
        self.reloads += 1
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)
        return (
            f"{config.source}: new handshakes use the new credentials on "
            f"{len(tls)} tls:// and {len(dtls)} dtls:// listeners; live associations continue"
        )

    async def _retire(self, old: ResponderProfiles) -> None:
        """Close a replaced profile set's clients once the handshakes begun on it are over."""
        try:
            await asyncio.sleep(self.config.handshake_timeout)
        finally:
            await old.aclose()

    # -- associations ---------------------------------------------------------------------
    def _sa_failure(self, framework: str) -> Callable[[HandshakeFailure], None]:
        return lambda failure: self.sa.handshake_failed(failure, framework)

    def handshake_failed(self, peer: tuple[Any, ...] | None, reason: str) -> None:
        """Listeners report refused handshakes here (TLS and DTLS alike)."""
        self.stats.handshakes_failed += 1
        if reason == EVICTED:
            self.stats.handshakes_evicted += 1
        elif reason == NO_FIRST_FLIGHT:
            self.stats.first_flight_timeouts += 1

    def admit_association(self, ctx: SecurityContext, peer: Any) -> bool:
        """Initiate SA Received (seed 003 table 24): the gateway's policy, the cap of live
        associations per credential (issue 9), then the application's Responder Agent;
        False: refused, the session ended with ``TLSEngine.refuse`` (close_notify).

        Refuse-new rather than evict-oldest: evicting would let whoever holds a copy of the
        key knock the device's own associations off at will; refusing keeps what works and
        bounds what one key can hold. Each admitted association is released by
        :meth:`close_association`.
        """
        key = _credential(ctx)
        refusal = None
        if self._live_by_credential[key] >= self.config.max_associations_per_credential:
            refusal = "the credential holds the maximum of live associations"
            self.stats.associations_over_credential_cap += 1
            log.warning(
                "association refused: peer=%s key_id=%s holds %d live associations (the cap) "
                "from=%s",
                ctx.peer_id,
                ctx.key_id,
                self._live_by_credential[key],
                _addr(peer),
                extra=log_fields(ctx, "refused", refusal, _addr(peer)),
            )
        if not self.sa.admit(ctx, _addr(peer), refusal):
            return False
        self._live_by_credential[key] += 1
        return True

    def open_association(self, ctx: SecurityContext, peer: Any) -> Association:
        """Record a newly established association (SA record, stats, log); its rule state."""
        assoc = Association.from_context(ctx, self.config.cse_id, sp_fqdn_of(self.config))
        registry = self.registry
        if registry is not None:
            bind_recorded(assoc, registry)
        self.sa.opened(assoc)
        self.stats.associations_established += 1
        if ctx.protocol.upper().startswith("DTLS"):
            self.stats.dtls_associations += 1
        self.recent_associations[ctx.sa_id] = ctx
        while len(self.recent_associations) > RECENT_ASSOCIATIONS:
            self.recent_associations.popitem(last=False)
        log.info(
            "association established: peer=%s kind=%s framework=%s key_id=%s sa=%s "
            "cipher=%s/%s from=%s",
            assoc.peer_id,
            ctx.peer_kind.value,
            ctx.framework.value,
            ctx.key_id,
            ctx.sa_id,
            ctx.protocol,
            ctx.cipher_suite,
            _addr(peer),
            extra=log_fields(ctx, "established", None, _addr(peer), assoc.peer_id),
        )
        return assoc

    def close_association(self, assoc: Association) -> None:
        self.sa.closed(assoc)
        key = _credential(assoc.context)
        self._live_by_credential[key] -= 1
        if self._live_by_credential[key] <= 0:
            del self._live_by_credential[key]
        self.stats.associations_closed += 1
        log.info(
            "association closed: peer=%s sa=%s",
            assoc.peer_id,
            assoc.context.sa_id,
            extra=log_fields(assoc.context, "closed", None, peer=assoc.peer_id),
        )

    def live_by_framework(self) -> dict[str, int]:
        """Live associations by framework (the metrics read it; no key ids leave here)."""
        out: Counter[str] = Counter()
        for key, count in self._live_by_credential.items():
            out[key.partition(":")[0]] += count
        return dict(out)

    def session_caches(self) -> list[tuple[str, ServerSessionCache]]:
        """The (D)TLS session caches of the listeners, by protocol (for the metrics)."""
        profiles = [t.profile for t in self._tls]
        profiles += [c.handle.server.profile for c in self._coap if c.handle is not None]
        return [
            (p.transport.value, p.session_cache) for p in profiles if p.session_cache is not None
        ]

    def readiness(self) -> Readiness:
        """``/readyz``: the psk store answers a read and the backend accepts a connection."""
        return gateway_readiness(self)

    def _count_bad_request(self, event: BadRequest) -> None:
        self.stats.bad_requests += 1

    def _count_head_timeout(self, event: BadRequest) -> None:
        self.stats.request_head_timeouts += 1

    async def _serve_tls(self, conn: TLSConnection) -> None:
        self.sa.attach(LiveSa.of_tls(conn), conn.context)
        if not self.admit_association(conn.context, conn.peer_address):
            return  # TLSServer closes it with close_notify
        assoc = self.open_association(conn.context, conn.peer_address)

        async def handle(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            return await self.process(assoc, request)

        try:
            await self._http.serve(conn, handle)
        finally:
            self.close_association(assoc)

    async def _serve_plain(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")

        async def handle(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            self.stats.plain_requests_refused += 1
            self._refused(request, _addr(peer), Rule.NO_ASSOCIATION, "plain HTTP")
            answer = _answer(
                request,
                RSC.SECURITY_ASSOCIATION_REQUIRED,
                "a security association (TLS) is required; this listener is plain HTTP",
            )
            self.metrics.request(request, answer)
            return answer, False

        await self._plain.serve(reader, writer, handle)

    async def process(
        self, assoc: Association, request: OneM2MRequest
    ) -> tuple[HttpResponse, bool]:
        """The request pipeline of every secured transport: rules (a)-(d), then forwarding.

        Returns the answer and whether the association must be closed after it.
        """
        registry = self.registry
        owner_of = self.owner_of or (None if registry is None else registry.owner_of)
        decision = self.sa.receiving(assoc) or self.sa.revalidate(assoc) or check_request(
            assoc,
            request,
            self._clock(),
            owner_of,
            self.app_rules(),
            cse_originators=self.config.cse_originators,
        )
        if isinstance(decision, Refuse):
            self.stats.requests_refused += 1
            self._refused(request, f"peer={assoc.peer_id}", decision.rule, decision.reason)
            answer = _answer(request, decision.rsc, decision.reason)
            self.metrics.request(request, answer)
            return answer, decision.close
        self.sa.begin(assoc)
        try:
            response = await self._forward(assoc, request, decision)
        finally:
            close = self.sa.done(assoc)  # an update waits for the answer in flight
        if decision.bind_on_created:
            self._bind(assoc, response)
        self.metrics.request(request, response)
        return response, close

    def _refused(self, request: OneM2MRequest, source: str, rule: Rule, reason: str) -> None:
        """Count and log a request the gateway answered itself (never a key in the line)."""
        self.stats.refused_by_rule[rule.value] += 1
        log.warning(
            "refused %s %s from %s originator=%r rule=%s: %s",
            request.method,
            _short(request.target),
            source,
            request.origin,
            rule.value,
            reason,
        )

    def _bind(self, assoc: Association, response: HttpResponse) -> None:
        if bind_registration(assoc, response, self.registry) is not None:
            self.stats.registrations_bound += 1

    async def _forward(
        self, assoc: Association, request: OneM2MRequest, decision: Forward
    ) -> HttpResponse:
        assert self.backend is not None
        headers = forwarded_headers(request, assoc, decision.origin)
        if decision.bind_on_created:
            # The aei must be readable in the answer: ask for it uncompressed.
            headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"]
        started = time.perf_counter()
        try:
            resp = await self.backend.request(request.method, request.target, headers, request.body)
        except BackendError as exc:
            self.metrics.backend(None, backend_error_kind(exc))
            if isinstance(exc, BackendTimeout):
                return self._backend_error(request, RSC.REQUEST_TIMEOUT, "did not answer in time")
            if isinstance(exc, BackendTooLarge):
                return self._backend_error(
                    request, RSC.INTERNAL_SERVER_ERROR, "answered more than the gateway relays"
                )
            if isinstance(exc, BackendRequestError):
                # Header text HTTP/1.1 cannot carry (e.g. from CoAP options): nothing sent.
                self.stats.bad_requests += 1
                return _answer(request, RSC.BAD_REQUEST, "the request cannot be forwarded as HTTP")
            return self._backend_error(
                request, RSC.TARGET_NOT_REACHABLE, f"cannot be reached ({exc})"
            )
        self.metrics.backend(time.perf_counter() - started)
        self.stats.requests_forwarded += 1
        return HttpResponse(resp.status, response_headers(resp.headers), resp.body)

    def _backend_error(self, request: OneM2MRequest, rsc: int, what: str) -> HttpResponse:
        self.stats.backend_errors += 1
        target = _short(request.target)
        log.error("backend %s %s (%s %s)", self.config.backend, what, request.method, target)
        return _answer(request, rsc, f"the CSE behind the gateway {what}")


def _answer(request: OneM2MRequest, rsc: int, message: str) -> HttpResponse:
    return error_response(
        rsc, message, request_id=request.request_id, release_version=request.release_version
    )


_ByTransport = dict[Transport, Profiles]


def _addr(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _credential(ctx: SecurityContext) -> str:
    """What the per-credential cap counts: the framework's key id, else the peer identity."""
    return f"{ctx.framework.value}:{ctx.key_id or ctx.peer_id}"
