"""``m2msec psk``: add, list, remove, import on a real store; keys never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.cli.psk import app
from m2msec.store import PskEntry, SqlitePskStore

AE1_ID = "AE123456789012-Light@in.provider.com"
AE1_KEY = "1a2b3c4d5e6f7a8b"
AE2_ID = "AE123456789015-Light@in.provider.com"
AE2_KEY = "12345678abcdefab"


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("M2MSEC_KEK", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # no truncated table cells


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "psk.db"


def _run(runner: CliRunner, db: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--store", str(db)], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def _add_tr0038(runner: CliRunner, db: Path) -> None:
    code, out, err = _run(runner, db, "add", AE1_ID, "--key", AE1_KEY, "--entity-id", "Clight-AE1")
    assert code == 0, err
    assert f"added {AE1_ID}" in out
    assert "shorter than 16 octets" in err  # TR-0038's 8-octet keys: accepted, with a warning
    # The key from standard input keeps it out of `ps`.
    code, out, err = _run(
        runner, db, "add", AE2_ID, "--key", "-", "--entity-id", "Clight-AE2",
        "--expires", "2030-01-01T00:00:00Z", stdin=AE2_KEY.upper() + "\n",
    )  # fmt: skip
    assert code == 0, err


def _no_key_in(text: str) -> None:
    for key in (AE1_KEY, AE2_KEY):
        assert key not in text.lower()


def test_add_and_list_tr0038(runner: CliRunner, db: Path) -> None:
    _add_tr0038(runner, db)
    code, out, err = _run(runner, db, "list")
    assert code == 0, err
    for expected in (
        AE1_ID,
        AE2_ID,
        "Clight-AE1",
        "Clight-AE2",
        "8 octets",
        "2030-01-01T00:00:00Z",
    ):
        assert expected in out
    _no_key_in(out + err)
    with SqlitePskStore(db) as store:
        got = store.get(AE2_ID)
    assert got is not None and got.kpsa == bytes.fromhex(AE2_KEY)
    assert got.entity_id == "Clight-AE2"


def test_default_store_is_under_m2msec_home(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["add", AE1_ID, "--key", AE1_KEY * 2])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "home" / "m2msec.db").exists()
    result = runner.invoke(app, ["list"])
    assert AE1_ID in result.stdout
    assert str(tmp_path / "home" / "m2msec.db") in result.stdout


def test_duplicate_add_is_a_one_line_error(runner: CliRunner, db: Path) -> None:
    _add_tr0038(runner, db)
    code, out, err = _run(runner, db, "add", AE1_ID, "--key", "-", stdin="00" * 16)
    assert code == 1
    assert err.strip() == f"error: KpsaId '{AE1_ID}' already exists"
    assert "Traceback" not in out + err
    code, out, err = _run(runner, db, "add", AE1_ID, "--key", "-", "--replace", stdin="00" * 16)
    assert code == 0, err
    assert "shorter" not in err
    with SqlitePskStore(db) as store:
        got = store.get(AE1_ID)
    assert got is not None and got.kpsa == bytes(16) and got.entity_id is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-a-kpsa-id", "--key", AE1_KEY], "invalid KpsaID 'not-a-kpsa-id'"),
        (["a b@in.provider.com", "--key", AE1_KEY], "invalid KpsaID"),
        ([AE1_ID, "--key", "1a2b3c4d5e6f7a8"], "kpsa is not hexadecimal"),
        ([AE1_ID, "--key", "ab" * 65], "kpsa must be 1 to 64 octets, not 65"),
        ([AE1_ID, "--key", AE1_KEY, "--expires", "next week"], "not an ISO 8601 date-time"),
        ([AE1_ID, "--key", AE1_KEY, "--entity-id", "bad id"], "invalid"),
    ],
)
def test_malformed_input_exits_2(
    runner: CliRunner, db: Path, args: list[str], message: str
) -> None:
    # The key from standard input (a literal one would add the command-line warning).
    at = args.index("--key") + 1
    key, args = args[at], [*args[:at], "-", *args[at + 1 :]]
    code, out, err = _run(runner, db, "add", *args, stdin=key + "\n")
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err
    assert "1a2b3c4d5e6f7a8" not in err and "abab" not in err  # the key is not echoed


def test_remove(runner: CliRunner, db: Path) -> None:
    _add_tr0038(runner, db)
    code, out, err = _run(runner, db, "remove", AE1_ID)
    assert code == 0, err
    assert f"removed {AE1_ID}" in out
    code, out, err = _run(runner, db, "remove", AE1_ID)
    assert code == 1
    assert err.strip() == f"error: no key with KpsaId '{AE1_ID}'"
    code, out, _ = _run(runner, db, "list")
    assert AE1_ID not in out and AE2_ID in out


def test_list_empty_store(runner: CliRunner, db: Path) -> None:
    code, out, _ = _run(runner, db, "list")
    assert code == 0
    assert "no keys" in out


def test_import_csv_then_list(runner: CliRunner, db: Path, tmp_path: Path) -> None:
    rows = [f"dev{i:03d}@in.provider.com,{i:02x}" + "00" * 15 + f",Cdev{i}," for i in range(120)]
    path = tmp_path / "psk.csv"
    path.write_text(
        "kpsa_id,kpsa,entity_id,expires_at\n"
        f"{AE1_ID},{AE1_KEY},Clight-AE1,\n"
        f"{AE2_ID},{AE2_KEY},Clight-AE2,2030-01-01\n" + "\n".join(rows) + "\n"
    )
    code, out, err = _run(runner, db, "import", str(path))
    assert code == 0, err
    assert "imported 122 key(s)" in out
    assert "2 keys shorter than 16 octets" in err
    code, out, err = _run(runner, db, "list")
    assert AE1_ID in out and "dev119@in.provider.com" in out and "16 octets" in out
    _no_key_in(out + err)
    # Importing again collides; with --replace it overwrites.
    code, _, err = _run(runner, db, "import", str(path))
    assert code == 1 and "already exists" in err
    code, out, err = _run(runner, db, "import", str(path), "--replace")
    assert code == 0, err
    with SqlitePskStore(db) as store:
        assert store.count() == 122


def test_import_toml(runner: CliRunner, db: Path, tmp_path: Path) -> None:
    path = tmp_path / "psk.toml"
    path.write_text(
        f'[[psk]]\nkpsa_id = "{AE1_ID}"\nkpsa = "{AE1_KEY}"\nentity_id = "Clight-AE1"\n'
        f'[[psk]]\nkpsa_id = "{AE2_ID}"\nkpsa = "{AE2_KEY}"\nentity_id = "Clight-AE2"\n'
    )
    code, _out, err = _run(runner, db, "import", str(path))
    assert code == 0, err
    with SqlitePskStore(db) as store:
        assert store.get(AE1_ID) == PskEntry(AE1_ID, bytes.fromhex(AE1_KEY), "Clight-AE1")


def test_import_with_bad_rows_reports_all_and_writes_nothing(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    _add_tr0038(runner, db)
    path = tmp_path / "bad.csv"
    path.write_text(
        "kpsa_id,kpsa,entity_id,expires_at\n"
        "good@in.provider.com,00112233445566778899aabbccddeeff,Cgood,\n"
        "bad id,00112233445566778899aabbccddeeff,,\n"
        "other@in.provider.com,xyz,,\n"
        "late@in.provider.com,00112233445566778899aabbccddeeff,,someday\n"
    )
    code, out, err = _run(runner, db, "import", str(path))
    assert code == 2
    assert "3 problem(s), nothing imported" in err
    for line in ("line 3:", "line 4:", "line 5:"):
        assert line in err
    assert "Traceback" not in out + err
    with SqlitePskStore(db) as store:
        assert store.count() == 2
        assert store.get("good@in.provider.com") is None


def test_store_errors_are_one_line(
    runner: CliRunner, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add_tr0038(runner, db)
    monkeypatch.setenv("M2MSEC_KEK", "11" * 32)
    code, _out, err = _run(runner, db, "list")
    assert code == 1
    assert "wrong key-encryption key" in err and len(err.strip().splitlines()) == 1
    result = runner.invoke(app, ["list", "--store", "postgresql://m2m@127.0.0.1:1/m2m"])
    assert result.exit_code == 1 and "cannot open store postgresql://" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
