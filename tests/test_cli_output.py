"""Machine-readable output of the list and show commands (issue 14 item 4, docs/cli.md
"Output"): ``--json`` writes JSON lines on every list; tables are never cut when stdout is
not a terminal; ``psk list`` pages with ``--limit/--after`` on SQLite and PostgreSQL and
streams a large table in bounded memory. All through the shipped CLI (CliRunner, or the
real ``m2msec`` process with its stdout a pipe into ``grep``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from m2msec.app_rules import app_rule
from m2msec.cli.main import app
from m2msec.gba.records import Guss
from m2msec.gba.subscribers import SubscriberStore
from m2msec.maf.store import MafStore, NewKey
from m2msec.store import PskEntry, open_store
from m2msec.store.app_rules import AppRuleStore
from tests.pg import pg_server, pg_url
from tests.test_mef_cli import KE_ID, Mef, add_gateway_device, enrol_and_fetch

__all__ = ["pg_server", "pg_url"]

SRC = Path(__file__).resolve().parents[1] / "src"
# A 128-octet KpsaId (TS-0003 10.5 allows up to 128 octets for a psk_identity).
LONG_ID = "AE" + "7" * 100 + "-Light@in.provider.co"
LONG_ID += "m" * (128 - len(LONG_ID))
LONG_ENTITY = "Clong-" + "e" * 60
KEY = bytes(range(16))
KM_ID = "ae1@maf.in.provider.com"
IN_CSE = "//in.provider.com/in-cse"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("M2MSEC_KEK", raising=False)
    monkeypatch.setenv("COLUMNS", "80")  # what a terminal-less run of rich would assume


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _jsonl(text: str) -> list[dict[str, Any]]:
    """Every line one JSON object (no other line at all)."""
    rows = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(row, dict) for row in rows)
    return rows


def _secrets_absent(text: str, *secrets: bytes) -> None:
    for secret in secrets:
        assert secret.hex() not in text.lower()


# ----------------------------------------------------------------------------- psk


def test_psk_list_json_and_plain_rows(tmp_path: Path) -> None:
    db = str(tmp_path / "psk.db")
    expired = datetime.now(UTC) - timedelta(days=1)
    with open_store(db) as st:
        st.add(PskEntry(LONG_ID, KEY, LONG_ENTITY))
        st.add(PskEntry("dev2@in.provider.com", KEY, None, expired))
    code, out, err = _cli("psk", "list", "--json", "--store", db)
    assert code == 0, err
    rows = _jsonl(out)
    assert [r["kpsaId"] for r in rows] == sorted([LONG_ID, "dev2@in.provider.com"])
    long_row = next(r for r in rows if r["kpsaId"] == LONG_ID)
    assert long_row == {"kpsaId": LONG_ID, "entityId": LONG_ENTITY, "expires": None,
                        "keyLength": 16}  # fmt: skip
    code, out, _ = _cli("psk", "list", "--store", db)
    # Not a terminal: every cell whole, one row a line, at COLUMNS=80 too.
    [line] = [line for line in out.splitlines() if LONG_ENTITY in line]
    assert LONG_ID in line and "16 octets" in line and "…" not in out
    assert "expired" in next(line for line in out.splitlines() if "dev2@" in line)
    _secrets_absent(out + err, KEY)


def test_psk_list_through_a_real_pipe(tmp_path: Path) -> None:
    """``m2msec psk list | grep ENTITY`` finds the 128-octet KpsaId's whole row."""
    db = str(tmp_path / "psk.db")
    with open_store(db) as st:
        st.add(PskEntry(LONG_ID, KEY, LONG_ENTITY))
        st.add_many(PskEntry(f"dev{i}@in.provider.com", KEY, f"Cdev{i}") for i in range(50))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("COLUMNS", None)
    command = f"{sys.executable} -m m2msec.cli psk list --store {db} | grep -- {LONG_ENTITY}"
    done = subprocess.run(command, shell=True, env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.split() == [LONG_ID, LONG_ENTITY, "-", "16", "octets"]
    command = f"{sys.executable} -m m2msec.cli psk list --json --store {db} | grep -- {LONG_ENTITY}"
    done = subprocess.run(command, shell=True, env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert json.loads(done.stdout)["kpsaId"] == LONG_ID


def _page_through(db: str, limit: int, start: str | None = None) -> tuple[list[str], int]:
    """Every KpsaId after ``start`` by pages of ``limit`` rows, following the stderr hint."""
    seen: list[str] = []
    after: tuple[str, ...] = () if start is None else ("--after", start)
    pages = 0
    while pages < 1000:
        code, out, err = _cli("psk", "list", "--json", "--limit", str(limit), *after,
                              "--store", db)  # fmt: skip
        assert code == 0, err
        page = [r["kpsaId"] for r in _jsonl(out)]
        if not page:
            return seen, pages
        pages += 1
        assert len(page) <= limit
        seen += page
        if len(page) < limit:
            assert "next page" not in err
            return seen, pages
        assert err.strip() == f"next page: --after {page[-1]}"
        after = ("--after", page[-1])
    raise AssertionError("paging does not end")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_psk_list_pages_with_limit_and_after(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = str(tmp_path / "psk.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    ids = [f"dev{i:05d}@in.provider.com" for i in range(2345)]
    with open_store(db) as st:
        st.add_many(PskEntry(kid, KEY, None) for kid in reversed(ids))
        # The store's own pages: keyset paging, disjoint and in order.
        assert [i.kpsa_id for i in st.list(limit=3)] == ids[:3]
        assert [i.kpsa_id for i in st.list(after=ids[999], limit=2)] == ids[1000:1002]
        assert [i.kpsa_id for i in st.list(after=ids[-1])] == []
        assert len(list(st.list(after=ids[10]))) == len(ids) - 11
    seen, pages = _page_through(db, 1000)
    assert seen == ids and pages == 3
    seen, pages = _page_through(db, 7, ids[-20])
    assert seen == ids[-19:] and pages == 3
    code, out, _ = _cli("psk", "list", "--limit", "2", "--store", db)
    assert code == 0 and ids[0] in out and ids[1] in out and ids[2] not in out
    code, _, err = _cli("psk", "list", "--limit", "-1", "--store", db)
    assert code == 2 and "--limit" in err


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("big")
    os.environ["M2MSEC_HOME"] = str(home / "home")
    try:
        db = str(home / "psk.db")
        with open_store(db) as st:
            st.add_many(
                PskEntry(f"AE{i:012d}-Light@in.provider.com", KEY, f"Clight-AE{i}")
                for i in range(200_000)
            )
        yield db
    finally:
        del os.environ["M2MSEC_HOME"]


def _peak_listing(db: str, home: str, *args: str) -> int:
    """Peak Python memory of ``psk list ARGS`` writing to /dev/null (tracemalloc)."""
    command = typer.main.get_command(app)
    saved = sys.stdout, os.environ.get("M2MSEC_HOME")
    os.environ["M2MSEC_HOME"] = home
    with open(os.devnull, "w") as sink:
        sys.stdout = sink
        tracemalloc.start()
        try:
            command.main(["psk", "list", *args, "--store", db], standalone_mode=False)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            sys.stdout = saved[0]


@pytest.mark.parametrize("mode", [("--json",), ()], ids=["json", "table"])
def test_psk_list_streams_200k_rows_in_bounded_memory(
    big_store: str, mode: tuple[str, ...]
) -> None:
    """200,000 rows (some 20 MB of output) list with the memory of 20,000: the listing
    holds one page, never the table."""
    home = str(Path(big_store).parent / "home")
    small = _peak_listing(big_store, home, *mode, "--limit", "20000")
    full = _peak_listing(big_store, home, *mode)
    assert full < 16 * 2**20, full
    assert full < small * 1.5 + 2**20, (small, full)


# ----------------------------------------------------------------------------- the others


def test_maf_lists_json(tmp_path: Path) -> None:
    db = str(tmp_path / "maf.db")
    km = bytes(range(32))
    kc = bytes(range(32, 64))
    with MafStore(db) as st:
        st.add_client(KM_ID, km, "/mn-cse-1/Cae1")
        st.add_entity_b(IN_CSE)
        st.register_key(NewKey(b"\x01" * 16, kc, datetime.now(UTC) + timedelta(hours=1),
                               KM_ID, 32, (IN_CSE,), "admin.example"))  # fmt: skip
        with st.writer() as w:
            w.append_audit([{"time": "2026-01-01T00:00:00Z", "event": "key-issued",
                             "kmId": KM_ID, "target": IN_CSE}])  # fmt: skip
    outputs = []
    code, out, _ = _cli("maf", "list-clients", "--json", "--store", db)
    [client] = _jsonl(out)
    assert client["kmId"] == KM_ID and client["entityId"] == "/mn-cse-1/Cae1"
    assert client["keyLength"] == 32 and client["enabled"] is True
    outputs.append(out)
    code, out, _ = _cli("maf", "list-entity-b", "--json", "--store", db)
    assert _jsonl(out) == [{"entityId": IN_CSE}]
    code, out, _ = _cli("maf", "keys", "--json", "--store", db)
    [key] = _jsonl(out)
    assert key["relativeKeyId"] == "01" * 16 and key["state"] == "live"
    assert key["targetIds"] == [IN_CSE] and key["suid"] == 32
    outputs.append(out)
    code, out, _ = _cli("maf", "audit", "--json", "--store", db)
    [record] = _jsonl(out)
    assert record["seq"] >= 1 and record["event"] == "key-issued"
    code, table, _ = _cli("maf", "audit", "--store", db)
    assert code == 0 and "key-issued" in table and IN_CSE in table and "seq" in table
    for listing in ("list-clients", "keys"):
        code, plain, _ = _cli("maf", listing, "--store", db)
        assert code == 0 and "…" not in plain
        outputs.append(plain)
    _secrets_absent("".join(outputs), km, kc)
    # Empty lists: no line at all in JSON.
    assert _cli("maf", "keys", "--json", "--km-id", "x@y.com", "--store", db)[1] == ""


def test_bsf_list_json(tmp_path: Path) -> None:
    db = str(tmp_path / "bsf.db")
    k, opc = bytes(range(16)), bytes(range(16, 32))
    with SubscriberStore(db) as st:
        guss = Guss.allowing({"naf.example.com": {"aeId": "/mn-cse/Cdev"}})
        st.add_subscriber("dev1@ims.example.com", k=k, opc=opc, guss=guss)
    code, out, err = _cli("bsf", "list", "--json", "--store", db)
    assert code == 0, err
    [sub] = _jsonl(out)
    assert sub["impi"] == "dev1@ims.example.com" and sub["sqn"] == "000000000000"
    assert sub["nafs"] == {"naf.example.com": {"aeId": "/mn-cse/Cdev"}}
    code, plain, _ = _cli("bsf", "list", "--store", db)
    [row] = [line for line in plain.splitlines() if "dev1@" in line]
    assert "naf.example.com" in row
    _secrets_absent(out + plain, k, opc)


def test_mef_lists_json(tmp_path: Path) -> None:
    store = str(tmp_path / "mef.db")
    mef = Mef(store)  # checks every output for the keys
    add_gateway_device(mef, tmp_path)
    assert mef("allow-target", "/mn-cse-123456")[0] == 0
    enrol_and_fetch(store)
    [enrolee] = _jsonl(mef("list-enrolees", "--json")[1])
    assert enrolee["bootstrapId"] == "device-1"
    assert {"kind": "enrolee-b", "id": "/mn-cse-123456"} in _jsonl(mef("list-targets", "--json")[1])
    [key] = _jsonl(mef("keys", "--json")[1])
    assert key["keID"] == KE_ID
    events = [r["event"] for r in _jsonl(mef("audit", "--json")[1])]
    assert events == ["enrolled", "credentials-fetched", "fetch-refused"]
    plain = mef("keys")[1]
    assert KE_ID in next(line for line in plain.splitlines() if "/mn-cse-123456/Cdevice-1" in line)


def test_gateway_rule_list_json(tmp_path: Path) -> None:
    db = str(tmp_path / "gw.db")
    with open_store(db) as st, AppRuleStore(st.database) as rules:
        rules.add(app_rule(["12-*@in.provider.com"], ["C*"], (), where="rule"), "lights")
    code, out, err = _cli("gateway", "rule", "list", "--json", "--store", db)
    assert code == 0, err
    [rule] = _jsonl(out)
    assert rule["source"] == "store" and rule["name"] == "lights" and rule["id"] == 1
    assert rule["allowed_aes"] == ["C*"] and rule["credentials"] == ["12-*@in.provider.com"]


def test_every_list_and_show_command_has_json() -> None:
    """No list or show command without --json (those to come included)."""
    root = typer.main.get_command(app)
    missing = []

    def walk(group: Any, path: tuple[str, ...]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            if hasattr(command, "commands"):
                walk(command, (*path, name))
            elif name.startswith(("list", "show")) or name in ("keys", "audit"):
                options = {o for p in command.params for o in p.opts}
                missing.extend([] if "--json" in options else [" ".join((*path, name))])

    walk(root, ())
    assert missing == []


def test_gateway_serve_help_lists_every_listener_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gateway serve --help`` names each scheme the listener parser accepts, probed by
    parsing a URL of every scheme we might have (a new scheme without help fails here)."""
    import inspect

    from m2msec.config.listeners import FRAMEWORKS, parse_listen_url
    from m2msec.errors import ConfigurationError

    options = {"egress": True} if "egress" in inspect.signature(parse_listen_url).parameters else {}
    accepted = []
    for scheme in ("tls", "dtls", "http", "https", "coap", "coaps", "udp", "tcp", "egress"):
        try:
            parse_listen_url(f"{scheme}://127.0.0.1:8443", **options)
        except ConfigurationError:
            continue
        accepted.append(scheme)
    assert {"tls", "dtls", "http"} <= set(accepted)
    monkeypatch.setenv("COLUMNS", "400")  # each option's help on one line
    code, out, _ = _cli("gateway", "serve", "--help")
    [text] = [line for line in out.splitlines() if "--listen" in line]
    assert code == 0
    for scheme in accepted:
        assert f"{scheme}://" in text, scheme
    assert f"?framework={'|'.join(FRAMEWORKS)}" in text
