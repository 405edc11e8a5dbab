"""3G AKA (TS 33.102 6.3): USIM and HSS simulator, AUTN/AUTS, SQN freshness and resync,
and the subscriber store they run on."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.crypto.milenage import Milenage
from m2msec.errors import DuplicateCredentialError, StoreError, UnknownCredentialError
from m2msec.gba.aka import (
    AMF_RESYNC,
    AkaError,
    Hss,
    MacFailure,
    SyncFailure,
    Usim,
    make_autn,
    make_auts,
    next_sqn,
    open_autn,
    open_auts,
    sqn_bytes,
)
from m2msec.gba.records import BootstrapSession, Guss, check_impi
from m2msec.gba.subscribers import SubscriberStore

# TS 35.208 test set 1 (NOTES.md).
K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")
RAND = bytes.fromhex("23553cbe9637a89d218ae64dae47bf35")
SQN = bytes.fromhex("ff9bb4d0b607")
AMF = bytes.fromhex("b9b9")
MAC_A = bytes.fromhex("4a9ffac354dfafb3")
AK = bytes.fromhex("aa689c648370")
AK_STAR = bytes.fromhex("451e8beca43b")
IMPI = "alice@ims.example.com"


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------- AUTN / AUTS


def test_autn_of_test_set_1() -> None:
    # AUTN = SQN xor AK || AMF || MAC-A, every part typed from the table.
    expected = _xor(SQN, AK) + AMF + MAC_A
    autn, ak = make_autn(Milenage(K, OPC), RAND, SQN, AMF)
    assert (autn, ak) == (expected, AK)
    assert open_autn(Milenage(K, OPC), RAND, expected) == (SQN, AMF)


def test_autn_with_a_flipped_bit_fails_mac() -> None:
    autn = bytearray(_xor(SQN, AK) + AMF + MAC_A)
    for index in (0, 6, 15):  # the concealed SQN, the AMF, the MAC itself
        broken = bytearray(autn)
        broken[index] ^= 0x01
        with pytest.raises(MacFailure):
            open_autn(Milenage(K, OPC), RAND, bytes(broken))


def test_auts_conceals_sqn_ms_with_ak_star_and_uses_amf_0000() -> None:
    m = Milenage(K, OPC)
    auts = make_auts(m, RAND, SQN)
    assert len(auts) == 14
    assert auts[:6] == _xor(SQN, AK_STAR)  # f5* from the table
    assert auts[6:] == m.f1star(RAND, SQN, AMF_RESYNC)
    # MAC-S is not the table's f1* (that one uses AMF b9b9): the dummy AMF matters.
    assert auts[6:] != bytes.fromhex("01cfaf9ec4e871e9")
    assert open_auts(m, RAND, auts) == SQN
    with pytest.raises(MacFailure):
        open_auts(m, RAND, auts[:-1] + bytes([auts[-1] ^ 1]))
    with pytest.raises(AkaError):
        open_auts(m, RAND, auts[:10])


def test_next_sqn_steps_seq_and_cycles_ind() -> None:
    assert next_sqn(0, 5) == (1 << 5) | 1
    assert next_sqn((7 << 5) | 31, 5) == (8 << 5) | 0
    assert next_sqn(41, 0) == 42
    with pytest.raises(AkaError, match="exhausted"):
        next_sqn((1 << 48) - 1, 0)


# ----------------------------------------------------------------------------- USIM


def _vector(sqn: int, *, k: bytes = K, rand: bytes = RAND, amf: bytes = b"\x00\x00") -> bytes:
    autn, _ = make_autn(Milenage(k, OPC), rand, sqn_bytes(sqn), amf)
    return autn


def test_usim_answers_a_fresh_challenge() -> None:
    usim = Usim(K, OPC, sqn=SQN[:5] + b"\x00", ind_bits=0)
    result = usim.authenticate(RAND, _xor(SQN, AK) + AMF + MAC_A)
    assert result.res == bytes.fromhex("a54211d5e3ba50bf")
    assert result.ck == bytes.fromhex("b40ba9a3c58b2a05bbf0d987b21bf8cb")
    assert result.ik == bytes.fromhex("f769bcd751044604127672711c6d3441")
    assert usim.sqn_ms == SQN
    assert "a54211" not in repr(result)


def test_replayed_challenge_is_a_sync_failure_with_a_valid_auts() -> None:
    usim = Usim(K, OPC, sqn=0, ind_bits=0)
    autn = _vector(5)
    usim.authenticate(RAND, autn)
    with pytest.raises(SyncFailure) as info:
        usim.authenticate(RAND, autn)
    # AUTS carries the highest accepted SQN, checkable with f1*/f5*.
    assert open_auts(Milenage(K, OPC), RAND, info.value.auts) == sqn_bytes(5)


def test_wrong_key_is_a_mac_failure_and_leaves_sqn_alone() -> None:
    usim = Usim(K, OPC, sqn=0)
    with pytest.raises(MacFailure):
        usim.authenticate(RAND, _vector(100, k=bytes(16)))
    assert usim.sqn_ms == sqn_bytes(0)


def test_ind_array_accepts_out_of_order_vectors_but_not_reuse() -> None:
    usim = Usim(K, OPC, sqn=0, ind_bits=5)
    first, second = next_sqn(0), next_sqn(next_sqn(0))
    usim.authenticate(RAND, _vector(second))  # the later vector arrives first
    usim.authenticate(RAND, _vector(first))  # still fresh for its own IND
    assert usim.sqn_ms == sqn_bytes(second)
    with pytest.raises(SyncFailure):
        usim.authenticate(RAND, _vector(first))


def test_sqn_too_far_ahead_is_refused() -> None:
    usim = Usim(K, OPC, sqn=0, ind_bits=0, delta=1000)
    usim.authenticate(RAND, _vector(1000))
    with pytest.raises(SyncFailure, match="too far ahead"):
        usim.authenticate(RAND, _vector(2001))


def test_usim_amf_filter() -> None:
    usim = Usim(K, OPC, sqn=0, amf=b"\x80\x00", ind_bits=0)
    with pytest.raises(AkaError, match="AMF"):
        usim.authenticate(RAND, _vector(1))
    usim.authenticate(RAND, _vector(2, amf=b"\x80\x00"))


def test_usim_refuses_malformed_input() -> None:
    usim = Usim(K, OPC)
    with pytest.raises(AkaError, match="AUTN"):
        usim.authenticate(RAND, bytes(15))
    with pytest.raises(AkaError, match="RAND"):
        usim.authenticate(bytes(3), bytes(16))
    with pytest.raises(AkaError, match="K must be"):
        Usim(bytes(8), OPC)
    assert K.hex() not in repr(usim)


# ----------------------------------------------------------------------------- HSS + store


@pytest.fixture
def store(tmp_path: Path) -> SubscriberStore:
    st = SubscriberStore(tmp_path / "bsf.db")
    yield st
    st.close()


def test_hss_vectors_are_accepted_and_sqn_advances(store: SubscriberStore) -> None:
    store.add_subscriber(IMPI, k=K, opc=OPC, sqn=0)
    hss = Hss(store)
    usim = Usim(K, OPC, sqn=0)
    seen = set()
    for _ in range(40):  # more than 2**ind_bits: IND wraps around
        av = hss.generate_vector(IMPI)
        result = usim.authenticate(av.rand, av.autn)
        assert result.res == av.xres and result.ck == av.ck and result.ik == av.ik
        seen.add(av.rand)
    assert len(seen) == 40
    sub = store.get_subscriber(IMPI)
    assert sub is not None and sub.sqn == int.from_bytes(usim.sqn_ms, "big")


def test_resync_round_trip_through_the_hss(store: SubscriberStore) -> None:
    store.add_subscriber(IMPI, k=K, opc=OPC, sqn=0)
    hss = Hss(store)
    usim = Usim(K, OPC, sqn=0x123456, ind_bits=5)  # the USIM is ahead of the HSS
    av = hss.generate_vector(IMPI)
    with pytest.raises(SyncFailure) as info:
        usim.authenticate(av.rand, av.autn)
    assert hss.resync(IMPI, av.rand, info.value.auts) == sqn_bytes(0x123456)
    av2 = hss.generate_vector(IMPI)
    usim.authenticate(av2.rand, av2.autn)  # accepted now


def test_resync_with_a_forged_auts_changes_nothing(store: SubscriberStore) -> None:
    store.add_subscriber(IMPI, k=K, opc=OPC, sqn=77)
    hss = Hss(store)
    forged = make_auts(Milenage(bytes(16), OPC), RAND, sqn_bytes(10**9))
    with pytest.raises(MacFailure):
        hss.resync(IMPI, RAND, forged)
    sub = store.get_subscriber(IMPI)
    assert sub is not None and sub.sqn == 77


def test_hss_unknown_subscriber(store: SubscriberStore) -> None:
    with pytest.raises(UnknownCredentialError):
        Hss(store).generate_vector("nobody@example.com")


def test_store_file_is_private_and_keys_are_sealed(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "bsf.db"
    with SubscriberStore(path) as st:
        st.add_subscriber(IMPI, k=K, opc=OPC)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    raw = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith("bsf.db"))
    assert K not in raw and OPC not in raw


def test_wrong_kek_is_detected_at_open(tmp_path: Path) -> None:
    path = tmp_path / "bsf.db"
    SubscriberStore(path, kek=bytes(32)).close()
    with pytest.raises(StoreError, match="wrong key-encryption key"):
        SubscriberStore(path, kek=bytes([1]) * 32)


def test_tampered_row_fails_to_unseal(store: SubscriberStore) -> None:
    store.add_subscriber(IMPI, k=K, opc=OPC)
    store.add_subscriber("bob@example.com", k=bytes(16), opc=bytes(16))
    conn = sqlite3.connect(store.path)
    # Move bob's sealed K onto alice's row: the associated data (IMPI) must catch it.
    conn.execute(
        "UPDATE subscriber SET k = (SELECT k FROM subscriber WHERE impi = 'bob@example.com')"
        " WHERE impi = ?",
        (IMPI,),
    )
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="cannot unseal K"):
        store.get_subscriber(IMPI)


def test_subscriber_crud_and_guss(store: SubscriberStore) -> None:
    guss = Guss.allowing({"NAF.example.com": {"aeId": "/mn-cse/Cdev"}, "other.example.com": {}})
    store.add_subscriber(IMPI, k=K, opc=OPC, sqn=5, amf=b"\x80\x00", guss=guss, uicc=True)
    with pytest.raises(DuplicateCredentialError):
        store.add_subscriber(IMPI, k=K, opc=OPC)
    sub = store.get_subscriber(IMPI)
    assert sub is not None
    assert (sub.k, sub.opc, sub.sqn, sub.amf, sub.uicc) == (K, OPC, 5, b"\x80\x00", True)
    assert sub.gba_type == "GBA_U"
    assert sub.guss.uss_for("naf.example.com") == {"aeId": "/mn-cse/Cdev"}
    assert sub.guss.uss_for("OTHER.example.com.") == {}
    assert sub.guss.uss_for("third.example.com") is None
    assert Guss(any_naf=True).uss_for("third.example.com") == {}
    assert K.hex() not in repr(sub)
    store.set_guss(IMPI, Guss())
    refreshed = store.get_subscriber(IMPI)
    assert refreshed is not None and refreshed.guss.uss_for("naf.example.com") is None
    assert [s.impi for s in store.list_subscribers()] == [IMPI]
    assert store.remove_subscriber(IMPI)
    assert not store.remove_subscriber(IMPI)
    assert store.get_subscriber(IMPI) is None


@pytest.mark.parametrize("impi", ["", "a b@example.com", 'a"b', "x" * 256, "a\nb"])
def test_bad_impi_is_refused(impi: str) -> None:
    from m2msec.errors import IdentifierError

    with pytest.raises(IdentifierError):
        check_impi(impi)


def test_sessions(store: SubscriberStore) -> None:
    store.add_subscriber(IMPI, k=K, opc=OPC)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    session = BootstrapSession(
        btid="abc@bsf.example.com",
        impi=IMPI,
        rand=RAND,
        ks=bytes(range(32)),
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    store.put_session(session)
    with pytest.raises(DuplicateCredentialError):
        store.put_session(session)
    assert store.get_session("abc@bsf.example.com") == session
    assert store.get_session("nope") is None
    assert not session.expired(now) and session.expired(now + timedelta(hours=1))
    assert store.purge_expired(now) == 0
    assert store.purge_expired(now + timedelta(hours=2)) == 1
    store.put_session(session)
    store.remove_subscriber(IMPI)  # takes its sessions along
    assert store.count_sessions() == 0


def test_store_survives_reopen_with_the_kek_file(tmp_path: Path) -> None:
    path = tmp_path / "bsf.db"
    with SubscriberStore(path) as st:
        st.add_subscriber(IMPI, k=K, opc=OPC)
    assert stat.S_IMODE((tmp_path / "kek").stat().st_mode) == 0o600
    with SubscriberStore(path) as st:
        sub = st.get_subscriber(IMPI)
        assert sub is not None and sub.k == K
    os.remove(tmp_path / "kek")
    with pytest.raises(StoreError, match="no key-encryption key"):
        SubscriberStore(path)
