"""``m2msec mef`` store commands (cli/mef_admin.py) through the shipped CLI, on SQLite and
PostgreSQL (tests/pg.py): Enrolees, targets, enrolments, audit, bulk import; exit codes
0/1/2; no key in any output.

Enrolments are made by the real sans-IO :class:`~m2msec.mef.service.MefService` on the
same store; its 48-octet export stands in for the TLS exporter of a bootstrap handshake,
as no MEF server is in this change (the server's tests run real handshakes).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from m2msec.bindings.messages import OneM2MRequest
from m2msec.keyids import KeId
from m2msec.mef.records import Bootstrap, Enrolee, EnrolmentTarget
from m2msec.mef.service import EnroleeIdentity, MefPolicy, MefService
from m2msec.mef.store import MefStore
from m2msec.mef.wire import fetch_path
from tests.pg import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

KPM = "00112233445566778899aabbccddeeff"
KPM2 = "8899aabbccddeeff0011223344556677a1"
EXPORT = bytes(range(48))  # RelativeKeID = octets 0-15, Ke = octets 16-47
KE_HEX = EXPORT[16:].hex()
KE_ID = f"{EXPORT[:16].hex()}@mef.example.com"
SECRETS = (KPM, KPM2, KE_HEX)

def _jsonl(text: str) -> list[Any]:
    """The rows of a ``--json`` listing: one JSON object per line (JSON lines)."""
    return [json.loads(line) for line in text.splitlines()]



@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # no truncated table cells


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "mef.db")


class Mef:
    """``m2msec mef ... --store S`` through CliRunner; every output is checked for keys."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.runner = CliRunner()

    def __call__(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        from m2msec.cli.main import app

        result = self.runner.invoke(app, ["mef", *args, "--store", self.store], input=stdin)
        for secret in SECRETS:
            assert secret not in (result.stdout + result.stderr).lower(), args
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def mef(store: str) -> Mef:
    return Mef(store)


def key_file(tmp_path: Path, hex_key: str, mode: int = 0o600) -> str:
    path = tmp_path / f"kpm-{mode:o}.hex"
    path.write_text(hex_key + "\n")
    path.chmod(mode)
    return str(path)


def add_gateway_device(mef: Mef, tmp_path: Path, kpm_id: str = "device-1") -> None:
    code, _, err = mef(
        "add-enrolee",
        kpm_id,
        "--key-file",
        key_file(tmp_path, KPM),
        "--enrolee-id",
        "/mn-cse-123456/Cdevice-1",
        "--enrolee-b",
        "/mn-cse-123456",
    )
    assert code == 0, err
    assert "warning" not in err  # 0600


def test_enrolees(mef: Mef, tmp_path: Path) -> None:
    add_gateway_device(mef, tmp_path)
    code, out, err = mef(
        "add-enrolee",
        "device-2",
        "--key",
        "-",
        "--enrolee-id",
        "Cdevice-2",
        "--maf-id",
        "maf.provider.com",
        "--lifetime",
        "12h",
        stdin=KPM2 + "\n",
    )
    assert code == 0, err
    assert "added Enrolee psk:device-2 (17-octet Kpm, Enrolee-ID Cdevice-2" in out
    assert "target maf:maf.provider.com, lifetime 12h" in out
    # A certificate Enrolee, named in canonical form; an AE as Enrolee B with its NAF FQDN.
    code, out, err = mef(
        "add-enrolee",
        "--cert-identity",
        "//sp.example.com/mn-cse-9/Cdevice-3",
        "--enrolee-id",
        "/mn-cse-9/Cdevice-3",
        "--enrolee-b",
        "/mn-cse-9/Clight-AE1",
        "--naf-fqdn",
        "light.example.com",
    )
    assert code == 0, err
    assert "added Enrolee cert:/mn-cse-9/Cdevice-3 (certificate" in out
    # A key file others may read is used, with a warning.
    code, out, err = mef(
        "add-enrolee",
        "device-4",
        "--key-file",
        key_file(tmp_path, KPM, 0o644),
        "--enrolee-id",
        "/mn-cse-123456/Cdevice-4",
        "--enrolee-b",
        "/mn-cse-123456",
    )
    assert code == 0 and "readable by others (mode 0644)" in err

    code, out, _ = mef("list-enrolees")
    assert code == 0
    for text in (
        "device-1",
        "device-2",
        "/mn-cse-9/Cdevice-3",
        "enrolee-b:/mn-cse-123456",
        "maf:maf.provider.com",
        "(NAF light.example.com)",
        "30d",
        "12h",
        "4 Enrolee(s)",
    ):
        assert text in out
    code, out, _ = mef("list-enrolees", "--json")
    listed = _jsonl(out)
    assert [e["bootstrapId"] for e in listed] == [
        "/mn-cse-9/Cdevice-3",
        "device-1",
        "device-2",
        "device-4",
    ]
    assert listed[1]["target"] == {"kind": "enrolee-b", "id": "/mn-cse-123456"}
    assert listed[2]["lifetime"] == 12 * 3600 and "kpm" not in json.dumps(listed).lower()

    # The store refuses (1): a duplicate; --replace overwrites.
    dup = ("device-1", "--key", "-", "--enrolee-id", "Cdevice-1", "--maf-id", "maf.provider.com")
    code, _, err = mef("add-enrolee", *dup, stdin=KPM)
    assert code == 1 and "configured already" in err
    code, _, err = mef("add-enrolee", *dup, "--replace", stdin=KPM)
    assert code == 0, err
    code, out, _ = mef("remove-enrolee", "device-1")
    assert code == 0 and "removed Enrolee psk:device-1 (0 enrolment(s) erased)" in out
    code, _, err = mef("remove-enrolee", "device-1")
    assert code == 1 and "no Enrolee psk:device-1" in err
    code, _, err = mef("remove-enrolee", "--cert-identity", "/mn-cse-9/Cdevice-3")
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bad kpm id", "--key", "-", "--maf-id", "maf.provider.com"), "invalid KpmID"),
        (("d", "--key", "-", "--maf-id", "maf.provider.com", "--enrolee-id", "b a d"), "invalid"),
        (("d", "--key", "-", "--enrolee-b", "/mn-cse-1/Cae"), "NAF FQDN"),
        (("d", "--key", "-", "--enrolee-b", "Cae"), "bare C-stem"),
        (("d", "--key", "-", "--maf-id", "maf.provider.com", "--lifetime", "30x"), "lifetime"),
        (("d", "--key", "-", "--maf-id", "maf.provider.com", "--lifetime", "0d"), "lifetime"),
        (("d", "--key", "-", "--maf-id", "maf.provider.com", "--lifetime", "99999d"), "3650d"),
        (("d", "--key", KPM, "--maf-id", "maf.provider.com"), "--key -"),
        (("d", "--maf-id", "maf.provider.com"), "--key-file and --key -"),
        (("d", "--key", "-", "--maf-id", "m.example.com", "--enrolee-b", "/c"), "exactly one"),
        (("d", "--key", "-"), "exactly one Enrolment Target"),
        (("d", "--key", "-", "--maf-id", "m.example.com", "--naf-fqdn", "n.example.com"), "NAF"),
        (("--key", "-", "--maf-id", "maf.provider.com"), "KPMID and --cert-identity"),
        (("--cert-identity", "/mn-cse-1", "--key", "-", "--maf-id", "m.example.com"), "no Kpm"),
    ],
)
def test_malformed_input_exits_2_and_writes_nothing(
    mef: Mef, args: tuple[str, ...], message: str
) -> None:
    if "--enrolee-id" not in args:
        args = (*args, "--enrolee-id", "/mn-cse-1/Cdevice-1")
    code, _, err = mef("add-enrolee", *args, stdin=KPM + "\n")
    assert code == 2, err
    assert message in err
    code, out, _ = mef("list-enrolees", "--json")
    assert code == 0 and _jsonl(out) == []


@pytest.mark.parametrize(
    ("stdin", "message"), [("xyz", "not hexadecimal"), ("00" * 8, "16 to 64 octets")]
)
def test_malformed_kpm_exits_2(mef: Mef, stdin: str, message: str) -> None:
    code, _, err = mef(
        "add-enrolee", "d", "--key", "-", "--enrolee-id", "Cd", "--maf-id", "m.example.com",
        stdin=stdin,
    )  # fmt: skip
    assert code == 2 and message in err


def test_targets(mef: Mef) -> None:
    code, out, err = mef("allow-target", "//sp.example.com/mn-cse-123456")
    assert code == 0 and "allowed target enrolee-b:/mn-cse-123456" in out, err
    code, out, _ = mef("allow-target", "/mn-cse-123456", "--kind", "enrolee-b")
    assert code == 0 and "already allowed: enrolee-b:/mn-cse-123456" in out
    code, out, _ = mef("allow-target", "MAF.provider.com")
    assert code == 0 and "allowed target maf:maf.provider.com" in out
    # A target needs no NAF FQDN to fetch (docs/readings.md A-27 is about configuring an Enrolee).
    code, _, err = mef("allow-target", "/mn-cse-1/Clight-AE1", "--naf-fqdn", "l.example.com")
    assert code == 0, err
    code, out, _ = mef("list-targets")
    assert "enrolee-b:/mn-cse-123456" in out and "maf:maf.provider.com" in out
    assert "enrolee-b:/mn-cse-1/Clight-AE1 (NAF l.example.com)" in out
    code, out, _ = mef("list-targets", "--json")
    assert {"kind": "maf", "id": "maf.provider.com"} in _jsonl(out)
    code, _, err = mef("allow-target", "maf.provider.com", "--kind", "hss")
    assert code == 2 and "maf or enrolee-b" in err
    code, _, err = mef("allow-target", "maf.provider.com", "--naf-fqdn", "n.example.com")
    assert code == 2 and "NAF FQDN" in err
    code, out, _ = mef("remove-target", "maf.provider.com", "--kind", "maf")
    assert code == 0 and "removed target maf:maf.provider.com" in out
    code, _, err = mef("remove-target", "maf.provider.com")
    assert code == 1 and "not an allowed target" in err


def request(method: str, target: str) -> OneM2MRequest:
    return OneM2MRequest(method, target, (), b"", None, "r-1", None, "application/json", None)


def enrol_and_fetch(store: str) -> None:
    """One enrolment of device-1 and two fetches (one refused) by the real MefService."""
    with MefStore(store) as st:
        mef = MefService(MefPolicy("mef.example.com"), st)
        who = EnroleeIdentity(Bootstrap.PSK, "device-1")
        assert mef.enrol(request("POST", "/mef/enrolment"), who, EXPORT).status == 201
        gateway = EnrolmentTarget.enrolee_b("/mn-cse-123456")
        path = fetch_path(KeId.parse(KE_ID), 22)
        assert mef.fetch_credentials(request("GET", path), gateway).status == 200
        other = EnrolmentTarget.maf("maf.provider.com")
        assert mef.fetch_credentials(request("GET", path), other).status == 403


def test_keys_and_audit(mef: Mef, tmp_path: Path) -> None:
    code, out, _ = mef("keys")
    assert code == 0 and "no enrolments in" in out
    add_gateway_device(mef, tmp_path)
    assert mef("allow-target", "/mn-cse-123456")[0] == 0
    enrol_and_fetch(mef.store)
    code, out, _ = mef("keys")
    assert code == 0
    for text in (KE_ID, "/mn-cse-123456/Cdevice-1", "psk:device-1", "enrolee-b:/mn-cse-123456"):
        assert text in out
    assert "live" in out and "1 enrolment(s), 1 live; showing 1" in out
    code, out, _ = mef("keys", "--json")
    [key] = _jsonl(out)
    assert key["keID"] == KE_ID and key["expired"] is False
    assert key["target"] == {"kind": "enrolee-b", "id": "/mn-cse-123456"}
    assert set(key) == {"keID", "bootstrap", "enroleeId", "target", "expires", "created", "expired"}

    code, out, _ = mef("audit")
    assert code == 0
    for text in ("enrolled", "credentials-fetched", "fetch-refused", "psk:device-1", "4103"):
        assert text in out
    code, out, _ = mef("audit", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["event"] for r in records] == ["enrolled", "credentials-fetched", "fetch-refused"]
    assert records[0]["keId"] == KE_ID and records[1]["suid"] == 22
    code, out, _ = mef("audit", "--json", "--after", str(records[0]["seq"]), "--limit", "1")
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["credentials-fetched"]
    code, out, _ = mef("audit", "--after", "99")
    assert "no audit records" in out
    # Removing the Enrolee erases its enrolment at once.
    code, out, _ = mef("remove-enrolee", "device-1")
    assert code == 0 and "(1 enrolment(s) erased)" in out
    assert _jsonl(mef("keys", "--json")[1]) == []


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("kpm_id,kpm,enrolee_id,maf_id,enrolee_b,naf_fqdn,lifetime\n" + "\n".join(rows))
    return path


def thousand_rows() -> list[str]:
    rows = []
    for n in range(1000):
        kpm = f"{n:032x}"
        if n % 2:
            rows.append(f"device-{n},{kpm},/mn-cse-1/Cdevice-{n},,/mn-cse-1,,30d")
        else:
            rows.append(f"device-{n},{kpm},Cdevice-{n},maf.provider.com,,,{n + 1}h")
    return rows


def test_import_1000_rows_with_progress(mef: Mef, tmp_path: Path) -> None:
    rows = thousand_rows()
    code, out, err = mef("import", str(write_csv(tmp_path / "enrolees.csv", rows)))
    assert code == 0, err
    assert "imported 1000 Enrolee(s)" in out
    assert "importing: 1000/1000 Enrolees" in err and "importing: 500/1000" in err
    for n in (0, 1, 999):
        assert f"{n:032x}" not in out + err
    listed = _jsonl(mef("list-enrolees", "--json")[1])
    assert len(listed) == 1000
    by_id = {e["bootstrapId"]: e for e in listed}
    assert by_id["device-0"]["target"] == {"kind": "maf", "id": "maf.provider.com"}
    assert by_id["device-0"]["lifetime"] == 3600
    assert by_id["device-999"]["enroleeId"] == "/mn-cse-1/Cdevice-999"
    with MefStore(mef.store) as st:  # the Kpm is sealed and opens
        got = st.get_enrolee(Bootstrap.PSK, "device-7")
        assert got is not None and got.kpm == bytes.fromhex(f"{7:032x}")
    # A small file: no progress.
    code, out, err = mef(
        "import", str(write_csv(tmp_path / "one.csv", [f"one,{KPM},Cone,m.example.com,,,"]))
    )
    assert code == 0 and err == "" and "imported 1 Enrolee(s)" in out


def test_import_bad_rows_write_nothing(mef: Mef, tmp_path: Path) -> None:
    rows = thousand_rows()
    rows[10] = f"device-10,{KPM}zz,Cdevice-10,maf.provider.com,,,"  # not hexadecimal
    rows[20] = f"device-20,{KPM},Cdevice-20,,/mn-cse-1/Cae,,"  # AE without NAF FQDN
    rows[30] = f"device-1,{KPM},Cdevice-30,maf.provider.com,,,"  # KpmID given twice
    rows[40] = f"device-40,{KPM},Cdevice-40,,,,"  # no target
    rows[50] = f"device-50,{KPM},Cdevice-50,maf.provider.com,,,1y"  # bad lifetime
    rows[60] = f"device-60,{KPM},b a d,maf.provider.com,,,"  # bad Enrolee-ID
    rows[70] = f"device-70,{KPM},Cdevice-70,maf.provider.com,,"  # a field short
    rows[80] = f"device-80,{KPM[:8]},Cdevice-80,maf.provider.com,,,"  # Kpm too short
    code, out, err = mef("import", str(write_csv(tmp_path / "bad.csv", rows)))
    assert code == 2
    assert "8 problem(s), nothing imported" in err
    for line, text in (
        (12, "not hexadecimal"),
        (22, "NAF FQDN"),
        (32, "already given at line 3"),
        (42, "exactly one Enrolment Target"),
        (52, "lifetime"),
        (62, "invalid"),
        (72, "6 fields, the header has 7"),
        (82, "16 to 64 octets"),
    ):
        assert f"line {line}: " in err and text in err, (line, text)
    assert KPM[:8] not in err
    assert _jsonl(mef("list-enrolees", "--json")[1]) == []
    # The store refuses a row (an Enrolee configured already): nothing of the file is written.
    add_gateway_device(mef, tmp_path, "device-999")
    code, _, err = mef("import", str(write_csv(tmp_path / "good.csv", thousand_rows())))
    assert code == 1 and "'psk:device-999' is configured already" in err
    assert len(_jsonl(mef("list-enrolees", "--json")[1])) == 1
    code, out, _ = mef("import", str(write_csv(tmp_path / "empty.csv", [])))
    assert code == 0 and "imported 0 Enrolee(s)" in out


def test_header_problems(mef: Mef, tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("kpm_id,kpm,colour\nd,00,red\n")
    code, _, err = mef("import", str(path))
    assert (
        code == 2 and "unknown column(s) 'colour'" in err and "missing column(s) enrolee_id" in err
    )


def test_real_process(tmp_path: Path) -> None:
    """``python -m m2msec.cli mef ...`` as an operator runs it: the key on stdin."""
    db = str(tmp_path / "mef.db")
    env = {**os.environ, "COLUMNS": "200"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    base = [sys.executable, "-m", "m2msec.cli", "mef"]
    args = ["add-enrolee", "device-1", "--key", "-", "--enrolee-id", "Cdevice-1"]
    added = subprocess.run(
        [*base, *args, "--maf-id", "maf.provider.com", "--store", db],
        input=KPM + "\n", capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added Enrolee psk:device-1" in added.stdout
    listed = subprocess.run(
        [*base, "list-enrolees", "--json", "--store", db],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert _jsonl(listed.stdout)[0]["bootstrapId"] == "device-1"
    for out in (added, listed):
        assert KPM not in out.stdout + out.stderr
    bad = subprocess.run(
        [*base, "remove-enrolee", "nobody", "--store", db],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "no Enrolee psk:nobody" in bad.stderr


@pytest.fixture
def pg_mef(pg_url: str) -> Iterator[Mef]:
    yield Mef(pg_url)


def test_postgresql(pg_mef: Mef, tmp_path: Path) -> None:
    add_gateway_device(pg_mef, tmp_path)
    assert pg_mef("allow-target", "/mn-cse-123456")[0] == 0
    enrol_and_fetch(pg_mef.store)
    code, out, _ = pg_mef("keys")
    assert code == 0 and KE_ID in out and "(schema m2msec_mef)" in out
    assert "postgres@" in out or "postgresql://" in out
    rows = [f"pg-{n},{n:032x},Cpg-{n},maf.provider.com,,,1d" for n in range(1000)]
    code, out, err = pg_mef("import", str(write_csv(tmp_path / "pg.csv", rows)))
    assert code == 0 and "imported 1000 Enrolee(s)" in out and "1000/1000" in err
    # The store refuses a row: the transaction rolls back, nothing of the file is written.
    both = write_csv(tmp_path / "pg2.csv", [f"new-1,{KPM},Cnew,m.example.com,,,", rows[5]])
    code, _, err = pg_mef("import", str(both))
    assert code == 1 and "'psk:pg-5' is configured already" in err
    assert len(_jsonl(pg_mef("list-enrolees", "--json")[1])) == 1001
    code, out, err = pg_mef("import", str(both), "--replace")
    assert code == 0 and "imported 2 Enrolee(s)" in out, err
    assert len(_jsonl(pg_mef("list-enrolees", "--json")[1])) == 1002
    audit = [json.loads(line) for line in pg_mef("audit", "--json")[1].splitlines()]
    assert [r["event"] for r in audit][:1] == ["enrolled"]


def test_wrong_kek_and_an_edited_row_exit_1(
    mef: Mef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_gateway_device(mef, tmp_path)
    assert mef("allow-target", "/mn-cse-123456")[0] == 0
    enrol_and_fetch(mef.store)
    # An enrolment edited without the KEK (a longer expiry) no longer opens: keys refuses it.
    with sqlite3.connect(mef.store) as db:
        db.execute("UPDATE enrolments SET expires_at = expires_at + 86400")
    code, _, err = mef("keys")
    assert code == 1 and "error:" in err
    monkeypatch.setenv("M2MSEC_KEK", "11" * 32)
    code, _, err = mef("list-enrolees")
    assert code == 1 and "wrong key-encryption key" in err


def test_add_enrolees_is_one_transaction(store: str) -> None:
    """MefStore.add_enrolees, under import: a refused row leaves nothing of the batch."""
    from datetime import timedelta

    from m2msec.errors import DuplicateCredentialError
    from m2msec.mef.importer import make_enrolee

    def one(n: int) -> Enrolee:
        return make_enrolee(
            kpm_id=f"d-{n}", kpm=bytes(16), enrolee_id=f"Cd{n}", maf_id="m.example.com",
            lifetime=timedelta(days=1),
        )  # fmt: skip

    with MefStore(store) as st:
        seen: list[int] = []
        assert st.add_enrolees([one(n) for n in range(1200)], progress=seen.append) == 1200
        assert seen == [500, 1000, 1200]
        with pytest.raises(DuplicateCredentialError, match="'psk:d-1100' is configured"):
            st.add_enrolees([one(n) for n in range(2000, 2600)] + [one(1100)])
        with pytest.raises(DuplicateCredentialError, match="two Enrolees of this batch"):
            st.add_enrolees([one(3000), one(3000)])
        assert len(st.list_enrolees()) == 1200
