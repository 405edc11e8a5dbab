"""Live reload of ``m2msec gateway serve`` (issue 14 item 2; docs/operations.md "Reload").

Through the shipped CLI with ACME behind the gateway: ``m2msec gateway reload`` (the admin
socket's ``POST /reload``) and SIGHUP re-read the certificates, so that ``openssl
s_client`` is shown the new one, while an association opened before keeps being served; a
broken certificate, a key that does not match it, a TOML error or a change that needs a
restart is refused - ``gateway reload`` exits 1 with the reason, the gateway logs one line
and the old certificate is still served.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from m2msec.pki.authority import write_credential
from tests.acme import AcmeCse, acme_fixture
from tests.gateway_process import (
    CLI,
    CSE,
    Pki,
    gateway_process,
    make_pki,
    registration,
    retrieve,
    rscs,
    s_client,
    served_certificate,
    write_config,
)
from tests.interop import Program, run, spawn, wait_until

pytestmark = pytest.mark.interop

acme = acme_fixture()


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))


async def shown_certificate(pki: Pki, port: int) -> bytes:
    done = await run(s_client(pki, port), timeout=30)
    assert "Verify return code: 0 (ok)" in done.output, done.output
    return served_certificate(done.output)


async def reload_cli(config: Path, *options: str) -> tuple[int, str]:
    done = await run([*CLI, "gateway", "reload", "-c", str(config), *options], timeout=60)
    return done.returncode, done.output


async def test_reload_swaps_the_certificate_and_keeps_live_associations(
    acme: AcmeCse, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    old_pem = pki.gw_cert.read_bytes()
    config, port = write_config(tmp_path, pki, acme.url)
    async with gateway_process(config, port) as gw:
        assert await shown_certificate(pki, port) == old_pem
        # An association opened before the reload: registers, then is served after it.
        async with spawn(s_client(pki, port, "-ign_eof")) as live:
            await live.expect("Verify return code: 0")
            live.write(registration(acme.base, "reload-live"))
            await live.expect(r"X-M2M-RSC:\s*2001")
            new_pem = pki.reissue_gateway()
            assert new_pem != old_pem
            code, out = await reload_cli(config)
            assert code == 0, out
            assert "reloaded" in out and "live associations continue" in out, out
            await gw.expect("gateway reloaded: ")
            assert await shown_certificate(pki, port) == new_pem
            # The live association still works, over its old session.
            live.write(retrieve(f"{acme.base}/reload-live", "after-reload"))
            await wait_until(lambda: len(rscs(live.output)) >= 2, lambda: live.output, 30)
            assert rscs(live.output) == ["2001", "2000"], live.output
            assert live.running
        # SIGHUP does the same.
        newest = pki.reissue_gateway()
        gw.proc.send_signal(signal.SIGHUP)
        await gw.expect(r"gateway reloaded: .*\n")
        assert await shown_certificate(pki, port) == newest


async def refused(gw: Program, config: Path, reason: str, *options: str) -> str:
    """``gateway reload`` fails with ``reason``; the log says so once."""
    before = gw.output.count("reload refused")
    code, out = await reload_cli(config, *options)
    assert code == 1, out
    assert "reload refused, the running configuration stays in force" in out, out
    assert reason in out, out
    await gw.expect("gateway reload refused")
    await wait_until(lambda: gw.output.count("reload refused") == before + 1, gw.describe, 10)
    return out


async def test_a_broken_configuration_is_refused_and_the_old_one_stays(
    acme: AcmeCse, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    old_pem = pki.gw_cert.read_bytes()
    config, port = write_config(tmp_path, pki, acme.url)
    good_toml = config.read_text()
    async with gateway_process(config, port) as gw:
        # An unreadable certificate.
        pki.gw_cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
        await refused(gw, config, "certificate")
        assert await shown_certificate(pki, port) == old_pem
        # A key that does not match the certificate.
        pki.gw_cert.write_bytes(old_pem)
        other_key, _ = write_credential(pki.ca.issue(CSE), tmp_path / "other")
        pki.gw_key.write_bytes(other_key.read_bytes())
        await refused(gw, config, "private key does not match the certificate")
        assert await shown_certificate(pki, port) == old_pem
        # A TOML error.
        config.write_text(good_toml + "[certificates\n")
        # (its admin socket cannot be read from the broken file: named on the command line)
        out = await refused(
            gw, config, "invalid TOML", "--admin-socket", str(tmp_path / "adm.sock")
        )
        assert "gateway.toml" in out, out
        # A setting that needs a restart is named.
        config.write_text(good_toml.replace(acme.url, "http://127.0.0.1:1"))
        await refused(gw, config, "gateway.backend cannot change while running (needs a restart)")
        assert await shown_certificate(pki, port) == old_pem
        # SIGHUP with the broken key: refused in the log, the old certificate served.
        config.write_text(good_toml)
        before = gw.output.count("reload refused")
        gw.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: gw.output.count("reload refused") > before, gw.describe, 20)
        last = [line for line in gw.output.splitlines() if "reload refused" in line][-1]
        assert "private key does not match the certificate" in last, gw.output
        assert await shown_certificate(pki, port) == old_pem
        assert gw.running


async def test_reload_without_a_running_gateway_says_why(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config, _ = write_config(tmp_path, pki, "http://127.0.0.1:1")
    code, out = await reload_cli(config)
    assert code == 1
    assert "no admin socket at" in out and "adm.sock" in out, out
