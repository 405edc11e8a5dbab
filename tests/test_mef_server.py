"""The MEF server (TS-0003 8.3.2.1, seed 004) end to end over real TLS on loopback.

The Enrolee is our own TLS engine with a TLS-PSK profile (psk_identity = KpmID, psk = Kpm)
or a certificate, and a oneM2M HTTP client; the Enrolment Targets are our certificate
initiator with certificates from a fresh ``m2msec ca`` (an IN-CSE as Enrolee B, a MAF by
its FQDN). The helpers here are shared by tests/test_interop_mef.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.config.mef import MefConfig, parse_mef_config
from m2msec.errors import ConfigurationError, HandshakeError
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.mef.keys import derive_for_target
from m2msec.mef.records import Bootstrap, Enrolee, EnrolmentTarget
from m2msec.mef.store import MefStore
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.servers.mef import MefServer
from m2msec.servers.mef_session import BOOTSTRAP_EXPORT_OCTETS, BOOTSTRAP_EXPORTER_LABEL
from m2msec.service.coap_client import CoapClient
from m2msec.service.onem2m_client import OneM2MClient, OneM2MResponse
from m2msec.tls.aio import TLSConnection, connect
from m2msec.tls.aio_dtls import dtls_connect
from m2msec.tls.profiles import TLSProfile, Transport
from tests.helpers import psk_client_profile

HOST = "127.0.0.1"
MEF_FQDN = "mef.in.provider.com"
IN_DOMAIN = "in.provider.com"
MAF_FQDN = "maf.in.provider.com"
KEK = bytes(range(32))
KPM_ID = "device-1@mef.in.provider.com"
KPM = bytes.fromhex("4b706d2d6f662d6465766963652d312d666f722d7468652d4d45462d74657374")
MAF_KPM_ID = "device-2@mef.in.provider.com"
ENROLEE_ID = "/mn-cse-123456/Cdevice-1"
CERT_ENROLEE = "/mn-cse-777"  # bootstraps with its certificate (8.3.2.2)
GATEWAY = EnrolmentTarget.enrolee_b("/in-cse")
MAF = EnrolmentTarget.maf(MAF_FQDN)
LIFETIME = timedelta(days=1)


@dataclass
class Pki:
    ca: CertificateAuthority
    mef_cert: Path
    mef_key: Path
    creds: dict[str, CertificateCredential]
    files: dict[str, tuple[Path, Path]]


def make_pki(directory: Path) -> Pki:
    ca = CertificateAuthority.init(directory / "ca", domain=IN_DOMAIN)
    key, cert = write_credential(ca.issue_service(MEF_FQDN), directory / "mef")
    issued = {
        "/in-cse": ca.issue("/in-cse"),
        "/in-cse2": ca.issue("/in-cse2"),
        CERT_ENROLEE: ca.issue(CERT_ENROLEE),
        MAF_FQDN: ca.issue_service(MAF_FQDN),
    }
    creds = {
        n: CertificateCredential(i.cert_pem, i.key_pem, ca.cert_pem) for n, i in issued.items()
    }
    files = {n: write_credential(i, directory / n.strip("/")) for n, i in issued.items()}
    return Pki(ca, cert, key, creds, files)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("mef-pki"))


def seed_store(path: str | Path, kek: bytes | None = KEK) -> MefStore:
    """The Enrolees and targets of these tests (``m2msec mef`` admin commands' job);
    ``kek`` None: the store's own KEK file, beside it, as a server process reads it."""
    store = MefStore(path, kek=kek)
    store.add_enrolee(Enrolee(Bootstrap.PSK, KPM_ID, ENROLEE_ID, GATEWAY, LIFETIME, KPM))
    store.add_enrolee(Enrolee(Bootstrap.PSK, MAF_KPM_ID, "/mn-cse-2/Cdev2", MAF, LIFETIME, KPM))
    store.add_enrolee(Enrolee(Bootstrap.CERTIFICATE, CERT_ENROLEE, CERT_ENROLEE, GATEWAY, LIFETIME))
    store.allow_target(GATEWAY)
    store.allow_target(MAF)
    return store


def mef_config(pki: Pki, tmp_path: Path, **kw: Any) -> MefConfig:
    return MefConfig(
        MEF_FQDN,
        str(tmp_path / "mef.db"),
        enrolee_listen=(
            f"tls://{HOST}:0",
            f"tls://{HOST}:0?framework=certificate",
            f"dtls://{HOST}:0",
        ),
        target_listen=f"tls://{HOST}:0",
        cert=pki.mef_cert,
        key=pki.mef_key,
        ca=pki.ca.cert_path,
        **kw,
    )


@contextlib.asynccontextmanager
async def running_mef(pki: Pki, tmp_path: Path) -> AsyncIterator[MefServer]:
    """A seeded MEF in-process: PSK and certificate Enrolee listeners, a target listener."""
    store = seed_store(tmp_path / "mef.db")
    try:
        async with MefServer(mef_config(pki, tmp_path), store) as server:
            yield server
    finally:
        store.close()


@pytest.fixture
async def mef(pki: Pki, tmp_path: Path) -> AsyncIterator[MefServer]:
    async with running_mef(pki, tmp_path) as server:
        yield server


# ----------------------------------------------------------------------------- clients


def enrolee_profile(
    kpm_id: str = KPM_ID, kpm: bytes = KPM, *, tls13: bool = True, dtls: bool = False
) -> TLSProfile:
    """The Enrolee's side of the bootstrap handshake (8.3.2.1): KpmID / Kpm."""
    transport = Transport.DTLS if dtls else Transport.TLS
    return psk_client_profile(
        kpm_id.encode(), kpm, tls13, transport=transport, peer_id=MEF_FQDN, server_name=MEF_FQDN
    )


async def psk_enrolee(
    server: MefServer, kpm_id: str = KPM_ID, kpm: bytes = KPM, *, tls13: bool = True
) -> tuple[OneM2MClient, bytes]:
    port = server.listener("enrolee").port
    conn = await connect(HOST, port, enrolee_profile(kpm_id, kpm, tls13=tls13), timeout=10)
    return OneM2MClient(conn, host=MEF_FQDN), export(conn)


async def cert_enrolee(
    server: MefServer, cred: CertificateCredential
) -> tuple[OneM2MClient, bytes]:
    port = server.listener("enrolee", "certificate").port
    profile = CertificateInitiator.for_service(cred, MEF_FQDN, in_domain=IN_DOMAIN).profile()
    conn = await connect(HOST, port, profile, timeout=10)
    return OneM2MClient(conn, host=MEF_FQDN), export(conn)


async def target(server: MefServer | int, cred: CertificateCredential) -> OneM2MClient:
    """A target's mutual TLS to the MEF (``server`` in-process, or a process's port)."""
    profile = CertificateInitiator.for_service(cred, MEF_FQDN, in_domain=IN_DOMAIN).profile()
    port = server if isinstance(server, int) else server.listener("target").port
    conn = await connect(HOST, port, profile, timeout=10)
    return OneM2MClient(conn, host=MEF_FQDN)


def export(conn: TLSConnection) -> bytes:
    return conn.export_keying_material(BOOTSTRAP_EXPORTER_LABEL, BOOTSTRAP_EXPORT_OCTETS)


async def enrol(client: OneM2MClient, content: Any = None) -> OneM2MResponse:
    return await client.request(
        "POST", "/mef/enrolment", origin="Cdevice-1", content=content or {"mefEnrolReq": {}}
    )


async def fetch(
    client: OneM2MClient, ke_id: str, suid: int = 22, origin: str = "/in-cse"
) -> OneM2MResponse:
    return await client.request("GET", f"/fetchCredentials/{ke_id}/{suid}", origin=origin)


def ke_id_of(exported: bytes) -> str:
    return f"{exported[:16].hex()}@{MEF_FQDN}"


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
async def test_psk_enrolment_then_fetch_by_enrolee_b(
    mef: MefServer, pki: Pki, tls13: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client, exported = await psk_enrolee(mef, tls13=tls13)
    got = await enrol(client)
    assert got.status == 201 and got.rsc == 2001, got.body
    body = got.json()["mefEnrol"]
    assert body["keID"] == ke_id_of(exported)
    assert body["enroleeBID"] == "/in-cse" and body["enroleeID"] == ENROLEE_ID
    second = await enrol(client)  # one Ke per handshake
    assert second.rsc == 4105
    await client.close()

    gateway = await target(mef, pki.creds["/in-cse"])
    answer = await fetch(gateway, body["keID"])
    assert answer.rsc == 2000, answer.body
    cred = answer.json()["fetchCredentials"]
    kpsa = derive_for_target(exported[16:], "/in-cse", enrolee_b=True)
    assert cred["credential"] == kpsa.hex() and cred["enroleeID"] == ENROLEE_ID
    assert cred["lifetime"] == body["expirationTime"]
    await gateway.close()
    for secret in (KPM, exported[16:], kpsa):
        assert secret.hex() not in caplog.text
    assert mef.stats["enrolments"] == 1 and mef.stats["fetched"] == 1


async def test_maf_target_fetches_km(mef: MefServer, pki: Pki) -> None:
    client, exported = await psk_enrolee(mef, MAF_KPM_ID)
    got = await enrol(client, {"mefEnrolReq": {"mafID": MAF_FQDN}})
    assert got.rsc == 2001, got.body
    await client.close()
    maf = await target(mef, pki.creds[MAF_FQDN])
    answer = await fetch(maf, got.json()["mefEnrol"]["keID"], 21, MAF_FQDN)
    assert answer.rsc == 2000, answer.body
    km = derive_for_target(exported[16:], MAF_FQDN, enrolee_b=False)
    assert answer.json()["fetchCredentials"]["credential"] == km.hex()
    await maf.close()


async def test_certificate_enrolee(mef: MefServer, pki: Pki) -> None:
    client, exported = await cert_enrolee(mef, pki.creds[CERT_ENROLEE])
    got = await enrol(client)
    assert got.rsc == 2001, got.body
    assert got.json()["mefEnrol"]["keID"] == ke_id_of(exported)
    await client.close()
    gateway = await target(mef, pki.creds["/in-cse"])
    answer = await fetch(gateway, ke_id_of(exported))
    kpsa = derive_for_target(exported[16:], "/in-cse", enrolee_b=True)
    assert answer.json()["fetchCredentials"]["credential"] == kpsa.hex()
    await gateway.close()


async def test_dtls_enrolment_over_coap(mef: MefServer, pki: Pki) -> None:
    """The TLS-PSK bootstrap over DTLS 1.2, the Enrolment Exchange over CoAP."""
    port = mef.listener("enrolee", "psk", "dtls").port
    assoc = await dtls_connect(enrolee_profile(dtls=True), HOST, port, timeout=10)
    exported = assoc.export_keying_material(BOOTSTRAP_EXPORTER_LABEL, BOOTSTRAP_EXPORT_OCTETS)
    assert assoc.context.cipher_suite == "PSK-AES128-CCM8"  # 10.2.2's DTLS suite first
    client = CoapClient(assoc)
    try:
        got = await client.request(
            "POST", "/mef/enrolment", origin="Cdevice-1", content={"mefEnrolReq": {}}
        )
        assert got.rsc == 2001, got.payload
        assert json.loads(got.payload)["mefEnrol"]["keID"] == ke_id_of(exported)
        again = await client.request("POST", "/mef/enrolment", origin="Cdevice-1")
        assert again.rsc == 4105
    finally:
        await client.close()
    gateway = await target(mef, pki.creds["/in-cse"])
    answer = await fetch(gateway, ke_id_of(exported))
    kpsa = derive_for_target(exported[16:], "/in-cse", enrolee_b=True)
    assert answer.json()["fetchCredentials"]["credential"] == kpsa.hex()
    await gateway.close()


async def test_unknown_kpm_id_and_wrong_kpm_fail_the_handshake_only(mef: MefServer) -> None:
    with pytest.raises(HandshakeError):
        await psk_enrolee(mef, "nobody@mef.in.provider.com")
    with pytest.raises(HandshakeError):
        await psk_enrolee(mef, KPM_ID, b"\xee" * 32)
    client, _ = await psk_enrolee(mef)  # the server keeps serving the next Enrolee
    assert (await enrol(client)).rsc == 2001
    await client.close()
    assert mef.stats["handshakes_failed"] == 2


async def test_fetch_refusals(mef: MefServer, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, exported = await psk_enrolee(mef)
    assert (await enrol(client)).rsc == 2001
    await client.close()
    ke_id = ke_id_of(exported)
    other = await target(mef, pki.creds["/in-cse2"])  # a CSE, not an allowed target
    assert (await fetch(other, ke_id, origin="/in-cse2")).rsc == 4103
    await other.close()
    gateway = await target(mef, pki.creds["/in-cse"])
    assert (await fetch(gateway, ke_id, suid=21)).rsc == 4103  # not this target's usage
    assert (await fetch(gateway, ke_id, suid=7)).rsc == 4000
    unknown = await fetch(gateway, f"{'ab' * 16}@{MEF_FQDN}")
    assert unknown.rsc == 4004
    assert unknown.json()["fetchCredentials"] == {
        "status": False,
        "errorString": "no such enrolment for this Enrolment Target",
    }
    assert (await fetch(gateway, ke_id, origin="/in-cse2")).rsc == 4106
    ok = await fetch(gateway, ke_id)
    assert ok.rsc == 2000
    await gateway.close()
    kpsa = derive_for_target(exported[16:], "/in-cse", enrolee_b=True)
    for secret in (KPM, exported[16:], kpsa):
        assert secret.hex() not in caplog.text
    events = [r["event"] for _, r in mef.store.read_audit()]
    assert events.count("fetch-refused") == 5, events


async def test_expired_enrolment_is_not_found(pki: Pki, tmp_path: Path) -> None:
    store = seed_store(tmp_path / "mef.db")
    store.add_enrolee(
        Enrolee(Bootstrap.PSK, KPM_ID, ENROLEE_ID, GATEWAY, timedelta(seconds=1), KPM),
        replace=True,
    )
    async with MefServer(mef_config(pki, tmp_path), store) as server:
        client, exported = await psk_enrolee(server)
        assert (await enrol(client)).rsc == 2001
        await client.close()
        gateway = await target(server, pki.creds["/in-cse"])
        await asyncio.sleep(2.1)
        assert (await fetch(gateway, ke_id_of(exported))).rsc == 4004
        await gateway.close()
    store.close()


def test_config_keys(tmp_path: Path, pki: Pki) -> None:
    cfg = parse_mef_config(
        {
            "mef": {
                "fqdn": MEF_FQDN,
                "enrolee_listen": "tls://127.0.0.1:9000",
                "target_listen": "",
                "store": "mef.db",
            }
        },
        base_dir=tmp_path,
    )
    assert cfg.enrolee_listen == ("tls://127.0.0.1:9000",) and cfg.target_listen is None
    assert cfg.store == str(tmp_path / "mef.db")
    with pytest.raises(ConfigurationError, match="certificate"):
        parse_mef_config({"mef": {"fqdn": MEF_FQDN}})  # the target listener needs one
    with pytest.raises(ConfigurationError, match="unknown key"):
        parse_mef_config({"mef": {"fqdn": MEF_FQDN, "listen": "x"}})
    with pytest.raises(ConfigurationError, match="framework=psk or certificate"):
        MefConfig(MEF_FQDN, enrolee_listen=("tls://h:1?framework=gba",), target_listen=None)
