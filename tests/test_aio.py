"""The asyncio TCP adapter: real sockets on loopback, our engine on both ends."""

from __future__ import annotations

import asyncio
import socket

import pytest

from m2msec.errors import HandshakeError
from m2msec.tls.aio import HandshakeAdmission, TLSConnection, TLSServer, connect
from tests.helpers import psk_client_profile, psk_server_profile

IDENT = b"AE123456789012-Light@in.provider.com"
KEY = bytes.fromhex("1a2b3c4d5e6f7a8b")


async def echo(conn: TLSConnection) -> None:
    while data := await conn.recv():
        await conn.send(data.upper())


async def test_round_trip_and_counters() -> None:
    server = TLSServer(psk_server_profile(), echo)
    await server.start("127.0.0.1", 0)
    try:
        conn = await connect("127.0.0.1", server.port, psk_client_profile(IDENT, KEY))
        assert conn.context.peer_id == "/mn-cse-123456"
        await conn.send(b"ping" * 10000)
        got = b""
        while len(got) < 40000:
            got += await conn.recv()
        assert got == b"PING" * 10000
        await conn.close()
        assert server.established == 1
    finally:
        await server.close()


async def test_refused_client_and_others_still_served() -> None:
    reasons: list[str] = []
    server = TLSServer(psk_server_profile(), echo, on_failure=lambda p, r: reasons.append(r))
    await server.start("127.0.0.1", 0)
    try:
        with pytest.raises(HandshakeError):
            await connect("127.0.0.1", server.port, psk_client_profile(b"who@in.provider.com", KEY))
        conn = await connect("127.0.0.1", server.port, psk_client_profile(IDENT, KEY))
        await conn.send(b"x")
        assert await conn.recv() == b"X"
        await conn.close()
        await asyncio.sleep(0.05)
        assert any("who@in.provider.com" in r for r in reasons)
    finally:
        await server.close()


async def test_stalled_handshake_is_cut_and_others_served() -> None:
    reasons: list[str] = []
    server = TLSServer(
        psk_server_profile(), echo, handshake_timeout=0.3, on_failure=lambda p, r: reasons.append(r)
    )
    await server.start("127.0.0.1", 0)
    try:
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.sendall(b"\x16\x03\x01")  # a record header, then nothing
        conn = await connect("127.0.0.1", server.port, psk_client_profile(IDENT, KEY))
        await conn.send(b"y")
        assert await conn.recv() == b"Y"
        await asyncio.sleep(0.5)
        assert "handshake timed out" in reasons
        stalled.settimeout(1)
        assert stalled.recv(10) == b""  # the server hung up
        stalled.close()
        await conn.close()
    finally:
        await server.close()


async def test_half_open_bound_evicts_the_oldest_silent_connection() -> None:
    # Issue 9 item 2: at the cap, connections that sent nothing give way to newcomers
    # (formerly the newcomer was shed, which let idle sockets lock every device out).
    reasons: list[str] = []
    server = TLSServer(
        psk_server_profile(), echo, max_handshakes=2, source_share=1.0,
        on_failure=lambda p, r: reasons.append(r),
    )
    await server.start("127.0.0.1", 0)
    try:
        socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        await asyncio.sleep(0.2)
        assert server.evicted == 2 and len(server.admission) == 2
        assert "too many handshakes in progress" not in reasons
        conn = await connect("127.0.0.1", server.port, psk_client_profile(IDENT, KEY))
        await conn.send(b"hi")
        assert await conn.recv() == b"HI"
        await conn.close()
        for s in socks:
            s.close()
    finally:
        await server.close()


def test_admission_gives_precedence_to_connections_that_spoke() -> None:
    adm = HandshakeAdmission(8, 0.25)  # 2 per source
    assert adm.admit("a1", "10.0.0.1") == [] and adm.admit("a2", "10.0.0.1") == []
    assert adm.admit("a3", "10.0.0.1") == ["a1"]  # the source's oldest silent one
    adm.first_flight("a2")
    adm.first_flight("a3")
    assert adm.admit("a4", "10.0.0.1") is None  # its share is held by peers that spoke
    for i in range(6):
        assert adm.admit(f"b{i}", f"10.0.1.{i}") == []
    assert len(adm) == 8
    assert adm.admit("c", "10.0.2.1") == ["b0"]  # total cap: the oldest silent overall
    for i in range(1, 6):
        adm.first_flight(f"b{i}")
    adm.first_flight("c")
    assert adm.admit("d", "10.0.3.1") is None
    adm.release("b1")
    assert adm.admit("d", "10.0.3.1") == []


async def test_first_flight_deadline() -> None:
    reasons: list[str] = []
    server = TLSServer(
        psk_server_profile(),
        echo,
        first_flight_timeout=0.3,
        on_failure=lambda p, r: reasons.append(r),
    )
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x16\x03\x01\x01")  # part of a record header, then silence
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert reasons == ["no first flight in time"]
        writer.close()
    finally:
        await server.close()


async def test_source_share_counts_the_real_peer_address() -> None:
    # A flood from one address evicts only that address's silent connections.
    server = TLSServer(psk_server_profile(), echo, max_handshakes=4, source_share=0.25)
    await server.start("127.0.0.1", 0)
    try:
        other = socket.create_connection(
            ("127.0.0.1", server.port), source_address=("127.0.0.2", 0)
        )
        flood = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert server.evicted == 2
        assert server.admission._by_source == {"127.0.0.2": 1, "127.0.0.1": 1}
        for s in (other, *flood):
            s.close()
    finally:
        await server.close()
