"""The gateway as the Responder of seed 003's SA services, end to end with real peers.

``openssl s_client`` (TLS-PSK), our own initiators (TLS and DTLS/CoAP) and the shipped
``m2msec sa`` / ``m2msec psk`` commands drive a running :class:`Gateway` with ACME behind
it (tests/acme.py):

* Establish (tables 24/35): the Responder Agent hook hears Initiate SA Received and SA
  Establishment Complete with the SA identifier s_client exports; the record is in the
  store; a refusal by the agent is close_notify and no service; a wrong key is a FAILED
  record with "Administrative reasons", no common suite one with "No parameters in
  common with Responder".
* Remove (7.3.6): ``m2msec sa remove`` ends the live session at once, and a resumption of
  the removed SA's session is a full handshake; ``m2msec psk remove`` ends an idle session
  within the lookup cache's lifetime, the reason in the record.
* Update (7.3.3): ``m2msec sa update`` ends the session; the device reconnects, is served
  over a new SA, and the old record is ``updated`` with ``replaced_by``.
* ``m2msec sa list --json`` / ``show --json`` show TLS and DTLS records and history; a
  gateway starting closes its own stale live records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from m2msec.config import (
    ConfigurationError,
    GatewayConfig,
    PskConfig,
    SaConfig,
    load_config,
    parse_listen_url,
)
from m2msec.crypto.fingerprint import key_fingerprint
from m2msec.frameworks.provisioned import PskInitiator
from m2msec.ids import CseId
from m2msec.sa.agent import accept, refuse
from m2msec.sa.flows import (
    InitiateSaReceived,
    InitiateSaReceivedConfirm,
    Result,
    SaEstablishmentComplete,
    SaRemoved,
    SaUpdated,
)
from m2msec.sa.records import Direction, SaId, SaRecord, SaRole, SaState
from m2msec.sa.store import SaRecordStore
from m2msec.servers.gateway import Gateway
from m2msec.servers.gateway_sa import CREDENTIAL_REMOVED, STALE
from m2msec.service.coap_client import CoapClient
from m2msec.service.onem2m_client import OneM2MClient
from m2msec.store.sqlite import SqlitePskStore
from m2msec.tls.aio import TLSConnection, connect
from m2msec.tls.aio_dtls import dtls_connect
from m2msec.tls.engine import SA_ID_LABEL
from m2msec.tls.profiles import Transport
from tests.acme import AcmeCse, acme_fixture
from tests.interop import (
    STRONG_AE_ID,
    STRONG_KPSA_HEX,
    STRONG_KPSA_ID,
    TR0038_AE_ID,
    TR0038_KPSA_HEX,
    TR0038_KPSA_ID,
    Completed,
    keying_material,
    psk_s_client,
    run,
    spawn,
    tr0038_store,
    wait_until,
)

pytestmark = pytest.mark.interop

acme = acme_fixture()

CSE = "/mn-cse-123456"
SNI = "mn-cse-123456.in.provider.com"
TLS12 = ("-tls1_2", "-cipher", "PSK-AES128-GCM-SHA256")
EXPORT = ("-keymatexport", SA_ID_LABEL.decode(), "-keymatexportlen", "16")


@dataclass
class Watching:
    """A Responder Agent (the application's hook) that notes every flow; refuses one peer."""

    refuse_peer: str | None = None
    received: list[InitiateSaReceived] = field(default_factory=list)
    complete: list[SaEstablishmentComplete] = field(default_factory=list)
    updated: list[SaUpdated] = field(default_factory=list)
    removed: list[SaRemoved] = field(default_factory=list)

    def initiate_sa_received(self, flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
        self.received.append(flow)
        if flow.initiator_id.entity_id == self.refuse_peer:
            return refuse(flow)
        return accept(flow)

    def sa_establishment_complete(self, flow: SaEstablishmentComplete) -> None:
        self.complete.append(flow)

    def sa_updated(self, flow: SaUpdated) -> None:
        self.updated.append(flow)

    def sa_removed(self, flow: SaRemoved) -> None:
        self.removed.append(flow)


@contextlib.asynccontextmanager
async def gateway(
    acme: AcmeCse,
    store: SqlitePskStore,
    agent: Watching | None = None,
    sa: SaConfig | None = None,
    sweep_interval: float | None = None,
) -> AsyncIterator[Gateway]:
    cfg = GatewayConfig(
        listen=(parse_listen_url("tls://127.0.0.1:0"), parse_listen_url("dtls://127.0.0.1:0")),
        backend=acme.url,
        cse_id=CseId.parse(CSE),
        psk=PskConfig(),
        sa=sa or SaConfig(),
    )
    gw = Gateway(cfg, store=store, agent=agent)
    gw.sa.sweep_interval = sweep_interval
    async with gw:
        yield gw
    # Bounded: nothing of an ended SA stays in memory.
    assert gw.sa.live_count() == 0 and list(gw.sa.management.live()) == []


def tls_port(gw: Gateway) -> int:
    return next(i.port for i in gw.listeners if i.spec.scheme == "tls")


def dtls_port(gw: Gateway) -> int:
    return next(i.port for i in gw.listeners if i.spec.scheme == "dtls")


def get(base: str, origin: str, ri: str, *, close: bool = False) -> bytes:
    return (
        f"GET {base} HTTP/1.1\r\nHost: {SNI}\r\nX-M2M-Origin: {origin}\r\n"
        f"X-M2M-RI: {ri}\r\nX-M2M-RVI: 3\r\nAccept: application/json\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    ).encode()


def reuse(output: str) -> str | None:
    """``New`` or ``Reused``, from s_client's session summary."""
    match = re.search(r"^(New|Reused), TLSv1\.\d", output, re.MULTILINE)
    return match.group(1) if match else None


async def m2msec(*args: str) -> Completed:
    """The shipped CLI, as an operator runs it (same data directory: $M2MSEC_HOME)."""
    return await run([sys.executable, "-m", "m2msec.cli", *args], timeout=30)


async def sa_list(*args: str) -> list[dict[str, Any]]:
    done = await m2msec("sa", "list", "--json", *args)
    assert done.returncode == 0, done.describe()
    return [json.loads(line) for line in done.output.splitlines() if line.startswith("{")]


async def sa_show(said: str) -> dict[str, Any]:
    done = await m2msec("sa", "show", said, "--json")
    assert done.returncode == 0, done.describe()
    doc: dict[str, Any] = json.loads(done.output.strip().splitlines()[-1])
    return doc


async def tls_light(gw: Gateway, kpsa_id: str = TR0038_KPSA_ID) -> TLSConnection:
    key = TR0038_KPSA_HEX if kpsa_id == TR0038_KPSA_ID else STRONG_KPSA_HEX
    initiator = PskInitiator(kpsa_id, bytes.fromhex(key), CSE, server_name=SNI)
    return await connect("127.0.0.1", tls_port(gw), initiator.profile())


@pytest.fixture
def psk(tmp_path: Path) -> SqlitePskStore:
    tr0038_store(tmp_path / "psk.db").close()
    store = SqlitePskStore(tmp_path / "psk.db", cache_ttl=0.3)
    yield store
    store.close()


# -- Establish --------------------------------------------------------------------------


async def test_s_client_sa_id_is_the_agents_and_the_records(
    acme: AcmeCse, psk: SqlitePskStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "m2msec.servers.gateway")
    agent = Watching()
    async with gateway(acme, psk, agent) as gw:
        argv = psk_s_client(tls_port(gw), *TLS12, *EXPORT, "-ign_eof")
        async with spawn(argv) as client:
            client.write(get(acme.base, TR0038_AE_ID, "sa-1"))
            await client.expect(r"X-M2M-RI: sa-1", 10)
            said = keying_material(client.output)
            (received,) = agent.received
            (complete,) = agent.complete
            assert received.sa_id.hex() == said == complete.sa_id.hex()
            assert received.initiator_id.entity_id == TR0038_AE_ID
            assert received.initiator_id.key_id == TR0038_KPSA_ID
            assert complete.establishment_result is Result.SUCCESS
            (live,) = await sa_list()
            assert live["sa_id"] == said and live["state"] == "established"
            assert live["role"] == "responder" and live["peer_id"] == TR0038_AE_ID
            assert live["key_id"] == TR0038_KPSA_ID and live["protocol"] == "TLSv1.2"
            assert live["key_fingerprint"] == key_fingerprint(bytes.fromhex(TR0038_KPSA_HEX))
            assert TR0038_KPSA_HEX not in json.dumps(live)
        # s_client killed: the session ended without a close_notify.
        await wait_until(lambda: gw.sa.live_count() == 0, "the session's end is noticed")
        shown = await sa_show(said)
        assert shown["sa"]["state"] == "closed"
        assert [e["event"] for e in shown["history"]] == ["established", "closed"]
    line = next(r.getMessage() for r in caplog.records if "association established" in r.message)
    assert f"sa={SaId.from_hex(said).hex()}" in line


async def test_agent_refusal_failed_handshakes_and_their_causes(
    acme: AcmeCse, psk: SqlitePskStore
) -> None:
    agent = Watching(refuse_peer=STRONG_AE_ID)
    async with gateway(acme, psk, agent) as gw:
        port = tls_port(gw)
        # Refused by the Responder Agent: close_notify, the request never served.
        argv = psk_s_client(
            port, *TLS12, *EXPORT, "-ign_eof", identity=STRONG_KPSA_ID, key_hex=STRONG_KPSA_HEX
        )
        refused = await run(argv, stdin=get(acme.base, STRONG_AE_ID, "refused-1"), timeout=20)
        assert "X-M2M-RI: refused-1" not in refused.output, refused.describe()
        assert re.search(r"^closed$", refused.output, re.M), refused.describe()  # close_notify
        said = keying_material(refused.output)
        assert agent.received[-1].sa_id.hex() == said
        # A wrong key: Administrative reasons. No suite in common: no parameters in common.
        wrong = await run(psk_s_client(port, *TLS12, key_hex="00" * 8), timeout=20)
        assert wrong.returncode != 0, wrong.describe()
        nothing = await run(
            psk_s_client(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"), timeout=20
        )
        assert nothing.returncode != 0, nothing.describe()
        assert gw.stats.requests_forwarded == 0
        records = await sa_list("--state", "failed")
        by_id = {r["sa_id"]: r for r in records}
        assert by_id[said]["cause"] == "Administrative reasons: refused by the Responder Agent"
        assert by_id[said]["peer_id"] == STRONG_AE_ID
        handshakes = [r for r in records if r["sa_id"] != said]
        causes = {r["cause"].split(":")[0]: r for r in handshakes}
        assert sorted(causes) == [
            "Administrative reasons",
            "No parameters in common with Responder",
        ]
        # The wrong key's record names the identity offered (unproven); no PSK suite, none.
        assert causes["Administrative reasons"]["peer_id"] == TR0038_KPSA_ID
        assert causes["No parameters in common with Responder"]["peer_id"] == ""
        assert all(
            r["protocol"] == "TLS" and r["framework"] == "provisioned-psk" for r in handshakes
        )
        failures = [c for c in agent.complete if c.establishment_result is Result.FAILURE]
        assert len(failures) == 2


# -- Remove -----------------------------------------------------------------------------


async def test_sa_remove_ends_the_session_and_its_resumption(
    acme: AcmeCse, psk: SqlitePskStore, tmp_path: Path
) -> None:
    sess = str(tmp_path / "session.pem")
    agent = Watching()
    async with gateway(acme, psk, agent) as gw:
        base = psk_s_client(tls_port(gw), *TLS12, *EXPORT, "-ign_eof")
        # A full handshake; s_client keeps its session when the gateway closes after the answer.
        first = await run(
            [*base, "-sess_out", sess], stdin=get(acme.base, TR0038_AE_ID, "rm-1", close=True)
        )
        assert "X-M2M-RI: rm-1" in first.output and Path(sess).stat().st_size, first.describe()
        assert (await sa_show(keying_material(first.output)))["sa"]["state"] == "closed"
        async with spawn([*base, "-sess_in", sess]) as second:  # the control: it resumes
            second.write(get(acme.base, TR0038_AE_ID, "rm-2"))
            await second.expect(r"X-M2M-RI: rm-2", 10)
            assert reuse(second.output) == "Reused", second.describe()
            said = keying_material(second.output)
            assert [r["sa_id"] for r in await sa_list("--peer", TR0038_AE_ID)] == [said]
            forwarded = gw.stats.requests_forwarded
            done = await m2msec("sa", "remove", said)
            assert done.returncode == 0, done.describe()
            await second.wait(5)  # ended at once by the gateway, not by s_client
        assert gw.stats.requests_forwarded == forwarded
        assert [f.sa_id.hex() for f in agent.removed] == [said]
        again = await m2msec("sa", "remove", said)
        assert again.returncode == 1 and "not-live" in again.output, again.describe()
        # The removed SA's session cannot come back: a full handshake, a new SA.
        async with spawn([*base, "-sess_in", sess]) as third:
            third.write(get(acme.base, TR0038_AE_ID, "rm-3"))
            await third.expect(r"X-M2M-RI: rm-3", 10)
            assert reuse(third.output) == "New", third.describe()
            assert keying_material(third.output) != said
        shown = await sa_show(said)
        assert shown["sa"]["state"] == "removed"
        assert shown["sa"]["cause"] == "administrative reasons: removed by the operator"
        assert [e["event"] for e in shown["history"]] == ["established", "removed"]


async def test_psk_remove_ends_an_idle_session_within_the_cache_lifetime(
    acme: AcmeCse, psk: SqlitePskStore, tmp_path: Path
) -> None:
    async with gateway(acme, psk) as gw:
        conn = await tls_light(gw)
        client = OneM2MClient(conn, host=SNI)
        r = await client.request("GET", acme.base, origin=TR0038_AE_ID)
        assert r.rsc is not None  # ACME answered, through the gateway
        said = conn.context.sa_id
        done = await m2msec("psk", "remove", TR0038_KPSA_ID, "--store", str(tmp_path / "psk.db"))
        assert done.returncode == 0, done.describe()
        # Idle: no request is sent; the sweep ends the SA within ~2 cache lifetimes.
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(conn.recv(), 5) == b""
        assert loop.time() - started < 2.0
        assert conn.close_notify_received  # ended by close_notify, not dropped
        shown = await sa_show(said)
        assert shown["sa"]["state"] == "removed"
        assert shown["sa"]["cause"] == CREDENTIAL_REMOVED
        await conn.close()


async def test_a_request_racing_the_sweep_is_answered_4107_and_not_forwarded(
    acme: AcmeCse, psk: SqlitePskStore, tmp_path: Path
) -> None:
    # No sweep: the request meets the removed row first.
    async with gateway(acme, psk, sweep_interval=3600.0) as gw:
        conn = await tls_light(gw)
        client = OneM2MClient(conn, host=SNI)
        assert (await client.request("GET", acme.base, origin=TR0038_AE_ID)).rsc is not None
        said = conn.context.sa_id
        done = await m2msec("psk", "remove", TR0038_KPSA_ID, "--store", str(tmp_path / "psk.db"))
        assert done.returncode == 0, done.describe()
        await asyncio.sleep(0.7)  # past the lookup cache's lifetime (0.3 s)
        forwarded = gw.stats.requests_forwarded
        r = await client.request("GET", acme.base, origin=TR0038_AE_ID)
        assert r.rsc == 4107 and r.headers.get("connection") == "close"
        assert gw.stats.requests_forwarded == forwarded
        assert await asyncio.wait_for(conn.recv(), 5) == b""
        shown = await sa_show(said)
        assert (shown["sa"]["state"], shown["sa"]["cause"]) == ("removed", CREDENTIAL_REMOVED)
        await conn.close()


# -- Update -----------------------------------------------------------------------------


async def test_sa_update_rekeys_and_keeps_the_device_served(
    acme: AcmeCse, psk: SqlitePskStore
) -> None:
    agent = Watching()
    async with gateway(acme, psk, agent) as gw:
        conn = await tls_light(gw)
        r = await OneM2MClient(conn, host=SNI).request("GET", acme.base, origin=TR0038_AE_ID)
        assert r.rsc is not None
        old = conn.context.sa_id
        done = await m2msec("sa", "update", old)
        assert done.returncode == 0, done.describe()
        # The gateway ends the session; the device's next handshake is the new SA.
        assert await asyncio.wait_for(conn.recv(), 5) == b""
        await conn.close()
        conn = await tls_light(gw)
        assert not conn.context.resumed
        r = await OneM2MClient(conn, host=SNI).request("GET", acme.base, origin=TR0038_AE_ID)
        assert r.rsc is not None
        new = conn.context.sa_id
        assert new != old
        shown = await sa_show(old)
        assert shown["sa"]["state"] == "updated" and shown["sa"]["replaced_by"] == new
        assert [e["event"] for e in shown["history"]] == ["established", "updating", "updated"]
        (update,) = agent.updated
        assert (update.existing_sa_id.hex(), update.new_sa_id.hex()) == (old, new)
        assert [r["sa_id"] for r in await sa_list()] == [new]
        await conn.close()


# -- DTLS, list and show ----------------------------------------------------------------


async def test_dtls_association_is_listed_shown_and_removed(
    acme: AcmeCse, psk: SqlitePskStore
) -> None:
    async with gateway(acme, psk) as gw:
        initiator = PskInitiator(
            STRONG_KPSA_ID, bytes.fromhex(STRONG_KPSA_HEX), CSE, server_name=SNI
        )
        assoc = await dtls_connect(
            initiator.profile(Transport.DTLS), "127.0.0.1", dtls_port(gw), timeout=10
        )
        coap = CoapClient(assoc)
        r = await coap.request("GET", acme.base, origin=STRONG_AE_ID)
        assert r.rsc is not None
        tls = await tls_light(gw)
        said = assoc.context.sa_id
        listed = {r["sa_id"]: r for r in await sa_list()}
        assert set(listed) == {said, tls.context.sa_id}
        assert listed[said]["protocol"] == "DTLSv1.2" and listed[said]["peer_id"] == STRONG_AE_ID
        shown = await sa_show(said)
        assert shown["sa"]["peer_address"].startswith("127.0.0.1:")
        assert [e["event"] for e in shown["history"]] == ["established"]
        done = await m2msec("sa", "remove", "--peer", STRONG_AE_ID)
        assert done.returncode == 0 and said in done.output, done.describe()
        await asyncio.wait_for(assoc.wait_closed(), 5)
        assert assoc.close_notify_received  # the gateway's close_notify reached the device
        assert [r["sa_id"] for r in await sa_list()] == [tls.context.sa_id]
        await tls.close()
        await coap.close()


# -- restart after a crash --------------------------------------------------------------


async def test_a_starting_gateway_closes_its_own_stale_records(
    acme: AcmeCse, psk: SqlitePskStore, tmp_path: Path
) -> None:
    where = str(tmp_path / "sa.db")
    now = datetime.now(UTC)

    def live(sa_id: bytes) -> SaRecord:
        return SaRecord(
            sa_id=SaId(sa_id), role=SaRole.RESPONDER, framework="provisioned-psk",
            local_id=CSE, peer_id=TR0038_AE_ID, protocol="TLSv1.2",
            cipher_suite="PSK-AES128-CBC-SHA256", key_id=TR0038_KPSA_ID, key_fingerprint=None,
            direction=Direction.BOTH, established_at=now, state=SaState.ESTABLISHED,
        )  # fmt: skip

    for sa_id, owner in ((b"\x01" * 16, "gw-a"), (b"\x02" * 16, "gw-b")):
        crashed = SaRecordStore(where, owner=owner)
        crashed.record(live(sa_id), "established")
        crashed.close()
    async with gateway(acme, psk, sa=SaConfig(store=where, instance="gw-a")) as gw:
        assert gw.sa.store is not None
        mine = gw.sa.store.get(SaId(b"\x01" * 16), SaRole.RESPONDER)
        other = gw.sa.store.get(SaId(b"\x02" * 16), SaRole.RESPONDER)
        assert mine is not None and mine.state is SaState.CLOSED and mine.cause == STALE
        assert other is not None and other.state is SaState.ESTABLISHED  # another gateway's
        assert [e.event for e in gw.sa.store.history(SaId(b"\x01" * 16))] == [
            "established",
            "closed",
        ]


async def test_admin_socket_config_and_cli_options(tmp_path: Path) -> None:
    toml = tmp_path / "gw.toml"
    toml.write_text(
        '[gateway]\nlisten = ["tls://127.0.0.1:0"]\nbackend = "http://127.0.0.1:1"\n'
        'cse_id = "/mn-cse-123456"\n[sa]\nstore = "records.db"\nretention = 3600\n'
        'admin_socket = ""\ninstance = "gw-9"\n'
    )
    cfg = load_config(toml)
    assert cfg.sa == SaConfig(str(tmp_path / "records.db"), 3600.0, "", "gw-9")
    minimal = {
        "gateway.listen": ["tls://127.0.0.1:0"],
        "gateway.backend": "http://127.0.0.1:1",
        "gateway.cse_id": CSE,
    }
    assert load_config(None, minimal).sa == SaConfig()
    bad = tmp_path / "bad.toml"
    bad.write_text(toml.read_text().replace("retention = 3600", "retention = -1"))
    with pytest.raises(ConfigurationError, match=r"sa\.retention"):
        load_config(bad)
    helped = await m2msec("gateway", "serve", "--help")
    assert "--sa-store" in helped.output and "--admin-socket" in helped.output
