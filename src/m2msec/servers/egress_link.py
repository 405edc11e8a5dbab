"""The egress's security associations with one upstream peer: the gateway as Initiator
Agent (seed 003 7.3.1.1.1) for the CSE behind it (issue 12 item 5; docs/gateway.md "Egress").

:class:`UpstreamLink` establishes (seed 003 7.3.2, Establish SA) and maintains the SAs to
the upstream peer with the credential of the initiator's credentials table
(:func:`m2msec.config.initiators.build_initiator`: provisioned PSK 8.2.2.1, certificates
8.2.2.2, MAF 8.2.2.3, GBA seed 000 8.2.3.2), and carries the CSE's requests over them:

* The SAs are the connections of a :class:`~m2msec.servers.backend.BackendPool` whose
  connection factory is Entity A's handshake: persistent HTTP/1.1 over TLS, at most
  ``connections`` at a time, an idle one closed after ``idle_timeout``, one the peer closed
  replaced by a fresh handshake at the next request (the pool's rules of reuse and retry).
* An upstream that cannot be reached is tried again after a back-off (0.25 s doubling to
  5 s) rather than at every request; meanwhile requests fail at once (5103 at the egress).
* Update (seed 003 7.3.3; docs/readings.md A-24: a new handshake retires the old session):
  every ``rekey_after`` seconds, or on :meth:`UpstreamLink.rekey`, a new pool (a
  *generation*) runs a fresh full handshake first; only when it succeeded do new requests
  go to it, while requests in flight finish on the old one, which is then closed
  (close_notify). A failed update leaves the old SA serving. For MAF the Kc is forgotten
  first, so the new SA runs under a fresh Kc.
* Each SA is kept by the Initiator's SA Management of seed 003 7.3.1.1.2.2
  (:class:`~m2msec.sa.management.InitiatorSaManagement`, role INITIATOR, keyed by
  ``SecurityContext.sa_id``): Establish (a finished handshake; a failed one is a
  ``failed`` record with its Cause of rejection), Update (:meth:`UpstreamLink.rekey`: the
  old SAs ``updating``, then ``updated`` with ``replaced_by``, or ``established`` again
  when the new handshake failed), Remove (:meth:`UpstreamLink.remove`: close_notify, the
  session evicted, the next request establishes a new SA) and the end of a session
  (``closed``). Its record sink is the gateway's :class:`~m2msec.sa.store.SaRecordStore`
  (through :class:`~m2msec.servers.gateway_sa.GatewaySa`), so ``m2msec sa list`` shows
  these SAs beside the Responder's (docs/sa.md section 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from m2msec.config.egress import EgressConfig
from m2msec.config.initiators import Initiator, build_initiator
from m2msec.errors import HandshakeError, M2MSecError
from m2msec.sa.flows import RemoveSa, UpdateOperation, UpdateSa
from m2msec.sa.management import InitiatorSaManagement
from m2msec.sa.outcomes import IllegalTransition, RemoveOutcome, UpdateOutcome
from m2msec.sa.records import SaId
from m2msec.servers.backend import (
    BackendError,
    BackendPool,
    BackendResponse,
    BackendUnreachable,
)
from m2msec.tls.aio import TLSConnection

__all__ = ["EgressStats", "UpstreamLink"]

log = logging.getLogger(__name__)

#: Back-off after a failed establishment: first delay, doubling up to the last.
RETRY_FIRST = 0.25
RETRY_MAX = 5.0
#: Largest upstream answer relayed (as the gateway's backend pool).
MAX_RESPONSE_BODY = 64 * 1024 * 1024


@dataclass(slots=True)
class EgressStats:
    """Counters since start, all egress listeners together (no identities, no keys)."""

    sas_established: int = 0
    sas_failed: int = 0  # establishments that failed (handshake refused, peer unreachable)
    sas_closed: int = 0
    rekeys: int = 0  # Updates: a fresh SA replaced the current one
    rekeys_failed: int = 0  # the old SA kept serving
    requests_forwarded: int = 0
    requests_refused: int = 0  # From not in the allow-list (or missing, malformed)
    upstream_errors: int = 0  # answered 5103/4008/5000 by the egress itself

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class _SaStream:
    """One SA (a :class:`TLSConnection`) in the pool's
    :class:`~m2msec.servers.backend.PooledStream` shape; ``on_closed`` is told when it ends."""

    def __init__(self, conn: TLSConnection, on_closed: Callable[[_SaStream], None]) -> None:
        self.conn = conn
        self.sa_id = conn.context.sa_id
        self.on_idle_event: Callable[[], None] | None = None
        self._on_closed = on_closed
        self.watch = asyncio.get_running_loop().create_task(self._watch_close())

    @property
    def usable(self) -> bool:
        return not self.conn.is_closing()

    async def recv(self) -> bytes:
        return await self.conn.recv()

    async def send(self, data: bytes) -> None:
        await self.conn.send(data)

    async def close(self) -> None:
        await self.conn.close()

    def release(self) -> None:
        self.conn.close_nowait()

    def abort(self) -> None:
        self.conn.abort()

    async def _watch_close(self) -> None:
        await self.conn.wait_closed()
        self._on_closed(self)
        if self.on_idle_event is not None:
            self.on_idle_event()


@dataclass(eq=False)
class _Generation:
    """The SAs made under one key setting: a pool, its SAs, its requests in flight."""

    number: int
    pool: BackendPool = field(init=False)
    sa_ids: list[str] = field(default_factory=list)
    live: set[str] = field(default_factory=set)
    first_sa: asyncio.Event = field(default_factory=asyncio.Event)
    first_at: float = 0.0
    in_flight: int = 0
    retired: bool = False
    #: Dial even within the back-off (an Update's own handshake: it is asked for).
    forced: bool = False
    #: The SAs this generation's first SA replaces (an Update in progress).
    update_of: tuple[SaId, ...] = ()
    #: The open SAs, by identifier (for Remove).
    streams: dict[str, _SaStream] = field(default_factory=dict)


class UpstreamLink:
    """The SAs to one upstream peer and the requests over them (module docstring).

    ``await start()`` (never fails for an unreachable peer: the first SA is tried in the
    background), ``await request(...)`` (BackendError as the pool raises it),
    ``await rekey()``, ``await aclose()``. ``initiator`` overrides the one built from the
    credential (tests).
    """

    def __init__(
        self,
        config: EgressConfig,
        management: InitiatorSaManagement,
        stats: EgressStats,
        *,
        initiator: Initiator | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.management = management
        #: The outcome of the last Update (:meth:`rekey`), for the operator's ``sa update``.
        self.last_update: UpdateOutcome | None = None
        self.stats = stats
        self.initiator = initiator
        self._clock = clock
        self._generations = 0
        self._current: _Generation | None = None
        self._old: set[_Generation] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchers: set[asyncio.Task[None]] = set()
        self._rekey_lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._closed = False

    # -- public ---------------------------------------------------------------------------
    @property
    def framework(self) -> str:
        return self.config.credential.framework.name

    def _framework_value(self) -> str:
        from_ctx = {"psk": "provisioned-psk", "certificate": "certificate"}
        return from_ctx.get(self.framework, self.framework)

    @property
    def live_sa_ids(self) -> list[str]:
        """The SA identifiers of the open SAs new requests go to, oldest first."""
        gen = self._current
        return [] if gen is None else [s for s in gen.sa_ids if s in gen.live]

    async def start(self) -> None:
        """Build Entity A (ConfigurationError for a credential that cannot work), then try
        the first SA in the background and start the re-key timer."""
        cfg = self.config
        if self.initiator is None:
            self.initiator = build_initiator(cfg.credential, host=cfg.upstream_host)
        self._current = self._generation()
        self._spawn(self._prime_first(self._current))
        if cfg.rekey_after is not None:
            self._spawn(self._maintain(cfg.rekey_after))

    async def request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> BackendResponse:
        """Relay one request over the current SA (or a new one, made on demand)."""
        gen = self._current
        if gen is None or self._closed:
            raise BackendUnreachable("egress closed")
        gen.in_flight += 1
        try:
            return await gen.pool.request(method, target, headers, body)
        finally:
            gen.in_flight -= 1
            if gen.retired and gen.in_flight == 0:
                self._spawn(self._close_generation(gen))

    def holds(self, sa_id: SaId) -> bool:
        """True when ``sa_id`` is one of this link's live SAs."""
        rec = self.management.get(sa_id)
        return rec is not None and any(str(sa_id) in g.streams for g in self._gens())

    async def rekey(self) -> bool:
        """Update: replace the current SAs by a fresh handshake (module docstring). True
        when new requests now go to a new SA (or there was none to replace); False when
        the new handshake failed and the old SA keeps serving."""
        async with self._rekey_lock:
            old = self._current
            if old is None or self._closed:
                return False
            if old.pool.open_connections == 0:
                self._current = self._generation()  # nothing open: the next SA is fresh
                self._retire(old)
                return True
            initiator = self.initiator
            if initiator is not None and initiator.maf is not None:
                initiator.maf.invalidate()  # the new SA runs under a fresh Kc
            existing = tuple(SaId.from_hex(s) for s in old.sa_ids if s in old.live)
            updating = tuple(sa for sa in existing if self._start_update(sa, old))
            if initiator is not None and initiator.gba is not None:
                try:  # a fresh Ks over Ub, so the new SA runs under a fresh Ks_NAF
                    await initiator.gba.ensure_bootstrap(force=True)
                except (M2MSecError, OSError) as exc:
                    self.stats.rekeys_failed += 1
                    for sa_id in updating:
                        self.last_update = self.management.on_update_failed(sa_id, str(exc))
                    log.warning("egress SA update: GBA bootstrap failed, the SA stays: %s", exc)
                    return False
            new = self._generation()
            new.forced = True
            new.update_of = updating
            try:
                await new.pool.prime()
            except BackendError as exc:
                self.stats.rekeys_failed += 1
                for sa_id in updating:
                    self.last_update = self.management.on_update_failed(sa_id, str(exc))
                log.warning(
                    "egress SA update with %s failed, the current SA stays: %s",
                    self.config.upstream,
                    exc,
                )
                await new.pool.aclose()
                return False
            new.forced = False
            self._current = new
            replaced_by = new.sa_ids[0] if new.sa_ids else None
            self.stats.rekeys += 1
            log.info(
                "egress SA updated: upstream=%s sa=%s replaces %s",
                self.config.upstream,
                replaced_by,
                ",".join(str(s) for s in existing) or "-",
            )
            self._retire(old)
            return True

    def _start_update(self, sa_id: SaId, gen: _Generation) -> bool:
        stream = gen.streams.get(str(sa_id))
        if stream is not None:
            stream.conn.engine.forget_session()  # the new SA is a full handshake: new keys
        request = UpdateSa(
            existing_sa_id=sa_id, update_operation=UpdateOperation.UPDATE_SA_IDENTIFIER_AND_KEYS
        )
        return self.management.update(request).proceed

    async def remove(self, sa_id: SaId, reason: str) -> RemoveOutcome:
        """Remove SA (seed 003, table 42) of one of this link's SAs: marked invalid with
        ``reason``, its session evicted and ended with close_notify (SA Removal, table 43);
        the pool drops it and the next request establishes a new SA."""
        outcome = self.management.remove(RemoveSa(sa_id=sa_id), reason, both_sides=True)
        if outcome.accepted:
            for gen in self._gens():
                stream = gen.streams.get(str(sa_id))
                if stream is not None:
                    if outcome.evict_session:
                        stream.conn.engine.forget_session()
                    stream.release()  # close_notify, then the transport
            log.info("egress SA removed: upstream=%s sa=%s: %s", self.config.upstream, sa_id,
                     reason)  # fmt: skip
        return outcome

    def _gens(self) -> list[_Generation]:
        return list(self._old) + ([self._current] if self._current is not None else [])

    async def aclose(self) -> None:
        """Stop the timer, close every SA (close_notify), wait (briefly) until they are gone."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for gen in self._gens():
            await gen.pool.aclose()
        if self._watchers:
            await asyncio.wait(list(self._watchers), timeout=1.0)
        for task in list(self._watchers):
            task.cancel()

    # -- internals ------------------------------------------------------------------------
    def _generation(self) -> _Generation:
        cfg = self.config
        self._generations += 1
        gen = _Generation(self._generations)

        async def connect() -> _SaStream:
            return await self._dial(gen)

        gen.pool = BackendPool(
            cfg.upstream_url,
            max_connections=cfg.connections,
            max_idle=cfg.connections,
            idle_timeout=cfg.idle_timeout,
            timeout=cfg.timeout,
            connect_timeout=cfg.connect_timeout,
            max_body=MAX_RESPONSE_BODY,
            connect=connect,
        )
        return gen

    async def _dial(self, gen: _Generation) -> _SaStream:
        """Establish one SA (Entity A's handshake), within the back-off."""
        loop = asyncio.get_running_loop()
        wait = self._retry_at - loop.time()
        if wait > 0 and not gen.forced:
            raise BackendUnreachable(f"no security association (next attempt in {wait:.1f} s)")
        cfg, initiator = self.config, self.initiator
        assert initiator is not None
        try:
            conn = await initiator.connect(
                cfg.upstream_host, cfg.upstream_port, timeout=cfg.connect_timeout
            )
        except (HandshakeError, M2MSecError, OSError) as exc:
            reason = exc.reason if isinstance(exc, HandshakeError) else str(exc)
            if isinstance(exc, HandshakeError):  # a handshake that began: its record
                self.management.on_handshake_failed(
                    reason,
                    framework=self._framework_value(),
                    protocol="TLS",
                    peer_address=f"{cfg.upstream_host}:{cfg.upstream_port}",
                )
            self._failed(reason)
            raise BackendUnreachable(f"no security association: {reason}") from None
        self._failures = 0
        self._retry_at = 0.0
        ctx = conn.context
        peer = conn.peer_address
        address = f"{peer[0]}:{peer[1]}" if peer else None
        try:
            if gen.update_of:
                first, *rest = gen.update_of
                gen.update_of = ()
                self.last_update = self.management.on_update_established(
                    first, ctx, peer_address=address, also=tuple(rest)
                )
            else:
                self.management.on_handshake_complete(ctx, peer_address=address)
        except IllegalTransition:  # one session is one SA, established once
            conn.abort()
            raise BackendUnreachable("no security association: session seen before") from None
        self.stats.sas_established += 1
        gen.sa_ids.append(ctx.sa_id)
        gen.live.add(ctx.sa_id)
        if not gen.first_sa.is_set():
            gen.first_at = loop.time()
            gen.first_sa.set()
        log.info(
            "egress SA established: upstream=%s peer=%s framework=%s key_id=%s sa=%s cipher=%s/%s",
            cfg.upstream,
            ctx.peer_id,
            ctx.framework.value,
            ctx.key_id,
            ctx.sa_id,
            ctx.protocol,
            ctx.cipher_suite,
        )
        stream = _SaStream(conn, lambda stream: self._sa_closed(gen, stream))
        gen.streams[ctx.sa_id] = stream
        self._watchers.add(stream.watch)
        stream.watch.add_done_callback(self._watchers.discard)
        return stream

    def _failed(self, reason: str) -> None:
        self.stats.sas_failed += 1
        self._failures += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (self._failures - 1))
        self._retry_at = asyncio.get_running_loop().time() + delay
        log.warning(
            "egress SA with %s not established (%s); next attempt in %.2f s",
            self.config.upstream,
            reason,
            delay,
        )

    def _sa_closed(self, gen: _Generation, stream: _SaStream) -> None:
        gen.live.discard(stream.sa_id)
        gen.streams.pop(stream.sa_id, None)
        self.stats.sas_closed += 1
        # Ended without a Remove: ``closed`` (an SA removed or replaced stays as it is).
        self.management.on_session_closed(SaId.from_hex(stream.sa_id), self._clock())
        log.info("egress SA closed: upstream=%s sa=%s", self.config.upstream, stream.sa_id)

    def _retire(self, old: _Generation) -> None:
        """New requests go elsewhere; ``old``'s SAs (``updated`` already) are closed with
        close_notify once its requests in flight are answered."""
        old.retired = True
        self._old.add(old)
        if old.in_flight == 0:
            self._spawn(self._close_generation(old))

    async def _close_generation(self, gen: _Generation) -> None:
        if gen in self._old:
            self._old.discard(gen)
            await gen.pool.aclose()

    async def _prime_first(self, gen: _Generation) -> None:
        with contextlib.suppress(BackendError):  # logged by _dial; requests retry
            await gen.pool.prime()

    async def _maintain(self, rekey_after: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gen = self._current
            assert gen is not None
            await gen.first_sa.wait()
            due = gen.first_at + rekey_after - loop.time()
            if due > 0:
                await asyncio.sleep(due)
            if gen is not self._current:
                continue  # re-keyed meanwhile (rekey() by hand)
            if not await self.rekey():
                await asyncio.sleep(min(rekey_after, 30.0))

    def _spawn(self, coro: Any) -> None:
        if self._closed:
            coro.close()  # aclose() closes every pool itself
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
