"""The MAF-based SAEF end to end (TS-0003 8.2.2.3, seed 001): our MAF server, our gateway
in front of a real IN-CSE (ACME), and Entity A from the library and from the shell.

TR-0038 7.1.4's smartphone holds (KmID, Km) for the MAF ``maf.provider.com``; it gets a Kc
by MAF Handshake and Key Registration, associates with the IN-CSE's gateway (psk_identity
= KcId), and registers an AE whose AE-ID must be the one the MAF vouched for. The gateway
fetches the Kc by Key Retrieval over mutual TLS with its ``/id-in`` certificate.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.app_rules import AppRule
from m2msec.config import GatewayConfig, MafRetrievalConfig, parse_listen_url
from m2msec.config.maf import MafConfig
from m2msec.errors import HandshakeError
from m2msec.frameworks.maf import MafClient, MafInitiator
from m2msec.ids import CseId
from m2msec.maf.store import MafStore
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.sa.records import SaId
from m2msec.servers.gateway import Gateway
from m2msec.servers.maf import MafServer
from m2msec.service.onem2m_client import OneM2MClient
from m2msec.tls.aio import connect
from m2msec.tls.context import Framework, PeerKind, SecurityContext
from tests.acme import AcmeCse, acme_fixture, ae_content

IN_DOMAIN = "in.provider.com"
MAF_FQDN = "maf.provider.com"
IN_CSE = "/id-in"
SMARTPHONE = ("smartphone@maf.provider.com", bytes(range(1, 33)), "Csmartphone")
TABLET = ("tablet@maf.provider.com", bytes(range(101, 133)), None)

acme = acme_fixture(cse_type="IN", cse_id="id-in", cse_name="cse-in")


@dataclass
class World:
    maf: MafServer
    gateway: Gateway
    acme: AcmeCse

    @property
    def gw_port(self) -> int:
        return self.gateway.listeners[0].port

    def client(self, row: tuple[str, bytes, str | None] = SMARTPHONE) -> MafClient:
        return MafClient("127.0.0.1", self.maf.client_port, MAF_FQDN, row[0], row[1])


async def b_record(world: World, sa_id: str) -> SecurityContext:
    """Entity B's SA record of an association (B may record it just after A finished)."""
    for _ in range(200):
        record = world.gateway.recent_associations.get(sa_id)
        if record is not None:
            return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"the gateway has no SA record {sa_id}")


@pytest.fixture
async def world(tmp_path: Path, acme: AcmeCse) -> AsyncIterator[World]:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=IN_DOMAIN, extra_domains=[MAF_FQDN])
    maf_key, maf_cert = write_credential(ca.issue_service(MAF_FQDN), tmp_path / "maf")
    gw_key, gw_cert = write_credential(ca.issue(IN_CSE), tmp_path / "in-cse")
    store = MafStore(tmp_path / "maf.db")
    for km_id, km, entity in (SMARTPHONE, TABLET):
        store.add_client(km_id, km, entity)
    store.add_entity_b(IN_CSE)
    store.add_entity_b("/other-in")
    maf = MafServer(
        MafConfig(
            fqdn=MAF_FQDN,
            listen="tls://127.0.0.1:0",
            retrieval_listen="tls://127.0.0.1:0",
            cert=maf_cert,
            key=maf_key,
            ca=ca.cert_path,
            in_domain=IN_DOMAIN,
            audit_log=str(tmp_path / "audit.log"),
        ),
        store,
    )
    async with maf:
        assert maf.retrieval_port is not None
        gateway = Gateway(
            GatewayConfig(
                listen=(parse_listen_url("tls://127.0.0.1:0?framework=maf"),),
                backend=acme.url,
                cse_id=CseId.parse(IN_CSE),
                in_domain=IN_DOMAIN,
                app_rules=(AppRule(("*",), ("*",)),),  # any Credential-ID (issue 9)
                maf=MafRetrievalConfig(
                    addresses=((MAF_FQDN, "127.0.0.1", maf.retrieval_port),),
                    cert=gw_cert,
                    key=gw_key,
                    ca=ca.cert_path,
                ),
            )
        )
        async with gateway:
            yield World(maf, gateway, acme)
    store.close()


async def test_smartphone_registers_the_ae_the_maf_vouched_for(world: World) -> None:
    # targetIDs carries the Absolute CSE-ID (8.8.2.7); A binds the session to IdB /id-in.
    initiator = MafInitiator(
        world.client(), f"//{IN_DOMAIN}/id-in", f"id-in.{IN_DOMAIN}", id_b=IN_CSE
    )
    conn = await initiator.connect("127.0.0.1", world.gw_port)
    issued = initiator.current
    assert issued is not None
    ctx = conn.context
    assert ctx.framework is Framework.MAF and ctx.peer_id == IN_CSE
    assert ctx.key_id == str(issued.kc_id) and ctx.valid_until == issued.expires
    record = await b_record(world, ctx.sa_id)
    assert (record.peer_id, record.peer_kind) == ("Csmartphone", PeerKind.AE)
    assert record.key_id == str(issued.kc_id)
    client = OneM2MClient(conn)
    base = world.acme.base
    # Another AE-ID than the one the MAF gave is refused by the gateway itself.
    r = await client.request("POST", base, origin="Cintruder", ty=2, content=ae_content("x"))
    assert r.rsc == 4106
    r = await client.request(
        "POST", base, origin="Csmartphone", ty=2, content=ae_content("smartphone")
    )
    assert r.rsc == 2001, r.body
    assert r.json()["m2m:ae"]["aei"] == "Csmartphone"
    r = await client.request("GET", f"{base}/smartphone", origin="Csmartphone")
    assert r.rsc == 2000
    await client.close()
    assert world.maf.stats.keys_issued == 1 and world.maf.stats.keys_retrieved == 1


async def test_without_entity_id_the_km_credential_registers_an_ae(world: World) -> None:
    initiator = MafInitiator(world.client(TABLET), IN_CSE)
    conn = await initiator.connect("127.0.0.1", world.gw_port)
    record = await b_record(world, conn.context.sa_id)
    assert (record.peer_id, record.peer_kind) == ("11-tablet@maf.provider.com", PeerKind.CREDENTIAL)
    client = OneM2MClient(conn)
    base = world.acme.base
    r = await client.request("GET", base, origin="Ctablet")
    assert r.rsc == 4103  # bound to a Credential-ID: register an AE first
    r = await client.request("POST", base, origin="C", ty=2, content=ae_content("tablet"))
    assert r.rsc == 2001, r.body
    aei = r.json()["m2m:ae"]["aei"]
    r = await client.request("GET", f"{base}/tablet", origin=aei)
    assert r.rsc == 2000
    await client.close()


async def test_expired_kc_fails_and_entity_a_recovers_by_itself(world: World) -> None:
    # Entity A's clock lags a minute: it keeps using its Kc past the MAF's lifetime.
    lagging = MafInitiator(
        world.client(),
        IN_CSE,
        lifetime=2,
        renew_before=0,
        clock=lambda: datetime.now(UTC) - timedelta(seconds=60),
    )
    conn = await lagging.connect("127.0.0.1", world.gw_port)
    stale = lagging.current
    assert stale is not None and stale.expires - datetime.now(UTC) <= timedelta(seconds=2)
    client = OneM2MClient(conn)
    r = await client.request("GET", world.acme.base, origin="Csmartphone")
    assert r.rsc in (2000, 4103)  # ACME's own access rules; what matters is it got through
    await asyncio.sleep((stale.expires - datetime.now(UTC)).total_seconds() + 0.5)
    # The open association outlived its Kc: it gets no more service (docs/readings.md A-16).
    # Either its next request is refused, or the SA sweep (every cache_ttl) expired it first
    # and ended the session with close_notify (docs/sa.md section 5): both are asserted.
    sa_id = SaId.from_hex(conn.context.sa_id)
    try:
        r = await client.request("GET", world.acme.base, origin="Csmartphone")
    except ConnectionError:
        pass
    else:
        assert r.rsc == 4107
    for _ in range(300):  # the gateway ends the session just after its answer
        if world.gateway.sa.management.get(sa_id) is None:
            break
        await asyncio.sleep(0.01)
    assert world.gateway.sa.management.get(sa_id) is None  # no longer a live SA
    await client.close()
    # A new handshake with the old Kc fails ...
    failed_before = world.gateway.stats.handshakes_failed
    with pytest.raises(HandshakeError):
        await connect("127.0.0.1", world.gw_port, lagging.profile(stale))
    assert world.gateway.stats.handshakes_failed == failed_before + 1
    # ... and the library runs a fresh MAF Handshake and retries once, by itself.
    conn = await lagging.connect("127.0.0.1", world.gw_port)
    assert lagging.registrations == 2 and conn.context.key_id != str(stale.kc_id)
    record = await b_record(world, conn.context.sa_id)
    assert record.peer_id == "Csmartphone"
    await conn.close()


async def test_entity_b_not_in_target_ids_is_refused(world: World) -> None:
    initiator = MafInitiator(world.client(), "/other-in")
    with pytest.raises(HandshakeError):
        await initiator.connect("127.0.0.1", world.gw_port)
    assert world.gateway.stats.associations_established == 0
    assert world.gateway.stats.handshakes_failed == 1
    assert world.maf.stats.refused_by_rsc[4103] >= 1
    assert initiator.registrations == 1  # a Kc fresh from the MAF is not retried


async def test_key_update_and_deregistration_reach_entity_b(world: World) -> None:
    client = world.client()
    issued = await client.register_key(IN_CSE, 60)
    later = await client.update_key(issued.kc_id, lifetime=timedelta(hours=1))
    assert later is not None and later - issued.expires > timedelta(minutes=50)
    await client.deregister_key(issued.kc_id)
    # Entity B never held this Kc: the MAF no longer hands it out, so the handshake fails.
    initiator = MafInitiator(client, IN_CSE)
    with pytest.raises(HandshakeError):
        await connect("127.0.0.1", world.gw_port, initiator.profile(issued))
    assert world.maf.stats.keys_updated == 1 and world.maf.stats.keys_deregistered == 1
    assert world.gateway.stats.associations_established == 0


async def test_connect_cli_does_the_whole_flow(world: World) -> None:
    argv = [
        sys.executable, "-m", "m2msec.cli", "connect",
        f"https://127.0.0.1:{world.gw_port}{world.acme.base}",
        "--from", "Csmartphone", "--id-b", IN_CSE,
        "--maf", f"tls://127.0.0.1:{world.maf.client_port}",
        "--maf-fqdn", MAF_FQDN, "--km-id", SMARTPHONE[0], "--km", "-",
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out_b, err_b = await asyncio.wait_for(
        proc.communicate(SMARTPHONE[1].hex().encode() + b"\n"), 60
    )
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode in (0, 3), out + err  # 3: ACME answered with an error status
    assert "maf" in out and f"@{MAF_FQDN}" in out  # framework and the KcId
    assert "X-M2M-RSC" in out
    assert SMARTPHONE[1].hex() not in out + err
    assert world.maf.stats.keys_issued == 1
    record = next(iter(world.gateway.recent_associations.values()))
    assert record.peer_id == "Csmartphone" and record.framework is Framework.MAF


async def test_kc_expiry_keeps_its_microseconds_end_to_end(world: World, tmp_path: Path) -> None:
    """Issue 9 item 7: a Kc asked for now + 6.5 s gets exactly that, to the microsecond, on
    the wire, in the MAF store, at Entity B (Key Retrieval) and as the gateway's expiry."""
    t0 = datetime.now(UTC).replace(microsecond=123456)
    requested = t0 + timedelta(seconds=6.5)
    assert requested.microsecond == 623456
    client = MafClient(
        "127.0.0.1", world.maf.client_port, MAF_FQDN, SMARTPHONE[0], SMARTPHONE[1], clock=lambda: t0
    )
    initiator = MafInitiator(client, IN_CSE, lifetime=6.5, renew_before=0, clock=lambda: t0)
    conn = await initiator.connect("127.0.0.1", world.gw_port)
    issued = initiator.current
    assert issued is not None
    assert issued.expires == requested  # the MAF's answer, parsed from the wire
    stored = world.maf.store.get_key(issued.kc_id.relative_bytes)
    assert stored is not None and stored.expires_at == requested
    retrieved = world.gateway.maf.retriever.cached(issued.kc_id) if world.gateway.maf else None
    assert retrieved is not None and retrieved.expires == requested
    record = await b_record(world, conn.context.sa_id)
    assert record.valid_until == requested
    assert not record.expired(requested - timedelta(microseconds=1))
    assert record.expired(requested)
    await conn.close()
    # The fraction is in the store file itself, not only in a cache.
    with MafStore(world.maf.store.path) as again:
        reread = again.get_key(issued.kc_id.relative_bytes)
        assert reread is not None and reread.expires_at == requested and reread.kc == issued.kc
