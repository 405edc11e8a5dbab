"""``m2msec connect``: the Entity A side from the shell, like ``openssl s_client``.

Establishes a security association with Entity B (TS-0003 8.2.2.1 by PSK, 8.2.2.2 by
certificates, seed 000 8.2.3.2 by GBA with ``--gba``), sends one oneM2M request over it
and prints the security context and the answer. With ``--gba`` the device's SQN_MS and
its last bootstrap (Ks sealed) are kept in the data directory, so a second run within the
key lifetime reuses Ks (:class:`m2msec.frameworks.gba_device.DeviceState`). With ``--maf`` it runs
the MAF-based framework (TS-0003 8.2.2.3) as Entity A: MAF Handshake with ``--km-id``/``--km``,
Key Registration for IdB, then TLS-PSK with Entity B under the KcId
(:class:`m2msec.frameworks.maf.MafInitiator`); it prints the KcId and the Kc's lifetime.
A KeID of ``m2msec enrol`` given as ``--psk-identity`` without ``--psk``, or as ``--km-id``
without ``--km``, takes its Kpsa or Km from the Enrolee store (:mod:`m2msec.cli.enrol`).
A ``coaps://HOST:PORT/PATH`` URL sends the request by the CoAP binding (TS-0008) over
DTLS 1.2 (TS-0003 10.2.1) instead, with the PSK or certificate options.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer

from m2msec.cli import gba_options as g
from m2msec.cli.common import console, context_details, fail, read_key
from m2msec.cli.enrol import enrolled_credential, is_gba_ke_id, is_ke_id
from m2msec.config.values import is_ip
from m2msec.errors import HandshakeError, IdentifierError, M2MSecError
from m2msec.frameworks.gba import is_btid
from m2msec.ids import CseId, parse_entity_id
from m2msec.keyids import KmId
from m2msec.service.onem2m_client import RESOURCE_TYPES, OneM2MClient, OneM2MResponse
from m2msec.tls.aio import TLSConnection
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.context import SecurityContext
from m2msec.tls.profiles import TLSProfile, Transport

R = TypeVar("R")


def default_server_name(host: str, id_b: str | None, in_domain: str) -> str | None:
    """The SNI to send when ``--servername`` is not given (docs/readings.md A-11, A-12).

    A host name in the URL is sent as is, as s_client does; for an IP-address URL with a
    CSE-ID as IdB it is the CSE public domain name ``<CSE-ID>.<IN domain>`` (TS-0001
    6.5.1.1); otherwise (an IP and an AE or no IdB) nothing, since no name is known.
    """
    if not is_ip(host):
        return host
    if id_b:
        try:
            entity = parse_entity_id(id_b)
            if isinstance(entity, CseId):
                return entity.public_domain_name(in_domain)
        except IdentifierError:
            return None  # not usable as a DNS label: send no SNI rather than a wrong one
    return None


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
    transport: Transport = Transport.TLS,
) -> TLSProfile:
    if psk_identity or psk:
        if not (psk_identity and (psk or is_ke_id(psk_identity))):
            fail("--psk-identity and --psk go together (no --psk: a KeID of m2msec enrol)")
        from m2msec.frameworks.provisioned import PskInitiator

        # No --psk: the KeID's Kpsa from the Enrolee store (m2msec enrol --enrolee-b).
        kpsa = (
            read_key(psk, "--psk")
            if psk is not None
            else enrolled_credential(psk_identity, enrolee_b=True).credential
        )
        try:
            initiator = PskInitiator(psk_identity, kpsa, id_b, server_name=server_name)
        except IdentifierError as exc:
            if not is_btid(psk_identity):
                fail(str(exc))
            # The KpsaID of a GBA bootstrap (m2msec enrol --gba) is its B-TID, verbatim.
            initiator = PskInitiator(psk_identity, kpsa, id_b, server_name=server_name,
                                     verbatim=True)  # fmt: skip
        except ValueError as exc:
            fail(str(exc))
        return initiator.profile(transport, tls13=not tls12)
    if cert and key and ca:
        from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator

        try:
            credential = CertificateCredential.from_files(cert, key, ca)
            return CertificateInitiator(
                credential, id_b, in_domain=in_domain, server_name=server_name
            ).profile(transport=transport, tls13=not tls12)
        except M2MSecError as exc:
            fail(str(exc))
    fail("give --psk-identity/--psk, or --cert/--key/--ca")


def _gba_opener(
    options: g.GbaDeviceOptions,
    host: str,
    port: int,
    server_name: str | None,
    id_b: str | None,
    timeout: float,
) -> Callable[[], Awaitable[TLSConnection]]:
    """Entity A of the GBA framework: USIM from the options, state from the data dir."""
    device, save = g.gba_device(options)
    if not server_name:
        fail("--gba needs Entity B's host name (its NAF FQDN): give --servername")

    async def open_association() -> TLSConnection:
        try:
            return await device.connect(host, port, server_name, id_b=id_b, timeout=timeout)
        finally:
            save()

    return open_association


def _maf_opener(
    maf: str,
    maf_fqdn: str | None,
    km_id: str | None,
    km: str | None,
    target_id: str | None,
    id_b: str | None,
    server_name: str | None,
    tls12: bool,
    in_domain: str,
    host: str,
    port: int,
    timeout: float,
    cse_id: str | None = None,
) -> Callable[[], Awaitable[TLSConnection]]:
    """Entity A of the MAF framework: Kc from the MAF, then the association with B.

    targetIDs gets the Absolute CSE-ID/AE-ID (8.8.2.7) under ``--in-domain``; ``--cse-id``
    declares Entity A a CSE configured with its CSE-ID (seed 001)."""
    if not (km_id and (km or is_ke_id(km_id))):
        fail("--maf needs --km-id and --km (no --km: a KeID of m2msec enrol)")
    if not (id_b or target_id):
        fail("--maf needs Entity B's identity: --id-b (or --target-id)")
    parts = urlsplit(maf)
    try:
        maf_port = parts.port
    except ValueError:
        maf_port = None
    if parts.scheme != "tls" or not parts.hostname or not maf_port:
        fail("--maf must look like tls://HOST:PORT (the MAF's client listener)")
    from m2msec.frameworks.maf import MafClient, MafInitiator

    target = target_id or id_b
    assert target is not None
    if km is not None:
        key_km = read_key(km, "--km")
    else:  # a KeID's Km from the Enrolee store (m2msec enrol --maf-id), for its MAF
        enrolled = enrolled_credential(km_id, enrolee_b=False)
        key_km, maf_fqdn = enrolled.credential, maf_fqdn or enrolled.target.target_id
    # The KmID of a GBA bootstrap (m2msec enrol --gba --maf-id) is its B-TID, verbatim.
    kmid = KmId.parse(km_id, verbatim=True) if is_gba_ke_id(km_id) else km_id
    try:
        client = MafClient(
            parts.hostname, maf_port, maf_fqdn, kmid, key_km, tls13=not tls12, timeout=timeout
        )
        initiator = MafInitiator(
            client,
            target,
            server_name,
            id_b=id_b or target,
            tls13=not tls12,
            sp_fqdn=in_domain,
            local_id=cse_id,
            entity_a_kind="cse" if cse_id is not None else None,
        )
    except (IdentifierError, ValueError) as exc:
        fail(str(exc))

    async def open_association() -> TLSConnection:
        conn = await initiator.connect(host, port, timeout=timeout)
        issued = initiator.current
        if issued is not None:
            console.print(
                f"MAF {client.maf_fqdn}: KcId {issued.kc_id}, Kc lifetime until "
                f"{issued.expires.isoformat(timespec='seconds')}",
                highlight=False,
            )
        return conn

    return open_association


async def _run(
    profile: TLSProfile | Callable[[], Awaitable[TLSConnection]],
    host: str,
    port: int,
    method: str,
    path: str,
    origin: str,
    content: Any,
    ty: int | None,
    timeout: float,
) -> tuple[SecurityContext, OneM2MResponse]:
    if isinstance(profile, TLSProfile):
        conn = await tls_connect(host, port, profile, timeout=timeout)
    else:
        conn = await profile()
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
        str,
        typer.Argument(
            help="https://HOST:PORT/PATH or coaps://HOST:PORT/PATH of Entity B (a CSE or "
            "our gateway)"
        ),
    ],
    origin: Annotated[str, typer.Option("--from", help="X-M2M-Origin of the request")],
    id_b: Annotated[
        str | None, typer.Option("--id-b", help="Entity B's CSE-ID (IdB), e.g. /mn-cse-123456")
    ] = None,
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
    gba: Annotated[
        bool, typer.Option("--gba", help="GBA-based framework (seed 000 8.2.3.2): Kc = Ks_NAF")
    ] = False,
    bsf: g.BsfOption = None,
    impi: g.ImpiOption = None,
    k: g.KOption = None,
    opc: g.OpcOption = None,
    sqn: g.SqnOption = None,
    uicc: g.UiccOption = False,
    maf: Annotated[
        str | None,
        typer.Option("--maf", help="MAF-based framework (8.2.2.3): the MAF, tls://HOST:PORT"),
    ] = None,
    maf_fqdn: Annotated[
        str | None, typer.Option("--maf-fqdn", help="MAF: its FQDN (default: from --km-id)")
    ] = None,
    km_id: Annotated[str | None, typer.Option("--km-id", help="MAF: our KmID")] = None,
    km: Annotated[
        str | None, typer.Option("--km", help="MAF: Km in hex, or - to read it from stdin")
    ] = None,
    target_id: Annotated[
        str | None, typer.Option("--target-id", help="MAF: the targetIDs entry (default --id-b)")
    ] = None,
    cse_id: Annotated[
        str | None,
        typer.Option("--cse-id", help="MAF: Entity A is a CSE with this CSE-ID (seed 001)"),
    ] = None,
    coap_options: Annotated[
        str,
        typer.Option(
            "--coap-options",
            help="coaps://: oneM2M option numbers, 'current' (TS-0008 V3.7.0+), 'legacy' "
            "(earlier), or 'none' (a plain CoAP request, for generic CoAP servers)",
        ),
    ] = "current",
) -> None:
    """Establish a security association and send one oneM2M request over it."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "coaps") or not parts.hostname:
        fail("URL must look like https://HOST:PORT/PATH or coaps://HOST:PORT/PATH")
    coap = parts.scheme == "coaps"
    if coap and (gba or maf is not None):
        fail("coaps:// takes --psk-identity/--psk or --cert/--key/--ca")
    host, port = parts.hostname, parts.port or (5684 if coap else 443)
    if server_name is None:
        server_name = default_server_name(host, id_b, in_domain)
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
    if coap:
        if id_b is None:
            fail("--id-b (Entity B's CSE-ID) is needed with --psk-identity or --cert")
        dtls = _profile(
            psk_identity, psk, cert, key, ca, id_b, server_name, in_domain, tls12, Transport.DTLS
        )
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if coap_options not in ("current", "legacy", "none"):
            fail("--coap-options must be current, legacy or none")
        _connect_coap(
            dtls, host, port, method.upper(), target, origin, body, type_code, timeout, coap_options
        )
        return
    opener: TLSProfile | Callable[[], Awaitable[TLSConnection]]
    if gba:
        opener = _gba_opener((bsf, impi, k, opc, sqn, uicc), host, port, server_name, id_b, timeout)
    elif maf is not None:
        opener = _maf_opener(
            maf, maf_fqdn, km_id, km, target_id, id_b, server_name, tls12, in_domain, host, port,
            timeout, cse_id,
        )
    else:
        if id_b is None:
            fail("--id-b (Entity B's CSE-ID) is needed with --psk-identity or --cert")
        opener = _profile(psk_identity, psk, cert, key, ca, id_b, server_name, in_domain, tls12)
    path = parts.path or "/"
    ctx, response = _request_or_fail(
        _run(opener, host, port, method.upper(), path, origin, body, type_code, timeout),
        refused=(M2MSecError,),  # e.g. GBA bootstrapping refused by the BSF
    )
    _print_answer(
        ctx,
        f"HTTP {response.status}  X-M2M-RSC: {response.rsc}",
        response.body,
        failed=response.status >= 400,
    )


def _request_or_fail(
    main: Coroutine[Any, Any, R],
    *,
    refused: tuple[type[Exception], ...] = (),
    failed: tuple[type[Exception], ...] = (TimeoutError, ConnectionError, OSError),
) -> R:
    """Run ``main`` (the association, then the request); an expected error exits 1 with
    one line: a refused handshake, a ``refused`` error in its own words, or a ``failed``
    request."""
    try:
        return asyncio.run(main)
    except HandshakeError as exc:
        fail(f"security association failed: {exc.reason}")
    except refused as exc:
        fail(str(exc))
    except failed as exc:
        fail(f"request failed: {exc or type(exc).__name__}")


def _print_answer(
    ctx: SecurityContext, status: str, body: bytes, *, failed: bool, highlight: bool | None = None
) -> None:
    """The association, the answer's status line and its body (JSON pretty-printed when
    it is JSON); exit 3 when the answer is an error."""
    console.print(context_details(ctx))
    console.print(status, highlight=highlight)
    if body:
        try:
            console.print_json(body.decode())
        except (ValueError, UnicodeDecodeError):
            console.print(body.decode("utf-8", "replace"), highlight=False)
    if failed:
        raise typer.Exit(3)


def _connect_coap(
    profile: TLSProfile,
    host: str,
    port: int,
    method: str,
    target: str,
    origin: str,
    content: Any,
    ty: int | None,
    timeout: float,
    options: str,
) -> None:
    """One oneM2M request by the CoAP binding over DTLS; print the context and the answer."""
    from m2msec.bindings.coap.mapping import CoapOneM2MResponse
    from m2msec.bindings.coap.options import CoapBindingError, Numbering
    from m2msec.service.coap_client import CoapClient
    from m2msec.tls.aio_dtls import dtls_connect

    async def run() -> tuple[SecurityContext, CoapOneM2MResponse]:
        assoc = await dtls_connect(
            profile, host, port, server_name=profile.server_name, timeout=timeout
        )
        client = CoapClient(
            assoc,
            numbering=Numbering.LEGACY if options == "legacy" else Numbering.CURRENT,
            parameters=options != "none",
        )
        try:
            return assoc.context, await client.request(
                method, target, origin=origin, content=content, ty=ty, timeout=timeout
            )
        finally:
            await client.close()

    ctx, response = _request_or_fail(
        run(), failed=(CoapBindingError, TimeoutError, ConnectionError, OSError)
    )
    _print_answer(
        ctx,
        f"CoAP {response.code_text}  oneM2M-RSC: {response.rsc}",
        response.payload,
        failed=response.code >= 128,  # 4.xx and 5.xx
        highlight=False,
    )
