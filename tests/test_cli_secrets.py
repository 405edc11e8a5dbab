"""Secret options (issue 14 item 5, docs/cli.md "Secret options"): every option that takes
a key reads it through :func:`m2msec.cli.secrets.secret_text` in the same forms: ``-``
(standard input; a prompt without echo through getpass on a terminal), ``@FILE`` and the
``--*-file FILE`` twin (a warning unless the file is 0600), and a literal, which still works
but warns that it is visible to other users (``ps``, shell history); ``mef add-enrolee
--key`` and ``enrol --kpm`` refuse the literal. The key read is the key stored (read back
from each store) or used (a real handshake with ``openssl s_server``), and it never shows
in any output or error."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from m2msec.cli.connect import options_credential
from m2msec.cli.main import app
from m2msec.cli.secrets import secret_text
from m2msec.crypto.milenage import opc as derive_opc
from m2msec.gba.subscribers import SubscriberStore
from m2msec.maf.store import MafStore
from m2msec.mef.records import Bootstrap
from m2msec.mef.store import MefStore
from m2msec.store import open_store
from tests.interop import HOST, free_port, run, spawn

SRC = Path(__file__).resolve().parents[1] / "src"
FORMS = ("stdin", "at-file", "file-option", "literal")
LITERAL_WARNING = "visible to other users (ps, shell history)"
KPSA = bytes.fromhex("5a1f0e6c3b2d4a59687f8e9dacbbcadf")
KM = bytes.fromhex("c0ffee00" * 8)
K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")
OP = bytes.fromhex("cdc202d5123e20f62b6d676ac72cb318")
KPM = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
ALL_KEYS = (KPSA, KM, K, OPC, OP, KPM)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("M2MSEC_KEK", raising=False)


def key_file(tmp_path: Path, name: str, key: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(key.hex() + "\n")
    path.chmod(mode)
    return path


def given(form: str, option: str, key: bytes, tmp_path: Path) -> tuple[list[str], str | None]:
    """The arguments (and standard input) that give ``key`` to ``option`` in ``form``."""
    if form == "stdin":
        return [option, "-"], key.hex() + "\n"
    path = key_file(tmp_path, option.strip("-") + ".hex", key)
    if form == "at-file":
        return [option, f"@{path}"], None
    if form == "file-option":
        return [f"{option}-file", str(path)], None
    return [option, key.hex()], None


def cli(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args, input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    for key in ALL_KEYS:  # never echoed, whatever the form or the outcome
        assert key.hex() not in (result.stdout + result.stderr).lower(), args
    return result.exit_code, result.stdout, result.stderr


def check_warning(form: str, err: str) -> None:
    if form == "literal":
        assert LITERAL_WARNING in err
    else:
        assert "warning" not in err.replace("shorter than", ""), err


# ----------------------------------------------------------------------------- stores


@pytest.mark.parametrize("form", FORMS)
def test_psk_add_key(form: str, tmp_path: Path) -> None:
    db = str(tmp_path / "psk.db")
    args, stdin = given(form, "--key", KPSA, tmp_path)
    code, _, err = cli(["psk", "add", "dev1@in.provider.com", *args, "--store", db], stdin)
    assert code == 0, err
    check_warning(form, err)
    with open_store(db) as st:
        entry = st.get("dev1@in.provider.com")
    assert entry is not None and entry.kpsa == KPSA


@pytest.mark.parametrize("form", FORMS)
def test_maf_add_client_key(form: str, tmp_path: Path) -> None:
    db = str(tmp_path / "maf.db")
    args, stdin = given(form, "--key", KM, tmp_path)
    code, _, err = cli(["maf", "add-client", "ae1@maf.in.provider.com", *args, "--store", db],
                       stdin)  # fmt: skip
    assert code == 0, err
    check_warning(form, err)
    with MafStore(db) as st:
        client = st.get_client("ae1@maf.in.provider.com")
    assert client is not None and client.km == KM


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("option", ["--k", "--opc", "--op"])
def test_bsf_add_subscriber_keys(option: str, form: str, tmp_path: Path) -> None:
    db = str(tmp_path / "bsf.db")
    value = {"--k": K, "--opc": OPC, "--op": OP}[option]
    args, stdin = given(form, option, value, tmp_path)
    if option != "--k":
        args += ["--k-file", str(key_file(tmp_path, "k-other.hex", K))]
    if option == "--k":
        args += ["--opc-file", str(key_file(tmp_path, "opc-other.hex", OPC))]
    impi = "dev1@ims.example.com"
    code, _, err = cli(["bsf", "add-subscriber", impi, *args, "--any-naf", "--store", db], stdin)
    assert code == 0, err
    check_warning(form, err)
    with SubscriberStore(db) as st:
        sub = st.get_subscriber(impi)
    assert sub is not None and sub.k == K
    assert sub.opc == (derive_opc(K, OP) if option == "--op" else OPC)


def test_two_secrets_from_stdin_one_line_each(tmp_path: Path) -> None:
    db = str(tmp_path / "bsf.db")
    code, _, err = cli(
        ["bsf", "add-subscriber", "d@ims.example.com", "--k", "-", "--opc", "-", "--any-naf",
         "--store", db],
        f"{K.hex()}\n{OPC.hex()}\n",
    )  # fmt: skip
    assert code == 0, err
    with SubscriberStore(db) as st:
        sub = st.get_subscriber("d@ims.example.com")
    assert sub is not None and (sub.k, sub.opc) == (K, OPC)


@pytest.mark.parametrize("form", FORMS)
def test_mef_add_enrolee_key_refuses_a_literal(form: str, tmp_path: Path) -> None:
    db = str(tmp_path / "mef.db")
    args, stdin = given(form, "--key", KPM, tmp_path)
    code, _, err = cli(
        ["mef", "add-enrolee", "device-1", *args, "--enrolee-id", "/mn-cse-1/Cdevice-1",
         "--maf-id", "maf.in.provider.com", "--store", db],
        stdin,
    )  # fmt: skip
    if form == "literal":
        assert code == 2 and "--key - (standard input), --key @FILE or --key-file" in err
        return
    assert code == 0, err
    with MefStore(db) as st:
        enrolee = st.get_enrolee(Bootstrap.PSK, "device-1")
    assert enrolee is not None and enrolee.kpm == KPM


@pytest.mark.parametrize("form", FORMS)
def test_enrol_kpm_refuses_a_literal(form: str, tmp_path: Path) -> None:
    """The Kpm is read before the MEF is reached: a closed port fails later, exit 1."""
    args, stdin = given(form, "--kpm", KPM, tmp_path)
    code, _, err = cli(
        ["enrol", "--mef", f"tls://{HOST}:{free_port()}", "--mef-fqdn", "mef.in.provider.com",
         "--kpm-id", "device-1@mef.in.provider.com", *args, "--enrolee-b", "/mn-cse-1",
         "--timeout", "2", "--store", str(tmp_path / "enrolee.db")],
        stdin,
    )  # fmt: skip
    if form == "literal":
        assert code == 2 and "--kpm - (standard input), --kpm @FILE or --kpm-file" in err
    else:
        assert code == 1 and "Kpm" not in err and "hexadecimal" not in err, err


# ----------------------------------------------------------------------------- connect


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("option", ["--km", "--k", "--opc"])
def test_connect_maf_and_gba_keys(option: str, form: str, tmp_path: Path) -> None:
    """The credential ``m2msec connect`` builds from --km, --k and --opc in each form."""
    value = {"--km": KM, "--k": K, "--opc": OPC}[option]
    args, stdin = given(form, option, value, tmp_path)
    name, text = (args[0], args[1])
    sys_stdin, sys.stdin = sys.stdin, io.StringIO(stdin or "")
    try:
        file = Path(text) if name.endswith("-file") else None
        raw = None if file is not None else text
        common: dict[str, Any] = dict(
            psk_identity=None, psk=None, cert=None, key=None, ca=None, target_id=None,
            cse_id=None, server_name=None, in_domain=None, tls12=False, maf_fqdn=None,
        )  # fmt: skip
        if option == "--km":
            made = options_credential(
                **common, gba=None, maf="tls://127.0.0.1:8444", km_id="ae1@maf.in.provider.com",
                km=raw, km_file=file, id_b="/in-cse",
            )  # fmt: skip
            got = made.framework.km.value  # type: ignore[union-attr]
        else:
            k, k_file = (raw, file) if option == "--k" else (None, key_file(tmp_path, "k2", K))
            o, o_file = (raw, file) if option == "--opc" else (None, key_file(tmp_path, "o2", OPC))
            gba = ("http://127.0.0.1:8080", "dev1@ims.example.com", k, o, None, False, k_file,
                   o_file)  # fmt: skip
            made = options_credential(**common, gba=gba, maf=None, km_id=None, km=None,
                                      id_b="/in-cse")  # fmt: skip
            framework: Any = made.framework
            got = (framework.k if option == "--k" else framework.opc).value
    finally:
        sys.stdin = sys_stdin
    assert got == value


@pytest.mark.parametrize("form", FORMS)
async def test_connect_psk_to_openssl_s_server(form: str, tmp_path: Path) -> None:
    """``m2msec connect --psk`` in each form completes a handshake with openssl s_server,
    which accepts only that psk_identity and Kpsa."""
    port = free_port()
    identity = "AE123456789012-Light@in.provider.com"
    server = ["openssl", "s_server", "-accept", f"{HOST}:{port}", "-nocert", "-naccept", "1",
              "-www", "-psk_identity", identity, "-psk", KPSA.hex(), "-tls1_2"]  # fmt: skip
    args, stdin = given(form, "--psk", KPSA, tmp_path)
    client = [sys.executable, "-m", "m2msec.cli", "connect", f"https://{HOST}:{port}/",
              "--id-b", "/mn-cse-123456", "--from", "Clight-AE1", "--psk-identity", identity,
              *args, "--timeout", "5"]  # fmt: skip
    os.environ["PYTHONPATH"] = str(SRC)
    async with spawn(server) as s_server:
        await s_server.expect(r"^ACCEPT", 10)
        done = await run(client, stdin=(stdin or "").encode(), timeout=30)
    assert done.returncode == 0, done.output
    assert "HTTP 200" in done.output and identity in done.output
    ours = done.output.split("HTTP 200")[0]  # after it: s_server's page, its command line
    check_warning(form, ours)
    assert KPSA.hex() not in ours.lower()


# ----------------------------------------------------------------------------- the helper


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> str:
        raise AssertionError("a terminal's key is read by getpass, never echoed by readline")


def test_getpass_on_a_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--key -`` on a terminal prompts through getpass (no echo), also in the CLI."""
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: Any = None) -> str:
        prompts.append(prompt)
        return KPSA.hex()

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    assert secret_text("-", "--psk", prompt="Kpsa (hexadecimal)") == KPSA.hex()
    assert prompts == ["Kpsa (hexadecimal): "]
    db = str(tmp_path / "psk.db")
    command = typer.main.get_command(app)
    command.main(["psk", "add", "dev1@in.provider.com", "--key", "-", "--store", db],
                 standalone_mode=False)  # fmt: skip
    assert prompts[-1] == "Kpsa (hexadecimal): "
    with open_store(db) as st:
        entry = st.get("dev1@in.provider.com")
    assert entry is not None and entry.kpsa == KPSA


def test_file_mode_warning(tmp_path: Path) -> None:
    db = str(tmp_path / "psk.db")
    loose = key_file(tmp_path, "loose.hex", KPSA, mode=0o644)
    code, _, err = cli(["psk", "add", "dev1@in.provider.com", "--key-file", str(loose),
                        "--store", db])  # fmt: skip
    assert code == 0, err
    assert f"{loose} (--key-file) is readable by others (mode 0644); chmod 600 it" in err
    code, _, err = cli(["psk", "add", "dev2@in.provider.com", "--key", f"@{loose}",
                        "--store", db])  # fmt: skip
    assert code == 0 and "mode 0644" in err and LITERAL_WARNING not in err


@pytest.mark.parametrize("form", ["stdin", "at-file", "file-option", "literal"])
def test_bad_keys_are_never_echoed(form: str, tmp_path: Path) -> None:
    db = str(tmp_path / "psk.db")
    bad = KPSA.hex() + "zz"  # not hexadecimal: the error names the option, not the value
    if form == "stdin":
        args, stdin = ["--key", "-"], bad + "\n"
    elif form == "literal":
        args, stdin = ["--key", bad], None
    else:
        path = tmp_path / "bad.hex"
        path.write_text(bad)
        path.chmod(0o600)
        args = ["--key", f"@{path}"] if form == "at-file" else ["--key-file", str(path)]
        stdin = None
    code, out, err = cli(["psk", "add", "dev1@in.provider.com", *args, "--store", db], stdin)
    assert code == 2 and "kpsa is not hexadecimal" in err
    assert KPSA.hex() not in (out + err).lower()


def test_missing_file_and_both_forms(tmp_path: Path) -> None:
    db = str(tmp_path / "psk.db")
    code, _, err = cli(["psk", "add", "d@in.provider.com", "--key", "@/nonexistent/k.hex",
                        "--store", db])  # fmt: skip
    assert code == 2 and "--key: cannot read /nonexistent/k.hex" in err
    path = key_file(tmp_path, "k.hex", KPSA)
    code, _, err = cli(["psk", "add", "d@in.provider.com", "--key", "-", "--key-file", str(path),
                        "--store", db], KPSA.hex())  # fmt: skip
    assert code == 2 and "give --key or --key-file, not both" in err


def test_every_secret_option_has_its_forms() -> None:
    """Each secret option of the CLI has its --*-file twin and names the forms in --help
    (a new secret option without them fails here)."""
    root = typer.main.get_command(app)
    secret = {"--key", "--psk", "--km", "--k", "--opc", "--op", "--kpm"}
    found: dict[str, set[str]] = {}

    def walk(group: Any, path: tuple[str, ...]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            if hasattr(command, "commands"):
                walk(command, (*path, name))
                continue
            opts = {o: p for p in command.params for o in p.opts}
            for option in secret & opts.keys():
                if "PEM" in (opts[option].help or ""):
                    continue  # --key FILE of a private key in PEM, not a secret value
                assert f"{option}-file" in opts, (path, name, option)
                assert "@FILE" in (opts[option].help or ""), (path, name, option)
                found.setdefault(" ".join((*path, name)), set()).add(option)

    walk(root, ())
    assert found == {
        "psk add": {"--key"},
        "maf add-client": {"--key"},
        "bsf add-subscriber": {"--k", "--opc", "--op"},
        "mef add-enrolee": {"--key"},
        "connect": {"--psk", "--km", "--k", "--opc"},
        "enrol": {"--kpm", "--k", "--opc"},
    }
