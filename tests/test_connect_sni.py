"""SNI from ``m2msec connect`` (docs/readings.md A-11, A-12; TS-0001 6.5.1.1 public domain name).

With an IP-address URL and a CSE-ID as IdB, the initiator sends ``<CSE-ID>.<IN domain>`` as
server_name; ``openssl s_server -trace`` is the peer and shows the ClientHello extension.
"""

from __future__ import annotations

import sys

import pytest

from m2msec.cli.connect import default_server_name
from tests.interop import TR0038_KPSA_HEX, TR0038_KPSA_ID, free_port, require, run, spawn

pytestmark = pytest.mark.interop


def test_default_server_name() -> None:
    assert default_server_name("127.0.0.1", "/mn-cse-123456", "in.provider.com") == (
        "mn-cse-123456.in.provider.com"
    )
    assert default_server_name("gw.example", "/mn-cse-123456", "in.provider.com") == "gw.example"
    assert default_server_name("127.0.0.1", "Clight-AE1", "in.provider.com") is None
    assert default_server_name("::1", None, "in.provider.com") is None


async def test_ip_url_with_cse_id_sends_public_domain_name_as_sni() -> None:
    port = free_port()
    server = [
        require("openssl"), "s_server", "-accept", str(port), "-nocert",
        "-psk", TR0038_KPSA_HEX, "-tls1_2", "-cipher", "PSK-AES128-GCM-SHA256",
        "-trace", "-naccept", "1",
    ]  # fmt: skip
    async with spawn(server) as s_server:
        await s_server.expect("ACCEPT")
        client = [
            sys.executable, "-m", "m2msec.cli", "connect",
            f"https://127.0.0.1:{port}/~/mn-cse-123456", "--from", "Clight-AE1",
            "--id-b", "/mn-cse-123456", "--psk-identity", TR0038_KPSA_ID,
            "--psk", TR0038_KPSA_HEX, "--tls1_2", "--timeout", "3",
        ]  # fmt: skip
        await run(client)
        await s_server.expect(r"extension_type=server_name\(0\)")
        # The name travels in the hex dump, split over lines: join the printable columns.
        dump = s_server.output.split("extension_type=server_name(0)", 1)[1][:400]
        text = "".join(line[-16:] for line in dump.splitlines()[1:4])
        assert "mn-cse-123456.in.provider.com" in text.replace(" ", ""), dump
