"""``m2msec gateway serve`` as operators run it: a subprocess on a TOML file, for the
reload and drain tests (tests/test_reload.py, tests/test_drain.py).

The gateway terminates certificate-based TLS (TS-0003 8.2.2.2) for one AE whose
certificate a small CA of ours issued; ``openssl s_client`` is the AE. The data directory
(SA records, the admin socket) is the test's own through ``M2MSEC_HOME``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from m2msec.pki.authority import CertificateAuthority, write_credential
from tests.interop import Program, free_port, spawn, wait_listening

CSE = "/mn-cse-123456"
AE = "Creload-ae"
SNI = "mn-cse-123456.in.provider.com"
CLI = [sys.executable, "-m", "m2msec.cli"]


@dataclass
class Pki:
    """The CA, the gateway's certificate (whose files a reload re-reads) and the AE's."""

    ca: CertificateAuthority
    gw_key: Path
    gw_cert: Path
    ae_key: Path
    ae_cert: Path

    def reissue_gateway(self) -> bytes:
        """A new gateway certificate and key in place of the old files; its PEM."""
        write_credential(self.ca.issue(CSE), self.gw_key.with_suffix(""), overwrite=True)
        return self.gw_cert.read_bytes()


def make_pki(folder: Path) -> Pki:
    ca = CertificateAuthority.init(folder / "ca", domain="in.provider.com")
    gw_key, gw_cert = write_credential(ca.issue(CSE), folder / "gw")
    ae_key, ae_cert = write_credential(ca.issue(f"{CSE}/{AE}"), folder / "ae")
    return Pki(ca, gw_key, gw_cert, ae_key, ae_cert)


def write_config(
    folder: Path, pki: Pki, backend: str, *, port: int | None = None, extra: str = ""
) -> tuple[Path, int]:
    """The gateway's TOML (one tls:// certificate listener); its path and port."""
    port = port or free_port()
    toml = folder / "gateway.toml"
    toml.write_text(
        "[gateway]\n"
        f'listen = ["tls://127.0.0.1:{port}"]\n'
        f'backend = "{backend}"\n'
        f'cse_id = "{CSE}"\n'
        'in_domain = "in.provider.com"\n'
        f"{extra}"
        "[certificates]\n"
        f'cert = "{pki.gw_cert}"\nkey = "{pki.gw_key}"\nca = "{pki.ca.cert_path}"\n'
        "[sa]\n"
        f'admin_socket = "{folder / "adm.sock"}"\n'
    )
    return toml, port


@asynccontextmanager
async def gateway_process(config: Path, port: int) -> AsyncIterator[Program]:
    """``m2msec gateway serve -c config``, listening; stopped (SIGTERM) on the way out."""
    async with spawn([*CLI, "gateway", "serve", "-c", str(config)], line_buffered=True) as gw:
        await wait_listening(port, gw, timeout=30.0)
        yield gw


def s_client(pki: Pki, port: int, *extra: str) -> list[str]:
    """openssl s_client as the AE (its certificate), checking the gateway's."""
    return [
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
        "-cert", str(pki.ae_cert), "-key", str(pki.ae_key), "-CAfile", str(pki.ca.cert_path),
        "-servername", SNI, "-verify_return_error", *extra,
    ]  # fmt: skip


def served_certificate(output: str) -> bytes:
    """The PEM of the certificate s_client was shown ("Server certificate")."""
    match = re.search(
        r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", output, re.DOTALL
    )
    assert match, output
    return match.group(0).encode()


def registration(base: str, rn: str, *, close: bool = False) -> bytes:
    body = json.dumps({"m2m:ae": {"rn": rn, "api": "Nreload", "rr": False, "srv": ["3"]}})
    head = (
        f"POST {base} HTTP/1.1\r\nHost: {SNI}\r\n"
        f"X-M2M-Origin: {AE}\r\nX-M2M-RI: reg-1\r\nX-M2M-RVI: 3\r\n"
        "Content-Type: application/json;ty=2\r\nAccept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return (head + body).encode()


def retrieve(target: str, ri: str) -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {SNI}\r\nX-M2M-Origin: {AE}\r\n"
        f"X-M2M-RI: {ri}\r\nX-M2M-RVI: 3\r\nAccept: application/json\r\n\r\n"
    ).encode()


def rscs(output: str) -> list[str]:
    return re.findall(r"X-M2M-RSC:\s*(\d+)", output, re.IGNORECASE)
