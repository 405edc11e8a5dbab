"""A library initiator over one peer: the SA services of seed 003 on Entity A's side
(7.3.1.1.2.2, the Initiator's SA Management; issue 12 item 4; docs/sa.md section 10).

:class:`SecureSession` is Entity A (TS-0003 8.2.2: the credential's framework, through
:func:`m2msec.config.initiators.build_initiator`) holding one SA with one peer and
sending oneM2M requests over it (:class:`~m2msec.service.onem2m_client.OneM2MClient`).
Every SA it holds is kept by an :class:`~m2msec.sa.management.InitiatorSaManagement`
(the same one the gateway's egress uses), whose record sink may be an
:class:`~m2msec.sa.store.SaRecordStore`:

* :meth:`SecureSession.establish` - Establish SA (seed 003 7.3.2, table 23): a handshake;
  the record ``established``, or ``failed`` with its Cause of rejection.
* :meth:`SecureSession.request` - Send Secured Message (7.3.4): only over a usable SA
  (``check_send``: never in clear, never over a removed or expired SA).
* :meth:`SecureSession.update` - Update SA (7.3.3, table 36), in place: a fresh *full*
  handshake (the current session forgotten in the client cache so it is not resumed; MAF:
  a fresh Kc; GBA: a fresh bootstrap, so a fresh Ks_NAF), then new requests go to the
  new SA and the old session is closed with close_notify once the requests on it are
  answered. The old record is ``updated`` with ``replaced_by``. A failed update (the
  peer refuses the new handshake) is Rejected and the old SA keeps serving.
* :meth:`SecureSession.remove` - Remove SA (7.3.6, table 42): marked invalid, the session
  forgotten (no resumption) and ended with close_notify (SA Removal, table 43).
* A session the peer ends is the peer's SA Removal (its close_notify) or ``closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from m2msec.config.initiators import Initiator
from m2msec.errors import HandshakeError, M2MSecError
from m2msec.sa.flows import RemoveSa, UpdateOperation, UpdateSa
from m2msec.sa.machine import RecordSink
from m2msec.sa.management import InitiatorSaManagement
from m2msec.sa.outcomes import RemoveOutcome, SaUnavailable, UpdateOutcome
from m2msec.sa.records import SaId, SaRecord
from m2msec.service.onem2m_client import OneM2MClient, OneM2MResponse
from m2msec.tls.aio import TLSConnection
from m2msec.tls.context import SecurityContext

__all__ = ["SecureSession"]

log = logging.getLogger(__name__)

_REMOVED = "removed by the Initiator Agent"


@dataclass(eq=False)
class _Channel:
    """One SA's session and its HTTP client (one request at a time over it)."""

    conn: TLSConnection
    client: OneM2MClient
    sa_id: SaId
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # requests on it or waiting for it
    retired: bool = False  # replaced by an update: close once ``users`` is 0
    watch: asyncio.Task[None] | None = None


class SecureSession:
    """Entity A's SA with the peer at ``host:port`` (module docstring).

    ``management`` is shared when given (several sessions, one record sink); else one is
    made with ``sink``. ``http_host`` is the HTTP Host header (default ``host:port``).
    Use ``async with`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        initiator: Initiator,
        host: str,
        port: int,
        *,
        management: InitiatorSaManagement | None = None,
        sink: RecordSink | None = None,
        timeout: float = 10.0,
        http_host: str | None = None,
    ) -> None:
        self.initiator = initiator
        self.host, self.port = host, port
        self.timeout = timeout
        if management is None:
            management = InitiatorSaManagement(sink=sink)
        self.management = management
        self.http_host = http_host or f"{host}:{port}"
        self._channel: _Channel | None = None
        self._record: SaRecord | None = None
        self._update_lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    # -- reading ----------------------------------------------------------------------------
    @property
    def record(self) -> SaRecord | None:
        """The current SA's record as the SA Management holds it (the last known state
        once it ended); None before :meth:`establish`."""
        rec = self._record
        if rec is not None:
            live = self.management.get(rec.sa_id)
            if live is not None:
                self._record = rec = live
        return rec

    @property
    def context(self) -> SecurityContext | None:
        return None if self._channel is None else self._channel.conn.context

    # -- Establish (7.3.2) ----------------------------------------------------------------
    async def establish(self) -> SaRecord:
        """Run Entity A's handshake and hold the SA; HandshakeError (recorded ``failed``)
        or OSError when it cannot be established."""
        if self._channel is not None and self._usable(self._channel):
            rec = self.record
            assert rec is not None
            return rec
        conn = await self._handshake()
        outcome = self.management.on_handshake_complete(conn.context, peer_address=_addr(conn))
        if outcome.refusal is not None:
            conn.engine.refuse("the Responder is not the one asked for")
            await conn.close()
            raise HandshakeError(outcome.record.cause or "refused by the Initiator")
        self._record = outcome.record
        self._channel = self._open_channel(conn)
        return outcome.record

    async def _handshake(self) -> TLSConnection:
        try:
            return await self.initiator.connect(self.host, self.port, timeout=self.timeout)
        except HandshakeError as exc:
            self.management.on_handshake_failed(
                exc.reason,
                framework=_framework(self.initiator),
                protocol=self.initiator.transport.value.upper(),
                peer_address=f"{self.host}:{self.port}",
            )
            raise

    def _open_channel(self, conn: TLSConnection) -> _Channel:
        client = OneM2MClient(conn, host=self.http_host)
        channel = _Channel(conn, client, SaId.from_hex(conn.context.sa_id))
        channel.watch = asyncio.get_running_loop().create_task(self._watch(channel))
        return channel

    async def _watch(self, channel: _Channel) -> None:
        """The session ended: by the peer's close_notify (its SA Removal, table 43), else
        ``closed``. An SA already removed or replaced stays as it is."""
        await channel.conn.wait_closed()
        if self.management.get(channel.sa_id) is None:
            return
        if channel.conn.close_notify_received:
            self.management.on_sa_removal(channel.sa_id)
        else:
            self.management.on_session_closed(channel.sa_id)

    def _usable(self, channel: _Channel) -> bool:
        return self.management.get(channel.sa_id) is not None and not channel.conn.is_closing()

    # -- Send Secured Message (7.3.4) -----------------------------------------------------
    async def request(
        self,
        method: str,
        target: str,
        *,
        origin: str,
        content: Any = None,
        ty: int | None = None,
    ) -> OneM2MResponse:
        """One oneM2M request over the current SA; :class:`SaUnavailable` when there is
        none usable (never established, removed, expired, its session closed)."""
        channel = self._channel
        if channel is None:
            raise SaUnavailable(SaId(b"\0"), "cannot send: no SA established", None)
        self.management.check_send(channel.sa_id)
        channel.users += 1
        try:
            async with channel.lock:
                return await asyncio.wait_for(
                    channel.client.request(method, target, origin=origin, content=content, ty=ty),
                    self.timeout,
                )
        finally:
            channel.users -= 1
            if channel.retired and channel.users == 0:
                self._close_later(channel)

    # -- Update (7.3.3) -------------------------------------------------------------------
    async def update(self) -> UpdateOutcome:
        """Update SA in place (module docstring): the outcome's confirm is Accepted with the
        new SA identifier, or Rejected and the old SA keeps serving."""
        async with self._update_lock:
            old = self._channel
            sa_id = old.sa_id if old is not None else SaId(b"\0")
            plan = self.management.update(
                UpdateSa(
                    existing_sa_id=sa_id,
                    update_operation=UpdateOperation.UPDATE_SA_IDENTIFIER_AND_KEYS,
                )
            )
            if not plan.proceed or old is None:
                assert plan.confirm is not None
                return UpdateOutcome(plan.confirm, plan.record, None, None)
            old.conn.engine.forget_session()  # a full handshake: new keys, no resumption
            if self.initiator.maf is not None:
                self.initiator.maf.invalidate()  # and a fresh Kc
            try:
                if self.initiator.gba is not None:  # a fresh Ks over Ub, so a fresh Ks_NAF
                    await self.initiator.gba.ensure_bootstrap(force=True)
                conn = await self.initiator.connect(self.host, self.port, timeout=self.timeout)
            except (HandshakeError, M2MSecError, OSError) as exc:
                reason = exc.reason if isinstance(exc, HandshakeError) else str(exc)
                log.warning("SA update with %s:%s rejected: %s", self.host, self.port, reason)
                outcome = self.management.on_update_failed(sa_id, reason)
                if outcome.record is not None:
                    self._record = outcome.record
                return outcome
            outcome = self.management.on_update_established(
                sa_id, conn.context, peer_address=_addr(conn)
            )
            self._channel = self._open_channel(conn)
            self._record = outcome.record
            old.retired = True
            if old.users == 0:
                self._close_later(old)
            log.info("SA %s updated: replaced by %s", sa_id, conn.context.sa_id)
            return outcome

    def _close_later(self, channel: _Channel) -> None:
        task = asyncio.get_running_loop().create_task(self._close(channel))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, channel: _Channel) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            await asyncio.wait_for(channel.conn.close(), self.timeout)  # close_notify

    # -- Remove (7.3.6) -------------------------------------------------------------------
    async def remove(self, reason: str = _REMOVED) -> RemoveOutcome:
        """Remove SA: marked invalid (``reason`` in its record), the session forgotten so
        it cannot be resumed, and ended with close_notify."""
        channel = self._channel
        sa_id = channel.sa_id if channel is not None else SaId(b"\0")
        outcome = self.management.remove(RemoveSa(sa_id=sa_id), reason, both_sides=True)
        if channel is not None and outcome.accepted:
            if outcome.record is not None:
                self._record = outcome.record
            channel.conn.engine.forget_session()
            self._channel = None
            await self._close(channel)
        return outcome

    # -- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the session (close_notify): the SA is ``closed``, not removed."""
        channel, self._channel = self._channel, None
        if channel is not None:
            if self.management.get(channel.sa_id) is not None:
                rec = self.management.on_session_closed(channel.sa_id)
                if rec is not None:
                    self._record = rec
            await self._close(channel)
            if channel.watch is not None:
                channel.watch.cancel()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> SecureSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _addr(conn: TLSConnection) -> str | None:
    peer = conn.peer_address
    return f"{peer[0]}:{peer[1]}" if peer else None


def _framework(initiator: Initiator) -> str:
    names = {"psk": "provisioned-psk"}
    name = initiator.credential.framework.name
    return names.get(name, name)
