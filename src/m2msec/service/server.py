"""The one asyncio driver of the sans-IO HTTP server connection (issue 10, item 1).

:class:`HttpService` serves :class:`~m2msec.bindings.http.HttpServerConnection` over any
:class:`~m2msec.service.streams.Stream` (a :class:`~m2msec.tls.aio.TLSConnection` or asyncio's
plain streams) under one :class:`~m2msec.service.limits.HttpLimits`: the request head must be
complete within ``request_head_timeout`` of its first byte (else 408 and close - a slow-loris
head no longer holds a connection for the idle timeout), a connection may idle
``idle_timeout`` between requests, at most ``max_requests`` are answered per connection.
The deadlines are :class:`~m2msec.service.deadline.Deadline`, not ``asyncio.wait_for``
(no task and no running-loop lookup per read). Requests are answered in order (pipelined
ones queued by the connection). The gateway, the MAF and the BSF only give it a handler;
what differs between them (how a refusal and an internal error read, their statistics)
comes in through :class:`ServiceHooks`.

Graceful shutdown: :meth:`HttpService.close` stops reading new requests, closes idle
connections at once, lets busy ones answer for ``grace`` seconds, then closes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from m2msec.bindings.http import (
    BadRequest,
    HttpServerConnection,
    NeedData,
    PeerClosed,
    RequestReceived,
)
from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.service.deadline import Deadline
from m2msec.service.limits import HttpLimits
from m2msec.service.streams import PlainStream, Stream

__all__ = ["Handler", "HttpService", "PlainConnections", "ServiceHooks"]

log = logging.getLogger(__name__)

#: A request's answer and whether to close the connection after it.
Handler = Callable[[OneM2MRequest], Awaitable[tuple[HttpResponse, bool]]]


def _as_is(event: BadRequest) -> HttpResponse:
    return event.response


@dataclass(slots=True)
class ServiceHooks:
    """What a server adds to the common loop: its refusal format, error answer, counters."""

    #: The answer to a malformed or oversized request (default: the connection's own).
    bad_request: Callable[[BadRequest], HttpResponse] = _as_is
    #: The answer when the handler raised (a bug of ours); the connection is then closed.
    internal_error: Callable[[OneM2MRequest], HttpResponse] | None = None
    close_after_error: bool = True
    on_bad_request: Callable[[BadRequest], None] | None = None
    on_head_timeout: Callable[[BadRequest], None] | None = None
    on_request: Callable[[], None] | None = None
    #: Close the stream when the loop ends (TLSServer closes its own connections).
    close_stream: bool = True


@dataclass(slots=True, eq=False)  # hashed by identity: kept in a set
class _Session:
    stream: Stream
    busy: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class HttpService:
    """Serves HTTP/1.1 connections carrying oneM2M requests, under one set of limits."""

    def __init__(
        self, limits: HttpLimits, hooks: ServiceHooks | None = None, *, name: str = "http"
    ) -> None:
        self.limits = limits
        self.hooks = hooks or ServiceHooks()
        self.name = name
        self.closing = False
        self._sessions: set[_Session] = set()

    async def serve(self, stream: Stream, handle: Handler) -> None:
        """The HTTP loop of one connection: read, handle, answer, in order."""
        session = _Session(stream)
        self._sessions.add(session)
        limits, hooks = self.limits, self.hooks
        http = HttpServerConnection(max_body=limits.max_body, max_header=limits.max_header)
        loop = asyncio.get_running_loop()
        head_deadline: float | None = None  # while a request head is arriving
        answered = 0
        try:
            while not self.closing:
                event = http.next_event()
                if isinstance(event, NeedData):
                    out = http.data_to_send()  # e.g. 100 Continue
                    if out:
                        await stream.send(out)
                    wait = limits.idle_timeout
                    if not http.reading_head:
                        head_deadline = None
                    else:
                        if head_deadline is None:
                            head_deadline = loop.time() + limits.request_head_timeout
                        wait = min(wait, max(0.0, head_deadline - loop.time()))
                    try:
                        async with Deadline(loop, loop.time() + wait):
                            data = await stream.recv()
                    except TimeoutError:
                        if not http.reading_head:
                            return  # idle keep-alive connection
                        event = http.head_timed_out()
                        if hooks.on_head_timeout is not None:
                            hooks.on_head_timeout(event)
                        log.info("%s: bad request: %s", self.name, event.reason)
                        http.send_response(hooks.bad_request(event), close=True)
                        await stream.send(http.data_to_send())
                        return
                    http.receive_data(data)
                    continue
                head_deadline = None
                if isinstance(event, PeerClosed):
                    return
                session.busy = True
                try:
                    if isinstance(event, BadRequest):
                        if hooks.on_bad_request is not None:
                            hooks.on_bad_request(event)
                        log.info("%s: bad request: %s", self.name, event.reason)
                        http.send_response(
                            hooks.bad_request(event), close=event.close or self.closing
                        )
                    else:
                        assert isinstance(event, RequestReceived)
                        if hooks.on_request is not None:
                            hooks.on_request()
                        try:
                            response, close = await handle(event.request)
                        except Exception:
                            if hooks.internal_error is None:
                                raise
                            # A bug of ours: answer it, keep serving the other connections.
                            log.exception("%s: request handling failed", self.name)
                            response = hooks.internal_error(event.request)
                            close = hooks.close_after_error
                        answered += 1
                        if limits.max_requests is not None and answered >= limits.max_requests:
                            close = True
                        http.send_response(response, close=close or self.closing)
                    await stream.send(http.data_to_send())
                finally:
                    session.busy = False
                if http.closed:
                    return
        except (ConnectionError, OSError) as exc:
            log.debug("%s: connection ended: %s", self.name, exc)
        finally:
            self._sessions.discard(session)
            session.done.set()
            if hooks.close_stream:
                with contextlib.suppress(Exception):
                    await stream.close()

    async def close(self, grace: float) -> None:
        """Stop serving: idle connections close now, busy ones get ``grace`` seconds."""
        self.closing = True
        for session in list(self._sessions):
            if not session.busy:
                with contextlib.suppress(Exception):
                    await session.stream.close()
        pending = [s.done.wait() for s in self._sessions]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), grace)
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                await session.stream.close()


class PlainConnections:
    """The connections of a plain (unencrypted) stream listener served by one
    :class:`HttpService`, each its own task, cancelled together on :meth:`cancel`: the
    gateway's ``http://`` listener, the egress, the SA admin socket and the metrics
    listener share this instead of each keeping its own task set."""

    def __init__(self, http: HttpService) -> None:
        self._http = http
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler
    ) -> None:
        """Serve one accepted connection until it ends or :meth:`cancel`; then close it."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._http.serve(PlainStream(reader, writer), handle)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def cancel(self) -> None:
        """End every connection still being served (after the service's grace)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
