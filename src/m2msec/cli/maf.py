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
  never their values; ``audit``: the audit log (a table, or ``--json`` lines).

Keys are never printed. Give ``--key -`` to read the key from standard input (a hidden
prompt on a terminal), ``--key @FILE`` or ``--key-file FILE``, out of ``ps`` (docs/cli.md
"Secret options"). Every list takes ``--json`` (JSON lines).
Exit status: 0 on success, 1 when the store refuses or the server cannot run, 2 for
malformed input or configuration.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import closing
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from m2msec.cli.common import (
    ConfigOption,
    JsonOption,
    LogFormatOption,
    LogLevelOption,
    MetricsOption,
    done,
    file_option,
    init_option,
    load_serve_config,
    option,
    path_overrides,
    print_audit,
    print_listing,
    serve_and_report,
    stderr_console,
    stdout_console,
    store_errors,
    store_option,
    sub_app,
    url_option,
    utc_time,
)
from m2msec.cli.secrets import secret_file_option, secret_option, secret_text
from m2msec.errors import ConfigurationError, UnknownCredentialError
from m2msec.ids import AeId, CseId, parse_entity_id
from m2msec.maf.store import (
    MafClientInfo,
    MafKey,
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

app = sub_app("maf", "The M2M Authentication Function (TS-0003 8.8): serve, and manage its store.")

StoreOption = Annotated[
    str | None,
    store_option(
        "MAF store file or sqlite:///absolute/path URL (default: maf.db in the m2msec "
        "data directory)."
    ),
]
KmIdArgument = Annotated[
    str, typer.Argument(metavar="KMID", help="Master Credential id, e.g. ae1@maf.in.provider.com.")
]
EntityArgument = Annotated[
    str,
    typer.Argument(metavar="ID", help="CSE-ID or AE-ID, e.g. //in.provider.com/in-cse."),
]


def _open(store: str | None) -> closing[MafStore]:
    return closing(open_maf_store(store))


def _store_name(store: str | None) -> str:
    # A postgresql:// URL may hold a password: never printed.
    return redact_url(store) if store is not None else str(default_maf_store_path())


def _read_key(value: str | None, file: Path | None) -> bytes:
    text = secret_text(value, "--key", file=file, prompt="Km (hexadecimal)")
    if text is None:
        raise ConfigurationError("give the Km: --key - (standard input), @FILE or --key-file")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError("the key must be hexadecimal (e.g. 32 or 64 hex digits)") from None


# ----------------------------------------------------------------------------- clients


@app.command("add-client")
def add_client(
    km_id: KmIdArgument,
    key: Annotated[
        str | None, secret_option("--key", "The Km in hexadecimal (16 to 64 octets)")
    ] = None,
    key_file: Annotated[Path | None, secret_file_option("--key-file", "the Km in hex")] = None,
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
    with store_errors():
        parse_km_id(km_id)
        _check_entity_a_kind(kind, entity_id)
        km = _read_key(key, key_file)
        with _open(store) as st:
            info = st.add_client(km_id, km, entity_id, replace=replace)
    rest = f" ({len(km)}-octet Km" + (f", entity {info.entity_id})" if info.entity_id else ")")
    done("added MAF client", info.km_id, rest)


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


def _client_json(c: MafClientInfo) -> dict[str, Any]:
    return {
        "kmId": c.km_id,
        "entityId": c.entity_id,
        "keyLength": c.key_octets,
        "enabled": c.enabled,
        "config": c.has_config,
        "added": utc_time(c.created),
    }


def _client_cells(c: MafClientInfo) -> tuple[str, ...]:
    return (
        c.km_id,
        c.entity_id or "-",
        f"{c.key_octets} octets",
        "yes" if c.enabled else "no",
        "yes" if c.has_config else "-",
        utc_time(c.created),
    )


@app.command("list-clients")
def list_clients(as_json: JsonOption = False, store: StoreOption = None) -> None:
    """List the MAF Clients: KmId, Entity A's id, key length (never the key)."""
    with store_errors(), _open(store) as st:
        clients = st.list_clients()
    print_listing(
        clients,
        title=f"MAF clients {_store_name(store)}",
        columns=("KmId", "entity id", "key length", "enabled", "config", "added (UTC)"),
        cells=_client_cells,
        to_json=_client_json,
        as_json=as_json,
        empty=f"no MAF clients in {_store_name(store)}",
    )


@app.command("remove-client")
def remove_client(km_id: KmIdArgument, store: StoreOption = None) -> None:
    """Remove a MAF Client, its registrations, and de-register its keys."""
    with store_errors(), _open(store) as st:
        found, keys = st.remove_client(km_id)
        if not found:
            raise UnknownCredentialError(f"no MAF client with KmId {km_id!r}")
    done("removed MAF client", km_id, f" ({keys} key(s) de-registered)")


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
    with store_errors():
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
    done("cleared configuration of" if clear else "set configuration of", km_id)


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
    with store_errors(), _open(store) as st:
        added = st.add_entity_b(entity_id, kind=kind, allow_non_in=allow_non_in)
    if kind != "in-cse":
        warning = f"warning: Entity B {entity_id} is a {kind}, not an IN-CSE (--allow-non-in)"
        log.warning("%s", warning)
        stderr_console().print(Text(warning, style="yellow"))
    done("allowed Entity B" if added else "already allowed:", entity_id, f" ({kind})")


@app.command("disallow-entity-b")
def disallow_entity_b(entity_id: EntityArgument, store: StoreOption = None) -> None:
    """Stop handing keys to this Entity B."""
    with store_errors(), _open(store) as st:
        if not st.remove_entity_b(entity_id):
            raise UnknownCredentialError(f"{entity_id!r} is not an allowed Entity B")
    done("disallowed Entity B", entity_id)


@app.command("list-entity-b")
def list_entity_b(as_json: JsonOption = False, store: StoreOption = None) -> None:
    """List the Entity B identities the MAF may hand keys to."""
    with store_errors(), _open(store) as st:
        listed = st.list_entity_b()
    if not as_json and listed:  # one id a line: the plain list scripts already read
        for entity in listed:
            stdout_console().print(Text(entity))
        return
    print_listing(
        listed,
        title="Entity B",
        columns=("entity id",),
        cells=lambda entity: (entity,),
        to_json=lambda entity: {"entityId": entity},
        as_json=as_json,
        empty=f"no Entity B allowed in {_store_name(store)}",
    )


# ----------------------------------------------------------------------------- keys


def _key_state(key: MafKey, now: datetime) -> str:
    return "de-registered" if key.deregistered else "expired" if key.expired(now) else "live"


@app.command("keys")
def keys(
    km_id: Annotated[
        str | None,
        typer.Option("--km-id", metavar="KMID", help="Only the keys of this MAF Client."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Show at most this many.")] = 1000,
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """List key registrations: RelativeKeyID, source, targets, SUID, expiry, state."""
    now = datetime.now(UTC)

    def to_json(key: MafKey) -> dict[str, Any]:
        return {
            "relativeKeyId": key.relative_id,
            "kmId": key.km_id,
            "targetIds": list(key.target_ids),
            "suid": key.suid,
            "expires": utc_time(key.expires_at),
            "state": _key_state(key, now),
        }

    with store_errors(), _open(store) as st:
        shown = print_listing(
            islice(st.list_keys(km_id=km_id), max(limit, 0)),
            title=f"key registrations {_store_name(store)}",
            columns=("relativeKeyID", "source KmId", "targetIDs", "SUID", "expires (UTC)",
                     "state"),
            cells=lambda key: (
                key.relative_id, key.km_id, ", ".join(key.target_ids), str(key.suid),
                utc_time(key.expires_at),
                Text(_key_state(key, now), style="" if _key_state(key, now) == "live" else "red"),
            ),
            to_json=to_json,
            as_json=as_json,
            empty=f"no key registrations in {_store_name(store)}",
        )  # fmt: skip
        if shown and not as_json:
            total = st.count_keys()
            live = st.count_keys(live_at=now)
            stdout_console().print(
                Text(f"{total} key registration(s), {live} live; showing {shown}")
            )


@app.command("audit")
def audit(
    after: Annotated[
        int, typer.Option("--after", metavar="SEQ", help="Only records after this number.")
    ] = 0,
    limit: Annotated[int, typer.Option("--limit", help="Print at most this many.")] = 1000,
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """The audit log (issued, retrieved, refused, de-registered keys), oldest first: a
    table, or --json lines with their sequence numbers; never a key."""
    with store_errors(), _open(store) as st:
        records = st.read_audit(after=after, limit=limit)
    print_audit(
        records,
        title=f"MAF audit {_store_name(store)}",
        as_json=as_json,
        empty=f"no audit records in {_store_name(store)}",
    )


# ----------------------------------------------------------------------------- serve


@app.command()
def serve(
    config: ConfigOption = None,
    fqdn: Annotated[
        str | None, option("--fqdn", metavar="FQDN", help="The MAF's FQDN (MAF-ID).")
    ] = None,
    listen: Annotated[
        str | None,
        url_option(
            "MAF Handshake listener, tls://HOST:PORT (default tls://127.0.0.1:8444).", "--listen"
        ),
    ] = None,
    retrieval_listen: Annotated[
        str | None,
        url_option(
            "Key Retrieval listener, tls://HOST:PORT (default "
            "tls://127.0.0.1:8445); 'off' disables it.",
            "--retrieval-listen",
        ),
    ] = None,
    cert: Annotated[Path | None, file_option("The MAF's FQDN certificate (PEM).")] = None,
    key: Annotated[Path | None, file_option("Its private key (PEM).")] = None,
    ca: Annotated[Path | None, file_option("Trust anchors for Entity B (PEM).")] = None,
    in_domain: Annotated[
        str | None,
        option(
            "--in-domain",
            metavar="FQDN",
            help="IN public domain of Entity B certificates (default: the FQDN "
            "without its first label).",
        ),
    ] = None,
    key_lifetime: Annotated[
        float | None,
        option(
            "--key-lifetime",
            metavar="SECONDS",
            help="Longest Kc lifetime granted (default 86400).",
        ),
    ] = None,
    store: StoreOption = None,
    durability: Annotated[
        str | None,
        option(
            "--durability",
            metavar="MODE",
            help="normal (commits survive the process being killed; the default for SQLite) "
            "or full (also a power cut or a database crash: the default for PostgreSQL).",
        ),
    ] = None,
    mef: Annotated[
        str | None,
        url_option(
            "A MEF's target listener, tls://HOST:PORT: its KeIDs are accepted as KmIDs, Km "
            "fetched there with the MAF's certificate (seed 004).",
            "--mef",
        ),
    ] = None,
    mef_fqdn: Annotated[
        str | None,
        option("--mef-fqdn", metavar="FQDN", help="That MEF's FQDN (default: --mef's host)."),
    ] = None,
    mef_retrieval: Annotated[
        str | None,
        option(
            "--mef-retrieval",
            metavar="PROCEDURE",
            help="How Km is asked of --mef: fetch-credentials (seed 004, the default) or "
            "key-retrieval (MEF Key Retrieval, TS-0003 8.3.5.2.8).",
        ),
    ] = None,
    mef_zn: Annotated[
        str | None,
        url_option(
            "The Zn listener of a MEF's BSF, tls://HOST:PORT: its B-TIDs are accepted as "
            "KmIDs, Km = Ks_NAF fetched over Zn (GBA bootstrap, seed 004 8.3.3.1).",
            "--mef-zn",
        ),
    ] = None,
    mef_bsf_fqdn: Annotated[
        str | None,
        option("--mef-bsf-fqdn", metavar="FQDN", help="That BSF's FQDN (default: its host)."),
    ] = None,
    metrics: MetricsOption = None,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    init: Annotated[bool, init_option("MAF store")] = False,
) -> None:
    """Run the MAF until SIGINT or SIGTERM."""
    from m2msec.config.maf import load_maf_config

    overrides: dict[str, object] = {
        "maf.fqdn": fqdn,
        "maf.listen": listen,
        "maf.retrieval_listen": "" if retrieval_listen == "off" else retrieval_listen,
        "maf.store": store,
        "maf.in_domain": in_domain,
        "maf.key_lifetime": key_lifetime,
        "maf.durability": durability,
        "maf.mef": mef,
        "maf.mef_fqdn": mef_fqdn,
        "maf.mef_retrieval": mef_retrieval,
        "maf.mef_zn": mef_zn,
        "maf.mef_bsf_fqdn": mef_bsf_fqdn,
        "metrics.listen": metrics,
        **path_overrides("certificates", cert=cert, key=key, ca=ca),
    }
    cfg = load_serve_config(
        log_level, load_maf_config, config, overrides, log_format=log_format
    )
    serve_and_report(
        lambda: _server(cfg, init=init),
        _banner,
        _stopped,
        reload_config=lambda: load_maf_config(config, overrides),
    )


def _stopped(maf: MafServer) -> str:
    stats = maf.stats.as_dict()
    return (
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
    mef = cfg.mef_target()
    if mef is not None:
        host, port, fqdn = mef
        how = cfg.mef_retrieval.value
        table.add_row("MEF", f"KeIDs of {fqdn}: Km by {how} at {host}:{port} (seed 004)")
    zn = cfg.mef_zn_target()
    if zn is not None:
        host, port, fqdn = zn
        table.add_row("MEF (BSF)", f"B-TIDs of {fqdn}: Km = Ks_NAF over Zn at {host}:{port}")
    table.add_row(
        "store",
        f"{st.location}: {len(st.list_clients())} clients, "
        f"{st.count_keys(live_at=datetime.now(UTC))} live keys",
    )
    table.add_row("Entity B", ", ".join(st.list_entity_b()) or "none allowed yet")
    table.add_row("audit log", str(maf.audit_path))
    table.add_row("Kc lifetime", f"at most {cfg.key_lifetime:g} s")
    return table
