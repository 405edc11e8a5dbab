"""The one lifecycle of m2msec's servers: the gateway, the MAF, the BSF (and the MEF).

Each server is an async context manager that opens its store and listeners once, serves
until a stop event (``m2msec ... serve`` sets it on SIGINT/SIGTERM, :mod:`m2msec.cli.common`),
then shuts down once: it stops accepting, gives requests in progress their grace time on the
one HTTP service (:meth:`m2msec.service.server.HttpService.close`), ends the associations and
closes what it opened. A failed start undoes what it had opened. A server supplies only the
two steps in between, :meth:`ServerLifecycle._open` and :meth:`ServerLifecycle._shutdown`.

Metrics are part of the lifecycle (issue 14 item 1): every server has a
:class:`~m2msec.service.metrics.ServerMetrics` (``metrics``) from its construction, and,
when its configuration names a ``[metrics] listen`` address, the lifecycle opens the
:class:`~m2msec.service.metrics.MetricsListener` after the server's own listeners (so
``/readyz`` answers for a server that is serving) and closes it last, after the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import ClassVar, Protocol, Self

from m2msec.service.metrics import MetricsListener, Readiness, ServerMetrics

__all__ = ["SHUTDOWN_GRACE", "MetricsAddress", "ServerLifecycle", "stop_accepting", "wait_closed"]

#: How long a shutdown lets requests in progress finish before cutting them (seconds).
SHUTDOWN_GRACE = 5.0


class MetricsAddress(Protocol):
    """Where the metrics listener binds (``m2msec.config.metrics.MetricsListen``)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class ServerLifecycle:
    """Start once, serve until stopped, shut down once (module docstring).

    ``what`` names the server in errors ("gateway", "MAF server", "BSF"); ``kind`` is its
    ``server`` label in the metrics. ``closing`` is true from the first :meth:`close` on,
    so that a server refuses new work while it drains. ``metrics_listen`` (None: off) is
    where ``/metrics``, ``/healthz`` and ``/readyz`` are served; :meth:`readiness` says
    what ``/readyz`` checks.
    """

    what: ClassVar[str] = "server"
    kind: ClassVar[str] = "server"

    def __init__(self, metrics_listen: MetricsAddress | None = None) -> None:
        self._started = False
        self._closing = False
        self.metrics = ServerMetrics(self.kind)
        self.metrics_listen = metrics_listen
        self._metrics_listener: MetricsListener | None = None

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port`` of the running metrics listener, or None."""
        listener = self._metrics_listener
        return None if listener is None or listener.address is None else listener.url

    def readiness(self) -> Readiness | None:
        """The ``/readyz`` check (the server's store and backend); None: ready once started."""
        return None

    @property
    def closing(self) -> bool:
        return self._closing

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store and the listeners. Raises ConfigurationError (a bad configuration
        or credential), StoreError, or OSError (a port in use); nothing stays open then."""
        if self._started:
            raise RuntimeError(f"{self.what} already started")
        self._started = True
        try:
            await self._open()
            if self.metrics_listen is not None:
                self._metrics_listener = MetricsListener(self.metrics, self.readiness())
                await self._metrics_listener.start(
                    self.metrics_listen.host, self.metrics_listen.port
                )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening, let requests in progress finish, close what was opened. Safe to
        call more than once, and after a failed start."""
        if self._closing:
            return
        self._closing = True
        try:
            await self._shutdown()
        finally:
            if self._metrics_listener is not None:
                await self._metrics_listener.close()

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then close."""
        try:
            await stop.wait()
        finally:
            await self.close()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError


def stop_accepting(servers: Iterable[asyncio.Server]) -> None:
    """Stop accepting on plain listeners; their connections stay up to drain."""
    for server in servers:
        server.close()


async def wait_closed(servers: Iterable[asyncio.Server], timeout: float = 1.0) -> None:
    """Wait (boundedly) for plain listeners to finish closing."""
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout)
