"""[gateway] session_cache_size / session_lifetime (tracker issue 14, ISSUE-NOTES "Issue 11":
"The TLS session caches ... get settings and metrics"): parsed and validated by
m2msec.config.gateway, applied to the ServerSessionCache of every TLS and DTLS listener
profile (m2msec.servers.gateway_profiles), reported by the metrics and changed by a reload."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from m2msec.config import GatewayConfig, parse_config
from m2msec.errors import ConfigurationError
from m2msec.servers.gateway import Gateway
from m2msec.tls.sessions import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_LIFETIME
from tests.test_gateway import AE1, AE2, AE3, CSE, gateway_psk_store, light
from tests.test_metrics import scrape, value


def document(**gateway: Any) -> dict[str, Any]:
    return {
        "gateway": {
            "listen": ["tls://127.0.0.1:0", "dtls://127.0.0.1:0"],
            "backend": "http://127.0.0.1:9",
            "cse_id": CSE,
            **gateway,
        },
        "metrics": {"listen": "http://127.0.0.1:0"},
    }


def test_defaults_are_ten_thousand_sessions_for_an_hour() -> None:
    cfg = parse_config(document())
    assert (cfg.session_cache_size, cfg.session_lifetime) == (10000, 3600.0)
    assert (DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_LIFETIME) == (10000, 3600.0)


def test_values_are_read() -> None:
    cfg = parse_config(document(session_cache_size=2, session_lifetime=90.5))
    assert (cfg.session_cache_size, cfg.session_lifetime) == (2, 90.5)


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("session_cache_size", 0),
        ("session_cache_size", -3),
        ("session_cache_size", 2.5),
        ("session_cache_size", "10"),
        ("session_cache_size", True),
        ("session_lifetime", 0),
        ("session_lifetime", -1.0),
        ("session_lifetime", "1h"),
    ],
)
def test_bad_values_are_refused_by_name(key: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"gateway\.{key}"):
        parse_config(document(**{key: bad}))


@contextlib.asynccontextmanager
async def running(tmp_path: Path, cfg: GatewayConfig) -> AsyncIterator[Gateway]:
    store = gateway_psk_store(tmp_path / "psk.db")
    try:
        async with Gateway(cfg, store=store) as gw:
            yield gw
    finally:
        store.close()


async def test_a_cache_of_two_holds_two_and_the_metrics_say_so(tmp_path: Path) -> None:
    cfg = parse_config(document(session_cache_size=2, session_lifetime=60))
    async with running(tmp_path, cfg) as gw:
        caches = dict(gw.session_caches())
        assert set(caches) == {"tls", "dtls"}
        assert all(c.max_sessions == 2 and c.lifetime == 60 for c in caches.values())
        for ae in (AE1, AE2, AE3):  # three full handshakes: three sessions recorded
            async with light(gw, ae):
                pass
        assert gw.metrics_url is not None
        samples, _, _ = await scrape(gw.metrics_url)
    for protocol in ("tls", "dtls"):
        assert value(samples, "m2msec_session_cache_max_entries", protocol=protocol) == 2
        assert value(samples, "m2msec_session_cache_lifetime_seconds", protocol=protocol) == 60
    assert value(samples, "m2msec_session_cache_entries", protocol="tls") == 2
    assert value(samples, "m2msec_session_cache_evictions_total", protocol="tls") >= 1


async def test_a_reload_builds_caches_of_the_new_size(tmp_path: Path) -> None:
    cfg = parse_config(document(session_cache_size=2))
    async with running(tmp_path, cfg) as gw:
        gw.config_source = lambda: parse_config(
            document(session_cache_size=5, session_lifetime=120)
        )
        outcome = await gw.reload()
        assert outcome.applied, outcome.message
        caches = dict(gw.session_caches())
        assert {(c.max_sessions, c.lifetime) for c in caches.values()} == {(5, 120.0)}
        assert set(caches) == {"tls", "dtls"}
