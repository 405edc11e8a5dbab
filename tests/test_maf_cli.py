"""``m2msec maf``: store management commands and ``serve`` as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.cli.main import app
from m2msec.m2mtime import parse_time
from m2msec.maf.store import MafStore, NewKey
from tests.interop import free_port, wait_listening
from tests.test_maf_server import (
    IN_CSE,
    KM,
    KM_ID,
    MAF_FQDN,
    Pki,
    entity_a,
    exported,
    key_reg,
    make_pki,
)

KM_HEX = KM.hex()


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # no truncated table cells


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "maf.db"


def maf(runner: CliRunner, db: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["maf", *args, "--store", str(db)], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_clients(runner: CliRunner, db: Path) -> None:
    code, out, err = maf(
        runner, db, "add-client", KM_ID, "--key", KM_HEX, "--entity-id", "/mn-cse-123456/Clight-AE1"
    )
    assert code == 0, err
    assert f"added MAF client {KM_ID} (32-octet Km, entity /mn-cse-123456/Clight-AE1)" in out
    code, out, err = maf(
        runner, db, "add-client", "ae2@maf.in.provider.com", "--key", "-", stdin="0F" * 16 + "\n"
    )
    assert code == 0, err
    code, out, _ = maf(runner, db, "list-clients")
    assert code == 0
    for text in (KM_ID, "ae2@maf.in.provider.com", "/mn-cse-123456/Clight-AE1", "32 octets"):
        assert text in out
    assert KM_HEX not in out.lower() and "0f" * 16 not in out.lower()
    # Refusals: duplicate (the store refuses: 1), malformed input (2).
    code, _, err = maf(runner, db, "add-client", KM_ID.upper(), "--key", KM_HEX)
    assert code == 1 and "already exists" in err
    for args, message in [
        (("add-client", KM_ID, "--key", "xyz"), "hexadecimal"),
        (("add-client", KM_ID, "--key", "00" * 8), "16 to 64 octets"),
        (("add-client", "no-at-sign", "--key", KM_HEX), "missing '@'"),
        (
            ("add-client", "x@maf.in.provider.com", "--key", KM_HEX, "--entity-id", "b a d"),
            "invalid",
        ),
    ]:
        code, out, err = maf(runner, db, *args)
        assert code == 2, (args, out, err)
        assert message in err and KM_HEX not in err
    code, out, err = maf(runner, db, "remove-client", "ae2@maf.in.provider.com")
    assert code == 0 and "removed MAF client" in out, err
    code, _, err = maf(runner, db, "remove-client", "ae2@maf.in.provider.com")
    assert code == 1 and "no MAF client" in err


def test_entity_b_and_config(runner: CliRunner, db: Path, tmp_path: Path) -> None:
    assert maf(runner, db, "add-client", KM_ID, "--key", KM_HEX)[0] == 0
    code, out, _ = maf(runner, db, "list-entity-b")
    assert code == 0 and "no Entity B allowed" in out
    code, out, err = maf(runner, db, "allow-entity-b", IN_CSE)
    assert code == 0 and f"allowed Entity B {IN_CSE}" in out, err
    assert "already allowed" in maf(runner, db, "allow-entity-b", IN_CSE)[1]
    code, _, err = maf(runner, db, "allow-entity-b", "not an id")
    assert code == 2 and "invalid" in err
    assert maf(runner, db, "list-entity-b")[1].strip() == IN_CSE
    assert maf(runner, db, "disallow-entity-b", IN_CSE)[0] == 0
    assert maf(runner, db, "disallow-entity-b", IN_CSE)[0] == 1
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"fqdn": MAF_FQDN, "httpPort": 8444}))
    code, out, err = maf(runner, db, "set-client-config", KM_ID, str(cfg))
    assert code == 0, err
    with MafStore(db) as st:
        assert st.get_client_config(KM_ID) == {"fqdn": MAF_FQDN, "httpPort": 8444}
    assert maf(runner, db, "set-client-config", KM_ID, "-", stdin="[1]")[0] == 2
    assert maf(runner, db, "set-client-config", KM_ID)[0] == 2  # neither FILE nor --clear
    assert maf(runner, db, "set-client-config", "x@y.com", "--clear")[0] == 1
    assert maf(runner, db, "set-client-config", KM_ID, "--clear")[0] == 0
    with MafStore(db) as st:
        assert st.get_client_config(KM_ID) is None


def test_keys_listing_never_shows_values(runner: CliRunner, db: Path) -> None:
    assert maf(runner, db, "keys")[1].startswith("no key registrations")
    now = datetime.now(UTC)
    kcs = [bytes([i]) * 32 for i in range(1, 4)]
    with MafStore(db) as st:
        st.add_client(KM_ID, KM)
        for i, (kc, hours) in enumerate(zip(kcs, (1, -1, 1), strict=True)):
            st.register_key(
                NewKey(
                    bytes([i]) * 16,
                    kc,
                    now + timedelta(hours=hours),
                    KM_ID.lower(),
                    32,
                    (IN_CSE,),
                    "admin.example",
                )
            )
        st.deregister_key(bytes([2]) * 16)
    code, out, err = maf(runner, db, "keys")
    assert code == 0, err
    assert "00" * 16 in out and "01" * 16 in out and "02" * 16 in out
    assert "live" in out and "expired" in out and "de-registered" in out
    assert "3 key registration(s), 1 live" in out
    for kc in kcs:
        assert kc.hex() not in out
    assert "showing 1" in maf(runner, db, "keys", "--limit", "1")[1]
    assert "no key registrations" in maf(runner, db, "keys", "--km-id", "x@y.com")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "maf.fqdn is missing"),
        (("--fqdn", "maf"), "two labels"),
        (("--fqdn", MAF_FQDN, "--listen", "http://127.0.0.1:1"), "tls://HOST:PORT only"),
        (("--fqdn", MAF_FQDN), "--cert, --key, --ca"),
        (
            ("--fqdn", MAF_FQDN, "--retrieval-listen", "off", "--store", "postgresql://db/maf?bogus=1"),
            "PostgreSQL",
        ),
        (("--fqdn", MAF_FQDN, "--log-level", "loud"), "--log-level"),
        (("--config", "/nonexistent/maf.toml"), "config file not found"),
    ],
)
def test_serve_configuration_errors(runner: CliRunner, args: tuple[str, ...], message: str) -> None:
    result = runner.invoke(app, ["maf", "serve", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def _toml(path: Path, pki: Pki, db: Path, port: int, rport: int) -> None:
    path.write_text(
        "[maf]\n"
        f'fqdn = "{MAF_FQDN}"\n'
        f'listen = "tls://127.0.0.1:{port}"\n'
        f'retrieval_listen = "tls://127.0.0.1:{rport}"\n'
        f'store = "{db.name}"\n'
        'in_domain = "in.provider.com"\n'
        "key_lifetime = 600\n"
        "[certificates]\n"
        f'cert = "{pki.maf_cert}"\nkey = "{pki.maf_key}"\nca = "{pki.ca_pem}"\n'
    )


async def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    db = tmp_path / "maf.db"
    with MafStore(db) as st:
        st.add_client(KM_ID, KM)
        st.add_entity_b(IN_CSE)
    port, rport = free_port(), free_port()
    config = tmp_path / "maf.toml"
    _toml(config, pki, db, port, rport)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "m2msec.cli",
        "maf",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
        cwd=tmp_path,
    )
    try:
        await wait_listening(port, timeout=20)
        await wait_listening(rport, timeout=5)
        client = await entity_a(port)
        response = await client.request("POST", "/maf/keys", origin="ae1", content=key_reg(hours=5))
        assert response.rsc == 2001
        reg = response.json()["mafKeyReg"]
        assert reg["relativeKeyID"] == exported(client.conn)[0].hex()
        granted = parse_time(reg["expirationTime"])
        assert granted <= datetime.now(UTC) + timedelta(seconds=600)  # key_lifetime from TOML
        await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        output = (await asyncio.wait_for(proc.stdout.read(), 20)).decode()
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0, output
    for text in (
        MAF_FQDN,
        f"tls://127.0.0.1:{port}",
        "TLS-PSK",
        "audit log",
        IN_CSE,
        "stopped: 1 keys issued",
    ):
        assert text in output, output
    assert KM_HEX not in output
    with MafStore(db) as st:
        assert st.count_keys() == 1
    assert (tmp_path / "audit.log").exists()
    result = CliRunner().invoke(app, ["maf", "audit", "--json", "--store", str(db)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["event"] for r in records] == ["key-issued"]
    assert records[0]["kcId"] == f"{reg['relativeKeyID']}@{MAF_FQDN}" and records[0]["seq"] >= 1
    assert (
        CliRunner()
        .invoke(
            app, ["maf", "audit", "--json", "--after", str(records[0]["seq"]), "--store", str(db)]
        )
        .stdout
        == ""
    )


def test_allow_entity_b_kind(runner: CliRunner, db: Path) -> None:
    """Seed 001: Entity B is an IN-CSE; another kind needs --allow-non-in and warns."""
    ae = "/in-cse/Cmy-ae"
    code, _, err = maf(runner, db, "allow-entity-b", ae, "--kind", "ae")
    assert code == 2 and "IN-CSE" in err
    code, _, err = maf(runner, db, "allow-entity-b", "/mn-cse-1", "--kind", "mn-cse")
    assert code == 2 and "IN-CSE" in err
    code, _, err = maf(runner, db, "allow-entity-b", IN_CSE, "--kind", "router")
    assert code == 2 and "unknown Entity B kind" in err
    code, out, err = maf(runner, db, "allow-entity-b", ae, "--kind", "ae", "--allow-non-in")
    assert code == 0 and "allowed Entity B" in out and "warning" in err and "not an IN-CSE" in err
    code, out, err = maf(runner, db, "allow-entity-b", IN_CSE)
    assert code == 0 and "(in-cse)" in out and "warning" not in err
    with MafStore(db) as st:
        assert st.entity_b_kinds() == {ae: "ae", IN_CSE: "in-cse"}


def test_add_client_entity_a_kind(runner: CliRunner, db: Path) -> None:
    """Seed 001: an Entity A that is a CSE is configured with its CSE-ID; refused without."""
    code, _, err = maf(runner, db, "add-client", KM_ID, "--key", KM_HEX, "--kind", "cse")
    assert code == 2 and "needs its CSE-ID" in err
    args = ("add-client", KM_ID, "--key", KM_HEX, "--kind", "cse", "--entity-id", "Cae1")
    code, _, err = maf(runner, db, *args)
    assert code == 2 and "not a CSE-ID" in err
    code, _, err = maf(runner, db, "add-client", KM_ID, "--key", KM_HEX, "--kind", "x")
    assert code == 2 and "unknown Entity A kind" in err
    code, out, err = maf(runner, db, *args[:-1], "/mn-cse-1")
    assert code == 0 and "entity /mn-cse-1" in out, err
    with MafStore(db) as st:
        client = st.get_client(KM_ID)
        assert client is not None and client.entity_id == "/mn-cse-1"


def test_connect_cse_id_must_be_a_cse_id(runner: CliRunner) -> None:
    """`m2msec connect --maf --cse-id`: Entity A declared a CSE; an AE-ID there is refused
    before any handshake (seed 001)."""
    argv = [
        "connect", "https://127.0.0.1:9/", "--from", "Cae1", "--id-b", IN_CSE,
        "--maf", "tls://127.0.0.1:9",
        "--km-id", KM_ID, "--km", KM_HEX, "--cse-id", "Cae1",
    ]  # fmt: skip
    result = runner.invoke(app, argv)
    assert result.exit_code != 0 and "needs its CSE-ID" in result.stdout + result.stderr
