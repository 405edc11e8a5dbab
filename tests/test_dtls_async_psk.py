"""Asynchronous PSK resolution over DTLS: the responder waits for the MAF or the BSF.

MAF- and GBA-based associations (TS-0003 8.3, 8.5) learn Kpsa only after a network round
trip. Over TLS, :mod:`m2msec.tls.aio` runs that lookup; these tests check that
:class:`~m2msec.tls.dtls.server.DTLSServer` and the asyncio listener do the same over DTLS, with
our own initiator as the peer (the resolver below stands in for the MAF: no real one
answers on a datagram socket in the test).
"""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from m2msec.errors import HandshakeError
from m2msec.tls.aio_dtls import DTLSAssociation, dtls_connect, start_dtls_server
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.dtls.engine import DTLSEngine
from m2msec.tls.dtls.server import (
    DTLSServer,
    PeerEvent,
    PeerFailed,
    PeerHandshakeComplete,
    PeerPskLookupNeeded,
)
from m2msec.tls.engine import HandshakeComplete
from m2msec.tls.profiles import Transport
from tests.helpers import DatagramPump, psk_client_profile, psk_server_profile

IDENTITY = b"0123456789abcdef0123456789abcdef@maf.provider.com"
KEY = bytes(range(16))
ADDR = ("127.0.0.1", 40009)


async def _resolve(identity: bytes, cipher: int | None) -> tuple[bytes, PeerBinding] | None:
    await asyncio.sleep(0.01)
    if identity == b"refuse-me@maf.provider.com":
        raise HandshakeError("refused by the test resolver")
    if identity != IDENTITY:
        return None
    return KEY, PeerBinding("Csmartphone", PeerKind.AE, identity.decode())


# A MAF-style Entity B whose lookup answers later (tests/helpers.py profiles).
server_profile = partial(
    psk_server_profile,
    transport=Transport.DTLS,
    framework=Framework.MAF,
    local_id="/id-in",
    async_resolver=_resolve,
)
client_profile = partial(
    psk_client_profile,
    identity=IDENTITY,
    key=KEY,
    transport=Transport.DTLS,
    framework=Framework.MAF,
    peer_id="/id-in",
    server_name=None,
)


def _pump(client: DTLSEngine, server: DTLSServer) -> list[PeerEvent]:
    """Move datagrams both ways until quiet; returns the server's events."""
    p = DatagramPump(client, server, ADDR)
    p.run()
    return p.server_events


async def test_sans_io_server_asks_and_completes_after_the_answer() -> None:
    server = DTLSServer(server_profile())
    client = DTLSEngine(client_profile())
    client.start()
    events = _pump(client, server)
    asks = [e for e in events if isinstance(e, PeerPskLookupNeeded)]
    assert [(e.addr, e.identity) for e in asks] == [(ADDR, IDENTITY)]
    assert asks[0].cipher_suite == 0xC0A8  # TLS_PSK_WITH_AES_128_CCM_8, from our ServerHello
    assert not client.handshake_done and server.half_open_count == 1
    answer = await _resolve(asks[0].identity, asks[0].cipher_suite)
    for d, _ in server.provide_psk(ADDR, IDENTITY, answer):
        client.receive_datagram(d)
    done = [e for e in server.events() if isinstance(e, PeerHandshakeComplete)]
    assert len(done) == 1 and done[0].context.peer_id == "Csmartphone"
    assert any(isinstance(e, HandshakeComplete) for e in client.events())
    assert server.half_open_count == 0
    # A late second answer for the same identity changes nothing.
    assert server.provide_psk(ADDR, IDENTITY, answer) == []


async def test_sans_io_refusal_fails_the_handshake() -> None:
    server = DTLSServer(server_profile())
    client = DTLSEngine(client_profile(identity=b"refuse-me@maf.provider.com"))
    client.start()
    events = _pump(client, server)
    ask = next(e for e in events if isinstance(e, PeerPskLookupNeeded))
    server.provide_psk(ADDR, ask.identity, HandshakeError("refused by the test resolver"))
    failed = [e for e in server.events() if isinstance(e, PeerFailed)]
    assert len(failed) == 1 and "refused by the test resolver" in failed[0].reason
    assert server.peer_count == 0


async def test_asyncio_listener_resolves_over_dtls() -> None:
    async def echo(assoc: DTLSAssociation) -> None:
        while data := await assoc.recv():
            assoc.send(assoc.context.peer_id.encode() + b":" + data)

    failures: list[str] = []
    async with await start_dtls_server(
        server_profile(), "127.0.0.1", 0, echo, on_failure=lambda a, r: failures.append(r)
    ) as handle:
        assoc = await dtls_connect(client_profile(), "127.0.0.1", handle.port, timeout=5)
        assoc.send(b"ping")
        assert await asyncio.wait_for(assoc.recv(), 5) == b"Csmartphone:ping"
        assoc.close()
        with pytest.raises(HandshakeError):
            await dtls_connect(
                client_profile(identity=b"refuse-me@maf.provider.com"),
                "127.0.0.1",
                handle.port,
                timeout=2,
            )
        for _ in range(50):
            if failures:
                break
            await asyncio.sleep(0.02)
        assert any("refused by the test resolver" in r for r in failures)
