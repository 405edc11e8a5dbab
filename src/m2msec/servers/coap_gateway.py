"""CoAP over DTLS in front of the CSE: the gateway's ``dtls://`` listeners.

TS-0003 10.2.1 secures the CoAP binding with DTLS 1.2, and TR-0038's lights are the
constrained devices that use it. A :class:`CoapListener` terminates DTLS with the
gateway's framework profile (provisioned PSK, TS-0003 8.2.2.1, TLS_PSK_WITH_AES_128_CCM_8
first; or certificates, 8.2.2.2) through :func:`m2msec.tls.aio_dtls.start_dtls_server`
(cookies, bounds, timers: :mod:`m2msec.tls.dtls`). Each established association is
admitted and recorded by :meth:`Gateway.admit_association` /
:meth:`Gateway.open_association` like a TLS one (seed 003 Establish: the Responder Agent,
the SA record, stats, log); the gateway sees the DTLS association first
(``on_established``) so that it can end it on an operator's Remove, and hears of failed
handshakes with their cause (``on_handshake_failure``).

Each datagram of an association is one CoAP message (TS-0008 7: all CoAP messages are
DTLS application data). :class:`~m2msec.bindings.coap.messages.CoapServerSession` runs the
message layer (deduplication, piggybacked or separate answers, retransmission,
block-wise transfer); :func:`~m2msec.bindings.coap.mapping.request_from_coap` reads the request
as a oneM2M request in HTTP-binding form, and :meth:`Gateway.process` applies the same
rules as over TLS (originator check, registration only over an association, 4103
answered by the gateway) and forwards to the backend CSE over HTTP with the same
``X-M2MSec-*`` headers. The answer goes back through
:func:`~m2msec.bindings.coap.mapping.response_to_coap` (4103 is 4.03 Forbidden with
oneM2M-RSC 4103).

A confirmable request whose answer is not ready after ``ack_delay`` seconds (1 s, below
CoAP's ACK_TIMEOUT of 2 s) is acknowledged at once and answered separately. At most
``MAX_IN_FLIGHT`` requests per association are processed at a time; more are answered
5.03 Service Unavailable with Max-Age 1. Datagrams that are not CoAP are dropped (a
Confirmable one with a readable Message ID gets a Reset); an association that sends
``MAX_BAD_MESSAGES`` of them in a row is closed. Other associations are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiocoap.numbers.codes import Code

from m2msec.bindings.coap.mapping import (
    error_message,
    peek,
    request_from_coap,
    response_to_coap,
)
from m2msec.bindings.coap.messages import CoapServerSession, Exchange
from m2msec.bindings.coap.options import CoapRequestError
from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest
from m2msec.errors import M2MSecError
from m2msec.logs import sa_fields
from m2msec.service.metrics import ServerMetrics
from m2msec.tls.aio_dtls import (
    DTLSAssociation,
    DTLSServerHandle,
    FailureDetailHook,
    start_dtls_server,
)
from m2msec.tls.context import SecurityContext
from m2msec.tls.profiles import TLSProfile

__all__ = [
    "ACK_DELAY",
    "MAX_BAD_MESSAGES",
    "MAX_IN_FLIGHT",
    "AssociationHost",
    "CoapListener",
    "CoapSettings",
]

log = logging.getLogger(__name__)

#: Seconds before a slow answer is turned into an empty ACK plus a separate response.
ACK_DELAY = 1.0
#: Requests of one association processed at the same time.
MAX_IN_FLIGHT = 8
#: Consecutive non-CoAP datagrams after which an association is closed.
MAX_BAD_MESSAGES = 16


class _CoapStats(Protocol):
    coap_bad_messages: int
    coap_requests: int
    bad_requests: int


class CoapSettings(Protocol):
    """The settings a listener reads (the gateway's ``GatewayConfig``, or the MEF's)."""

    @property
    def max_handshakes(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def handshake_timeout(self) -> float: ...
    @property
    def resumption(self) -> bool: ...
    @property
    def max_body(self) -> int: ...
    @property
    def coap_response_options(self) -> bool: ...


class AssociationHost(Protocol):
    """What a listener needs of its server (the gateway, or the MEF's ``dtls://`` Enrolee
    listener): admit, record and close associations, and the one request pipeline. Typed
    here so this module does not import the gateway (which imports it)."""

    @property
    def config(self) -> CoapSettings: ...

    @property
    def stats(self) -> _CoapStats: ...

    def handshake_failed(self, peer: tuple[Any, ...] | None, reason: str) -> None: ...

    def admit_association(self, ctx: SecurityContext, peer: Any) -> bool: ...

    def open_association(self, ctx: SecurityContext, peer: Any) -> Any: ...

    def close_association(self, assoc: Any) -> None: ...

    async def process(self, assoc: Any, request: OneM2MRequest) -> tuple[HttpResponse, bool]: ...


@dataclass(slots=True, eq=False)
class _Peer:
    dtls: DTLSAssociation
    assoc: Any  # the gateway's Association
    session: CoapServerSession
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    bad_in_a_row: int = 0


class CoapListener:
    """One ``dtls://`` listener of a :class:`~m2msec.servers.gateway.Gateway`."""

    def __init__(
        self,
        gateway: AssociationHost,
        profile: TLSProfile,
        *,
        ack_delay: float = ACK_DELAY,
        on_established: Callable[[DTLSAssociation], None] | None = None,
        metrics: ServerMetrics | None = None,
        on_handshake_failure: FailureDetailHook | None = None,
    ):
        self.gateway = gateway
        self.profile = profile
        #: Counts this listener's handshakes (issue 14: every path, DTLS too).
        self.metrics = metrics
        self.ack_delay = ack_delay
        #: Sees each association first (the MEF exports its bootstrap keying material, the
        #: gateway keeps the association to end it on a Remove).
        self.on_established = on_established
        self.on_handshake_failure = on_handshake_failure
        self._handle: DTLSServerHandle | None = None
        self._peers: set[_Peer] = set()
        self._closing = False

    @property
    def handle(self) -> DTLSServerHandle | None:
        """The DTLS server (its ``server.stats`` count cookies, drops and handshakes)."""
        return self._handle

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (UDP); returns the address bound."""
        cfg = self.gateway.config
        self._handle = await start_dtls_server(
            self.profile,
            host,
            port,
            self._serve,
            max_half_open=cfg.max_handshakes,
            idle_timeout=cfg.idle_timeout,
            handshake_timeout=cfg.handshake_timeout,
            on_failure=(
                self.gateway.handshake_failed
                if self.metrics is None
                else self.metrics.failure_hook(self.profile, self.gateway.handshake_failed)
            ),
            resumption=cfg.resumption,
            on_handshake_failure=self.on_handshake_failure,
        )
        address = self._handle.address
        return str(address[0]), int(address[1])

    def use_profile(self, profile: TLSProfile) -> None:
        """New handshakes on this listener use ``profile`` (the gateway's reload); live
        associations keep theirs. The profile's framework and transport do not change."""
        if self._handle is not None:
            self._handle.server.use_profile(profile)
        self.profile = profile

    async def close(self, grace: float = 5.0) -> None:
        """Let requests in progress finish (up to ``grace`` seconds), then close them all."""
        if self._closing:
            return
        self._closing = True
        pending = [t for peer in self._peers for t in peer.tasks]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), grace)
        if self._handle is not None:
            self._handle.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._handle.wait_closed(), grace)

    # -- one association -----------------------------------------------------------------
    async def _serve(self, dtls: DTLSAssociation) -> None:
        gw = self.gateway
        if self.metrics is not None:
            self.metrics.established(self.profile.framework.value, self.profile.transport.value)
        if self.on_established is not None:
            self.on_established(dtls)
        if not gw.admit_association(dtls.context, dtls.peer_address):
            return  # refused: ended with close_notify, never served
        assoc = gw.open_association(dtls.context, dtls.peer_address)
        session = CoapServerSession(
            max_message=dtls.max_payload,
            max_body=gw.config.max_body,
            parameters=gw.config.coap_response_options,
        )
        peer = _Peer(dtls, assoc, session)
        self._peers.add(peer)
        try:
            while not self._closing:
                data = await dtls.recv()
                if not data:
                    return
                bad = session.bad_messages
                replies, exchange = session.receive(data)
                self._send(peer, replies)
                if session.bad_messages > bad:
                    gw.stats.coap_bad_messages += session.bad_messages - bad
                    peer.bad_in_a_row += 1
                    log.debug("non-CoAP datagram from peer=%s dropped", assoc.peer_id)
                    if peer.bad_in_a_row >= MAX_BAD_MESSAGES:
                        log.warning(
                            "closing association peer=%s sa=%s: %d datagrams that are not CoAP",
                            assoc.peer_id,
                            dtls.context.sa_id,
                            peer.bad_in_a_row,
                            extra=sa_fields(
                                sa_id=dtls.context.sa_id,
                                peer=assoc.peer_id,
                                framework=dtls.context.framework.value,
                                cause="datagrams that are not CoAP",
                                event="closing",
                            ),
                        )
                        return
                    continue
                peer.bad_in_a_row = 0
                if exchange is None:
                    continue
                if len(peer.tasks) >= MAX_IN_FLIGHT:
                    busy = error_message(Code.SERVICE_UNAVAILABLE, "too many requests in progress")
                    busy.opt.max_age = 1
                    self._send(peer, session.respond(exchange, busy))
                    continue
                task = asyncio.get_running_loop().create_task(self._answer(peer, exchange))
                peer.tasks.add(task)
                task.add_done_callback(peer.tasks.discard)
        finally:
            for task in list(peer.tasks):
                task.cancel()
            if peer.tasks:
                await asyncio.gather(*peer.tasks, return_exceptions=True)
            if peer.timer is not None:
                peer.timer.cancel()
            self._peers.discard(peer)
            gw.close_association(assoc)

    async def _answer(self, peer: _Peer, exchange: Exchange) -> None:
        gw = self.gateway
        session = peer.session
        close = False
        try:
            mapped = request_from_coap(exchange.message, max_body=gw.config.max_body)
        except CoapRequestError as exc:
            gw.stats.bad_requests += 1
            log.info("bad CoAP request from peer=%s: %s", peer.assoc.peer_id, exc.reason)
            request_id, numbering = peek(exchange.message)
            reply = error_message(
                exc.code,
                exc.reason,
                rsc=exc.rsc,
                numbering=numbering,
                request_id=request_id,
                parameters=gw.config.coap_response_options,
            )
        else:
            gw.stats.coap_requests += 1
            work = asyncio.get_running_loop().create_task(gw.process(peer.assoc, mapped.request))
            try:
                done, _ = await asyncio.wait({work}, timeout=self.ack_delay)
                if not done:
                    self._send(peer, [a for a in [session.acknowledge(exchange)] if a])
                response, close = await work
            except asyncio.CancelledError:
                work.cancel()
                raise
            except Exception:
                # A bug of ours: answer it, end this association, keep serving the rest.
                log.exception("CoAP request handling failed")
                reply = error_message(
                    Code.INTERNAL_SERVER_ERROR,
                    "gateway error",
                    rsc=RSC.INTERNAL_SERVER_ERROR,
                    parameters=gw.config.coap_response_options,
                )
                close = True
            else:
                reply = response_to_coap(
                    response,
                    operation=mapped.request.operation,
                    numbering=mapped.numbering,
                    parameters=gw.config.coap_response_options,
                )
        self._send(peer, session.respond(exchange, reply))
        if close:
            peer.dtls.close()

    # -- output and timers ---------------------------------------------------------------
    def _send(self, peer: _Peer, datagrams: list[bytes]) -> None:
        for data in datagrams:
            try:
                peer.dtls.send(data)
            except (ConnectionError, ValueError, M2MSecError) as exc:
                # Closed meanwhile, or (a bug) larger than a record: the peer will retry.
                log.debug("CoAP answer to peer=%s not sent: %s", peer.assoc.peer_id, exc)
        self._schedule(peer)

    def _schedule(self, peer: _Peer) -> None:
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        due = peer.session.next_timer()
        if due is None or peer.dtls.closed:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, due - time.monotonic())  # the session's clock
        peer.timer = loop.call_later(delay, self._fire, peer)

    def _fire(self, peer: _Peer) -> None:
        peer.timer = None
        self._send(peer, peer.session.on_timer())
