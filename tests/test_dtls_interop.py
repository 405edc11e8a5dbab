"""DTLS 1.2 PSK interoperability (RFC 6347, TS-0003 10.2.2) with GnuTLS and OpenSSL tools.

Our asyncio server against ``gnutls-cli --udp`` and ``openssl s_client -dtls1_2``; our
client against ``openssl s_server -dtls1_2``. Each side's RFC 5705 exporter output for
the oneM2M label must match ours. Every subprocess has a deadline and is killed in
``finally``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest

from m2msec.tls.aio_dtls import DTLSAssociation, DTLSServerHandle, dtls_connect, start_dtls_server
from m2msec.tls.profiles import Transport
from tests.helpers import TR0038_IDENTITY, TR0038_KEY, psk_client_profile, psk_server_profile
from tests.interop import free_udp_port, keying_material, spawn, wait_until

pytestmark = pytest.mark.interop

IDENTITY = TR0038_IDENTITY.decode()
KEY_HEX = TR0038_KEY.hex()
LABEL = "EXPORTER-oneM2M-Connection"
GNUTLS_PRIORITY = "NORMAL:-VERS-ALL:+VERS-DTLS1.2:+PSK:+AES-128-CCM-8"
OPENSSL_CIPHERS = "PSK-AES128-CCM8:@SECLEVEL=0"



# TR-0038's row over DTLS (tests/helpers.py); the client sends no SNI.
server_profile = partial(psk_server_profile, transport=Transport.DTLS)
client_profile = partial(psk_client_profile, transport=Transport.DTLS, server_name=None)


@asynccontextmanager
async def echo_server(
    **kw: object,
) -> AsyncIterator[tuple[DTLSServerHandle, list[DTLSAssociation]]]:
    seen: list[DTLSAssociation] = []

    async def echo(assoc: DTLSAssociation) -> None:
        seen.append(assoc)
        while message := await assoc.recv():
            assoc.send(message)

    handle = await start_dtls_server(server_profile(), "127.0.0.1", 0, echo, **kw)  # type: ignore[arg-type]
    async with handle:
        yield handle, seen


def gnutls_cli(port: int, key_hex: str = KEY_HEX, mtu: int | None = None) -> list[str]:
    return [
        "gnutls-cli",
        "--udp",
        *([f"--mtu={mtu}"] if mtu else []),
        "--pskusername",
        IDENTITY,
        "--pskkey",
        key_hex,
        "--priority",
        GNUTLS_PRIORITY,
        "--keymatexport",
        LABEL,
        "--keymatexportsize",
        "48",
        "-p",
        str(port),
        "127.0.0.1",
    ]


# -- our server, their clients ---------------------------------------------------------------
@pytest.mark.parametrize("mtu", [None, 300])
async def test_gnutls_cli_against_our_server(mtu: int | None) -> None:
    server_kw = {"mtu": mtu} if mtu else {}
    async with echo_server(**server_kw) as (srv, seen), spawn(gnutls_cli(srv.port, mtu=mtu)) as cli:
        await cli.expect(r"- Key material: [0-9a-fA-F]+\n")
        await cli.expect(r"Handshake was completed")
        assert "DTLS1.2" in cli.output and "AES-128-CCM-8" in cli.output
        cli.write(b"hello oneM2M over DTLS\n")
        await cli.expect(r"hello oneM2M over DTLS\n")  # the echo (stdin is not copied)
        (assoc,) = seen
        assert assoc.context.protocol == "DTLSv1.2"
        assert assoc.context.cipher_suite == "PSK-AES128-CCM8"
        assert assoc.context.peer_id == "Clight-AE1" and assoc.context.key_id == IDENTITY
        ours = assoc.export_keying_material(LABEL.encode(), 48)
        assert keying_material(cli.output) == ours.hex()
        # End of input: gnutls-cli sends close_notify and the association ends here too.
        cli.close_stdin()
        await asyncio.wait_for(assoc.wait_closed(), 10)
        assert await cli.wait() == 0
        assert srv.server.stats.cookies_sent >= 1


async def test_gnutls_cli_with_a_wrong_key_is_refused() -> None:
    failures: list[str] = []
    async with (
        echo_server(
            handshake_timeout=2.0, on_failure=lambda addr, reason: failures.append(reason)
        ) as (srv, seen),
        spawn(gnutls_cli(srv.port, key_hex="ffffffffffffffff")),
    ):
        await wait_until(lambda: bool(failures), "no refusal reported", 10.0)
        assert failures == ["DTLS handshake timed out (wrong PSK?)"]
        assert not seen and srv.server.peer_count == 0


async def test_openssl_s_client_against_our_server() -> None:
    async with echo_server() as (srv, seen):
        argv = [
            "openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{srv.port}",
            "-psk", KEY_HEX, "-psk_identity", IDENTITY, "-cipher", OPENSSL_CIPHERS,
            "-keymatexport", LABEL, "-keymatexportlen", "48",
        ]  # fmt: skip
        async with spawn(argv) as cli:
            await cli.expect(r"Keying material: [0-9A-Fa-f]+\n")
            cli.write(b"hello from s_client\n")
            await cli.expect(r"hello from s_client\n")
            (assoc,) = seen
            assert assoc.context.cipher_suite == "PSK-AES128-CCM8"
            ours = assoc.export_keying_material(LABEL.encode(), 48)
            assert keying_material(cli.output) == ours.hex()
            cli.close_stdin()
            await asyncio.wait_for(assoc.wait_closed(), 10)
            await cli.wait()


# -- our client, their server ----------------------------------------------------------------
async def test_our_client_against_openssl_s_server() -> None:
    port = free_udp_port()
    argv = [
        "openssl", "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{port}", "-nocert",
        "-psk", KEY_HEX, "-psk_identity", IDENTITY, "-cipher", OPENSSL_CIPHERS,
        "-keymatexport", LABEL, "-keymatexportlen", "48", "-naccept", "1",
    ]  # fmt: skip
    async with spawn(argv) as srv:
        await srv.expect(r"ACCEPT")
        assoc = await dtls_connect(client_profile(), "127.0.0.1", port, timeout=10)
        try:
            assert assoc.context.protocol == "DTLSv1.2"
            assert assoc.context.cipher_suite == "PSK-AES128-CCM8"
            assert assoc.context.peer_id == "/mn-cse-123456"
            await srv.expect(r"Keying material: [0-9A-Fa-f]+\n")
            ours = assoc.export_keying_material(LABEL.encode(), 48)
            assert keying_material(srv.output) == ours.hex()
            assoc.send(b"hello from m2msec\n")
            await srv.expect(r"hello from m2msec\n")
            srv.write(b"hello from s_server\n")
            assert await asyncio.wait_for(assoc.recv(), 10) == b"hello from s_server\n"
        finally:
            assoc.close()
        await srv.expect(r"CONNECTION CLOSED|shutting down", timeout=10)
