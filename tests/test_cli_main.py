"""The ``m2msec`` command mounts every sub-command (typer would collapse a group of one)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from m2msec.cli.main import app


@pytest.mark.parametrize(
    "argv",
    [
        ["gateway", "serve", "--help"],
        ["psk", "add", "--help"],
        ["psk", "list", "--help"],
        ["ca", "init", "--help"],
        ["ca", "issue", "--help"],
        ["connect", "--help"],
        ["demo", "--help"],
    ],
)
def test_subcommands_are_reachable(argv: list[str]) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "Usage: m2msec " + " ".join(argv[:-1]) in " ".join(result.output.split())


def test_connect_refuses_half_psk_configuration() -> None:
    result = CliRunner().invoke(
        app,
        ["connect", "https://127.0.0.1:1/x", "--from", "Cx", "--id-b", "/mn-cse-123456",
         "--psk-identity", "a@in.provider.com"],
    )
    assert result.exit_code == 1
    assert "--psk-identity and --psk go together" in result.output


def test_connect_reports_unreachable_server_without_traceback() -> None:
    result = CliRunner().invoke(
        app,
        ["connect", "https://127.0.0.1:1/x", "--from", "Cx", "--id-b", "/mn-cse-123456",
         "--psk-identity", "a@in.provider.com", "--psk", "00112233445566778899aabbccddeeff"],
    )
    assert result.exit_code == 1
    assert "cannot reach 127.0.0.1:1" in result.output
    assert "Traceback" not in result.output
    assert "00112233445566778899aabbccddeeff" not in result.output
