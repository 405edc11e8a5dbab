"""The shipped systemd unit (contrib/systemd/m2msec-gateway.service; docs/operations.md).

It parses as INI with the hardening docs/operations.md promises, ``systemd-analyze verify``
accepts it (with ExecStart's program pointed at this machine's ``m2msec``, since
/usr/local/bin/m2msec is where an install puts it, not where the tests run), and every
option of its ExecStart is an option of ``m2msec gateway serve``.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.cli.main import app

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "systemd" / "m2msec-gateway.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_parses_with_the_hardening() -> None:
    service = _unit()["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "m2msec"
    assert service["RuntimeDirectory"] == "m2msec"
    assert service["Environment"] == "M2MSEC_HOME=/var/lib/m2msec"  # the StateDirectory
    argv = shlex.split(service["ExecStart"])
    assert argv[:3] == ["/usr/local/bin/m2msec", "gateway", "serve"]
    assert argv[argv.index("--admin-socket") + 1] == "/run/m2msec/admin.sock"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads (test_reload)


def test_exec_start_names_options_the_command_has() -> None:
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    help_text = CliRunner().invoke(app, [*argv[1:3], "--help"], terminal_width=200).output
    options = [a for a in argv[3:] if a.startswith("--")]
    assert options
    for name in options:
        assert re.search(rf"{re.escape(name)}\b", help_text), name


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (Debian package 'systemd')")
    program = tmp_path / "m2msec"
    program.write_text(f"#!/bin/sh\nexec {sys.executable} -m m2msec.cli \"$@\"\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    text = UNIT.read_text().replace("/usr/local/bin/m2msec", str(program))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "m2msec-gateway.service" not in done.stderr, done.stderr
