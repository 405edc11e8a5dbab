"""Configuration of m2msec's servers: one loader (:mod:`m2msec.config.loader`), one module
per server (:mod:`~m2msec.config.gateway`, with its listener URLs in
:mod:`~m2msec.config.listeners` and its ``[gba]``/``[maf]``/``[mef]`` in
:mod:`~m2msec.config.gateway_sections`; :mod:`~m2msec.config.maf`,
:mod:`~m2msec.config.bsf`). The gateway's names are re-exported here, where they lived
before the package existed."""

from m2msec.config.gateway import (
    DEFAULT_BACKEND_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_HANDSHAKES,
    GatewayConfig,
    PskConfig,
    load_config,
    parse_config,
)
from m2msec.config.gateway_sections import (
    CertificateConfig,
    GbaConfig,
    MafRetrievalConfig,
    MefTargetConfig,
    SaConfig,
)
from m2msec.config.listeners import FrameworkName, ListenerSpec, parse_listen_url
from m2msec.errors import ConfigurationError

__all__ = [
    "DEFAULT_BACKEND_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HANDSHAKES",
    "CertificateConfig",
    "ConfigurationError",
    "FrameworkName",
    "GatewayConfig",
    "GbaConfig",
    "ListenerSpec",
    "MafRetrievalConfig",
    "MefTargetConfig",
    "PskConfig",
    "SaConfig",
    "load_config",
    "parse_config",
    "parse_listen_url",
]
