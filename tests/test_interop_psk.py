"""Provisioned-PSK framework (TS-0003 8.2.2.1) against TLS stacks we did not write.

Our responder (TLSServer + PskResponder over the SQLite psk-lookup-table holding the
TR-0038 row) is driven by ``openssl s_client`` and ``gnutls-cli``; our initiator
(``connect`` + PskInitiator) talks to ``openssl s_server``, ``gnutls-serv`` and
``stunnel``. Every session checks three things: the negotiated protocol and suite as the
*other* program reports them, the identity our side bound (Clight-AE1 for the TR-0038
KpsaID), and that the RFC 5705 exporter of TS-0003 10.3.1 (label
``EXPORTER-oneM2M-Connection``, 48 octets, no context) computed by our side equals the
one the other program prints for the same session.

Missing programs fail these tests (see tests/interop.py): scripts/test installs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from m2msec.errors import HandshakeError
from m2msec.frameworks.provisioned import PskInitiator, PskResponder
from m2msec.tls.aio import TLSConnection, TLSServer, connect
from m2msec.tls.profiles import TLSProfile
from tests.interop import (
    EXPORT_LABEL,
    EXPORT_LEN,
    HOST,
    SERVER_ID,
    SNI,
    STRONG_AE_ID,
    STRONG_KPSA_HEX,
    STRONG_KPSA_ID,
    STRONG_KPSA_TEXT,
    TR0038_AE_ID,
    TR0038_KPSA_HEX,
    TR0038_KPSA_ID,
    Program,
    ServerUnderTest,
    free_port,
    keying_material,
    run,
    spawn,
    tr0038_store,
    wait_listening,
)

pytestmark = pytest.mark.interop

WRONG_KPSA_HEX = "0f0e0d0c0b0a0908"
UNKNOWN_KPSA_ID = "AE999999999999-Nobody@in.provider.com"
ALL_KEY_HEX = (TR0038_KPSA_HEX, STRONG_KPSA_HEX, WRONG_KPSA_HEX)
STEP = 10.0  # bound of every single wait in this module


@dataclass
class Seen:
    """One established session as our server saw it (computed in-process, not copied)."""

    peer_id: str
    protocol: str
    cipher: str
    server_name: str | None
    ekm: str


@dataclass
class Responder(ServerUnderTest):
    sessions: list[Seen] = field(default_factory=list)


@pytest.fixture
async def responder(tmp_path: Path) -> AsyncIterator[Responder]:
    store = tr0038_store(tmp_path / "psk.db")
    profile = PskResponder(store, local_id=SERVER_ID).profile(tls13=True)
    holder: list[Responder] = []

    async def handler(conn: TLSConnection) -> None:
        ctx = conn.context
        ekm = conn.export_keying_material(EXPORT_LABEL.encode(), EXPORT_LEN).hex()
        holder[0].sessions.append(
            Seen(ctx.peer_id, ctx.protocol, ctx.cipher_suite, ctx.server_name, ekm)
        )
        # The line proves data flows both ways; the test compares keys from `sessions`.
        await conn.send(f"m2msec peer={ctx.peer_id}\n".encode())
        while data := await conn.recv():
            await conn.send(data)

    server = TLSServer(
        profile, handler, handshake_timeout=STEP,
        on_failure=lambda _peer, reason: holder[0].refusals.append(reason),
    )
    holder.append(Responder(server))
    await server.start(HOST, 0)
    try:
        yield holder[0]
    finally:
        await server.close()
        store.close()


def assert_no_key_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    for key_hex in ALL_KEY_HEX:
        key = bytes.fromhex(key_hex)
        forms = {key_hex, key_hex.upper(), repr(key)[2:-1], key.decode("latin-1")}
        for form in forms:
            assert form not in text, f"key material {form!r} appeared in a log record"


def s_client_argv(port: int, identity: str, key_hex: str, *extra: str) -> list[str]:
    return [
        "openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", SNI,
        "-psk_identity", identity, "-psk", key_hex,
        "-keymatexport", EXPORT_LABEL, "-keymatexportlen", str(EXPORT_LEN),
        *extra,
    ]


async def talk(client: Program, banner: str = "m2msec peer=") -> str:
    """Read our server's banner line, echo one line through, hang up; the client's output."""
    m = await client.expect(rf"^{re.escape(banner)}(\S+)\r?\n", STEP)
    client.write(b"echo-through-the-association\n")
    await client.expect(r"^echo-through-the-association\r?\n", STEP)
    client.close_stdin()
    await client.wait(STEP)
    return m.group(1)


def s_client_protocol(output: str) -> tuple[str, str]:
    """(protocol, cipher) as s_client reports them."""
    cipher = re.search(r"(?:New|Reused), (\S+), Cipher is (\S+)", output)
    assert cipher, output
    proto = re.search(r"^\s*Protocol\s*:\s*(\S+)", output, re.MULTILINE)
    # s_client prints the SSL-Session block (with Protocol) for TLS 1.2 at once; for
    # TLS 1.3 the "New, TLSv1.3" version of the suite is itself proof of TLS 1.3.
    return (proto.group(1) if proto else cipher.group(1)), cipher.group(2)


OPENSSL_CLIENT_CASES = [
    pytest.param(
        ["-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256"], "TLSv1.2", "PSK-AES128-CBC-SHA256",
        id="tls12-cbc-sha256",
    ),
    pytest.param(
        ["-tls1_2", "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0"], "TLSv1.2", "PSK-AES128-CCM8",
        id="tls12-ccm8",
    ),
    pytest.param(
        ["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"], "TLSv1.3",
        "TLS_AES_128_GCM_SHA256", id="tls13-aes128gcm",
    ),
]


@pytest.mark.parametrize(("args", "protocol", "cipher"), OPENSSL_CLIENT_CASES)
async def test_openssl_s_client_to_our_responder(
    responder: Responder, args: list[str], protocol: str, cipher: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    argv = s_client_argv(responder.port, TR0038_KPSA_ID, TR0038_KPSA_HEX, *args)
    async with spawn(argv) as client:
        peer_on_wire = await talk(client)
    assert peer_on_wire == TR0038_AE_ID
    assert s_client_protocol(client.output) == (protocol, cipher)
    assert len(responder.sessions) == 1
    seen = responder.sessions[0]
    assert (seen.peer_id, seen.protocol, seen.cipher) == (TR0038_AE_ID, protocol, cipher)
    assert seen.server_name == SNI
    assert keying_material(client.output) == seen.ekm
    assert responder.refusals == []
    assert_no_key_in_logs(caplog)


GNUTLS_12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:-MAC-ALL"
# TLS 1.3: OpenSSL (without SSL_OP_ALLOW_NO_DHE_KEX) accepts only psk_dhe_ke, so the
# (EC)DHE-PSK key exchanges; plain +PSK alone is refused with handshake_failure.
GNUTLS_13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK:+DHE-PSK"

GNUTLS_CASES = [
    pytest.param(
        f"{GNUTLS_12}:+AES-128-CBC:+SHA256", "(TLS1.2-X.509)-(PSK)-(AES-128-CBC)-(SHA256)",
        "TLSv1.2", "PSK-AES128-CBC-SHA256", id="tls12-cbc-sha256",
    ),
    pytest.param(
        f"{GNUTLS_12}:+AES-128-CCM-8:+AEAD", "(TLS1.2-X.509)-(PSK)-(AES-128-CCM-8)",
        "TLSv1.2", "PSK-AES128-CCM8", id="tls12-ccm8",
    ),
    pytest.param(
        GNUTLS_13, "(TLS1.3-X.509)--(AES-128-GCM)", "TLSv1.3", "TLS_AES_128_GCM_SHA256", id="tls13",
    ),
]


@pytest.mark.parametrize(("priority", "description", "protocol", "cipher"), GNUTLS_CASES)
async def test_gnutls_cli_to_our_responder(
    responder: Responder, priority: str, description: str, protocol: str, cipher: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    argv = [
        "gnutls-cli", "-p", str(responder.port), HOST,
        "--pskusername", TR0038_KPSA_ID, "--pskkey", TR0038_KPSA_HEX,
        "--priority", priority,
        "--keymatexport", EXPORT_LABEL, "--keymatexportsize", str(EXPORT_LEN),
    ]
    async with spawn(argv, line_buffered=True) as client:
        peer_on_wire = await talk(client)
    assert peer_on_wire == TR0038_AE_ID
    assert f"- Description: {description}" in client.output, client.output
    assert f"PSK authentication. Connected as '{TR0038_KPSA_ID}'" in client.output
    seen = responder.sessions[0]
    assert (seen.peer_id, seen.protocol, seen.cipher) == (TR0038_AE_ID, protocol, cipher)
    assert keying_material(client.output) == seen.ekm
    assert_no_key_in_logs(caplog)


REFUSAL_CASES = [
    # (psk_identity, key, version, what the server must log as the reason)
    pytest.param(TR0038_KPSA_ID, WRONG_KPSA_HEX, "-tls1_2", r"wrong PSK\?", id="wrong-key-tls12"),
    pytest.param(TR0038_KPSA_ID, WRONG_KPSA_HEX, "-tls1_3", r"binder does not verify",
                 id="wrong-key-tls13"),
    pytest.param(UNKNOWN_KPSA_ID, TR0038_KPSA_HEX, "-tls1_2",
                 rf"unknown psk_identity '{re.escape(UNKNOWN_KPSA_ID)}'", id="unknown-id-tls12"),
    pytest.param(UNKNOWN_KPSA_ID, TR0038_KPSA_HEX, "-tls1_3",
                 rf"unknown psk_identity '{re.escape(UNKNOWN_KPSA_ID)}'", id="unknown-id-tls13"),
]


@pytest.mark.parametrize(("identity", "key_hex", "version", "reason"), REFUSAL_CASES)
async def test_refused_s_client_then_honest_client(
    responder: Responder, identity: str, key_hex: str, version: str, reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = await run(s_client_argv(responder.port, identity, key_hex, version), timeout=STEP)
    # s_client's side: the handshake failed with an alert from us, no session.
    assert bad.returncode != 0, bad.describe()
    assert re.search(r"alert (unknown psk identity|bad record mac|decrypt error|"
                     r"handshake failure)", bad.output), bad.describe()
    assert "m2msec peer=" not in bad.output
    # Our side: refused, with a reason that names the cause but not the key.
    await responder.wait_refusals(1)
    assert re.search(reason, responder.refusals[0]), responder.refusals
    logged = [r.getMessage() for r in caplog.records if r.name == "m2msec.tls.aio"]
    assert any("refused" in m and re.search(reason, m) for m in logged), logged
    assert responder.sessions == []
    # An honest client right after is served normally.
    argv = s_client_argv(responder.port, TR0038_KPSA_ID, TR0038_KPSA_HEX, version)
    async with spawn(argv) as honest:
        assert await talk(honest) == TR0038_AE_ID
    assert responder.sessions[0].ekm == keying_material(honest.output)
    assert_no_key_in_logs(caplog)


# -- our initiator against their servers ---------------------------------------------------


def initiator(
    tls13: bool, kpsa_id: str = TR0038_KPSA_ID, key_hex: str = TR0038_KPSA_HEX
) -> TLSProfile:
    return PskInitiator(kpsa_id, bytes.fromhex(key_hex), SERVER_ID, server_name=SNI).profile(
        tls13=tls13
    )


async def recv_until(conn: TLSConnection, needle: bytes) -> bytes:
    got = b""
    while needle not in got:
        chunk = await asyncio.wait_for(conn.recv(), STEP)
        if not chunk:
            pytest.fail(f"connection closed before {needle!r}; got {got!r}")
        got += chunk
    return got


S_SERVER_CASES = [
    pytest.param(False, ["-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256"], "TLSv1.2",
                 "PSK-AES128-CBC-SHA256", id="tls12-cbc-sha256"),
    pytest.param(False, ["-tls1_2", "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0"], "TLSv1.2",
                 "PSK-AES128-CCM8", id="tls12-ccm8"),
    pytest.param(True, ["-tls1_3"], "TLSv1.3", "TLS_AES_128_GCM_SHA256", id="tls13"),
]


@pytest.mark.parametrize(("tls13", "args", "protocol", "cipher"), S_SERVER_CASES)
async def test_our_initiator_to_openssl_s_server(
    tls13: bool, args: list[str], protocol: str, cipher: str,
) -> None:
    port = free_port()
    argv = [
        "openssl", "s_server", "-accept", f"{HOST}:{port}", "-nocert", "-naccept", "1",
        # s_server refuses any psk_identity but this one: it checks what we send.
        "-psk_identity", TR0038_KPSA_ID, "-psk", TR0038_KPSA_HEX,
        # A hint our initiator must ignore (docs/readings.md A-29); TLS 1.2 only sends it.
        "-psk_hint", "ignore-this-hint",
        "-keymatexport", EXPORT_LABEL, "-keymatexportlen", str(EXPORT_LEN), *args,
    ]
    async with spawn(argv) as server:
        await server.expect(r"^ACCEPT", STEP)
        conn = await connect(HOST, port, initiator(tls13), timeout=STEP)
        try:
            ctx = conn.context
            assert (ctx.peer_id, ctx.protocol, ctx.cipher_suite) == (SERVER_ID, protocol, cipher)
            assert ctx.key_id == TR0038_KPSA_ID
            ekm = conn.export_keying_material(EXPORT_LABEL.encode(), EXPORT_LEN).hex()
            await server.expect(rf"CIPHER is {re.escape(cipher)}\r?\n", STEP)
            await server.expect(r"Keying material: [0-9A-F]+\r?\n", STEP)
            assert keying_material(server.output) == ekm
            await conn.send(b"from-m2msec\n")
            await server.expect(r"^from-m2msec\r?\n", STEP)
            server.write(b"from-s_server\n")
            await recv_until(conn, b"from-s_server\n")
        finally:
            await asyncio.wait_for(conn.close(), STEP)


GNUTLS_SERV_CASES = [
    pytest.param(False, f"{GNUTLS_12}:+AES-128-CBC:+SHA256", "TLSv1.2", "PSK-AES128-CBC-SHA256",
                 id="tls12-cbc-sha256"),
    pytest.param(True, GNUTLS_13, "TLSv1.3", "TLS_AES_128_GCM_SHA256", id="tls13"),
]


@pytest.mark.parametrize(("tls13", "priority", "protocol", "cipher"), GNUTLS_SERV_CASES)
async def test_our_initiator_to_gnutls_serv(
    tmp_path: Path, tls13: bool, priority: str, protocol: str, cipher: str,
) -> None:
    passwd = tmp_path / "psk.passwd"
    passwd.write_text(f"{TR0038_KPSA_ID}:{TR0038_KPSA_HEX}\n")
    passwd.chmod(0o600)
    port = free_port()
    # gnutls-serv has no listen-address option: it binds every interface, on a random
    # port, for the few seconds of this test, accepting only this test's PSK.
    argv = [
        "gnutls-serv", "-p", str(port), "--pskpasswd", str(passwd), "--priority", priority,
        "--echo", "--keymatexport", EXPORT_LABEL, "--keymatexportsize", str(EXPORT_LEN),
    ]
    async with spawn(argv, line_buffered=True) as server:
        await server.expect(r"listening on IPv4 .* port \d+\.\.\.done", STEP)
        conn = await connect(HOST, port, initiator(tls13), timeout=STEP)
        try:
            ctx = conn.context
            assert (ctx.peer_id, ctx.protocol, ctx.cipher_suite) == (SERVER_ID, protocol, cipher)
            ekm = conn.export_keying_material(EXPORT_LABEL.encode(), EXPORT_LEN).hex()
            await conn.send(b"from-m2msec\n")
            await recv_until(conn, b"from-m2msec")
            await server.expect(rf"PSK authentication. Connected as '{re.escape(TR0038_KPSA_ID)}'",
                                STEP)
            await server.expect(r"Key material: [0-9a-fA-F]+\r?\n", STEP)
            assert keying_material(server.output) == ekm
        finally:
            await asyncio.wait_for(conn.close(), STEP)


# -- through stunnel -----------------------------------------------------------------------


def stunnel_conf(tmp_path: Path, name: str, lines: list[str]) -> Path:
    secrets = tmp_path / "psk.secrets"
    secrets.write_text(f"{STRONG_KPSA_ID}:{STRONG_KPSA_TEXT}\n")
    secrets.chmod(0o600)
    conf = tmp_path / f"{name}.conf"
    conf.write_text(
        "\n".join(
            [
                "foreground = yes",
                f"pid = {tmp_path / (name + '.pid')}",
                "debug = 5",
                f"[{name}]",
                f"PSKsecrets = {secrets}",
                "ciphers = PSK-AES128-CBC-SHA256",
                "sslVersionMin = TLSv1.2",
                "sslVersionMax = TLSv1.2",
                *lines,
                "",
            ]
        )
    )
    return conf


@contextlib.asynccontextmanager
async def plain_echo() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_our_initiator_through_stunnel_server(tmp_path: Path) -> None:
    """Our initiator -> stunnel (TLS-PSK server) -> plain echo backend."""
    async with plain_echo() as backend:
        port = free_port()
        conf = stunnel_conf(tmp_path, "psk-server", [
            f"accept = {HOST}:{port}", f"connect = {HOST}:{backend}",
        ])
        async with spawn(["stunnel", str(conf)]) as stunnel:
            await wait_listening(port, stunnel)
            conn = await connect(HOST, port, initiator(False, STRONG_KPSA_ID, STRONG_KPSA_HEX),
                                 timeout=STEP)
            try:
                assert conn.context.cipher_suite == "PSK-AES128-CBC-SHA256"
                await conn.send(b"through-stunnel\n")
                await recv_until(conn, b"through-stunnel\n")
            finally:
                await asyncio.wait_for(conn.close(), STEP)


async def test_stunnel_client_to_our_responder(responder: Responder, tmp_path: Path) -> None:
    """Plain TCP -> stunnel (TLS-PSK client, 16-octet key) -> our responder."""
    port = free_port()
    conf = stunnel_conf(tmp_path, "psk-client", [
        "client = yes", f"PSKidentity = {STRONG_KPSA_ID}",
        f"accept = {HOST}:{port}", f"connect = {HOST}:{responder.port}",
    ])
    async with spawn(["stunnel", str(conf)]) as stunnel:
        await stunnel.expect(r"Configuration successful", STEP)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), STEP)
        try:
            line = await asyncio.wait_for(reader.readline(), STEP)
            assert line == f"m2msec peer={STRONG_AE_ID}\n".encode()
            writer.write(b"via-stunnel\n")
            assert await asyncio.wait_for(reader.readline(), STEP) == b"via-stunnel\n"
        finally:
            writer.close()
    assert responder.sessions[0].peer_id == STRONG_AE_ID
    assert responder.sessions[0].protocol == "TLSv1.2"


async def test_our_initiator_refused_by_s_server_on_wrong_key() -> None:
    """The converse of the refusal test: s_server's alert surfaces as a HandshakeError."""
    port = free_port()
    argv = [
        "openssl", "s_server", "-accept", f"{HOST}:{port}", "-nocert", "-naccept", "1",
        "-psk_identity", TR0038_KPSA_ID, "-psk", WRONG_KPSA_HEX, "-tls1_2",
    ]
    async with spawn(argv) as server:
        await server.expect(r"^ACCEPT", STEP)
        with pytest.raises(HandshakeError) as info:
            await connect(HOST, port, initiator(False), timeout=STEP)
        assert TR0038_KPSA_HEX not in info.value.reason
        assert "alert" in info.value.reason or "handshake failed" in info.value.reason


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_store_outage_ends_with_internal_error(
    tmp_path: Path, version: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ISSUE-NOTES issue 6: a PSK handshake refused because the store cannot be read ends
    with alert internal_error (80), not the alerts of a wrong or unknown key, so a device
    can tell "retry later" from "refused"; the outage is logged once, without traceback."""
    store = tr0038_store(tmp_path / "psk.db")
    profile = PskResponder(store, local_id=SERVER_ID).profile(tls13=True)

    async def handler(conn: TLSConnection) -> None:
        await conn.send(f"m2msec peer={conn.context.peer_id}\n".encode())
        while data := await conn.recv():
            await conn.send(data)

    server = TLSServer(profile, handler, handshake_timeout=STEP)
    await server.start(HOST, 0)
    live = store._rconn
    try:
        # Every read now fails as on an unreachable store (a closed database connection).
        dead = sqlite3.connect(":memory:")
        dead.close()
        store._rconn = dead
        caplog.set_level(logging.DEBUG)
        for _ in range(3):
            bad = await run(
                s_client_argv(server.port, TR0038_KPSA_ID, TR0038_KPSA_HEX, version),
                timeout=STEP,
            )
            assert bad.returncode != 0, bad.describe()
            assert re.search(r"alert internal error|alert number 80", bad.output), bad.describe()
            assert "m2msec peer=" not in bad.output
        assert "Traceback" not in caplog.text
        assert all(r.exc_info is None for r in caplog.records)
        outage = [r for r in caplog.records if "unavailable" in r.getMessage()
                  and r.levelno >= logging.ERROR]
        assert len(outage) <= 1  # one per outage (the outage log is per process)
        store._rconn = live
        good = s_client_argv(server.port, TR0038_KPSA_ID, TR0038_KPSA_HEX, version)
        async with spawn(good) as honest:
            assert await talk(honest) == TR0038_AE_ID  # the store is back: served
    finally:
        store._rconn = live
        await server.close()
        store.close()
