"""The SA admin API (issue 12 item 3): sans-IO routes, the 0600 Unix socket, ``m2msec sa``.

The Responder side here is :class:`FakeSaAdmin`, an in-memory :class:`SaAdmin` that keeps
a few SA records and applies Update and Remove to them the way the protocol's docstrings
say. It is a fake on purpose: the gateway's own implementation (over its live sessions
and the SA Management) comes in a later step, which drives these same commands against
real peers. What is real here: the HTTP codec and loop, the Unix socket with its mode,
folder, stale-socket, lock and peer-uid checks, the client, and the CLI end to end
through the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.cli.main import app
from m2msec.errors import ConfigurationError
from m2msec.paths import default_admin_socket
from m2msec.sa.admin import (
    AdminCall,
    AdminError,
    AdminOperation,
    AdminOutcome,
    AdminProtocolError,
    RejectionReason,
    SaDetail,
    SaHistoryEntry,
    SaJsonError,
    SaQuery,
    call_target,
    detail_from_json,
    detail_to_json,
    handle_request,
    parse_request,
    read_detail,
    read_list,
    read_outcome,
    record_from_json,
    record_to_json,
    sa_query,
)
from m2msec.sa.records import Direction, SaId, SaRecord, SaRole, SaState
from m2msec.servers.admin import AdminClient, AdminServer, AdminUnavailable

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
ID1 = SaId(bytes(range(16)))
ID2 = SaId(bytes(range(16, 32)))
ID3 = SaId(bytes(range(32, 48)))
AE1 = "CAE123456789012"  # TR-0038's light, as an AE-ID-Stem
GW = "/mn-cse-123456"
LONG_PEER = "C" + "x" * 150  # wider than any terminal: must never be cut in a pipe


def _record(sa_id: SaId, peer: str, **changes: object) -> SaRecord:
    base = SaRecord(
        sa_id=sa_id,
        role=SaRole.RESPONDER,
        framework="provisioned-psk",
        local_id=GW,
        peer_id=peer,
        protocol="TLSv1.2",
        cipher_suite="PSK-AES128-CBC-SHA256",
        key_id="AE123456789012-Light@in.provider.com",
        key_fingerprint="0123456789abcdef",
        direction=Direction.BOTH,
        established_at=T0,
        state=SaState.ESTABLISHED,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class FakeSaAdmin:
    """An in-memory Responder (module docstring): records and their history, no sessions."""

    def __init__(self, records: Sequence[SaRecord] = ()) -> None:
        self.records = {r.sa_id: r for r in records}
        self.history: dict[SaId, list[SaHistoryEntry]] = {
            r.sa_id: [SaHistoryEntry(r.established_at, "established", SaState.ESTABLISHED)]
            for r in records
        }
        self.calls: list[str] = []

    def _mark(self, sa_id: SaId, state: SaState, event: str, cause: str | None) -> SaRecord:
        now = T0 + timedelta(minutes=5)
        record = dataclasses.replace(self.records[sa_id], state=state, updated_at=now, cause=cause)
        self.records[sa_id] = record
        self.history[sa_id].append(SaHistoryEntry(now, event, state, cause))
        return record

    async def list(self, query: SaQuery) -> Sequence[SaRecord]:
        self.calls.append("list")
        return [r for r in self.records.values() if query.matches(r)]

    async def show(self, sa_id: SaId) -> SaDetail | None:
        self.calls.append("show")
        if sa_id not in self.records:
            return None
        return SaDetail(self.records[sa_id], tuple(self.history[sa_id]))

    def _live(self, sa_id: SaId) -> AdminOutcome | None:
        if sa_id not in self.records:
            return AdminOutcome.reject(RejectionReason.UNKNOWN_SA)
        if not self.records[sa_id].state.live:
            return AdminOutcome.reject(
                RejectionReason.NOT_LIVE, f"SA {sa_id} is {self.records[sa_id].state}"
            )
        return None

    async def update(self, sa_id: SaId) -> AdminOutcome:
        self.calls.append("update")
        refusal = self._live(sa_id)
        if refusal is not None:
            return refusal
        record = self._mark(sa_id, SaState.UPDATING, "update-requested", None)
        return AdminOutcome.accept([record], "the session is being ended gracefully")

    async def remove(self, sa_id: SaId) -> AdminOutcome:
        self.calls.append("remove")
        refusal = self._live(sa_id)
        if refusal is not None:
            return refusal
        return AdminOutcome.accept(
            [self._mark(sa_id, SaState.REMOVED, "removed", "removed by the operator")]
        )

    async def remove_peer(self, peer_id: str) -> AdminOutcome:
        self.calls.append("remove_peer")
        live = [r.sa_id for r in self.records.values() if r.peer_id == peer_id and r.state.live]
        if not live:
            return AdminOutcome.reject(RejectionReason.UNKNOWN_PEER)
        return AdminOutcome.accept(
            [self._mark(i, SaState.REMOVED, "removed", "removed by the operator") for i in live]
        )


def _fake() -> FakeSaAdmin:
    return FakeSaAdmin(
        [
            _record(ID1, AE1, peer_address="127.0.0.1:50001"),
            _record(ID2, LONG_PEER, framework="certificate", key_id=None),
            _record(ID3, AE1, state=SaState.REMOVED, cause="removed by the operator"),
        ]
    )


# ----------------------------------------------------------------------------- JSON


def test_record_json_round_trip_with_every_field_set() -> None:
    record = _record(
        ID1,
        AE1,
        updated_at=T0 + timedelta(seconds=1, microseconds=250),
        expires_at=T0 + timedelta(days=1),
        cause="administrative reasons",
        replaced_by=ID2,
        peer_address="[::1]:5684",
        state=SaState.UPDATED,
    )
    doc = record_to_json(record)
    # Every field of SaRecord travels (a field added later and not encoded fails here).
    assert set(doc) == {f.name for f in dataclasses.fields(SaRecord)} | {"live"}
    assert doc["established_at"] == "20260301T120000"  # TS-0004 6.3.3, UTC, no zone
    assert doc["updated_at"] == "20260301T120001,000250"
    assert doc["live"] is False
    assert record_from_json(json.loads(json.dumps(doc))) == record


def test_record_json_round_trip_with_optional_fields_absent() -> None:
    record = _record(ID1, AE1, local_id=None, key_id=None, key_fingerprint=None)
    doc = record_to_json(record)
    assert doc["live"] is True and doc["expires_at"] is None
    assert record_from_json(doc) == record
    # Missing optional fields read as None; unknown fields (a newer Responder's) are ignored.
    sparse = {k: v for k, v in doc.items() if v is not None} | {"new_field": 1}
    assert record_from_json(sparse) == record


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sa_id": None}, "'sa_id' must be a string"),
        ({"sa_id": "xyz"}, "not hexadecimal"),
        ({"peer_id": 5}, "'peer_id' must be a string"),
        ({"state": "gone"}, "unknown value 'gone'"),
        ({"role": "observer"}, "unknown value 'observer'"),
        ({"established_at": "20260301T120000Z"}, "time zone designator"),
        ({"expires_at": "2026-03-01"}, "not a timestamp"),
    ],
)
def test_record_from_json_refuses_malformed_fields(change: dict[str, object], message: str) -> None:
    doc = record_to_json(_record(ID1, AE1)) | change
    with pytest.raises(SaJsonError, match=message):
        record_from_json(doc)


def test_record_from_json_refuses_missing_fields_and_non_objects() -> None:
    doc = record_to_json(_record(ID1, AE1))
    del doc["cipher_suite"]
    with pytest.raises(SaJsonError, match="no 'cipher_suite'"):
        record_from_json(doc)
    with pytest.raises(SaJsonError, match="JSON object"):
        record_from_json([1, 2])


def test_detail_json_round_trip() -> None:
    detail = SaDetail(
        _record(ID1, AE1, state=SaState.REMOVED),
        (
            SaHistoryEntry(T0, "established", SaState.ESTABLISHED),
            SaHistoryEntry(T0 + timedelta(hours=1), "removed", SaState.REMOVED, "operator"),
        ),
    )
    assert detail_from_json(json.loads(json.dumps(detail_to_json(detail)))) == detail


def test_outcome_invariants() -> None:
    with pytest.raises(ValueError):
        AdminOutcome(True, reason=RejectionReason.REFUSED)
    with pytest.raises(ValueError):
        AdminOutcome(False)
    assert AdminOutcome.reject(RejectionReason.UNKNOWN_SA).message == "no SA with this identifier"


# ----------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    "call",
    [
        AdminCall(AdminOperation.LIST, query=SaQuery()),
        AdminCall(AdminOperation.LIST, query=SaQuery(peer=GW, live_only=False)),
        AdminCall(
            AdminOperation.LIST,
            query=SaQuery(peer="C a&b=c/d?", state=SaState.REMOVED, live_only=False),
        ),
        AdminCall(AdminOperation.SHOW, sa_id=ID1),
        AdminCall(AdminOperation.UPDATE, sa_id=ID1),
        AdminCall(AdminOperation.REMOVE, sa_id=ID2),
        AdminCall(AdminOperation.REMOVE_PEER, peer="/mn-cse-123456/CAE1 &x"),
    ],
)
def test_call_target_and_parse_request_agree(call: AdminCall) -> None:
    method, target = call_target(call)
    assert parse_request(method, target) == call


def test_routes() -> None:
    hex1 = ID1.hex()
    assert parse_request("GET", "/sa") == AdminCall(AdminOperation.LIST, query=SaQuery())
    assert parse_request("GET", "/sa?state=all").query == SaQuery(live_only=False)
    assert parse_request("get", f"/sa/{hex1.upper()}") == AdminCall(AdminOperation.SHOW, sa_id=ID1)
    assert parse_request("POST", f"/sa/{hex1}/update", b"{}").operation is AdminOperation.UPDATE
    assert parse_request("DELETE", f"/sa/{hex1}").operation is AdminOperation.REMOVE
    assert parse_request("DELETE", "/sa?peer=%2Fmn-cse-1").peer == "/mn-cse-1"


@pytest.mark.parametrize(
    ("method", "target", "body", "status", "message"),
    [
        ("GET", "/sa/0g", b"", 400, "not hexadecimal"),
        ("GET", "/sa/abc", b"", 400, "not hexadecimal"),
        ("GET", "/sa/" + "00" * 65, b"", 400, "1 to 64 octets"),
        ("GET", "/sa/", b"", 400, "1 to 64 octets"),
        ("GET", "/", b"", 404, "under /sa"),
        ("GET", "/sas", b"", 404, "under /sa"),
        ("GET", "/sa/00/x/y", b"", 404, "under /sa"),
        ("GET", "/sa/00/rekey", b"", 404, "only /update"),
        ("PUT", "/sa", b"", 405, "PUT is not allowed on /sa"),
        ("POST", "/sa/00", b"", 405, "not allowed on an SA"),
        ("GET", "/sa/00/update", b"", 405, "not allowed on /update"),
        ("DELETE", "/sa", b"", 400, "give ?peer=ID"),
        ("DELETE", "/sa?peer=", b"", 400, "give ?peer=ID"),
        ("DELETE", "/sa?peer=a&state=all", b"", 400, "unknown query parameter 'state'"),
        ("GET", "/sa?who=me", b"", 400, "unknown query parameter 'who'"),
        ("GET", "/sa?peer=a&peer=b", b"", 400, "more than once"),
        ("GET", "/sa?state=dead", b"", 400, "unknown state 'dead'"),
        ("GET", "/sa?peer=", b"", 400, "non-empty"),
        ("GET", "/sa?peer", b"", 400, "malformed query"),
        ("GET", "/sa?peer=%FF", b"", 400, "malformed query"),
        ("GET", "/sa?%zz=1&&", b"", 400, "malformed query"),
        ("GET", "/sa/00?x=1", b"", 400, "takes no query"),
        ("GET", "/sa", b"x", 400, "takes no body"),
        ("POST", "/sa/00/update", b'{"force":true}', 400, "takes no parameters"),
        ("GET", "http://evil/sa", b"", 400, "must be a path"),
    ],
)
def test_bad_requests(method: str, target: str, body: bytes, status: int, message: str) -> None:
    with pytest.raises(AdminError, match=re.escape(message)) as caught:
        parse_request(method, target, body)
    assert caught.value.status == status
    if status == 405:
        assert caught.value.allow


def test_sa_query_values() -> None:
    assert sa_query() == SaQuery()
    assert sa_query("x", "removed") == SaQuery("x", SaState.REMOVED, live_only=False)
    with pytest.raises(ValueError, match="one of: live, all, establishing"):
        sa_query(state="gone")
    removed = _record(ID1, AE1, state=SaState.REMOVED)
    assert not SaQuery().matches(removed) and SaQuery(live_only=False).matches(removed)
    assert not SaQuery(peer="other").matches(_record(ID1, AE1))


# ----------------------------------------------------------------------------- answers


async def test_handle_request_answers_every_route() -> None:
    fake = _fake()
    listed = await handle_request(fake, "GET", "/sa", b"")
    assert listed.status == 200 and ("Content-Type", "application/json") in listed.headers
    assert [r.sa_id for r in read_list(listed.status, listed.body)] == [ID1, ID2]
    everything = await handle_request(fake, "GET", f"/sa?state=all&peer={AE1}", b"")
    assert [r.sa_id for r in read_list(everything.status, everything.body)] == [ID1, ID3]

    shown = await handle_request(fake, "GET", f"/sa/{ID1.hex()}", b"")
    detail = read_detail(shown.status, shown.body)
    assert detail is not None and detail.record == fake.records[ID1]
    unknown = await handle_request(fake, "GET", "/sa/" + "ff" * 16, b"")
    assert unknown.status == 404 and json.loads(unknown.body)["reason"] == "unknown-sa"
    assert read_detail(unknown.status, unknown.body) is None

    updated = await handle_request(fake, "POST", f"/sa/{ID1.hex()}/update", b"")
    outcome = read_outcome(updated.status, updated.body)
    assert outcome.accepted and outcome.records[0].state is SaState.UPDATING
    assert outcome.message == "the session is being ended gracefully"

    not_live = await handle_request(fake, "DELETE", f"/sa/{ID3.hex()}", b"")
    assert not_live.status == 409
    refused = read_outcome(not_live.status, not_live.body)
    assert refused.reason is RejectionReason.NOT_LIVE and "removed" in refused.message

    removed = await handle_request(fake, "DELETE", f"/sa?peer={AE1}", b"")
    assert [r.sa_id for r in read_outcome(removed.status, removed.body).records] == [ID1]
    assert fake.records[ID1].state is SaState.REMOVED
    again = await handle_request(fake, "DELETE", f"/sa?peer={AE1}", b"")
    assert again.status == 404
    assert read_outcome(again.status, again.body).reason is RejectionReason.UNKNOWN_PEER


async def test_handle_request_refuses_before_calling_the_admin() -> None:
    fake = _fake()
    bad = await handle_request(fake, "PATCH", "/sa", b"")
    assert bad.status == 405 and ("Allow", "GET, DELETE") in bad.headers
    assert json.loads(bad.body) == {"error": "PATCH is not allowed on /sa"}
    assert fake.calls == []


def test_readers_refuse_answers_outside_the_api() -> None:
    with pytest.raises(AdminProtocolError, match="not a JSON answer"):
        read_list(200, b"<html>")
    with pytest.raises(AdminProtocolError, match="400: bad"):
        read_list(400, b'{"error": "bad"}')
    with pytest.raises(AdminProtocolError, match="'sas' array"):
        read_list(200, b'{"sas": 1}')
    with pytest.raises(AdminProtocolError, match="500"):
        read_outcome(500, b'{"error": "internal"}')
    with pytest.raises(AdminProtocolError, match="no 'sa_id'"):
        read_detail(200, b'{"sa": {}}')


# ----------------------------------------------------------------------------- the socket


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private folder: a Unix socket path holds at most 107 octets."""
    path = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def _serving(admin: FakeSaAdmin, path: Path) -> AsyncIterator[AdminServer]:
    async with AdminServer(admin, path) as server:
        yield server


async def test_socket_is_0600_even_under_a_permissive_umask(sock_dir: Path) -> None:
    path = sock_dir / "admin.sock"
    old = os.umask(0)
    try:
        server = AdminServer(_fake(), path)
        await server.start()
    finally:
        os.umask(old)
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock_dir / "admin.sock.lock").st_mode) == 0o600
        async with AdminClient(path) as client:
            assert [r.sa_id for r in await client.list(SaQuery())] == [ID1, ID2]
    finally:
        await server.close()
    assert not path.exists()  # the server removes its own socket


async def test_missing_folder_is_created_private(sock_dir: Path) -> None:
    path = sock_dir / "run" / "admin.sock"
    async with _serving(_fake(), path):
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
async def test_group_or_world_writable_folder_refused(sock_dir: Path, mode: int) -> None:
    folder = sock_dir / "shared"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(ConfigurationError, match="writable by group or others"):
        await AdminServer(_fake(), folder / "admin.sock").start()
    assert not (folder / "admin.sock").exists()


async def test_path_that_is_not_a_socket_is_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "admin.sock"
    path.write_text("operator's notes")
    with pytest.raises(ConfigurationError, match="not a socket: refusing to replace it"):
        await AdminServer(_fake(), path).start()
    assert path.read_text() == "operator's notes"
    link = sock_dir / "link.sock"
    link.symlink_to(path)
    with pytest.raises(ConfigurationError, match="not a socket"):
        await AdminServer(_fake(), link).start()


async def test_too_long_a_path_refused_with_reason(sock_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="at most 107"):
        await AdminServer(_fake(), sock_dir / ("s" * 120)).start()


async def test_stale_socket_replaced(sock_dir: Path) -> None:
    path = sock_dir / "admin.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a killed server's socket: the file stays, nobody listens
    dead.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    async with _serving(_fake(), path), AdminClient(path) as client:
        assert await client.show(ID1) is not None
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600


async def test_second_admin_server_on_a_live_socket_refused(sock_dir: Path) -> None:
    path = sock_dir / "admin.sock"
    async with _serving(_fake(), path):
        second = AdminServer(FakeSaAdmin(), path)
        with pytest.raises(OSError) as caught:
            await second.start()
        assert caught.value.errno == errno.EADDRINUSE
        # The first one still serves, on its own socket.
        async with AdminClient(path) as client:
            assert len(await client.list(SaQuery())) == 2


async def test_socket_of_another_program_is_not_taken_over(sock_dir: Path) -> None:
    path = sock_dir / "admin.sock"
    other = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(path))
    try:
        with pytest.raises(OSError, match="already answers") as caught:
            await AdminServer(_fake(), path).start()
        assert caught.value.errno == errno.EADDRINUSE
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        other.close()
        await other.wait_closed()


async def test_client_round_trip_over_the_socket(sock_dir: Path) -> None:
    path = sock_dir / "admin.sock"
    fake = _fake()
    async with _serving(fake, path) as server, AdminClient(path) as client:
        assert [r.sa_id for r in await client.list(SaQuery(peer=LONG_PEER))] == [ID2]
        detail = await client.show(ID1)
        assert detail is not None and detail.record == fake.records[ID1]
        assert await client.show(SaId(b"\xff" * 16)) is None
        assert (await client.update(ID1)).records[0].state is SaState.UPDATING
        assert (await client.remove(ID2)).accepted
        assert (await client.remove(ID2)).reason is RejectionReason.NOT_LIVE
        assert (await client.remove_peer("nobody")).reason is RejectionReason.UNKNOWN_PEER
        assert server.stats.requests == 7  # one kept-alive connection carried them all


async def test_raw_http_refusals_are_json(sock_dir: Path) -> None:
    path = sock_dir / "admin.sock"
    async with _serving(_fake(), path) as server:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert json.loads(await reader.readexactly(length))["error"].startswith("no such resource")
        writer.write(b"\x00\x01 garbage\r\n\r\n")
        answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 400 ") and b'{"error":"malformed HTTP' in answer
        writer.close()
        assert server.stats.bad_requests == 1


async def test_process_of_another_user_gets_no_answer(sock_dir: Path) -> None:
    """SO_PEERCRED: our own uid is allowed; with it taken off the list, we are refused."""
    path = sock_dir / "admin.sock"
    async with _serving(_fake(), path) as server:
        server._allowed = frozenset({os.getuid() + 4242})  # as if we were another user
        async with AdminClient(path, timeout=5) as client:
            with pytest.raises(AdminUnavailable, match="closed the connection"):
                await client.list(SaQuery())
        assert server.stats.refused_peers == 1 and server.stats.requests == 0


async def test_client_says_what_to_check_when_no_socket(sock_dir: Path) -> None:
    async with AdminClient(sock_dir / "admin.sock") as client:
        with pytest.raises(AdminUnavailable, match="is the gateway running with an admin socket"):
            await client.list(SaQuery())
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_dir / "stale.sock"))
    dead.close()
    async with AdminClient(sock_dir / "stale.sock") as client:
        with pytest.raises(AdminUnavailable, match="stale socket"):
            await client.remove(ID1)


# ----------------------------------------------------------------------------- the CLI


class ServerThread:
    """An AdminServer on its own event loop in a thread, for the synchronous CLI runner."""

    def __init__(self, admin: FakeSaAdmin, path: Path) -> None:
        self.admin = admin
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.server = AdminServer(admin, path)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def served(sock_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(_fake(), sock_dir / "admin.sock") as thread:
        yield thread


def _sa(served: ServerThread | Path, *args: str) -> tuple[int, str, str]:
    path = served.path if isinstance(served, ServerThread) else served
    result = CliRunner().invoke(app, ["sa", *args, "--admin-socket", str(path)])
    return result.exit_code, result.stdout, result.stderr


def test_cli_list_table_keeps_every_cell_whole(served: ServerThread) -> None:
    code, out, err = _sa(served, "list")
    assert code == 0, err
    assert ID1.hex() in out and ID2.hex() in out and ID3.hex() not in out  # live only
    assert LONG_PEER in out  # 151 characters, not cut to a terminal's width
    assert "…" not in out
    assert "provisioned-psk" in out and "2026-03-01T12:00:00Z" in out


def test_cli_list_json_lines_round_trip(served: ServerThread) -> None:
    code, out, _ = _sa(served, "list", "--state", "all", "--json")
    assert code == 0
    records = [record_from_json(json.loads(line)) for line in out.splitlines()]
    assert records == list(served.admin.records.values())


def test_cli_list_filters(served: ServerThread) -> None:
    code, out, _ = _sa(served, "list", "--peer", AE1, "--state", "removed", "--json")
    assert code == 0 and [json.loads(x)["sa_id"] for x in out.splitlines()] == [ID3.hex()]
    code, out, _ = _sa(served, "list", "--peer", "nobody")
    assert code == 0 and "no live SAs of peer nobody" in out
    code, _, err = _sa(served, "list", "--state", "dead")
    assert code == 2 and "unknown state 'dead'" in err


def test_cli_show(served: ServerThread) -> None:
    code, out, err = _sa(served, "show", ID1.hex())
    assert code == 0, err
    for text in (ID1.hex(), "established (live)", "0123456789abcdef", "127.0.0.1:50001"):
        assert text in out
    assert "History" in out
    code, out, _ = _sa(served, "show", ID1.hex().upper(), "--json")
    assert code == 0 and detail_from_json(json.loads(out)).record == served.admin.records[ID1]
    code, _, err = _sa(served, "show", "ff" * 16)
    assert code == 1 and f"no SA {'ff' * 16}" in err
    code, _, err = _sa(served, "show", "not-hex")
    assert code == 2 and "not hexadecimal" in err
    assert served.admin.calls == ["show", "show", "show"]  # the malformed id never left


def test_cli_update(served: ServerThread) -> None:
    code, out, err = _sa(served, "update", ID1.hex())
    assert code == 0, err
    assert f"update requested for SA {ID1.hex()}" in out
    assert served.admin.records[ID1].state is SaState.UPDATING
    code, _, err = _sa(served, "update", ID3.hex())
    assert code == 1 and "(not-live)" in err


def test_cli_remove_one_and_by_peer(served: ServerThread) -> None:
    code, out, err = _sa(served, "remove", ID2.hex())
    assert code == 0, err
    assert f"removed SA {ID2.hex()}" in out
    assert served.admin.records[ID2].state is SaState.REMOVED
    code, out, _ = _sa(served, "remove", "--peer", AE1)
    assert code == 0 and "removed 1 SA of peer" in out and ID1.hex() in out
    code, _, err = _sa(served, "remove", "--peer", AE1)
    assert code == 1 and "no live SA with this peer (unknown-peer)" in err
    code, _, err = _sa(served, "remove", ID1.hex(), "--peer", AE1)
    assert code == 2 and "one of them" in err
    code, _, err = _sa(served, "remove")
    assert code == 2 and "one of them" in err


def test_cli_uses_the_default_socket_path(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(sock_dir / "home"))
    (sock_dir / "home").mkdir(mode=0o700)
    assert default_admin_socket() == sock_dir / "home" / "admin.sock"
    with ServerThread(_fake(), default_admin_socket()):
        result = CliRunner().invoke(app, ["sa", "list", "--json"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2


def test_cli_without_a_gateway_says_what_to_check(sock_dir: Path) -> None:
    """Through the installed command line, as an operator types it."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env["M2MSEC_HOME"] = str(sock_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "m2msec.cli", "sa", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"no admin socket at {sock_dir / 'admin.sock'}" in proc.stderr
    assert "is the gateway running with an admin socket?" in proc.stderr
    assert "Traceback" not in proc.stderr


class BrokenSaAdmin(FakeSaAdmin):
    async def list(self, query: SaQuery) -> Sequence[SaRecord]:
        raise RuntimeError("secret-looking internals")


async def test_a_failing_admin_is_answered_500_and_the_server_keeps_serving(sock_dir: Path) -> None:
    path = sock_dir / "admin.sock"
    async with _serving(BrokenSaAdmin([_record(ID1, AE1)]), path):
        async with AdminClient(path) as client:
            with pytest.raises(AdminProtocolError, match="answered 500") as caught:
                await client.list(SaQuery())
            assert "secret-looking" not in str(caught.value)
        async with AdminClient(path) as client:  # a new connection is served as before
            assert await client.show(ID1) is not None
