"""``--log-format json`` (tracker issue 14 item 7; :mod:`m2msec.logs`, docs/operations.md).

* The formatter alone: one JSON object per line, the ``extra=`` fields as their own keys,
  the text format unchanged (its lines do not show the fields).
* ``m2msec gateway serve --log-format json`` as a process, with ``openssl s_client`` as
  the device: a good TLS-PSK association, a wrong key, a refused request. Every line on
  standard error is a JSON object; the association lines carry ``sa_id``, ``peer``,
  ``framework`` and ``cause``; neither the right key nor the wrong one appears anywhere in
  the output.
* Every ``serve`` command takes ``--log-format`` and refuses an unknown one (exit 2).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from m2msec import logs
from m2msec.cli.main import app
from tests.interop import (
    TR0038_KPSA_HEX,
    TR0038_KPSA_ID,
    free_port,
    psk_s_client,
    run,
    tr0038_store,
)

CSE = "/mn-cse-123456"
WRONG_KEY_HEX = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    yield
    logs.configure("warning", "text", stream=io.StringIO())
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_Handler":
            root.removeHandler(handler)


def test_json_formatter_one_object_per_line_with_extra_fields() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    log = logging.getLogger("m2msec.test")
    log.info(
        "association established: peer=%s\nsecond line",
        "Clight-AE1",
        extra=logs.sa_fields(sa_id="ab" * 16, peer="Clight-AE1", framework="provisioned-psk"),
    )
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # the message's newline is escaped, not a new line
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "m2msec.test"
    assert first["message"] == "association established: peer=Clight-AE1\nsecond line"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["sa_id"] == "ab" * 16 and first["peer"] == "Clight-AE1"
    assert first["framework"] == "provisioned-psk" and first["cause"] is None
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


def test_text_format_is_unchanged() -> None:
    out = io.StringIO()
    logs.configure("info", "text", stream=out)
    logging.getLogger("m2msec.test").info(
        "association closed: peer=%s", "Clight-AE1", extra=logs.sa_fields(sa_id="cd" * 16)
    )
    line = out.getvalue().rstrip("\n")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO m2msec\.test: association closed: "
        r"peer=Clight-AE1",
        line,
    ), line
    assert logs.TEXT_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"


def test_configure_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="text, json"):
        logs.configure("info", "yaml")


@pytest.mark.parametrize("command", ["gateway", "maf", "bsf", "mef"])
def test_every_serve_command_takes_log_format(command: str) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, [command, "serve", "--help"], terminal_width=200).output
    assert "--log-format" in help_text
    bad = runner.invoke(app, [command, "serve", "--log-format", "yaml"])
    assert bad.exit_code == 2
    assert "--log-format must be one of text, json" in bad.output


def _request(origin: str) -> bytes:
    return (
        f"GET /~{CSE}/home-gw HTTP/1.1\r\nHost: gw\r\nX-M2M-Origin: {origin}\r\n"
        "X-M2M-RI: log-1\r\nX-M2M-RVI: 3\r\nAccept: application/json\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def _wait_for(path: Path, text: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    pytest.fail(f"no {text!r} from the gateway:\n{path.read_text(errors='replace')}")


@pytest.mark.interop
async def test_gateway_serve_json_logs_associations_and_never_a_key(tmp_path: Path) -> None:
    tr0038_store(tmp_path / "psk.db").close()
    port = free_port()
    dead_backend = f"http://127.0.0.1:{free_port()}"  # nothing listens: 5103 and an error line
    err_path, out_path = tmp_path / "stderr", tmp_path / "stdout"
    argv = [
        sys.executable, "-m", "m2msec.cli", "gateway", "serve",
        "--listen", f"tls://127.0.0.1:{port}", "--backend", dead_backend, "--cse-id", CSE,
        "--store", str(tmp_path / "psk.db"), "--admin-socket", "",
        "--log-format", "json",
    ]  # fmt: skip
    with err_path.open("wb") as err, out_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=err)
    try:
        await _wait_for(err_path, "listening on", proc)
        good = await run(
            psk_s_client(port, "-tls1_2", "-quiet", "-ign_eof"), stdin=_request("Clight-AE1")
        )
        assert "X-M2M-RSC: 5103" in good.output, good.describe()
        bad = await run(
            psk_s_client(port, "-tls1_2", "-quiet", key_hex=WRONG_KEY_HEX), stdin=b""
        )
        assert bad.returncode != 0, bad.describe()
        await _wait_for(err_path, "refused", proc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    text = err_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    assert lines, text
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line

    def one(prefix: str) -> dict[str, Any]:
        found = [line for line in lines if line["message"].startswith(prefix)]
        assert found, f"no {prefix!r} line in:\n{text}"
        return found[0]

    established = one("association established")
    assert established["peer"] == f"{CSE}/Clight-AE1"  # as bound (docs/readings.md A-14)
    assert established["framework"] == "provisioned-psk"
    assert re.fullmatch(r"[0-9a-f]{32,64}", established["sa_id"]), established
    assert established["cause"] is None and established["key_id"] == TR0038_KPSA_ID
    closed = one("association closed")
    assert closed["sa_id"] == established["sa_id"] and closed["peer"] == f"{CSE}/Clight-AE1"
    refused = one("security association with")
    assert refused["peer"] == TR0038_KPSA_ID  # the identity offered, not proven
    assert refused["framework"] == "provisioned-psk"
    assert refused["cause"] and refused["cause"] in refused["message"]
    assert {"sa_id", "peer", "framework", "cause"} <= set(refused)
    assert any(line["level"] == "ERROR" and "backend" in line["message"] for line in lines)
    everything = (text + out_path.read_text()).lower()
    for key in (TR0038_KPSA_HEX, WRONG_KEY_HEX):
        assert key.lower() not in everything
        assert bytes.fromhex(key).decode("latin-1").lower() not in everything
