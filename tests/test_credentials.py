"""The initiator's credentials table (TR-0038 7.1.2; :mod:`m2msec.config.credentials`) and
Entity A built from it (:mod:`m2msec.config.initiators`), through ``m2msec connect``.

Parsing and every refusal name the file, the entry and the field and never a key; the
matching order of the module docstring is pinned entry by entry; a literal key needs a
0600 file; and one table takes ``m2msec connect`` to three real peers (two ``openssl
s_server -psk`` with different KpsaId/Kpsa, one ``openssl s_server`` with a CSE-ID
certificate), each with the pair that belongs to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.cli.main import app
from m2msec.config.credentials import (
    CertificateSettings,
    Credential,
    Credentials,
    GbaSettings,
    MafSettings,
    PskSettings,
    load_credentials,
)
from m2msec.config.initiators import CredentialUnavailable, build_initiator
from m2msec.errors import ConfigurationError
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.tls.context import Framework
from m2msec.tls.profiles import Transport
from tests.interop import HOST, free_port, require, spawn, wait_listening

KPSA_A = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"
ID_A = "AE123456789012-Light@in.provider.com"
KPSA_B = "12345678abcdefab12345678abcdefab"
ID_B = "AE123456789015-Light@in.provider.com"
KE_ID = "0123456789abcdef0123456789abcdef@mef.in.provider.com"  # hexBinary@MEF-FQDN


def write_table(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def key_file(path: Path, hex_key: str, mode: int = 0o600) -> Path:
    path.write_text(hex_key + "\n")
    path.chmod(mode)
    return path


def table(text: str, tmp_path: Path, mode: int = 0o600) -> Credentials:
    found = load_credentials(write_table(tmp_path / "credentials.toml", text, mode))
    assert found is not None
    return found


# ----------------------------------------------------------------- parsing


def test_each_framework_parses_with_paths_under_the_file(tmp_path: Path) -> None:
    for name in ("a.hex", "km.hex", "k.hex", "opc.hex", "me.pem", "me.key", "ca.pem"):
        key_file(tmp_path / name, "00112233445566778899aabbccddeeff")
    creds = table(
        f"""
[peers."https://gw.home.arpa:8443"]
id_b = "/mn-cse-123456"
server_name = "mn-cse-123456.in.provider.com"
tls12 = true
psk = {{ psk_identity = "{ID_A}", key_file = "a.hex" }}

[peers."/in-cse"]
in_domain = "in.provider.com"
certificate = {{ cert = "me.pem", key = "me.key", ca = "ca.pem" }}

[peers."https://in.provider.com:443"]
id_b = "/in-cse"
[peers."https://in.provider.com:443".maf]
url = "tls://maf.provider.com:8445"
km_id = "smartphone@maf.provider.com"
km_file = "km.hex"
cse_id = "/mn-cse-9"

[peers."https://naf.in.provider.com".gba]
bsf = "http://127.0.0.1:8081"
impi = "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"
k_file = "k.hex"
opc_file = "opc.hex"
sqn = "000000000020"
uicc = true

[peers."https://ke.example.org:8443"]
id_b = "/mn-cse-1"
psk = {{ psk_identity = "{KE_ID}" }}
""",
        tmp_path,
    )
    assert len(creds) == 5
    psk = creds.for_peer("https://gw.home.arpa:8443")
    assert psk is not None and isinstance(psk.framework, PskSettings)
    assert psk.framework.psk_identity == ID_A
    assert psk.framework.key.file == tmp_path / "a.hex"
    assert (psk.id_b, psk.server_name, psk.tls12) == ("/mn-cse-123456", psk.server_name, True)
    assert psk.entry == "https://gw.home.arpa:8443"
    assert psk.source == str(tmp_path / "credentials.toml")
    cert = creds.for_peer("https://10.0.0.1:8443", "/in-cse")
    assert cert is not None and isinstance(cert.framework, CertificateSettings)
    assert cert.framework.ca == tmp_path / "ca.pem" and cert.id_b == "/in-cse"
    maf = creds.for_peer("https://in.provider.com")
    assert maf is not None and isinstance(maf.framework, MafSettings)
    assert (maf.framework.host, maf.framework.port) == ("maf.provider.com", 8445)
    assert maf.framework.cse_id == "/mn-cse-9" and maf.framework.km.file == tmp_path / "km.hex"
    gba = creds.for_peer("https://naf.in.provider.com:443")
    assert gba is not None and isinstance(gba.framework, GbaSettings)
    assert gba.framework.uicc and gba.framework.sqn == "000000000020"
    assert gba.framework.k.file == tmp_path / "k.hex"
    ke = creds.for_peer("https://ke.example.org:8443")
    assert ke is not None and isinstance(ke.framework, PskSettings)
    assert ke.framework.key.from_enrolee_store  # a KeID of m2msec enrol: Kpsa from its store
    # What the CLI prints names the entry and the key id, never a key.
    assert psk.describe() == (
        f"entry 'https://gw.home.arpa:8443' of {tmp_path / 'credentials.toml'}: psk, {ID_A}"
    )


GW = '[peers."https://gw"]\n'
AT = 'peers."https://gw"'
PSK = 'psk = {psk_identity = "a@b.example", key = "00"}\n'
MAF = 'maf = {url = "tls://maf:1", km_id = "a@maf.example", km = "00"}\n'
GBA = 'gba = {bsf = "http://b:1", impi = "i", k = "00", opc = "00"'
MALFORMED = [
    ("[other]\nx = 1\n", "unknown key 'other'"),
    ('peers = "x"\n', "peers must be a table"),
    ('[peers."ftp://gw:21"]\n', 'peers."ftp://gw:21": scheme ftp://'),
    ('[peers."https://gw:8443/x"]\n', "no path, or /*"),
    ('[peers."https://gw:99999"]\n', "port '99999' is not 1-65535 or *"),
    ('[peers."https://g*w:1"]\n', "a host wildcard is '*' or '*.domain'"),
    ('[peers."https://*.:1"]\n', 'peers."https://*.:1"'),
    ('[peers."gw.home.arpa"]\n', "write a URL pattern"),
    ('[peers."/bad/cse/id/x"]\n', 'peers."/bad/cse/id/x"'),
    (GW + "psk = 1\n", f"{AT}.psk: must be a table"),
    (GW + 'id_b = "/mn-cse-1"\n', "needs exactly one of psk, certificate, maf, gba (found none)"),
    (GW + PSK + 'certificate = {cert = "x", key = "y", ca = "z"}\n', "(found psk, certificate)"),
    (GW + 'idb = "/x"\n', f"unknown key '{AT}.idb' (did you mean 'id_b'?)"),
    (GW + 'psk = {identity = "a@b.c"}\n', f"unknown key '{AT}.psk.identity'"),
    (GW + 'psk = {key = "00"}\n', f"{AT}.psk.psk_identity: missing"),
    (GW + 'psk = {psk_identity = "no at sign", key = "00"}\n', f"{AT}.psk.psk_identity"),
    (GW + PSK.replace("}", ', key_file = "k"}'), f"{AT}.psk.key: give key or key_file, not both"),
    (GW + PSK.replace('key = "00"', 'key_file = "no.hex"'), f"{AT}.psk.key_file: no such file"),
    (GW + 'psk = {psk_identity = "a@b.example"}\n', f"{AT}.psk: give key_file"),
    (GW + PSK.replace('"00"', '"zz"'), f"{AT}.psk.key: the Kpsa is not hexadecimal"),
    (GW + PSK.replace('"00"', '"' + "00" * 65 + '"'), f"{AT}.psk.key: the Kpsa must be 1 to 64"),
    (GW + 'certificate = {cert = "c.pem", key = "c.pem"}\n', f"{AT}.certificate.ca: missing"),
    (
        GW + 'certificate = {cert = "c.pem", key = "c.pem", ca = "c.pem"}\n',
        f"{AT}.certificate.cert: no such file",
    ),
    (GW + MAF.replace("tls://", "https://"), f"{AT}.maf.url: 'https://maf:1': write tls://"),
    (GW + MAF.replace('km_id = "a@maf.example", ', ""), f"{AT}.maf.km_id: missing"),
    (GW + MAF.replace("km = ", "kc = "), f"unknown key '{AT}.maf.kc'"),
    (GW + GBA.replace(' k = "00",', "") + "}\n", f"{AT}.gba.k_file: missing"),
    (GW + GBA + ', sqn = "01"}\n', f"{AT}.gba.sqn: SQN_MS is 6 octets"),
    (GW + GBA.replace("http://", "tls://") + "}\n", f"{AT}.gba.bsf"),
    (GW + 'id_b = "/a/b/c"\n' + PSK, f"{AT}.id_b"),
    (GW + 'server_name = "not a name"\n' + PSK, f"{AT}.server_name"),
    ('[peers."/in-cse"]\nid_b = "/in-cse"\n' + PSK, 'peers."/in-cse".id_b: the entry is keyed'),
    (GW + 'tls12 = "yes"\n' + PSK, f"{AT}.tls12: must be true or false"),
    (
        GW + PSK + '[peers."https://GW:443/*"]\n' + PSK,
        "entries 'https://gw' and 'https://GW:443/*' name the same peers",
    ),
    ('[peers."/mn-cse-1"]\n' + PSK + '[peers."//in.provider.com/mn-cse-1"]\n' + PSK, "the same"),
    ("[peers.\n", "invalid TOML"),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED)
def test_malformed_tables_are_refused_naming_file_entry_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write_table(tmp_path / "creds.toml", text)
    with pytest.raises(ConfigurationError) as caught:
        load_credentials(path)
    assert str(caught.value).startswith(str(path)), caught.value
    assert message in str(caught.value), caught.value


def test_missing_file_is_an_error_only_when_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="config file not found"):
        load_credentials(tmp_path / "none.toml")
    assert load_credentials(tmp_path / "none.toml", required=False) is None
    # The default is credentials.toml in $M2MSEC_HOME (conftest points it at a tmp dir).
    home = Path(os.environ["M2MSEC_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    assert load_credentials(required=False) is None
    write_table(
        home / "credentials.toml", '[peers."*"]\npsk = {psk_identity = "a@b.example", key = "00"}\n'
    )
    found = load_credentials(required=False)
    assert found is not None and len(found) == 1


# ----------------------------------------------------------------- file modes


LITERAL = GW + f'id_b = "/mn-cse-1"\npsk = {{ psk_identity = "{ID_A}", key = "{KPSA_A}" }}\n'
FROM_FILE = GW + f'id_b = "/mn-cse-1"\npsk = {{ psk_identity = "{ID_A}", key_file = "a.hex" }}\n'


def test_a_literal_key_needs_a_private_file(tmp_path: Path) -> None:
    creds = table(LITERAL, tmp_path, 0o600)
    found = creds.for_peer("https://gw")
    assert found is not None and isinstance(found.framework, PskSettings)
    assert found.framework.key.value == bytes.fromhex(KPSA_A)
    assert KPSA_A not in repr(found)
    for mode in (0o640, 0o604):
        path = write_table(tmp_path / "credentials.toml", LITERAL, mode)
        with pytest.raises(ConfigurationError) as caught:
            load_credentials(path)
        text = str(caught.value)
        assert 'peers."https://gw".psk.key: a literal Kpsa needs a private file' in text
        assert f"mode {mode:04o}" in text and "chmod 600" in text
        assert KPSA_A not in text


def test_a_table_others_may_write_is_refused_even_without_keys(tmp_path: Path) -> None:
    key_file(tmp_path / "a.hex", KPSA_A)
    text = FROM_FILE
    assert len(table(text, tmp_path, 0o644)) == 1  # readable by others: fine, no key in it
    for mode in (0o664, 0o646):
        path = write_table(tmp_path / "credentials.toml", text, mode)
        with pytest.raises(ConfigurationError, match="group or others may write it"):
            load_credentials(path)


def test_a_key_file_others_may_read_draws_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file(tmp_path / "a.hex", KPSA_A, 0o644)
    text = FROM_FILE
    found = table(text, tmp_path).for_peer("https://gw")
    assert found is not None
    with caplog.at_level(logging.WARNING, logger="m2msec"):
        initiator = build_initiator(found, host="gw")
    assert (
        initiator.profile is not None and initiator.profile.framework is Framework.PROVISIONED_PSK
    )
    assert any("readable by others (mode 0644)" in r.getMessage() for r in caplog.records)
    assert KPSA_A not in caplog.text
    key_file(tmp_path / "a.hex", KPSA_A, 0o600)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="m2msec"):
        build_initiator(found, host="gw")
    assert not caplog.records


# ----------------------------------------------------------------- matching


def psk_entry(identity: str) -> str:
    return f'psk = {{ psk_identity = "{identity}@in.provider.com", key = "00112233" }}\n'


PRECEDENCE = "".join(
    f'[peers."{pattern}"]\n' + (f'id_b = "{id_b}"\n' if id_b else "") + psk_entry(name)
    for pattern, id_b, name in [
        ("https://gw.home.arpa:8443", None, "exact"),
        ("tls://gw.home.arpa:8443", None, "exact-tls"),
        ("https://gw.home.arpa:*", None, "host-any-port"),
        ("https://gw.home.arpa", None, "default-port"),
        ("/mn-cse-123456", None, "by-idb"),
        ("https://*.home.arpa:8443", None, "suffix-port"),
        ("https://*.home.arpa:*", None, "suffix"),
        ("tls://*.home.arpa:*", None, "suffix-tls"),
        ("https://*.lab.home.arpa:*", None, "longer-suffix"),
        ("https://*:*", None, "any-host"),
        ("coaps://gw.home.arpa/*", None, "coaps-default"),
        ("dtls://*:*", None, "any-dtls"),
        ("https://10.0.0.7:8443", "/mn-cse-7", "pinned-idb"),
        ("https://[::1]:8443", None, "ipv6"),
        ("*", None, "catch-all"),
    ]
)


@pytest.mark.parametrize(
    ("url", "id_b", "expected"),
    [
        # 1. host and port named beat everything, the URL's own scheme before its transport.
        ("https://gw.home.arpa:8443/~/x", "/mn-cse-123456", "exact"),
        ("tls://gw.home.arpa:8443", None, "exact-tls"),
        ("https://GW.home.arpa:443", None, "default-port"),  # no port = 443; host case-free
        # 2. the peer's IdB beats a port wildcard and host wildcards.
        ("https://gw.home.arpa:9999", "/mn-cse-123456", "by-idb"),
        ("https://other.example:1", "//in.provider.com/mn-cse-123456", "by-idb"),
        # 3. the host with any port.
        ("https://gw.home.arpa:9999", None, "host-any-port"),
        # 4. host wildcards: longest suffix first, then a named port, then the scheme.
        ("https://lamp.home.arpa:8443", None, "suffix-port"),
        ("https://lamp.home.arpa:9", None, "suffix"),
        ("tls://lamp.home.arpa:9", None, "suffix-tls"),
        ("https://a.lab.home.arpa:8443", None, "longer-suffix"),
        # 5. any host, then the catch-all.
        ("https://elsewhere.example:1", None, "any-host"),
        ("coaps://elsewhere.example:5684", None, "any-dtls"),
        ("coaps://gw.home.arpa/~/x", None, "coaps-default"),
        ("coaps://gw.home.arpa:5685", None, "any-dtls"),
        ("tls://elsewhere.example:1", None, "catch-all"),
        # A URL entry for another IdB does not match; the IPv6 host without brackets.
        ("https://10.0.0.7:8443", "/mn-cse-7", "pinned-idb"),
        ("https://10.0.0.7:8443", "/mn-cse-8", "any-host"),
        ("https://[::1]:8443/x", None, "ipv6"),
    ],
)
def test_the_most_specific_entry_wins(
    tmp_path: Path, url: str, id_b: str | None, expected: str
) -> None:
    found = table(PRECEDENCE, tmp_path).for_peer(url, id_b)
    assert found is not None
    assert isinstance(found.framework, PskSettings)
    assert found.framework.psk_identity == f"{expected}@in.provider.com"


def test_matching_gives_the_entry_idb_and_none_without_a_match(tmp_path: Path) -> None:
    creds = table(
        '[peers."https://gw:8443"]\nid_b = "/mn-cse-1"\n' + psk_entry("a")
        + '[peers."/in-cse"]\n' + psk_entry("b"),
        tmp_path,
    )  # fmt: skip
    by_url = creds.for_peer("https://gw:8443")
    assert by_url is not None and by_url.id_b == "/mn-cse-1"
    assert creds.for_peer("https://gw:8443", "/mn-cse-2") is None  # another peer's pair
    by_id = creds.for_peer("https://10.1.1.1:443", "/in-cse")
    assert by_id is not None and by_id.id_b == "/in-cse"
    assert creds.for_peer("https://gw:8444") is None
    assert creds.for_peer("coaps://gw:8443") is None  # an https entry is not for CoAP
    with pytest.raises(ValueError, match="a peer URL is"):
        creds.for_peer("http://gw:8443")
    with pytest.raises(ValueError):
        creds.for_peer("https://gw:8443", "/not/an/id/at-all")


def test_command_line_values_win_over_the_entry(tmp_path: Path) -> None:
    creds = table(
        '[peers."https://gw"]\nid_b = "/mn-cse-1"\nserver_name = "a.example"\n' + psk_entry("a"),
        tmp_path,
    )
    found = creds.for_peer("https://gw")
    assert found is not None
    mixed = found.overridden(id_b=None, server_name="b.example", in_domain="x.example")
    assert (mixed.id_b, mixed.server_name, mixed.in_domain) == (
        "/mn-cse-1",
        "b.example",
        "x.example",
    )


# ----------------------------------------------------------------- building Entity A


def test_build_needs_idb_and_the_enrolee_store_key(tmp_path: Path) -> None:
    creds = table(
        '[peers."https://gw"]\n' + psk_entry("a")
        + f'[peers."https://ke"]\nid_b = "/mn-cse-1"\npsk = {{ psk_identity = "{KE_ID}" }}\n'
        + '[peers."coaps://gba"]\nserver_name = "gba.example"\n'
        + 'gba = { bsf = "http://b:1", impi = "i", k = "00", opc = "00" }\n',
        tmp_path,
    )  # fmt: skip
    no_idb = creds.for_peer("https://gw")
    assert no_idb is not None
    with pytest.raises(ConfigurationError, match=r"entry 'https://gw': no IdB .*give id_b"):
        build_initiator(no_idb, host="gw")
    dtls = build_initiator(no_idb.overridden(id_b="/mn-cse-1"), host="gw", transport=Transport.DTLS)
    assert dtls.profile is not None and dtls.profile.transport is Transport.DTLS
    enrolled = creds.for_peer("https://ke")
    assert enrolled is not None
    with pytest.raises(CredentialUnavailable, match="is not in the Enrolee store"):
        build_initiator(enrolled, host="ke")
    gba = creds.for_peer("coaps://gba")
    assert gba is not None
    with pytest.raises(ConfigurationError, match="coaps:// takes a psk or certificate"):
        build_initiator(gba, host="gba", transport=Transport.DTLS)


# ----------------------------------------------------------------- through m2msec connect


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(
        tmp_path_factory.mktemp("creds-pki") / "ca", domain="in.provider.com"
    )


def s_server_psk(port: int, identity: str, kpsa: str) -> list[str]:
    return [
        require("openssl"), "s_server", "-accept", str(port), "-nocert", "-www",
        "-psk", kpsa, "-psk_identity", identity,
    ]  # fmt: skip


async def run_connect(home: Path, *argv: str) -> tuple[int, str]:
    env = {**os.environ, "M2MSEC_HOME": str(home), "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "m2msec.cli", "connect", *argv, "--from", "Clight-AE1",
        "--timeout", "5", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.interop
async def test_connect_reaches_three_peers_each_with_its_own_pair_from_one_table(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    key_file(home / "light-a.hex", KPSA_A)
    in_key, in_cert = write_credential(ca.issue("/in-cse"), tmp_path / "in-cse")
    me_key, me_cert = write_credential(ca.issue("/mn-cse-123456/Clight-AE1"), home / "light")
    # The table lives in the data directory ($M2MSEC_HOME/credentials.toml, the default).
    write_table(
        home / "credentials.toml",
        f"""
[peers."https://{HOST}:{port_a}"]          # peer A: this listener exactly
id_b = "/mn-cse-a"
psk = {{ psk_identity = "{ID_A}", key_file = "light-a.hex" }}

[peers."https://{HOST}:*"]                 # peer B: any other port of this host
psk = {{ psk_identity = "{ID_B}", key = "{KPSA_B}" }}

[peers."/in-cse"]                          # peer C: by its CSE-ID, beats the port wildcard
certificate = {{ cert = "light.pem", key = "light.key", ca = "{ca.cert_path}" }}
""",
    )
    cert_server = [
        require("openssl"), "s_server", "-accept", str(port_c), "-www",
        "-cert", str(in_cert), "-key", str(in_key), "-CAfile", str(ca.cert_path), "-Verify", "1",
    ]  # fmt: skip
    async with (
        spawn(s_server_psk(port_a, ID_A, KPSA_A)) as a,
        spawn(s_server_psk(port_b, ID_B, KPSA_B)) as b,
        spawn(cert_server) as c,
    ):
        for port, program in ((port_a, a), (port_b, b), (port_c, c)):
            await wait_listening(port, program)
        code_a, out_a = await run_connect(home, f"https://{HOST}:{port_a}/~/mn-cse-a")
        code_b, out_b = await run_connect(home, f"https://{HOST}:{port_b}/x", "--id-b", "/mn-cse-b")
        code_c, out_c = await run_connect(home, f"https://{HOST}:{port_c}/x", "--id-b", "/in-cse")
        # Command-line options win over the table: A's pair towards B is refused by B.
        code_w, out_w = await run_connect(
            home, f"https://{HOST}:{port_b}/x", "--id-b", "/mn-cse-b",
            "--psk-identity", ID_A, "--psk", KPSA_A,
        )  # fmt: skip
    table_path = home / "credentials.toml"
    assert code_a == 0, out_a
    assert f"credentials: entry 'https://{HOST}:{port_a}' of {table_path}: psk, {ID_A}" in out_a
    assert "provisioned-psk" in out_a and "/mn-cse-a (cse)" in out_a and "HTTP 200" in out_a
    assert code_b == 0, out_b
    assert f"entry 'https://{HOST}:*' of {table_path}: psk, {ID_B}" in out_b
    assert "/mn-cse-b (cse)" in out_b and ID_B in out_b
    assert code_c == 0, out_c
    assert f"entry '/in-cse' of {table_path}: certificate" in out_c
    assert "certificate" in out_c and "/in-cse (cse)" in out_c
    assert code_w == 1 and "security association failed" in out_w, out_w
    assert "credentials:" not in out_w
    for out in (out_a, out_b, out_c, out_w):
        ours = out.split("<HTML>")[0]  # s_server -www echoes its own command line, -psk too
        assert KPSA_A not in ours and KPSA_B not in ours
    assert me_key.exists() and me_cert.exists()


def test_connect_says_when_no_entry_matches_or_the_table_is_bad(tmp_path: Path) -> None:
    runner = CliRunner()
    path = write_table(
        tmp_path / "creds.toml", '[peers."https://gw:8443"]\nid_b = "/mn-cse-1"\n' + psk_entry("a")
    )
    argv = ["connect", "https://127.0.0.1:1/x", "--from", "Cx", "--credentials", str(path)]
    got = runner.invoke(app, argv)
    assert got.exit_code == 2, got.output
    assert f"no entry of {path} matches https://127.0.0.1:1" in " ".join(got.output.split())
    write_table(path, '[peers."https://127.0.0.1:1"]\npsk = {psk_identity = "a@b.example"}\n')
    got = runner.invoke(app, argv)
    assert got.exit_code == 2 and 'peers."https://127.0.0.1:1".psk: give key_file' in got.output
    got = runner.invoke(app, [*argv[:-1], str(tmp_path / "missing.toml")])
    assert got.exit_code == 2 and "config file not found" in got.output
    # No option and no table at all: say both ways of giving a credential.
    got = runner.invoke(app, argv[:4])
    assert got.exit_code == 1 and "or a credentials table" in " ".join(got.output.split())
    # The entry is used (and named) even for an unreachable peer; the key never shows.
    write_table(path, LITERAL.replace("https://gw", "https://127.0.0.1:1"))
    got = runner.invoke(app, argv)
    assert got.exit_code == 1 and "cannot reach 127.0.0.1:1" in got.output, got.output
    assert "credentials: entry 'https://127.0.0.1:1'" in got.output and KPSA_A not in got.output


def test_options_become_the_same_credential(tmp_path: Path) -> None:
    from m2msec.cli.connect import options_credential

    made = options_credential(
        psk_identity=ID_A, psk=KPSA_A, cert=None, key=None, ca=None, gba=None, maf=None,
        maf_fqdn=None, km_id=None, km=None, target_id=None, cse_id=None, id_b="/mn-cse-1",
        server_name=None, in_domain=None, tls12=True,
    )  # fmt: skip
    assert isinstance(made, Credential) and isinstance(made.framework, PskSettings)
    assert made.framework.key.value == bytes.fromhex(KPSA_A) and made.tls12
    assert made.describe() == f"the command line: psk, {ID_A}"
    profile = build_initiator(made, host="127.0.0.1").profile
    assert profile is not None and profile.server_name == "mn-cse-1.in.provider.com"


def test_the_example_of_docs_credentials_md_parses(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "credentials.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    for name in ("light.hex", "lamp.hex", "mn-cse.pem", "mn-cse.key", "ca.pem", "km.hex",
                 "usim-k.hex", "usim-opc.hex"):  # fmt: skip
        key_file(tmp_path / name, "00112233445566778899aabbccddeeff")
    creds = table(example, tmp_path, 0o644)
    assert len(creds) == 5
    lamp = creds.for_peer("coaps://lamp.home.arpa:5684")
    assert lamp is not None and lamp.entry == "coaps://*.home.arpa:*"
    in_cse = creds.for_peer("https://10.0.0.1:443", "/in-cse")
    assert in_cse is not None and isinstance(in_cse.framework, CertificateSettings)
    maf = creds.for_peer("https://in.provider.com:8443", "/in-cse")
    assert maf is not None and isinstance(maf.framework, MafSettings)
    gba = creds.for_peer("https://naf.in.provider.com:8443")
    assert gba is not None and isinstance(gba.framework, GbaSettings)
