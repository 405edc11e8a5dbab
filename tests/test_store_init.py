"""Issue 9 item 3: a missing, 0-byte or schema-less store is never served as a new one.

The three servers (``gateway serve``, ``maf serve``, ``bsf serve``) refuse with one line
naming the file; a store is created only by the first ``psk add`` / ``maf add-client`` /
``bsf add-subscriber`` or by ``serve --init`` (check in :mod:`m2msec.store.schema`).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from m2msec.cli.bsf import app as bsf_app
from m2msec.cli.gateway import app as gateway_app
from m2msec.cli.maf import app as maf_cli_app
from m2msec.cli.psk import app as psk_app
from m2msec.errors import StoreError
from m2msec.store.schema import require_initialised


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("M2MSEC_KEK", raising=False)
    monkeypatch.setenv("COLUMNS", "300")


def _gateway(store: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(gateway_app, [
        "serve", "--listen", "tls://127.0.0.1:1", "--backend", "http://127.0.0.1:1",
        "--cse-id", "/mn-cse-123456", "--store", str(store), *extra,
    ])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def _serve(app: typer.Typer, args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def _one_line(out: str) -> str:
    assert "Traceback" not in out
    return " ".join(out.split())


def test_gateway_refuses_zero_byte_store(tmp_path: Path) -> None:
    db = tmp_path / "psk.db"
    db.touch()
    code, out = _gateway(db)
    assert code == 1, out
    text = _one_line(out)
    assert str(db) in text and "empty" in text
    assert db.stat().st_size == 0  # left as it was, for the operator to restore


def test_gateway_refuses_missing_store_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "psk.db"
    code, out = _gateway(db)
    assert code in (1, 2), out  # the configuration loader already refuses it (exit 2)
    text = _one_line(out)
    assert str(db) in text and ("does not exist" in text or "no such store" in text)
    assert not db.exists()
    assert not (tmp_path / "kek").exists()


def test_gateway_refuses_schema_less_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "psk.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE other (x)")
    code, out = _gateway(db)
    assert code == 1, out
    assert "no m2msec schema" in _one_line(out)


def test_store_created_by_psk_add_is_accepted(tmp_path: Path) -> None:
    db = tmp_path / "psk.db"
    result = CliRunner().invoke(psk_app, [
        "add", "AE123456789014-Light@in.provider.com", "--key", "abcdefabcdef12345678",
        "--store", str(db),
    ])
    assert result.exit_code == 0, result.output
    require_initialised(db, label="psk-lookup-table", create="psk add")
    with pytest.raises(StoreError):
        require_initialised(tmp_path / "other.db", label="psk-lookup-table", create="psk add")


def test_psk_add_on_truncated_store_warns_about_old_kek(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "psk.db"
    args = ["add", "AE123456789014-Light@in.provider.com", "--key", "abcdefabcdef12345678",
            "--store", str(db)]
    assert CliRunner().invoke(psk_app, args).exit_code == 0
    for name in ("psk.db-wal", "psk.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    db.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="m2msec.store.schema"):
        assert CliRunner().invoke(psk_app, args).exit_code == 0
    assert any("had no schema" in r.getMessage() and "kek" in r.getMessage()
               for r in caplog.records)


def test_maf_serve_refuses_zero_byte_store(tmp_path: Path) -> None:
    db = tmp_path / "maf.db"
    db.touch()
    code, out = _serve(maf_cli_app, ["serve", "--fqdn", "maf.example.net",
                                     "--retrieval-listen", "off", "--store", str(db)])
    assert code == 1, out
    text = _one_line(out)
    assert "MAF store" in text and str(db) in text and "empty" in text


def test_bsf_serve_refuses_zero_byte_store(tmp_path: Path) -> None:
    db = tmp_path / "bsf.db"
    db.touch()
    code, out = _serve(bsf_app, ["serve", "--listen", "http://127.0.0.1:1", "--fqdn",
                                 "bsf.example.net", "--store", str(db)])
    assert code == 1, out
    text = _one_line(out)
    assert "BSF store" in text and str(db) in text and "empty" in text
