"""``m2msec connect``: the Entity A side from the shell, like ``openssl s_client``.

Establishes a security association with Entity B (TS-0003 8.2.2.1 by PSK, 8.2.2.2 by
certificates), sends one oneM2M request over it and prints the security context and
the answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from m2msec.bindings.client import RESOURCE_TYPES, OneM2MClient, OneM2MResponse
from m2msec.cli.common import console, context_details, fail, read_key
from m2msec.errors import HandshakeError, IdentifierError, M2MSecError
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.context import SecurityContext
from m2msec.tls.profiles import TLSProfile


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _profile(
    psk_identity: str | None,
    psk: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    id_b: str,
    server_name: str | None,
    in_domain: str,
    tls12: bool,
) -> TLSProfile:
    if psk_identity or psk:
        if not (psk_identity and psk):
            fail("--psk-identity and --psk go together")
        from m2msec.frameworks.provisioned import PskInitiator

        try:
            initiator = PskInitiator(
                psk_identity, read_key(psk, "--psk"), id_b, server_name=server_name
            )
        except (IdentifierError, ValueError) as exc:
            fail(str(exc))
        return initiator.profile(tls13=not tls12)
    if cert and key and ca:
        from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator

        try:
            credential = CertificateCredential.from_files(cert, key, ca)
            return CertificateInitiator(
                credential, id_b, in_domain=in_domain, server_name=server_name
            ).profile(tls13=not tls12)
        except M2MSecError as exc:
            fail(str(exc))
    fail("give --psk-identity/--psk, or --cert/--key/--ca")


async def _run(
    profile: TLSProfile,
    host: str,
    port: int,
    method: str,
    path: str,
    origin: str,
    content: Any,
    ty: int | None,
    timeout: float,
) -> tuple[SecurityContext, OneM2MResponse]:
    conn = await tls_connect(host, port, profile, timeout=timeout)
    client = OneM2MClient(conn, host=f"{host}:{port}")
    try:
        response = await asyncio.wait_for(
            client.request(method, path, origin=origin, content=content, ty=ty), timeout
        )
    finally:
        await client.close()
    return conn.context, response


def connect(
    url: Annotated[
        str, typer.Argument(help="https://HOST:PORT/PATH of Entity B (a CSE or our gateway)")
    ],
    origin: Annotated[str, typer.Option("--from", help="X-M2M-Origin of the request")],
    id_b: Annotated[
        str, typer.Option("--id-b", help="Entity B's CSE-ID (IdB), e.g. /mn-cse-123456")
    ],
    method: Annotated[str, typer.Option("--method", "-X")] = "GET",
    ty: Annotated[
        str | None, typer.Option(help="resource type to create: ae, cnt, cin or a number")
    ] = None,
    content: Annotated[str | None, typer.Option(help="JSON content of the request")] = None,
    psk_identity: Annotated[str | None, typer.Option("--psk-identity", help="KpsaId")] = None,
    psk: Annotated[
        str | None, typer.Option("--psk", help="Kpsa in hex, or - to read it from stdin")
    ] = None,
    cert: Annotated[Path | None, typer.Option(help="our certificate (PEM)")] = None,
    key: Annotated[Path | None, typer.Option(help="our private key (PEM)")] = None,
    ca: Annotated[Path | None, typer.Option(help="root of trust (PEM)")] = None,
    server_name: Annotated[str | None, typer.Option("--servername", help="SNI to send")] = None,
    in_domain: Annotated[
        str, typer.Option(help="IN public domain for CSE names")
    ] = "in.provider.com",
    tls12: Annotated[bool, typer.Option("--tls1_2", help="offer TLS 1.2 only")] = False,
    timeout: Annotated[float, typer.Option(help="seconds")] = 10.0,
) -> None:
    """Establish a security association and send one oneM2M request over it."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        fail("URL must look like https://HOST:PORT/PATH")
    host, port = parts.hostname, parts.port or 443
    if server_name is None and not _is_ip(host):
        server_name = host  # every client sends SNI (READINGS A-11), as s_client does
    type_code: int | None = None
    if ty is not None:
        type_code = RESOURCE_TYPES.get(ty) if not ty.isdigit() else int(ty)
        if type_code is None:
            fail(f"unknown resource type {ty!r}")
    body: Any = None
    if content is not None:
        try:
            body = json.loads(content)
        except json.JSONDecodeError as exc:
            fail(f"--content is not JSON: {exc}")
    profile = _profile(psk_identity, psk, cert, key, ca, id_b, server_name, in_domain, tls12)
    try:
        ctx, response = asyncio.run(
            _run(
                profile,
                host,
                port,
                method.upper(),
                parts.path or "/",
                origin,
                body,
                type_code,
                timeout,
            )
        )
    except HandshakeError as exc:
        fail(f"security association failed: {exc.reason}")
    except (TimeoutError, ConnectionError, OSError) as exc:
        fail(f"request failed: {exc or type(exc).__name__}")
    console.print(context_details(ctx))
    console.print(f"HTTP {response.status}  X-M2M-RSC: {response.rsc}")
    if response.body:
        try:
            console.print_json(response.body.decode())
        except (ValueError, UnicodeDecodeError):
            console.print(response.body.decode("utf-8", "replace"), highlight=False)
    if response.status >= 400:
        raise typer.Exit(3)
