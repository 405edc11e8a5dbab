"""Gateway configuration: TOML schema, error messages that name the key, CLI overrides."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from m2msec.config import ListenerSpec, load_config, parse_config, parse_listen_url
from m2msec.errors import ConfigurationError
from m2msec.ids import CseId

MINIMAL = """
[gateway]
listen = ["tls://127.0.0.1:8443", "http://127.0.0.1:8081"]
backend = "http://127.0.0.1:8080/"
cse_id = "/mn-cse-123456"
"""


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.listen == (
        ListenerSpec("tls://127.0.0.1:8443", "tls", "127.0.0.1", 8443),
        ListenerSpec("http://127.0.0.1:8081", "http", "127.0.0.1", 8081),
    )
    assert cfg.backend == "http://127.0.0.1:8080"
    assert cfg.cse_id == CseId("mn-cse-123456")
    assert cfg.psk is not None and cfg.psk.store is None  # default store
    assert cfg.certificates is None
    assert (cfg.max_body, cfg.handshake_timeout, cfg.max_handshakes, cfg.tls13) == (
        1024 * 1024,
        10.0,
        1024,
        True,
    )
    assert cfg.frameworks == ("psk",)


def test_full_file_with_relative_paths(tmp_path: Path) -> None:
    for name in ("gw.pem", "gw.key", "ca.pem", "psk.db"):
        (tmp_path / name).write_text("x")
    text = MINIMAL.replace(
        '"tls://127.0.0.1:8443"', '"tls://127.0.0.1:8443?framework=psk", "tls://[::1]:8444?framework=certificate"'
    ) + """in_domain = "in.provider.com"
handshake_timeout = 2.5
max_handshakes = 10
max_body = 4096
tls13 = false
require_sni = true
backend_timeout = 3
idle_timeout = 30

[psk]
store = "psk.db"

[certificates]
cert = "gw.pem"
key = "gw.key"
ca = "ca.pem"
allowed = ["Clight-AE1", "/mn-cse-9"]
"""
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    cwd = os.getcwd()
    os.chdir(sub)  # file-relative paths do not depend on the working directory
    try:
        cfg = load_config(write(tmp_path, text))
    finally:
        os.chdir(cwd)
    assert cfg.psk is not None and cfg.psk.store == str(tmp_path / "psk.db")
    assert cfg.certificates is not None
    assert cfg.certificates.cert == tmp_path / "gw.pem"
    assert cfg.certificates.allowed == ("Clight-AE1", "/mn-cse-9")
    assert [s.framework for s in cfg.listen] == ["psk", "certificate", None]
    assert cfg.listen[1].host == "::1"
    assert (cfg.max_body, cfg.tls13, cfg.require_sni, cfg.idle_timeout) == (4096, False, True, 30.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "lisen = 1\n", "unknown key 'gateway.lisen' (did you mean 'listen'?)"),
        (MINIMAL + "[gateway2]\n", "unknown key 'gateway2'"),
        (MINIMAL + "[psk]\nstores = 'x'\n", "unknown key 'psk.stores' (did you mean 'store'?)"),
        (MINIMAL.replace("tls://127.0.0.1:8443", "https://127.0.0.1:8443"),
         "gateway.listen[0]: 'https://127.0.0.1:8443': scheme must be tls://"),
        (MINIMAL.replace("tls://127.0.0.1:8443", "tls://127.0.0.1"), "gateway.listen[0]"),
        (MINIMAL.replace("tls://127.0.0.1:8443", "tls://127.0.0.1:99999"), "gateway.listen[0]"),
        (MINIMAL.replace("tls://127.0.0.1:8443", "tls://127.0.0.1:8443?framework=kerberos"),
         "framework must be one of psk, certificate"),
        (MINIMAL.replace("tls://127.0.0.1:8443", "tls://127.0.0.1:8443?framework=gba"),
         "framework=gba needs [gba]"),
        (MINIMAL.replace("http://127.0.0.1:8081", "tls://127.0.0.1:8443"), "repeats"),
        (MINIMAL.replace('backend = "http://127.0.0.1:8080/"', 'backend = "ftp://x"'),
         "gateway.backend"),
        (MINIMAL.replace('backend = "http://127.0.0.1:8080/"', ""), "gateway.backend: missing"),
        (MINIMAL.replace('cse_id = "/mn-cse-123456"', 'cse_id = "/a/b"'), "gateway.cse_id"),
        (MINIMAL + "max_body = -1\n", "gateway.max_body: must be greater than 0"),
        (MINIMAL + "max_body = 1.5\n", "gateway.max_body: must be an integer"),
        (MINIMAL + "tls13 = 1\n", "gateway.tls13: must be true or false"),
        (MINIMAL + "handshake_timeout = 'slow'\n", "gateway.handshake_timeout"),
        (MINIMAL + "source_share = 1.5\n", "gateway.source_share: is a fraction"),
        (MINIMAL + "first_flight_timeout = 0\n", "gateway.first_flight_timeout"),
        (MINIMAL + "max_associations_per_credential = 0\n",
         "gateway.max_associations_per_credential"),
        (MINIMAL + "request_head_timeout = -1\n", "gateway.request_head_timeout"),
        (MINIMAL + "[psk]\nstore = 'missing.db'\n", "psk.store: no such store"),
        (MINIMAL + "[certificates]\ncert = 'a.pem'\n", "certificates.key: missing"),
        (MINIMAL + "listen = []\n", "invalid TOML"),  # a repeated key
        ("[gateway\n", "invalid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_certificate_file_named(tmp_path: Path) -> None:
    (tmp_path / "gw.pem").write_text("x")
    text = MINIMAL + 'in_domain = "in.provider.com"\n[certificates]\ncert = "gw.pem"\n'
    text += 'key = "gw.key"\nca = "ca.pem"\n'
    with pytest.raises(ConfigurationError, match=r"certificates\.key: no such file: .*gw\.key"):
        load_config(write(tmp_path, text))


def test_both_frameworks_need_a_framework_per_tls_listener(tmp_path: Path) -> None:
    for name in ("gw.pem", "gw.key", "ca.pem", "psk.db"):
        (tmp_path / name).write_text("x")
    text = MINIMAL + 'in_domain = "in.provider.com"\n[psk]\nstore = "psk.db"\n'
    text += '[certificates]\ncert = "gw.pem"\nkey = "gw.key"\nca = "ca.pem"\n'
    with pytest.raises(ConfigurationError, match=r"listen\[0\].*framework=psk"):
        load_config(write(tmp_path, text))


def test_certificates_need_in_domain(tmp_path: Path) -> None:
    for name in ("gw.pem", "gw.key", "ca.pem"):
        (tmp_path / name).write_text("x")
    text = MINIMAL + '[certificates]\ncert = "gw.pem"\nkey = "gw.key"\nca = "ca.pem"\n'
    with pytest.raises(ConfigurationError, match=r"gateway\.in_domain"):
        load_config(write(tmp_path, text))


def test_cli_values_override_the_file(tmp_path: Path) -> None:
    (tmp_path / "other.db").write_text("x")
    cfg = load_config(
        write(tmp_path, MINIMAL),
        {
            "gateway.listen": ["http://127.0.0.1:9000"],
            "gateway.backend": "https://cse.example:8443",
            "gateway.cse_id": "//in.provider.com/mn-cse-9",
            "psk.store": str(tmp_path / "other.db"),
            "gateway.in_domain": None,  # None: not given on the command line
        },
    )
    assert [s.url for s in cfg.listen] == ["http://127.0.0.1:9000"]
    assert cfg.backend == "https://cse.example:8443"
    assert cfg.cse_id.sp_fqdn == "in.provider.com"
    assert cfg.psk is not None and cfg.psk.store == str(tmp_path / "other.db")


def test_no_file_only_overrides() -> None:
    cfg = load_config(
        None,
        {"gateway.listen": ["tls://127.0.0.1:0"], "gateway.backend": "http://127.0.0.1:1",
         "gateway.cse_id": "mn-cse-1"},
    )
    assert cfg.cse_id.sp_relative() == "/mn-cse-1"
    with pytest.raises(ConfigurationError, match="unknown override"):
        load_config(None, {"gateway.nope": 1})


def test_missing_file() -> None:
    with pytest.raises(ConfigurationError, match="config file not found"):
        load_config("/nonexistent/gateway.toml")


def test_listen_url_forms() -> None:
    assert parse_listen_url("tls://localhost:0").port == 0
    assert parse_listen_url("TLS://127.0.0.1:1?framework=cert").framework == "certificate"
    with pytest.raises(ConfigurationError, match="framework= applies to tls"):
        parse_listen_url("http://127.0.0.1:1?framework=psk")
    with pytest.raises(ConfigurationError, match="only scheme://host:port"):
        parse_listen_url("tls://127.0.0.1:1/path")
    with pytest.raises(ConfigurationError, match="unknown parameter"):
        parse_listen_url("tls://127.0.0.1:1?mode=x")


def test_parse_config_needs_a_listener() -> None:
    with pytest.raises(ConfigurationError, match=r"gateway\.listen"):
        parse_config({"gateway": {"backend": "http://x", "cse_id": "/c"}})


# ----------------------------------------------------------------------------- CLI


def test_cli_reports_configuration_errors(tmp_path: Path) -> None:
    from m2msec.cli.gateway import app

    result = CliRunner().invoke(
        app, ["serve", "--listen", "udp://127.0.0.1:1", "--backend", "http://127.0.0.1:1",
              "--cse-id", "/mn-cse-123456"]
    )
    assert result.exit_code == 2
    assert "gateway.listen[0]" in result.output
    result = CliRunner().invoke(app, ["serve", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "config file not found" in result.output


def test_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"),
               M2MSEC_HOME=str(tmp_path / "home"))
    code = (
        "import sys; from m2msec.cli.gateway import app; "
        "sys.argv[0] = 'm2msec-gateway'; app()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--listen", "http://127.0.0.1:0",
         "--listen", "tls://127.0.0.1:0", "--backend", "http://127.0.0.1:1",
         "--cse-id", "/mn-cse-123456", "--init"],  # a fresh home: no store yet
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    try:
        out = b""
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while b"TLS" not in out or b"rows" not in out:
            line = proc.stdout.readline()
            assert line, out.decode()
            out += line
            assert time.monotonic() < deadline
        text = out.decode()
        assert "provisioned PSK" in text and "0 rows" in text and "backend" in text
        port = int(text.split("http://127.0.0.1:")[1].split()[0])
        r = httpx.get(f"http://127.0.0.1:{port}/~/mn-cse-123456/gw",
                      headers={"X-M2M-Origin": "Cx", "X-M2M-RI": "1"})
        assert r.headers["x-m2m-rsc"] == "4107"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, rest.decode()
        assert b"stopped: 0 associations" in rest
        assert b"refused" in rest  # the log line of the plain request
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("load", "good", "bad"),
    [
        ("gateway", {"gateway.backend": "http://127.0.0.1:9/"}, "gateway.bakend"),
        ("maf", {"maf.fqdn": "maf.example.com"}, "maf.fdqn"),
        ("bsf", {"bsf.fqdn": "bsf.example.com"}, "bsf.fdqn"),
    ],
)
def test_one_override_convention_for_every_server(
    load: str, good: dict[str, str], bad: str
) -> None:
    """gateway, MAF and BSF take the same dotted ``section.key`` overrides (one loader);
    a misspelt key is refused as an override, named, with the near miss suggested."""
    from m2msec.config import bsf, maf
    from m2msec.config.loader import merge_overrides

    sections = {
        "gateway": {"gateway": {"backend"}},
        "maf": maf._KEYS,
        "bsf": {"bsf": bsf._KEYS},
    }[load]
    section, _, key = next(iter(good)).partition(".")
    assert merge_overrides({}, good, sections)[section][key] == good[f"{section}.{key}"]
    loaders = {"gateway": load_config, "maf": maf.load_maf_config, "bsf": bsf.load_bsf_config}
    with pytest.raises(ConfigurationError, match=rf"unknown override '{bad}' \(did you mean"):
        loaders[load](None, {bad: "x"})
    # The bare spelling the BSF took before is refused like any unknown key.
    with pytest.raises(ConfigurationError, match="unknown override 'fqdn'"):
        loaders[load](None, {"fqdn": "x"})
