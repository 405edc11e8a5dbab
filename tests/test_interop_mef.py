"""The MEF's bootstrap and Enrolment Exchange (TS-0003 8.3.2.1, seed 004) with programs we
did not write as the Enrolee: ``openssl s_client`` and ``gnutls-cli``.

Each program runs the bootstrap handshake against our MEF (``m2msec mef serve`` as a
separate process, or :class:`MefServer` in-process), prints its RFC 5705 exporter
``EXPORTER-oneM2M-Bootstrap`` (48 octets, no context) and sends the Enrolment Exchange over
its standard input. The test then splits the printed keying material itself (10.3.1:
RelativeKeID = octets 0-15, Ke = octets 16-47), checks the KeID answered is
hexBinary(RelativeKeID)@MEF-FQDN, fetches the credential as the Enrolment Target over mutual
TLS with our client and checks it equals Kpsa (10.3.3) or Km (10.3.2) derived from the
program's Ke. Nothing is copied from our side. Missing programs fail (tests/interop.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiocoap.numbers.types import CON

from m2msec.bindings.coap.mapping import onem2m_request_message
from m2msec.mef.keys import derive_for_target
from m2msec.servers.mef import MefServer
from tests.interop import HOST, free_port, keying_material, run, spawn, wait_listening
from tests.test_mef_server import (
    CERT_ENROLEE,
    KPM,
    KPM_ID,
    MAF_FQDN,
    MAF_KPM_ID,
    MEF_FQDN,
    Pki,
    fetch,
    make_pki,
    running_mef,
    seed_store,
    target,
)

pytestmark = pytest.mark.interop

STEP = 10.0
LABEL = "EXPORTER-oneM2M-Bootstrap"
ANSWER = r'"keID":"([0-9a-f]{32})@([a-z0-9.-]+)"'
GNUTLS_12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:-MAC-ALL:+AES-128-CBC:+SHA256"
GNUTLS_13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK:+DHE-PSK"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("mef-interop-pki"))


@pytest.fixture
async def mef(pki: Pki, tmp_path: Path) -> AsyncIterator[MefServer]:
    async with running_mef(pki, tmp_path) as server:
        yield server


def enrolment_request(body: object = None, rid: str = "enrol-1") -> bytes:
    """The Enrolment Exchange as the program's standard input (CRLF line ends, the body
    ending with CRLF so that gnutls-cli sends it: tests/test_interop_maf.py)."""
    data = json.dumps(body or {"mefEnrolReq": {}}) + "\r\n"
    head = (
        "POST /mef/enrolment HTTP/1.1\r\n"
        f"Host: {MEF_FQDN}\r\n"
        "X-M2M-Origin: Cdevice-1\r\n"
        f"X-M2M-RI: {rid}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        "\r\n"
    )
    return (head + data).encode()


def s_client(port: int, *extra: str, identity: str = KPM_ID, key_hex: str = KPM.hex()) -> list[str]:
    return [
        "openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", MEF_FQDN,
        "-psk_identity", identity, "-psk", key_hex,
        "-keymatexport", LABEL, "-keymatexportlen", "48", *extra,
    ]  # fmt: skip


async def enrol_with(argv: list[str], body: object = None) -> tuple[str, bytes, str]:
    """Run ``argv`` (s_client), enrol over it; (KeID answered, its export, output)."""
    async with spawn(argv) as client:
        await client.expect(r"Keying material: [0-9A-F]+\r?\n", STEP)
        client.write(enrolment_request(body))
        m = await client.expect(ANSWER, STEP)
        client.write(enrolment_request(body, "enrol-2"))  # one Ke per handshake
        await client.expect(r"X-M2M-RSC: 4105", STEP)
        client.close_stdin()
        await client.wait(STEP)
    exported = bytes.fromhex(keying_material(client.output))
    assert len(exported) == 48
    assert m.group(1) == exported[:16].hex() and m.group(2) == MEF_FQDN
    return f"{m.group(1)}@{m.group(2)}", exported, client.output


async def check_fetch(
    port_server: MefServer | int, pki: Pki, ke_id: str, exported: bytes, *, maf: bool = False
) -> None:
    """Fetch as the target with our client; the credential is the program's Kpsa or Km."""
    name, suid, origin = (MAF_FQDN, 21, MAF_FQDN) if maf else ("/in-cse", 22, "/in-cse")
    client = await target(port_server, pki.creds[name])
    try:
        answer = await fetch(client, ke_id, suid, origin)
    finally:
        await client.close()
    assert answer.rsc == 2000, answer.body
    expected = derive_for_target(exported[16:], name, enrolee_b=not maf)
    assert answer.json()["fetchCredentials"]["credential"] == expected.hex()


async def test_openssl_enrolee_against_mef_serve(pki: Pki, tmp_path: Path) -> None:
    """``m2msec mef serve`` as a real process; s_client enrols, our target fetches."""
    seed_store(tmp_path / "mef.db", kek=None).close()  # the process reads the KEK file
    enrolee_port, cert_port, target_port = free_port(), free_port(), free_port()
    config = tmp_path / "mef.toml"
    config.write_text(
        f"""[mef]
fqdn = "{MEF_FQDN}"
store = "mef.db"
enrolee_listen = ["tls://{HOST}:{enrolee_port}",
                  "tls://{HOST}:{cert_port}?framework=certificate"]
target_listen = "tls://{HOST}:{target_port}"

[certificates]
cert = "{pki.mef_cert}"
key = "{pki.mef_key}"
ca = "{pki.ca.cert_path}"
"""
    )
    argv = [sys.executable, "-m", "m2msec.cli", "mef", "serve", "--config", str(config)]
    async with spawn(argv) as server:
        await wait_listening(target_port, server)
        await server.expect("m2msec MEF", STEP)
        ke_id, exported, out = await enrol_with(s_client(enrolee_port, "-tls1_2"))
        assert "TLSv1.2" in out
        await check_fetch(target_port, pki, ke_id, exported)
        await server.stop()
    assert "stopped: 1 enrolments, 1 credentials fetched" in server.output, server.output
    assert KPM.hex() not in server.output and exported[16:].hex() not in server.output


async def test_mef_serve_options(tmp_path: Path) -> None:
    """The options override the file; without --init a missing store is refused (exit 1),
    a configuration error exits 2."""
    port = free_port()
    db = tmp_path / "new.db"
    argv = [
        sys.executable, "-m", "m2msec.cli", "mef", "serve", "--fqdn", MEF_FQDN,
        "--listen", f"tls://{HOST}:{port}", "--target-listen", "off", "--store", str(db),
    ]  # fmt: skip
    refused = await run(argv, timeout=STEP * 3)
    assert refused.returncode == 1 and "does not exist" in refused.output, refused.describe()
    bad = await run([*argv, "--listen", "http://127.0.0.1:1"], timeout=STEP * 3)
    assert bad.returncode == 2 and "tls:// or dtls://" in bad.output, bad.describe()
    async with spawn([*argv, "--init"]) as server:
        await wait_listening(port, server)
        await server.expect(f"enrolee listener +tls://{HOST}:{port}", STEP)
    assert db.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256"],
        ["-tls1_2", "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0"],
        ["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
    ],
    ids=["tls12-cbc", "tls12-ccm8", "tls13"],
)
async def test_openssl_psk_enrolee(mef: MefServer, pki: Pki, args: list[str]) -> None:
    ke_id, exported, _ = await enrol_with(s_client(mef.listener("enrolee").port, *args))
    await check_fetch(mef, pki, ke_id, exported)


async def test_openssl_enrolee_for_a_maf(mef: MefServer, pki: Pki) -> None:
    argv = s_client(mef.listener("enrolee").port, identity=MAF_KPM_ID)
    ke_id, exported, _ = await enrol_with(argv, {"mefEnrolReq": {"mafID": MAF_FQDN}})
    await check_fetch(mef, pki, ke_id, exported, maf=True)


async def test_openssl_certificate_enrolee(mef: MefServer, pki: Pki) -> None:
    cert, key = pki.files[CERT_ENROLEE][1], pki.files[CERT_ENROLEE][0]
    argv = [
        "openssl", "s_client", "-connect", f"{HOST}:{mef.listener('enrolee', 'certificate').port}",
        "-servername", MEF_FQDN, "-cert", str(cert), "-key", str(key),
        "-CAfile", str(pki.ca.cert_path), "-verify_return_error",
        "-keymatexport", LABEL, "-keymatexportlen", "48",
    ]  # fmt: skip
    ke_id, exported, _ = await enrol_with(argv)
    await check_fetch(mef, pki, ke_id, exported)


@pytest.mark.parametrize("priority", [GNUTLS_12, GNUTLS_13], ids=["tls12", "tls13"])
async def test_gnutls_cli_enrolee(mef: MefServer, pki: Pki, priority: str) -> None:
    argv = [
        "gnutls-cli", "-p", str(mef.listener("enrolee").port), HOST,
        "--sni-hostname", MEF_FQDN, "--pskusername", KPM_ID, "--pskkey", KPM.hex(),
        "--priority", priority, "--keymatexport", LABEL, "--keymatexportsize", "48",
    ]  # fmt: skip
    async with spawn(argv, line_buffered=True) as client:
        await client.expect(r"Key material: [0-9A-Fa-f]+\r?\n", STEP)
        client.write(enrolment_request())
        m = await client.expect(ANSWER, STEP)
        client.close_stdin()
        await client.wait(STEP)
    exported = bytes.fromhex(keying_material(client.output))
    assert m.group(1) == exported[:16].hex()
    await check_fetch(mef, pki, f"{m.group(1)}@{MEF_FQDN}", exported)


def coap_enrolment() -> bytes:
    """The Enrolment Exchange as one confirmable CoAP datagram (TS-0008), for s_client's
    standard input: DTLS carries what one read of it returns as one record."""
    message = onem2m_request_message(
        "POST",
        "/mef/enrolment",
        origin="Cdevice-1",
        request_id="enrol-dtls",
        payload=json.dumps({"mefEnrolReq": {}}).encode(),
    )
    message.mtype = CON
    message.mid = 0x1234
    message.token = b"\x01\x02"
    return bytes(message.encode())


async def test_openssl_dtls_enrolee(mef: MefServer, pki: Pki) -> None:
    """``s_client -dtls1_2``: its export is ours, and its CoAP enrolment is answered."""
    port = mef.listener("enrolee", "psk", "dtls").port
    argv = [
        "openssl", "s_client", "-dtls1_2", "-connect", f"{HOST}:{port}",
        "-psk_identity", KPM_ID, "-psk", KPM.hex(),
        "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0",
        "-keymatexport", LABEL, "-keymatexportlen", "48",
    ]  # fmt: skip
    async with spawn(argv) as client:
        await client.expect(r"Keying material: [0-9A-F]+\r?\n", STEP)
        client.write(coap_enrolment())
        m = await client.expect(ANSWER, STEP)
    exported = bytes.fromhex(keying_material(client.output))
    assert m.group(1) == exported[:16].hex() and m.group(2) == MEF_FQDN
    assert "PSK-AES128-CCM8" in client.output
    await check_fetch(mef, pki, f"{m.group(1)}@{MEF_FQDN}", exported)


@pytest.mark.parametrize(
    ("identity", "key_hex"),
    [(KPM_ID, "ee" * 32), ("nobody@mef.in.provider.com", KPM.hex())],
    ids=["wrong-kpm", "unknown-kpmid"],
)
async def test_refused_bootstrap_then_next_enrolee(
    mef: MefServer, pki: Pki, identity: str, key_hex: str
) -> None:
    port = mef.listener("enrolee").port
    argv = s_client(port, "-tls1_2", identity=identity, key_hex=key_hex)
    result = await run(argv, stdin=enrolment_request(), timeout=STEP)
    assert result.returncode != 0, result.describe()
    assert '"keID"' not in result.output and "alert" in result.output.lower()
    assert mef.store.count_enrolments() == 0
    ke_id, exported, _ = await enrol_with(s_client(port, "-tls1_2"))
    await check_fetch(mef, pki, ke_id, exported)
