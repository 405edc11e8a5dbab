"""``m2msec maf``: the M2M Authentication Function (TS-0003 8.2.2.3, 8.8) from the shell.

``serve`` runs the MAF (:mod:`m2msec.servers.maf`); the other commands manage its store
(:mod:`m2msec.maf.store`):

* ``add-client KMID --key HEX [--entity-id ID]``: provision a MAF Client's Master Credential
  (KmId -> Km, 8.8.3.1) and, optionally, the CSE-ID or AE-ID of that Entity A, which the MAF
  passes to Entity B (8.2.2.3); ``list-clients``, ``remove-client`` (also de-registers the
  client's keys), ``set-client-config`` (the ``mafClientCfg`` of 8.8.2.4);
* ``allow-entity-b ID``: an Entity B identity (IN-CSE, 8.2.2.3) the MAF may hand keys to;
  ``list-entity-b``, ``disallow-entity-b``;
* ``keys``: the key registrations (RelativeKeyID, source KmId, targets, expiry, state),
  never their values; ``audit``: the audit log as JSON lines.

Keys are never printed. Give ``--key -`` to read the key from standard input, out of ``ps``.
Exit status: 0 on success, 1 when the store refuses or the server cannot run, 2 for
malformed input or configuration.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from m2msec.cli.common import (
    ConfigOption,
    LogLevelOption,
    fail,
    load_config_or_exit,
    run_server,
    start_logging,
)
from m2msec.errors import (
    ConfigurationError,
    IdentifierError,
    StoreError,
    UnknownCredentialError,
)
from m2msec.ids import AeId, CseId, parse_entity_id
from m2msec.maf.store import (
    MafStore,
    default_maf_store_path,
    open_maf_store,
    parse_km_id,
    redact_url,
)

if TYPE_CHECKING:
    from m2msec.config.maf import MafConfig
    from m2msec.servers.maf import MafServer

__all__ = ["app"]

log = logging.getLogger(__name__)

app = typer.Typer(
    name="maf",
    help="The M2M Authentication Function (TS-0003 8.8): serve, and manage its store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals could hold keys
)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="PATH",
        help="MAF store file or sqlite:///absolute/path URL (default: maf.db in the m2msec "
        "data directory).",
        show_default=False,
    ),
]
KmIdArgument = Annotated[
    str, typer.Argument(metavar="KMID", help="Master Credential id, e.g. ae1@maf.in.provider.com.")
]
EntityArgument = Annotated[
    str,
    typer.Argument(metavar="ID", help="CSE-ID or AE-ID, e.g. //in.provider.com/in-cse."),
]


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _done(message: str, subject: str, rest: str = "") -> None:
    text = Text(message + " ", style="green")
    text.append(subject, style="bold")
    if rest:
        text.append(rest)
    _out().print(text)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (IdentifierError, ConfigurationError) as exc:
        fail(str(exc), 2)
    except StoreError as exc:
        fail(str(exc.args[0]) if exc.args else str(exc), 1)


@contextmanager
def _open(store: str | None) -> Iterator[MafStore]:
    st = open_maf_store(store)
    try:
        yield st
    finally:
        st.close()


def _store_name(store: str | None) -> str:
    # A postgresql:// URL may hold a password: never printed.
    return redact_url(store) if store is not None else str(default_maf_store_path())


def _read_key(value: str) -> bytes:
    if value == "-":
        if sys.stdin.isatty():
            text = typer.prompt("Km (hexadecimal)", hide_input=True, err=True)
        else:
            text = sys.stdin.readline()
    else:
        text = value
    text = text.strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError("the key must be hexadecimal (e.g. 32 or 64 hex digits)") from None


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- clients


@app.command("add-client")
def add_client(
    km_id: KmIdArgument,
    key: Annotated[
        str,
        typer.Option(
            "--key",
            metavar="HEX",
            help="The Km in hexadecimal (16 to 64 octets), or '-' to read it from standard input.",
        ),
    ],
    entity_id: Annotated[
        str | None,
        typer.Option(
            "--entity-id",
            metavar="ID",
            help="CSE-ID or AE-ID of this Entity A, passed to Entity B at Key Retrieval "
            "(without it, B binds the Credential-ID 11-<KmId>).",
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            metavar="KIND",
            help="What Entity A is: cse (then --entity-id must be its CSE-ID) or ae.",
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite a client with this KmId.")
    ] = False,
    store: StoreOption = None,
) -> None:
    """Provision a MAF Client's Master Credential (KmId, Km)."""
    with _errors():
        parse_km_id(km_id)
        _check_entity_a_kind(kind, entity_id)
        km = _read_key(key)
        with _open(store) as st:
            info = st.add_client(km_id, km, entity_id, replace=replace)
    rest = f" ({len(km)}-octet Km" + (f", entity {info.entity_id})" if info.entity_id else ")")
    _done("added MAF client", info.km_id, rest)


def _check_entity_a_kind(kind: str | None, entity_id: str | None) -> None:
    # Seed 001 (8.2.2.3): "If Entity A is a CSE, then Entity A shall also be configured
    # with its CSE-ID"; the MAF hands that CSE-ID to Entity B, which binds the association.
    if kind is None:
        return
    if kind not in ("cse", "ae"):
        raise ConfigurationError(f"unknown Entity A kind {kind!r}; cse or ae")
    if entity_id is None:
        if kind == "cse":
            raise ConfigurationError("an Entity A that is a CSE needs its CSE-ID (--entity-id)")
        return
    entity = parse_entity_id(entity_id)
    if kind == "cse" and not isinstance(entity, CseId):
        raise ConfigurationError(f"--kind cse: {entity_id!r} is not a CSE-ID")
    if kind == "ae" and not isinstance(entity, AeId):
        raise ConfigurationError(f"--kind ae: {entity_id!r} is not an AE-ID")


@app.command("list-clients")
def list_clients(store: StoreOption = None) -> None:
    """List the MAF Clients: KmId, Entity A's id, key length (never the key)."""
    with _errors(), _open(store) as st:
        clients = st.list_clients()
    if not clients:
        _out().print(Text(f"no MAF clients in {_store_name(store)}"))
        return
    table = Table(title=f"MAF clients {_store_name(store)}", title_justify="left")
    for column in ("KmId", "entity id", "key length", "enabled", "config", "added (UTC)"):
        table.add_column(column, no_wrap=True)
    for c in clients:
        table.add_row(
            Text(c.km_id),
            Text(c.entity_id or "-"),
            Text(f"{c.key_octets} octets"),
            Text("yes" if c.enabled else "no"),
            Text("yes" if c.has_config else "-"),
            Text(_time(c.created)),
        )
    _out().print(table)


@app.command("remove-client")
def remove_client(km_id: KmIdArgument, store: StoreOption = None) -> None:
    """Remove a MAF Client, its registrations, and de-register its keys."""
    with _errors(), _open(store) as st:
        found, keys = st.remove_client(km_id)
        if not found:
            raise UnknownCredentialError(f"no MAF client with KmId {km_id!r}")
    _done("removed MAF client", km_id, f" ({keys} key(s) de-registered)")


@app.command("set-client-config")
def set_client_config(
    km_id: KmIdArgument,
    file: Annotated[
        str | None,
        typer.Argument(
            metavar="FILE",
            help="JSON object to hand out as mafClientCfg (8.8.2.4); '-' reads standard input.",
            show_default=False,
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the configuration.")] = False,
    store: StoreOption = None,
) -> None:
    """Set the MAF Client Configuration a client fetches with Configuration Retrieval."""
    with _errors():
        config: dict[str, Any] | None = None
        if clear == (file is not None):
            raise ConfigurationError("give either FILE or --clear")
        if file is not None:
            try:
                text = sys.stdin.read() if file == "-" else Path(file).read_text("utf-8")
            except OSError as exc:
                raise ConfigurationError(f"cannot read {file}: {exc.strerror}") from None
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ConfigurationError(f"{file} is not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise ConfigurationError(f"{file} must hold a JSON object")
            config = value
        with _open(store) as st:
            st.set_client_config(km_id, config)
    _done("cleared configuration of" if clear else "set configuration of", km_id)


# ----------------------------------------------------------------------------- Entity B


@app.command("allow-entity-b")
def allow_entity_b(
    entity_id: EntityArgument,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            metavar="KIND",
            help="What Entity B is: in-cse (default), mn-cse, asn-cse or ae.",
        ),
    ] = "in-cse",
    allow_non_in: Annotated[
        bool,
        typer.Option(
            "--allow-non-in",
            help="Accept an Entity B that is not an IN-CSE (outside this release, seed 001).",
        ),
    ] = False,
    store: StoreOption = None,
) -> None:
    """Allow the MAF to hand keys to this Entity B (an IN-CSE, TS-0003 8.2.2.3)."""
    with _errors(), _open(store) as st:
        added = st.add_entity_b(entity_id, kind=kind, allow_non_in=allow_non_in)
    if kind != "in-cse":
        warning = f"warning: Entity B {entity_id} is a {kind}, not an IN-CSE (--allow-non-in)"
        log.warning("%s", warning)
        _err().print(Text(warning, style="yellow"))
    _done("allowed Entity B" if added else "already allowed:", entity_id, f" ({kind})")


@app.command("disallow-entity-b")
def disallow_entity_b(entity_id: EntityArgument, store: StoreOption = None) -> None:
    """Stop handing keys to this Entity B."""
    with _errors(), _open(store) as st:
        if not st.remove_entity_b(entity_id):
            raise UnknownCredentialError(f"{entity_id!r} is not an allowed Entity B")
    _done("disallowed Entity B", entity_id)


@app.command("list-entity-b")
def list_entity_b(store: StoreOption = None) -> None:
    """List the Entity B identities the MAF may hand keys to."""
    with _errors(), _open(store) as st:
        listed = st.list_entity_b()
    if not listed:
        _out().print(Text(f"no Entity B allowed in {_store_name(store)}"))
        return
    for entity in listed:
        _out().print(Text(entity))


# ----------------------------------------------------------------------------- keys


@app.command("keys")
def keys(
    km_id: Annotated[
        str | None,
        typer.Option("--km-id", metavar="KMID", help="Only the keys of this MAF Client."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Show at most this many.")] = 1000,
    store: StoreOption = None,
) -> None:
    """List key registrations: RelativeKeyID, source, targets, SUID, expiry, state."""
    now = datetime.now(UTC)
    with _errors(), _open(store) as st:
        table = Table(title=f"key registrations {_store_name(store)}", title_justify="left")
        for column in ("relativeKeyID", "source KmId", "targetIDs", "SUID", "expires (UTC)"):
            table.add_column(column, no_wrap=True)
        table.add_column("state", no_wrap=True)
        shown = 0
        for key in st.list_keys(km_id=km_id):
            if shown >= limit:
                break
            shown += 1
            state = (
                "de-registered" if key.deregistered else "expired" if key.expired(now) else "live"
            )
            table.add_row(
                Text(key.relative_id),
                Text(key.km_id),
                Text(", ".join(key.target_ids)),
                Text(str(key.suid)),
                Text(_time(key.expires_at)),
                Text(state, style="" if state == "live" else "red"),
            )
        total = st.count_keys()
        live = st.count_keys(live_at=now)
    if shown == 0:
        _out().print(Text(f"no key registrations in {_store_name(store)}"))
        return
    _out().print(table)
    _out().print(Text(f"{total} key registration(s), {live} live; showing {shown}"))


@app.command("audit")
def audit(
    after: Annotated[
        int, typer.Option("--after", metavar="SEQ", help="Only records after this number.")
    ] = 0,
    limit: Annotated[int, typer.Option("--limit", help="Print at most this many.")] = 1000,
    store: StoreOption = None,
) -> None:
    """Print the audit log (issued, retrieved, refused, de-registered keys) as JSON lines."""
    with _errors(), _open(store) as st:
        records = st.read_audit(after=after, limit=limit)
    for seq, record in records:
        typer.echo(json.dumps({"seq": seq, **record}, separators=(",", ":")))


# ----------------------------------------------------------------------------- serve


@app.command()
def serve(
    config: ConfigOption = None,
    fqdn: Annotated[
        str | None,
        typer.Option("--fqdn", metavar="FQDN", help="The MAF's FQDN (MAF-ID).", show_default=False),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            metavar="URL",
            help="MAF Handshake listener, tls://HOST:PORT (default tls://127.0.0.1:8444).",
            show_default=False,
        ),
    ] = None,
    retrieval_listen: Annotated[
        str | None,
        typer.Option(
            "--retrieval-listen",
            metavar="URL",
            help="Key Retrieval listener, tls://HOST:PORT (default "
            "tls://127.0.0.1:8445); 'off' disables it.",
            show_default=False,
        ),
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="The MAF's FQDN certificate (PEM).", show_default=False),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Its private key (PEM).", show_default=False),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Trust anchors for Entity B (PEM).", show_default=False),
    ] = None,
    in_domain: Annotated[
        str | None,
        typer.Option(
            "--in-domain",
            metavar="FQDN",
            help="IN public domain of Entity B certificates (default: the FQDN "
            "without its first label).",
            show_default=False,
        ),
    ] = None,
    key_lifetime: Annotated[
        float | None,
        typer.Option(
            "--key-lifetime",
            metavar="SECONDS",
            help="Longest Kc lifetime granted (default 86400).",
            show_default=False,
        ),
    ] = None,
    store: StoreOption = None,
    durability: Annotated[
        str | None,
        typer.Option(
            "--durability",
            metavar="MODE",
            help="normal (commits survive the process being killed; the default for SQLite) "
            "or full (also a power cut or a database crash: the default for PostgreSQL).",
            show_default=False,
        ),
    ] = None,
    log_level: LogLevelOption = "info",
    init: Annotated[
        bool,
        typer.Option("--init", help="Create the MAF store if it does not exist yet."),
    ] = False,
) -> None:
    """Run the MAF until SIGINT or SIGTERM."""
    from m2msec.config.maf import load_maf_config

    start_logging(log_level)
    overrides: dict[str, object] = {
        "maf.fqdn": fqdn,
        "maf.listen": listen,
        "maf.retrieval_listen": "" if retrieval_listen == "off" else retrieval_listen,
        "maf.store": store,
        "maf.in_domain": in_domain,
        "maf.key_lifetime": key_lifetime,
        "maf.durability": durability,
        "certificates.cert": None if cert is None else str(cert),
        "certificates.key": None if key is None else str(key),
        "certificates.ca": None if ca is None else str(ca),
    }
    cfg = load_config_or_exit(load_maf_config, config, overrides)
    console = Console(highlight=False)
    stats = run_server(lambda: _server(cfg, init=init), _banner, console).stats.as_dict()
    console.print(
        f"stopped: {stats['keys_issued']} keys issued, {stats['keys_retrieved']} retrieved, "
        f"{stats['requests_refused']} requests refused, "
        f"{stats['handshakes_failed']} handshakes refused"
    )


def _server(cfg: MafConfig, *, init: bool) -> MafServer:
    from m2msec.servers.maf import MafServer

    maf = MafServer(cfg)
    maf.require_existing_store = not init  # a new store only with --init
    return maf


def _banner(maf: MafServer) -> Table:
    cfg = maf.config
    st = maf.store
    table = Table(title="m2msec MAF", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("MAF FQDN", cfg.fqdn)
    table.add_row(
        "MAF Handshake",
        f"tls://{cfg.listener('listen').host}:{maf.client_port}  (TLS-PSK, KmId/Km, 8.8.2.2)",
    )
    if maf.retrieval_port is not None:
        table.add_row(
            "Key Retrieval",
            f"tls://{cfg.listener('retrieval_listen').host}:{maf.retrieval_port}  "
            f"(mutual TLS, certificates, 8.8.2.8)",
        )
    else:
        table.add_row("Key Retrieval", "off")
    table.add_row(
        "store",
        f"{st.location}: {len(st.list_clients())} clients, "
        f"{st.count_keys(live_at=datetime.now(UTC))} live keys",
    )
    table.add_row("Entity B", ", ".join(st.list_entity_b()) or "none allowed yet")
    table.add_row("audit log", str(maf.audit_path))
    table.add_row("Kc lifetime", f"at most {cfg.key_lifetime:g} s")
    return table
