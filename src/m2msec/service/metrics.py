"""Metrics and health endpoints of m2msec's servers (issue 14 item 1; docs/operations.md).

Every server (gateway, MAF, BSF, MEF) owns one :class:`ServerMetrics`: a
``prometheus_client`` registry of its own (never the process-wide default, so that several
servers run side by side in one process, as the tests and ``m2msec demo`` do) and the few
metric families that need *events*: handshakes by framework, protocol (transport) and
result with a refusal cause from a small fixed set (:class:`Cause`), requests by oneM2M
operation and RSC, backend latency and errors by kind, store lookup latency. Everything a
server already counts in its stats object (``GatewayStats``, ``MafStats``, ``BsfStats``,
the MEF's counter) is read at scrape time by a collector (:class:`FamiliesCollector`), so
the hot path keeps its one set of counters.

Labels never carry an identity, a key identifier, an address or a free-form reason
(cardinality and privacy, ISSUE-NOTES "Issue 11"): a handshake refusal's reason text is
mapped to a :class:`Cause` by :func:`handshake_cause`, an RSC to its four digits
(:func:`rsc_label`), a method without a oneM2M operation to ``other``.

:class:`MetricsListener` serves ``/metrics`` (the Prometheus text format written by
``prometheus_client``), ``/healthz`` (the process is up: 200) and ``/readyz`` (the
server's store and backend answer: 200, else 503 with a short JSON reason) on a plain
``http://`` listener of its own, through the one HTTP loop
(:class:`m2msec.service.server.HttpService`), off by default and meant for loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.errors import StoreError
from m2msec.service.limits import HttpLimits
from m2msec.service.server import HttpService, PlainConnections, ServiceHooks
from m2msec.tls.aio import EVICTED, NO_FIRST_FLIGHT, TLSConnection
from m2msec.tls.profiles import TLSProfile
from m2msec.tls.sessions import ServerSessionCache

__all__ = [
    "Cause",
    "FailureHook",
    "FamiliesCollector",
    "MetricsListener",
    "Readiness",
    "ServerMetrics",
    "all_ready",
    "handshake_cause",
    "is_loopback",
    "operation_label",
    "rsc_label",
    "session_cache_families",
    "store_ready",
    "tcp_ready",
]

log = logging.getLogger(__name__)

#: A listener's report of a refused handshake: ``(peer address, reason safe to log)``.
FailureHook = Callable[[tuple[Any, ...] | None, str], None]
#: None when the server is ready, else a short reason (no identity, no key).
Readiness = Callable[[], Awaitable[str | None]]

#: Backend latency buckets (seconds): a CSE on the same host answers in a millisecond or two.
BACKEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Store lookup buckets (seconds): a cached row in microseconds, SQLite in tens of them.
STORE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.05, 0.25)


class Cause(enum.StrEnum):
    """Why a handshake was refused: the fixed label set of ``m2msec_handshakes_total``."""

    NONE = "none"  # the handshake succeeded
    UNKNOWN_IDENTITY = "unknown_identity"  # unknown, malformed or expired key identifier
    BAD_KEY = "bad_key"  # the identity is known, the key (MAC, binder, Finished) is not
    CERTIFICATE = "certificate_refused"  # chain, name, CRL, allowed list
    POLICY = "policy"  # our rules: SNI required, disabled credential, foreign MAF/MEF
    TIMEOUT = "timeout"  # no first flight, handshake deadline, evicted while silent
    OTHER = "other"  # transport errors, an unreachable store or key server, the rest


# Checked in order; the first pattern found in the (lower-cased) reason decides.
_CAUSES: tuple[tuple[Cause, tuple[str, ...]], ...] = (
    (Cause.TIMEOUT, ("timed out", NO_FIRST_FLIGHT, EVICTED.split(":")[0])),
    (
        Cause.BAD_KEY,
        (
            "bad record mac",
            "decrypt",
            "wrong psk",
            "binder",
            "bad finished",
            "digest check failed",
        ),
    ),
    (
        Cause.CERTIFICATE,
        ("certificate", "unknown ca", "peer did not return", "no certificate"),
    ),
    (
        Cause.POLICY,
        ("server_name", "sni", "disabled", "not ours", "refused by the bsf", "wrong kind"),
    ),
    (
        Cause.UNKNOWN_IDENTITY,
        (
            "unknown",
            "malformed",
            "expired",
            "could not be resolved",
            "not a kei",
            "not a gba psk_identity",
            "no valid gba bootstrap",
            "no longer held",
            "has no kpsaid",
            "no psk configured",
        ),
    ),
)


def handshake_cause(reason: str) -> Cause:
    """The :class:`Cause` of a refused handshake, from the reason the listener reported
    (:class:`m2msec.tls.engine.HandshakeFailed`, the framework callbacks' refusals)."""
    text = reason.lower()
    for cause, patterns in _CAUSES:
        if any(p in text for p in patterns):
            return cause
    return Cause.OTHER


def rsc_label(rsc: int | None) -> str:
    """An RSC as a label value: its four digits (TS-0004 6.6), ``none`` when absent."""
    if rsc is None:
        return "none"
    return str(rsc) if 1000 <= rsc <= 6999 else "other"


def operation_label(request: OneM2MRequest) -> str:
    """The oneM2M operation of a request (TS-0004 6.4), ``other`` for an unmapped method."""
    op = request.operation
    return "other" if op is None else op.value


class FamiliesCollector(Collector):
    """A collector that reads a server's own counters at scrape time: ``read`` yields the
    metric families (``prometheus_client.metrics_core``) built from them."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._read()

    def describe(self) -> list[Metric]:
        return []  # families known only when read: no duplicate-name check at registration


class ServerMetrics:
    """One server's registry and its event metrics (module docstring).

    ``server`` ("gateway", "maf", "bsf", "mef") is a constant label of
    ``m2msec_server_info``, so one Prometheus job can scrape several kinds of server.
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.handshakes = Counter(
            "m2msec_handshakes",
            "Handshakes by framework, protocol (tls/dtls) and result, refusals by cause",
            ["framework", "protocol", "result", "cause"],
            registry=reg,
        )
        self.requests = Counter(
            "m2msec_requests",
            "Requests answered, by oneM2M operation and Response Status Code",
            ["operation", "rsc"],
            registry=reg,
        )
        self.backend_seconds = Histogram(
            "m2msec_backend_request_seconds",
            "Time the CSE behind the gateway took to answer a forwarded request",
            buckets=BACKEND_BUCKETS,
            registry=reg,
        )
        self.backend_errors = Counter(
            "m2msec_backend_errors",
            "Forwarded requests the backend did not answer, by kind",
            ["kind"],
            registry=reg,
        )
        self.store_lookup_seconds = Histogram(
            "m2msec_store_lookup_seconds",
            "Time of a credential lookup in the store (cache included), by store",
            ["store"],
            buckets=STORE_BUCKETS,
            registry=reg,
        )
        info = GaugeMetricFamily(
            "m2msec_server_info", "The kind of m2msec server", labels=["server"]
        )
        info.add_metric([server], 1.0)
        self.register(lambda: [info])

    # -- collectors -------------------------------------------------------------------------
    def register(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Add families read at scrape time (a server's stats objects)."""
        self.registry.register(FamiliesCollector(read))

    def exposition(self) -> bytes:
        """The Prometheus text format of everything registered."""
        return generate_latest(self.registry)

    # -- handshakes -------------------------------------------------------------------------
    def established(self, framework: str, protocol: str) -> None:
        self.handshakes.labels(framework, protocol, "established", Cause.NONE.value).inc()

    def refused(self, framework: str, protocol: str, reason: str) -> None:
        cause = handshake_cause(reason)
        self.handshakes.labels(framework, protocol, "refused", cause.value).inc()

    def failure_hook(self, profile: TLSProfile, then: FailureHook | None = None) -> FailureHook:
        """A listener's ``on_failure`` that counts the refusal by cause, then calls ``then``."""
        framework, protocol = profile.framework.value, profile.transport.value

        def failed(peer: tuple[Any, ...] | None, reason: str) -> None:
            self.refused(framework, protocol, reason)
            if then is not None:
                then(peer, reason)

        return failed

    def counted(
        self, profile: TLSProfile, serve: Callable[[TLSConnection], Awaitable[None]]
    ) -> Callable[[TLSConnection], Awaitable[None]]:
        """A ``TLSServer`` handler that counts each established association, then serves it."""
        framework, protocol = profile.framework.value, profile.transport.value

        async def counted(conn: TLSConnection) -> None:
            self.established(framework, protocol)
            await serve(conn)

        return counted

    def established_hook(self, profile: TLSProfile) -> Callable[[object], None]:
        """An ``on_established`` (DTLS listeners) that counts each association."""
        framework, protocol = profile.framework.value, profile.transport.value
        return lambda _association: self.established(framework, protocol)

    # -- requests, backend, store ------------------------------------------------------------
    def request(self, request: OneM2MRequest, response: HttpResponse) -> None:
        self.requests.labels(operation_label(request), rsc_label(response.rsc)).inc()

    def backend(self, seconds: float | None, error: str | None = None) -> None:
        """One forwarded request: its latency when answered, else the error's kind."""
        if error is not None:
            self.backend_errors.labels(error).inc()
        if seconds is not None:
            self.backend_seconds.observe(seconds)

    def store_observer(self, store: str) -> Callable[[float], None]:
        """The ``lookup_observer`` of a store: each lookup's seconds into the histogram."""
        return self.store_lookup_seconds.labels(store).observe


def session_cache_families(caches: Iterable[tuple[str, ServerSessionCache]]) -> Iterator[Metric]:
    """The TLS/DTLS session caches (:mod:`m2msec.tls.sessions`), by protocol: size, limit,
    hits, misses, evictions, resumptions and refused resumptions."""
    size = GaugeMetricFamily(
        "m2msec_session_cache_entries", "Sessions held for resumption", labels=["protocol"]
    )
    limit = GaugeMetricFamily(
        "m2msec_session_cache_max_entries", "Sessions a cache holds at most", labels=["protocol"]
    )
    lifetime = GaugeMetricFamily(
        "m2msec_session_cache_lifetime_seconds",
        "How long a session may be resumed after its full handshake",
        labels=["protocol"],
    )
    counters = {
        name: CounterMetricFamily(f"m2msec_session_cache_{name}", text, labels=["protocol"])
        for name, text in (
            ("hits", "Offered sessions found in the cache"),
            ("misses", "Offered sessions not in the cache (or expired)"),
            ("evictions", "Sessions dropped to make room (least recently used)"),
            ("resumed", "Sessions resumed after re-validation"),
            ("refused", "Sessions whose re-validation failed (full handshake instead)"),
        )
    }
    totals: dict[str, list[float]] = {}
    seen: set[int] = set()
    for protocol, cache in caches:
        if id(cache) in seen:  # one cache may serve several listeners
            continue
        seen.add(id(cache))
        t = totals.setdefault(protocol, [0.0] * 8)
        for i, value in enumerate(
            (
                len(cache),
                cache.max_sessions,
                cache.lifetime,
                cache.hits,
                cache.misses,
                cache.evictions,
                cache.resumed,
                cache.refused,
            )
        ):
            t[i] = max(t[i], value) if i == 2 else t[i] + value
    for protocol, t in sorted(totals.items()):
        size.add_metric([protocol], t[0])
        limit.add_metric([protocol], t[1])
        lifetime.add_metric([protocol], t[2])
        for j, name in enumerate(("hits", "misses", "evictions", "resumed", "refused")):
            counters[name].add_metric([protocol], t[3 + j])
    yield size
    yield limit
    yield lifetime
    yield from counters.values()


# -- the listener ------------------------------------------------------------------------------
def _text(status: int, body: bytes, content_type: str) -> HttpResponse:
    return HttpResponse(status, (("Content-Type", content_type),), body)


def _json(status: int, value: dict[str, str]) -> HttpResponse:
    return _text(status, json.dumps(value).encode(), "application/json")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MetricsListener:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a plain HTTP listener (module docstring).

    ``ready`` is the server's readiness check (None: always ready once started); it is
    bounded by ``ready_timeout`` seconds, so a hung store answers 503, not a hung scrape.
    """

    def __init__(
        self,
        metrics: ServerMetrics,
        ready: Readiness | None = None,
        *,
        ready_timeout: float = 2.0,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.ready_timeout = ready_timeout
        self._server: asyncio.Server | None = None
        self._http = HttpService(
            HttpLimits(max_body=4096, request_head_timeout=5.0, idle_timeout=30.0),
            ServiceHooks(internal_error=lambda _r: _json(500, {"status": "error"})),
            name="metrics",
        )
        self._plain = PlainConnections(self._http)
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        assert self.address is not None, "start() the listener first"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    async def start(self, host: str, port: int) -> tuple[str, int]:
        if not is_loopback(host):
            log.warning(
                "metrics listener on %s:%d is not loopback: anyone who reaches it reads the "
                "server's counters (no identities or keys are in them)",
                host,
                port,
            )
        self._server = await asyncio.start_server(self._serve, host, port)
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        log.info("metrics on %s/metrics (health: /healthz, /readyz)", self.url)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._http.close(1.0)
        await self._plain.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._plain.serve(reader, writer, self.answer)

    async def answer(self, request: OneM2MRequest) -> tuple[HttpResponse, bool]:
        """The answer to one request (sans-IO apart from the readiness check)."""
        path = request.target.split("?", 1)[0]
        if request.method not in ("GET", "HEAD"):
            return _json(405, {"status": "method not allowed"}), False
        if path == "/metrics":
            started = time.perf_counter()
            body = self.metrics.exposition()
            log.debug("metrics scraped in %.1f ms", 1000 * (time.perf_counter() - started))
            return _text(200, body, CONTENT_TYPE_LATEST), False
        if path == "/healthz":
            return _json(200, {"status": "up"}), False
        if path == "/readyz":
            reason = await self._readiness()
            if reason is None:
                return _json(200, {"status": "ready"}), False
            return _json(503, {"status": "not ready", "reason": reason}), False
        return _json(404, {"status": "not found", "paths": "/metrics /healthz /readyz"}), False

    async def _readiness(self) -> str | None:
        if self.ready is None:
            return None
        try:
            return await asyncio.wait_for(self.ready(), self.ready_timeout)
        except TimeoutError:
            return f"readiness check did not answer within {self.ready_timeout:g} s"
        except Exception as exc:  # a failed check is an answer, not a crash of the endpoint
            return f"readiness check failed: {type(exc).__name__}"


def store_ready(what: str, check: Callable[[], object]) -> Readiness:
    """A readiness check that runs ``check`` (one cheap store read) in a thread: a
    :class:`~m2msec.errors.StoreError` or OSError makes it answer ``"<what> unreachable"``."""

    async def ready() -> str | None:
        try:
            await asyncio.to_thread(check)
        except (StoreError, OSError):
            return f"{what} unreachable"
        return None

    return ready


def tcp_ready(what: str, host: str, port: int, timeout: float = 1.0) -> Readiness:
    """A readiness check that opens (and closes) one TCP connection to ``host:port``."""

    async def ready() -> str | None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            return f"{what} unreachable"
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return None

    return ready


def all_ready(*checks: Readiness) -> Readiness:
    """Ready when every check is; the first reason otherwise."""

    async def ready() -> str | None:
        for check in checks:
            reason = await check()
            if reason is not None:
                return reason
        return None

    return ready
