"""The MAF Handshake and Key Registration (TS-0003 8.8.2.2, 8.8.2.7) with programs we did
not write as Entity A: ``openssl s_client`` and ``gnutls-cli``.

Each program runs TLS-PSK with psk_identity = KmId and psk = Km against our MAF, prints the
RFC 5705 exporter ``EXPORTER-oneM2M-Connection`` (48 octets, no context) of its session,
and sends the Key Registration request (without keyValue) over that session from its
standard input. The test then splits the printed keying material itself (TS-0003 10.3.1:
KcID = first 16 octets, Kc = last 32) and checks that the relativeKeyID the MAF answered is
hexBinary(KcID) and that the Kc the MAF stored (read back from the store and unsealed)
equals the program's Kc. Nothing is copied from our side.

Missing programs fail these tests (tests/interop.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from m2msec.config.maf import MafConfig
from m2msec.maf.audit import read_audit_log
from m2msec.maf.store import MafStore
from m2msec.servers.maf import MafServer
from tests.interop import EXPORT_LABEL, EXPORT_LEN, HOST, keying_material, run, spawn
from tests.test_maf_server import IN_CSE, KM, KM_ID, MAF_FQDN, key_reg

pytestmark = pytest.mark.interop

STEP = 10.0
WRONG_KM_HEX = "ee" * 32
GNUTLS_12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:-MAC-ALL:+AES-128-CBC:+SHA256"
# TLS 1.3: OpenSSL accepts only psk_dhe_ke, so the (EC)DHE-PSK key exchanges.
GNUTLS_13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK:+DHE-PSK"


@pytest.fixture
async def maf(tmp_path: Path) -> AsyncIterator[MafServer]:
    store = MafStore(tmp_path / "maf.db", cache_ttl=0)
    store.add_client(KM_ID, KM, "/mn-cse-123456/Clight-AE1")
    store.add_entity_b(IN_CSE)
    cfg = MafConfig(
        MAF_FQDN, str(tmp_path / "maf.db"), listen=f"tls://{HOST}:0", retrieval_listen=None
    )
    server = MafServer(cfg, store)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
        store.close()


def registration_request() -> bytes:
    """The Key Registration request, written to the program's standard input as is (CRLF
    line ends; the programs' own -crlf options are not used: gnutls-cli 3.7's mangles the
    line after the first). The body ends with CRLF, counted in Content-Length, because
    gnutls-cli sends a line only once it is complete."""
    body = json.dumps(key_reg(hours=2)) + "\r\n"
    head = (
        "POST /maf/keys HTTP/1.1\r\n"
        f"Host: {MAF_FQDN}\r\n"
        "X-M2M-Origin: Clight-AE1\r\n"
        "X-M2M-RI: interop-1\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return (head + body).encode()


def check_stored_key(server: MafServer, output: str, relative_id: str) -> None:
    """relativeKeyID == hex(KcID) and the stored Kc == Kc, from the program's own export."""
    material = bytes.fromhex(keying_material(output))
    assert len(material) == EXPORT_LEN
    kc_id, kc = material[:16], material[16:]
    assert relative_id == kc_id.hex()
    stored = server.store.get_key(relative_id)
    assert stored is not None and stored.kc == kc
    assert stored.km_id == KM_ID.lower() and stored.target_ids == (IN_CSE,)
    issued = [r for r in read_audit_log(server.audit_path) if r["event"] == "key-issued"]
    assert issued and issued[-1]["kcId"] == f"{relative_id}@{MAF_FQDN}"


ANSWER = r'"relativeKeyID":"([0-9a-f]{32})"'


@pytest.mark.parametrize(
    ("args", "protocol"),
    [
        (["-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256"], "TLSv1.2"),
        (["-tls1_2", "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0"], "TLSv1.2"),
        (["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"], "TLSv1.3"),
    ],
    ids=["tls12-cbc", "tls12-ccm8", "tls13"],
)
async def test_openssl_s_client_as_entity_a(maf: MafServer, args: list[str], protocol: str) -> None:
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"{HOST}:{maf.client_port}",
        "-servername",
        MAF_FQDN,
        "-psk_identity",
        KM_ID,
        "-psk",
        KM.hex(),
        "-keymatexport",
        EXPORT_LABEL,
        "-keymatexportlen",
        str(EXPORT_LEN),
        *args,
    ]
    async with spawn(argv) as client:
        await client.expect(r"Keying material: [0-9A-F]+\r?\n", STEP)
        client.write(registration_request())
        m = await client.expect(ANSWER, STEP)
        assert re.search(r"^HTTP/1\.1 201 ", client.output, re.MULTILINE), client.output
        assert re.search(r"^X-M2M-RSC: 2001\r?$", client.output, re.MULTILINE | re.I)
        assert re.search(r"^X-M2M-RI: interop-1\r?$", client.output, re.MULTILINE | re.I)
        # A second exporter-based registration in the same session: 4105.
        client.write(registration_request())
        await client.expect(r"X-M2M-RSC: 4105", STEP)
        client.close_stdin()
        await client.wait(STEP)
    assert protocol in client.output
    check_stored_key(maf, client.output, m.group(1))
    assert maf.stats.keys_issued == 1


@pytest.mark.parametrize(
    ("priority", "protocol"), [(GNUTLS_12, "TLS1.2"), (GNUTLS_13, "TLS1.3")], ids=["tls12", "tls13"]
)
async def test_gnutls_cli_as_entity_a(maf: MafServer, priority: str, protocol: str) -> None:
    argv = [
        "gnutls-cli",
        "-p",
        str(maf.client_port),
        HOST,
        "--sni-hostname",
        MAF_FQDN,
        "--pskusername",
        KM_ID,
        "--pskkey",
        KM.hex(),
        "--priority",
        priority,
        "--keymatexport",
        EXPORT_LABEL,
        "--keymatexportsize",
        str(EXPORT_LEN),
    ]
    async with spawn(argv, line_buffered=True) as client:
        await client.expect(r"Key material: [0-9A-Fa-f]+\r?\n", STEP)
        # gnutls-cli ends the session at EOF: stdin stays open until the answer is in.
        client.write(registration_request())
        m = await client.expect(ANSWER, STEP)
        client.close_stdin()
        await client.wait(STEP)
    assert f"PSK authentication. Connected as '{KM_ID}'" in client.output
    assert f"({protocol}-" in client.output, client.output
    check_stored_key(maf, client.output, m.group(1))


@pytest.mark.parametrize(
    ("identity", "key_hex"),
    [(KM_ID, WRONG_KM_HEX), ("nobody@maf.in.provider.com", KM.hex())],
    ids=["wrong-km", "unknown-kmid"],
)
async def test_refused_handshakes_issue_nothing(
    maf: MafServer, identity: str, key_hex: str
) -> None:
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"{HOST}:{maf.client_port}",
        "-tls1_2",
        "-psk_identity",
        identity,
        "-psk",
        key_hex,
    ]
    result = await run(argv, stdin=registration_request(), timeout=STEP)
    assert result.returncode != 0, result.describe()
    assert '"relativeKeyID"' not in result.output
    assert maf.store.count_keys() == 0
    # An honest Entity A right after is served.
    good = [
        *argv[:5],
        "-psk_identity",
        KM_ID,
        "-psk",
        KM.hex(),
        "-keymatexport",
        EXPORT_LABEL,
        "-keymatexportlen",
        "48",
    ]
    async with spawn(good) as client:
        await client.expect(r"Keying material: [0-9A-F]+\r?\n", STEP)
        client.write(registration_request())
        m = await client.expect(ANSWER, STEP)
    check_stored_key(maf, client.output, m.group(1))
