"""The metric families each server reads from its own counters at scrape time (issue 14
item 1; the list with meanings is docs/operations.md "Metrics").

One mechanism for every server: :meth:`m2msec.service.metrics.ServerMetrics.register`
takes a function that builds the families from the stats object the server already keeps
(:class:`~m2msec.servers.gateway.GatewayStats`, :class:`~m2msec.maf.service.MafStats`,
:class:`~m2msec.gba.service.BsfStats`, the MEF's counter), so nothing on the hot path is
counted twice. Labels are fixed sets (a listener role, a protocol, a gateway rule, a
MAF refusal RSC, a store kind), never an identity or a key identifier.
"""

from __future__ import annotations

from collections import Counter as Counts
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from m2msec.service.metrics import (
    Readiness,
    ServerMetrics,
    all_ready,
    rsc_label,
    session_cache_families,
    store_ready,
    tcp_ready,
)
from m2msec.store.lookups import LookupStats
from m2msec.tls.sessions import ServerSessionCache

if TYPE_CHECKING:
    from m2msec.gba.service import BsfStats
    from m2msec.maf.service import MafStats
    from m2msec.servers.backend import BackendPool


class GatewayView(Protocol):
    """What the gateway's families read (:class:`m2msec.servers.gateway.Gateway`, which
    imports this module)."""

    @property
    def stats(self) -> Any: ...  # GatewayStats

    @property
    def store(self) -> object: ...

    @property
    def backend(self) -> BackendPool | None: ...

    def live_by_framework(self) -> dict[str, int]: ...

    def session_caches(self) -> list[tuple[str, ServerSessionCache]]: ...

__all__ = [
    "BSF_COUNTERS",
    "GATEWAY_COUNTERS",
    "MAF_COUNTERS",
    "MEF_COUNTERS",
    "GatewayView",
    "backend_error_kind",
    "bsf_families",
    "gateway_families",
    "gateway_readiness",
    "maf_families",
    "mef_families",
    "observe_store",
    "store_families",
]

#: stats field -> (metric name without ``m2msec_`` and ``_total``, help).
GATEWAY_COUNTERS: Mapping[str, tuple[str, str]] = {
    "associations_closed": ("gateway_associations_closed", "Associations ended"),
    "requests_forwarded": ("gateway_requests_forwarded", "Requests forwarded to the CSE"),
    "plain_requests_refused": (
        "gateway_plain_requests_refused",
        "Requests on plain http:// listeners (answered 4107)",
    ),
    "bad_requests": ("gateway_bad_requests", "Malformed or oversized HTTP requests"),
    "request_head_timeouts": (
        "gateway_request_head_timeouts",
        "Request heads not complete within request_head_timeout (408)",
    ),
    "registrations_bound": (
        "gateway_registrations_bound",
        "AE registrations (2001) that bound an association to its AE-ID",
    ),
    "coap_requests": ("gateway_coap_requests", "CoAP requests received over DTLS"),
    "coap_bad_messages": (
        "gateway_coap_bad_messages",
        "Datagrams inside DTLS that were not valid CoAP",
    ),
    "handshakes_evicted": (
        "gateway_handshakes_evicted",
        "Silent handshakes closed to make room at max_handshakes",
    ),
    "first_flight_timeouts": (
        "gateway_first_flight_timeouts",
        "Connections with no ClientHello within first_flight_timeout",
    ),
    "associations_over_credential_cap": (
        "gateway_associations_over_credential_cap",
        "Associations refused: the credential held max_associations_per_credential",
    ),
}

MAF_COUNTERS: Mapping[str, tuple[str, str]] = {
    "keys_issued": ("maf_keys_issued", "Kc issued by Key Registration (8.8.2.6)"),
    "keys_retrieved": ("maf_keys_retrieved", "Kc handed to Entity Bs by Key Retrieval (8.8.2.8)"),
    "keys_updated": ("maf_keys_updated", "Key Registration updates"),
    "keys_deregistered": ("maf_keys_deregistered", "Keys de-registered"),
    "client_registrations": ("maf_client_registrations", "MAF Client Registrations (8.8.2.3)"),
    "requests": ("maf_requests", "HTTP requests received"),
    "requests_refused": ("maf_requests_refused", "Requests refused (all RSCs)"),
    "bad_requests": ("maf_bad_requests", "Malformed or oversized HTTP requests"),
    "internal_errors": ("maf_internal_errors", "Requests that failed inside the MAF (5000)"),
    "store_errors": ("maf_store_errors", "Failed reads or writes of the MAF store"),
}

BSF_COUNTERS: Mapping[str, tuple[str, str]] = {
    "challenges": ("bsf_challenges", "Ub challenges sent (401 with an AKA nonce)"),
    "challenges_reused": ("bsf_challenges_reused", "Ub challenges answered again from the cache"),
    "bootstraps": ("bsf_bootstraps", "Bootstraps completed (B-TID and Ks issued)"),
    "resyncs": ("bsf_resyncs", "AKA re-synchronisations (AUTS)"),
    "ub_refused": ("bsf_ub_refused", "Ub requests refused"),
    "ub_rate_limited": ("bsf_ub_rate_limited", "Ub requests refused by the per-source rate"),
    "zn_answered": ("bsf_zn_answered", "Zn requests answered with Ks_NAF"),
    "zn_refused": ("bsf_zn_refused", "Zn requests refused"),
    "bad_requests": ("bsf_bad_requests", "Malformed or oversized HTTP requests"),
    "store_errors": ("bsf_store_errors", "Failed reads or writes of the BSF store"),
}

MEF_COUNTERS: Mapping[str, tuple[str, str]] = {
    "enrolments": ("mef_enrolments", "Enrolments committed (Ke and KeID issued)"),
    "enrolments_refused": ("mef_enrolments_refused", "Enrolment requests refused"),
    "fetched": (
        "mef_fetches",
        "Keys handed to Enrolment Targets (fetchCredentials, Key Retrieval)",
    ),
    "fetch_refused": ("mef_fetches_refused", "Target requests refused"),
    "key_retrievals": ("mef_key_retrievals", "Of mef_fetches: by MEF Key Retrieval (8.3.5.2.8)"),
    "key_retrievals_refused": (
        "mef_key_retrievals_refused",
        "Of mef_fetches_refused: MEF Key Retrievals",
    ),
    "bootstrap_sessions": ("mef_bootstrap_sessions", "Bootstrap sessions of Enrolees"),
    "target_sessions": ("mef_target_sessions", "Sessions of Enrolment Targets"),
    "enrolee_identity_refused": (
        "mef_enrolee_identity_refused",
        "Bootstrap sessions refused: no usable Enrolee identity",
    ),
    "target_identity_refused": (
        "mef_target_identity_refused",
        "Target sessions refused: no usable target identity",
    ),
    "requests": ("mef_requests", "HTTP or CoAP requests received"),
    "bad_requests": ("mef_bad_requests", "Malformed or oversized requests"),
    "internal_errors": ("mef_internal_errors", "Requests that failed inside the MEF (5000)"),
    "store_errors": ("mef_store_errors", "Failed reads or writes of the MEF store"),
}


def _counters(
    values: Callable[[str], Any], table: Mapping[str, tuple[str, str]]
) -> Iterator[Metric]:
    for field_name, (name, text) in table.items():
        yield CounterMetricFamily(f"m2msec_{name}", text, value=float(values(field_name)))


def store_families(stores: Iterable[tuple[str, LookupStats]]) -> Iterator[Metric]:
    """Lookup cache hits and misses, by store kind (``psk``, ``maf``)."""
    hits = CounterMetricFamily(
        "m2msec_store_cache_hits", "Credential lookups answered by the cache", labels=["store"]
    )
    misses = CounterMetricFamily(
        "m2msec_store_cache_misses", "Credential lookups that read the database", labels=["store"]
    )
    for kind, stats in stores:
        hits.add_metric([kind], float(stats.hits))
        misses.add_metric([kind], float(stats.misses))
    yield hits
    yield misses


def _lookups(store: object) -> LookupStats | None:
    found = getattr(store, "lookups", None)
    return found if isinstance(found, LookupStats) else None


def gateway_families(gw: GatewayView) -> Iterator[Metric]:
    """The gateway's families read from :class:`GatewayStats` and its listeners."""
    stats = gw.stats
    yield from _counters(lambda name: getattr(stats, name), GATEWAY_COUNTERS)
    established = CounterMetricFamily(
        "m2msec_gateway_associations_established",
        "Associations established, by protocol",
        labels=["protocol"],
    )
    established.add_metric(["dtls"], float(stats.dtls_associations))
    established.add_metric(["tls"], float(stats.associations_established - stats.dtls_associations))
    yield established
    live = GaugeMetricFamily(
        "m2msec_associations_live", "Live associations, by framework", labels=["framework"]
    )
    for framework, count in sorted(gw.live_by_framework().items()):
        live.add_metric([framework], float(count))
    yield live
    refused = CounterMetricFamily(
        "m2msec_gateway_refusals",
        "Requests the gateway refused itself (4103/4106/4107/4000/4126/4128), by rule",
        labels=["rule"],
    )
    for rule, count in sorted(stats.refused_by_rule.items()):
        refused.add_metric([rule], float(count))
    yield refused
    pool = gw.backend
    opened = GaugeMetricFamily(
        "m2msec_backend_connections", "Connections to the CSE, by state", labels=["state"]
    )
    if pool is not None:
        opened.add_metric(["open"], float(pool.open_connections))
        opened.add_metric(["idle"], float(pool.idle_connections))
    yield opened
    lookups = _lookups(gw.store)
    yield from store_families([] if lookups is None else [("psk", lookups)])
    yield from session_cache_families(gw.session_caches())


def maf_families(
    stats: MafStats,
    lookups: LookupStats | None,
    caches: Iterable[tuple[str, ServerSessionCache]] = (),
) -> Iterator[Metric]:
    """The MAF's families read from :class:`MafStats` and its store."""
    yield from _counters(lambda name: getattr(stats, name), MAF_COUNTERS)
    associations = CounterMetricFamily(
        "m2msec_maf_associations",
        "Associations, by listener (client: MAF Handshake; retrieval: Key Retrieval)",
        labels=["listener"],
    )
    associations.add_metric(["client"], float(stats.client_associations))
    associations.add_metric(["retrieval"], float(stats.retrieval_associations))
    yield associations
    refusals = CounterMetricFamily(
        "m2msec_maf_refusals", "Requests refused, by Response Status Code", labels=["rsc"]
    )
    for rsc, count in sorted(stats.refused_by_rsc.items()):
        refusals.add_metric([rsc_label(rsc)], float(count))
    yield refusals
    yield from store_families([] if lookups is None else [("maf", lookups)])
    yield from session_cache_families(caches)


def bsf_families(stats: BsfStats) -> Iterator[Metric]:
    """The BSF's families read from :class:`BsfStats`."""
    yield from _counters(lambda name: getattr(stats, name), BSF_COUNTERS)


def mef_families(stats: Counts[str]) -> Iterator[Metric]:
    """The MEF's families read from its counter (names fixed by the MEF's code)."""
    yield from _counters(lambda name: stats.get(name, 0), MEF_COUNTERS)


def backend_error_kind(exc: BaseException) -> str:
    """The ``kind`` label of a backend error: timeout, too_large, bad_request, unreachable."""
    from m2msec.servers.backend import BackendRequestError, BackendTimeout, BackendTooLarge

    if isinstance(exc, BackendTimeout):
        return "timeout"
    if isinstance(exc, BackendTooLarge):
        return "too_large"
    if isinstance(exc, BackendRequestError):
        return "bad_request"
    return "unreachable"


def observe_store(metrics: ServerMetrics, kind: str, store: object) -> None:
    """Send a store's lookup latencies to ``metrics`` (a store without ``lookups``: none)."""
    lookups = _lookups(store)
    if lookups is not None:
        lookups.observer = metrics.store_observer(kind)


#: A KpsaId no device is given (spaces): absent, so never cached, so its read reaches the
#: database (any text a PostgreSQL ``text`` column takes; no NUL).
_PROBE_ID = " m2msec readyz probe "


def gateway_readiness(gw: GatewayView) -> Readiness:
    """``/readyz`` of the gateway: the psk store answers a read (when the gateway has one)
    and the backend CSE accepts a TCP connection."""
    checks: list[Readiness] = []
    store = gw.store
    get = getattr(store, "get", None)
    if get is not None:
        checks.append(store_ready("psk store", lambda: get(_PROBE_ID)))
    pool = gw.backend
    if pool is not None:
        checks.append(tcp_ready("backend", pool.host, pool.port))
    return all_ready(*checks)
