"""Reloading the gateway's credentials (issue 14 item 2): what may change, and the new profiles.

A reload (SIGHUP, ``m2msec gateway reload``) builds every new TLS and DTLS profile first;
only when all of them are built does :meth:`m2msec.servers.gateway.Gateway._reload` swap
them into the listeners, so a broken certificate, a key that does not match it or a TOML
error leaves the old configuration in force. Settings that the listeners, stores, backend
pool, SA services and HTTP limits were opened with need a restart (:data:`RESTART_ONLY`).
"""

from __future__ import annotations

from collections.abc import Sequence

from OpenSSL import SSL

from m2msec.config import GatewayConfig, ListenerSpec
from m2msec.errors import ConfigurationError
from m2msec.servers.gateway_profiles import ResponderProfiles, pick
from m2msec.store.base import PskStore
from m2msec.tls.engine import openssl_reason
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = ["RESTART_ONLY", "reloaded_profiles"]

#: The settings a reload may not change (GatewayConfig attribute -> TOML key): what the
#: listeners, the stores, the backend pool, the SA services and the HTTP limits were
#: opened with. Everything else (the frameworks' sections, TLS options, the request
#: rules, drain_timeout) is put in force by a reload.
RESTART_ONLY = {
    "listen": "gateway.listen",
    "backend": "gateway.backend",
    "cse_id": "gateway.cse_id",
    "psk": "psk.store",
    "sa": "[sa]",
    "egress": "[[egress]]",
    "metrics": "metrics.listen",
    "max_handshakes": "gateway.max_handshakes",
    "handshake_timeout": "gateway.handshake_timeout",
    "first_flight_timeout": "gateway.first_flight_timeout",
    "source_share": "gateway.source_share",
    "request_head_timeout": "gateway.request_head_timeout",
    "max_body": "gateway.max_body",
    "idle_timeout": "gateway.idle_timeout",
    "backend_timeout": "gateway.backend_timeout",
}


async def reloaded_profiles(
    config: GatewayConfig,
    store: PskStore | None,
    tls_specs: Sequence[ListenerSpec],
    dtls_specs: Sequence[ListenerSpec],
) -> tuple[ResponderProfiles, list[TLSProfile], list[TLSProfile]]:
    """The profiles of ``config`` for each running listener, in their order; on any
    failure nothing is kept (the new clients closed) and ConfigurationError says why."""
    fresh = ResponderProfiles(config, store)
    try:
        profiles = {
            Transport.TLS: fresh.for_transport(Transport.TLS),
            Transport.DTLS: fresh.for_transport(Transport.DTLS),
        }
        tls = [pick(profiles[Transport.TLS], spec)[1] for spec in tls_specs]
        dtls = [pick(profiles[Transport.DTLS], spec)[1] for spec in dtls_specs]
    except BaseException as exc:
        await fresh.aclose()  # its own clients only: the store stays the old one's
        if isinstance(exc, SSL.Error):
            reason = openssl_reason(exc)
            raise ConfigurationError(f"a TLS context cannot be built: {reason}") from None
        if isinstance(exc, KeyError):
            raise ConfigurationError(f"no profile for framework {exc}") from None
        raise
    return fresh, tls, dtls
