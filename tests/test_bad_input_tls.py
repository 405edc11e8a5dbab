"""Hostile and broken input on the TLS port of a running responder (TS-0003 8.2.2.1).

Every case checks the same three things: the server refuses (hangs up, counts and logs the
failure with a reason), it goes on serving (an honest initiator that follows completes its
handshake and gets its echo), and no log record at DEBUG level carries key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from m2msec.errors import HandshakeError
from m2msec.frameworks.provisioned import PskInitiator, PskResponder
from m2msec.tls.aio import TLSConnection, TLSServer, connect
from m2msec.tls.engine import TLSEngine
from m2msec.tls.profiles import TLSProfile
from tests.interop import (
    HOST,
    SERVER_ID,
    SNI,
    STRONG_AE_ID,
    STRONG_KPSA_HEX,
    STRONG_KPSA_ID,
    TR0038_KPSA_HEX,
    TR0038_KPSA_ID,
    ServerUnderTest,
    run,
    tr0038_store,
)

STEP = 10.0  # bound of every single wait in this module
HANDSHAKE_TIMEOUT = 1.0
KEY_HEX = (TR0038_KPSA_HEX, STRONG_KPSA_HEX)




async def echo(conn: TLSConnection) -> None:
    while data := await conn.recv():
        await conn.send(data)


@pytest.fixture
async def target(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[ServerUnderTest]:
    caplog.set_level(logging.DEBUG)
    store = tr0038_store(tmp_path / "psk.db")
    profile = PskResponder(store, local_id=SERVER_ID).profile(tls13=True)
    refusals: list[str] = []
    server = TLSServer(profile, echo, handshake_timeout=HANDSHAKE_TIMEOUT,
                       on_failure=lambda _peer, reason: refusals.append(reason))
    await server.start(HOST, 0)
    try:
        yield ServerUnderTest(server, refusals)
    finally:
        await server.close()
        store.close()
    assert_no_key_in_logs(caplog)


def assert_no_key_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    records = [r for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]
    text = caplog.text + "\n".join(r.getMessage() for r in records)
    assert records, "nothing was logged: is the capture working?"
    for key_hex in KEY_HEX:
        key = bytes.fromhex(key_hex)
        for form in {key_hex, key_hex.upper(), repr(key)[2:-1], key.decode("latin-1")}:
            assert form not in text, f"key material {form!r} appeared in a log record"


def client_profile(tls13: bool = True) -> TLSProfile:
    return PskInitiator(
        STRONG_KPSA_ID, bytes.fromhex(STRONG_KPSA_HEX), SERVER_ID, server_name=SNI
    ).profile(tls13=tls13)


def client_hello(tls13: bool = True) -> bytes:
    """A genuine ClientHello from our own initiator engine."""
    engine = TLSEngine(client_profile(tls13))
    engine.start()
    hello = engine.data_to_send()
    assert hello[:1] == b"\x16"
    return hello


async def honest_client(port: int) -> None:
    """An initiator that must still be served: handshake, echo, close."""
    conn = await connect(HOST, port, client_profile(), timeout=STEP)
    try:
        assert conn.context.peer_id == SERVER_ID
        await conn.send(b"still-served\n")
        got = b""
        while b"still-served\n" not in got:
            chunk = await asyncio.wait_for(conn.recv(), STEP)
            assert chunk, f"server closed before the echo; got {got!r}"
            got += chunk
    finally:
        await asyncio.wait_for(conn.close(), STEP)


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(HOST, port), STEP)


async def until_hangup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Read until the server closes the connection; fail if it keeps it open."""
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), STEP):
            got += chunk
    except TimeoutError:
        pytest.fail(f"server kept a bad connection open for {STEP}s (received {got[:64]!r})")
    except ConnectionError:
        pass  # a reset is a hang-up too
    finally:
        writer.close()
    return got


async def send_and_hang_up(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, and wait for the server to close its side."""
    reader, writer = await open_raw(port)
    with contextlib.suppress(ConnectionError):
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
    return await until_hangup(reader, writer)


RANDOM_SIZES = [1, 5, 64, 517, 4096, 70_000]


@pytest.mark.parametrize("size", RANDOM_SIZES)
async def test_random_bytes(target: ServerUnderTest, size: int) -> None:
    await send_and_hang_up(target.port, os.urandom(size))
    await target.wait_refusals(1)
    assert target.server.established == 0
    await honest_client(target.port)


NOT_TLS = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: mn-cse-123456\r\n\r\n", id="http-request"),
    pytest.param(b"\x16\x03\x01\xff\xff" + os.urandom(100), id="oversized-record-header"),
    pytest.param(b"\x17\x03\x03\x00\x20" + os.urandom(32), id="application-data-first"),
    pytest.param(b"\x80\x2e\x01\x00\x02" + os.urandom(45), id="sslv2-style-hello"),
    pytest.param(b"\x00" * 1024, id="zeros"),
]


@pytest.mark.parametrize("payload", NOT_TLS)
async def test_not_tls(target: ServerUnderTest, payload: bytes) -> None:
    await send_and_hang_up(target.port, payload)
    await target.wait_refusals(1)
    assert target.refusals[0], "refused without a reason"
    await honest_client(target.port)


HELLO_THEN = [
    pytest.param(lambda: os.urandom(300), id="random"),
    pytest.param(lambda: b"\x16\x03\x03\x00\x10" + os.urandom(16), id="handshake-record-junk"),
    pytest.param(lambda: b"\x17\x03\x03\x00\x20" + os.urandom(32), id="early-app-data"),
    pytest.param(lambda: b"\x15\x03\x03\x00\x02\x02\x28", id="fatal-alert"),
    pytest.param(lambda: client_hello(), id="second-client-hello"),
]


@pytest.mark.parametrize("tls13", [True, False], ids=["tls13", "tls12"])
@pytest.mark.parametrize("garbage", HELLO_THEN)
async def test_client_hello_then_garbage(
    target: ServerUnderTest, tls13: bool, garbage: Callable[[], bytes]
) -> None:
    await send_and_hang_up(target.port, client_hello(tls13) + garbage())
    await target.wait_refusals(1)
    assert target.server.established == 0
    await honest_client(target.port)


async def s_client_with_identity(port: int, identity: str, version: str) -> str:
    done = await run(
        [
            "openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", SNI,
            "-psk_identity", identity, "-psk", STRONG_KPSA_HEX, version,
        ],
        timeout=STEP,
    )
    assert done.returncode != 0, f"s_client was served:\n{done.describe()}"
    assert "alert" in done.output, done.describe()
    return done.output


FQDN = "@in.provider.com"
BAD_IDENTITIES = [
    # (identity, what the log must say)
    pytest.param("A" * (129 - len(FQDN)) + FQDN, r"longer than 128 octets", id="129-octets"),
    pytest.param("A" * 200 + FQDN, r"longer than 128 octets", id="216-octets"),
    pytest.param("no-at-sign", r"malformed psk_identity.*no-at-sign", id="no-at-sign"),
    pytest.param("bad id" + FQDN, r"malformed psk_identity.*'bad id@in\.provider\.com'",
                 id="space"),
    pytest.param("AE1@", r"malformed psk_identity", id="empty-fqdn"),
    pytest.param("@in.provider.com", r"malformed psk_identity", id="empty-relative"),
    pytest.param(os.fsdecode(b"\xff\xfe" + FQDN.encode()), r"malformed psk_identity.*utf-8",
                 id="not-utf8"),
    # Boundary: 128 octets is well-formed, so it is refused as unknown, not as malformed.
    pytest.param("A" * (128 - len(FQDN)) + FQDN, r"unknown psk_identity 'A{112}@",
                 id="128-octets-unknown"),
]


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize(("identity", "reason"), BAD_IDENTITIES)
@pytest.mark.interop
async def test_bad_psk_identity_from_s_client(
    target: ServerUnderTest, identity: str, reason: str, version: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await s_client_with_identity(target.port, identity, version)
    await target.wait_refusals(1)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("m2msec"))
    assert re.search(reason, logged), logged
    assert re.search(r"security association with 127\.0\.0\.1:\d+ refused", logged), logged
    await honest_client(target.port)


async def test_stalled_handshakes_are_cut(target: ServerUnderTest) -> None:
    """Silent after connect, after a ClientHello, after half a record: all cut on time."""
    stalls = [b"", client_hello(), client_hello(False)[:7]]
    conns = []
    for payload in stalls:
        reader, writer = await open_raw(target.port)
        writer.write(payload)
        conns.append((reader, writer))
    loop = asyncio.get_running_loop()
    started = loop.time()
    # While they stall, others are served.
    await honest_client(target.port)
    await asyncio.gather(*(until_hangup(r, w) for r, w in conns))
    elapsed = loop.time() - started
    assert HANDSHAKE_TIMEOUT * 0.5 < elapsed < HANDSHAKE_TIMEOUT + 5, elapsed
    await target.wait_refusals(len(stalls))
    assert target.refusals.count("handshake timed out") == len(stalls), target.refusals
    await honest_client(target.port)


async def test_fifty_concurrent_garbage_connections(target: ServerUnderTest) -> None:
    kinds = [
        lambda: os.urandom(1 + int.from_bytes(os.urandom(2), "big") % 2000),
        lambda: client_hello() + os.urandom(200),
        lambda: b"GET / HTTP/1.0\r\n\r\n",
        lambda: client_hello(False)[:20],  # a stall, cut by the handshake timeout
        lambda: b"\x16\x03\x01\x40\x00" + os.urandom(1000),  # waits for more, never gets it
    ]
    opened = await asyncio.gather(*(open_raw(target.port) for _ in range(50)))
    for i, (_, writer) in enumerate(opened):
        writer.write(kinds[i % len(kinds)]())
    # All 50 are open (or being refused) while an honest initiator is served.
    await asyncio.wait_for(honest_client(target.port), STEP)
    for _, writer in opened:
        with contextlib.suppress(OSError):
            await writer.drain()
    await asyncio.gather(*(until_hangup(r, w) for r, w in opened))
    await target.wait_refusals(50)
    assert all(target.refusals), "a refusal without a reason"
    assert target.server.established == 1
    assert target.server.pending == 0
    await honest_client(target.port)
    assert target.server.established == 2


async def test_wrong_key_is_refused_without_leaking_it(
    target: ServerUnderTest, caplog: pytest.LogCaptureFixture,
) -> None:
    """Our own initiator with a wrong Kpsa: refused on both sides, nothing key-like logged."""
    wrong = PskInitiator(
        TR0038_KPSA_ID, bytes.fromhex(STRONG_KPSA_HEX[:16]), SERVER_ID, server_name=SNI
    ).profile(tls13=False)
    with pytest.raises(HandshakeError) as info:
        await connect(HOST, target.port, wrong, timeout=STEP)
    assert "bad record mac" in info.value.reason or "alert" in info.value.reason
    await target.wait_refusals(1)
    assert "wrong PSK?" in target.refusals[0]
    assert STRONG_AE_ID not in target.refusals[0]
    await honest_client(target.port)
