"""The ``[metrics]`` table every server's TOML takes (issue 14 item 1; docs/operations.md).

::

    [metrics]
    listen = "http://127.0.0.1:9464"   # /metrics, /healthz, /readyz; absent or "" = off

Off by default. The listener is plain ``http://`` and meant for loopback: a
non-loopback address is accepted (behind a firewall, for a scraper on another host) and
the server warns about it when it starts (:class:`m2msec.service.metrics.MetricsListener`).
``m2msec ... serve --metrics URL`` overrides it (``metrics.listen``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from m2msec.config.listeners import split_url
from m2msec.config.values import invalid, unknown_key

__all__ = ["METRICS_KEYS", "MetricsListen", "parse_metrics", "parse_metrics_url"]

#: The keys of ``[metrics]`` and their types.
METRICS_KEYS: Final[Mapping[str, type]] = {"listen": str}


@dataclass(frozen=True, slots=True)
class MetricsListen:
    """Where the metrics listener binds."""

    url: str
    host: str
    port: int


def parse_metrics_url(value: object, key: str = "metrics.listen") -> MetricsListen | None:
    """``http://HOST:PORT`` (port 0: any free port); ``""`` or ``"off"`` turns it off."""
    if value in ("", "off", None):
        return None
    url, parts, port = split_url(
        value, key, "the metrics listener is a URL such as 'http://127.0.0.1:9464'"
    )
    if parts.scheme.lower() != "http":
        raise invalid(key, f"{url!r}: the metrics listener is plain http://HOST:PORT")
    if not parts.hostname:
        raise invalid(key, f"{url!r}: no host; write e.g. http://127.0.0.1:9464")
    if port is None:
        raise invalid(key, f"{url!r}: no port; write e.g. http://{parts.hostname}:9464")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise invalid(key, f"{url!r}: only http://HOST:PORT is allowed")
    return MetricsListen(url, parts.hostname, port)


def parse_metrics(section: object) -> MetricsListen | None:
    """The ``[metrics]`` table (None when absent)."""
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise invalid("metrics", "must be a table ([metrics])")
    table: Mapping[str, Any] = section
    for name in table:
        if name not in METRICS_KEYS:
            raise unknown_key(name, set(METRICS_KEYS), "metrics")
    return parse_metrics_url(table.get("listen"))
