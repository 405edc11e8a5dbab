"""TR-0038 clause 7.1's home scenario, run for real on loopback.

* Lights ADN-AE1 and ADN-AE2 reach the home gateway MN-CSE (mn-cse-123456) by the
  Provisioned Symmetric Key framework (TS-0003 8.2.2.1) with TR-0038's psk tables
  7.1.2-1 and 7.1.2-2, then register (TR-0038 7.1.5) and publish their state.
* ADN-AE2 tries to act as Clight-AE1 and is refused (4106) by the gateway.
* ADN-AE1 reaches the MN-CSE again by the CoAP binding (TS-0008) over DTLS-PSK
  (TS-0003 10.2.1, TLS_PSK_WITH_AES_128_CCM_8), the way a constrained light would.
* The TR-0038 chain ADN-AE1 -> MN-CSE -> IN-CSE over two SAs, ACME on both CSEs: ACME as
  the MN-CSE registers at the IN-CSE (a <remoteCSE> CREATE, TS-0001 10.1.1.2.1) through
  the home gateway's egress (docs/gateway.md section 11), which keeps SA 2 to the IN-CSE's
  gateway by the Certificate-Based framework (8.2.2.2) with the certificate its
  credentials table names; ADN-AE1's request for the IN-CSE crosses SA 1 (PSK), ACME MN,
  the egress and SA 2 to ACME IN.
* A GBA device reaches the IN-CSE by the GBA-based framework (seed 000 8.2.3.2, legacy):
  it bootstraps with an in-process BSF (Ub), the IN-CSE's gateway, as NAF, fetches
  Ks_NAF over Zn, and the device registers an AE; a second association reuses Ks.
* TR-0038 7.1.4: the smartphone reaches the IN-CSE by the MAF-based framework (8.2.2.3):
  MAF Handshake with its KmID/Km at an in-process MAF, Key Registration of a Kc for the
  IN-CSE, TLS-PSK with the IN-CSE's gateway under the KcId; the gateway fetches the Kc by
  Key Retrieval over mutual TLS and binds the AE-ID the MAF vouches for.
* A factory-fresh meter, holding only its KpmID/Kpm, enrols at an in-process MEF (TS-0003
  8.3.2.1, seed 004; PSK bootstrap) for the home gateway as Enrolee B, then reaches it by
  TLS-PSK under its KeID: the gateway (``framework=mef``) fetches the Kpsa from the MEF,
  its psk table never holding a row for the meter.
* A second device, a sensor holding only its USIM, enrols for the MAF by the GBA-based
  bootstrap (seed 004 8.3.3.1): it bootstraps over Ub at the MEF's GBA role, a BSF under
  the MEF's FQDN whose GUSS allows the MAF as NAF, and takes Km = Ks_NAF, KmID = B-TID;
  the MAF (``mef_zn``) fetches Km over Zn, and the device reaches the IN-CSE by the
  MAF-based framework with KmID = the B-TID.

The CSEs are ACME instances; m2msec gateways stand in front of them as Entity B.

One of the two files allowed past ~600 lines: it is one story told step by step, each step
a short function, and splitting it would scatter the scenario a reader follows top to
bottom (the steps share the running servers of :func:`run_demo`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from m2msec.acme import AcmeCSE, Registrar, plain_request
from m2msec.app_rules import AppRule
from m2msec.bindings.coap.mapping import CoapOneM2MResponse
from m2msec.config import (
    CertificateConfig,
    GatewayConfig,
    GbaConfig,
    MafRetrievalConfig,
    MefTargetConfig,
    PskConfig,
    SaConfig,
    parse_listen_url,
)
from m2msec.config.egress import EgressConfig, parse_egress
from m2msec.config.maf import MafConfig
from m2msec.config.mef import MefConfig
from m2msec.frameworks.gba_device import GbaDevice
from m2msec.frameworks.maf import MafClient, MafInitiator
from m2msec.frameworks.mef import Enrolee, EnrolmentResult, KpmCredential
from m2msec.frameworks.mef.gba import enrol_gba
from m2msec.frameworks.provisioned import PskInitiator
from m2msec.gba.aka import Usim
from m2msec.gba.records import Guss
from m2msec.ids import CseId
from m2msec.keyids import KmId
from m2msec.maf.store import MafStore
from m2msec.mef.records import Bootstrap, EnrolmentTarget
from m2msec.mef.records import Enrolee as EnroleeConfig
from m2msec.mef.store import MefStore
from m2msec.paths import write_private
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.sa.records import SaRecord
from m2msec.servers.bsf import BsfConfig, BsfServer
from m2msec.servers.gateway import Gateway
from m2msec.servers.maf import MafServer
from m2msec.servers.mef import MefServer
from m2msec.service.coap_client import CoapClient
from m2msec.service.onem2m_client import OneM2MClient, OneM2MResponse
from m2msec.store import SqlitePskStore
from m2msec.store.base import PskEntry
from m2msec.tls.aio import TLSConnection, connect
from m2msec.tls.context import SecurityContext

IN_DOMAIN = "in.provider.com"
MN_CSE = "mn-cse-123456"
IN_CSE = "id-in"
BSF_FQDN = f"bsf.{IN_DOMAIN}"
#: The GBA device's subscription (K and OPc of TS 35.208 test set 1, a demo value).
IMS = "ims.mnc001.mcc001.3gppnetwork.org"
GBA_IMPI = f"gba-meter@{IMS}"
GBA_K = "465b5ce8b199b49faa5f0a2ee238a6bc"
GBA_OPC = "cd63cb71954a9f4e48a5994e37a02baf"
MAF_FQDN = "maf.provider.com"
#: TR-0038 7.1.4's smartphone: its KmID at the MAF and the AE-ID the MAF vouches for.
SMARTPHONE = ("smartphone@maf.provider.com", "Csmartphone")

MEF_FQDN = f"mef.{IN_DOMAIN}"
#: The MEF's PSK Enrolee (KpmID, Enrolee-ID, Enrolment Target); its Kpm is drawn at "factory".
METER = ("meter-0001", f"/{MN_CSE}/Cmeter-1", EnrolmentTarget.enrolee_b(f"/{MN_CSE}"))
#: The GBA Enrolee (IMPI, the AE-ID its USS names, Enrolment Target); K and OPc drawn likewise.
SENSOR = (f"sensor-0002@{IMS}", "Csensor-2", EnrolmentTarget.maf(MAF_FQDN))

#: TR-0038 Table 7.1.2-1 (the lights) and 7.1.2-2 (the MN-CSE): the same rows.
LIGHTS = (
    ("ADN-AE1", "Clight-AE1", "1a2b3c4d5e6f7a8b", "AE123456789012-Light@in.provider.com"),
    ("ADN-AE2", "Clight-AE2", "12345678abcdefab", "AE123456789015-Light@in.provider.com"),
)

Say = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo established and what it refused, for the summary table."""

    #: (label, Entity A's context - or, for the egress, its initiator-side SA record -,
    #: Entity B's context for the same SA identifier)
    associations: list[tuple[str, SecurityContext | SaRecord, SecurityContext | None]] = field(
        default_factory=list
    )
    steps: list[tuple[str, str, bool]] = field(default_factory=list)
    gateway_stats: dict[str, dict[str, object]] = field(default_factory=dict)
    #: The home gateway's egress counters (``gateway.egress.stats``).
    egress_stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(passed for _, _, passed in self.steps)


def _check(result: DemoResult, say: Say, what: str, response: OneM2MResponse, want: int) -> None:
    passed = response.rsc == want
    result.steps.append((what, f"{response.rsc}", passed))
    mark = "[green]ok[/]" if passed else f"[red]expected {want}[/]"
    say(f"  {what}: X-M2M-RSC {response.rsc} {mark}")


async def run_demo(workdir: Path, say: Say) -> DemoResult:
    result = DemoResult()
    say("[bold]1. Credential configuration[/]")
    store = SqlitePskStore(workdir / "mn-gateway-psk.db")
    for _, ae_id, key, kpsa_id in LIGHTS:
        store.add(PskEntry(kpsa_id, bytes.fromhex(key), ae_id))
    say(f"  MN-CSE psk-lookup-table: {store.count()} rows (TR-0038 Table 7.1.2-2)")
    ca = CertificateAuthority.init(workdir / "ca", domain=IN_DOMAIN, extra_domains=[MAF_FQDN])
    mn_key, mn_cert = write_credential(ca.issue(f"/{MN_CSE}"), workdir / "mn-cse")
    in_key, in_cert = write_credential(ca.issue(f"/{IN_CSE}"), workdir / "in-cse")
    bsf_key, bsf_cert = write_credential(ca.issue_service(BSF_FQDN), workdir / "bsf")
    say(f"  CA for {IN_DOMAIN}; certificates for /{MN_CSE}, /{IN_CSE} and the BSF {BSF_FQDN}")
    bsf = _bsf(BSF_FQDN, workdir / "bsf", bsf_cert, bsf_key, ca.cert_path)
    mef, mef_store, kpms = _mef(workdir, ca, say)
    await mef.start()  # the gateway's [mef] names its target listener
    mef_port = mef.listener("target").port
    mef_bsf, sensor_usim = await _mef_bsf(workdir, ca, say)  # the MAF names its Zn listener
    mef_zn_host, mef_zn_port = mef_bsf.zn_addresses[0]
    maf_key, maf_cert = write_credential(ca.issue_service(MAF_FQDN), workdir / "maf")
    km = secrets.token_bytes(32)
    maf_store = MafStore(workdir / "maf.db")
    maf_store.add_client(SMARTPHONE[0], km, SMARTPHONE[1])
    maf_store.add_entity_b(f"/{IN_CSE}")
    say(f"  MAF {MAF_FQDN}: certificate; Master Credential {SMARTPHONE[0]} (IdA {SMARTPHONE[1]})")
    say(f"  MAF may hand Kc to Entity B /{IN_CSE}")
    maf = MafServer(
        MafConfig(
            fqdn=MAF_FQDN,
            listen="tls://127.0.0.1:0",
            retrieval_listen="tls://127.0.0.1:0",
            cert=maf_cert,
            key=maf_key,
            ca=ca.cert_path,
            in_domain=IN_DOMAIN,
            mef_zn=f"tls://{mef_zn_host}:{mef_zn_port}",  # maf serve --mef-zn: Km of B-TIDs
            mef_bsf_fqdn=MEF_FQDN,
        ),
        maf_store,
    )

    say("[bold]2. Starting the CSEs (ACME) and the m2msec gateways in front of them[/]")
    # ACME as the MN-CSE registers itself at the IN-CSE, through the home gateway's egress:
    # its registrar is set, and it is started, once the egress listens (step 5).
    mn_acme = AcmeCSE(workdir / "acme-mn", MN_CSE, "mn-cse")
    in_acme = AcmeCSE(workdir / "acme-in", IN_CSE, "cse-in", allowed_csr=(f"/{MN_CSE}",))
    try:
        await in_acme.start()
        # The demo's SA records stay in its folder, and it serves no admin socket.
        demo_sa = SaConfig(store=str(workdir / "sa.db"), admin_socket="")
        await bsf.start()
        zn_host, zn_port = bsf.zn_addresses[0]
        await maf.start()
        assert maf.retrieval_port is not None
        in_gw = Gateway(
            GatewayConfig(
                listen=(
                    parse_listen_url("tls://127.0.0.1:0?framework=certificate"),
                    parse_listen_url("tls://127.0.0.1:0?framework=gba"),
                    parse_listen_url("tls://127.0.0.1:0?framework=maf"),
                ),
                backend=in_acme.url,
                cse_id=CseId.parse(IN_CSE),
                in_domain=IN_DOMAIN,
                sa=demo_sa,
                # serviceSubscribedAppRule (TS-0001 9.6.1.2.2): Credential-ID devices
                # (GBA B-TIDs) may register C-stem AEs; without a rule they get 4128.
                app_rules=(AppRule(credentials=("12-*",), allowed_aes=("C*",)),),
                certificates=CertificateConfig(cert=in_cert, key=in_key, ca=ca.cert_path),
                gba=GbaConfig(
                    bsf_host=zn_host,
                    bsf_port=zn_port,
                    bsf_fqdn=BSF_FQDN,
                    naf_fqdn=f"{IN_CSE}.{IN_DOMAIN}",
                    cert=in_cert,
                    key=in_key,
                    ca=ca.cert_path,
                ),
                maf=MafRetrievalConfig(
                    addresses=((MAF_FQDN, "127.0.0.1", maf.retrieval_port),),
                    cert=in_cert,
                    key=in_key,
                    ca=ca.cert_path,
                ),
            )
        )
        async with in_gw:  # the egress's upstream: its port goes into the credentials table
            egress = _egress(workdir, in_gw.url(), mn_cert, mn_key, ca.cert_path)
            mn_gw = Gateway(
                GatewayConfig(
                    listen=(
                        parse_listen_url("tls://127.0.0.1:0?framework=psk"),
                        parse_listen_url("dtls://127.0.0.1:0?framework=psk"),  # CoAP/DTLS
                        parse_listen_url("tls://127.0.0.1:0?framework=mef"),  # Enrolee B
                        egress.listener,  # the MN-CSE's way up (docs/gateway.md section 11)
                    ),
                    backend=mn_acme.url,
                    cse_id=CseId.parse(MN_CSE),
                    in_domain=IN_DOMAIN,
                    psk=PskConfig(),
                    mef=MefTargetConfig(
                        MEF_FQDN, "127.0.0.1", mef_port, mn_cert, mn_key, ca.cert_path
                    ),
                    egress=(egress,),
                    sa=demo_sa,
                ),
                store=store,
            )
            async with mn_gw:
                egress_url = f"http://127.0.0.1:{mn_gw.listeners[3].port}"
                # Registration checks every 10 min: none of ACME's own upkeep crosses SA 2
                # while the demo counts the requests that do.
                mn_acme.registrar = Registrar(egress_url, f"/{IN_CSE}", "cse-in", 600.0)
                # One attempt: the gateway's backend is this port, ACME may not move.
                await mn_acme.start(attempts=1)
                say(f"  home gateway MN-CSE: {mn_gw.url()} -> ACME {mn_acme.url}")
                say(f"                       {mn_gw.url(1)} (CoAP over DTLS)")
                say(f"                       {mn_gw.url(2)} (Enrolee B: Kpsa fetched from the MEF)")
                say(f"                       {mn_gw.url(3)} (egress: ACME MN-CSE's registrar)")
                say(f"  IN-CSE:              {in_gw.url()} -> ACME {in_acme.url}")
                enrolee_url, target_url = (mef.listener(r).url for r in ("enrolee", "target"))
                say(f"  MEF {MEF_FQDN}: Enrolees {enrolee_url}, fetchCredentials {target_url}")
                await _lights(result, say, mn_gw, mn_acme)
                await _light_over_coap(result, say, mn_gw, mn_acme)
                await _chain(result, say, mn_gw, in_gw, mn_acme, in_acme)
                await _gba_device(result, say, in_gw, in_acme, bsf)
                await _smartphone(result, say, in_gw, in_acme, maf, km)
                meter = _factory_fresh(mef, METER[0], kpms)
                await _meter(result, say, mn_gw, mn_acme, store, meter)
                sensor = GbaDevice(sensor_usim, SENSOR[0], mef_bsf.ub_url())
                await _sensor(result, say, in_gw, in_acme, maf, sensor, mef_bsf)
                fetched = mef.stats["fetched"]
                what = "MEF: 1 PSK enrolment, its Kpsa fetched once by the gateway"
                ok = mef.stats["enrolments"] == fetched == 1
                _step(result, say, what, f"{fetched} fetched", ok)
                # Entity B's SA record for each association, found by the shared SA identifier.
                records = {**mn_gw.recent_associations, **in_gw.recent_associations}
                result.associations = [
                    (label, a, records.get(str(a.sa_id))) for label, a, _ in result.associations
                ]
                result.gateway_stats = {
                    "MN-CSE": mn_gw.stats.as_dict(),
                    "IN-CSE": in_gw.stats.as_dict(),
                }
                result.egress_stats = mn_gw.egress.stats.as_dict()
    finally:
        await asyncio.gather(
            mn_acme.stop(), in_acme.stop(), bsf.close(), maf.close(), mef.close(), mef_bsf.close()
        )
        store.close()
        maf_store.close()
        mef_store.close()
    return result


def _egress(workdir: Path, upstream: str, cert: Path, key: Path, ca: Path) -> EgressConfig:
    """The home gateway's egress listener for its MN-CSE, read as an ``[[egress]]`` table
    is: the upstream's certificate entry in the initiator's credentials table (TR-0038
    7.1.2; docs/credentials.md) written into ``workdir``, 0600."""
    host, in_port = _host_port(upstream)
    url = f"https://{host}:{in_port}"
    table = workdir / "mn-gateway-credentials.toml"
    write_private(
        table,
        (
            f'[peers."{url}"]                 # the IN-CSE\'s gateway (certificate listener)\n'
            f'id_b = "/{IN_CSE}"\n'
            f'certificate = {{ cert = "{cert}", key = "{key}", ca = "{ca}" }}\n'
        ).encode(),
    )
    (egress,) = parse_egress(
        [{"listen": "127.0.0.1:0", "upstream": url, "credentials": str(table)}],
        (),
        base=workdir,
        cse_id=CseId.parse(MN_CSE),
        in_domain=IN_DOMAIN,
    )
    return egress


def _bsf(fqdn: str, where: Path, cert: Path, key: Path, ca: Path) -> BsfServer:
    """A BSF (Ub and Zn on loopback) with its FQDN certificate, as ``m2msec bsf serve``."""
    loopback = (("127.0.0.1", 0),)
    return BsfServer(BsfConfig(fqdn, loopback, loopback, where.with_suffix(".db"), cert, key, ca))


async def _mef_bsf(workdir: Path, ca: CertificateAuthority, say: Say) -> tuple[BsfServer, Usim]:
    """The MEF's GBA role (seed 004 8.3.3.1, docs/mef.md 8b): a BSF under the MEF's FQDN,
    its subscriber the sensor, whose GUSS lets the MAF be NAF and names its AE-ID. K and
    OPc are drawn here, as at the factory, and handed only to the sensor's USIM."""
    key, cert = write_credential(ca.issue_service(MEF_FQDN), workdir / "mef-bsf")
    bsf = _bsf(MEF_FQDN, workdir / "mef-bsf", cert, key, ca.cert_path)
    impi, ae_id, _ = SENSOR
    await bsf.start()
    k, opc = secrets.token_bytes(16), secrets.token_bytes(16)
    guss = Guss.allowing({MAF_FQDN: {"aeId": ae_id}})
    bsf.store.add_subscriber(impi, k=k, opc=opc, guss=guss)
    say(f"  MEF {MEF_FQDN} as BSF: subscriber {impi}, GUSS allows NAF {MAF_FQDN} as {ae_id}")
    return bsf, Usim(k, opc)


def _mef(
    workdir: Path, ca: CertificateAuthority, say: Say
) -> tuple[MefServer, MefStore, dict[str, bytes]]:
    """The MEF with its FQDN certificate and the PSK Enrolee, configured as
    ``m2msec mef add-enrolee`` and ``allow-target`` would; its Kpm is drawn here, as at
    the factory, and handed only to its device."""
    mef_key, mef_cert = write_credential(ca.issue_service(MEF_FQDN), workdir / "mef")
    mef_store = MefStore(workdir / "mef.db", kek=secrets.token_bytes(32))
    kpm_id, enrolee_id, target = METER
    kpms = {kpm_id: secrets.token_bytes(16)}
    enrolee = EnroleeConfig(
        Bootstrap.PSK, kpm_id, enrolee_id, target, timedelta(days=30), kpms[kpm_id]
    )
    mef_store.add_enrolee(enrolee)
    mef_store.allow_target(target)  # before the MEF starts
    say(f"  MEF {MEF_FQDN}: Enrolee {kpm_id} (Kpm), Enrolee-ID {enrolee_id}, target {target}")
    config = MefConfig(
        MEF_FQDN,
        enrolee_listen=("tls://127.0.0.1:0",),
        target_listen="tls://127.0.0.1:0",
        cert=mef_cert,
        key=mef_key,
        ca=ca.cert_path,
    )
    return MefServer(config, mef_store), mef_store, kpms


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].split("?", 1)[0].rpartition(":")
    return host, int(port)


async def _lights(result: DemoResult, say: Say, gw: Gateway, acme: AcmeCSE) -> None:
    say("[bold]3. Lights to home gateway: provisioned PSK (TS-0003 8.2.2.1)[/]")
    host, port = _host_port(gw.url())
    clients: dict[str, OneM2MClient] = {}
    for name, ae_id, key, kpsa_id in LIGHTS:
        initiator = PskInitiator(
            kpsa_id, bytes.fromhex(key), f"/{MN_CSE}", server_name=f"{MN_CSE}.{IN_DOMAIN}"
        )
        conn = await connect(host, port, initiator.profile(tls13=False))
        result.associations.append((f"{name} -> MN-CSE", conn.context, None))
        say(f"  {name}: TLS-PSK with psk_identity {kpsa_id}, {conn.context.cipher_suite}")
        client = clients[name] = OneM2MClient(conn)
        ae = f"{acme.base_path}/{name.lower()}"
        ae_resource = {"rn": name.lower(), "api": "Nlight", "rr": False, "srv": ["3"]}
        creates: list[tuple[str, str, int, dict[str, Any]]] = [
            (f"registers as {ae_id}", acme.base_path, 2, {"m2m:ae": ae_resource}),
            ("creates container state", ae, 3, {"m2m:cnt": {"rn": "state"}}),
            ("publishes state 'on'", f"{ae}/state", 4, {"m2m:cin": {"con": "on"}}),
        ]
        for what, parent, ty, content in creates:
            r = await client.request("POST", parent, origin=ae_id, ty=ty, content=content)
            _check(result, say, f"{name} {what}", r, 2001)

    say("[bold]4. Impersonation: ADN-AE2's association sends as Clight-AE1[/]")
    r = await clients["ADN-AE2"].request(
        "POST",
        f"{acme.base_path}/adn-ae1/state",
        origin="Clight-AE1",
        ty=4,
        content={"m2m:cin": {"con": "off"}},
    )
    _check(result, say, "gateway refuses, ORIGINATOR_NOT_AUTHENTICATED", r, 4106)
    r = await clients["ADN-AE1"].request(
        "GET", f"{acme.base_path}/adn-ae1/state/la", origin="Clight-AE1"
    )
    _check(result, say, "ADN-AE1's latest state still reads 'on'", r, 2000)
    content = (r.json() or {}).get("m2m:cin", {}).get("con")
    result.steps.append(("latest state is 'on'", str(content), content == "on"))
    for client in clients.values():
        await client.close()


def _coap_check(
    result: DemoResult, say: Say, what: str, response: CoapOneM2MResponse, want: int
) -> None:
    passed = response.rsc == want
    result.steps.append((what, f"{response.rsc}", passed))
    mark = "[green]ok[/]" if passed else f"[red]expected {want}[/]"
    say(f"  {what}: CoAP {response.code_text}, oneM2M-RSC {response.rsc} {mark}")


async def _light_over_coap(result: DemoResult, say: Say, gw: Gateway, acme: AcmeCSE) -> None:
    say("[bold]4b. ADN-AE1 again, as a constrained light: CoAP over DTLS-PSK (TS-0008)[/]")
    from m2msec.tls.aio_dtls import dtls_connect
    from m2msec.tls.profiles import Transport

    host, port = _host_port(gw.url(1))
    name, ae_id, key, kpsa_id = LIGHTS[0]
    initiator = PskInitiator(
        kpsa_id, bytes.fromhex(key), f"/{MN_CSE}", server_name=f"{MN_CSE}.{IN_DOMAIN}"
    )
    assoc = await dtls_connect(initiator.profile(Transport.DTLS), host, port)
    result.associations.append((f"{name} -> MN-CSE (CoAP)", assoc.context, None))
    say(f"  {name}: DTLS-PSK with psk_identity {kpsa_id}, {assoc.context.cipher_suite}")
    client = CoapClient(assoc)
    try:
        state = f"{acme.base_path}/{name.lower()}/state"
        r = await client.request(
            "POST", state, origin=ae_id, ty=4, content={"m2m:cin": {"con": "off"}}
        )
        _coap_check(result, say, f"{name} publishes state 'off' by CoAP", r, 2001)
        r = await client.request("GET", f"{state}/la", origin=ae_id)
        _coap_check(result, say, f"{name} reads its latest state by CoAP", r, 2000)
        content = (r.json() or {}).get("m2m:cin", {}).get("con")
        result.steps.append(("latest state by CoAP is 'off'", str(content), content == "off"))
        r = await client.request("GET", f"{acme.base_path}/adn-ae2/state/la", origin="Clight-AE2")
        _coap_check(
            result, say, "gateway refuses Clight-AE2 on ADN-AE1's DTLS association", r, 4106
        )
    finally:
        await client.close()


async def _chain(
    result: DemoResult,
    say: Say,
    mn_gw: Gateway,
    in_gw: Gateway,
    mn_acme: AcmeCSE,
    in_acme: AcmeCSE,
) -> None:
    """TR-0038 7.1.3 over two SAs: ADN-AE1 -(SA 1, PSK)-> home gateway -> ACME MN-CSE ->
    egress -(SA 2, certificates, TS-0003 8.2.2.2)-> IN-CSE's gateway -> ACME IN-CSE."""
    say("[bold]5. ADN-AE1 -> MN-CSE -> IN-CSE: two SAs, ACME on both CSEs (TR-0038 7.1.3)[/]")
    link = mn_gw.egress.links[0]
    egress_url = f"http://127.0.0.1:{mn_gw.listeners[3].port}"
    say(f"  home gateway egress {egress_url} -> {link.config.upstream} (IdB /{IN_CSE}),")
    say(f"    {link.config.credential.describe()}")
    say(f"  ACME MN-CSE \\[cse.registrar] address = {egress_url}: it holds no key, speaks HTTP")
    registered = await mn_acme.registered(timeout=40.0)
    what = "ACME MN-CSE registered at the IN-CSE through the egress (its log)"
    _step(result, say, what, str(registered), registered)
    # The <remoteCSE> ACME MN created at ACME IN (TS-0001 10.1.1.2.1), read at the IN.
    rsc, body = await in_acme.console("GET", f"{in_acme.base_path}/{MN_CSE}")
    csr = body.get("m2m:csr", {})
    what = f"<remoteCSE> {MN_CSE} exists at ACME IN-CSE, csi {csr.get('csi')}"
    _step(result, say, what, str(rsc), rsc == 2000 and csr.get("csi") == f"/{MN_CSE}")
    # ACME sends transit requests to the poa the registrar's CSEBase publishes (ACME IN's
    # own http address, which bypasses both gateways); only its registration requests
    # use [cse.registrar] address. The MN-CSE's operator points the local <remoteCSE> of
    # the registrar at the egress, which is the MN-CSE's way to the IN-CSE.
    rsc, _ = await mn_acme.console(
        "PUT", f"{mn_acme.base_path}/{IN_CSE}", content={"m2m:csr": {"poa": [egress_url]}}
    )
    say("  ACME forwards to the poa its registrar's CSEBase publishes (ACME IN's own port,")
    say("  past both gateways); only its registration uses \\[cse.registrar] address. So:")
    what = f"ACME MN-CSE's <remoteCSE> {IN_CSE}: poa set to the egress (operator)"
    _step(result, say, what, str(rsc), rsc == 2004)
    # The IN-CSE's operator lets AEs of the home gateway write and read one container.
    acp = {
        "rn": "acpHome",
        "pv": {"acr": [{"acor": [f"/{MN_CSE}/*"], "acop": 63}]},
        "pvs": {"acr": [{"acor": ["CAdmin"], "acop": 63}]},
    }
    rsc_acp, _ = await in_acme.console("POST", in_acme.base_path, ty=1, content={"m2m:acp": acp})
    cnt = {"rn": "home", "acpi": [f"/{IN_CSE}/cse-in/acpHome"]}
    rsc_cnt, _ = await in_acme.console("POST", in_acme.base_path, ty=3, content={"m2m:cnt": cnt})
    what = f"IN-CSE operator: container home, <accessControlPolicy> for /{MN_CSE}/*"
    _step(result, say, what, f"{rsc_acp}/{rsc_cnt}", rsc_acp == rsc_cnt == 2001)

    host, port = _host_port(mn_gw.url())
    name, ae_id, key, kpsa_id = LIGHTS[0]
    initiator = PskInitiator(
        kpsa_id, bytes.fromhex(key), f"/{MN_CSE}", server_name=f"{MN_CSE}.{IN_DOMAIN}"
    )
    conn = await connect(host, port, initiator.profile(tls13=False))
    result.associations.append((f"{name} -> MN-CSE (SA 1)", conn.context, None))
    sa1 = mn_gw.recent_associations.get(conn.context.sa_id)
    same = sa1 is not None and sa1.peer_id == ae_id
    say(f"  SA 1: {name} -> home gateway, PSK, sa={conn.context.sa_id}")
    _step(result, say, "SA 1: the home gateway holds the same sa_id, bound to " + ae_id, "", same)
    client = OneM2MClient(conn)
    before = mn_gw.egress.stats.requests_forwarded, in_gw.stats.requests_forwarded
    target = f"/~/{IN_CSE}/cse-in/home"
    try:
        r = await client.request(
            "POST", target, origin=ae_id, ty=4, content={"m2m:cin": {"con": "on"}}
        )
        _check(result, say, f"{name} publishes 'on' at the IN-CSE ({target})", r, 2001)
        r = await client.request("GET", f"{target}/la", origin=ae_id)
        _check(result, say, f"{name} reads it back from the IN-CSE ({target}/la)", r, 2000)
        content = (r.json() or {}).get("m2m:cin", {}).get("con")
        result.steps.append(("latest state at the IN-CSE is 'on'", str(content), content == "on"))
    finally:
        await client.close()
    relayed = mn_gw.egress.stats.requests_forwarded - before[0]
    at_in = in_gw.stats.requests_forwarded - before[1]
    what = f"both crossed the egress ({relayed} relayed) and SA 2 (IN gateway: {at_in})"
    _step(result, say, what, f"{relayed}/{at_in}", relayed == at_in == 2)

    # SA 2: the egress's initiator-side record and the IN gateway's record, one sa_id.
    live = [r for r in mn_gw.egress.records() if r.state.live]
    both = bool(live)
    for record in live:
        b_ctx = in_gw.recent_associations.get(str(record.sa_id))
        say(f"  SA 2: egress record sa={record.sa_id} peer={record.peer_id} {record.framework}")
        if b_ctx is not None:
            say(f"        IN gateway      sa={b_ctx.sa_id} peer={b_ctx.peer_id}")
        both = both and b_ctx is not None and b_ctx.peer_id == f"/{MN_CSE}"
        result.associations.append(("MN-CSE egress -> IN-CSE (SA 2)", record, None))
    what = "SA 2: the egress and the IN gateway hold the same sa_id"
    _step(result, say, what, f"{len(live)} live", both)
    # The egress serves the local CSE only (docs/gateway.md section 11, allow-list).
    rsc, _ = await plain_request(egress_url + in_acme.base_path, "GET", origin=f"/{MN_CSE}-999")
    what = "egress refuses another CSE's From, ORIGINATOR_HAS_NO_PRIVILEGE"
    _step(result, say, what, str(rsc), rsc == 4103)


async def _gba_device(
    result: DemoResult, say: Say, gw: Gateway, acme: AcmeCSE, bsf: BsfServer
) -> None:
    say("[bold]6. GBA device to IN-CSE: GBA-based framework (seed 000 8.2.3.2, legacy)[/]")
    naf = f"{IN_CSE}.{IN_DOMAIN}"
    k, opc = bytes.fromhex(GBA_K), bytes.fromhex(GBA_OPC)
    bsf.store.add_subscriber(GBA_IMPI, k=k, opc=opc, guss=Guss.allowing([naf]))
    say(f"  BSF {BSF_FQDN}: Ub {bsf.ub_url()}, Zn tls://{':'.join(map(str, bsf.zn_addresses[0]))}")
    say(f"  HSS: subscriber {GBA_IMPI}, GUSS allows NAF {naf}")
    port = next(i.port for i in gw.listeners if i.framework == "gba")
    device = GbaDevice(Usim(k, opc), GBA_IMPI, bsf.ub_url())
    conn = await connect_gba(device, port, naf)
    boot = device.bootstrap
    assert boot is not None
    result.associations.append(("GBA device -> IN-CSE", conn.context, None))
    say(f"  bootstrapped (Digest AKA, Milenage): B-TID {boot.btid}")
    say(f"  TLS-PSK, psk_identity 3GPP-bootstrapping;<B-TID>, {conn.context.cipher_suite}")
    client = OneM2MClient(conn)
    content = {"m2m:ae": {"rn": "gba-meter", "api": "Nmeter", "rr": False, "srv": ["3"]}}
    r = await client.request("POST", acme.base_path, origin="C", ty=2, content=content)
    _check(result, say, "GBA device registers an AE (Credential-ID 12-<B-TID>)", r, 2001)
    aei = str((r.json() or {}).get("m2m:ae", {}).get("aei", "C"))
    r = await client.request("GET", f"{acme.base_path}/gba-meter", origin=aei)
    _check(result, say, f"GBA device reads its AE as {aei}", r, 2000)
    await client.close()
    conn = await connect_gba(device, port, naf)
    await conn.close()
    reused = device.bootstraps == 1 and bsf.stats.bootstraps == 1
    result.steps.append(("second association reuses Ks", f"{device.bootstraps} Ub run", reused))
    mark = "[green]ok[/]" if reused else "[red]bootstrapped again[/]"
    say(f"  second association reuses Ks (no Ub run): {mark}")


async def connect_gba(device: GbaDevice, port: int, naf: str) -> TLSConnection:
    return await device.connect("127.0.0.1", port, naf, id_b=f"/{IN_CSE}")


async def _smartphone(
    result: DemoResult, say: Say, gw: Gateway, acme: AcmeCSE, maf: MafServer, km: bytes
) -> None:
    say("[bold]7. Smartphone to IN-CSE: MAF-based framework (TS-0003 8.2.2.3, TR-0038 7.1.4)[/]")
    handshake = f"MAF Handshake as {SMARTPHONE[0]}; Kc registered for /{IN_CSE}"
    label = "Smartphone -> IN-CSE"
    http = await _maf_association(result, say, gw, maf, SMARTPHONE[0], km, label, handshake)
    say("  (the IN-CSE's gateway fetched Kc from the MAF by Key Retrieval, mutual TLS)")
    ae = {"m2m:ae": {"rn": "smartphone", "api": "Nsmartphone", "rr": False, "srv": ["3"]}}
    r = await http.request("POST", acme.base_path, origin="Clight-AE1", ty=2, content=ae)
    _check(result, say, "smartphone registering as Clight-AE1 is refused", r, 4106)
    r = await http.request("POST", acme.base_path, origin=SMARTPHONE[1], ty=2, content=ae)
    _check(result, say, f"smartphone registers as {SMARTPHONE[1]}, the MAF's IdA", r, 2001)
    r = await http.request(
        "POST",
        f"{acme.base_path}/smartphone",
        origin=SMARTPHONE[1],
        ty=3,
        content={"m2m:cnt": {"rn": "commands"}},
    )
    _check(result, say, "smartphone creates container commands", r, 2001)
    await http.close()


async def _maf_association(
    result: DemoResult,
    say: Say,
    gw: Gateway,
    maf: MafServer,
    km_id: KmId | str,
    km: bytes,
    label: str,
    handshake: str,
) -> OneM2MClient:
    """MAF Handshake as ``km_id``, Kc for the IN-CSE, TLS-PSK with its gateway under KcId."""
    port = next(i.port for i in gw.listeners if i.framework == "maf")
    client = MafClient("127.0.0.1", maf.client_port, MAF_FQDN, km_id, km)
    # targetIDs holds the Absolute CSE-ID (8.8.2.7); the session binds IdB as configured.
    initiator = MafInitiator(
        client, f"//{IN_DOMAIN}/{IN_CSE}", f"{IN_CSE}.{IN_DOMAIN}", id_b=f"/{IN_CSE}"
    )
    conn = await initiator.connect("127.0.0.1", port)
    issued = initiator.current
    assert issued is not None
    result.associations.append((label, conn.context, None))
    say(f"  {handshake}")
    say(f"  TLS-PSK, psk_identity KcId {issued.kc_id}, {conn.context.cipher_suite}")
    return OneM2MClient(conn)


def _factory_fresh(mef: MefServer, kpm_id: str, kpms: dict[str, bytes]) -> Enrolee:
    """A device holding only its KpmID and Kpm, and the MEF's address."""
    port = mef.listener("enrolee").port
    return Enrolee("127.0.0.1", port, MEF_FQDN, KpmCredential(kpm_id, kpms[kpm_id]))


def _enrolled(say: Say, device: str, got: EnrolmentResult, what: str) -> None:
    say(f"  {device}: TLS-PSK bootstrap as KpmID {got.bootstrap_id} (PSK bootstrap, 8.3.2.1)")
    say(f"  Enrolment Exchange: KeID {got.ke_id}, expires {got.expires:%Y-%m-%d}")
    say(f"  {what} derived from Ke for {got.target}; the target fetches the same from the MEF")


async def _meter(
    result: DemoResult, say: Say, gw: Gateway, acme: AcmeCSE, psk: SqlitePskStore, enrolee: Enrolee
) -> None:
    say("[bold]8. Factory-fresh meter to home gateway: MEF bootstrap (TS-0003 8.3.2.1)[/]")
    kpm_id, enrolee_id, target = METER
    rows = [row.kpsa_id for row in psk.list() if row.entity_id == enrolee_id]
    what = f"MN-CSE psk table ({psk.count()} rows) holds no row for {enrolee_id}"
    _step(result, say, what, f"{len(rows)} rows", not rows)
    got = await enrolee.enrol(target)
    _enrolled(say, kpm_id, got, "Kpsa (10.3.3)")
    port = next(i.port for i in gw.listeners if i.framework == "mef")
    initiator = PskInitiator(
        str(got.ke_id), got.credential, f"/{MN_CSE}", server_name=f"{MN_CSE}.{IN_DOMAIN}"
    )
    conn = await connect("127.0.0.1", port, initiator.profile())
    result.associations.append(("meter -> MN-CSE (MEF)", conn.context, None))
    say(f"  TLS-PSK, psk_identity KeID, {conn.context.cipher_suite}")
    say("  (the gateway fetched the Kpsa from the MEF by fetchCredentials, mutual TLS)")
    client = OneM2MClient(conn)
    ae = {"m2m:ae": {"rn": "meter-1", "api": "Nmeter", "rr": False, "srv": ["3"]}}
    r = await client.request("POST", acme.base_path, origin="Cmeter-1", ty=2, content=ae)
    _check(result, say, "meter registers as Cmeter-1, the AE its Enrolee-ID names", r, 2001)
    r = await client.request("GET", f"{acme.base_path}/adn-ae1/state/la", origin="Clight-AE1")
    _check(result, say, "meter speaking as Clight-AE1 is refused", r, 4106)
    await client.close()
    rows = [row.kpsa_id for row in psk.list() if row.entity_id == enrolee_id]
    _step(result, say, "MN-CSE psk table still holds no row for it", f"{len(rows)} rows", not rows)


async def _sensor(
    result: DemoResult,
    say: Say,
    gw: Gateway,
    acme: AcmeCSE,
    maf: MafServer,
    device: GbaDevice,
    mef_bsf: BsfServer,
) -> None:
    say("[bold]9. Sensor to IN-CSE: MEF GBA bootstrap (seed 004 8.3.3.1) for the MAF[/]")
    impi, ae_id, target = SENSOR
    got = await enrol_gba(device, target)
    say(f"  {impi}: Ub bootstrap at the MEF's BSF (Digest AKA), KeID = B-TID {got.ke_id}")
    say(f"  Km = Ks_NAF for {MAF_FQDN}, KmID = the B-TID; the MAF fetches Km over Zn")
    km_id = KmId.parse(str(got.ke_id), verbatim=True)  # B-TID verbatim (docs/readings.md A-25)
    handshake = f"MAF Handshake with KmID = B-TID (Km = Ks_NAF from Zn); Kc for /{IN_CSE}"
    label = "sensor -> IN-CSE (MEF GBA, MAF)"
    http = await _maf_association(result, say, gw, maf, km_id, got.credential, label, handshake)
    ae = {"m2m:ae": {"rn": "sensor-2", "api": "Nsensor", "rr": False, "srv": ["3"]}}
    r = await http.request("POST", acme.base_path, origin=ae_id, ty=2, content=ae)
    _check(result, say, f"sensor registers as {ae_id}, the AE-ID its USS names", r, 2001)
    await http.close()
    unknown = maf.store.get_client(km_id.canonical) is None
    _step(result, say, "MAF store holds no Master Credential for the B-TID", str(unknown), unknown)
    stats = mef_bsf.stats
    once = stats.bootstraps == 1 and stats.zn_answered == 1
    what = "MEF's BSF: 1 Ub bootstrap, Km given once over Zn to the MAF"
    _step(result, say, what, f"{stats.bootstraps} Ub, {stats.zn_answered} Zn", once)


def _step(result: DemoResult, say: Say, what: str, value: str, passed: bool) -> None:
    result.steps.append((what, value, passed))
    say(f"  {what}: {'[green]ok[/]' if passed else f'[red]{value}[/]'}")
