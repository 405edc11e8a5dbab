"""``m2msec bsf``: subscribers from the shell (keys never printed) and ``bsf serve`` as a
real process that a device bootstraps against."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.cli.bsf import app
from m2msec.gba.aka import Usim
from m2msec.gba.subscribers import SubscriberStore
from m2msec.gba.ub import Bootstrap, bootstrap
from tests.interop import free_port

# TS 35.208 test set 1 (NOTES.md): OPc from OP is checked through the CLI.
K = "465b5ce8b199b49faa5f0a2ee238a6bc"
OP = "cdc202d5123e20f62b6d676ac72cb318"
OPC = "cd63cb71954a9f4e48a5994e37a02baf"
IMPI = "dev1@ims.example.com"


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bsf.db"


def run(db: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--store", str(db)], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def serve(db: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """``m2msec bsf serve`` on ``db`` as a separate process, listening on ``port``."""
    return subprocess.Popen(
        [sys.executable, "-m", "m2msec.cli", "bsf", "serve", "--listen",
         f"http://127.0.0.1:{port}", "--fqdn", "bsf.in.provider.com", "--store", str(db), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def first_bootstrap(port: int, within: float = 20.0) -> Bootstrap:
    """Bootstrap IMPI's USIM as soon as the BSF on ``port`` answers."""
    deadline = time.monotonic() + within
    while True:
        try:
            usim = Usim(bytes.fromhex(K), bytes.fromhex(OPC), 0)
            return asyncio.run(bootstrap(f"http://127.0.0.1:{port}/", usim, IMPI))
        except Exception as exc:
            if "cannot reach" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_add_list_remove(db: Path) -> None:
    code, out, err = run(
        db, "add-subscriber", IMPI, "--k", K, "--op", OP, "--sqn", "00000000002a",
        "--allow-naf", "mn-cse-123456.in.provider.com",
        "--uss", 'x.in.provider.com={"aeId": "/mn-cse-123456/Cx"}',
    )  # fmt: skip
    assert code == 0, err
    assert "added dev1@ims.example.com (GBA_ME" in out
    with SubscriberStore(db) as store:
        sub = store.get_subscriber(IMPI)
    assert sub is not None
    assert sub.opc.hex() == OPC  # derived from OP with MILENAGE
    assert sub.sqn == 0x2A
    assert sub.guss.uss_for("x.in.provider.com") == {"aeId": "/mn-cse-123456/Cx"}

    code, out, _ = run(db, "list")
    assert code == 0
    assert IMPI in out and "mn-cse-123456.in.provider.com" in out and "00000000002a" in out
    assert K not in out and OPC not in out

    code, _, err = run(db, "add-subscriber", IMPI, "--k", K, "--opc", OPC)
    assert code == 1 and "already exists" in err
    assert run(db, "add-subscriber", IMPI, "--k", K, "--opc", OPC, "--replace", "--uicc")[0] == 0
    code, out, _ = run(db, "list")
    assert "GBA_U" in out

    assert run(db, "remove", IMPI)[0] == 0
    code, _, err = run(db, "remove", IMPI)
    assert code == 1 and "no subscriber" in err


def test_keys_from_stdin(db: Path) -> None:
    code, _, err = run(db, "add-subscriber", IMPI, "--k", "-", "--opc", OPC, "--any-naf",
                       stdin=K + "\n")  # fmt: skip
    assert code == 0, err
    with SubscriberStore(db) as store:
        sub = store.get_subscriber(IMPI)
    assert sub is not None and sub.k.hex() == K and sub.guss.any_naf


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", K], "exactly one of --opc and --op"),
        (["--k", K, "--op", OP, "--opc", OPC], "exactly one of --opc and --op"),
        (["--k", "xyz", "--opc", OPC], "K must be hexadecimal"),
        (["--k", K[:-2], "--opc", OPC], "K must be 16 octets"),
        (["--k", K, "--opc", OPC, "--amf", "800"], "AMF must be hexadecimal"),
        (["--k", K, "--opc", OPC, "--sqn", "01"], "SQN must be 6 octets"),
        (["--k", K, "--opc", OPC, "--uss", "naf.example.com"], "FQDN=JSON"),
        (["--k", K, "--opc", OPC, "--uss", "naf.example.com=[1]"], "JSON object"),
        (["--k", K, "--opc", OPC, "--allow-naf", "bad_name"], "FQDN label"),
    ],
)
def test_bad_input_exits_2(db: Path, args: list[str], message: str) -> None:
    code, _, err = run(db, "add-subscriber", IMPI, *args)
    assert code == 2
    assert message in err


def test_no_naf_allowed_warns(db: Path) -> None:
    code, _, err = run(db, "add-subscriber", IMPI, "--k", K, "--opc", OPC)
    assert code == 0 and "no NAF is allowed" in err


def test_bad_impi_exits_2(db: Path) -> None:
    code, _, err = run(db, "add-subscriber", "a b", "--k", K, "--opc", OPC)
    assert code == 2 and "IMPI" in err


def test_serve_refuses_bad_configuration(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--listen", "tls://127.0.0.1:1", "--fqdn", "b.x"])
    assert result.exit_code == 2 and "must start with http://" in result.stderr
    result = CliRunner().invoke(app, ["serve", "--listen", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "bsf.fqdn: missing" in result.stderr
    result = CliRunner().invoke(app, ["serve", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "config file not found" in result.stderr


def test_serve_runs_until_sigint(db: Path, tmp_path: Path) -> None:
    assert run(db, "add-subscriber", IMPI, "--k", K, "--opc", OPC, "--any-naf")[0] == 0
    port = free_port()
    proc = serve(db, port, "--ks-lifetime", "90")
    try:
        boot = first_bootstrap(port)
        assert boot.btid.endswith("@bsf.in.provider.com")
        assert 80 <= (boot.expires.timestamp() - time.time()) <= 91
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "m2msec BSF" in text and f"127.0.0.1:{port}" in text
    assert "stopped: 1 bootstrap(s)" in text
    assert K not in text + err.decode()


def test_serve_limits_ub_per_source(db: Path) -> None:
    """Issue 9 item 5 through the shipped CLI: --ub-rate/--ub-burst answer 429 with
    Retry-After, and repeated unauthenticated requests reuse one challenge."""
    import http.client

    assert run(db, "add-subscriber", IMPI, "--k", K, "--opc", OPC, "--any-naf")[0] == 0
    port = free_port()
    proc = serve(db, port, "--ub-rate", "0.05", "--ub-burst", "6")
    try:
        first_bootstrap(port)  # the BSF is up
        header = (
            f'Digest username="{IMPI}", realm="bsf.in.provider.com", nonce="", uri="/", response=""'
        )
        answers = []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(8):
            conn.request("GET", "/", headers={"Authorization": header})
            response = conn.getresponse()
            response.read()
            answers.append((response.status, response.getheader("Retry-After")))
        conn.close()
        statuses = [status for status, _ in answers]
        # 6 tokens: 2 went to the bootstrap, 4 challenges (one vector), then 429.
        assert statuses[:4] == [401] * 4 and statuses[-1] == 429
        assert all(int(after) >= 1 for status, after in answers if status == 429)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "stopped: 1 bootstrap(s)" in text
    assert "4 rate-limited, 3 challenge(s) reused" in text
