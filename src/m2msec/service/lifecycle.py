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

Reload and drain are the lifecycle's too (issue 14 items 2 and 3, docs/operations.md),
one mechanism for every server:

* :meth:`ServerLifecycle.reload` re-reads the configuration through ``config_source``
  (the serve command's loader with its command-line overrides) and hands it to the
  server's :meth:`ServerLifecycle._reload`, which builds everything new (TLS profiles,
  certificates, keys, trust anchors, CRLs) before it swaps anything, so that a broken
  configuration is refused whole - one log line, the old one stays in force - and a
  good one takes effect for new handshakes while live associations keep their sessions.
  Keys that cannot change live (listen addresses, store URLs) are refused by name
  (:func:`refuse_restart_only`). ``SIGHUP`` and ``POST /reload`` on the admin socket
  both end here; one reload runs at a time.
* The drain: :meth:`ServerLifecycle.close` gives requests in progress ``drain_timeout``
  seconds (:data:`DRAIN_TIMEOUT` by default) before the associations are ended with
  close_notify; the serve commands start it on the first SIGTERM or SIGINT
  (:mod:`m2msec.cli.common`) and exit at once on a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self

from m2msec.errors import ConfigurationError, M2MSecError
from m2msec.service.metrics import MetricsListener, Readiness, ServerMetrics

__all__ = [
    "DRAIN_TIMEOUT",
    "SHUTDOWN_GRACE",
    "MetricsAddress",
    "ReloadOutcome",
    "ServerLifecycle",
    "refuse_restart_only",
    "stop_accepting",
    "wait_closed",
]

log = logging.getLogger(__name__)

#: How long a shutdown (the drain) lets requests in progress finish before the
#: associations are ended (seconds); ``drain_timeout`` in a server's configuration.
DRAIN_TIMEOUT = 10.0
#: The former name of :data:`DRAIN_TIMEOUT`.
SHUTDOWN_GRACE = DRAIN_TIMEOUT


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: ``applied`` (the new configuration is in force) or not, and a
    sentence for the operator (what changed, or why the old configuration stays)."""

    applied: bool
    message: str


def refuse_restart_only(old: object, new: object, keys: Mapping[str, str]) -> None:
    """ConfigurationError naming every key of ``keys`` (attribute -> the key's name in
    the TOML) whose value differs between ``old`` and ``new``: those need a restart."""
    changed = [name for attr, name in keys.items() if getattr(old, attr) != getattr(new, attr)]
    if changed:
        raise ConfigurationError(
            f"{', '.join(changed)} cannot change while running (needs a restart)"
        )


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

    def __init__(
        self, metrics_listen: MetricsAddress | None = None, *, drain_timeout: float = DRAIN_TIMEOUT
    ) -> None:
        self._started = False
        self._closing = False
        #: Seconds the drain lets requests in progress finish (module docstring).
        self.drain_timeout = drain_timeout
        #: Re-reads the configuration for :meth:`reload` (the serve command sets it: its
        #: loader with the same file and overrides); None: this server cannot reload.
        self.config_source: Callable[[], Any] | None = None
        self._reload_lock = asyncio.Lock()
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

    async def reload(self) -> ReloadOutcome:
        """Re-read the configuration and put it in force for new handshakes, or refuse it
        whole (the old one stays) - never raises for a bad configuration. Logs one line."""
        async with self._reload_lock:
            outcome = await self._reload_once()
        if outcome.applied:
            log.info("%s reloaded: %s", self.what, outcome.message)
        else:
            log.error(
                "%s reload refused, the running configuration stays in force: %s",
                self.what,
                outcome.message,
            )
        return outcome

    async def _reload_once(self) -> ReloadOutcome:
        if not self._started or self._closing:
            return ReloadOutcome(False, f"the {self.what} is not serving")
        source = self.config_source
        if source is None:
            return ReloadOutcome(
                False, f"the {self.what} was started without a configuration to re-read"
            )
        try:
            config = await asyncio.to_thread(source)
            return ReloadOutcome(True, await self._reload(config))
        except (M2MSecError, OSError, ValueError) as exc:
            return ReloadOutcome(False, str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug of ours must not end the server: refuse
            log.exception("%s reload failed", self.what)
            return ReloadOutcome(False, f"internal error ({type(exc).__name__})")

    async def _reload(self, config: Any) -> str:
        """Put ``config`` in force (everything built before anything is swapped); the
        sentence of what changed. ConfigurationError: refused, nothing changed."""
        raise ConfigurationError(f"the {self.what} does not reload its configuration: restart it")

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
