"""Asynchronous PSK resolution: the sniffer, the engine's hold-and-resume, and real peers.

The MAF and GBA frameworks resolve a psk_identity over the network (MAF Key Retrieval,
GBA Zn). These tests drive that path with a resolver that awaits, against our own
initiator, ``openssl s_client`` (TLS 1.2 and 1.3) and ``gnutls-cli``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from m2msec.errors import HandshakeError
from m2msec.tls.aio import TLSConnection, TLSServer, connect
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.engine import HandshakeComplete, HandshakeFailed, PskLookupNeeded, TLSEngine
from m2msec.tls.profiles import TLSProfile
from m2msec.tls.psk_sniff import MAX_IDENTITIES, PskIdentitySniffer
from tests.helpers import psk_client_profile, psk_server_profile, pump
from tests.interop import HOST, keying_material, spawn

IDENTITY = b"0123456789abcdef0123456789abcdef@maf.provider.com"
KEY = bytes(range(32))
HINT = b"3GPP-bootstrapping"


def async_profile(
    answers: dict[bytes, bytes],
    *,
    delay: float = 0.0,
    seen: list[tuple[bytes, int | None]] | None = None,
    tls13: bool = True,
    hint: bytes | None = None,
) -> TLSProfile:
    async def resolve(identity: bytes, cipher: int | None) -> tuple[bytes, PeerBinding] | None:
        if seen is not None:
            seen.append((identity, cipher))
        await asyncio.sleep(delay)
        if identity == b"refuse-me":
            raise HandshakeError("refused by the test resolver")
        key = answers.get(identity)
        if key is None:
            return None
        return key, PeerBinding("Csmartphone", PeerKind.AE, identity.decode())

    return psk_server_profile(
        tls13,
        framework=Framework.MAF,
        local_id="/id-in",
        async_resolver=resolve,
        hint=hint,
    )


# -- the sniffer, on bytes from a real OpenSSL client ------------------------------------


def _client_flights(tls13: bool) -> list[bytes]:
    """The bytes an OpenSSL PSK client sends, flight by flight, against a sync server."""
    server = TLSEngine(psk_server_profile(tls13))
    client = TLSEngine(
        psk_client_profile(
            b"AE123456789012-Light@in.provider.com", bytes.fromhex("1a2b3c4d5e6f7a8b"), tls13
        )
    )
    client.start()
    flights = []
    for _ in range(4):
        out = client.data_to_send()
        if out:
            flights.append(out)
            server.receive_data(out)
        back = server.data_to_send()
        if back:
            client.receive_data(back)
    return flights


@pytest.mark.parametrize("tls13", [False, True])
def test_sniffer_finds_identity_in_any_chunking(tls13: bool) -> None:
    stream = b"".join(_client_flights(tls13))
    for size in (1, 7, 300, len(stream)):
        sniffer = PskIdentitySniffer()
        found: list[bytes] = []
        for i in range(0, len(stream), size):
            found += sniffer.feed(stream[i : i + size])
        assert found == [b"AE123456789012-Light@in.provider.com"], size
        assert sniffer.done


def test_sniffer_survives_garbage() -> None:
    sniffer = PskIdentitySniffer()
    assert sniffer.feed(bytes(range(256)) * 3) == []
    # a ClientKeyExchange claiming a longer identity than it carries yields nothing
    bogus = b"\x16\x03\x03\x00\x06" + b"\x10\x00\x00\x02" + b"\x00\x40"
    assert PskIdentitySniffer().feed(bogus) == []
    dtls = PskIdentitySniffer(datagram=True)
    assert dtls.feed(b"\x16\xfe\xfd" + bytes(200)) == []


def test_sniffer_bounds_tls13_identities() -> None:
    identities = [f"id-{i}".encode() for i in range(MAX_IDENTITIES + 3)]
    ids = b"".join(len(i).to_bytes(2, "big") + i + bytes(4) for i in identities)
    psk_ext = (41).to_bytes(2, "big") + (len(ids) + 2 + 3).to_bytes(2, "big")
    psk_ext += len(ids).to_bytes(2, "big") + ids + b"\x00\x01\x00"  # binders (truncated)
    hello = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    hello += len(psk_ext).to_bytes(2, "big") + psk_ext
    msg = b"\x01" + len(hello).to_bytes(3, "big") + hello
    record = b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg
    assert PskIdentitySniffer().feed(record) == identities[:MAX_IDENTITIES]


# -- the engine, sans-IO -----------------------------------------------------------------


@pytest.mark.parametrize("tls13", [False, True])
def test_engine_holds_bytes_until_the_psk_is_provided(tls13: bool) -> None:
    server = TLSEngine(async_profile({}, tls13=tls13))
    client = TLSEngine(psk_client_profile(IDENTITY, KEY, tls13))
    client.start()
    ea, eb = pump(client, server)
    lookups = [e for e in eb if isinstance(e, PskLookupNeeded)]
    assert [e.identity for e in lookups] == [IDENTITY]
    # TLS 1.2: the suite is known when the ClientKeyExchange arrives; TLS 1.3: not yet.
    assert (lookups[0].cipher_suite is None) == tls13
    if not tls13:
        assert lookups[0].cipher_suite in (0x00A8, 0xC0A8, 0x00AE)  # PSK_SUITES_TLS
    assert not any(isinstance(e, HandshakeComplete) for e in ea + eb)
    assert server.psk_lookups_pending
    server.provide_psk(IDENTITY, (KEY, PeerBinding("Csmartphone", PeerKind.AE, "k")))
    ea, eb = pump(client, server)
    done = [e for e in eb if isinstance(e, HandshakeComplete)]
    assert done and done[0].context.peer_id == "Csmartphone"
    assert any(isinstance(e, HandshakeComplete) for e in ea)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(None, "unknown or expired psk_identity"), (HandshakeError("Kc expired"), "Kc expired")],
)
def test_engine_refusal_from_the_async_resolver(
    answer: HandshakeError | None, reason: str
) -> None:
    server = TLSEngine(async_profile({}, tls13=False))
    client = TLSEngine(psk_client_profile(IDENTITY, KEY, tls13=False))
    client.start()
    pump(client, server)
    server.provide_psk(IDENTITY, answer)
    ea, eb = pump(client, server)
    failed = [e for e in eb if isinstance(e, HandshakeFailed)]
    assert failed and reason in failed[0].reason
    assert any(isinstance(e, HandshakeFailed) for e in ea)


# -- the asyncio adapter -----------------------------------------------------------------


async def _serve(profile: TLSProfile) -> tuple[TLSServer, list[str]]:
    peers: list[str] = []

    async def handler(conn: TLSConnection) -> None:
        peers.append(conn.context.peer_id)
        await conn.send(b"m2msec peer=" + conn.context.peer_id.encode() + b"\n")
        data = await conn.recv()
        if data:
            await conn.send(data)

    server = TLSServer(profile, handler, handshake_timeout=5)
    await server.start(HOST, 0)
    return server, peers


@pytest.mark.parametrize("tls13", [False, True])
async def test_slow_resolver_does_not_block_other_handshakes(tls13: bool) -> None:
    seen: list[tuple[bytes, int | None]] = []
    server, peers = await _serve(
        async_profile({IDENTITY: KEY, b"fast": KEY}, delay=0.3, seen=seen, tls13=tls13)
    )
    try:
        conns = await asyncio.gather(
            *(
                connect(HOST, server.port, psk_client_profile(IDENTITY, KEY, tls13))
                for _ in range(5)
            )
        )
        for conn in conns:
            assert conn.context.peer_id == "/mn-cse-123456"
            await conn.close()
        assert peers == ["Csmartphone"] * 5
        assert {identity for identity, _ in seen} == {IDENTITY}
        with pytest.raises(HandshakeError):
            await connect(HOST, server.port, psk_client_profile(b"refuse-me", KEY, tls13))
        with pytest.raises(HandshakeError):
            await connect(HOST, server.port, psk_client_profile(IDENTITY, bytes(32), tls13))
        conn = await connect(HOST, server.port, psk_client_profile(IDENTITY, KEY, tls13))
        await conn.close()
    finally:
        await server.close()
    assert server.failed == 2


async def test_resolver_that_hangs_ends_in_the_handshake_timeout() -> None:
    async def never(identity: bytes, cipher: int | None) -> tuple[bytes, PeerBinding] | None:
        await asyncio.sleep(3600)
        return None

    profile = async_profile({})
    profile = dataclasses.replace(profile, psk_async_resolver=never)
    reasons: list[str] = []
    server = TLSServer(
        profile, lambda c: c.close(), handshake_timeout=0.5,
        on_failure=lambda peer, reason: reasons.append(reason),
    )
    await server.start(HOST, 0)
    try:
        with pytest.raises(HandshakeError):
            await connect(HOST, server.port, psk_client_profile(IDENTITY, KEY, False), timeout=3)
    finally:
        await server.close()
    assert reasons == ["handshake timed out"]


# -- real peers --------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize(
    ("args", "tls13"),
    [
        (["-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256"], False),
        (["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"], True),
    ],
    ids=["tls12", "tls13"],
)
async def test_openssl_s_client_against_async_resolution(args: list[str], tls13: bool) -> None:
    seen: list[tuple[bytes, int | None]] = []
    server, peers = await _serve(async_profile({IDENTITY: KEY}, delay=0.05, seen=seen))
    argv = [
        "openssl", "s_client", "-connect", f"{HOST}:{server.port}",
        "-psk_identity", IDENTITY.decode(), "-psk", KEY.hex(),
        "-keymatexport", "EXPORTER-oneM2M-Connection", "-keymatexportlen", "48", *args,
    ]
    try:
        async with spawn(argv) as client:
            await client.expect(r"m2msec peer=Csmartphone\r?\n", 10)
            client.write(b"ping\n")
            await client.expect(r"^ping\r?\n", 10)
            client.close_stdin()
            await client.wait(10)
    finally:
        await server.close()
    assert peers == ["Csmartphone"]
    assert seen[0][0] == IDENTITY
    expected_cipher = None if tls13 else 0x00AE  # TLS_PSK_WITH_AES_128_CBC_SHA256
    assert seen[0][1] == expected_cipher
    assert len(keying_material(client.output)) == 96


@pytest.mark.interop
async def test_gnutls_cli_receives_the_identity_hint() -> None:
    server, peers = await _serve(async_profile({IDENTITY: KEY}, tls13=False, hint=HINT))
    argv = [
        "gnutls-cli", "--port", str(server.port), "--no-ca-verification", "--verbose",
        "--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:+AES-128-CBC:"
        "-MAC-ALL:+SHA256",
        "--pskusername", IDENTITY.decode(), "--pskkey", KEY.hex(), HOST,
    ]
    try:
        async with spawn(argv) as client:
            await client.expect(r"m2msec peer=Csmartphone\r?\n", 10)
            client.close_stdin()
            await client.wait(10)
    finally:
        await server.close()
    assert peers == ["Csmartphone"]
    assert re.search(r"PSK hint.*3GPP-bootstrapping", client.output), client.output
