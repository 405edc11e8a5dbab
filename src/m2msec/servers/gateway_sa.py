"""The gateway as the Responder of seed 003's Security Association services (tables 23-44).

The gateway is Entity B of every framework (TS-0003 8.2), and so the Responder of seed
003 7.3.1.1: :class:`GatewaySa` holds its Responder's SA Management
(:class:`~m2msec.sa.management.ResponderSaManagement`) with an
:class:`~m2msec.sa.store.SaRecordStore` as its record sink, and is the gateway's
Responder Agent (rc) in front of the application's. Every real handshake of its
listeners, TLS and DTLS, every framework, goes through it (docs/sa.md):

* **Establish** (7.3.2): a finished handshake is Initiate SA Received (table 24) for the
  Responder Agent - first the gateway's own policy (the per-credential cap of
  associations), then the application's agent (``Gateway(agent=...)``); a refusal ends
  the session with ``TLSEngine.refuse`` (close_notify, unresumable) before any request is
  read; an admitted SA is established (table 35) and recorded. A failed handshake is a
  ``failed`` record with its Cause of rejection: "No parameters in common with Responder"
  when the engine found nothing in common, "Administrative reasons" otherwise. Handshakes
  that never began (no ClientHello in time, evicted at the cap) make no record.
* **Receive / Send Secured Message** (7.3.5, 7.3.4): a request over an SA that
  ``check_receive`` refuses (removed, expired, closed) is answered 4107 and not forwarded.
* **Update** (7.3.3), the operator's ``m2msec sa update``: the session is evicted from the
  resumption caches and ended gracefully (at once when idle, after the answer in flight
  otherwise); the Initiator's next handshake is a new SA, which the management links to
  the old one (``updated``, ``replaced_by``).
* **Remove** (7.3.6), the operator's ``m2msec sa remove`` and a removed credential: the
  SA is marked invalid in its record (with the reason), its session evicted and ended at
  once with close_notify. A peer's own close_notify is its SA Removal (table 43); a
  session that ends otherwise is ``closed``.

``m2msec psk remove`` reaches live SAs within the lookup cache's lifetime even when the
device is idle: :meth:`GatewaySa.sweep` re-validates every live provisioned-PSK SA by the
gateway's one revalidation (the psk row, as a resumed session is checked), and runs
``expire_due``, every ``cache_ttl`` seconds. A MAF or MEF de-registration reaches live
SAs the same way (issue 12 item 3): :meth:`GatewaySa.revalidate_remote`, started by the
sweep, asks the function again for the key of each live MAF-framework SA (Key Retrieval,
8.8.2.8) and each SA over a MEF-issued Kpsa (fetchCredentials or MEF Key Retrieval) at
most once per ``[sa] revalidate_interval`` per key id
(:class:`~m2msec.servers.gateway_revalidation.RemoteRevalidation`). A definite refusal
(4004, 4103) or another key value for the same id is a Remove with reason
:data:`CREDENTIAL_REMOVED_AT` / :data:`CREDENTIAL_CHANGED_AT` (session evicted, ended with
close_notify, the cached key dropped); an unreachable function leaves live SAs alone and
is logged once per outage. Memory stays bounded: only live SAs are held
(the management keeps a bounded list of ended identifiers); ended ones are in the store.

:class:`GatewaySa` is also the operator's :class:`~m2msec.sa.admin.SaAdmin` (list and
show from the store, update and remove over the live sessions), served by
:class:`~m2msec.servers.admin.AdminServer` on the admin socket (``[sa] admin_socket``).
It is the one admin of both sides: the gateway's SAs as Initiator (the egress's upstream
SAs, an :class:`InitiatorSide` given by :meth:`GatewaySa.add_initiator_side`, whose
Initiator's SA Management writes to the same store) are listed and shown beside the
Responder's, and ``update`` / ``remove`` of one of them re-key its link in place or end
it with close_notify (docs/sa.md section 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from m2msec.bindings.messages import RSC
from m2msec.config.gateway_sections import SaConfig
from m2msec.errors import HandshakeError, StoreError
from m2msec.logs import sa_fields
from m2msec.paths import data_dir, default_admin_socket
from m2msec.sa.agent import AcceptAll, ResponderAgent, refuse
from m2msec.sa.flows import (
    InitiateSaReceived,
    InitiateSaReceivedConfirm,
    SaEstablishmentComplete,
    SaRemoved,
    SaUpdated,
)
from m2msec.sa.management import ResponderSaManagement
from m2msec.sa.outcomes import IllegalTransition, RemoveOutcome, SaUnavailable
from m2msec.sa.records import SaId, SaRecord, SaRole, SaState
from m2msec.sa.store import SaRecordStore
from m2msec.servers.admin import AdminServer
from m2msec.servers.association import Association
from m2msec.servers.gateway_revalidation import (
    CREDENTIAL_CHANGED_AT,
    CREDENTIAL_REMOVED_AT,
    KeySource,
    RemoteRevalidation,
)
from m2msec.servers.gateway_sa_admin import InitiatorSide, SaAdminOps
from m2msec.servers.request_checks import Refuse, Rule
from m2msec.tls.aio import EVICTED, NO_FIRST_FLIGHT, TLSConnection
from m2msec.tls.aio_dtls import DTLSAssociation
from m2msec.tls.context import Framework, HandshakeFailure, PeerBinding, SecurityContext
from m2msec.tls.engine import TLSEngine

__all__ = [
    "CREDENTIAL_CHANGED_AT",
    "CREDENTIAL_EXPIRED",
    "CREDENTIAL_REMOVED",
    "CREDENTIAL_REMOVED_AT",
    "GatewaySa",
    "InitiatorSide",
    "KeySource",
    "LiveSa",
    "PskCheck",
    "default_instance",
]

log = logging.getLogger("m2msec.servers.gateway")

#: The reason recorded (and logged) when the psk row of a live SA is removed (issue 12
#: item 3; seed 003's Remove has no cause element, so it goes into the record).
CREDENTIAL_REMOVED: Final = "administrative reasons: credential removed"
#: ... and when its expiry was moved to the past.
CREDENTIAL_EXPIRED: Final = "administrative reasons: credential expired"
STALE: Final = "the gateway stopped without ending it (found live when it started again)"
#: Failures of handshakes that never began: no Initiate SA to record.
_NOT_BEGUN: Final = frozenset({EVICTED, NO_FIRST_FLIGHT, "too many handshakes in progress"})

PskCheck = Callable[[PeerBinding], PeerBinding]


def default_instance(cse_id: str) -> str:
    """``<host>:<data dir>:<CSE-ID>``: this gateway's name in a store it may share."""
    return f"{socket.gethostname()}:{data_dir()}:{cse_id}"


@dataclass(slots=True, eq=False)
class LiveSa:
    """The session of one live SA: how to end it at once (close_notify and the transport,
    or the DTLS association) and its engine (``forget_session``: a removed or updated SA
    cannot come back by resumption, ISSUE-NOTES Issue 9)."""

    engine: TLSEngine
    closer: Callable[[], None]
    peer_close_notify: Callable[[], bool]
    assoc: Association | None = None
    busy: int = 0  # requests being answered
    closing: bool = False  # an update asked to end it once those are answered

    @classmethod
    def of_tls(cls, conn: TLSConnection) -> LiveSa:
        return cls(conn.engine, conn.close_nowait, lambda: conn.close_notify_received)

    @classmethod
    def of_dtls(cls, dtls: DTLSAssociation) -> LiveSa:
        return cls(dtls.engine, dtls.close, lambda: dtls.close_notify_received)

    def end(self, *, evict: bool) -> None:
        if evict:
            self.engine.forget_session()
        self.closer()


class _GatewayAgent:
    """The gateway's Responder Agent (rc): its own policy refusal, else the application's."""

    def __init__(self, app: ResponderAgent) -> None:
        self.app = app
        self.policy_refusal: str | None = None  # set around one on_handshake_complete

    def initiate_sa_received(self, flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
        if self.policy_refusal is not None:
            return refuse(flow)
        return self.app.initiate_sa_received(flow)

    def sa_establishment_complete(self, flow: SaEstablishmentComplete) -> None:
        self.app.sa_establishment_complete(flow)

    def sa_updated(self, flow: SaUpdated) -> None:
        self.app.sa_updated(flow)

    def sa_removed(self, flow: SaRemoved) -> None:
        self.app.sa_removed(flow)


class GatewaySa(SaAdminOps):
    """The gateway's SA services (module docstring): ``await open()``, ``await close()``.

    ``instance`` names this gateway's records in a shared store; ``clock`` is the
    gateway's (UTC), so that expiry agrees with the request rules.
    """

    def __init__(
        self,
        config: SaConfig,
        instance: str,
        *,
        agent: ResponderAgent | None = None,
        clock: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.instance = config.instance or instance
        self._agent = _GatewayAgent(agent if agent is not None else AcceptAll())
        self.management = ResponderSaManagement(self._agent, self, clock=clock)
        self._clock = clock
        self.store: SaRecordStore | None = None
        self.admin_server: AdminServer | None = None
        #: The live SAs' sessions, by SA identifier (only live ones: bounded).
        self._live: dict[SaId, LiveSa] = {}
        self._pending: dict[str, LiveSa] = {}  # handshakes done, not yet admitted
        #: The provisioned-PSK revalidation (the psk row) and how often it may run.
        self.psk_check: PskCheck | None = None
        self.cache_ttl = 2.0
        #: Seconds between sweeps; None: every ``cache_ttl`` (the lookup cache's lifetime).
        self.sweep_interval: float | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.removed_by_sweep = 0
        #: The MAF / MEF keys of live SAs, re-asked for (issue 12 item 3).
        self.remote = RemoteRevalidation(config.revalidate_interval)
        #: The gateway's SAs as Initiator, beside the Responder's (the egress).
        self._initiators: list[InitiatorSide] = []

    def add_initiator_side(self, side: InitiatorSide) -> None:
        """Let the admin API list, show, update and remove ``side``'s SAs too; their
        records go to this store (``side``'s management has this object as its sink)."""
        self._initiators.append(side)

    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the record store (closing a crashed run's live records) and the admin API."""
        cfg = self.config
        retention = timedelta(seconds=cfg.retention) if cfg.retention else None
        self.store = await asyncio.to_thread(
            SaRecordStore, cfg.store, retention=retention, owner=self.instance
        )
        await asyncio.to_thread(self.store.close_stale, SaRole.RESPONDER, STALE)
        await asyncio.to_thread(self.store.close_stale, SaRole.INITIATOR, STALE)
        if cfg.admin_socket != "":
            path = cfg.admin_socket or default_admin_socket()
            server = AdminServer(self, path)
            try:
                await server.start()
            except OSError as exc:
                if cfg.admin_socket is not None or exc.errno != errno.EADDRINUSE:
                    raise
                # The default socket belongs to another gateway of this data directory.
                log.warning(
                    "SA admin socket %s is in use by another gateway: this one has no admin "
                    "API (set [sa] admin_socket)",
                    path,
                )
            else:
                self.admin_server = server

    def start_sweeping(self) -> None:
        """Start the periodic :meth:`sweep` (once the listeners' profiles set
        :attr:`psk_check` and :attr:`cache_ttl`)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        """Stop the sweep and the admin API, then commit the records and close the store
        (after the listeners: the sessions' ends are recorded)."""
        for task in (self._sweeper, self.remote.task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweeper = self.remote.task = None
        if self.admin_server is not None:
            await self.admin_server.close()
            self.admin_server = None
        if self.store is not None:
            await self.store.aclose()
            self.store = None

    # -- the record sink --------------------------------------------------------------------
    def record(self, rec: SaRecord, event: str) -> None:
        store = self.store
        if store is not None:
            store.record(rec, event)

    # -- Establish (7.3.2) ------------------------------------------------------------------
    def attach(self, session: LiveSa, ctx: SecurityContext) -> None:
        """A listener's session, before :meth:`admit` (DTLS hands it over this way)."""
        self._pending[ctx.sa_id] = session

    def attach_dtls(self, dtls: DTLSAssociation) -> None:
        self.attach(LiveSa.of_dtls(dtls), dtls.context)

    def admit(self, ctx: SecurityContext, peer: str, policy_refusal: str | None) -> bool:
        """Initiate SA Received for a finished handshake: the gateway's policy
        (``policy_refusal``), then the application's agent. False: refused, and the
        session ended with ``TLSEngine.refuse`` (close_notify, never resumable)."""
        session = self._pending.pop(ctx.sa_id, None)
        self._agent.policy_refusal = policy_refusal
        try:
            admission = self.management.on_handshake_complete(ctx, peer_address=peer)
        except IllegalTransition:  # the same session twice: never served twice
            admission = None
        finally:
            self._agent.policy_refusal = None
        if admission is None or not admission.admitted:
            why = policy_refusal or "refused by the Responder Agent"
            if session is not None:
                session.engine.refuse(why)
                session.closer()
            if policy_refusal is None:
                log.info(
                    "association refused: peer=%s sa=%s: %s",
                    ctx.peer_id,
                    ctx.sa_id,
                    why,
                    extra=sa_fields(
                        sa_id=ctx.sa_id,
                        peer=ctx.peer_id,
                        framework=ctx.framework.value,
                        cause=why,
                        peer_address=peer,
                        event="refused",
                    ),
                )
            return False
        if session is not None:
            self._live[admission.sa_id] = session
        return True

    def opened(self, assoc: Association) -> None:
        live = self._live.get(SaId.from_hex(assoc.context.sa_id))
        if live is not None:
            live.assoc = assoc

    def handshake_failed(self, failure: HandshakeFailure, framework: str) -> None:
        """A listener's failed handshake: a ``failed`` record with its Cause of rejection
        (seed 003 tables 23 and 35); nothing for a handshake that never began."""
        if failure.reason in _NOT_BEGUN:
            return
        self.management.on_handshake_failed(
            failure.reason,
            no_common_parameters=failure.no_common_parameters,
            framework=framework,
            peer_id=failure.psk_identity,
            protocol=failure.transport,
            peer_address=_address(failure.peer),
        )

    def closed(self, assoc: Association) -> None:
        """The session of ``assoc`` ended: by the peer's close_notify (its SA Removal,
        table 43), else ``closed``. An SA already removed or replaced stays as it is."""
        sa_id = SaId.from_hex(assoc.context.sa_id)
        live = self._live.pop(sa_id, None)
        if live is not None and live.peer_close_notify():
            self.management.on_sa_removal(sa_id)
        else:
            self.management.on_session_closed(sa_id)

    # -- Receive Secured Message (7.3.5) and the revalidation of a credential ---------------
    def receiving(self, assoc: Association) -> Refuse | None:
        """None when a request may pass over the SA of ``assoc``; else the 4107 refusal
        (the session is then ended after the answer, and evicted)."""
        sa_id = SaId.from_hex(assoc.context.sa_id)
        try:
            self.management.check_receive(sa_id)
        except SaUnavailable as exc:
            live = self._live.pop(sa_id, None)
            if live is not None:
                live.engine.forget_session()
            if exc.state is SaState.EXPIRED:  # rule (a), as the request rules word it
                rule, why = Rule.EXPIRED, "the security association has expired"
            else:
                rule, why = Rule.SA_UNAVAILABLE, f"no service over this SA ({exc.reason})"
            return Refuse(
                RSC.SECURITY_ASSOCIATION_REQUIRED, rule, f"{why}; establish a new one", close=True
            )
        return None

    def revalidate(self, assoc: Association, *, close_now: bool = False) -> Refuse | None:
        """Re-check a live provisioned-PSK SA's psk row, at most once per lookup cache
        lifetime: a removed (or expired) row is a Remove with that reason; an expiry moved
        earlier becomes the association's lifetime, which rule (a) then enforces."""
        ctx = assoc.context
        check = self.psk_check
        if check is None or ctx.framework is not Framework.PROVISIONED_PSK:
            return None
        now = time.monotonic()
        if now - assoc.revalidated_at < self.cache_ttl:
            return None
        assoc.revalidated_at = now
        try:
            fresh = check(PeerBinding(ctx.peer_id, ctx.peer_kind, ctx.key_id, ctx.valid_until))
        except HandshakeError as exc:
            reason = CREDENTIAL_EXPIRED if "expired" in exc.reason else CREDENTIAL_REMOVED
            log.warning(
                "association of peer=%s key_id=%s sa=%s ended: %s",
                ctx.peer_id,
                ctx.key_id,
                ctx.sa_id,
                reason,
                extra=sa_fields(
                    sa_id=ctx.sa_id,
                    peer=ctx.peer_id,
                    framework=ctx.framework.value,
                    cause=reason,
                    key_id=ctx.key_id,
                    event="ended",
                ),
            )
            self.remove_sa(SaId.from_hex(ctx.sa_id), reason, close_now=close_now)
            return Refuse(
                RSC.SECURITY_ASSOCIATION_REQUIRED,
                Rule.EXPIRED,
                "the credential of this security association was removed or has expired",
                close=True,
            )
        except StoreError:
            return None  # an outage does not end live associations; logged by the store
        until = fresh.valid_until
        if until is not None and (ctx.valid_until is None or until < ctx.valid_until):
            assoc.context = replace(ctx, valid_until=until)
        return None

    def begin(self, assoc: Association) -> None:
        live = self._live.get(SaId.from_hex(assoc.context.sa_id))
        if live is not None:
            live.busy += 1

    def done(self, assoc: Association) -> bool:
        """A request over ``assoc`` was answered: True when its session must end now (an
        update asked for it while the request was in flight)."""
        live = self._live.get(SaId.from_hex(assoc.context.sa_id))
        if live is None:
            return False
        live.busy -= 1
        return live.closing and live.busy <= 0

    # -- the periodic sweep -----------------------------------------------------------------
    def sweep(self, now: datetime | None = None) -> int:
        """Expire what is due (``expire_due``: closed, evicted) and re-validate every live
        provisioned-PSK SA (a removed psk row ends it at once). Returns the SAs ended."""
        ended = 0
        for outcome in self.management.expire_due(now):
            ended += self._apply(outcome, close=outcome.close_session)
        for live in list(self._live.values()):
            if live.assoc is not None and self.revalidate(live.assoc, close_now=True):
                ended += 1
                self.removed_by_sweep += 1
        return ended

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval or self.cache_ttl)
            try:
                self.sweep()
            except Exception:
                log.exception("SA sweep failed")
            # The MAF/MEF pass runs beside the sweep; a slow one is not started twice.
            remote = self.remote
            if remote.key_source is not None and (remote.task is None or remote.task.done()):
                remote.task = asyncio.get_running_loop().create_task(self.revalidate_remote())

    async def revalidate_remote(self) -> int:
        """One pass of :class:`RemoteRevalidation` over the live SAs; the SAs of a refused
        or changed key are removed. Returns the SAs ended; never raises for an outage."""
        ended = 0
        live = [(i, x.assoc.context if x.assoc else None) for i, x in self._live.items()]
        for sa_id, key_id, reason, why in await self.remote.due_removals(live):
            if sa_id not in self._live:
                continue
            log.warning(
                "association sa=%s key_id=%s ended: %s (%s)", sa_id.hex(), key_id, reason, why
            )
            if self.remove_sa(sa_id, reason, close_now=True).accepted:
                ended += 1
                self.removed_by_sweep += 1
        return ended

    # -- Remove and Update, the operator's (SaAdmin) ----------------------------------------
    def remove_sa(self, sa_id: SaId, reason: str, *, close_now: bool = True) -> RemoveOutcome:
        """Remove (7.3.6): marked invalid with ``reason``, its session evicted and (with
        ``close_now``) ended at once with close_notify; else ended after the answer the
        caller is about to give."""
        outcome = self.management.remove(sa_id, reason, both_sides=True)
        if outcome.accepted:
            self._apply(outcome, close=close_now and outcome.close_session)
        return outcome

    def _apply(self, outcome: RemoveOutcome, *, close: bool) -> int:
        live = self._live.pop(outcome.sa_id, None)
        if live is None:
            return 0
        if close:
            live.end(evict=outcome.evict_session)
        elif outcome.evict_session:
            live.engine.forget_session()
        return 1

    def _end_for_update(self, sa_id: SaId) -> None:
        """End an SA's session so that its Initiator re-keys: now if idle, else after the
        answer in flight; its session evicted (the next handshake is a full one)."""
        live = self._live.get(sa_id)
        if live is not None:
            live.engine.forget_session()  # the next handshake is a full one: new keys
            if live.busy:
                live.closing = True
            else:
                live.closer()

    def live_count(self) -> int:
        return len(self._live)


def _address(peer: Any) -> str | None:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return None if peer is None else str(peer)
