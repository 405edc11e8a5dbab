"""TR-0038 clause 7.1's home scenario, run for real on loopback.

* Lights ADN-AE1 and ADN-AE2 reach the home gateway MN-CSE (mn-cse-123456) by the
  Provisioned Symmetric Key framework (TS-0003 8.2.2.1) with TR-0038's psk tables
  7.1.2-1 and 7.1.2-2, then register (TR-0038 7.1.5) and publish their state.
* ADN-AE2 tries to act as Clight-AE1 and is refused (4103) by the gateway.
* The home gateway reaches the IN-CSE by the Certificate-Based framework (8.2.2.2).

The CSEs are ACME instances; m2msec gateways stand in front of them as Entity B.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from m2msec.acme import AcmeCSE
from m2msec.bindings.client import OneM2MClient, OneM2MResponse
from m2msec.config import CertificateConfig, GatewayConfig, PskConfig, parse_listen_url
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.frameworks.provisioned import PskInitiator
from m2msec.ids import CseId
from m2msec.pki import CertificateAuthority, write_credential
from m2msec.servers.gateway import Gateway
from m2msec.store import SqlitePskStore
from m2msec.store.base import PskEntry
from m2msec.tls.aio import connect
from m2msec.tls.context import SecurityContext

IN_DOMAIN = "in.provider.com"
MN_CSE = "mn-cse-123456"
IN_CSE = "id-in"

#: TR-0038 Table 7.1.2-1 (the lights) and 7.1.2-2 (the MN-CSE): the same rows.
LIGHTS = (
    ("ADN-AE1", "Clight-AE1", "1a2b3c4d5e6f7a8b", "AE123456789012-Light@in.provider.com"),
    ("ADN-AE2", "Clight-AE2", "12345678abcdefab", "AE123456789015-Light@in.provider.com"),
)

Say = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo established and what it refused, for the summary table."""

    #: (label, Entity A's context, Entity B's context for the same SA identifier)
    associations: list[tuple[str, SecurityContext, SecurityContext | None]] = field(
        default_factory=list
    )
    steps: list[tuple[str, str, bool]] = field(default_factory=list)
    gateway_stats: dict[str, dict[str, object]] = field(default_factory=dict)

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
    ca = CertificateAuthority.init(workdir / "ca", domain=IN_DOMAIN)
    mn_key, mn_cert = write_credential(ca.issue(f"/{MN_CSE}"), workdir / "mn-cse")
    in_key, in_cert = write_credential(ca.issue(f"/{IN_CSE}"), workdir / "in-cse")
    say(f"  CA for {IN_DOMAIN}; certificates for /{MN_CSE} and /{IN_CSE}")

    say("[bold]2. Starting the CSEs (ACME) and the m2msec gateways in front of them[/]")
    mn_acme = AcmeCSE(workdir / "acme-mn", MN_CSE, "mn-cse")
    in_acme = AcmeCSE(workdir / "acme-in", IN_CSE, "cse-in", allowed_csr=(f"/{MN_CSE}",))
    await asyncio.gather(mn_acme.start(), in_acme.start())
    try:
        mn_gw = Gateway(
            GatewayConfig(
                listen=(parse_listen_url("tls://127.0.0.1:0"),),
                backend=mn_acme.url,
                cse_id=CseId.parse(MN_CSE),
                in_domain=IN_DOMAIN,
                psk=PskConfig(),
            ),
            store=store,
        )
        in_gw = Gateway(
            GatewayConfig(
                listen=(parse_listen_url("tls://127.0.0.1:0"),),
                backend=in_acme.url,
                cse_id=CseId.parse(IN_CSE),
                in_domain=IN_DOMAIN,
                certificates=CertificateConfig(cert=in_cert, key=in_key, ca=ca.cert_path),
            )
        )
        async with mn_gw, in_gw:
            say(f"  home gateway MN-CSE: {mn_gw.url()} -> ACME {mn_acme.url}")
            say(f"  IN-CSE:              {in_gw.url()} -> ACME {in_acme.url}")
            await _lights(result, say, mn_gw, mn_acme)
            await _gateway_to_in(result, say, in_gw, in_acme, mn_cert, mn_key, ca.cert_path)
            # Entity B's SA record for each association, found by the shared SA identifier.
            records = {**mn_gw.recent_associations, **in_gw.recent_associations}
            result.associations = [
                (label, a_ctx, records.get(a_ctx.sa_id)) for label, a_ctx, _ in result.associations
            ]
            result.gateway_stats = {
                "MN-CSE": mn_gw.stats.as_dict(),
                "IN-CSE": in_gw.stats.as_dict(),
            }
    finally:
        await asyncio.gather(mn_acme.stop(), in_acme.stop())
        store.close()
    return result


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].rpartition(":")
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
        r = await client.request(
            "POST",
            acme.base_path,
            origin=ae_id,
            ty=2,
            content={"m2m:ae": {"rn": name.lower(), "api": "Nlight", "rr": False, "srv": ["3"]}},
        )
        _check(result, say, f"{name} registers as {ae_id}", r, 2001)
        r = await client.request(
            "POST",
            f"{acme.base_path}/{name.lower()}",
            origin=ae_id,
            ty=3,
            content={"m2m:cnt": {"rn": "state"}},
        )
        _check(result, say, f"{name} creates container state", r, 2001)
        r = await client.request(
            "POST",
            f"{acme.base_path}/{name.lower()}/state",
            origin=ae_id,
            ty=4,
            content={"m2m:cin": {"con": "on"}},
        )
        _check(result, say, f"{name} publishes state 'on'", r, 2001)

    say("[bold]4. Impersonation: ADN-AE2's association sends as Clight-AE1[/]")
    r = await clients["ADN-AE2"].request(
        "POST",
        f"{acme.base_path}/adn-ae1/state",
        origin="Clight-AE1",
        ty=4,
        content={"m2m:cin": {"con": "off"}},
    )
    _check(result, say, "gateway refuses, ORIGINATOR_HAS_NO_PRIVILEGE", r, 4103)
    r = await clients["ADN-AE1"].request(
        "GET", f"{acme.base_path}/adn-ae1/state/la", origin="Clight-AE1"
    )
    _check(result, say, "ADN-AE1's latest state still reads 'on'", r, 2000)
    content = (r.json() or {}).get("m2m:cin", {}).get("con")
    result.steps.append(("latest state is 'on'", str(content), content == "on"))
    for client in clients.values():
        await client.close()


async def _gateway_to_in(
    result: DemoResult, say: Say, gw: Gateway, acme: AcmeCSE, cert: Path, key: Path, ca: Path
) -> None:
    say("[bold]5. Home gateway to IN-CSE: certificates (TS-0003 8.2.2.2)[/]")
    host, port = _host_port(gw.url())
    credential = CertificateCredential.from_files(cert, key, ca)
    initiator = CertificateInitiator(credential, f"/{IN_CSE}", in_domain=IN_DOMAIN)
    conn = await connect(host, port, initiator.profile())
    result.associations.append(("MN-CSE -> IN-CSE", conn.context, None))
    say(f"  /{MN_CSE}: mutual TLS, {conn.context.protocol} {conn.context.cipher_suite}")
    client = OneM2MClient(conn)
    csr = {
        "m2m:csr": {
            "rn": MN_CSE,
            "csi": f"/{MN_CSE}",
            "cb": f"/{MN_CSE}/mn-cse",
            "rr": True,
            "srv": ["3"],
            "poa": [f"https://{MN_CSE}.{IN_DOMAIN}"],
            "dcse": [],
        }
    }
    r = await client.request("POST", acme.base_path, origin=f"/{MN_CSE}", ty=16, content=csr)
    _check(result, say, "MN-CSE registers at the IN-CSE (<remoteCSE>)", r, 2001)
    r = await client.request("GET", acme.base_path, origin=f"/{MN_CSE}")
    _check(result, say, "MN-CSE retrieves the IN-CSE's CSEBase", r, 2000)
    r = await client.request("GET", acme.base_path, origin="/other-cse")
    _check(result, say, "MN-CSE posing as /other-cse is refused", r, 4103)
    await client.close()
