"""Provisioned Symmetric Key framework (TS-0003 8.2.2.1) with TR-0038's tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.errors import HandshakeError, IdentifierError
from m2msec.frameworks.provisioned import PskInitiator, PskResponder
from m2msec.store import SqlitePskStore
from m2msec.store.base import PskEntry
from m2msec.tls.context import Framework, PeerKind
from m2msec.tls.engine import HandshakeComplete, HandshakeFailed, TLSEngine
from tests.helpers import pump

AE1 = ("AE123456789012-Light@in.provider.com", bytes.fromhex("1a2b3c4d5e6f7a8b"), "Clight-AE1")
AE2 = ("AE123456789015-Light@in.provider.com", bytes.fromhex("12345678abcdefab"), "Clight-AE2")


@pytest.fixture
def store(tmp_path: Path) -> SqlitePskStore:
    s = SqlitePskStore(tmp_path / "psk.db")
    for kpsa_id, key, entity in (AE1, AE2):
        s.add(PskEntry(kpsa_id, key, entity))
    return s


def handshake(responder: PskResponder, initiator: PskInitiator, tls13: bool = True):  # type: ignore[no-untyped-def]
    server = TLSEngine(responder.profile(tls13=tls13))
    client = TLSEngine(initiator.profile(tls13=tls13))
    client.start()
    return pump(client, server)


@pytest.mark.parametrize("row", [AE1, AE2])
def test_tr0038_rows_bind_their_ae_ids(store: SqlitePskStore, row: tuple[str, bytes, str]) -> None:
    kpsa_id, key, entity = row
    ec, es = handshake(
        PskResponder(store, local_id="/mn-cse-123456"),
        PskInitiator(kpsa_id, key, "/mn-cse-123456"),
        tls13=False,
    )
    server_ctx = next(e.context for e in es if isinstance(e, HandshakeComplete))
    client_ctx = next(e.context for e in ec if isinstance(e, HandshakeComplete))
    assert (server_ctx.peer_id, server_ctx.peer_kind, server_ctx.key_id) == (
        entity,
        PeerKind.AE,
        kpsa_id,
    )
    assert server_ctx.framework is Framework.PROVISIONED_PSK
    assert server_ctx.local_id == "/mn-cse-123456"
    # Entity A binds the session to its configured IdB (8.2.2.1 NOTE 2).
    assert (client_ctx.peer_id, client_ctx.peer_kind) == ("/mn-cse-123456", PeerKind.CSE)


def test_ae1_key_under_ae2_identity_is_refused(store: SqlitePskStore) -> None:
    ec, es = handshake(PskResponder(store), PskInitiator(AE2[0], AE1[1], "/mn-cse-123456"))
    assert any(isinstance(e, HandshakeFailed) for e in es)
    assert any(isinstance(e, HandshakeFailed) for e in ec)


def test_row_without_entity_binds_credential_id(store: SqlitePskStore) -> None:
    store.add(PskEntry("anon-1@in.provider.com", b"k" * 16))
    _, es = handshake(
        PskResponder(store), PskInitiator("anon-1@in.provider.com", b"k" * 16, "/mn-cse-123456")
    )
    ctx = next(e.context for e in es if isinstance(e, HandshakeComplete))
    assert (ctx.peer_id, ctx.peer_kind) == ("12-anon-1@in.provider.com", PeerKind.CREDENTIAL)


def test_cse_row_binds_cse(store: SqlitePskStore) -> None:
    store.add(PskEntry("mn-cse-123456@in.provider.com", b"c" * 32, "/mn-cse-123456"))
    _, es = handshake(
        PskResponder(store), PskInitiator("mn-cse-123456@in.provider.com", b"c" * 32, "/id-in")
    )
    ctx = next(e.context for e in es if isinstance(e, HandshakeComplete))
    assert (ctx.peer_id, ctx.peer_kind) == ("/mn-cse-123456", PeerKind.CSE)


def test_expired_kpsa_refused_and_valid_until_carried(store: SqlitePskStore) -> None:
    now = datetime.now(UTC)
    store.add(PskEntry("old@in.provider.com", b"o" * 16, "Cold", now - timedelta(seconds=1)))
    store.add(PskEntry("new@in.provider.com", b"n" * 16, "Cnew", now + timedelta(hours=1)))
    responder = PskResponder(store)
    _, es = handshake(responder, PskInitiator("old@in.provider.com", b"o" * 16, "/mn-cse-123456"))
    fail = next(e for e in es if isinstance(e, HandshakeFailed))
    assert "expired" in fail.reason
    _, es = handshake(responder, PskInitiator("new@in.provider.com", b"n" * 16, "/mn-cse-123456"))
    ctx = next(e.context for e in es if isinstance(e, HandshakeComplete))
    assert ctx.valid_until is not None and ctx.valid_until > now


def test_resolver_refusals_have_reasons(store: SqlitePskStore) -> None:
    responder = PskResponder(store)
    with pytest.raises(HandshakeError, match="malformed psk_identity"):
        responder.resolve(b"no-at-sign")
    with pytest.raises(HandshakeError, match="malformed psk_identity"):
        responder.resolve(b"\xff\xfe@in.provider.com")
    with pytest.raises(HandshakeError, match="unknown psk_identity"):
        responder.resolve(b"ghost@in.provider.com")
    key, binding = responder.resolve(AE1[0].encode())
    assert key == AE1[1] and binding.peer_id == "Clight-AE1"


def test_initiator_validates_configuration() -> None:
    with pytest.raises(IdentifierError):
        PskInitiator("bad id", b"k" * 16, "/mn-cse-123456")
    with pytest.raises(ValueError):
        PskInitiator("ok@in.provider.com", b"", "/mn-cse-123456")
    assert "6b6b" not in repr(PskInitiator("ok@in.provider.com", b"k" * 16, "/mn-cse-123456"))
