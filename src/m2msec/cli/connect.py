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

Without any credential option it takes the entry of the initiator's credentials table
(``--credentials FILE``, default ``<data dir>/credentials.toml``) that belongs to the peer
(TR-0038 7.1.2, :mod:`m2msec.config.credentials`) and says which entry it used, never the
key; ``--id-b``, ``--servername``, ``--in-domain`` and ``--tls1_2`` still win over the
entry's. Options and entries alike become a :class:`~m2msec.config.credentials.Credential`,
which :func:`m2msec.config.initiators.build_initiator` turns into Entity A.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from rich.table import Table

from m2msec.cli import gba_options as g
from m2msec.cli.common import console, context_details, exit_on_errors, fail, file_option
from m2msec.cli.secrets import read_key, secret_file_option, secret_option
from m2msec.config.credentials import (
    CertificateSettings,
    Credential,
    GbaSettings,
    KeySource,
    MafSettings,
    PskSettings,
    default_credentials_path,
    is_ke_id,
    load_credentials,
)
from m2msec.config.initiators import (
    DEFAULT_IN_DOMAIN,
    Initiator,
    build_initiator,
    default_server_name,
)
from m2msec.errors import ConfigurationError, HandshakeError, M2MSecError
from m2msec.sa.admin_wire import record_to_json
from m2msec.sa.records import SaRecord
from m2msec.sa.store import SaRecordStore
from m2msec.servers.initiator_session import SecureSession
from m2msec.service.onem2m_client import RESOURCE_TYPES, OneM2MResponse
from m2msec.tls.context import SecurityContext
from m2msec.tls.profiles import TLSProfile, Transport

R = TypeVar("R")

__all__ = ["connect", "default_server_name", "options_credential"]


def _key_source(value: str | None, option: str, file: Path | None = None) -> KeySource:
    """A key given in a form of :func:`~m2msec.cli.common.secret_text` (``-``, ``@FILE``,
    ``--*-file``, a warned literal); none: the Enrolee store by KeID."""
    if value is None and file is None:
        return KeySource()
    return KeySource(value=read_key(value, option, file=file))


def options_credential(
    *,
    psk_identity: str | None,
    psk: str | None,
    psk_file: Path | None = None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    gba: g.GbaDeviceOptions | None,
    maf: str | None,
    maf_fqdn: str | None,
    km_id: str | None,
    km: str | None,
    km_file: Path | None = None,
    target_id: str | None,
    cse_id: str | None,
    id_b: str | None,
    server_name: str | None,
    in_domain: str | None,
    tls12: bool,
) -> Credential:
    """The credential the command-line options give (the same value a table entry is), or
    exit 1 with the option to add."""
    framework: PskSettings | CertificateSettings | MafSettings | GbaSettings
    if gba is not None:
        bsf, impi, _k, _opc, sqn, uicc, _k_file, _opc_file = gba
        if not (bsf and impi):
            fail("--gba needs --bsf, --impi, --k (or --k-file) and --opc (or --opc-file)")
        k_source, opc_source = g.gba_keys(gba)
        framework = GbaSettings(bsf, impi, k_source, opc_source, sqn, uicc)
    elif maf is not None:
        if not (km_id and (km or km_file or is_ke_id(km_id))):
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
        framework = MafSettings(
            parts.hostname, maf_port, km_id, _key_source(km, "--km", km_file), maf_fqdn,
            target_id, cse_id,
        )
    elif psk_identity or psk or psk_file:
        if not (psk_identity and (psk or psk_file or is_ke_id(psk_identity))):
            fail("--psk-identity and --psk go together (no --psk: a KeID of m2msec enrol)")
        # No --psk: the KeID's Kpsa from the Enrolee store (m2msec enrol --enrolee-b).
        framework = PskSettings(psk_identity, _key_source(psk, "--psk", psk_file))
    elif cert and key and ca:
        framework = CertificateSettings(cert, key, ca)
    else:
        fail("give --psk-identity/--psk, or --cert/--key/--ca")
    if isinstance(framework, PskSettings | CertificateSettings) and id_b is None:
        fail("--id-b (Entity B's CSE-ID) is needed with --psk-identity or --cert")
    return Credential(
        framework, id_b=id_b, server_name=server_name, in_domain=in_domain, tls12=tls12
    )


def _table_credential(
    path: Path | None,
    url: str,
    id_b: str | None,
    server_name: str | None,
    in_domain: str | None,
    tls12: bool,
) -> Credential:
    """The entry of the credentials table (``--credentials FILE``, else the data
    directory's ``credentials.toml``) that belongs to the peer at ``url``; the options
    given on the command line win over the entry's. Exit 2 for a malformed table or no
    matching entry."""
    with exit_on_errors(usage=(ConfigurationError,)):
        table = load_credentials(path, required=path is not None)
    if table is None:
        fail(
            "give --psk-identity/--psk, or --cert/--key/--ca (or --maf, --gba), or a "
            f"credentials table: {default_credentials_path()} or --credentials FILE"
        )
    with exit_on_errors(usage=(ValueError,)):
        found = table.for_peer(url, id_b)
    if found is None:
        peer = f" or IdB {id_b}" if id_b else ""
        fail(
            f"no entry of {table.source} matches {url}{peer}: add one "
            "(docs/credentials.md) or give the credential options",
            2,
        )
    credential = found.overridden(
        id_b=id_b, server_name=server_name, in_domain=in_domain, tls12=tls12
    )
    console.print(f"credentials: {credential.describe()}", highlight=False)
    return credential


@dataclass
class _Exchange:
    """What one run did: the SA record and the answer; with ``--rekey`` those of the SA
    that replaced it."""

    record: SaRecord
    ctx: SecurityContext
    response: OneM2MResponse
    rekeyed: tuple[SaRecord, SecurityContext, OneM2MResponse] | None = None


async def _run(
    initiator: Initiator,
    host: str,
    port: int,
    request: tuple[str, str, str, Any, int | None],
    timeout: float,
    *,
    rekey: bool,
    record: bool,
) -> _Exchange:
    """Establish the SA (:class:`~m2msec.servers.initiator_session.SecureSession`), send
    the request; with ``rekey`` update the SA in place and send it again over the new one.
    ``record``: the SA records go to the data directory's SA store."""
    method, path, origin, content, ty = request
    store = await asyncio.to_thread(SaRecordStore) if record else None
    try:
        async with SecureSession(initiator, host, port, sink=store, timeout=timeout) as session:
            first = await session.establish()
            ctx = session.context
            assert ctx is not None
            answer = await session.request(method, path, origin=origin, content=content, ty=ty)
            done = _Exchange(first, ctx, answer)
            if rekey:
                outcome = await session.update()
                if outcome.record is None or outcome.replaced is None:
                    why = (outcome.record.cause if outcome.record else None) or "rejected"
                    raise M2MSecError(f"SA update failed, the old SA kept: {why}")
                new_ctx = session.context
                assert new_ctx is not None
                again = await session.request(method, path, origin=origin, content=content, ty=ty)
                done.record = outcome.replaced
                done.rekeyed = (outcome.record, new_ctx, again)
            return done
    finally:
        if store is not None:
            await store.aclose()


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
    psk: Annotated[str | None, secret_option("--psk", "Kpsa in hex")] = None,
    psk_file: Annotated[Path | None, secret_file_option("--psk-file", "Kpsa in hex")] = None,
    cert: Annotated[Path | None, typer.Option(help="our certificate (PEM)")] = None,
    key: Annotated[Path | None, typer.Option(help="our private key (PEM)")] = None,
    ca: Annotated[Path | None, typer.Option(help="root of trust (PEM)")] = None,
    server_name: Annotated[str | None, typer.Option("--servername", help="SNI to send")] = None,
    in_domain: Annotated[
        str | None,
        typer.Option(help=f"IN public domain for CSE names (default: {DEFAULT_IN_DOMAIN})"),
    ] = None,
    tls12: Annotated[bool, typer.Option("--tls1_2", help="offer TLS 1.2 only")] = False,
    timeout: Annotated[float, typer.Option(help="seconds")] = 10.0,
    gba: Annotated[
        bool, typer.Option("--gba", help="GBA-based framework (seed 000 8.2.3.2): Kc = Ks_NAF")
    ] = False,
    bsf: g.BsfOption = None,
    impi: g.ImpiOption = None,
    k: g.KOption = None,
    k_file: g.KFileOption = None,
    opc: g.OpcOption = None,
    opc_file: g.OpcFileOption = None,
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
    km: Annotated[str | None, secret_option("--km", "MAF: Km in hex")] = None,
    km_file: Annotated[Path | None, secret_file_option("--km-file", "MAF: Km in hex")] = None,
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the SA record and the answer as JSON.")
    ] = False,
    rekey: Annotated[
        bool,
        typer.Option(
            "--rekey",
            help="After the answer, update the SA in place (a fresh full handshake) and "
            "send the request again over the new SA.",
        ),
    ] = False,
    record: Annotated[
        bool,
        typer.Option("--record", help="Keep the SA records in the data directory's SA store."),
    ] = False,
    credentials: Annotated[
        Path | None,
        file_option(
            "Credentials table (default: credentials.toml in the data directory), used "
            "when no credential option is given (docs/credentials.md).",
            "--credentials",
        ),
    ] = None,
) -> None:
    """Establish a security association and send one oneM2M request over it.

    The credential comes from the options, or, when none is given, from the entry of the
    credentials table that belongs to the peer (TR-0038 7.1.2; docs/credentials.md)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "coaps") or not parts.hostname:
        fail("URL must look like https://HOST:PORT/PATH or coaps://HOST:PORT/PATH")
    coap = parts.scheme == "coaps"
    if coap and (rekey or record or as_json):
        fail("--rekey, --record and --json are for https:// (the SA services over TLS)")
    if coap and (gba or maf is not None):
        fail("coaps:// takes --psk-identity/--psk or --cert/--key/--ca")
    try:
        host, port = parts.hostname, parts.port or (5684 if coap else 443)
    except ValueError as exc:
        fail(f"URL: {exc}")
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
    gba_values: g.GbaDeviceOptions = (bsf, impi, k, opc, sqn, uicc, k_file, opc_file)
    options = (psk_identity, psk, psk_file, cert, key, ca, maf, maf_fqdn, km_id, km, km_file,
               target_id, cse_id, bsf, impi, k, opc, sqn, k_file, opc_file)  # fmt: skip
    if gba or uicc or any(value is not None for value in options):
        credential = options_credential(
            psk_identity=psk_identity, psk=psk, psk_file=psk_file, cert=cert, key=key, ca=ca,
            gba=gba_values if gba else None, maf=maf, maf_fqdn=maf_fqdn, km_id=km_id, km=km,
            km_file=km_file, target_id=target_id, cse_id=cse_id, id_b=id_b,
            server_name=server_name, in_domain=in_domain, tls12=tls12,
        )  # fmt: skip
    else:
        peer = f"{parts.scheme}://{parts.netloc}"
        credential = _table_credential(credentials, peer, id_b, server_name, in_domain, tls12)
    transport = Transport.DTLS if coap else Transport.TLS
    with exit_on_errors(failure=(M2MSecError, ValueError)):
        initiator = build_initiator(credential, host=host, transport=transport, notice=_notice)
    if coap:
        assert initiator.profile is not None  # psk and certificate only (build_initiator)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if coap_options not in ("current", "legacy", "none"):
            fail("--coap-options must be current, legacy or none")
        _connect_coap(
            initiator.profile, host, port, method.upper(), target, origin, body, type_code,
            timeout, coap_options,
        )  # fmt: skip
        return
    path = parts.path or "/"
    done = _request_or_fail(
        _run(
            initiator,
            host,
            port,
            (method.upper(), path, origin, body, type_code),
            timeout,
            rekey=rekey,
            record=record,
        ),
        refused=(M2MSecError,),  # e.g. GBA bootstrapping refused by the BSF
    )
    if as_json:
        _print_json(done)
        return
    rounds = [(done.record, done.ctx, done.response)]
    if done.rekeyed is not None:
        rounds.append(done.rekeyed)
    for rec, ctx, response in rounds:
        console.print(_record_table(rec))
        _print_answer(
            ctx,
            f"HTTP {response.status}  X-M2M-RSC: {response.rsc}",
            response.body,
            failed=response.status >= 400 and done.rekeyed is None,
        )
    if done.rekeyed is not None:
        console.print(
            f"SA {done.record.sa_id} updated: replaced by {done.rekeyed[0].sa_id}",
            highlight=False,
            soft_wrap=True,
        )
        if any(r.status >= 400 for _, _, r in rounds):
            raise typer.Exit(3)


def _record_table(rec: SaRecord) -> Table:
    """The initiator's SA record (seed 003 7.3.1.1.2.2): never the key, its fingerprint."""
    table = Table(show_header=False, title="SA record", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = (
        ("sa_id", str(rec.sa_id)),
        ("role", rec.role.value),
        ("framework", rec.framework),
        ("peer", rec.peer_id),
        ("suite", f"{rec.protocol} {rec.cipher_suite}"),
        ("key id", rec.key_id or "-"),
        ("key fingerprint", rec.key_fingerprint or "-"),
        ("expires", rec.expires_at.isoformat(timespec="seconds") if rec.expires_at else "-"),
        ("state", rec.state.value),
    )
    for key, value in rows:
        table.add_row(key, value)
    return table


def _response_json(response: OneM2MResponse) -> dict[str, Any]:
    try:
        body: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        body = response.body.decode("utf-8", "replace")
    return {"status": response.status, "rsc": response.rsc, "body": body}


def _print_json(done: _Exchange) -> None:
    """One JSON document on the last line: the SA record and the answer (and, with
    ``--rekey``, the new SA's); exit 3 when an answer is an error."""
    doc: dict[str, Any] = {
        "sa": record_to_json(done.record),
        "response": _response_json(done.response),
    }
    answers = [done.response]
    if done.rekeyed is not None:
        rec, _, response = done.rekeyed
        doc["rekey"] = {"sa": record_to_json(rec), "replaces": str(done.record.sa_id),
                        "response": _response_json(response)}  # fmt: skip
        answers.append(response)
    typer.echo(json.dumps(doc, separators=(",", ":")))
    if any(r.status >= 400 for r in answers):
        raise typer.Exit(3)


def _notice(message: str) -> None:
    console.print(message, highlight=False)


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
