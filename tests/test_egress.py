"""The gateway's egress (issue 12 item 5): the CSE behind the gateway reaches its upstream
peer over an SA the gateway establishes as Entity A.

The upstream is a real peer: our gateway's ``tls://`` listeners (certificate and PSK) in
front of ACME as the IN-CSE ``id-in`` of TR-0038 7.1.3. The local CSE (the MN-CSE
``/mn-cse-123456``) is played by a plain HTTP client here; the demo runs ACME in that role.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from m2msec.config import (
    CertificateConfig,
    ConfigurationError,
    GatewayConfig,
    PskConfig,
    load_config,
    parse_config,
    parse_listen_url,
)
from m2msec.config.egress import is_loopback
from m2msec.errors import HandshakeError
from m2msec.ids import CseId
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.sa.records import SaRole, SaState
from m2msec.servers.egress import originator_allowed
from m2msec.servers.gateway import Gateway
from m2msec.store.base import PskEntry
from m2msec.store.sqlite import SqlitePskStore
from tests.acme import AcmeCse, running_acme
from tests.interop import wait_until

IN_DOMAIN = "in.provider.com"
MN = "/mn-cse-123456"
IN = "/id-in"
#: The MN-CSE's row at the IN-CSE's gateway (KpsaId, Kpsa) and the CSE-ID it binds.
MN_PSK = ("mn-cse-123456@in.provider.com", "00112233445566778899aabbccddeeff")


@dataclass
class Pki:
    ca: Path
    mn: tuple[Path, Path]  # key, certificate of /mn-cse-123456 (the egress's credential)
    in_cse: tuple[Path, Path]  # of /id-in (the upstream gateway's)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.init(where / "ca", domain=IN_DOMAIN)
    return Pki(
        ca.cert_path,
        write_credential(ca.issue(MN), where / "mn"),
        write_credential(ca.issue(IN), where / "in"),
    )


@pytest.fixture(scope="module")
def in_acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeCse]:
    """ACME as the IN-CSE, with the MN-CSE registered (its <remoteCSE>) directly."""
    with running_acme(
        tmp_path_factory.mktemp("acme-in"),
        cse_type="IN",
        cse_id="id-in",
        cse_name="cse-in",
        allowed_csr=(MN,),
    ) as cse:
        r = cse.request("POST", cse.base, origin=MN, ty=16, content=_csr())
        assert r.headers.get("x-m2m-rsc") == "2001", r.text
        yield cse


def _csr() -> dict[str, Any]:
    return {
        "m2m:csr": {
            "rn": "mn-cse-123456",
            "csi": MN,
            "cb": f"{MN}/mn-cse",
            "rr": True,
            "srv": ["3"],
            "poa": [f"https://mn-cse-123456.{IN_DOMAIN}"],
            "dcse": [],
        }
    }


@pytest.fixture
def in_store(tmp_path: Path) -> Iterator[SqlitePskStore]:
    store = SqlitePskStore(tmp_path / "in-psk.db")
    store.add(PskEntry(MN_PSK[0], bytes.fromhex(MN_PSK[1]), MN))
    yield store
    store.close()


def in_gateway(
    acme: AcmeCse, pki: Pki, store: SqlitePskStore, cert_port: int = 0, psk_port: int = 0
) -> Gateway:
    """The IN-CSE's gateway: certificates and provisioned PSK, ACME behind it."""
    key, cert = pki.in_cse
    return Gateway(
        GatewayConfig(
            listen=(
                parse_listen_url(f"tls://127.0.0.1:{cert_port}?framework=certificate"),
                parse_listen_url(f"tls://127.0.0.1:{psk_port}?framework=psk"),
            ),
            backend=acme.url,
            cse_id=CseId.parse(IN),
            in_domain=IN_DOMAIN,
            psk=PskConfig(),
            certificates=CertificateConfig(cert=cert, key=key, ca=pki.ca),
        ),
        store=store,
    )


def write_credentials(where: Path, pki: Pki, cert_port: int, psk_port: int) -> Path:
    """The MN gateway's credentials table: the IN gateway's two listeners."""
    key, cert = pki.mn
    key_file = where / "in-kpsa.hex"
    key_file.write_text(MN_PSK[1] + "\n")
    key_file.chmod(0o600)
    table = where / "credentials.toml"
    table.write_text(
        f'[peers."https://127.0.0.1:{cert_port}"]\n'
        f'id_b = "{IN}"\n'
        f'certificate = {{ cert = "{cert}", key = "{key}", ca = "{pki.ca}" }}\n'
        f'[peers."https://127.0.0.1:{psk_port}"]\n'
        f'id_b = "{IN}"\n'
        f'psk = {{ psk_identity = "{MN_PSK[0]}", key_file = "{key_file.name}" }}\n'
    )
    table.chmod(0o600)
    return table


def egress_config(table: Path, *egress: dict[str, Any], **gateway: Any) -> GatewayConfig:
    return parse_config(
        {
            "gateway": {
                "listen": [],
                "backend": "http://127.0.0.1:9",  # the MN-CSE; unused here
                "cse_id": MN,
                "in_domain": IN_DOMAIN,
                **gateway,
            },
            "egress": [{"credentials": str(table), **e} for e in egress],
        },
        base_dir=table.parent,
    )


@contextlib.asynccontextmanager
async def started(gw: Gateway) -> AsyncIterator[Gateway]:
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


@dataclass
class Chain:
    """The IN gateway (upstream) and the MN gateway with its egress listeners."""

    upstream: Gateway
    mn: Gateway
    cert_port: int
    psk_port: int
    table: Path

    def egress_url(self, index: int = 0) -> str:
        info = self.mn.listeners[index]
        return f"http://{info.host}:{info.port}"


@contextlib.asynccontextmanager
async def chain(
    tmp_path: Path, acme: AcmeCse, pki: Pki, store: SqlitePskStore, **egress: Any
) -> AsyncIterator[Chain]:
    async with started(in_gateway(acme, pki, store)) as up:
        cert_port, psk_port = up.listeners[0].port, up.listeners[1].port
        table = write_credentials(tmp_path, pki, cert_port, psk_port)
        config = egress_config(
            table,
            {"listen": "127.0.0.1:0", "upstream": f"https://127.0.0.1:{cert_port}", **egress},
            {"listen": "127.0.0.1:0", "upstream": f"https://127.0.0.1:{psk_port}", **egress},
        )
        async with started(Gateway(config)) as mn:
            yield Chain(up, mn, cert_port, psk_port, table)


def headers(origin: str | None, **extra: str) -> dict[str, str]:
    out = {"X-M2M-RI": uuid.uuid4().hex[:12], "X-M2M-RVI": "3", "Accept": "application/json"}
    if origin is not None:
        out["X-M2M-Origin"] = origin
    return {**out, **extra}


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("origin", "rsc"),
    [
        (MN, None),  # the local CSE itself
        ("/mn-cse-123456/Clight-AE1", None),  # an AE registered to it, SP-relative
        ("Clight-AE1", None),  # ... and the CSE-relative stem it may send
        (f"//{IN_DOMAIN}{MN}", None),  # its absolute CSE-ID, our SP
        (f"//{IN_DOMAIN}{MN}/Cx", None),
        ("/mn-cse-999", 4103),  # another CSE
        ("/mn-cse-999/Clight-AE1", 4103),  # an AE of another CSE
        ("/mn-cse-1234567", 4103),  # a prefix of the name is not the CSE
        ("//other.sp.com/mn-cse-123456", 4103),  # another SP's CSE of that name
        ("/Ssensor", 4103),  # an S-stem AE, not listed
        ("bad origin!", 4103),
        (None, 4000),
        ("", 4000),
    ],
)
def test_allow_list_admits_the_local_cse_and_what_is_under_it(
    origin: str | None, rsc: int | None
) -> None:
    got = originator_allowed(origin, (MN,), CseId.parse(MN), IN_DOMAIN)
    assert (got if got is None else got[0]) == rsc


def test_allow_list_ae_entries_admit_that_ae_only() -> None:
    allow = ("/Ssensor", "/mn-cse-7/Cmeter")
    cse = CseId.parse(MN)
    assert originator_allowed("/Ssensor", allow, cse, IN_DOMAIN) is None
    assert originator_allowed("Ssensor", allow, cse, IN_DOMAIN) is None
    assert originator_allowed("/mn-cse-7/Cmeter", allow, cse, IN_DOMAIN) is None
    for other in ("/mn-cse-7", "/mn-cse-7/Cother", "Cmeter", MN):
        refused = originator_allowed(other, allow, cse, IN_DOMAIN)
        assert refused is not None and refused[0] == 4103, other


# ----------------------------------------------------------------------------- configuration


@pytest.fixture
def table(tmp_path: Path, pki: Pki) -> Path:
    return write_credentials(tmp_path, pki, 8443, 8444)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "[::1]", "localhost"])
def test_loopback_binds_are_accepted(table: Path, host: str) -> None:
    cfg = egress_config(table, {"listen": f"{host}:8090", "upstream": "https://127.0.0.1:8443"})
    (egress,) = cfg.egress
    assert is_loopback(egress.listener.host) and not egress.allow_remote
    assert egress.allow == (MN,)  # default: [gateway] cse_id
    assert egress.credential.framework.name == "certificate"
    assert egress.credential.id_b == IN
    assert egress.rekey_after == 3600.0
    assert cfg.listen == (egress.listener,) and cfg.egress_for(cfg.listen[0]) is egress


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "192.168.1.10", "gw.example"])
def test_a_non_loopback_bind_needs_allow_remote(table: Path, host: str) -> None:
    listen = {"listen": f"{host}:8090", "upstream": "https://127.0.0.1:8443"}
    with pytest.raises(ConfigurationError, match=r"egress\[0\].listen.*allow_remote"):
        egress_config(table, listen)
    cfg = egress_config(table, {**listen, "allow_remote": True})
    assert cfg.egress[0].allow_remote
    # The URL form in [gateway] listen is held to the same rule.
    url = f"egress://{host}:8090?upstream=https://127.0.0.1:8443"
    with pytest.raises(ConfigurationError, match=r"gateway.listen\[0\].*allow_remote"):
        egress_config(table, listen=[url])


def test_url_form_in_gateway_listen(table: Path) -> None:
    """The URL form takes the default table, <data dir>/credentials.toml."""
    url = "egress://127.0.0.1:8090?upstream=https://127.0.0.1:8444"
    data = {"gateway": {"listen": [url], "backend": "http://127.0.0.1:9", "cse_id": MN}}
    with pytest.raises(ConfigurationError, match=r"no credentials table at .*credentials\.toml"):
        parse_config(data)
    home = Path(os.environ["M2MSEC_HOME"])
    home.mkdir(exist_ok=True)
    (home / "credentials.toml").write_text(table.read_text().replace("in-kpsa.hex", str(
        table.parent / "in-kpsa.hex")))
    (home / "credentials.toml").chmod(0o600)
    cfg = parse_config(data)
    (egress,) = cfg.egress
    assert egress.listener.scheme == "egress" and egress.listener.port == 8090
    assert egress.credential.framework.name == "psk"  # the entry of that port
    assert egress.upstream_url == "https://127.0.0.1:8444"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"upstream": "http://127.0.0.1:8443"}, "upstream.*https://"),
        ({"upstream": None}, "upstream: missing"),
        ({"upstream": "https://127.0.0.1:9999"}, "no entry for https://127.0.0.1:9999"),
        ({"entry": "nope"}, "entry.*no entry 'nope'"),
        ({"allow": []}, "allow: must be a non-empty list"),
        ({"allow": ["mn-cse-123456"]}, "allow.*SP-relative"),
        ({"allow": ["/bad id!"]}, "allow"),
        ({"connections": 0}, "connections"),
        ({"rekey_after": -1}, "rekey_after"),
        ({"alow": ["/x"]}, "did you mean 'allow'"),
        ({"credentials": "missing.toml"}, "credentials.*not found"),
    ],
)
def test_egress_tables_are_checked(table: Path, extra: dict[str, Any], message: str) -> None:
    entry = {"listen": "127.0.0.1:8090", "upstream": "https://127.0.0.1:8443", **extra}
    entry = {k: v for k, v in entry.items() if v is not None}
    if "credentials" in extra:
        with pytest.raises(ConfigurationError, match=message):
            parse_config(
                {
                    "gateway": {"backend": "http://127.0.0.1:9", "cse_id": MN},
                    "egress": [entry],
                },
                base_dir=table.parent,
            )
        return
    with pytest.raises(ConfigurationError, match=message):
        egress_config(table, entry)


def test_entry_by_name_and_rekey_never(table: Path) -> None:
    cfg = egress_config(
        table,
        {
            "listen": "127.0.0.1:8090",
            "upstream": "https://127.0.0.1:8443",
            "entry": "https://127.0.0.1:8444",  # the PSK entry, for the other port
            "rekey_after": 0,
            "allow": ["/mn-cse-123456", "/Ssensor"],
        },
    )
    egress = cfg.egress[0]
    assert egress.credential.framework.name == "psk" and egress.rekey_after is None
    assert egress.allow == (MN, "/Ssensor")


def test_a_config_file_reads_its_credentials_beside_it(table: Path, tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(
        "[gateway]\n"
        'backend = "http://127.0.0.1:9"\n'
        f'cse_id = "{MN}"\n'
        "[[egress]]\n"
        'listen = "egress://127.0.0.1:8090"\n'
        'upstream = "https://127.0.0.1:8443"\n'
        f'credentials = "{table.name}"\n'  # relative: to the config file's folder
        'allow = ["/mn-cse-123456"]\n'
    )
    other = tmp_path / "elsewhere"
    other.mkdir()
    cwd = Path.cwd()
    os.chdir(other)
    try:
        cfg = load_config(file)
    finally:
        os.chdir(cwd)
    assert cfg.egress[0].credential.source == str(table)


# ----------------------------------------------------------------------------- end to end


async def test_forwarded_over_certificate_and_psk_sas(
    tmp_path: Path,
    in_acme: AcmeCse,
    pki: Pki,
    in_store: SqlitePskStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with chain(tmp_path, in_acme, pki, in_store) as c, httpx.AsyncClient() as cse:
        for index, framework in ((0, "certificate"), (1, "provisioned-psk")):
            url = c.egress_url(index) + in_acme.base
            r = await cse.get(url, headers=headers(MN))
            assert (r.status_code, r.headers["x-m2m-rsc"]) == (200, "2000"), r.text
            assert r.json()["m2m:cb"]["csi"] == IN
            # A resource made at the IN-CSE by the MN-CSE, over the egress.
            name = f"egress-{index}"
            r = await cse.post(
                url + "/mn-cse-123456",  # under its <remoteCSE>
                headers=headers(MN, **{"Content-Type": "application/json;ty=3"}),
                json={"m2m:cnt": {"rn": name}},
            )
            assert r.headers["x-m2m-rsc"] == "2001", r.text
            made = in_acme.retrieve(f"{in_acme.base}/mn-cse-123456/{name}")
            assert made.status_code == 200, made.text
            # One SA per listener, the same SA identifier on both ends.
            link = c.mn.egress.links[index]
            (sa_id,) = link.live_sa_ids
            record = next(r for r in c.mn.egress.records() if str(r.sa_id) == sa_id)
            assert record.role is SaRole.INITIATOR and record.state is SaState.ESTABLISHED
            assert record.framework == framework and record.peer_id == IN
            responder = c.upstream.recent_associations[sa_id]
            assert responder.peer_id == MN and responder.framework.value == framework
        # Keep-alive: more requests, no new SA.
        for _ in range(3):
            r = await cse.get(c.egress_url(1) + in_acme.base, headers=headers(MN))
            assert r.headers["x-m2m-rsc"] == "2000"
        assert c.mn.egress.stats.sas_established == 2
        assert c.upstream.stats.associations_established == 2
    established = [m for m in caplog.messages if m.startswith("egress SA established")]
    assert len(established) == 2 and all("sa=" in m for m in established)
    assert not any(MN_PSK[1] in m for m in caplog.messages)  # never the key


async def test_allow_list_refusals_never_reach_the_upstream(
    tmp_path: Path, in_acme: AcmeCse, pki: Pki, in_store: SqlitePskStore
) -> None:
    async with chain(tmp_path, in_acme, pki, in_store) as c, httpx.AsyncClient() as cse:
        await wait_until(lambda: c.upstream.stats.associations_established == 2, "first SAs")
        url = c.egress_url(0) + in_acme.base
        for origin, status, rsc in (
            ("/mn-cse-999", 403, "4103"),
            ("/mn-cse-999/Clight-AE1", 403, "4103"),
            (None, 400, "4000"),
        ):
            r = await cse.get(url, headers=headers(origin))
            assert (r.status_code, r.headers["x-m2m-rsc"]) == (status, rsc), origin
            assert "m2m:dbg" in r.json()
        assert c.mn.egress.stats.requests_refused == 3
        assert c.upstream.stats.requests_forwarded == 0
        # An AE of the local CSE is let through (and judged by the upstream).
        r = await cse.get(url, headers=headers("/mn-cse-123456/Clight-AE1"))
        assert r.headers["x-m2m-rsc"] != "4103" or "ACME" in r.headers.get("server", "")
        assert c.upstream.stats.requests_forwarded == 1


async def test_rekey_keeps_serving_and_gives_a_new_sa(
    tmp_path: Path, in_acme: AcmeCse, pki: Pki, in_store: SqlitePskStore
) -> None:
    async with (
        chain(tmp_path, in_acme, pki, in_store, rekey_after=1.0) as c,
        httpx.AsyncClient() as cse,
    ):
        link = c.mn.egress.links[1]  # PSK
        await wait_until(lambda: bool(link.live_sa_ids), "the first SA")
        first = link.live_sa_ids[0]
        url = c.egress_url(1) + in_acme.base
        answers: list[str] = []
        loop = asyncio.get_running_loop()
        stop = loop.time() + 3.0

        async def cse_requests() -> None:
            while loop.time() < stop:
                r = await cse.get(url, headers=headers(MN))
                answers.append(r.headers["x-m2m-rsc"])

        # Timed re-keys (every second) and one by hand, all while the CSE keeps asking.
        async def by_hand() -> bool:
            await asyncio.sleep(0.5)
            return await link.rekey()

        *_, manual = await asyncio.gather(*(cse_requests() for _ in range(4)), by_hand())
        assert manual is True
        assert len(answers) > 20 and set(answers) == {"2000"}, answers
        assert c.mn.egress.stats.rekeys >= 2
        now = link.live_sa_ids
        assert now and first not in now
        old = next(r for r in c.mn.egress.records() if str(r.sa_id) == first)
        assert old.state is SaState.UPDATED
        assert old.replaced_by is not None and str(old.replaced_by) in set(now) | {
            str(r.sa_id) for r in c.mn.egress.records()
        }
        # The upstream saw the old SA end and the new one begin.
        assert now[-1] in c.upstream.recent_associations
        await wait_until(
            lambda: c.upstream.stats.associations_closed >= 2, "the old SAs closed upstream"
        )


async def test_a_failed_rekey_leaves_the_old_sa_serving(
    tmp_path: Path, in_acme: AcmeCse, pki: Pki, in_store: SqlitePskStore
) -> None:
    async with chain(tmp_path, in_acme, pki, in_store) as c, httpx.AsyncClient() as cse:
        link = c.mn.egress.links[0]
        await wait_until(lambda: bool(link.live_sa_ids), "the first SA")
        before = link.live_sa_ids
        assert link.initiator is not None

        async def refused(host: str, port: int, timeout: float) -> Any:
            raise HandshakeError("handshake failure (peer refused)")

        working = link.initiator
        link.initiator = dataclasses.replace(working, _open=refused)
        assert await link.rekey() is False
        assert c.mn.egress.stats.rekeys_failed == 1 and link.live_sa_ids == before
        r = await cse.get(c.egress_url(0) + in_acme.base, headers=headers(MN))
        assert r.headers["x-m2m-rsc"] == "2000"
        assert link.live_sa_ids == before  # the same SA answered
        link.initiator = working
        assert await link.rekey() is True and link.live_sa_ids != before


async def test_upstream_down_is_5103_and_it_recovers(
    tmp_path: Path, in_acme: AcmeCse, pki: Pki, in_store: SqlitePskStore
) -> None:
    async with chain(tmp_path, in_acme, pki, in_store) as c, httpx.AsyncClient() as cse:
        url = c.egress_url(0) + in_acme.base
        r = await cse.get(url, headers=headers(MN))
        assert r.headers["x-m2m-rsc"] == "2000"
        await c.upstream.close()  # the IN gateway goes away (close_notify to our SAs)
        link = c.mn.egress.links[0]
        await wait_until(lambda: not link.live_sa_ids, "the SA closed")
        for _ in range(3):
            r = await cse.get(url, headers=headers(MN))
            assert (r.status_code, r.headers["x-m2m-rsc"]) == (404, "5103"), r.text
        assert c.mn.egress.stats.sas_failed >= 1
        closed = [r for r in c.mn.egress.records() if r.state is SaState.CLOSED]
        assert len(closed) == 2  # both listeners' SAs
        # It comes back on the same port: the egress establishes a new SA by itself.
        back = in_gateway(in_acme, pki, in_store, c.cert_port, c.psk_port)
        async with started(back):
            answers: list[str] = []

            async def served() -> bool:
                r = await cse.get(url, headers=headers(MN))
                answers.append(r.headers["x-m2m-rsc"])
                return answers[-1] == "2000"

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10.0
            while not await served():
                assert loop.time() < deadline, answers
                await asyncio.sleep(0.1)
            assert set(answers) <= {"5103", "2000"}
            (sa_id,) = link.live_sa_ids
            assert sa_id in back.recent_associations
            mine = next(r for r in c.mn.egress.records() if str(r.sa_id) == sa_id)
            assert mine.state is SaState.ESTABLISHED
