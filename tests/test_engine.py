"""The sans-IO engine, two instances pumped against each other with no network."""

from __future__ import annotations

import pytest

from m2msec.errors import HandshakeError
from m2msec.tls.context import Framework, PeerKind
from m2msec.tls.engine import (
    ConnectionClosed,
    DataReceived,
    HandshakeComplete,
    HandshakeFailed,
    TLSEngine,
)
from m2msec.tls.profiles import PSK_SUITES_TLS, TLSProfile, Transport, new_context
from tests.helpers import psk_client_profile, psk_server_profile, pump


@pytest.mark.parametrize("tls13", [True, False])
def test_psk_handshake_binds_both_sides(tls13: bool) -> None:
    server = TLSEngine(psk_server_profile(tls13))
    client = TLSEngine(
        psk_client_profile(
            b"AE123456789012-Light@in.provider.com", bytes.fromhex("1a2b3c4d5e6f7a8b"), tls13
        )
    )
    client.start()
    ec, es = pump(client, server)
    sctx = next(e.context for e in es if isinstance(e, HandshakeComplete))
    cctx = next(e.context for e in ec if isinstance(e, HandshakeComplete))
    assert sctx.peer_id == "Clight-AE1" and sctx.peer_kind is PeerKind.AE
    assert cctx.peer_id == "/mn-cse-123456"
    assert sctx.key_id == "AE123456789012-Light@in.provider.com"
    assert sctx.protocol == ("TLSv1.3" if tls13 else "TLSv1.2")
    assert sctx.server_name == "mn-cse-123456.in.provider.com"
    # Both sides name the association alike, from an exporter, not from a key.
    assert sctx.sa_id == cctx.sa_id and len(sctx.sa_id) == 32
    assert client.export_keying_material(
        b"EXPORTER-oneM2M-Connection", 48
    ) == server.export_keying_material(b"EXPORTER-oneM2M-Connection", 48)

    client.send(b"hello oneM2M")
    _, es = pump(client, server)
    assert DataReceived(b"hello oneM2M") in es
    client.close()
    _, es = pump(client, server)
    assert any(isinstance(e, ConnectionClosed) for e in es)


@pytest.mark.parametrize("suite", ["PSK-AES128-CCM8", "PSK-AES128-CBC-SHA256"])
def test_mandatory_psk_suites_negotiate(suite: str) -> None:
    server = TLSEngine(psk_server_profile(tls13=False, suites=(suite,)))
    client = TLSEngine(
        psk_client_profile(
            b"AE123456789012-Light@in.provider.com", bytes.fromhex("1a2b3c4d5e6f7a8b"), False
        )
    )
    client.start()
    _, es = pump(client, server)
    ctx = next(e.context for e in es if isinstance(e, HandshakeComplete))
    assert ctx.cipher_suite == suite


def test_unknown_identity_fails_with_reason() -> None:
    server = TLSEngine(psk_server_profile(False))
    client = TLSEngine(psk_client_profile(b"nobody@in.provider.com", b"0" * 16, False))
    client.start()
    ec, es = pump(client, server)
    fail = next(e for e in es if isinstance(e, HandshakeFailed))
    assert "nobody@in.provider.com" in fail.reason
    assert any(isinstance(e, HandshakeFailed) for e in ec)
    assert server.context is None and client.context is None


@pytest.mark.parametrize("tls13", [True, False])
def test_wrong_key_fails_on_both_sides_without_leaking_it(tls13: bool) -> None:
    server = TLSEngine(psk_server_profile(tls13))
    wrong = bytes.fromhex("ffffffffffffffff")
    client = TLSEngine(psk_client_profile(b"AE123456789012-Light@in.provider.com", wrong, tls13))
    client.start()
    ec, es = pump(client, server)
    reasons = [e.reason for e in ec + es if isinstance(e, HandshakeFailed)]
    assert len(reasons) == 2
    for r in reasons:
        assert "ffffffff" not in r and "1a2b3c4d" not in r
    with pytest.raises(HandshakeError):
        client.send(b"x")


def test_garbage_fails_cleanly() -> None:
    server = TLSEngine(psk_server_profile())
    server.receive_data(b"\x16\x03\x01\x00\x05hello-this-is-not-tls" * 3)
    events = server.events()
    assert isinstance(events[-1], HandshakeFailed)
    assert server.failed
    # Later input is ignored, not an exception.
    server.receive_data(b"more")


def test_eof_mid_handshake() -> None:
    server = TLSEngine(psk_server_profile())
    server.receive_data(b"")
    (event,) = server.events()
    assert isinstance(event, HandshakeFailed) and "closed" in event.reason


def test_profile_is_frozen_and_the_engine_installs_its_callbacks() -> None:
    # Issue 10: a profile is built complete (dataclasses.replace), never mutated, and
    # building one leaves the context alone until an engine uses it.
    import dataclasses

    from m2msec.tls import callbacks

    ctx = new_context(Transport.TLS, server_side=True, suites=PSK_SUITES_TLS)
    profile = TLSProfile(
        framework=Framework.PROVISIONED_PSK,
        transport=Transport.TLS,
        server_side=True,
        ssl_context=ctx,
        psk_resolver=lambda identity: None,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.require_sni = True  # type: ignore[misc]
    assert ctx not in callbacks._installed
    TLSEngine(dataclasses.replace(profile, require_sni=True))
    assert ctx in callbacks._installed
