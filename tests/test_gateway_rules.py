"""``m2msec gateway rule add|list|remove``: stored serviceSubscribedAppRules (issue 9 item 1).

The CLI on a real store, the schema migration from version 2, and a running gateway with
ACME behind it that applies a ``rule add`` / ``rule remove`` without a restart.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from m2msec.app_rules import AppRule
from m2msec.cli.gateway import app
from m2msec.errors import ConfigurationError
from m2msec.store import PskEntry, SqlitePskStore
from m2msec.store import app_rules as app_rules_module
from m2msec.store.app_rules import AppRuleStore
from m2msec.store.db import SqliteDatabase
from m2msec.store.psk import migrations
from tests.acme import AcmeCse, acme_fixture, ae_content
from tests.test_gateway import gw_config, light, running

acme = acme_fixture()

# Two psk rows without entity id: Credential-ID associations 12-<KpsaId> (docs/readings.md A-13).
CRED = ("AE123456789099-Light@in.provider.com", "ffeeddccbbaa99887766554433221100", None)
CRED2 = ("AE123456789098-Light@in.provider.com", "00ffeeddccbbaa998877665544332211", None)
PATTERN = "12-AE12345678909*-Light@in.provider.com"

def _jsonl(text: str) -> list[Any]:
    """The rows of a ``--json`` listing: one JSON object per line (JSON lines)."""
    return [json.loads(line) for line in text.splitlines()]



@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("M2MSEC_KEK", raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def rule(db: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["rule", *args, "--store", str(db)])
    return result.exit_code, result.stdout, result.stderr


def test_add_list_remove(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    code, out, err = rule(db, "add", "--credential", PATTERN, "--credential", "11-*",
                          "--allowed-ae", "C*", "--allowed-app-id", "Nlight", "--name", "lights")
    assert code == 0, err
    assert "added rule 1 (lights)" in out
    code, out, err = rule(db, "add", "--credential", "12-*", "--allowed-ae", "Cdev*")
    assert code == 0 and "added rule 2" in out, err
    code, out, _ = rule(db, "list")
    assert code == 0 and "lights" in out and PATTERN in out and "Cdev*" in out and "any" in out
    code, out, _ = rule(db, "list", "--json")
    assert code == 0
    assert _jsonl(out) == [
        {"source": "store", "id": 1, "name": "lights", "credentials": [PATTERN, "11-*"],
         "allowed_aes": ["C*"], "allowed_app_ids": ["Nlight"]},
        {"source": "store", "id": 2, "name": None, "credentials": ["12-*"],
         "allowed_aes": ["Cdev*"], "allowed_app_ids": []},
    ]  # fmt: skip
    code, _, err = rule(db, "add", "--credential", "x", "--allowed-ae", "C*", "--name", "lights")
    assert code == 2 and "exists already" in err
    assert rule(db, "remove", "lights")[0] == 0
    assert rule(db, "remove", "2")[0] == 0
    code, _, err = rule(db, "remove", "2")
    assert code == 1 and "no stored app rule" in err
    assert _jsonl(rule(db, "list", "--json")[1]) == []


def test_list_with_config_shows_the_toml_rules_beside_the_stored_ones(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    assert rule(db, "add", "--credential", "12-*", "--allowed-ae", "Cdev*", "--name", "dev")[0] == 0
    toml = tmp_path / "gw.toml"
    toml.write_text(
        '[gateway]\nbackend = "http://127.0.0.1:9"\n'  # no cse_id: it may come from the CLI
        '[[gateway.app_rule]]\ncredentials = ["11-*@maf.in.provider.com"]\n'
        'allowed_aes = ["Cmeter*"]\nallowed_app_ids = ["Nmeter"]\n'
        '[psk]\nstore = "gw.db"\n'  # relative to the file, as the gateway reads it
    )
    listed = CliRunner().invoke(app, ["rule", "list", "--config", str(toml), "--json"])
    assert listed.exit_code == 0, listed.stderr
    assert _jsonl(listed.stdout) == [
        {"source": "config", "id": None, "name": None, "credentials": ["11-*@maf.in.provider.com"],
         "allowed_aes": ["Cmeter*"], "allowed_app_ids": ["Nmeter"]},
        {"source": "store", "id": 1, "name": "dev", "credentials": ["12-*"],
         "allowed_aes": ["Cdev*"], "allowed_app_ids": []},
    ]  # fmt: skip
    table = CliRunner().invoke(app, ["rule", "list", "-c", str(toml)])
    assert table.exit_code == 0 and "config" in table.stdout and "Cmeter*" in table.stdout
    assert "store" in table.stdout and "Cdev*" in table.stdout
    # A rule the gateway would refuse is refused here too, naming the file.
    toml.write_text('[[gateway.app_rule]]\ncredentials = ["12-*"]\nallowed_aes = []\n')
    bad = CliRunner().invoke(app, ["rule", "list", "--config", str(toml), "--store", str(db)])
    assert bad.exit_code == 2 and str(toml) in bad.stderr and "app_rule[0]" in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("--credential", "12-*", "--allowed-ae", ""),
        ("--credential", "12 *", "--allowed-ae", "C*"),
        ("--credential", "12-*", "--allowed-ae", "C*", "--allowed-app-id", "N\tx"),
        ("--credential", "12-*", "--allowed-ae", "C*", "--name", "7"),
    ],
)
def test_bad_pattern_is_exit_2_and_writes_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    db = tmp_path / "gw.db"
    SqlitePskStore(db).close()
    code, _, err = rule(db, "add", *args)
    assert code == 2, err
    assert "error:" in err and ("pattern" in err or "non-empty" in err or "name" in err)
    with AppRuleStore(db) as rules:
        assert rules.list() == []


def test_missing_pattern_option_is_a_usage_error(tmp_path: Path) -> None:
    code, _, _ = rule(tmp_path / "gw.db", "add", "--credential", "12-*")
    assert code == 2
    assert not (tmp_path / "gw.db").exists()


def test_version_2_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    raw = sqlite3.connect(path)
    steps = migrations(SqliteDatabase(path))
    for version in (1, 2):
        for statement in steps[version]:
            raw.execute(statement)
    raw.execute(
        "INSERT INTO identity_owner VALUES ('/mn-cse-123456/Cx', 'psk:x', 'registration', 0)"
    )
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()
    SqlitePskStore(path, kek=b"k" * 32).close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
    assert raw.execute("SELECT credential FROM identity_owner").fetchall() == [("psk:x",)]
    raw.close()
    with AppRuleStore(path) as rules:
        rules.add(AppRule(("12-*",), ("C*",)))
        assert [r.rule for r in rules.list()] == [AppRule(("12-*",), ("C*",))]


def test_rules_are_re_read_after_the_cache_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "gw.db"
    SqlitePskStore(db, kek=b"k" * 32).close()
    now = [1000.0]
    monkeypatch.setattr(app_rules_module.time, "monotonic", lambda: now[0])
    with AppRuleStore(db, cache_ttl=2.0) as gateway_view, AppRuleStore(db) as cli:
        assert gateway_view.rules() == ()
        cli.add(AppRule(("12-*",), ("C*",)))
        now[0] += 1.0
        assert gateway_view.rules() == ()  # still cached
        now[0] += 1.0
        assert gateway_view.rules() == (AppRule(("12-*",), ("C*",)),)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlitePskStore]:
    # cache_ttl 0: every lookup sees the file as it is, so no waiting in the test.
    s = SqlitePskStore(tmp_path / "psk.db", cache_ttl=0)
    s.add_many([PskEntry(r[0], bytes.fromhex(r[1]), r[2]) for r in (CRED, CRED2)])
    yield s
    s.close()


async def test_rule_add_and_remove_reach_a_running_gateway(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    db = store.path
    async with running(gw_config(acme.url, app_rule=[]), store) as gw:
        async with light(gw, CRED) as dev:
            r = await dev.request("POST", acme.base, origin="Crule-dev",
                                  content=ae_content("rule-dev"), ty=2)
            assert r.rsc == 4128, r.body  # no rule for its Credential-ID
            code, _, err = rule(db, "add", "--credential", PATTERN, "--allowed-ae", "Crule*",
                                  "--name", "lights")
            assert code == 0, err
            # The same association, no restart: the stored rule now allows it.
            r = await dev.request("POST", acme.base, origin="Crule-dev",
                                  content=ae_content("rule-dev"), ty=2)
            assert r.rsc == 2001, r.body
        async with light(gw, CRED2) as dev2:
            r = await dev2.request("POST", acme.base, origin="Sother",
                                   content=ae_content("rule-other"), ty=2)
            assert r.rsc == 4126, r.body  # a rule applies, none allows S*
            assert rule(db, "remove", "lights")[0] == 0
            r = await dev2.request("POST", acme.base, origin="Crule-dev2",
                                   content=ae_content("rule-dev2"), ty=2)
            assert r.rsc == 4128, r.body
    assert acme.retrieve(acme.base + "/rule-dev").status_code == 200
    assert acme.retrieve(acme.base + "/rule-dev2").status_code == 404


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"credentials": ["12 *"], "allowed_aes": ["C*"]}, "whitespace"),
        ({"credentials": ["12-*"], "allowed_aes": [""]}, "non-empty"),
        ({"credentials": ["12-*"]}, "needs credentials and allowed_aes"),
    ],
)
def test_toml_rules_use_the_same_check(table: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        gw_config("http://127.0.0.1:1", app_rule=[table])
    assert "gateway.app_rule[0]" in str(info.value)
