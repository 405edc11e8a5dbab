"""One read of the Enrolee per PSK bootstrap session (TS-0003 8.3.2.1, seed 004;
docs/performance.md, MEF): the handshake's Kpm lookup keeps the Enrolee it read
(m2msec.mef.reads), the Enrolment Exchange plans from it, and the commit re-checks it
(MefStore.enrol) — refused with 4103 when it was changed or removed in between. Over real
TLS and DTLS on loopback (the helpers of tests/test_mef_server.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.bindings.messages import OneM2MRequest
from m2msec.errors import StoreError
from m2msec.keyids import KeId
from m2msec.mef.reads import BootstrapReads, ChangedDuringBootstrap, same_configuration
from m2msec.mef.records import Bootstrap, Enrolee
from m2msec.mef.service import EnroleeIdentity, MefPolicy, MefService
from m2msec.mef.store import MefStore
from m2msec.servers.mef import MefServer
from m2msec.servers.mef_session import BOOTSTRAP_EXPORT_OCTETS, BOOTSTRAP_EXPORTER_LABEL
from m2msec.service.coap_client import CoapClient
from m2msec.tls.aio_dtls import dtls_connect
from tests.test_mef_server import (
    ENROLEE_ID,
    GATEWAY,
    HOST,
    KPM,
    KPM_ID,
    LIFETIME,
    MAF,
    Pki,
    enrol,
    enrolee_profile,
    ke_id_of,
    mef_config,
    pki,
    psk_enrolee,
    running_mef,
    seed_store,
)

__all__ = ["pki"]

KEK = bytes(range(32))
DEVICE = Enrolee(Bootstrap.PSK, "kpm-1@mef.example.com", "/mn-cse-1/Cdev", GATEWAY, LIFETIME, KPM)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- BootstrapReads ----------------------------------------------------------------------------


def test_a_read_is_claimed_within_its_window() -> None:
    clock = Clock()
    reads = BootstrapReads(10.0, clock=clock)
    assert reads.claim(DEVICE.bootstrap_id) is None
    reads.keep(DEVICE.bootstrap_id, DEVICE)
    clock.now += 9.0
    assert reads.claim(DEVICE.bootstrap_id) is DEVICE
    assert reads.claim("kpm-2@mef.example.com") is None
    clock.now += 2.0  # past the window: the store is read again
    assert reads.claim(DEVICE.bootstrap_id) is None
    assert KPM.hex() not in repr(reads)


def test_a_change_during_handshakes_is_refused_until_they_are_over() -> None:
    """Two handshakes of one KpmID read different configurations: a session cannot tell
    which one its handshake used, until every handshake that read the old one is over."""
    clock = Clock()
    reads = BootstrapReads(10.0, clock=clock)
    reads.keep(DEVICE.bootstrap_id, DEVICE)
    clock.now += 1.0
    reads.keep(DEVICE.bootstrap_id, DEVICE)  # the same configuration again: no change
    assert reads.claim(DEVICE.bootstrap_id) is DEVICE
    new_kpm = Enrolee(
        Bootstrap.PSK, DEVICE.bootstrap_id, DEVICE.enrolee_id, GATEWAY, LIFETIME, KPM[::-1]
    )
    reads.keep(DEVICE.bootstrap_id, new_kpm)
    with pytest.raises(ChangedDuringBootstrap):
        reads.claim(DEVICE.bootstrap_id)
    clock.now += 5.0
    reads.keep(DEVICE.bootstrap_id, new_kpm)  # later handshakes do not prolong the doubt
    with pytest.raises(ChangedDuringBootstrap):
        reads.claim(DEVICE.bootstrap_id)
    clock.now += 5.5
    assert reads.claim(DEVICE.bootstrap_id) is new_kpm


def test_reads_are_bounded() -> None:
    clock = Clock()
    reads = BootstrapReads(10.0, capacity=3, clock=clock)
    ids = [f"kpm-{i}@mef.example.com" for i in range(5)]
    for kpm_id in ids:
        reads.keep(kpm_id, Enrolee(Bootstrap.PSK, kpm_id, "/mn-cse-1/Cdev", GATEWAY, LIFETIME, KPM))
        clock.now += 1.0
    assert len(reads) == 3
    assert reads.claim(ids[0]) is None and reads.claim(ids[4]) is not None
    clock.now += 30.0
    reads.keep(ids[0], DEVICE)  # expired reads go when a new one is kept
    assert len(reads) == 1


def test_same_configuration() -> None:
    assert same_configuration(DEVICE, DEVICE)
    assert not same_configuration(None, DEVICE)
    other_kpm = Enrolee(
        Bootstrap.PSK, DEVICE.bootstrap_id, DEVICE.enrolee_id, GATEWAY, LIFETIME, KPM[::-1]
    )
    retargeted = Enrolee(Bootstrap.PSK, DEVICE.bootstrap_id, DEVICE.enrolee_id, MAF, LIFETIME, KPM)
    longer = Enrolee(
        Bootstrap.PSK, DEVICE.bootstrap_id, DEVICE.enrolee_id, GATEWAY, LIFETIME * 2, KPM
    )
    for changed in (other_kpm, retargeted, longer):
        assert not same_configuration(DEVICE, changed)


# -- MefService ------------------------------------------------------------------------------

EXPORT = bytes(range(48))
WHO = EnroleeIdentity(Bootstrap.PSK, DEVICE.bootstrap_id)


def request() -> OneM2MRequest:
    return OneM2MRequest(
        "POST", "/mef/enrolment", (), b'{"mefEnrolReq":{}}', "Cdev", "r1", None, None, None
    )


@pytest.fixture
def service(tmp_path: Path) -> Any:
    with MefStore(tmp_path / "mef.db", kek=KEK) as store:
        store.add_enrolee(DEVICE)
        store.allow_target(GATEWAY)
        yield MefService(MefPolicy("mef.example.com"), store)


def no_reads(service: MefService, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("the Enrolee was read a second time")

    monkeypatch.setattr(service.store, "get_enrolee", refuse)


def test_the_plan_uses_the_handshakes_read(
    service: MefService, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert service.kpm_for(DEVICE.bootstrap_id) == KPM
    read = service.bootstrap_enrolee(WHO)
    assert isinstance(read, Enrolee) and read.enrolee_id == DEVICE.enrolee_id
    no_reads(service, monkeypatch)
    planned = service.plan_request(request(), WHO, EXPORT, read)
    (refusal,) = service.commit_enrolments([planned])
    assert refusal is None
    answer = service.answer_enrolment(request(), WHO, planned, None)
    assert answer.status == 201
    assert service.store.count_enrolments() == 1


def test_a_certificate_session_reads_its_enrolee(service: MefService) -> None:
    assert service.bootstrap_enrolee(EnroleeIdentity(Bootstrap.CERTIFICATE, "/mn-cse-9")) is None


@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_change_after_the_handshake_is_refused_at_commit(
    service: MefService, change: str
) -> None:
    service.kpm_for(DEVICE.bootstrap_id)
    read = service.bootstrap_enrolee(WHO)
    assert isinstance(read, Enrolee)
    planned = service.plan_request(request(), WHO, EXPORT, read)
    if change == "replaced":
        service.store.add_enrolee(
            Enrolee(Bootstrap.PSK, DEVICE.bootstrap_id, "/mn-cse-1/Cdev", MAF, LIFETIME, KPM),
            replace=True,
        )
    else:
        service.store.remove_enrolee(Bootstrap.PSK, DEVICE.bootstrap_id)
    (refusal,) = service.commit_enrolments([planned])
    assert refusal is not None and refusal.rsc == 4103
    answer = service.answer_enrolment(request(), WHO, planned, refusal)
    assert answer.status == 403 and b"changed" in answer.body
    assert service.store.count_enrolments() == 0
    events = [r["event"] for _, r in service.store.read_audit()]
    removal = ["enrolee-removed"] if change == "removed" else []  # the removal is audited
    assert events == [*removal, "enrolment-refused"]


def test_a_change_during_the_handshake_is_refused(service: MefService) -> None:
    service.kpm_for(DEVICE.bootstrap_id)
    service.store.add_enrolee(
        Enrolee(Bootstrap.PSK, DEVICE.bootstrap_id, "/mn-cse-1/Cdev", MAF, LIFETIME, KPM),
        replace=True,
    )
    service.kpm_for(DEVICE.bootstrap_id)  # a second handshake of the KpmID reads the new one
    read = service.bootstrap_enrolee(WHO)
    assert not isinstance(read, Enrolee) and read is not None and read.rsc == 4103
    answer = service.prepare_enrolment(request(), WHO, EXPORT)  # a fresh session: fine
    assert not isinstance(answer, Exception)


def test_a_store_failure_at_commit_is_5000(
    service: MefService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.kpm_for(DEVICE.bootstrap_id)
    read = service.bootstrap_enrolee(WHO)
    planned = service.plan_request(request(), WHO, EXPORT, read)

    def broken(*_args: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(service.store, "enrol", broken)
    (refusal,) = service.commit_enrolments([planned])
    assert refusal is not None and refusal.rsc == 5000


# -- the server, over TLS and DTLS -------------------------------------------------------------


def count_reads(server: MefServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real: Callable[..., Enrolee | None] = server.store.get_enrolee

    def counting(bootstrap: Bootstrap, bootstrap_id: str) -> Enrolee | None:
        seen.append(bootstrap_id)
        return real(bootstrap, bootstrap_id)

    monkeypatch.setattr(server.store, "get_enrolee", counting)
    return seen


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
async def test_one_store_read_per_tls_enrolment(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls13: bool
) -> None:
    async with running_mef(pki, tmp_path) as mef:
        reads = count_reads(mef, monkeypatch)
        client, exported = await psk_enrolee(mef, tls13=tls13)
        got = await enrol(client)
        assert got.rsc == 2001, got.body
        assert got.json()["mefEnrol"]["keID"] == ke_id_of(exported)
        await client.close()
        assert reads == [KPM_ID]


async def test_one_store_read_per_dtls_enrolment(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_mef(pki, tmp_path) as mef:
        reads = count_reads(mef, monkeypatch)
        port = mef.listener("enrolee", "psk", "dtls").port
        assoc = await dtls_connect(enrolee_profile(dtls=True), HOST, port, timeout=10)
        exported = assoc.export_keying_material(BOOTSTRAP_EXPORTER_LABEL, BOOTSTRAP_EXPORT_OCTETS)
        client = CoapClient(assoc)
        try:
            got = await client.request(
                "POST", "/mef/enrolment", origin="Cdevice-1", content={"mefEnrolReq": {}}
            )
            assert got.rsc == 2001, got.payload
            assert json.loads(got.payload)["mefEnrol"]["keID"] == ke_id_of(exported)
        finally:
            await client.close()
        assert reads == [KPM_ID]


@pytest.mark.parametrize("change", ["replaced", "removed"])
async def test_an_enrolee_changed_after_the_handshake_is_not_enrolled(
    pki: Pki, tmp_path: Path, change: str
) -> None:
    async with running_mef(pki, tmp_path) as mef:
        client, _exported = await psk_enrolee(mef)
        if change == "replaced":  # `m2msec mef add-enrolee --replace`: a longer lifetime
            longer = Enrolee(Bootstrap.PSK, KPM_ID, ENROLEE_ID, GATEWAY, timedelta(days=2), KPM)
            mef.store.add_enrolee(longer, replace=True)
        else:
            mef.store.remove_enrolee(Bootstrap.PSK, KPM_ID)
        got = await enrol(client)
        assert got.rsc == 4103, got.body
        await client.close()
        assert mef.store.count_enrolments() == 0
        assert mef.stats["enrolments"] == 0 and mef.stats["enrolments_refused"] == 1


async def test_after_a_change_a_new_bootstrap_enrols_once_old_handshakes_are_over(
    pki: Pki, tmp_path: Path
) -> None:
    """A handshake that reads the new configuration while one that read the old may still
    be running cannot tell which its session used: refused, until the handshake deadline
    (and a second) has passed since the change; then it enrols with the new one."""
    store = seed_store(tmp_path / "mef.db")
    try:
        async with MefServer(mef_config(pki, tmp_path, handshake_timeout=0.5), store) as mef:
            client, _ = await psk_enrolee(mef)  # reads the old configuration
            await client.close()
            longer = Enrolee(Bootstrap.PSK, KPM_ID, ENROLEE_ID, GATEWAY, timedelta(days=2), KPM)
            store.add_enrolee(longer, replace=True)
            client, _ = await psk_enrolee(mef)
            got = await enrol(client)
            assert got.rsc == 4103 and b"changed" in got.body, got.body
            await client.close()
            await asyncio.sleep(1.6)
            client, exported = await psk_enrolee(mef)
            again = await enrol(client)
            assert again.rsc == 2001, again.body
            await client.close()
            stored = store.get_enrolment(KeId.parse(ke_id_of(exported)))
            assert stored is not None
            assert stored.expires_at - stored.created_at >= timedelta(days=2) - timedelta(seconds=1)
    finally:
        store.close()
