"""The initiator side of seed 003's SA services (issue 12 item 4), against real peers.

* ``openssl s_server -psk ... -keymatexport EXPORTER-m2msec-SA-identifier``: our
  :class:`SecureSession` establishes an SA whose identifier is the server's export, with
  an initiator record in the SA store; Remove ends it with close_notify.
* Our gateway with ACME behind it: Update in place keeps serving (requests during it all
  answered, the new SA a full handshake, the old record ``updated`` with ``replaced_by``);
  a failed update (the gateway's psk row now holds another Kpsa, so the new handshake is
  refused) leaves the old SA serving.
* The egress's upstream SAs through the shipped ``m2msec sa`` CLI against a running
  gateway's admin socket: listed beside the Responder's, updated in place while the CSE
  keeps asking, removed (close_notify; the next request makes a new SA).
* ``m2msec connect --json --rekey --record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from m2msec.config import SaConfig
from m2msec.config.credentials import Credential, KeySource, PskSettings
from m2msec.config.initiators import build_initiator
from m2msec.errors import HandshakeError
from m2msec.sa.flows import Acceptance
from m2msec.sa.outcomes import SaUnavailable
from m2msec.sa.records import SaId, SaRole, SaState
from m2msec.sa.store import SaRecordStore
from m2msec.servers.gateway import Gateway
from m2msec.servers.initiator_session import SecureSession
from m2msec.store.base import PskEntry
from m2msec.store.sqlite import SqlitePskStore
from m2msec.tls.engine import SA_ID_LABEL
from tests.acme import AcmeCse, acme_fixture
from tests.interop import (
    TR0038_AE_ID,
    TR0038_KPSA_HEX,
    TR0038_KPSA_ID,
    free_port,
    keying_material,
    run,
    spawn,
    tr0038_store,
    wait_until,
)
from tests.test_egress import (  # noqa: F401 - fixtures
    IN,
    MN,
    egress_config,
    headers,
    in_acme,
    in_gateway,
    in_store,
    pki,
    started,
    write_credentials,
)
from tests.test_gateway_sa import gateway, tls_port

pytestmark = pytest.mark.interop

acme = acme_fixture()

CSE = "/mn-cse-123456"
SNI = "mn-cse-123456.in.provider.com"
STEP = 10.0


def psk_session(port: int, store: SaRecordStore | None = None) -> SecureSession:
    credential = Credential(
        PskSettings(TR0038_KPSA_ID, KeySource(value=bytes.fromhex(TR0038_KPSA_HEX))),
        id_b=CSE,
        server_name=SNI,
    )
    initiator = build_initiator(credential, host="127.0.0.1")
    return SecureSession(initiator, "127.0.0.1", port, sink=store, http_host=SNI)


@pytest.fixture
def psk(tmp_path: Path) -> Iterator[SqlitePskStore]:
    tr0038_store(tmp_path / "psk.db").close()
    store = SqlitePskStore(tmp_path / "psk.db", cache_ttl=0.3)
    yield store
    store.close()


@pytest.fixture
def records(tmp_path: Path) -> Iterator[SaRecordStore]:
    store = SaRecordStore(tmp_path / "initiator-sa.db", retention=None)
    yield store
    store.close()


# -- openssl s_server --------------------------------------------------------------------


async def test_establish_and_remove_with_openssl_s_server(records: SaRecordStore) -> None:
    port = free_port()
    argv = [
        "openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-nocert", "-naccept", "1",
        "-psk_identity", TR0038_KPSA_ID, "-psk", TR0038_KPSA_HEX,
        "-keymatexport", SA_ID_LABEL.decode(), "-keymatexportlen", "16",
    ]  # fmt: skip
    async with spawn(argv) as server:
        await server.expect(r"^ACCEPT", STEP)
        session = psk_session(port, records)
        rec = await session.establish()
        await server.expect(r"Keying material: [0-9A-F]+\r?\n", STEP)
        # The SA identifier is the session's exporter value, the same on both ends.
        assert str(rec.sa_id) == keying_material(server.output)
        assert rec.role is SaRole.INITIATOR and rec.state is SaState.ESTABLISHED
        assert (rec.framework, rec.key_id, rec.peer_id) == ("provisioned-psk", TR0038_KPSA_ID, CSE)
        assert rec.key_fingerprint and TR0038_KPSA_HEX not in rec.key_fingerprint
        records.flush(5)
        stored = records.get(rec.sa_id, SaRole.INITIATOR)
        assert stored is not None and stored.state is SaState.ESTABLISHED
        # Remove: marked invalid, close_notify to the peer, nothing sent afterwards.
        outcome = await session.remove()
        assert outcome.accepted and outcome.confirm is not None
        assert outcome.confirm.result is Acceptance.ACCEPTED
        await server.expect(r"DONE|CONNECTION CLOSED", STEP)  # s_server read close_notify
        assert session.record is not None and session.record.state is SaState.REMOVED
        with pytest.raises(SaUnavailable):
            await session.request("GET", "/", origin=TR0038_AE_ID)
        await session.aclose()
    records.flush(5)
    assert [e.event for e in records.history(rec.sa_id)] == ["established", "removed"]
    assert records.get(rec.sa_id, SaRole.INITIATOR).state is SaState.REMOVED  # type: ignore[union-attr]


# -- our gateway, ACME behind it --------------------------------------------------------


async def test_update_in_place_keeps_serving(
    acme: AcmeCse, psk: SqlitePskStore, records: SaRecordStore
) -> None:
    async with gateway(acme, psk) as gw, psk_session(tls_port(gw), records) as session:
        old = await session.establish()
        answers: list[int | None] = []
        loop = asyncio.get_running_loop()
        stop = loop.time() + 1.5

        async def ask() -> None:
            while loop.time() < stop:
                r = await session.request("GET", acme.base, origin=TR0038_AE_ID)
                answers.append(r.rsc)

        async def update_midway() -> Any:
            await asyncio.sleep(0.4)
            return await session.update()

        *_, outcome = await asyncio.gather(ask(), ask(), ask(), update_midway())
        # Every request was answered by ACME through the gateway, none refused.
        assert len(answers) > 10 and None not in answers and 4107 not in answers, answers
        assert outcome.confirm.result is Acceptance.ACCEPTED
        new = outcome.record
        assert new is not None and new.sa_id != old.sa_id and outcome.confirm.new_sa_id == new.sa_id
        assert outcome.replaced is not None and outcome.replaced.state is SaState.UPDATED
        assert outcome.replaced.replaced_by == new.sa_id
        assert session.record == new
        # A full handshake, not a resumption of the old session; the old one ended.
        assert not gw.recent_associations[str(new.sa_id)].resumed
        await wait_until(lambda: gw.sa.management.get(old.sa_id) is None, "old SA ended")
        r = await session.request("GET", acme.base, origin=TR0038_AE_ID)
        assert r.rsc not in (None, 4107)
    records.flush(5)
    assert records.get(old.sa_id, SaRole.INITIATOR).replaced_by == new.sa_id  # type: ignore[union-attr]
    assert [e.event for e in records.history(old.sa_id)] == ["established", "updating", "updated"]


async def test_failed_update_leaves_the_old_sa_working(
    acme: AcmeCse, psk: SqlitePskStore, records: SaRecordStore
) -> None:
    async with gateway(acme, psk) as gw, psk_session(tls_port(gw), records) as session:
        old = await session.establish()
        r = await session.request("GET", acme.base, origin=TR0038_AE_ID)
        assert r.rsc not in (None, 4107)
        # The operator gives the KpsaId another Kpsa: the live SA stays (same binding),
        # a new handshake with our Kpsa is refused by the gateway.
        psk.add(PskEntry(TR0038_KPSA_ID, bytes(16), TR0038_AE_ID), replace=True)
        await asyncio.sleep(0.5)  # past the lookup cache's lifetime
        outcome = await session.update()
        assert outcome.confirm.result is Acceptance.REJECTED
        assert outcome.replaced is None and outcome.record is not None
        assert outcome.record.sa_id == old.sa_id and outcome.record.state is SaState.ESTABLISHED
        assert outcome.record.cause and outcome.record.cause.startswith("update rejected")
        # No gap: the old SA still serves, at the gateway too.
        for _ in range(3):
            r = await session.request("GET", acme.base, origin=TR0038_AE_ID)
            assert r.rsc not in (None, 4107)
        assert session.record is not None and session.record.sa_id == old.sa_id
        assert gw.sa.management.get(old.sa_id) is not None
        failed = [r for r in gw.sa.management.live() if r.state is SaState.FAILED]
        assert failed == []
    records.flush(5)
    assert [e.event for e in records.history(old.sa_id)][:3] == [
        "established",
        "updating",
        "update-rejected",
    ]


# -- the egress through the shipped m2msec sa CLI ----------------------------------------


async def m2msec(*args: str) -> Any:
    return await run([sys.executable, "-m", "m2msec.cli", *args], timeout=30)


@contextlib.asynccontextmanager
async def egress_chain(
    tmp_path: Path,
    acme: AcmeCse,
    pki: Any,  # noqa: F811
    store: SqlitePskStore,
) -> AsyncIterator[tuple[Gateway, Gateway, str, Path]]:
    async with started(in_gateway(acme, pki, store)) as up:
        table = write_credentials(tmp_path, pki, up.listeners[0].port, up.listeners[1].port)
        config = egress_config(
            table,
            {"listen": "127.0.0.1:0", "upstream": f"https://127.0.0.1:{up.listeners[1].port}"},
        )
        sock = tmp_path / "mn-admin.sock"
        config = dataclasses.replace(
            config, sa=SaConfig(store=str(tmp_path / "mn-sa.db"), admin_socket=str(sock))
        )
        async with started(Gateway(config)) as mn:
            info = mn.listeners[0]
            yield up, mn, f"http://{info.host}:{info.port}", sock


async def sa_json(sock: Path, *args: str) -> list[dict[str, Any]]:
    done = await m2msec("sa", *args, "--json", "--admin-socket", str(sock))
    assert done.returncode == 0, done.describe()
    return [json.loads(line) for line in done.output.splitlines() if line.startswith("{")]


async def test_egress_sas_listed_updated_removed_by_the_sa_cli(
    tmp_path: Path,
    in_acme: AcmeCse,  # noqa: F811
    pki: Any,  # noqa: F811
    in_store: SqlitePskStore,  # noqa: F811
) -> None:
    async with (
        egress_chain(tmp_path, in_acme, pki, in_store) as (up, mn, url, sock),
        httpx.AsyncClient() as cse,
    ):
        r = await cse.get(url + in_acme.base, headers=headers(MN))
        assert r.headers["x-m2m-rsc"] == "2000", r.text
        link = mn.egress.links[0]
        (first,) = link.live_sa_ids
        listed = await sa_json(sock, "list")
        mine = [d for d in listed if d["sa_id"] == first]
        assert len(mine) == 1 and mine[0]["role"] == "initiator"
        assert mine[0]["peer_id"] == IN and mine[0]["state"] == "established"
        # Update by the operator while the CSE keeps asking: all answered.
        answers: list[str] = []
        loop = asyncio.get_running_loop()
        stop = loop.time() + 2.0

        async def ask() -> None:
            while loop.time() < stop:
                r = await cse.get(url + in_acme.base, headers=headers(MN))
                answers.append(r.headers["x-m2m-rsc"])

        async def operator() -> Any:
            await asyncio.sleep(0.3)
            return await m2msec("sa", "update", first, "--admin-socket", str(sock))

        *_, done = await asyncio.gather(ask(), ask(), operator())
        assert done.returncode == 0, done.describe()
        assert len(answers) > 5 and set(answers) == {"2000"}, answers
        shown = (await sa_json(sock, "show", first))[-1]
        second = shown["sa"]["replaced_by"]
        assert shown["sa"]["state"] == "updated" and second in done.output
        assert first not in link.live_sa_ids and second in link.live_sa_ids
        assert [h["event"] for h in shown["history"]] == ["established", "updating", "updated"]
        # Remove: close_notify upstream (its SA Removal there), the next request a new SA.
        done = await m2msec("sa", "remove", second, "--admin-socket", str(sock))
        assert done.returncode == 0, done.describe()
        await wait_until(lambda: up.sa.management.get(SaId.from_hex(second)) is None, "gone")
        shown = (await sa_json(sock, "show", second))[-1]
        assert shown["sa"]["state"] == "removed"
        assert "removed by the operator" in shown["sa"]["cause"]
        r = await cse.get(url + in_acme.base, headers=headers(MN))
        assert r.headers["x-m2m-rsc"] == "2000", r.text
        assert link.live_sa_ids and not {first, second} & set(link.live_sa_ids)
        up.sa.store.flush(5)  # type: ignore[union-attr]
        upstream = up.sa.store.get(second, SaRole.RESPONDER)  # type: ignore[union-attr]
        assert upstream is not None and upstream.state is SaState.REMOVED
        assert upstream.cause == "removed by the peer"


# -- m2msec connect ----------------------------------------------------------------------


async def test_connect_json_rekey_record(
    acme: AcmeCse, psk: SqlitePskStore, tmp_path: Path
) -> None:
    async with gateway(acme, psk) as gw:
        url = f"https://127.0.0.1:{tls_port(gw)}{acme.base}"
        common = (
            "connect", url, "--from", TR0038_AE_ID, "--psk-identity", TR0038_KPSA_ID,
            "--psk", TR0038_KPSA_HEX, "--id-b", CSE, "--servername", SNI,
        )  # fmt: skip
        done = await m2msec(*common, "--json", "--rekey", "--record")
        assert done.returncode in (0, 3), done.describe()
        doc = json.loads(done.output.strip().splitlines()[-1])
        first, second = doc["sa"], doc["rekey"]["sa"]
        assert first["role"] == "initiator" and first["key_id"] == TR0038_KPSA_ID
        assert first["state"] == "updated" and first["replaced_by"] == second["sa_id"]
        assert doc["rekey"]["replaces"] == first["sa_id"] != second["sa_id"]
        assert first["key_fingerprint"] and TR0038_KPSA_HEX not in done.output
        assert doc["response"]["rsc"] not in (None, 4107)
        assert doc["rekey"]["response"]["rsc"] == doc["response"]["rsc"]
        # Both SAs reached the gateway with the same identifiers.
        assert {first["sa_id"], second["sa_id"]} <= set(gw.recent_associations)
        # --record: the data directory's SA store holds them, 0600.
        home = Path(__import__("os").environ["M2MSEC_HOME"])
        db = next(home.rglob("sa.db"))
        assert db.stat().st_mode & 0o077 == 0
        with contextlib.closing(SaRecordStore(db, retention=None)) as store:
            rec = store.get(first["sa_id"], SaRole.INITIATOR)
            assert rec is not None and rec.state is SaState.UPDATED
            assert store.get(second["sa_id"], SaRole.INITIATOR) is not None
        # Without --json: the record printed as a table; without --record: nothing kept.
        plain = await m2msec(*common, "--rekey")
        ids = re.findall(r"sa_id\W+([0-9a-f]{32})", plain.output)
        assert len(ids) == 2 and ids[0] != ids[1], plain.output
        assert f"SA {ids[0]} updated: replaced by {ids[1]}" in plain.output
        with contextlib.closing(SaRecordStore(db, retention=None)) as store:
            assert store.get(ids[0], SaRole.INITIATOR) is None


async def test_establish_refused_is_a_failed_record(
    acme: AcmeCse, psk: SqlitePskStore, records: SaRecordStore
) -> None:
    psk.add(PskEntry(TR0038_KPSA_ID, bytes(16), TR0038_AE_ID), replace=True)
    async with gateway(acme, psk) as gw:
        session = psk_session(tls_port(gw), records)
        with pytest.raises(HandshakeError):
            await session.establish()
        await session.aclose()
    records.flush(5)
    (failed,) = list(records.list(state=SaState.FAILED))
    assert failed.role is SaRole.INITIATOR and failed.cause
    assert failed.cause.startswith("Administrative reasons")
