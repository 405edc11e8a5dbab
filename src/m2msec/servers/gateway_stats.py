"""The gateway's counters since start: what the log's summary and the metrics read.

No identities and no keys: the metrics (:mod:`m2msec.servers.metrics`) turn these into
Prometheus families at scrape time, so the request path only adds to integers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GatewayStats"]


@dataclass(slots=True)
class GatewayStats:
    """Counters since start (no identities, no keys)."""

    associations_established: int = 0
    associations_closed: int = 0
    handshakes_failed: int = 0
    requests_forwarded: int = 0
    requests_refused: int = 0
    plain_requests_refused: int = 0
    bad_requests: int = 0
    backend_errors: int = 0
    registrations_bound: int = 0
    dtls_associations: int = 0  # of associations_established: CoAP over DTLS
    coap_requests: int = 0
    coap_bad_messages: int = 0  # datagrams inside DTLS that were not (valid) CoAP
    handshakes_evicted: int = 0  # of handshakes_failed: silent connections making room
    first_flight_timeouts: int = 0  # of handshakes_failed: no ClientHello within the deadline
    associations_over_credential_cap: int = 0  # refused: the credential holds the maximum
    request_head_timeouts: int = 0  # heads not complete within request_head_timeout: 408
    refused_by_rule: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name != "refused_by_rule"
        }
        out["refused_by_rule"] = dict(self.refused_by_rule)
        return out
