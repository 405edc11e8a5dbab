"""DTLS bad input and faults (RFC 6347; issue 3 item 7): the server keeps serving.

Our asyncio DTLS server is driven over loopback, partly through :class:`Relay`, a UDP relay
written here that shapes the traffic between real sockets: seeded random loss, reordering
(random delays), truncation and duplication/replay. Honest peers must complete their
handshakes (retransmission with back-off), bad datagrams are dropped, and the server's
per-peer state stays bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pytest

from m2msec.tls.aio_dtls import (
    DTLSAssociation,
    DTLSServerHandle,
    dtls_connect,
    start_dtls_server,
)
from m2msec.tls.dtls.engine import DTLSEngine
from m2msec.tls.dtls.records import is_client_hello, is_hello_verify_request
from m2msec.tls.profiles import Transport
from tests.helpers import TR0038_IDENTITY, TR0038_KEY, psk_client_profile, psk_server_profile
from tests.interop import wait_until

IDENTITY = TR0038_IDENTITY
KEY = TR0038_KEY
HOST = "127.0.0.1"

Address = tuple[str, int]


# TR-0038's row over DTLS (tests/helpers.py); the client sends no SNI.
server_profile = partial(psk_server_profile, transport=Transport.DTLS)
client_profile = partial(psk_client_profile, transport=Transport.DTLS, server_name=None)


@dataclass
class Received:
    """What the echo server's handler saw."""

    messages: list[bytes] = field(default_factory=list)
    associations: list[DTLSAssociation] = field(default_factory=list)


async def echo_server(**kw: object) -> tuple[DTLSServerHandle, Received]:
    seen = Received()

    async def echo(assoc: DTLSAssociation) -> None:
        seen.associations.append(assoc)
        while message := await assoc.recv():
            seen.messages.append(message)
            assoc.send(message)

    handle = await start_dtls_server(server_profile(), HOST, 0, echo, **kw)  # type: ignore[arg-type]
    return handle, seen


# -- the relay -------------------------------------------------------------------------------
Shaper = Callable[[str, bytes], list[tuple[float, bytes]]]
"""(direction "c>s" or "s>c", datagram) -> [(delay in seconds, datagram to deliver)]."""


class Relay:
    """A UDP relay between clients and one server that shapes every datagram.

    Each client address gets its own upstream socket, so the server sees one source port
    per client, as through a NAT.
    """

    def __init__(self, server: Address, shaper: Shaper) -> None:
        self.server = server
        self.shaper = shaper
        self.port = 0
        self.counts = {"c>s": 0, "s>c": 0, "dropped": 0}
        self._front: asyncio.DatagramTransport | None = None
        self._upstream: dict[Address, asyncio.DatagramTransport] = {}
        self._loop = asyncio.get_running_loop()

    async def start(self) -> int:
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Address) -> None:
                relay._loop.create_task(relay._from_client(data, addr))

        transport, _ = await self._loop.create_datagram_endpoint(Front, local_addr=(HOST, 0))
        self._front = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]
        return self.port

    async def _from_client(self, data: bytes, client: Address) -> None:
        up = self._upstream.get(client)
        if up is None:
            relay = self

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Address) -> None:
                    relay._shape("s>c", data, lambda d: relay._to_client(d, client))

            up, _ = await self._loop.create_datagram_endpoint(Back, remote_addr=self.server)  # type: ignore[assignment]
            self._upstream[client] = up
        self._shape("c>s", data, lambda d: up.sendto(d) if not up.is_closing() else None)

    def _to_client(self, data: bytes, client: Address) -> None:
        if self._front is not None and not self._front.is_closing():
            self._front.sendto(data, client)

    def _shape(self, direction: str, data: bytes, deliver: Callable[[bytes], None]) -> None:
        self.counts[direction] += 1
        out = self.shaper(direction, data)
        if not out:
            self.counts["dropped"] += 1
        for delay, datagram in out:
            if delay <= 0:
                deliver(datagram)
            else:
                self._loop.call_later(delay, deliver, datagram)

    def close(self) -> None:
        for up in self._upstream.values():
            up.close()
        if self._front is not None:
            self._front.close()


def lossy(rate: float, seed: int) -> Shaper:
    rng = random.Random(seed)

    def shape(direction: str, data: bytes) -> list[tuple[float, bytes]]:
        return [] if rng.random() < rate else [(0.0, data)]

    return shape


async def send_echo(assoc: DTLSAssociation, message: bytes, timeout: float = 10.0) -> bytes:
    """Send until the echo comes back (application data is not retransmitted by DTLS)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assoc.send(message)
        try:
            return await asyncio.wait_for(assoc.recv(), 1.0)
        except TimeoutError:
            continue
    raise AssertionError(f"no echo of {message!r} within {timeout} s")


# -- random bytes and truncated datagrams ----------------------------------------------------
async def test_random_datagrams_are_dropped_and_the_server_keeps_serving() -> None:
    srv, seen = await echo_server()
    rng = random.Random(3)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
    try:
        for i in range(400):
            sock = socks[i % len(socks)]
            size = rng.choice([0, 1, 12, 13, 25, 60, 200, 1200, 3000])
            junk = bytearray(os.urandom(size))
            if size >= 13 and i % 3 == 0:
                junk[0], junk[1], junk[2] = 22, 0xFE, 0xFD  # looks like a DTLS handshake record
                junk[3:5] = b"\0\0"
            if size >= 26 and i % 6 == 0:
                junk[13] = 1  # ... holding a "ClientHello"
            sock.sendto(bytes(junk), (HOST, srv.port))
            if i % 10 == 9:
                await asyncio.sleep(0.002)  # let the server read: this is not a socket test
        # An honest device in the middle of the noise.
        assoc = await dtls_connect(client_profile(), HOST, srv.port, timeout=10)
        assert await send_echo(assoc, b"still serving") == b"still serving"
        assoc.close()
        await asyncio.sleep(0.2)
        stats = srv.server.stats
        # Everything but the honest client's few datagrams (and the odd random "ClientHello"
        # that earned a HelloVerifyRequest) was dropped without state.
        assert stats.datagrams_in >= 300
        honest = stats.datagrams_in - stats.dropped - (stats.cookies_sent - 1)
        assert 2 <= honest <= 8
        assert srv.server.peer_count == 0 and srv.server.half_open_count == 0
        assert stats.established == 1 and len(seen.associations) == 1
    finally:
        for sock in socks:
            sock.close()
        srv.close()
        await srv.wait_closed()


async def test_truncated_flights_are_recovered_by_retransmission() -> None:
    """The first ClientHello, the server's flight and the client's final flight are cut."""
    srv, _seen = await echo_server()
    seen_count = {"c>s": 0, "s>c": 0}
    cut = {"c>s": {0, 2}, "s>c": {1}}

    def truncate(direction: str, data: bytes) -> list[tuple[float, bytes]]:
        index = seen_count[direction]
        seen_count[direction] += 1
        if index in cut[direction]:
            return [(0.0, data[: max(1, len(data) // 2)])]
        return [(0.0, data)]

    relay = Relay((HOST, srv.port), truncate)
    port = await relay.start()
    try:
        started = time.monotonic()
        assoc = await dtls_connect(client_profile(), HOST, port, timeout=20)
        took = time.monotonic() - started
        assert await send_echo(assoc, b"after truncation") == b"after truncation"
        assoc.close()
        assert took >= 1.0  # at least one retransmission timer ran
        assert srv.server.stats.established == 1
        assert srv.server.stats.dropped >= 1  # the cut ClientHello from an unknown address
    finally:
        relay.close()
        srv.close()
        await srv.wait_closed()


async def test_reordered_and_duplicated_flights_complete() -> None:
    """Small MTU (multi-datagram flights), random delays up to 80 ms, and duplicates."""
    srv, _seen = await echo_server(mtu=300)
    rng = random.Random(7)

    def shuffle(direction: str, data: bytes) -> list[tuple[float, bytes]]:
        out = [(rng.uniform(0, 0.08), data)]
        if rng.random() < 0.3:
            out.append((rng.uniform(0, 0.15), data))
        return out

    relay = Relay((HOST, srv.port), shuffle)
    port = await relay.start()
    try:
        clients = await asyncio.gather(
            *(dtls_connect(client_profile(), HOST, port, timeout=20, mtu=300) for _ in range(5))
        )
        for i, assoc in enumerate(clients):
            message = f"reordered {i}".encode()
            assert await send_echo(assoc, message) == message
            assoc.close()
        assert srv.server.stats.established == 5 and srv.server.stats.failed == 0
    finally:
        relay.close()
        srv.close()
        await srv.wait_closed()


# -- replay ----------------------------------------------------------------------------------
async def test_replayed_records_are_delivered_once() -> None:
    """Every client datagram is sent twice at once and once more 300 ms later."""
    srv, seen = await echo_server()

    def replay(direction: str, data: bytes) -> list[tuple[float, bytes]]:
        if direction == "c>s":
            return [(0.0, data), (0.0, data), (0.3, data)]
        return [(0.0, data)]

    relay = Relay((HOST, srv.port), replay)
    port = await relay.start()
    try:
        assoc = await dtls_connect(client_profile(), HOST, port, timeout=10)
        messages = [f"message {i}".encode() for i in range(10)]
        for message in messages:
            assoc.send(message)
        echoes = [await asyncio.wait_for(assoc.recv(), 5) for _ in messages]
        await asyncio.sleep(0.6)  # let the late replays arrive
        assert echoes == messages
        assert seen.messages == messages  # each exactly once: the replay window dropped copies
        assert relay.counts["c>s"] >= len(messages)
        assoc.close()
    finally:
        relay.close()
        srv.close()
        await srv.wait_closed()


# -- ClientHello flood -----------------------------------------------------------------------
def client_hellos(count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        engine = DTLSEngine(client_profile())
        engine.start()
        (hello,) = engine.datagrams_to_send()
        out.append(hello)
    return out


async def test_client_hello_flood_from_many_ports_keeps_no_state() -> None:
    srv, _seen = await echo_server()
    hellos = client_hellos(20)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(200)]
    try:
        for i, sock in enumerate(socks):
            sock.setblocking(False)
            sock.sendto(hellos[i % len(hellos)], (HOST, srv.port))
        await asyncio.sleep(0.5)
        answers = 0
        for i, sock in enumerate(socks):
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                continue
            answers += 1
            # Stateless cookie exchange: a HelloVerifyRequest no larger than the request.
            assert is_hello_verify_request(answer)
            assert len(answer) <= len(hellos[i % len(hellos)])
        assert answers == len(socks)
        assert srv.server.peer_count == 0 and srv.server.half_open_count == 0
        assert srv.server.stats.cookies_sent == len(socks)
        # Honest peers are still served.
        assoc = await dtls_connect(client_profile(), HOST, srv.port, timeout=10)
        assert await send_echo(assoc, b"after the flood") == b"after the flood"
        assoc.close()
    finally:
        for sock in socks:
            sock.close()
        srv.close()
        await srv.wait_closed()


async def stalled_handshake(port: int) -> socket.socket:
    """A peer that answers the cookie, then goes silent (a half-open handshake)."""
    engine = DTLSEngine(client_profile())
    engine.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    (hello,) = engine.datagrams_to_send()
    sock.sendto(hello, (HOST, port))
    hvr = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
    engine.receive_datagram(hvr)
    for datagram in engine.datagrams_to_send():
        assert is_client_hello(datagram)
        sock.sendto(datagram, (HOST, port))
    return sock


async def test_half_open_handshakes_are_bounded_and_expire() -> None:
    srv, _seen = await echo_server(max_half_open=8, handshake_timeout=1.5)
    socks = []
    try:
        for _ in range(20):
            socks.append(await stalled_handshake(srv.port))
        server = srv.server
        await wait_until(lambda: server.stats.refused_full == 12, "12 hellos refused, table full")
        assert server.half_open_count == 8
        # The deadline (1.5 s) frees the slots; an honest device gets in afterwards.
        await wait_until(lambda: server.half_open_count == 0, "half-open slots freed", 5.0)
        assert server.peer_count == 0
        assoc = await dtls_connect(client_profile(), HOST, srv.port, timeout=10)
        assert await send_echo(assoc, b"slots free again") == b"slots free again"
        assoc.close()
    finally:
        for sock in socks:
            sock.close()
        srv.close()
        await srv.wait_closed()


async def test_idle_associations_expire() -> None:
    srv, seen = await echo_server(idle_timeout=0.5)
    try:
        assoc = await dtls_connect(client_profile(), HOST, srv.port, timeout=10)
        assert await send_echo(assoc, b"then silence") == b"then silence"
        assert srv.server.peer_count == 1
        await wait_until(lambda: srv.server.peer_count == 0, "idle association evicted", 5.0)
        assert srv.server.stats.expired == 1
        # The server said close_notify on eviction; the client's association ended.
        await asyncio.wait_for(assoc.wait_closed(), 2)
        assert seen.associations[0].closed
    finally:
        srv.close()
        await srv.wait_closed()


# -- loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2])
async def test_five_percent_loss_honest_peers_complete(seed: int) -> None:
    srv, _seen = await echo_server()
    relay = Relay((HOST, srv.port), lossy(0.05, seed))
    port = await relay.start()
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:

        async def device(i: int) -> bytes:
            assoc = await dtls_connect(client_profile(), HOST, port, timeout=30)
            try:
                return await send_echo(assoc, f"device {i}".encode(), timeout=15)
            finally:
                assoc.close()

        tasks = [device(i) for i in range(16)]
        # Garbage beside the honest traffic, straight at the server.
        for _ in range(50):
            junk.sendto(os.urandom(64), (HOST, srv.port))
        results = await asyncio.gather(*tasks)
        assert sorted(results) == sorted(f"device {i}".encode() for i in range(16))
        assert relay.counts["dropped"] >= 1  # the relay really lost datagrams
        assert srv.server.stats.established >= 16
        await asyncio.sleep(0.3)
        # Lost close_notify alerts may leave peers behind until they go idle; nothing else.
        assert srv.server.half_open_count == 0
    finally:
        junk.close()
        relay.close()
        srv.close()
        await srv.wait_closed()


def test_our_hello_verify_request_is_openssls_byte_for_byte() -> None:
    """The server answers cookie-less ClientHellos itself (no OpenSSL connection per
    flooded datagram); the answer must be what ``DTLSv1_listen`` would have sent."""
    from OpenSSL import SSL

    from m2msec.tls.dtls.cookies import PeerState, address_key
    from m2msec.tls.dtls.records import client_hello_cookie, hello_verify_request
    from m2msec.tls.dtls.server import DTLSServer, _drain

    server = DTLSServer(server_profile())
    (hello,) = client_hellos(1)
    addr = (HOST, 5555)
    assert client_hello_cookie(hello) == b""
    ours = hello_verify_request(hello, server.cookie_jar.cookie(address_key(addr)))
    conn = SSL.Connection(server.profile.ssl_context, None)
    conn.set_app_data(PeerState(peer=address_key(addr), jar=server.cookie_jar))
    conn.set_accept_state()
    conn.bio_write(hello)
    with pytest.raises(SSL.WantReadError):
        conn.DTLSv1_listen()
    assert ours == _drain(conn)
    assert len(ours) <= len(hello)
    # Malformed or fragmented ClientHellos are left to OpenSSL's parser.
    assert client_hello_cookie(hello[:40]) is None
    assert client_hello_cookie(hello[:13] + b"\x01\0\0\x10\0\0\0\0\x01" + hello[22:]) is None
