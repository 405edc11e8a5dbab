"""GBA-based bootstrap with the MEF as BSF (seed 004 8.3.3.1 = V3.18 8.3.2.3), end to end.

The MEF's GBA role is a real BSF (``servers.bsf``, Ub and Zn); Enrolee A bootstraps over Ub
(Ke = Ks, KeID = B-TID) and derives Kpsa = Ks_NAF for the gateway's NAF FQDN (its CSE
public domain name) with NAF_Id's Ua id 01 00 01 00 AE (docs/readings.md A-31). The gateway,
Enrolee B, resolves the B-TID psk_identity on its ``framework=mef`` listener over Zn through
its ``[gba]`` NAF, GUSS-gated at the BSF, and forwards to a real IN-CSE (ACME). Our TLS-PSK
client, ``m2msec enrol --gba`` + ``m2msec connect`` and ``openssl s_client`` are the devices.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from m2msec.config import parse_config
from m2msec.crypto.gba import ks_ext_naf, naf_id, ua_protocol_id_tls_psk
from m2msec.errors import HandshakeError
from m2msec.frameworks.mef import EnroleeStore, EnrolmentResult
from m2msec.frameworks.mef.gba import enrol_gba, enrol_gba_or_reuse, target_naf_fqdn
from m2msec.frameworks.provisioned import PskInitiator
from m2msec.mef.records import EnrolmentTarget
from m2msec.servers.gateway import Gateway
from m2msec.service.onem2m_client import OneM2MClient
from m2msec.tls.aio import connect
from m2msec.tls.context import PeerKind
from tests.acme import AcmeCse, acme_fixture, ae_content
from tests.interop import run
from tests.test_gba_framework import (
    BSF_FQDN,
    DEVICE_IMPI,
    IN_CSE,
    IN_DOMAIN,
    K1,
    NAF_FQDN,
    OPC1,
    GbaNet,
    gba_network,
)
from tests.test_interop_gateway import registration, rsc

pytestmark = pytest.mark.interop

acme = acme_fixture(cse_type="IN", cse_id=IN_CSE, cse_name="cse-in")
TARGET = EnrolmentTarget.enrolee_b(f"/{IN_CSE}")


@contextlib.asynccontextmanager
async def enrolee_b(net: GbaNet, backend: str) -> AsyncIterator[Gateway]:
    """The gateway as Enrolee B: ``[mef]`` (fetchCredentials, unused here) and ``[gba]``."""
    cert, key, ca = str(net.naf_cert), str(net.naf_key), str(net.ca.cert_path)
    config = parse_config(
        {
            "gateway": {
                "listen": ["tls://127.0.0.1:0?framework=mef", "http://127.0.0.1:0"],
                "backend": backend,
                "cse_id": f"/{IN_CSE}",
                "app_rule": [{"credentials": ["*"], "allowed_aes": ["*"]}],
                "in_domain": IN_DOMAIN,
                "backend_timeout": 5.0,
            },
            "mef": {"url": "tls://mef.in.provider.com:1", "cert": cert, "key": key, "ca": ca},
            "gba": {
                "zn": f"tls://{net.zn_host}:{net.zn_port}",
                "bsf_fqdn": BSF_FQDN,
                "cert": cert,
                "key": key,
                "ca": ca,
            },
        }
    )
    async with Gateway(config) as gw:
        yield gw


def _port(gw: Gateway) -> int:
    return next(i.port for i in gw.listeners if i.framework == "mef")


async def _enrolled(net: GbaNet) -> EnrolmentResult:
    return await enrol_gba(net.device(), TARGET, in_domain=IN_DOMAIN)


def test_naf_fqdn_of_each_target() -> None:
    assert target_naf_fqdn(TARGET, IN_DOMAIN) == NAF_FQDN  # the CSE's public domain name
    assert target_naf_fqdn(EnrolmentTarget.maf("MAF.in.provider.com")) == "maf.in.provider.com"
    ae = EnrolmentTarget.enrolee_b("/id-in/Clight", "light.in.provider.com")
    assert target_naf_fqdn(ae) == "light.in.provider.com"


async def test_enrol_gba_associates_and_registers(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, enrolee_b(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        enrolment = await _enrolled(net)
        assert isinstance(enrolment.ke_id, str) and enrolment.ke_id.endswith(f"@{BSF_FQDN}")
        assert enrolment.credential.hex() not in repr(enrolment)
        assert enrolment.ke.hex() not in repr(enrolment)
        for tls13 in (True, False):  # Kpsa does not depend on the suite (A-31)
            initiator = PskInitiator(
                str(enrolment.ke_id), enrolment.credential, f"/{IN_CSE}", server_name=NAF_FQDN,
                verbatim=True,
            )  # fmt: skip
            conn = await connect("127.0.0.1", _port(gw), initiator.profile(tls13=tls13))
            ctx = conn.context
            assert ctx.key_id == enrolment.ke_id  # KpsaID = KeID = B-TID, verbatim (A-25)
            client = OneM2MClient(conn)
            name = f"gba-meter-{int(tls13)}"
            r = await client.request("POST", acme.base, origin="C", content=ae_content(name), ty=2)
            assert r.rsc == 2001, r.body
            await client.close()
            record = gw.recent_associations[ctx.sa_id]
            assert record.peer_kind is PeerKind.CREDENTIAL
            assert record.peer_id == f"12-{enrolment.ke_id}"
        # One Ub run, one Zn answer: the second association used the NAF's cached Ks_NAF.
        assert net.bsf.stats.bootstraps == 1 and net.bsf.stats.zn_answered == 1


async def test_guss_gates_the_naf_key(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, enrolee_b(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI, nafs=("mn-cse-123456.in.provider.com",))
        enrolment = await _enrolled(net)
        initiator = PskInitiator(
            str(enrolment.ke_id), enrolment.credential, f"/{IN_CSE}", verbatim=True
        )
        with pytest.raises(HandshakeError):
            await connect("127.0.0.1", _port(gw), initiator.profile())
        assert net.bsf.stats.zn_refused >= 1 and gw.stats.associations_established == 0


async def test_seed_000_key_is_not_the_kpsa(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, enrolee_b(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        device = net.device()
        boot = await device.ensure_bootstrap()
        # Ks_NAF of another Ua id (TLS_PSK_WITH_AES_128_GCM_SHA256, 00 A8) is another key.
        wrong = ks_ext_naf(
            boot.ks, boot.rand, boot.impi, naf_id(NAF_FQDN, ua_protocol_id_tls_psk(0xA8))
        )
        initiator = PskInitiator(boot.btid, wrong, f"/{IN_CSE}", verbatim=True)
        with pytest.raises(HandshakeError):
            await connect("127.0.0.1", _port(gw), initiator.profile())
        assert gw.stats.associations_established == 0


async def test_openssl_s_client_with_the_btid(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, enrolee_b(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        enrolment = await _enrolled(net)
        argv = [
            "openssl", "s_client", "-connect", f"127.0.0.1:{_port(gw)}",
            "-servername", NAF_FQDN, "-tls1_2", "-cipher", "PSK-AES128-CCM8",
            "-psk_identity", str(enrolment.ke_id), "-psk", enrolment.credential.hex(),
            "-quiet", "-ign_eof",
        ]  # fmt: skip
        done = await run(argv, stdin=registration(acme.base, "C", "s-client-mef-gba"))
        assert rsc(done.output) == "2001", done.output
        (record,) = gw.recent_associations.values()
        assert record.peer_id == f"12-{enrolment.ke_id}"


async def test_connect_cli_with_the_btid(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, enrolee_b(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        enrolment = await _enrolled(net)
        content = json.dumps(ae_content("cli-gba-meter"))
        argv = [
            sys.executable, "-m", "m2msec.cli", "connect",
            f"https://127.0.0.1:{_port(gw)}{acme.base}", "--psk-identity", str(enrolment.ke_id),
            "--psk", "-", "--id-b", f"/{IN_CSE}", "--servername", NAF_FQDN,
            "--from", "C", "-X", "POST", "--ty", "ae", "--content", content,
        ]  # fmt: skip
        done = await run(argv, stdin=enrolment.credential.hex().encode() + b"\n", timeout=30)
        assert done.returncode == 0 and "2001" in done.output, done.describe()
        assert gw.stats.registrations_bound == 1


async def test_enrolee_store_keeps_the_gba_enrolment(tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net:
        net.add_subscriber(DEVICE_IMPI)
        device = net.device()
        with EnroleeStore(tmp_path / "enrolee.db", kek=bytes(32)) as store:
            first, reused = await enrol_gba_or_reuse(device, TARGET, store, in_domain=IN_DOMAIN)
            assert not reused and first.bootstrap_id == f"gba:{DEVICE_IMPI}"
            again, reused = await enrol_gba_or_reuse(device, TARGET, store, in_domain=IN_DOMAIN)
            assert reused and again.credential == first.credential  # Ks reused, no Ub run
            kept = store.get(str(first.ke_id))
            assert kept is not None and kept.ke_id == first.ke_id and kept.ke == first.ke
            assert [k for k, _, _ in store.list()] == [first.ke_id]
            fresh, reused = await enrol_gba_or_reuse(
                device, TARGET, store, in_domain=IN_DOMAIN, fresh=True
            )
            assert not reused and fresh.ke_id != first.ke_id
        assert net.bsf.stats.bootstraps == 2


async def test_enrol_gba_then_connect_cli(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, enrolee_b(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        enrol = [
            sys.executable, "-m", "m2msec.cli", "enrol", "--gba", "--bsf", net.bsf.ub_url(),
            "--impi", DEVICE_IMPI, "--k", K1.hex(), "--opc", OPC1.hex(),
            "--enrolee-b", f"/{IN_CSE}", "--in-domain", IN_DOMAIN,
        ]  # fmt: skip
        done = await run(enrol, timeout=30)
        assert done.returncode == 0, done.describe()
        btid = next(w for w in done.output.split() if w.endswith(f"@{BSF_FQDN}"))
        # A second run reuses the live Ks (no Ub run): the same B-TID, nothing new stored.
        again = await run(enrol, timeout=30)
        assert again.returncode == 0 and "reused" in again.output, again.describe()
        assert btid in again.output and net.bsf.stats.bootstraps == 1
        content = json.dumps(ae_content("cli-enrolled-gba"))
        argv = [
            sys.executable, "-m", "m2msec.cli", "connect",
            f"https://127.0.0.1:{_port(gw)}{acme.base}", "--psk-identity", btid,
            "--id-b", f"/{IN_CSE}", "--servername", NAF_FQDN,
            "--from", "C", "-X", "POST", "--ty", "ae", "--content", content,
        ]  # fmt: skip
        done = await run(argv, timeout=30)  # no --psk: the B-TID's Kpsa from the store
        assert done.returncode == 0 and "2001" in done.output, done.describe()
        assert gw.stats.registrations_bound == 1


MAF_FQDN = "maf.in.provider.com"


async def test_maf_accepts_a_btid_as_kmid(tmp_path: Path) -> None:
    from m2msec.config.maf import MafConfig
    from m2msec.frameworks.maf import MafClient, MafError
    from m2msec.keyids import KmId
    from m2msec.maf.store import MafStore
    from m2msec.pki.authority import write_credential
    from m2msec.servers.maf import MafServer

    async with gba_network(tmp_path) as net:
        net.add_subscriber(DEVICE_IMPI, nafs={MAF_FQDN: {"aeId": "Cgba-maf-client"}})
        device = net.device()
        enrolment = await enrol_gba(device, EnrolmentTarget.maf(MAF_FQDN))
        key, cert = write_credential(net.ca.issue_service(MAF_FQDN), tmp_path / "maf")
        maf_store = MafStore(tmp_path / "maf.db")
        maf_store.add_entity_b(f"/{IN_CSE}")
        cfg = MafConfig(
            MAF_FQDN, str(tmp_path / "maf.db"), listen="tls://127.0.0.1:0",
            retrieval_listen="tls://127.0.0.1:0", cert=cert, key=key, ca=net.ca.cert_path,
            in_domain=IN_DOMAIN,
            mef_zn=f"tls://{net.zn_host}:{net.zn_port}", mef_bsf_fqdn=BSF_FQDN,
        )  # fmt: skip
        try:
            async with MafServer(cfg, maf_store) as maf:
                km_id = KmId.parse(str(enrolment.ke_id), verbatim=True)  # KmID = B-TID (A-25)
                client = MafClient("127.0.0.1", maf.client_port, MAF_FQDN, km_id,
                                   enrolment.credential)  # fmt: skip
                issued = await client.register_key(f"/{IN_CSE}")
                stored = maf_store.get_key(issued.kc_id.relative_hex)
                assert stored is not None and stored.km_id == km_id.canonical
                assert maf.enrolled is not None
                held = maf.enrolled.client(km_id.canonical)
                assert held is not None and held.entity_id == "Cgba-maf-client"  # the USS's AE
                assert maf_store.get_client(km_id.canonical) is None  # nothing written for it
                await client.register_key(f"/{IN_CSE}")
                assert net.bsf.stats.zn_answered == 1  # Km held by the MAF meanwhile
                # Ks_NAF for another NAF (a wrong Km) fails the MAF Handshake.
                wrong = await enrol_gba(device, TARGET, in_domain=IN_DOMAIN)
                bad = MafClient("127.0.0.1", maf.client_port, MAF_FQDN, km_id, wrong.credential)
                with pytest.raises(MafError, match=r"MAF Handshake .* failed"):
                    await bad.register_key(f"/{IN_CSE}")
        finally:
            maf_store.close()


async def test_maf_serve_mef_zn_shell(tmp_path: Path) -> None:
    from m2msec.frameworks.maf import MafClient
    from m2msec.keyids import KmId
    from m2msec.maf.store import MafStore
    from m2msec.pki.authority import write_credential
    from tests.interop import free_port, spawn, wait_listening

    async with gba_network(tmp_path) as net:
        net.add_subscriber(DEVICE_IMPI, nafs=(MAF_FQDN,))
        enrolment = await enrol_gba(net.device(), EnrolmentTarget.maf(MAF_FQDN))
        key, cert = write_credential(net.ca.issue_service(MAF_FQDN), tmp_path / "maf")
        with MafStore(tmp_path / "maf.db") as st:
            st.add_entity_b(f"/{IN_CSE}")
        port = free_port()
        argv = [
            sys.executable, "-m", "m2msec.cli", "maf", "serve", "--fqdn", MAF_FQDN,
            "--listen", f"tls://127.0.0.1:{port}", "--retrieval-listen", "off",
            "--store", str(tmp_path / "maf.db"), "--in-domain", IN_DOMAIN,
            "--cert", str(cert), "--key", str(key), "--ca", str(net.ca.cert_path),
            "--mef-zn", f"tls://{net.zn_host}:{net.zn_port}", "--mef-bsf-fqdn", BSF_FQDN,
        ]  # fmt: skip
        async with spawn(argv) as maf:
            await wait_listening(port, timeout=20)
            km_id = KmId.parse(str(enrolment.ke_id), verbatim=True)
            client = MafClient("127.0.0.1", port, MAF_FQDN, km_id, enrolment.credential)
            issued = await client.register_key(f"/{IN_CSE}")
            assert issued.kc_id.fqdn == MAF_FQDN
            assert f"B-TIDs of {BSF_FQDN}" in maf.output, maf.describe()
            assert enrolment.credential.hex() not in maf.output
        assert net.bsf.stats.zn_answered == 1


async def test_enrol_gba_for_the_maf_then_connect_maf_cli(tmp_path: Path) -> None:
    from m2msec.config.maf import MafConfig
    from m2msec.maf.store import MafStore
    from m2msec.pki.authority import write_credential
    from m2msec.servers.maf import MafServer

    async with gba_network(tmp_path) as net:
        net.add_subscriber(DEVICE_IMPI, nafs=(MAF_FQDN,))
        enrol = [
            sys.executable, "-m", "m2msec.cli", "enrol", "--gba", "--bsf", net.bsf.ub_url(),
            "--impi", DEVICE_IMPI, "--k", K1.hex(), "--opc", OPC1.hex(), "--maf-id", MAF_FQDN,
        ]  # fmt: skip
        done = await run(enrol, timeout=30)
        assert done.returncode == 0 and f"maf:{MAF_FQDN} (Km)" in done.output, done.describe()
        btid = next(w for w in done.output.split() if w.endswith(f"@{BSF_FQDN}"))
        key, cert = write_credential(net.ca.issue_service(MAF_FQDN), tmp_path / "maf")
        maf_store = MafStore(tmp_path / "maf.db")
        maf_store.add_entity_b(f"/{IN_CSE}")
        cfg = MafConfig(
            MAF_FQDN, str(tmp_path / "maf.db"), listen="tls://127.0.0.1:0",
            retrieval_listen=None, cert=cert, key=key,
            ca=net.ca.cert_path, in_domain=IN_DOMAIN,
            mef_zn=f"tls://{net.zn_host}:{net.zn_port}", mef_bsf_fqdn=BSF_FQDN,
        )  # fmt: skip
        try:
            async with MafServer(cfg, maf_store) as maf:
                connect_argv = [
                    sys.executable, "-m", "m2msec.cli", "connect", "https://127.0.0.1:1/x",
                    "--from", "Cdev", "--id-b", f"/{IN_CSE}",
                    "--maf", f"tls://127.0.0.1:{maf.client_port}", "--km-id", btid,
                ]  # fmt: skip
                done = await run(connect_argv, timeout=30)  # no --km: the store's Km
                issued = maf.stats.keys_issued
        finally:
            maf_store.close()
        assert issued == 1, done.describe()  # the MAF Handshake and Key Registration
        assert done.returncode == 1 and "cannot reach 127.0.0.1:1" in done.output
