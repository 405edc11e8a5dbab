"""TLS session resumption on the gateway's ``tls://`` listeners (RFC 5246 7.3, TS-0003 8.2).

``[gateway] resumption`` (default true) lets a device resume its TLS 1.2 session; the
gateway re-validates the binding the full handshake decided before resuming
(:mod:`m2msec.tls.sessions`): for provisioned PSK the psk-lookup-table row must still
exist and bind the same entity. ``openssl s_client`` is the device: ``-sess_out`` keeps
the session of a full handshake, ``-sess_in`` offers it again. After ``m2msec psk
remove`` of the row the offered session is not resumed and the full handshake that
follows fails (the KpsaId is unknown).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.config import GatewayConfig, PskConfig, parse_config, parse_listen_url
from m2msec.ids import CseId
from m2msec.sa.admin import sa_query
from m2msec.servers.gateway import Gateway
from m2msec.servers.gateway_sa import CREDENTIAL_EXPIRED, CREDENTIAL_REMOVED
from m2msec.store.sqlite import SqlitePskStore
from m2msec.tls.context import PeerKind, SecurityContext
from tests.acme import AcmeCse, acme_fixture
from tests.interop import (
    TR0038_AE_ID,
    TR0038_KPSA_HEX,
    TR0038_KPSA_ID,
    psk_s_client,
    run,
    spawn,
    tr0038_store,
)
from tests.test_interop_gateway import registration, rsc

pytestmark = pytest.mark.interop

acme = acme_fixture()


def get(base: str, origin: str) -> bytes:
    return (
        f"GET {base} HTTP/1.1\r\nHost: mn-cse-123456.in.provider.com\r\n"
        f"X-M2M-Origin: {origin}\r\nX-M2M-RI: resume-1\r\nX-M2M-RVI: 3\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()


TLS12_PSK = ("-tls1_2", "-cipher", "PSK-AES128-GCM-SHA256")


def s_client(port: int, sess: Path, *, out: bool) -> list[str]:
    session = ("-sess_out" if out else "-sess_in", str(sess))
    return psk_s_client(port, *TLS12_PSK, *session, "-nocommands", "-ign_eof")


def reuse(output: str) -> str | None:
    """``New`` or ``Reused``, from s_client's session summary."""
    match = re.search(r"^(New|Reused), TLSv1\.2", output, re.MULTILINE)
    return match.group(1) if match else None


def last(gw: Gateway) -> SecurityContext:
    return next(reversed(gw.recent_associations.values()))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlitePskStore]:
    tr0038_store(tmp_path / "psk.db").close()
    # cache_ttl=0: a row removed by another process (the CLI) is noticed at once; with the
    # default the gateway's lookup cache may serve it for up to 2 s more (store/sqlite.py).
    s = SqlitePskStore(tmp_path / "psk.db", cache_ttl=0)
    yield s
    s.close()


def config(backend: str, *, resumption: bool | None = None) -> GatewayConfig:
    gateway: dict[str, object] = {
        "listen": ["tls://127.0.0.1:0"],
        "backend": backend,
        "cse_id": "/mn-cse-123456",
    }
    if resumption is not None:
        gateway["resumption"] = resumption
    return parse_config({"gateway": gateway, "psk": {}})


async def test_s_client_resumes_with_the_same_identity_until_the_row_is_removed(
    acme: AcmeCse, store: SqlitePskStore, tmp_path: Path
) -> None:
    sess = tmp_path / "session.pem"
    base = acme.base
    cfg = config(acme.url)
    assert cfg.resumption is True  # the default
    async with Gateway(cfg, store=store) as gw:
        port = gw.listeners[0].port
        # Full handshake: register Clight-AE1, keep the session.
        done = await run(
            s_client(port, sess, out=True), stdin=registration(base, "Clight-AE1", "resumed-light")
        )
        assert reuse(done.output) == "New", done.output
        assert rsc(done.output) == "2001", done.output
        first = last(gw)
        assert not first.resumed and first.peer_id == TR0038_AE_ID
        assert sess.stat().st_size > 0
        # Resumed: the same identity binds the association; it reads its AE ...
        done = await run(
            s_client(port, sess, out=False), stdin=get(f"{base}/resumed-light", "Clight-AE1")
        )
        assert reuse(done.output) == "Reused", done.output
        assert rsc(done.output) == "2000", done.output
        second = last(gw)
        assert second.resumed and second.sa_id != first.sa_id
        assert (second.peer_id, second.peer_kind) == (TR0038_AE_ID, PeerKind.AE)
        assert second.key_id == first.key_id == TR0038_KPSA_ID
        # ... and may not speak for another AE.
        done = await run(s_client(port, sess, out=False), stdin=get(base, "Clight-AE2"))
        assert reuse(done.output) == "Reused", done.output
        assert rsc(done.output) == "4106", done.output
        forwarded = gw.stats.requests_forwarded
        assert forwarded == 2
        # The operator removes the row with the CLI (same SQLite file).
        removed = await run(
            [
                sys.executable,
                "-m",
                "m2msec.cli",
                "psk",
                "remove",
                TR0038_KPSA_ID,
                "--store",
                str(tmp_path / "psk.db"),
            ]
        )
        assert removed.returncode == 0, removed.describe()
        failed = gw.stats.handshakes_failed
        done = await run(
            s_client(port, sess, out=False), stdin=get(f"{base}/resumed-light", "Clight-AE1")
        )
        assert reuse(done.output) != "Reused", done.output
        assert rsc(done.output) is None, done.output  # no association, nothing answered
        assert gw.stats.handshakes_failed == failed + 1
        assert gw.stats.requests_forwarded == forwarded
        assert last(gw).sa_id == second.sa_id or last(gw).resumed  # no new association
        assert gw.stats.associations_established == 3


async def test_resumption_off_makes_every_handshake_full(
    acme: AcmeCse, store: SqlitePskStore, tmp_path: Path
) -> None:
    sess = tmp_path / "session.pem"
    async with Gateway(config(acme.url, resumption=False), store=store) as gw:
        port = gw.listeners[0].port
        done = await run(s_client(port, sess, out=True), stdin=get(acme.base, "Clight-AE1"))
        assert reuse(done.output) == "New", done.output
        assert rsc(done.output) is not None, done.output
        # The gateway gives no session ID, so s_client has no session to keep or offer.
        assert re.search(r"^\s*Session-ID:\s*$", done.output, re.MULTILINE), done.output
        assert not sess.exists()
        assert not last(gw).resumed and gw.stats.associations_established == 1


def test_resumption_config() -> None:
    assert config("http://127.0.0.1:1", resumption=False).resumption is False
    assert GatewayConfig(
        listen=(parse_listen_url("tls://127.0.0.1:0"),),
        backend="http://127.0.0.1:1",
        cse_id=CseId.parse("/mn-cse-123456"),
        psk=PskConfig(),
    ).resumption
    from m2msec.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"gateway\.resumption"):
        parse_config(
            {
                "gateway": {
                    "listen": ["tls://127.0.0.1:0"],
                    "backend": "http://127.0.0.1:1",
                    "cse_id": "/mn-cse-123456",
                    "resumption": "yes",
                }
            }
        )


async def test_maf_session_resumes_while_the_gateway_holds_the_kc(
    acme: AcmeCse, tmp_path: Path
) -> None:
    """MAF (8.2.2.3): a session resumes only while Entity B still holds its Kc
    (MafResponder.resumption_check); once dropped, a full handshake fetches it again."""
    from m2msec.frameworks.maf import MafInitiator
    from m2msec.tls.aio import connect
    from m2msec.tls.sessions import ClientSessionCache
    from tests.test_gateway_dtls_frameworks import IN_CSE, SMARTPHONE, _maf_client, _port, maf_world

    async with maf_world(tmp_path, acme.url) as (maf, gw):
        # TLS 1.2 session IDs, as with s_client above.
        initiator = MafInitiator(_maf_client(maf, SMARTPHONE), IN_CSE, tls13=False)
        await initiator.kc()
        profile = initiator.profile()
        profile = dataclasses.replace(profile, client_sessions=ClientSessionCache())
        port = _port(gw, "tls", "maf")
        contexts = []
        for _ in range(2):
            conn = await connect("127.0.0.1", port, profile)
            contexts.append(conn.context)
            await conn.close()
        assert [c.resumed for c in contexts] == [False, True]
        assert gw.maf is not None
        records = [gw.recent_associations[c.sa_id] for c in contexts]
        assert [(r.peer_id, r.resumed) for r in records] == [
            ("Cdtls-phone", False),
            ("Cdtls-phone", True),
        ]
        assert maf.stats.keys_retrieved == 1
        issued = initiator.current
        assert issued is not None
        gw.maf.retriever.invalidate(issued.kc_id)
        conn = await connect("127.0.0.1", port, profile)
        assert not conn.context.resumed  # the Kc was no longer held: full handshake
        await conn.close()
        assert maf.stats.keys_retrieved == 2


@pytest.mark.parametrize("change", ["remove", "earlier-expiry"])
async def test_live_association_ends_when_its_psk_row_is_removed(
    acme: AcmeCse, tmp_path: Path, change: str
) -> None:
    """ISSUE-NOTES issue 6 and 9: a live association whose psk row is removed (``m2msec psk
    remove`` in another process), or whose expiry passes, is not served past the lookup
    cache's lifetime: the gateway's sweep removes its SA and ends the session (close_notify)
    while the device is idle, and the SA record says why (tests/test_gateway_sa.py checks
    the answer to a request that races the sweep)."""
    tr0038_store(tmp_path / "psk.db").close()
    ttl = 0.3  # the lookup cache lifetime, small for the test
    store = SqlitePskStore(tmp_path / "psk.db", cache_ttl=ttl)
    base = acme.base
    keep = (b"Connection: close\r\n", b"")
    try:
        async with Gateway(config(acme.url), store=store) as gw:
            port = gw.listeners[0].port
            argv = psk_s_client(port, *TLS12_PSK, "-nocommands", "-ign_eof", "-quiet")
            async with spawn(argv) as client:
                # Served while the row exists (Clight-AE1 may be registered already by an
                # earlier test against this module's ACME: 2001 or 4117, both forwarded).
                client.write(registration(base, "Clight-AE1", "live-light").replace(*keep))
                await client.expect(r"X-M2M-RI: interop-1", 10)
                client.write(
                    get(base, "Clight-AE1").replace(*keep).replace(b"resume-1", b"live-2")
                )
                await client.expect(r"X-M2M-RI: live-2", 10)
                assert gw.stats.requests_forwarded == 2
                if change == "remove":
                    args = ["remove", TR0038_KPSA_ID]
                else:  # re-added with an expiry one second from now
                    soon = datetime.now(UTC) + timedelta(seconds=1)
                    args = ["add", TR0038_KPSA_ID, "--key", TR0038_KPSA_HEX, "--entity-id",
                            TR0038_AE_ID, "--replace", "--expires", soon.isoformat()]
                removed = await run([
                    sys.executable, "-m", "m2msec.cli", "psk", *args,
                    "--store", str(tmp_path / "psk.db"),
                ])  # fmt: skip
                assert removed.returncode == 0, removed.describe()
                # No request: the sweep ends the idle session by itself.
                started = asyncio.get_running_loop().time()
                await client.wait(2 * ttl + (1.0 if change != "remove" else 0.0) + 5)
                took = asyncio.get_running_loop().time() - started
                assert took < 2 * ttl + (1.0 if change != "remove" else 0.0) + 2, took
                assert gw.stats.requests_forwarded == 2  # nothing more forwarded
                assert gw.sa.removed_by_sweep == 1
                (record,) = await gw.sa.list(sa_query(state="removed"))
                assert record.peer_id == TR0038_AE_ID
                assert record.cause == (
                    CREDENTIAL_REMOVED if change == "remove" else CREDENTIAL_EXPIRED
                )
    finally:
        store.close()
