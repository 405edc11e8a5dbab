"""The TLS engine as seed 003's SA services need it: real handshakes, pumped in memory.

``SecurityContext.key_fingerprint`` names the key without revealing it: the same on both
ends for a PSK (Kpsa, or a MAF Kc fetched asynchronously), the peer's certificate for a
certificate session, kept across resumption. ``HandshakeFailed.no_common_parameters``
gives the Cause of rejection. ``TLSEngine.refuse`` ends an SA the Responder Agent refused,
and ``forget_session`` makes a removed SA's session unresumable. The management
(m2msec.sa.management) is driven from these real engines, and from ``openssl s_client``
as a real Initiator (its exporter gives the same SA identifier), at the end.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from m2msec.crypto.fingerprint import key_fingerprint
from m2msec.errors import HandshakeError
from m2msec.frameworks.certificate import CertificateInitiator, CertificateResponder
from m2msec.pki.authority import CertificateAuthority
from m2msec.pki.names import certificate_fingerprint
from m2msec.sa.agent import AcceptAll, refuse
from m2msec.sa.flows import CauseOfRejection, InitiateSaReceived, InitiateSaReceivedConfirm
from m2msec.sa.management import InitiatorSaManagement, MemorySink, ResponderSaManagement
from m2msec.sa.records import SaId, SaState
from m2msec.tls.context import PeerBinding, PeerKind, SecurityContext
from m2msec.tls.engine import (
    ConnectionClosed,
    Event,
    HandshakeComplete,
    HandshakeFailed,
    PskLookupNeeded,
    TLSEngine,
)
from m2msec.tls.profiles import TLSProfile, Transport, new_context
from m2msec.tls.resumption import enable_resumption
from m2msec.tls.sessions import ClientSession, ClientSessionCache
from tests.helpers import (
    TR0038_IDENTITY,
    TR0038_KEY,
    credential,
    psk_client_profile,
    psk_server_profile,
    pump,
    table_resolver,
)

OTHER_IDENTITY = b"AE123456789012-Lamp@in.provider.com"
OTHER_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def handshake(
    client: TLSProfile, server: TLSProfile, session: ClientSession | None = None
) -> tuple[TLSEngine, TLSEngine, list[Event], list[Event]]:
    c, s = TLSEngine(client, session=session), TLSEngine(server)
    c.start()
    ec, es = pump(c, s, rounds=30)
    return c, s, ec, es


def done(events: list[Event]) -> SecurityContext:
    return next(e.context for e in events if isinstance(e, HandshakeComplete))


def _assert_reveals_nothing(fingerprint: str | None, key: bytes) -> None:
    assert fingerprint is not None and len(fingerprint) == 16
    assert key.hex() not in fingerprint and fingerprint not in key.hex()
    assert bytes.fromhex(fingerprint) != key[:8]


@pytest.mark.parametrize("tls13", [True, False])
def test_psk_handshake_fills_the_same_fingerprint_on_both_ends(tls13: bool) -> None:
    _, _, ec, es = handshake(psk_client_profile(tls13=tls13), psk_server_profile(tls13))
    sctx, cctx = done(es), done(ec)
    assert sctx.key_fingerprint == cctx.key_fingerprint == key_fingerprint(TR0038_KEY)
    _assert_reveals_nothing(sctx.key_fingerprint, TR0038_KEY)
    assert TR0038_KEY.hex() not in repr(sctx) and TR0038_KEY.hex() not in repr(cctx)
    # Another key, another fingerprint.
    table = {TR0038_IDENTITY: TR0038_KEY, OTHER_IDENTITY: OTHER_KEY}
    _, _, ec2, es2 = handshake(
        psk_client_profile(OTHER_IDENTITY, OTHER_KEY, tls13),
        psk_server_profile(tls13, resolver=table_resolver(table)),
    )
    assert done(es2).key_fingerprint == done(ec2).key_fingerprint == key_fingerprint(OTHER_KEY)
    assert done(es2).key_fingerprint != sctx.key_fingerprint


def test_dtls_psk_handshake_fingerprint() -> None:
    from m2msec.tls.dtls.engine import DTLSEngine
    from m2msec.tls.dtls.server import DTLSServer, PeerHandshakeComplete
    from tests.helpers import DatagramPump

    server = DTLSServer(psk_server_profile(False, transport=Transport.DTLS))
    client = DTLSEngine(psk_client_profile(tls13=False, transport=Transport.DTLS))
    run = DatagramPump(client, server)
    client.start()
    run.run(rounds=30)
    sctx = next(e.context for e in run.server_events if isinstance(e, PeerHandshakeComplete))
    cctx = next(e.context for e in run.client_events if isinstance(e, HandshakeComplete))
    assert sctx.protocol == "DTLSv1.2"
    assert sctx.key_fingerprint == cctx.key_fingerprint == key_fingerprint(TR0038_KEY)


@pytest.mark.parametrize("tls13", [True, False])
def test_async_resolved_kc_is_fingerprinted_alike(tls13: bool) -> None:
    # The MAF path: Entity B fetches Kc by KcId before OpenSSL's PSK callback runs.
    kc_id = b"0123456789abcdef0123456789abcdef@maf.provider.com"
    kc = bytes(range(32))

    async def never(identity: bytes, suite: int | None) -> tuple[bytes, PeerBinding] | None:
        raise AssertionError("answered through provide_psk")

    from m2msec.tls.context import Framework

    server = TLSEngine(
        psk_server_profile(tls13, framework=Framework.MAF, local_id="/id-in", async_resolver=never)
    )
    client = TLSEngine(psk_client_profile(kc_id, kc, tls13, framework=Framework.MAF))
    client.start()
    _, es = pump(client, server)
    (lookup,) = [e for e in es if isinstance(e, PskLookupNeeded)]
    server.provide_psk(lookup.identity, (kc, PeerBinding("Csmartphone", PeerKind.AE, "k")))
    ec, es = pump(client, server)
    assert done(es).key_fingerprint == done(ec).key_fingerprint == key_fingerprint(kc)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(
        tmp_path_factory.mktemp("pki") / "ca", domain="in.provider.com"
    )


@pytest.mark.parametrize("tls13", [True, False])
def test_certificate_session_fingerprints_the_peer_certificate(
    ca: CertificateAuthority, tls13: bool
) -> None:
    mn = credential(ca, ca.issue("/mn-cse-123456"))
    ae = credential(ca, ca.issue("/mn-cse-123456/Clight-AE1"))
    responder = CertificateResponder(mn, in_domain="in.provider.com")
    initiator = CertificateInitiator(ae, "/mn-cse-123456", in_domain="in.provider.com")
    _, _, ec, es = handshake(initiator.profile(tls13=tls13), responder.profile(tls13=tls13))
    sctx, cctx = done(es), done(ec)
    # Each side names the certificate that authenticated its peer (public: shown whole).
    assert sctx.key_fingerprint == certificate_fingerprint(ae.certificate) == ae.fingerprint
    assert cctx.key_fingerprint == certificate_fingerprint(mn.certificate)
    assert sctx.key_fingerprint != cctx.key_fingerprint


def test_fingerprint_survives_tls12_resumption_on_both_ends() -> None:
    server = enable_resumption(psk_server_profile(False))
    cache = ClientSessionCache()
    client = dataclasses.replace(psk_client_profile(tls13=False), client_sessions=cache)
    c, _, ec, es = handshake(client, server)
    first = done(es)
    assert c.session is not None
    cache.put(
        "mn", c.session, PeerBinding("/mn-cse-123456", PeerKind.CSE), done(ec).key_fingerprint
    )
    offered = cache.get("mn")
    assert offered is not None and offered.key_fingerprint == first.key_fingerprint
    _, _, ec2, es2 = handshake(client, server, session=offered)
    again, cagain = done(es2), done(ec2)
    assert again.resumed and cagain.resumed and again.sa_id != first.sa_id
    assert again.key_fingerprint == cagain.key_fingerprint == key_fingerprint(TR0038_KEY)


def test_no_common_parameters_is_told_apart_from_a_refusal() -> None:
    server = psk_server_profile(False, suites=("PSK-AES128-CCM8",))
    client = dataclasses.replace(
        psk_client_profile(tls13=False),
        ssl_context=new_context(
            Transport.TLS, server_side=False, suites=("PSK-AES128-CBC-SHA256",), tls13=False
        ),
    )
    _, _, ec, es = handshake(client, server)
    (failed,) = [e for e in es if isinstance(e, HandshakeFailed)]
    assert failed.no_common_parameters and "no shared cipher" in failed.reason
    # An unknown credential or a wrong key is a refusal, not a mismatch.
    for profile in (
        psk_client_profile(b"nobody@in.provider.com", TR0038_KEY, False),
        psk_client_profile(TR0038_IDENTITY, OTHER_KEY, False),
    ):
        _, _, ec, es = handshake(profile, psk_server_profile(False))
        (failed,) = [e for e in es if isinstance(e, HandshakeFailed)]
        assert not failed.no_common_parameters
        (client_failed,) = [e for e in ec if isinstance(e, HandshakeFailed)]
        assert not client_failed.no_common_parameters


@pytest.mark.parametrize("tls13", [True, False])
def test_refuse_ends_the_session_with_close_notify(tls13: bool) -> None:
    c, s, _, _ = handshake(psk_client_profile(tls13=tls13), psk_server_profile(tls13))
    assert s.handshake_done and c.handshake_done
    s.refuse("refused by the Responder Agent")
    assert s.refused == "refused by the Responder Agent" and s.failed
    with pytest.raises(HandshakeError):
        s.send(b"anything")
    ec, _es = pump(c, s)
    assert ConnectionClosed(close_notify=True) in ec
    with pytest.raises(HandshakeError):
        c.send(b"late")
    with pytest.raises(HandshakeError, match="established"):
        TLSEngine(psk_server_profile(tls13)).refuse("too early")


def _resumable_pair(tls13: bool) -> tuple[TLSProfile, TLSProfile]:
    server = enable_resumption(psk_server_profile(tls13))
    client = psk_client_profile(tls13=tls13)
    return client, server


@pytest.mark.parametrize("how", ["refuse", "forget_session"])
@pytest.mark.parametrize("tls13", [True, False])
def test_a_refused_or_removed_sa_does_not_come_back_by_resumption(tls13: bool, how: str) -> None:
    client, server = _resumable_pair(tls13)
    cache = server.session_cache
    assert cache is not None
    # Control: an ordinary session does resume.
    c, s, _, _ = handshake(client, server)
    c.close()
    pump(c, s)
    assert c.session is not None
    session = ClientSession(c.session, PeerBinding("/mn-cse-123456", PeerKind.CSE), 0.0)
    _, _, _, es_again = handshake(client, server, session=session)
    assert done(es_again).resumed
    # Now the SA is refused (or removed): its session (TLS 1.2) or tickets (TLS 1.3) go.
    c, s, _ec, _es = handshake(client, server)
    recorded = len(cache)
    getattr(s, how)(*(["refused"] if how == "refuse" else []))
    pump(c, s)
    assert len(cache) < recorded
    assert c.session is not None
    session = ClientSession(c.session, PeerBinding("/mn-cse-123456", PeerKind.CSE), 0.0)
    _, _, _, es_back = handshake(client, server, session=session)
    back = done(es_back)  # a full handshake, with every check of the framework
    assert not back.resumed


def test_client_forget_session_drops_it_from_the_client_cache() -> None:
    server = enable_resumption(psk_server_profile(False))
    cache = ClientSessionCache()
    client = dataclasses.replace(psk_client_profile(tls13=False), client_sessions=cache)
    c, _, _ec, _ = handshake(client, server)
    assert c.session is not None
    cache.put(("mn", 443, None), c.session, PeerBinding("/mn-cse-123456", PeerKind.CSE))
    cache.put(("mn-alias", 443, None), c.session, PeerBinding("/mn-cse-123456", PeerKind.CSE))
    assert len(cache) == 2
    c.forget_session()
    assert len(cache) == 0


# -- the management driven by real engines -------------------------------------------------
class Refusing(AcceptAll):
    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.asked: list[InitiateSaReceived] = []

    def initiate_sa_received(self, flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
        self.asked.append(flow)
        if flow.initiator_id.entity_id == self.refused:
            return refuse(flow)
        return super().initiate_sa_received(flow)


@pytest.mark.parametrize("tls13", [True, False])
def test_management_on_real_handshakes(tls13: bool) -> None:
    sink = MemorySink()
    agent = Refusing("Clight-AE2")
    responder = ResponderSaManagement(agent, sink)
    initiator = InitiatorSaManagement(sink=sink)
    table = {TR0038_IDENTITY: TR0038_KEY, OTHER_IDENTITY: OTHER_KEY}

    # Admitted: one SA identifier, one key fingerprint, both sides.
    c, s, ec, es = handshake(
        psk_client_profile(tls13=tls13), psk_server_profile(tls13, resolver=table_resolver(table))
    )
    admission = responder.on_handshake_complete(done(es))
    establishment = initiator.on_handshake_complete(done(ec))
    assert admission.admitted and establishment.refusal is None
    assert admission.sa_id == establishment.sa_id == SaId.from_hex(done(es).sa_id)
    assert admission.record.key_fingerprint == establishment.record.key_fingerprint
    assert agent.asked[0].sa_id == admission.sa_id
    # Removed on both sides: close_notify, and the peer's management sees its SA Removal.
    outcome = responder.remove(admission.sa_id, "operator", both_sides=True)
    assert outcome.close_session and outcome.evict_session
    s.forget_session()
    s.close()
    ec, _ = pump(c, s)
    assert ConnectionClosed(close_notify=True) in ec
    removal = initiator.on_sa_removal(establishment.sa_id)
    assert removal.accepted
    assert initiator.get(establishment.sa_id) is None

    # Refused by the Responder Agent: the engine ends the session.
    c, s, ec, es = handshake(
        psk_client_profile(OTHER_IDENTITY, OTHER_KEY, tls13),
        psk_server_profile(
            tls13,
            resolver=lambda i: (table[i], PeerBinding("Clight-AE2", PeerKind.AE, i.decode())),
        ),
    )
    admission = responder.on_handshake_complete(done(es))
    assert admission.refusal is CauseOfRejection.ADMINISTRATIVE_REASONS
    s.refuse("refused by the Responder Agent")
    ec, _ = pump(c, s)
    assert ConnectionClosed(close_notify=True) in ec
    assert admission.record.state is SaState.FAILED

    # A failed handshake: the engine's flag becomes the table's cause.
    _, _, _, es = handshake(
        psk_client_profile(b"nobody@in.provider.com", TR0038_KEY, tls13), psk_server_profile(tls13)
    )
    (failed,) = [e for e in es if isinstance(e, HandshakeFailed)]
    failure = responder.on_handshake_failed(
        failed.reason, no_common_parameters=failed.no_common_parameters, framework="provisioned-psk"
    )
    assert failure.cause is CauseOfRejection.ADMINISTRATIVE_REASONS
    assert "nobody" in (failure.record.cause or "")
    events = [e for _, e in sink.entries]
    assert events == ["established", "established", "removed", "removed", "refused", "failed"]


def test_fingerprint_module_is_the_one_copy() -> None:
    from m2msec.crypto import fingerprint
    from m2msec.sa import records

    assert records.key_fingerprint is fingerprint.key_fingerprint
    assert records.certificate_fingerprint is fingerprint.certificate_fingerprint
    src = Path(__file__).resolve().parent.parent / "src" / "m2msec"
    holders = [
        p.relative_to(src).as_posix()
        for p in src.rglob("*.py")
        if "FINGERPRINT_LABEL: Final" in p.read_text() or "def key_fingerprint" in p.read_text()
    ]
    assert holders == ["crypto/fingerprint.py"]


# -- a real peer: openssl s_client as the Initiator ----------------------------------------
@pytest.mark.interop
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_openssl_s_client_admitted_and_refused(version: str) -> None:
    import asyncio

    from m2msec.sa.management import ResponderSaManagement
    from m2msec.tls.aio import TLSConnection, TLSServer
    from m2msec.tls.engine import SA_ID_LABEL
    from tests import interop

    table = {TR0038_IDENTITY: TR0038_KEY, OTHER_IDENTITY: OTHER_KEY}
    entities = {TR0038_IDENTITY: "Clight-AE1", OTHER_IDENTITY: "Clight-AE2"}

    def resolve(identity: bytes) -> tuple[bytes, PeerBinding] | None:
        key = table.get(identity)
        return None if key is None else (key, PeerBinding(entities[identity], PeerKind.AE))

    agent = Refusing("Clight-AE2")
    sink = MemorySink()
    mgmt = ResponderSaManagement(agent, sink)
    admissions = []

    async def handler(conn: TLSConnection) -> None:
        admission = mgmt.on_handshake_complete(conn.context)
        admissions.append(admission)
        if admission.refusal is not None:
            conn.engine.refuse("refused by the Responder Agent")
            await conn.close()
            return
        data = await conn.recv()
        mgmt.check_receive(admission.sa_id)
        mgmt.check_send(admission.sa_id)
        await conn.send(b"served:" + data)
        await asyncio.sleep(0.2)
        await conn.close()

    server = TLSServer(psk_server_profile(version == "-tls1_3", resolver=resolve), handler)
    await server.start("127.0.0.1", 0)
    export = ["-keymatexport", SA_ID_LABEL.decode(), "-keymatexportlen", "16"]
    try:
        ok = await interop.run(
            interop.psk_s_client(server.port, version, *export, "-ign_eof"),
            stdin=b"hello\n",
            timeout=20,
        )
        refused = await interop.run(
            interop.psk_s_client(
                server.port,
                version,
                *export,
                "-ign_eof",
                identity=OTHER_IDENTITY.decode(),
                key_hex=OTHER_KEY.hex(),
            ),
            stdin=b"hello\n",
            timeout=20,
        )
    finally:
        await server.close()
    first, second = admissions
    # The same SA identifier on both ends: the peer's own exporter value.
    assert interop.keying_material(ok.output) == first.sa_id.hex()
    assert first.record.key_fingerprint == key_fingerprint(TR0038_KEY)
    assert "served:hello" in ok.output, ok.describe()
    # The refused SA: identified alike, never served, ended with close_notify.
    assert interop.keying_material(refused.output) == second.sa_id.hex()
    assert second.refusal is CauseOfRejection.ADMINISTRATIVE_REASONS
    assert "served:" not in refused.output, refused.describe()
    assert re.search(r"^closed$", refused.output, re.M), refused.describe()  # close_notify
    assert [e for _, e in sink.entries] == ["established", "refused"]
