"""Shared helpers for the in-process (D)TLS tests: PSK profiles, credentials, an engine pump.

One copy of what the engine, DTLS, resumption and asyncio tests each used to write
themselves. The profiles are TS-0003 8.2.1's provisioned-PSK roles on the TR-0038 7.1.2
example row, with the 10.2 cipher-suite profiles; programs we did not write are driven
through :mod:`tests.interop`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import h11

from m2msec.frameworks.certificate import CertificateCredential
from m2msec.pki.authority import CertificateAuthority, IssuedCredential
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.dtls.engine import DTLSEngine
from m2msec.tls.dtls.server import DTLSServer, PeerEvent
from m2msec.tls.engine import Event, TLSEngine
from m2msec.tls.profiles import (
    PSK_SUITES_DTLS,
    PSK_SUITES_TLS,
    AsyncPskResolver,
    PskResolver,
    TLSProfile,
    Transport,
    new_context,
)

#: TR-0038 7.1.2's example row (KpsaID, Kpsa: 8 octets, weak on purpose) and its AE.
TR0038_IDENTITY = b"AE123456789012-Light@in.provider.com"
TR0038_KEY = bytes.fromhex("1a2b3c4d5e6f7a8b")
TR0038_AE = "Clight-AE1"
MN_CSE = "/mn-cse-123456"
#: Its CSE public domain name, the SNI a client sends by default (TS-0001 6.5.1.1).
MN_SNI = "mn-cse-123456.in.provider.com"
#: The address a sans-IO DTLS server sees the client at.
DTLS_ADDR = ("127.0.0.1", 40001)


def psk_suites(transport: Transport) -> tuple[str, ...]:
    """The PSK suites of TS-0003 10.2.2 for ``transport``."""
    return PSK_SUITES_DTLS if transport is Transport.DTLS else PSK_SUITES_TLS


def table_resolver(table: Mapping[bytes, bytes], entity: str = TR0038_AE) -> PskResolver:
    """Entity B's lookup in ``table`` (KpsaID -> Kpsa), binding every row to ``entity``."""

    def resolve(identity: bytes) -> tuple[bytes, PeerBinding] | None:
        key = table.get(identity)
        if key is None:
            return None
        return key, PeerBinding(entity, PeerKind.AE, identity.decode())

    return resolve


def psk_server_profile(
    tls13: bool = True,
    suites: tuple[str, ...] | None = None,
    *,
    transport: Transport = Transport.TLS,
    resolver: PskResolver | None = None,
    async_resolver: AsyncPskResolver | None = None,
    framework: Framework = Framework.PROVISIONED_PSK,
    local_id: str = MN_CSE,
    hint: bytes | None = None,
) -> TLSProfile:
    """Entity B; by default it knows only the TR-0038 row."""
    if resolver is None and async_resolver is None:
        resolver = table_resolver({TR0038_IDENTITY: TR0038_KEY})
    return TLSProfile(
        framework=framework,
        transport=transport,
        server_side=True,
        ssl_context=new_context(
            transport, server_side=True, suites=suites or psk_suites(transport), tls13=tls13
        ),
        local_id=local_id,
        psk_resolver=resolver,
        psk_async_resolver=async_resolver,
        psk_hint=hint,
    )


def psk_client_profile(
    identity: bytes = TR0038_IDENTITY,
    key: bytes = TR0038_KEY,
    tls13: bool = True,
    *,
    transport: Transport = Transport.TLS,
    framework: Framework = Framework.PROVISIONED_PSK,
    peer_id: str = MN_CSE,
    server_name: str | None = MN_SNI,
    offers: list[bytes] | None = None,
) -> TLSProfile:
    """Entity A offering ``identity``/``key``; each offer is appended to ``offers``."""

    def offer(hint: bytes | None) -> tuple[bytes, bytes, PeerBinding]:
        if offers is not None:
            offers.append(identity)
        return identity, key, PeerBinding(peer_id, PeerKind.CSE, identity.decode())

    return TLSProfile(
        framework=framework,
        transport=transport,
        server_side=False,
        ssl_context=new_context(
            transport, server_side=False, suites=psk_suites(transport), tls13=tls13
        ),
        psk_offer=offer,
        server_name=server_name,
    )


def credential(ca: CertificateAuthority, issued: IssuedCredential) -> CertificateCredential:
    """``issued`` (certificate and key) with ``ca`` as the only trust anchor."""
    return CertificateCredential(issued.cert_pem, issued.key_pem, ca.cert_pem)


def pump(a: TLSEngine, b: TLSEngine, rounds: int = 20) -> tuple[list[Event], list[Event]]:
    """Move bytes between two stream engines until neither has any; their events."""
    ea: list[Event] = []
    eb: list[Event] = []
    for _ in range(rounds):
        moved = False
        out = a.data_to_send()
        if out:
            b.receive_data(out)
            moved = True
        out = b.data_to_send()
        if out:
            a.receive_data(out)
            moved = True
        ea += a.events()
        eb += b.events()
        if not moved:
            break
    return ea, eb


Trace = list[tuple[str, bytes]]
Drop = Callable[[str, bytes], bool]


class DatagramPump:
    """Moves datagrams between one client engine and a server, losing those ``loss`` picks."""

    def __init__(self, client: DTLSEngine, server: DTLSServer, addr: tuple[str, int] = DTLS_ADDR):
        self.client = client
        self.server = server
        self.addr = addr
        self.loss: Drop | None = None
        self.trace: Trace = []
        self.client_events: list[Event] = []
        self.server_events: list[PeerEvent] = []

    def run(self, drop: Drop | None = None, rounds: int = 20) -> None:
        if drop is not None:
            self.loss = drop
        for _ in range(rounds):
            moved = False
            for d in self.client.datagrams_to_send():
                moved = True
                self.trace.append(("c>s", d))
                if self.loss and self.loss("c>s", d):
                    continue
                self.deliver_to_client(self.server.datagram_received(d, self.addr))
            self.collect()
            if not moved:
                break

    def deliver_to_client(self, answers: list[tuple[bytes, tuple[object, ...]]]) -> None:
        for d, to in answers:
            assert to == self.addr
            self.trace.append(("s>c", d))
            if self.loss and self.loss("s>c", d):
                continue
            self.client.receive_datagram(d)

    def collect(self) -> None:
        self.client_events += self.client.events()
        self.server_events += self.server.events()


async def read_h11_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request, bytes] | None:
    """The next whole request a test backend receives on ``conn``; None once the peer has
    closed (or sent anything but a request)."""
    head: h11.Request | None = None
    body = b""
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(ev, h11.Request):
            head = ev
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage) and head is not None:
            return head, body
        else:
            return None
