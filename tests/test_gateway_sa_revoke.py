"""MAF and MEF de-registrations end the live SAs over the removed key (issue 12 item 3).

Seed 003 7.3.6 (Remove, tables 42-44) driven by the credential's issuer: the gateway is
Entity B of the MAF framework (TS-0003 8.2.2.3, its Kc fetched by Key Retrieval 8.8.2.8)
and Enrolee B of seed 004 (its Kpsa fetched by fetchCredentials, 8.3.2.1 step f). Its SA
sweep asks the MAF / MEF again for the key of each live SA every ``[sa]
revalidate_interval`` (``GatewaySa.revalidate_remote``, ``KeyFetcher.revalidate``): a
refusal is a Remove with "credential removed at the MAF/MEF", close_notify, the session
evicted and the cached key dropped; an unreachable MAF leaves the SAs alone.

Real servers in-process: our MAF server and our MEF server, the gateway with ACME behind
it; devices are ``openssl s_client`` (with the KcId/Kc our MafClient registered, or the
KeID/Kpsa of its own enrolment at the MEF) and our :class:`MafInitiator`; the operator is
the shipped CLI (``m2msec maf remove-client``, ``m2msec sa show``) or, for the MEF whose
test store has an explicit key-encryption key, the store call ``m2msec mef
remove-enrolee`` makes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from m2msec.app_rules import AppRule
from m2msec.config import GatewayConfig, MafRetrievalConfig, parse_config, parse_listen_url
from m2msec.config.gateway_sections import SaConfig
from m2msec.config.maf import MafConfig
from m2msec.errors import ConfigurationError
from m2msec.frameworks.maf import MafClient, MafInitiator
from m2msec.frameworks.remote_keys import Verdict
from m2msec.ids import CseId
from m2msec.keyids import KcId, KeId
from m2msec.maf.store import MafStore
from m2msec.mef.records import Bootstrap
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.servers.gateway import Gateway
from m2msec.servers.gateway_sa import CREDENTIAL_REMOVED_AT
from m2msec.servers.maf import MafServer
from m2msec.service.onem2m_client import OneM2MClient
from m2msec.tls.engine import SA_ID_LABEL
from tests.acme import AcmeCse, acme_fixture
from tests.interop import HOST, Completed, keying_material, run, spawn
from tests.test_mef_key_retrieval import gateway_config
from tests.test_mef_server import KPM_ID, Pki, make_pki
from tests.test_mef_targets import World, openssl_enrol, running_world

pytestmark = pytest.mark.interop

IN_DOMAIN = "in.provider.com"
MAF_FQDN = "maf.provider.com"
IN_CSE = "/id-in"
SMARTPHONE = ("smartphone@maf.provider.com", bytes(range(1, 33)), "Csmartphone")
INTERVAL = 0.6  # [sa] revalidate_interval of these gateways
SWEEP = 0.2  # seconds between sweeps
#: A removal reaches an idle SA within one interval and one sweep, plus the fetch itself.
BOUND = INTERVAL + SWEEP + 1.5
TLS12 = ("-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256")
EXPORT = ("-keymatexport", SA_ID_LABEL.decode(), "-keymatexportlen", "16")


@dataclass
class MafWorld:
    maf: MafServer
    store: MafStore
    gateway: Gateway
    acme: AcmeCse
    store_path: Path

    @property
    def gw_port(self) -> int:
        return self.gateway.listeners[0].port

    def client(self) -> MafClient:
        return MafClient(HOST, self.maf.client_port, MAF_FQDN, SMARTPHONE[0], SMARTPHONE[1])


acme = acme_fixture(cse_type="IN", cse_id="id-in", cse_name="cse-in")


@pytest.fixture
async def maf_world(tmp_path: Path, acme: AcmeCse) -> AsyncIterator[MafWorld]:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=IN_DOMAIN, extra_domains=[MAF_FQDN])
    maf_key, maf_cert = write_credential(ca.issue_service(MAF_FQDN), tmp_path / "maf")
    gw_key, gw_cert = write_credential(ca.issue(IN_CSE), tmp_path / "in-cse")
    path = tmp_path / "maf.db"
    store = MafStore(path)
    store.add_client(*SMARTPHONE)
    store.add_entity_b(IN_CSE)
    maf = MafServer(
        MafConfig(
            fqdn=MAF_FQDN,
            listen=f"tls://{HOST}:0",
            retrieval_listen=f"tls://{HOST}:0",
            cert=maf_cert,
            key=maf_key,
            ca=ca.cert_path,
            in_domain=IN_DOMAIN,
        ),
        store,
    )
    try:
        async with maf:
            assert maf.retrieval_port is not None
            gateway = Gateway(
                GatewayConfig(
                    listen=(parse_listen_url(f"tls://{HOST}:0?framework=maf"),),
                    backend=acme.url,
                    cse_id=CseId.parse(IN_CSE),
                    in_domain=IN_DOMAIN,
                    app_rules=(AppRule(("*",), ("*",)),),
                    maf=MafRetrievalConfig(
                        addresses=((MAF_FQDN, HOST, maf.retrieval_port),),
                        cert=gw_cert,
                        key=gw_key,
                        ca=ca.cert_path,
                    ),
                    sa=SaConfig(revalidate_interval=INTERVAL),
                )
            )
            gateway.sa.sweep_interval = SWEEP
            async with gateway:
                yield MafWorld(maf, store, gateway, acme, path)
            assert gateway.sa.live_count() == 0
    finally:
        store.close()


async def m2msec(*args: str) -> Completed:
    """The shipped CLI, as an operator runs it (the test's $M2MSEC_HOME)."""
    return await run([sys.executable, "-m", "m2msec.cli", *args], timeout=30)


async def sa_show(said: str) -> dict[str, Any]:
    done = await m2msec("sa", "show", said, "--json")
    assert done.returncode == 0, done.describe()
    doc: dict[str, Any] = json.loads(done.output.strip().splitlines()[-1])
    return doc


def get(base: str, origin: str, ri: str) -> bytes:
    return (
        f"GET {base} HTTP/1.1\r\nHost: id-in.{IN_DOMAIN}\r\nX-M2M-Origin: {origin}\r\n"
        f"X-M2M-RI: {ri}\r\nX-M2M-RVI: 3\r\nAccept: application/json\r\n\r\n"
    ).encode()


def s_client(port: int, identity: str, key: bytes, *extra: str) -> list[str]:
    return [
        "openssl", "s_client", "-connect", f"{HOST}:{port}", *TLS12, *EXPORT,
        "-psk_identity", identity, "-psk", key.hex(), "-ign_eof", *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------- the MAF


async def test_maf_remove_client_ends_a_live_idle_sa_and_its_resumption(
    maf_world: MafWorld, tmp_path: Path
) -> None:
    """``m2msec maf remove-client`` de-registers the Kc of an idle ``openssl s_client``
    session: within revalidate_interval + a sweep the gateway sends close_notify, the SA
    record is REMOVED with its reason, the Kc is no longer held; the saved session then
    gets a full handshake, which fails (the MAF refuses the Kc)."""
    w = maf_world
    issued = await w.client().register_key(IN_CSE)
    sess = str(tmp_path / "session.pem")
    argv = s_client(w.gw_port, str(issued.kc_id), issued.kc)
    async with spawn([*argv, "-sess_out", sess]) as device:
        device.write(get(w.acme.base, "Csmartphone", "live-1"))
        await device.expect(r"X-M2M-RI: live-1", 10)
        said = keying_material(device.output)
        retriever = w.gateway.maf.retriever if w.gateway.maf else None
        assert retriever is not None and retriever.cached(issued.kc_id) is not None
        # Idle for two intervals: the MAF still hands out the Kc, the SA stays.
        await asyncio.sleep(2 * INTERVAL + SWEEP)
        assert w.gateway.sa.live_count() == 1 and retriever.stats.revalidations >= 1
        done = await m2msec("maf", "remove-client", SMARTPHONE[0], "--store", str(w.store_path))
        assert done.returncode == 0 and "1 key(s) de-registered" in done.output, done.describe()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await device.wait(BOUND + 5)  # ended by the gateway, not by s_client
        assert loop.time() - started < BOUND, device.describe()
    assert Path(sess).stat().st_size > 0
    shown = await sa_show(said)
    assert shown["sa"]["state"] == "removed"
    assert shown["sa"]["cause"] == CREDENTIAL_REMOVED_AT.format("MAF")
    assert shown["sa"]["cause"] == "administrative reasons: credential removed at the MAF"
    assert [e["event"] for e in shown["history"]] == ["established", "removed"]
    assert retriever.cached(issued.kc_id) is None and w.gateway.sa.removed_by_sweep == 1
    # The MAF audited the removal and refused the re-validation.
    events = [r for _, r in w.store.read_audit()]
    removal = [r for r in events if r["event"] == "client-deregistered"]
    assert removal and removal[0]["keys"] == 1 and removal[0]["reason"] == "removed by the operator"
    refused = [r for r in events if r["event"] == "key-retrieval-refused"]
    assert refused and refused[0]["rsc"] == 4004 and refused[0]["kcId"] == str(issued.kc_id)
    # The removed session does not come back: a full handshake, refused since the Kc is gone.
    failed = w.gateway.stats.handshakes_failed
    again = await run([*argv, "-sess_in", sess], stdin=get(w.acme.base, "Csmartphone", "r"))
    assert "Reused, TLS" not in again.output and "X-M2M-RI: r" not in again.output
    assert again.returncode != 0, again.describe()
    assert w.gateway.stats.handshakes_failed == failed + 1
    assert w.maf.stats.refused_by_rsc[4004] >= 2


async def test_maf_key_deregistration_by_entity_a_ends_its_sa(maf_world: MafWorld) -> None:
    """Key De-registration (8.8.2.10) over the MAF's own protocol reaches the live SA of our
    :class:`MafInitiator` the same way; its next request cannot be served."""
    w = maf_world
    initiator = MafInitiator(w.client(), IN_CSE)
    conn = await initiator.connect(HOST, w.gw_port)
    issued = initiator.current
    assert issued is not None
    client = OneM2MClient(conn)
    r = await client.request("GET", w.acme.base, origin="Csmartphone")
    assert r.rsc is not None
    await w.client().deregister_key(issued.kc_id)
    assert await asyncio.wait_for(conn.recv(), BOUND + 2) == b""
    assert conn.close_notify_received
    rec = w.gateway.sa.management.find(peer_id="Csmartphone")
    assert rec == []  # nothing of it is live
    shown = await sa_show(conn.context.sa_id)
    assert (shown["sa"]["state"], shown["sa"]["cause"]) == (
        "removed",
        CREDENTIAL_REMOVED_AT.format("MAF"),
    )
    await conn.close()


async def test_a_maf_that_is_down_does_not_end_live_sas(
    maf_world: MafWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.servers.gateway")
    w = maf_world
    initiator = MafInitiator(w.client(), IN_CSE)
    conn = await initiator.connect(HOST, w.gw_port)
    issued = initiator.current
    assert issued is not None
    client = OneM2MClient(conn)
    await w.maf.close()
    retriever = w.gateway.maf.retriever if w.gateway.maf else None
    assert retriever is not None
    tried = retriever.stats.failed
    await asyncio.sleep(4 * INTERVAL + 2 * SWEEP)
    assert retriever.stats.failed >= tried + 2  # re-asked several times, in vain
    assert w.gateway.sa.live_count() == 1 and w.gateway.sa.removed_by_sweep == 0
    assert retriever.cached(issued.kc_id) is not None
    r = await client.request("GET", w.acme.base, origin="Csmartphone")
    assert r.rsc is not None and r.rsc != 4107  # still served
    warnings = [m for m in caplog.messages if "cannot re-validate" in m]
    assert len(warnings) == 1, warnings  # logged once for the outage
    assert "the SAs are kept" in warnings[0] and issued.kc.hex() not in caplog.text
    await client.close()


async def test_revalidate_says_what_the_maf_answered(maf_world: MafWorld) -> None:
    """KeyFetcher.revalidate at the MAF itself: HELD with the key's fingerprint, REVOKED
    for a de-registered Kc (the cache dropped), UNREACHABLE once the MAF is down."""
    w = maf_world
    retriever = w.gateway.maf.retriever if w.gateway.maf else None
    assert retriever is not None
    client = w.client()
    one = await client.register_key(IN_CSE)
    two = await client.register_key(IN_CSE)
    await retriever.retrieve(one.kc_id)
    held = await retriever.revalidate(str(one.kc_id))
    assert held.verdict is Verdict.HELD and held.fingerprint and not held.ends_sa
    changed = await retriever.revalidate(one.kc_id, "0" * 16)
    assert changed.verdict is Verdict.CHANGED and changed.ends_sa
    assert retriever.cached(one.kc_id) is not None  # the MAF's key is the one held now
    await client.deregister_key(one.kc_id)
    gone = await retriever.revalidate(one.kc_id)
    assert (gone.verdict, gone.rsc) == (Verdict.REVOKED, 4004) and gone.ends_sa
    assert retriever.cached(one.kc_id) is None
    assert one.kc.hex() not in repr(gone) + gone.reason
    other = await retriever.revalidate(KcId.parse(f"{'ab' * 16}@maf.elsewhere.com"))
    assert other.verdict is Verdict.REVOKED  # not a configured MAF
    await w.maf.close()
    down = await retriever.revalidate(two.kc_id)
    assert down.verdict is Verdict.UNREACHABLE and not down.ends_sa


def test_revalidate_interval_setting(tmp_path: Path) -> None:
    gw = {"listen": ["tls://127.0.0.1:0"], "cse_id": "/mn-cse-1", "backend": "http://127.0.0.1:1"}
    base: dict[str, Any] = {"gateway": gw}
    assert parse_config(base).sa.revalidate_interval == 60.0
    cfg = parse_config({**base, "sa": {"revalidate_interval": 5}})
    assert cfg.sa.revalidate_interval == 5.0
    for bad in (0, -1, "soon"):
        with pytest.raises(ConfigurationError, match=r"sa\.revalidate_interval"):
            parse_config({**base, "sa": {"revalidate_interval": bad}})


# ----------------------------------------------------------------------------- the MEF


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("revoke-pki"))


@pytest.fixture
async def mef_world(pki: Pki, tmp_path: Path) -> AsyncIterator[World]:
    async with running_world(pki, tmp_path) as running:
        yield running


mn_acme = acme_fixture(scope="function")


async def test_mef_remove_enrolee_ends_a_live_idle_sa(
    mef_world: World, mn_acme: AcmeCse, tmp_path: Path
) -> None:
    """``openssl s_client`` enrols at the MEF and associates with the gateway (Enrolee B)
    by its KeID and Kpsa; removing the Enrolee at the MEF (the store call of ``m2msec mef
    remove-enrolee``) ends that idle SA within revalidate_interval + a sweep."""
    world = mef_world
    doc = gateway_config(world.pki, tmp_path, None, mef_port=world.target_port,
                         backend=mn_acme.url)  # fmt: skip
    doc["sa"] = {"revalidate_interval": INTERVAL}
    cfg = parse_config(doc)
    ke_id, kpsa = await openssl_enrol(world)
    base = f"/~/{mn_acme.cse_id}/{mn_acme.cse_name}"
    async with Gateway(cfg) as gw:
        gw.sa.sweep_interval = SWEEP
        port = gw.listeners[0].port
        request = get(base, "Cdevice-1", "mef-1").replace(
            f"id-in.{IN_DOMAIN}".encode(), b"mn-cse-123456.in.provider.com"
        )
        async with spawn(s_client(port, ke_id, kpsa)) as device:
            device.write(request)
            await device.expect(r"X-M2M-RI: mef-1", 10)
            said = keying_material(device.output)
            fetcher = gw.mef.fetcher if gw.mef else None
            assert fetcher is not None and fetcher.cached(KeId.parse(ke_id)) is not None
            await asyncio.sleep(2 * INTERVAL + SWEEP)
            assert gw.sa.live_count() == 1  # the MEF still issues the Kpsa
            found, erased = world.store.remove_enrolee(Bootstrap.PSK, KPM_ID)
            assert (found, erased) == (True, 1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await device.wait(BOUND + 5)
            assert loop.time() - started < BOUND, device.describe()
        shown = await sa_show(said)
        assert shown["sa"]["state"] == "removed"
        assert shown["sa"]["cause"] == "administrative reasons: credential removed at the MEF"
        assert fetcher.cached(KeId.parse(ke_id)) is None
        # A new handshake with the same KeID is refused: the MEF no longer knows it.
        again = await run(s_client(port, ke_id, kpsa), stdin=request)
        assert again.returncode != 0 and "X-M2M-RI: mef-1" not in again.output
    events = [r for _, r in world.store.read_audit()]
    removed = [r for r in events if r["event"] == "enrolee-removed"]
    assert len(removed) == 1 and "1 enrolment(s) erased" in removed[0]["reason"]
    refused = [r for r in events if r["event"] == "fetch-refused"]
    assert refused and refused[0]["rsc"] == 4004 and ke_id in refused[0]["reason"]
    assert kpsa.hex() not in json.dumps(events)
