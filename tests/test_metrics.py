"""Metrics and health endpoints (issue 14 item 1; docs/operations.md "Metrics").

Each server runs with ``[metrics] listen`` on loopback; the tests drive real
associations (our engines, ``openssl s_client`` with a wrong key), scrape ``/metrics``
over HTTP and parse the exposition with ``prometheus_client``'s own parser, check that
the counters moved, and that no label value holds an identity or a key identifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from m2msec.config import parse_config
from m2msec.config.bsf import BsfConfig
from m2msec.config.metrics import MetricsListen, parse_metrics_url
from m2msec.errors import ConfigurationError, HandshakeError
from m2msec.frameworks.provisioned import PskInitiator
from m2msec.gba.aka import Usim
from m2msec.gba.records import Guss
from m2msec.gba.ub import bootstrap
from m2msec.maf.store import MafStore
from m2msec.servers.bsf import BsfServer
from m2msec.servers.gateway import Gateway
from m2msec.servers.maf import MafServer
from m2msec.servers.mef import MefServer
from m2msec.service.metrics import Cause, ServerMetrics, handshake_cause, rsc_label
from m2msec.store.sqlite import SqlitePskStore
from m2msec.tls.aio import connect
from tests import test_bsf as bsf_t
from tests import test_bsf_cli as bsf_cli
from tests import test_maf_server as maf_t
from tests import test_mef_server as mef_t
from tests.acme import AcmeCse, acme_fixture, ae_content
from tests.interop import free_port, psk_s_client, run
from tests.test_coap_gateway import associate as dtls_associate
from tests.test_gateway import AE1, AE2, AE3, CRED, CSE, MN, gateway_psk_store, light

acme = acme_fixture()

LOOPBACK = MetricsListen("http://127.0.0.1:0", "127.0.0.1", 0)
#: Every identity and key identifier the gateway tests' rows hold.
GATEWAY_SECRETS = [v for row in (AE1, AE2, AE3, CRED, MN) for v in row if v]


# ----------------------------------------------------------------------------- helpers


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> tuple[Samples, set[str], str]:
    """``GET url/metrics``, parsed by prometheus_client: samples by (name, labels), the
    family types seen, and the raw text."""
    async with httpx.AsyncClient() as client:
        r = await client.get(url + "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    types: set[str] = set()
    for family in text_string_to_metric_families(r.text):
        types.add(f"{family.name}:{family.type}")
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types, r.text


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def assert_no_identities(samples: Samples, secrets: Iterable[str]) -> None:
    """No label value holds (or is part of) an identity, a key id or a key."""
    secrets = [s.lower() for s in secrets]
    values = {v for (_n, ls) in samples for (_k, v) in ls}
    for label_value in values:
        low = label_value.lower()
        for secret in secrets:
            assert secret not in low and not (len(low) > 3 and low in secret), (
                label_value,
                secret,
            )


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url)


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        ("unknown or expired psk_identity 'nobody@in.provider.com'", Cause.UNKNOWN_IDENTITY),
        ("unknown KmId 'x@maf.in.provider.com'", Cause.UNKNOWN_IDENTITY),
        ("malformed KpmID", Cause.UNKNOWN_IDENTITY),
        ("handshake failed: decryption failed or bad record mac (wrong PSK?)", Cause.BAD_KEY),
        ("handshake failed: binder does not verify", Cause.BAD_KEY),
        ("certificate verify failed at depth 0: certificate has expired", Cause.CERTIFICATE),
        ("handshake failed: tlsv1 alert unknown ca", Cause.CERTIFICATE),
        ("client sent no server_name (SNI required)", Cause.POLICY),
        ("KmId 'ae2@maf.in.provider.com' is disabled", Cause.POLICY),
        ("x@maf.other.com names the MAF maf.other.com, which is not ours", Cause.POLICY),
        ("no first flight in time", Cause.TIMEOUT),
        ("evicted: silent at the handshake cap", Cause.TIMEOUT),
        ("handshake timed out", Cause.TIMEOUT),
        ("the psk-lookup-table is unavailable", Cause.OTHER),
        ("connection lost during the handshake", Cause.OTHER),
    ],
)
def test_handshake_causes_are_a_small_fixed_set(reason: str, cause: Cause) -> None:
    assert handshake_cause(reason) is cause


def test_rsc_labels_are_four_digits_only() -> None:
    assert [rsc_label(r) for r in (2001, 4107, None, 99, 70000)] == [
        "2001",
        "4107",
        "none",
        "other",
        "other",
    ]


def test_each_server_has_its_own_registry() -> None:
    a, b = ServerMetrics("gateway"), ServerMetrics("gateway")
    a.established("provisioned-psk", "tls")
    assert b"m2msec_handshakes_total{" not in b.exposition()
    assert b'cause="none"' in a.exposition()


def test_metrics_listen_url_is_checked() -> None:
    assert parse_metrics_url("") is None and parse_metrics_url("off") is None
    got = parse_metrics_url("http://127.0.0.1:9464")
    assert got is not None and (got.host, got.port) == ("127.0.0.1", 9464)
    for bad in ("tls://127.0.0.1:9464", "http://127.0.0.1", "http://127.0.0.1:9464/metrics"):
        with pytest.raises(ConfigurationError, match=r"metrics\.listen"):
            parse_metrics_url(bad)
    with pytest.raises(ConfigurationError, match=r"unknown key 'metrics\.lisen'"):
        parse_config(
            {
                "gateway": {
                    "listen": ["tls://127.0.0.1:0"],
                    "backend": "http://x:1",
                    "cse_id": CSE,
                },
                "metrics": {"lisen": "http://127.0.0.1:9464"},
            }
        )


# ----------------------------------------------------------------------------- gateway


def gateway_config(backend: str, *extra_listen: str) -> Any:
    return parse_config(
        {
            "gateway": {
                "listen": ["tls://127.0.0.1:0", "http://127.0.0.1:0", *extra_listen],
                "backend": backend,
                "cse_id": CSE,
                "backend_timeout": 3.0,
            },
            "metrics": {"listen": "http://127.0.0.1:0"},
        }
    )


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, backend: str, *extra: str) -> AsyncIterator[Gateway]:
    store: SqlitePskStore = gateway_psk_store(tmp_path / "psk.db")
    try:
        async with Gateway(gateway_config(backend, *extra), store=store) as gw:
            yield gw
    finally:
        store.close()


async def test_gateway_metrics_after_good_and_bad_handshakes_and_requests(
    acme: AcmeCse, tmp_path: Path
) -> None:
    async with gateway(tmp_path, acme.url) as gw:
        assert gw.metrics_url is not None
        port = gw.listeners[0].port
        async with light(gw, AE1) as ae1:
            r = await ae1.request(
                "POST", acme.base, origin="Clight-AE1", content=ae_content("m-light"), ty=2
            )
            assert r.rsc == 2001, r.body
            r = await ae1.request("GET", acme.base + "/m-light", origin="Clight-AE1")
            assert r.rsc == 2000, r.body
            r = await ae1.request("GET", acme.base, origin="Clight-AE2")  # impersonation
            assert r.rsc == 4106
            live, _, _ = await scrape(gw.metrics_url)
            assert value(live, "m2msec_associations_live", framework="provisioned-psk") == 1
        # A known identity with the wrong key: openssl s_client, TLS 1.2 PSK.
        done = await run(
            psk_s_client(
                port,
                "-tls1_2",
                "-cipher",
                "PSK-AES128-CBC-SHA256",
                "-quiet",
                identity=AE2[0],
                key_hex="00" * 16,
            )
        )
        assert done.returncode != 0, done.output
        # An unknown identity, from our own engine.
        with pytest.raises(HandshakeError):
            await connect(
                "127.0.0.1",
                port,
                PskInitiator("nobody@in.provider.com", b"0123456789abcdef", CSE).profile(),
            )
        async with httpx.AsyncClient() as client:  # the plain listener answers 4107
            r = await client.get(
                gw.listeners[1].url + acme.base,
                headers={"X-M2M-Origin": "Cplain", "X-M2M-RI": "p1", "X-M2M-RVI": "3"},
            )
            assert r.headers["x-m2m-rsc"] == "4107"
        await asyncio.sleep(0.1)  # the listener reports refusals after the alert
        samples, types, text = await scrape(gw.metrics_url)

    def hs(result: str, cause: str) -> float:
        return value(
            samples,
            "m2msec_handshakes_total",
            framework="provisioned-psk",
            protocol="tls",
            result=result,
            cause=cause,
        )

    assert hs("established", "none") == 1
    assert hs("refused", "bad_key") == 1
    assert hs("refused", "unknown_identity") == 1
    assert value(samples, "m2msec_requests_total", operation="create", rsc="2001") == 1
    assert value(samples, "m2msec_requests_total", operation="retrieve", rsc="2000") == 1
    assert value(samples, "m2msec_requests_total", operation="retrieve", rsc="4106") == 1
    assert value(samples, "m2msec_requests_total", operation="retrieve", rsc="4107") == 1
    assert value(samples, "m2msec_gateway_refusals_total", rule="originator-mismatch") == 1
    assert (
        value(samples, "m2msec_gateway_refusals_total", rule="security-association-required") == 1
    )
    assert value(samples, "m2msec_backend_request_seconds_count") == 2
    assert value(samples, "m2msec_backend_request_seconds_sum") > 0
    assert value(samples, "m2msec_gateway_requests_forwarded_total") == 2
    assert value(samples, "m2msec_gateway_associations_established_total", protocol="tls") == 1
    assert value(samples, "m2msec_associations_live") == 0
    # Three psk lookups reached the table (AE1, AE2, nobody): latency and misses.
    assert value(samples, "m2msec_store_lookup_seconds_count", store="psk") >= 3
    assert value(samples, "m2msec_store_cache_misses_total", store="psk") >= 3
    assert value(samples, "m2msec_session_cache_max_entries", protocol="tls") == 10000
    assert value(samples, "m2msec_session_cache_lifetime_seconds", protocol="tls") == 3600
    assert "m2msec_backend_request_seconds:histogram" in types
    assert "m2msec_associations_live:gauge" in types
    assert value(samples, "m2msec_server_info", server="gateway") == 1
    assert_no_identities(samples, [*GATEWAY_SECRETS, "Clight-AE1", "m-light", "nobody"])
    for secret in GATEWAY_SECRETS:
        assert secret not in text


async def test_gateway_backend_errors_and_readyz(tmp_path: Path) -> None:
    # Nothing listens on port 9: the backend is down.
    async with gateway(tmp_path, "http://127.0.0.1:9") as gw:
        assert gw.metrics_url is not None
        r = await get(gw.metrics_url + "/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "up"})
        r = await get(gw.metrics_url + "/readyz")
        assert r.status_code == 503
        assert r.json() == {"status": "not ready", "reason": "backend unreachable"}
        async with light(gw, AE1) as ae1:
            r = await ae1.request("GET", "/~" + CSE + "/cse", origin="Clight-AE1")
            assert r.rsc == 5103
        samples, _, _ = await scrape(gw.metrics_url)
        assert value(samples, "m2msec_backend_errors_total", kind="unreachable") == 1
        assert value(samples, "m2msec_requests_total", operation="retrieve", rsc="5103") == 1
        r = await get(gw.metrics_url + "/nothing")
        assert r.status_code == 404


async def test_gateway_readyz_answers_200_with_the_backend_up(
    acme: AcmeCse, tmp_path: Path
) -> None:
    async with gateway(tmp_path, acme.url) as gw:
        assert gw.metrics_url is not None
        r = await get(gw.metrics_url + "/readyz")
        assert (r.status_code, r.json()) == (200, {"status": "ready"})
        gw.store.close()  # type: ignore[union-attr]  # the psk store goes away
        r = await get(gw.metrics_url + "/readyz")
        assert (r.status_code, r.json()["reason"]) == (503, "psk store unreachable")


async def test_gateway_dtls_listener_is_counted(tmp_path: Path) -> None:
    async with gateway(tmp_path, "http://127.0.0.1:9", "dtls://127.0.0.1:0") as gw:
        assert gw.metrics_url is not None
        association = await dtls_associate(gw, AE1)  # our DTLS-PSK device
        association.close()
        await asyncio.sleep(0.05)
        samples, _, _ = await scrape(gw.metrics_url)
    assert value(samples, "m2msec_handshakes_total", protocol="dtls", result="established") == 1
    assert value(samples, "m2msec_gateway_associations_established_total", protocol="dtls") == 1
    assert value(samples, "m2msec_session_cache_max_entries", protocol="dtls") == 10000


async def test_non_loopback_metrics_listener_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="m2msec.service.metrics")
    store = gateway_psk_store(tmp_path / "psk.db")
    cfg = parse_config(
        {
            "gateway": {
                "listen": ["tls://127.0.0.1:0"],
                "backend": "http://127.0.0.1:9",
                "cse_id": CSE,
            },
            "metrics": {"listen": "http://0.0.0.0:0"},
        }
    )
    try:
        async with Gateway(cfg, store=store) as gw:
            assert gw.metrics_url is not None and gw.metrics_url.startswith("http://0.0.0.0:")
    finally:
        store.close()
    assert any("not loopback" in m for m in caplog.messages)


async def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    store = gateway_psk_store(tmp_path / "psk.db")
    cfg = parse_config(
        {
            "gateway": {
                "listen": ["tls://127.0.0.1:0"],
                "backend": "http://127.0.0.1:9",
                "cse_id": CSE,
            }
        }
    )
    try:
        async with Gateway(cfg, store=store) as gw:
            assert gw.metrics_url is None
            assert b"m2msec_server_info" in gw.metrics.exposition()  # counted all the same
    finally:
        store.close()


# ----------------------------------------------------------------------------- MAF, BSF, MEF


async def test_maf_metrics_after_a_key_registration(tmp_path: Path) -> None:
    pki = maf_t.make_pki(tmp_path / "pki")
    directory = tmp_path / "maf"
    store = MafStore(directory / "maf.db", cache_ttl=0)
    maf_t.provision(store)
    config = maf_t.maf_config(directory, pki, metrics=LOOPBACK)
    try:
        async with MafServer(config, store) as server:
            assert server.metrics_url is not None
            a = await maf_t.entity_a(server.client_port)
            r = await maf_t.register(a)
            assert r.rsc == 2001, r.body
            a.conn.abort()
            with pytest.raises(HandshakeError):
                await maf_t.entity_a(server.client_port, km=bytes(32))  # the wrong Km
            await asyncio.sleep(0.1)
            samples, _, _ = await scrape(server.metrics_url)
            r = await get(server.metrics_url + "/readyz")
            assert r.status_code == 200, r.text
    finally:
        store.close()
    assert value(samples, "m2msec_maf_keys_issued_total") == 1
    assert value(samples, "m2msec_maf_associations_total", listener="client") == 1
    assert (
        value(
            samples, "m2msec_handshakes_total", framework="maf", result="established", cause="none"
        )
        == 1
    )
    assert value(samples, "m2msec_handshakes_total", framework="maf", cause="bad_key") == 1
    assert value(samples, "m2msec_store_lookup_seconds_count", store="maf") >= 2
    assert value(samples, "m2msec_server_info", server="maf") == 1
    assert_no_identities(
        samples, [maf_t.KM_ID, maf_t.KM2_ID, maf_t.ENTITY_A, maf_t.IN_CSE, "in-cse"]
    )


async def test_bsf_metrics_after_a_bootstrap(tmp_path: Path) -> None:
    config = BsfConfig(
        fqdn=bsf_t.BSF_FQDN,
        listen=(("127.0.0.1", 0),),
        store=tmp_path / "bsf.db",
        metrics=LOOPBACK,
    )
    async with BsfServer(config) as server:
        assert server.metrics_url is not None
        server.store.add_subscriber(
            bsf_t.IMPI, k=bsf_t.K, opc=bsf_t.OPC, guss=Guss.allowing([bsf_t.NAF_FQDN])
        )
        boot = await bootstrap(server.ub_url(), Usim(bsf_t.K, bsf_t.OPC, sqn=0), bsf_t.IMPI)
        samples, _, text = await scrape(server.metrics_url)
        r = await get(server.metrics_url + "/readyz")
        assert r.status_code == 200, r.text
        server.store.close()
        r = await get(server.metrics_url + "/readyz")
        assert (r.status_code, r.json()["reason"]) == (503, "BSF store unreachable")
    assert value(samples, "m2msec_bsf_bootstraps_total") == 1
    assert value(samples, "m2msec_bsf_challenges_total") == 1
    assert value(samples, "m2msec_bsf_resyncs_total") == 0
    assert value(samples, "m2msec_server_info", server="bsf") == 1
    assert_no_identities(samples, [bsf_t.IMPI, boot.btid])
    assert boot.btid not in text and bsf_t.IMPI not in text


async def test_mef_metrics_after_an_enrolment(tmp_path: Path) -> None:
    pki = mef_t.make_pki(tmp_path / "pki")
    store = mef_t.seed_store(tmp_path / "mef.db")
    try:
        config = mef_t.mef_config(pki, tmp_path, metrics=LOOPBACK)
        async with MefServer(config, store) as server:
            assert server.metrics_url is not None
            client, _exported = await mef_t.psk_enrolee(server)
            got = await mef_t.enrol(client)
            assert got.rsc == 2001, got.body
            client.conn.abort()
            with pytest.raises(HandshakeError):
                await mef_t.psk_enrolee(server, "nobody@mef.in.provider.com")
            await asyncio.sleep(0.1)
            samples, _, _ = await scrape(server.metrics_url)
            r = await get(server.metrics_url + "/readyz")
            assert r.status_code == 200, r.text
    finally:
        store.close()
    assert value(samples, "m2msec_mef_enrolments_total") == 1
    assert value(samples, "m2msec_mef_bootstrap_sessions_total") == 1
    assert (
        value(samples, "m2msec_handshakes_total", framework="provisioned-psk", result="established")
        == 1
    )
    assert (
        value(
            samples,
            "m2msec_handshakes_total",
            framework="provisioned-psk",
            cause="unknown_identity",
        )
        == 1
    )
    assert value(samples, "m2msec_server_info", server="mef") == 1
    assert_no_identities(samples, [mef_t.KPM_ID, mef_t.ENROLEE_ID, "nobody", "Cdevice-1"])


def test_bsf_serve_cli_serves_metrics(tmp_path: Path) -> None:
    """``m2msec bsf serve --metrics URL``, the shipped command in its own process."""
    db = tmp_path / "bsf.db"
    added = bsf_cli.run(
        db, "add-subscriber", bsf_cli.IMPI, "--k", bsf_cli.K, "--opc", bsf_cli.OPC, "--any-naf"
    )
    assert added[0] == 0, added
    port, metrics_port = free_port(), free_port()
    proc = bsf_cli.serve(db, port, "--metrics", f"http://127.0.0.1:{metrics_port}")
    try:
        boot = bsf_cli.first_bootstrap(port)
        url = f"http://127.0.0.1:{metrics_port}"
        text = httpx.get(url + "/metrics", timeout=5).text
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert value(samples, "m2msec_bsf_bootstraps_total") == 1
    assert boot.btid not in text and bsf_cli.IMPI not in text
