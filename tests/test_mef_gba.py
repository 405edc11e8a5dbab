"""GBA-based bootstrap with the MEF as BSF (seed 004 8.3.3.1 = V3.18 8.3.2.3), end to end.

The MEF's GBA role is a real BSF (``servers.bsf``, Ub and Zn); Enrolee A bootstraps over Ub
(Ke = Ks, KeID = B-TID) and derives Kpsa = Ks_NAF for the gateway's NAF FQDN (its CSE
public domain name) with NAF_Id's Ua id 01 00 01 00 AE (docs/readings.md A-31). The gateway,
Enrolee B, resolves the B-TID psk_identity on its ``framework=mef`` listener over Zn through
its ``[gba]`` NAF, GUSS-gated at the BSF, and forwards to a real IN-CSE (ACME). Our TLS-PSK
client, ``m2msec connect`` and ``openssl s_client`` are the devices.
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
from m2msec.frameworks.mef.gba import GbaEnrolment, enrol_gba, target_naf_fqdn
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
    NAF_FQDN,
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


async def _enrolled(net: GbaNet) -> GbaEnrolment:
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
        assert enrolment.ke_id.endswith(f"@{BSF_FQDN}") and enrolment.naf_fqdn == NAF_FQDN
        assert "credential" not in repr(enrolment)
        for tls13 in (True, False):  # Kpsa does not depend on the suite (A-31)
            initiator = PskInitiator(
                enrolment.ke_id, enrolment.credential, f"/{IN_CSE}", server_name=NAF_FQDN,
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
            enrolment.ke_id, enrolment.credential, f"/{IN_CSE}", verbatim=True
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
            "-psk_identity", enrolment.ke_id, "-psk", enrolment.credential.hex(),
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
            f"https://127.0.0.1:{_port(gw)}{acme.base}", "--psk-identity", enrolment.ke_id,
            "--psk", "-", "--id-b", f"/{IN_CSE}", "--servername", NAF_FQDN,
            "--from", "C", "-X", "POST", "--ty", "ae", "--content", content,
        ]  # fmt: skip
        done = await run(argv, stdin=enrolment.credential.hex().encode() + b"\n", timeout=30)
        assert done.returncode == 0 and "2001" in done.output, done.describe()
        assert gw.stats.registrations_bound == 1
