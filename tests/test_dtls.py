"""DTLS 1.2 (RFC 6347): the sans-IO engine and server pumped against each other.

No network except the last few tests, which run the asyncio adapters over loopback.
Retransmission tests wait for OpenSSL's real timer (about 1 s each): OpenSSL keeps its
DTLS timer on the wall clock, so it cannot be advanced from outside. Deadlines and idle
expiry use the server's own injectable clock and are tested with a fake one.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from m2msec.errors import ConfigurationError, HandshakeError
from m2msec.tls.aio_dtls import DTLSAssociation, dtls_connect, start_dtls_server
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.dtls.cookies import CookieJar, address_key
from m2msec.tls.dtls.engine import DEFAULT_MTU, DatagramTooLargeError, DTLSEngine
from m2msec.tls.dtls.records import (
    is_client_hello,
    is_hello_verify_request,
    pack_datagrams,
    record_seq,
    split_records,
)
from m2msec.tls.dtls.server import (
    DTLSServer,
    PeerClosed,
    PeerDataReceived,
    PeerFailed,
    PeerHandshakeComplete,
)
from m2msec.tls.dtls.timers import HandshakeTimers
from m2msec.tls.engine import (
    ConnectionClosed,
    DataReceived,
    HandshakeComplete,
    HandshakeFailed,
)
from m2msec.tls.profiles import (
    CERT_SUITES_DTLS,
    CertificatePolicy,
    TLSProfile,
    Transport,
    new_context,
)
from tests.helpers import (
    DTLS_ADDR,
    TR0038_IDENTITY,
    TR0038_KEY,
    DatagramPump,
    Drop,
    psk_client_profile,
    psk_server_profile,
)

IDENTITY = TR0038_IDENTITY
KEY = TR0038_KEY
ADDR = DTLS_ADDR


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# TR-0038's row over DTLS (tests/helpers.py); the client sends no SNI.
server_profile = partial(psk_server_profile, transport=Transport.DTLS)
client_profile = partial(psk_client_profile, transport=Transport.DTLS, server_name=None)


def complete(p: DatagramPump) -> tuple[PeerHandshakeComplete, HandshakeComplete]:
    s = next(e for e in p.server_events if isinstance(e, PeerHandshakeComplete))
    c = next(e for e in p.client_events if isinstance(e, HandshakeComplete))
    return s, c


def handshake(
    mtu: int = DEFAULT_MTU, clock: FakeClock | None = None, **server_kw: object
) -> DatagramPump:
    clock = clock or FakeClock()
    server = DTLSServer(server_profile(), mtu=mtu, clock=clock, **server_kw)  # type: ignore[arg-type]
    client = DTLSEngine(client_profile(), mtu=mtu, clock=clock)
    client.start()
    p = DatagramPump(client, server)
    p.run()
    return p


def wait_for_timer(engine: DTLSEngine) -> float:
    left = engine.connection.DTLSv1_get_timeout()
    assert left is not None, "no retransmission timer running"
    time.sleep(left + 0.02)
    return left


# -- the happy path --------------------------------------------------------------------------
def test_handshake_with_cookie_exchange() -> None:
    p = handshake()
    sdone, cdone = complete(p)
    # RFC 6347 4.2.1: the first answer is a HelloVerifyRequest, then a ClientHello with cookie.
    assert p.trace[0][0] == "c>s" and is_client_hello(p.trace[0][1])
    assert p.trace[1][0] == "s>c" and is_hello_verify_request(p.trace[1][1])
    assert is_client_hello(p.trace[2][1]) and len(p.trace[2][1]) > len(p.trace[0][1])
    assert p.server.stats.cookies_sent == 1 and p.server.stats.cookies_verified == 1
    for ctx in (sdone.context, cdone.context):
        assert ctx.protocol == "DTLSv1.2"
        assert ctx.cipher_suite == "PSK-AES128-CCM8"  # TS-0003 10.2.2 mandatory DTLS suite
    assert sdone.addr == ADDR
    assert sdone.context.peer_id == "Clight-AE1" and sdone.context.peer_kind is PeerKind.AE
    assert sdone.context.key_id == IDENTITY.decode()
    assert cdone.context.peer_id == "/mn-cse-123456"
    assert sdone.context.sa_id == cdone.context.sa_id
    engine = p.server.engine(ADDR)
    assert engine is not None
    label = b"EXPORTER-oneM2M-Connection"
    assert engine.export_keying_material(label, 48) == p.client.export_keying_material(label, 48)
    assert p.server.peer_count == 1 and p.server.half_open_count == 0

    # Application data both ways, one record per message.
    p.client.send(b"hello oneM2M")
    p.client.send(b"second message")
    p.run()
    got = [e.data for e in p.server_events if isinstance(e, PeerDataReceived)]
    assert got == [b"hello oneM2M", b"second message"]
    for d, _ in p.server.send(ADDR, b"reply"):
        p.client.receive_datagram(d)
    p.collect()
    assert DataReceived(b"reply") in p.client_events

    # close_notify ends the association on the server and frees its state.
    p.client.close()
    p.run()
    assert any(isinstance(e, PeerClosed) and e.addr == ADDR for e in p.server_events)
    assert p.server.peer_count == 0


def test_server_close_reaches_client() -> None:
    p = handshake()
    for d, _ in p.server.close(ADDR):
        p.client.receive_datagram(d)
    p.collect()
    assert any(isinstance(e, ConnectionClosed) for e in p.client_events)
    assert p.server.peer_count == 0


def test_gcm_and_cbc_suites_negotiate() -> None:
    for suite in ("PSK-AES128-GCM-SHA256", "PSK-AES128-CBC-SHA256"):
        server = DTLSServer(server_profile(suites=(suite,)))
        client = DTLSEngine(client_profile())
        client.start()
        p = DatagramPump(client, server)
        p.run()
        assert complete(p)[0].context.cipher_suite == suite


# -- cookies and state -----------------------------------------------------------------------
def test_no_per_peer_state_before_the_cookie() -> None:
    server = DTLSServer(server_profile())
    for port in range(50000, 50100):
        client = DTLSEngine(client_profile())
        client.start()
        (hello,) = client.datagrams_to_send()
        (answer,) = server.datagram_received(hello, ("127.0.0.1", port))
        assert is_hello_verify_request(answer[0])
    assert server.peer_count == 0 and server.half_open_count == 0
    assert server.stats.cookies_sent == 100


def test_cookie_is_bound_to_the_address() -> None:
    server = DTLSServer(server_profile())
    client = DTLSEngine(client_profile())
    client.start()
    (hello,) = client.datagrams_to_send()
    ((hvr, _),) = server.datagram_received(hello, ADDR)
    client.receive_datagram(hvr)
    (hello2,) = client.datagrams_to_send()
    # The same cookie from another address (or port) proves nothing: another HVR.
    for other in (("127.0.0.2", ADDR[1]), ("127.0.0.1", ADDR[1] + 1)):
        ((answer, _),) = server.datagram_received(hello2, other)
        assert is_hello_verify_request(answer)
    assert server.peer_count == 0
    out = server.datagram_received(hello2, ADDR)
    assert out and not is_hello_verify_request(out[0][0])
    assert server.peer_count == 1 and server.half_open_count == 1


def test_cookie_jar_rotation() -> None:
    clock = FakeClock(0.0)
    jar = CookieJar(window=60.0, clock=clock)
    peer = address_key(ADDR)
    cookie = jar.cookie(peer)
    assert len(cookie) == 16
    assert jar.verify(peer, cookie)
    assert not jar.verify(address_key(("127.0.0.1", 40002)), cookie)
    assert not jar.verify(peer, cookie[:-1] + bytes([cookie[-1] ^ 1]))
    clock.t = 61.0  # next window: the previous secret is still accepted
    assert jar.verify(peer, cookie)
    assert jar.cookie(peer) != cookie
    clock.t = 121.0  # two windows on: expired
    assert not jar.verify(peer, cookie)
    fresh = jar.cookie(peer)
    clock.t = 1000.0  # a long jump forgets both secrets
    assert not jar.verify(peer, fresh)


def _minimal_client_hello() -> bytes:
    body = (
        b"\xfe\xfd"
        + bytes(32)  # client_version, random
        + b"\x00"  # session_id
        + b"\x00"  # cookie
        + b"\x00\x02\xc0\xa8"  # cipher_suites: TLS_PSK_WITH_AES_128_CCM_8
        + b"\x01\x00"  # compression_methods: null
    )
    n = len(body).to_bytes(3, "big")
    handshake = b"\x01" + n + b"\x00\x00" + b"\x00\x00\x00" + n + body
    return b"\x16\xfe\xff" + bytes(8) + len(handshake).to_bytes(2, "big") + handshake


def test_no_amplification_towards_unverified_addresses() -> None:
    server = DTLSServer(server_profile(), cookie_jar=CookieJar(length=32))
    hellos = [_minimal_client_hello()]
    client = DTLSEngine(client_profile())
    client.start()
    hellos += client.datagrams_to_send()
    for i, hello in enumerate(hellos):
        out = server.datagram_received(hello, ("10.0.0.1", 1000 + i))
        assert len(out) == 1, "one answer per ClientHello"
        assert is_hello_verify_request(out[0][0])
        assert len(out[0][0]) <= len(hello)
    assert server.peer_count == 0


# -- MTU -------------------------------------------------------------------------------------
def test_all_datagrams_fit_a_small_mtu_and_big_messages_are_refused() -> None:
    p = handshake(mtu=300)
    complete(p)
    assert all(len(d) <= 300 for _, d in p.trace)
    engine = p.server.engine(ADDR)
    assert engine is not None
    limit = p.client.max_payload
    assert 0 < limit < 300 and limit == engine.max_payload
    with pytest.raises(DatagramTooLargeError):
        p.client.send(b"x" * (limit + 1))
    with pytest.raises(DatagramTooLargeError):
        p.server.send(ADDR, b"x" * 2000)
    p.client.send(b"y" * limit)
    sent = p.client.datagrams_to_send()
    assert len(sent) == 1 and len(sent[0]) == 300
    p.server.datagram_received(sent[0], ADDR)
    assert [e.data for e in p.server.events() if isinstance(e, PeerDataReceived)] == [b"y" * limit]


def test_mtu_bounds_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        DTLSEngine(client_profile(), mtu=100)
    with pytest.raises(ConfigurationError):
        DTLSServer(server_profile(), mtu=70000)


def _cert(name: str, sans: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    alt = [
        x509.UniformResourceIdentifier(f"//in.provider.com/C{i:04d}-{name}") for i in range(sans)
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _cert_profile(
    server_side: bool,
    own: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    peer: x509.Certificate,
) -> TLSProfile:
    ctx = new_context(Transport.DTLS, server_side=server_side, suites=CERT_SUITES_DTLS)
    ctx.use_certificate(own[0])
    ctx.use_privatekey(own[1])
    store = ctx.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(peer))
    kind = PeerKind.AE if server_side else PeerKind.CSE
    return TLSProfile(
        framework=Framework.CERTIFICATE,
        transport=Transport.DTLS,
        server_side=server_side,
        ssl_context=ctx,
        certificate_policy=CertificatePolicy(bind=lambda der: PeerBinding("peer", kind)),
    )


def test_handshake_messages_larger_than_the_mtu_are_fragmented() -> None:
    server_cert = _cert("mn-cse", sans=20)
    client_cert = _cert("ae", sans=20)
    assert len(server_cert[0].public_bytes(serialization.Encoding.DER)) > 600
    server = DTLSServer(_cert_profile(True, server_cert, client_cert[0]), mtu=300)
    client = DTLSEngine(_cert_profile(False, client_cert, server_cert[0]), mtu=300)
    client.start()
    p = DatagramPump(client, server)
    p.run()
    sdone, _ = complete(p)
    assert sdone.context.cipher_suite == "ECDHE-ECDSA-AES128-CCM8"
    assert all(len(d) <= 300 for _, d in p.trace)
    # The Certificate messages needed several datagrams each way.
    assert sum(1 for way, _ in p.trace if way == "s>c") >= 4
    assert sum(1 for way, _ in p.trace if way == "c>s") >= 4


def test_record_splitting_and_packing() -> None:
    records = [
        bytes([23, 0xFE, 0xFD]) + bytes(8) + n.to_bytes(2, "big") + bytes(n)
        for n in (10, 200, 50, 280, 1)
    ]
    blob = b"".join(records)
    assert split_records(blob) == records
    datagrams = pack_datagrams(records, 300)
    assert b"".join(datagrams) == blob
    assert all(len(d) <= 300 for d in datagrams)
    assert split_records(datagrams[0]) == records[:3]  # 23 + 213 + 63 = 299 fit, + 293 not
    # A record is never split, even if it alone exceeds the MTU.
    big = records[3]
    assert pack_datagrams([big], 256) == [big]


# -- loss and retransmission -----------------------------------------------------------------
def test_openssl_backoff_doubles_from_one_second() -> None:
    client = DTLSEngine(client_profile())
    client.start()
    first = client.datagrams_to_send()
    timeout = client.timeout()
    assert timeout is not None and 0.9 < timeout <= 1.0
    client.handle_timeout()  # not yet due: nothing happens
    assert client.datagrams_to_send() == []
    wait_for_timer(client)
    client.handle_timeout()
    again = client.datagrams_to_send()
    assert len(again) == 1 and is_client_hello(again[0])
    # Same ClientHello, new record sequence number (bytes 5..10 of the header).
    assert again[0][13:] == first[0][13:] and again[0][5:11] != first[0][5:11]
    doubled = client.timeout()
    assert doubled is not None and 1.9 < doubled <= 2.0


def test_lost_server_flight_is_retransmitted_by_the_server_timer() -> None:
    clock = FakeClock()
    server = DTLSServer(server_profile(), clock=clock)
    client = DTLSEngine(client_profile(), clock=clock)
    client.start()
    p = DatagramPump(client, server)
    lost: list[bytes] = []

    def drop_first_server_flight(way: str, d: bytes) -> bool:
        if way == "s>c" and not is_hello_verify_request(d) and not lost:
            lost.append(d)
            return True
        return False

    p.run(drop_first_server_flight)
    assert lost and not p.client_events and server.half_open_count == 1
    due = server.next_timer()
    assert due is not None and due - clock() <= 1.0
    engine = server.engine(ADDR)
    assert engine is not None
    wait_for_timer(engine)
    p.deliver_to_client(server.on_timer())  # the server resends ServerHello..HelloDone
    p.run()
    complete(p)
    # The resent flight differs from the lost one only by its record sequence numbers.
    assert sum(1 for way, d in p.trace if way == "s>c" and d == lost[0]) == 1
    assert server.half_open_count == 0


def test_handshake_timers_keep_one_live_timer_per_peer() -> None:
    """Re-arming or cancelling a timer leaves its old heap entry stale, never due."""
    timers = HandshakeTimers()
    a, b = ("192.0.2.1", 1), ("192.0.2.2", 2)
    timers.arm(a, 5.0)
    timers.arm(b, 3.0)
    timers.arm(b, 9.0)  # re-armed later: the 3.0 entry is stale
    assert timers.next_due() == 5.0
    assert timers.pop_due(6.0) == {a}
    assert timers.pop_due(6.0) == set()  # a popped timer no longer runs
    timers.cancel(b)
    timers.arm(a, None)
    assert timers.next_due() is None and timers.pop_due(100.0) == set()
    for i in range(500):  # many re-arms of one peer keep the heap small
        timers.arm(a, float(i))
    assert len(timers._heap) <= 4 + 64 and timers.pop_due(1000.0) == {a}


def test_lost_final_flight_is_recovered_by_the_client_timer() -> None:
    p = DatagramPump(DTLSEngine(client_profile()), DTLSServer(server_profile()))
    p.client.start()
    dropped: list[bytes] = []

    def drop_ccs_finished(way: str, d: bytes) -> bool:
        # The server's last flight starts with ChangeCipherSpec (content type 20).
        if way == "s>c" and d[0] == 20 and not dropped:
            dropped.append(d)
            return True
        return False

    p.run(drop_ccs_finished)
    assert dropped
    assert any(isinstance(e, PeerHandshakeComplete) for e in p.server_events)
    assert not p.client_events  # the client still waits for the server's Finished
    wait_for_timer(p.client)
    p.client.handle_timeout()  # client resends its flight; the server answers with its own
    p.run()
    complete(p)
    p.client.send(b"after recovery")
    p.run()
    assert PeerDataReceived(ADDR, b"after recovery") in p.server_events


def test_lost_client_hello_is_resent() -> None:
    p = DatagramPump(DTLSEngine(client_profile()), DTLSServer(server_profile()))
    p.client.start()
    p.run(drop=lambda way, d: way == "c>s")
    assert p.server.stats.datagrams_in == 0
    wait_for_timer(p.client)
    p.client.handle_timeout()
    p.loss = None
    p.run()
    complete(p)
    # The HVR echoed ClientHello #1's sequence number (RFC 6347 4.2.1); the server's
    # first stateful record continues from the verified ClientHello #2, so the client's
    # replay window does not mistake the ServerHello for a replay of the HVR.
    hvr = next(d for way, d in p.trace if way == "s>c")
    hello2, server_hello = (d for _, d in p.trace[3:5])
    assert is_hello_verify_request(hvr) and record_seq(hvr) == 1
    assert is_client_hello(hello2) and record_seq(server_hello) == record_seq(hello2) == 2


# -- deadlines, bounds, expiry ---------------------------------------------------------------
def test_handshake_deadline_fails_both_sides() -> None:
    clock = FakeClock()
    server = DTLSServer(server_profile(), clock=clock, handshake_timeout=5.0)
    client = DTLSEngine(client_profile(), clock=clock, handshake_timeout=5.0)
    client.start()
    p = DatagramPump(client, server)
    p.run(drop=lambda way, d: way == "c>s" and not is_client_hello(d))  # ClientKeyExchange lost
    assert server.half_open_count == 1
    clock.t += 5.0
    due = server.next_timer()
    assert due is not None and due <= clock()
    assert server.on_timer() == []
    (failed,) = [e for e in server.events() if isinstance(e, PeerFailed)]
    assert failed.reason.startswith("DTLS handshake timed out") and failed.addr == ADDR
    assert server.peer_count == 0 and server.half_open_count == 0
    assert client.timeout() == 0.0
    client.handle_timeout()
    (cfail,) = client.events()
    assert isinstance(cfail, HandshakeFailed) and cfail.reason.startswith(
        "DTLS handshake timed out"
    )
    assert client.failed and client.timeout() is None


def test_wrong_psk_fails_without_leaking_keys() -> None:
    clock = FakeClock()
    server = DTLSServer(server_profile(), clock=clock)
    wrong = bytes.fromhex("ffffffffffffffff")
    client = DTLSEngine(client_profile(key=wrong), clock=clock)
    client.start()
    p = DatagramPump(client, server)
    p.run()
    # DTLS discards a Finished that fails to authenticate, without an alert (RFC 6347
    # 4.1.2.7): nothing completes, and the deadline turns that into a failure.
    assert not any(isinstance(e, HandshakeComplete) for e in p.client_events)
    assert not any(isinstance(e, PeerHandshakeComplete) for e in p.server_events)
    clock.t += 31.0
    server.on_timer()
    client.handle_timeout()
    p.collect()
    reasons = [
        e.reason
        for e in p.server_events + p.client_events
        if isinstance(e, (PeerFailed, HandshakeFailed))
    ]
    assert len(reasons) == 2
    for r in reasons:
        assert r == "DTLS handshake timed out (wrong PSK?)"
        assert "ffffffff" not in r and "1a2b3c4d" not in r
    with pytest.raises(HandshakeError):
        client.send(b"x")


def test_unknown_identity_is_refused_at_once() -> None:
    client = DTLSEngine(client_profile(identity=b"nobody@in.provider.com"))
    client.start()
    p = DatagramPump(client, DTLSServer(server_profile()))
    p.run()
    (failed,) = [e for e in p.server_events if isinstance(e, PeerFailed)]
    assert "nobody@in.provider.com" in failed.reason
    assert any(isinstance(e, HandshakeFailed) for e in p.client_events)  # the alert arrived
    assert p.server.peer_count == 0


def test_half_open_bound() -> None:
    server = DTLSServer(server_profile(), max_half_open=2)
    pumps: list[DatagramPump] = []
    for i in range(3):
        client = DTLSEngine(client_profile())
        client.start()
        pumps.append(DatagramPump(client, server, ("127.0.0.1", 41000 + i)))
    # Each client gets its cookie; server state fills up with the verified ClientHellos.
    hellos = []
    for p in pumps:
        (hello,) = p.client.datagrams_to_send()
        p.deliver_to_client(p.server.datagram_received(hello, p.addr))
        (hello2,) = p.client.datagrams_to_send()
        hellos.append(hello2)
    assert server.peer_count == 0
    pumps[0].deliver_to_client(server.datagram_received(hellos[0], pumps[0].addr))
    pumps[1].deliver_to_client(server.datagram_received(hellos[1], pumps[1].addr))
    assert server.datagram_received(hellos[2], pumps[2].addr) == []  # refused: full
    assert server.half_open_count == 2 and server.stats.refused_full == 1
    # A finished handshake frees its slot; the third client's retransmission then works.
    pumps[0].run()
    complete(pumps[0])
    assert server.half_open_count == 1
    third = pumps[2]
    third.deliver_to_client(server.datagram_received(hellos[2], third.addr))
    third.run()
    complete(third)
    assert server.half_open_count == 1 and server.peer_count == 3


def test_max_peers_bound() -> None:
    server = DTLSServer(server_profile(), max_peers=1)
    first = DatagramPump(DTLSEngine(client_profile()), server, ("127.0.0.1", 42000))
    first.client.start()
    first.run()
    complete(first)
    second = DatagramPump(DTLSEngine(client_profile()), server, ("127.0.0.1", 42001))
    second.client.start()
    second.run()
    assert not second.client_events and server.peer_count == 1
    assert server.stats.refused_full == 1


def test_idle_peers_are_evicted() -> None:
    clock = FakeClock()
    p = handshake(clock=clock, idle_timeout=60.0)
    complete(p)
    due = p.server.next_timer()
    assert due == pytest.approx(clock() + 60.0)
    clock.t += 30.0
    p.client.send(b"keepalive")
    p.run()
    assert p.server.on_timer() == []  # activity moved the deadline
    clock.t += 59.0
    assert p.server.expire() == []
    clock.t += 1.0
    out = p.server.on_timer()
    assert len(out) == 1  # close_notify
    p.client.receive_datagram(out[0][0])
    p.collect()
    assert PeerClosed(ADDR, "idle timeout") in p.server_events
    assert any(isinstance(e, ConnectionClosed) for e in p.client_events)
    assert p.server.peer_count == 0 and p.server.next_timer() is None
    assert p.server.stats.expired == 1


def test_new_client_hello_replaces_an_established_association() -> None:
    p = handshake()
    old_sa = complete(p)[0].context.sa_id
    # The client rebooted and lost its state; same address, new handshake (RFC 6347 4.2.8).
    restarted = DatagramPump(DTLSEngine(client_profile()), p.server)
    restarted.client.start()
    restarted.run()
    assert is_hello_verify_request(restarted.trace[1][1])
    new = complete(restarted)[0]
    assert new.context.sa_id != old_sa
    closed = restarted.server_events.index(PeerClosed(ADDR, "replaced by a new handshake"))
    assert closed < restarted.server_events.index(new)  # the adapter relies on this order
    assert p.server.peer_count == 1 and p.server.half_open_count == 0
    restarted.client.send(b"on the new association")
    restarted.run()
    assert PeerDataReceived(ADDR, b"on the new association") in restarted.server_events


def test_replayed_client_hello_does_not_disturb_an_association() -> None:
    clock = FakeClock()
    p = handshake(clock=clock)
    complete(p)
    verified_hello = p.trace[2][1]  # ClientHello with a cookie that is still valid
    assert is_client_hello(verified_hello)
    # An unverified ClientHello from the peer's address only gets a HelloVerifyRequest.
    stranger = DTLSEngine(client_profile())
    stranger.start()
    (hello,) = stranger.datagrams_to_send()
    ((answer, _),) = p.server.datagram_received(hello, ADDR)
    assert is_hello_verify_request(answer)
    # A replay of the verified one starts a handshake beside the association...
    flight = p.server.datagram_received(verified_hello, ADDR)
    assert flight
    p.deliver_to_client(flight)  # the real client ignores a ServerHello it did not ask for
    p.collect()
    assert not p.client.failed
    assert p.server.half_open_count == 1 and p.server.peer_count == 1
    # ...which keeps working meanwhile...
    p.client.send(b"still here")
    p.run()
    assert PeerDataReceived(ADDR, b"still here") in p.server_events
    for d, _ in p.server.send(ADDR, b"and so am I"):
        p.client.receive_datagram(d)
    p.collect()
    assert DataReceived(b"and so am I") in p.client_events
    # ...and outlives it: the replayer cannot finish the handshake.
    clock.t += 31.0
    p.server.on_timer()
    p.collect()
    assert any(isinstance(e, PeerFailed) for e in p.server_events)
    assert not any(isinstance(e, PeerClosed) for e in p.server_events)
    assert p.server.half_open_count == 0 and p.server.peer_count == 1
    p.client.send(b"after the replay")
    p.run()
    assert PeerDataReceived(ADDR, b"after the replay") in p.server_events


# -- hostile input ---------------------------------------------------------------------------
def test_garbage_datagrams_are_dropped() -> None:
    p = handshake()
    complete(p)
    server = p.server
    rng = random.Random(6347)
    samples = [
        b"",
        b"\x16",
        b"hello",
        bytes(13),
        b"\x16\xfe\xfd" + bytes(10) + b"\x00\x30" + bytes(5),
    ]
    for n in range(300):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
        if n % 2:  # half of them look like an epoch-0 ClientHello record, past the sniff test
            blob = b"\x16\xfe\xfd\x00\x00" + blob[5:13].ljust(8, b"\x00") + b"\x01" + blob[14:]
        samples.append(blob)
    hello = DTLSEngine(client_profile())
    hello.start()
    (real,) = hello.datagrams_to_send()
    samples += [real[:40], real[:-5], real[:14] + bytes(len(real) - 14)]
    for i, blob in enumerate(samples):
        for answer, _ in server.datagram_received(blob, ("192.0.2.1", 1000 + i)):
            assert is_hello_verify_request(answer) and len(answer) <= len(blob)
        server.datagram_received(blob, ADDR)  # also aimed at the established peer
    assert server.peer_count == 1 and server.half_open_count == 0
    assert not [e for e in server.events() if isinstance(e, (PeerFailed, PeerClosed))]
    # The established association still works.
    p.client.send(b"survived")
    p.run()
    assert PeerDataReceived(ADDR, b"survived") in p.server_events


def test_garbage_from_unknown_addresses_keeps_no_state() -> None:
    server = DTLSServer(server_profile())
    rng = random.Random(1)
    for i in range(200):
        blob = b"\x16\xfe\xfd\x00\x00" + bytes(
            rng.getrandbits(8) for _ in range(rng.randint(8, 300))
        )
        blob = blob[:13] + b"\x01" + blob[14:]
        for data, _ in server.datagram_received(blob, ("198.51.100.7", 2000 + i)):
            assert len(data) <= len(blob)
    assert server.peer_count == 0 and server.half_open_count == 0
    assert server.stats.dropped + server.stats.cookies_sent == 200


def test_profiles_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        DTLSServer(client_profile())
    tls = TLSProfile(
        framework=Framework.PROVISIONED_PSK,
        transport=Transport.TLS,
        server_side=False,
        ssl_context=new_context(Transport.TLS, server_side=False, suites=("PSK-AES128-CCM8",)),
    )
    with pytest.raises(ConfigurationError):
        DTLSEngine(tls)
    used = server_profile()
    SSL.Connection(used.ssl_context, None)
    with pytest.raises(ConfigurationError):
        DTLSServer(used)
    client = DTLSEngine(client_profile())
    with pytest.raises(HandshakeError):
        client.send(b"too early")


def test_one_profile_serves_two_servers() -> None:
    profile = server_profile()
    a, b = DTLSServer(profile), DTLSServer(profile)
    for server in (a, b):
        client = DTLSEngine(client_profile())
        client.start()
        p = DatagramPump(client, server)
        p.run()
        complete(p)


# -- asyncio adapters over loopback ----------------------------------------------------------
async def _echo(assoc: DTLSAssociation) -> None:
    while message := await assoc.recv():
        assoc.send(message)


async def test_asyncio_echo_over_loopback() -> None:
    seen: list[DTLSAssociation] = []

    async def handler(assoc: DTLSAssociation) -> None:
        seen.append(assoc)
        await _echo(assoc)

    async with await start_dtls_server(server_profile(), "127.0.0.1", 0, handler) as srv:
        assoc = await dtls_connect(client_profile(), "127.0.0.1", srv.port, timeout=5)
        assert assoc.context.protocol == "DTLSv1.2"
        assert assoc.context.cipher_suite == "PSK-AES128-CCM8"
        for msg in (b"one", b"two", b"x" * assoc.max_payload):
            assoc.send(msg)
            assert await asyncio.wait_for(assoc.recv(), 5) == msg
        with pytest.raises(DatagramTooLargeError):
            assoc.send(b"x" * (assoc.max_payload + 1))
        (server_side,) = seen
        assert server_side.context.peer_id == "Clight-AE1"
        assert server_side.peer_address[0] == "127.0.0.1"
        label = b"EXPORTER-oneM2M-Connection"
        assert server_side.export_keying_material(label, 48) == assoc.export_keying_material(
            label, 48
        )
        assoc.close()
        assert await assoc.recv() == b""
        with pytest.raises(ConnectionResetError):
            assoc.send(b"late")
        await asyncio.wait_for(server_side.wait_closed(), 5)
        assert srv.server.peer_count == 0


async def test_asyncio_server_close_ends_client_association() -> None:
    async def handler(assoc: DTLSAssociation) -> None:
        assoc.send(b"welcome")
        assoc.close()

    async with await start_dtls_server(server_profile(), "127.0.0.1", 0, handler) as srv:
        assoc = await dtls_connect(client_profile(), "127.0.0.1", srv.port, timeout=5)
        assert await asyncio.wait_for(assoc.recv(), 5) == b"welcome"
        assert await asyncio.wait_for(assoc.recv(), 5) == b""
        assert assoc.closed


async def test_asyncio_wrong_psk_raises_handshake_error() -> None:
    failures: list[str] = []
    async with await start_dtls_server(
        server_profile(),
        "127.0.0.1",
        0,
        _echo,
        handshake_timeout=1.5,
        on_failure=lambda addr, reason: failures.append(reason),
    ) as srv:
        with pytest.raises(HandshakeError, match="timed out"):
            await dtls_connect(client_profile(key=bytes(8)), "127.0.0.1", srv.port, timeout=1.5)
        with pytest.raises(HandshakeError, match="unknown psk identity"):
            await dtls_connect(client_profile(identity=b"nobody"), "127.0.0.1", srv.port, timeout=5)
        for _ in range(50):
            if len(failures) >= 2:
                break
            await asyncio.sleep(0.1)
        assert any("timed out" in f for f in failures) and any("nobody" in f for f in failures)


async def test_asyncio_connect_times_out_without_server() -> None:
    t0 = time.monotonic()
    with pytest.raises(HandshakeError, match="timed out"):
        await dtls_connect(client_profile(), "127.0.0.1", 9, timeout=1.2)
    assert time.monotonic() - t0 < 3.0


class _LossyProxy(asyncio.DatagramProtocol):
    """Forwards one client's datagrams to a server, dropping those ``drop`` picks."""

    def __init__(self, server: tuple[str, int], drop: Drop) -> None:
        self.server = server
        self.drop = drop
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.server:
            way, to = "s>c", self.client
        else:
            self.client = addr
            way, to = "c>s", self.server
        if self.drop(way, data):
            self.dropped += 1
        elif to is not None:
            self.transport.sendto(data, to)


async def test_asyncio_retransmits_lost_flights() -> None:
    lost: set[str] = set()

    def drop_once(way: str, d: bytes) -> bool:
        # Lose the client's first ClientHello and the server's first stateful flight.
        kind = "hello" if way == "c>s" and is_client_hello(d) else way
        if kind in ("hello", "s>c") and kind not in lost and not is_hello_verify_request(d):
            lost.add(kind)
            return True
        return False

    async with await start_dtls_server(server_profile(), "127.0.0.1", 0, _echo) as srv:
        loop = asyncio.get_running_loop()
        transport, proxy = await loop.create_datagram_endpoint(
            lambda: _LossyProxy(("127.0.0.1", srv.port), drop_once), local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            t0 = time.monotonic()
            assoc = await dtls_connect(client_profile(), "127.0.0.1", port, timeout=10)
            assert 1.0 <= time.monotonic() - t0 < 5.0  # at least one 1-s retransmission
            assert proxy.dropped == 2
            assoc.send(b"through the lossy path")
            assert await asyncio.wait_for(assoc.recv(), 5) == b"through the lossy path"
            assoc.close()
        finally:
            transport.close()
