"""``m2msec gateway serve``: the CSE security gateway from the shell (``rule``: app rules).

Terminates TLS (HTTP) and DTLS (CoAP) with the provisioned-PSK (TS-0003 8.2.2.1),
certificate (8.2.2.2), MAF-based (8.2.2.3) and GBA-based (seed 000 8.2.3.2) frameworks,
checks each request's originator against the authenticated identity
(:mod:`m2msec.servers.gateway`) and forwards what passes to the oneM2M CSE behind it.
Settings come from a TOML file (``--config``, see :mod:`m2msec.config`); options given on
the command line override the file. Runs until SIGINT or SIGTERM, then lets requests in
progress finish and closes every association.

Exit status: 0 after a clean shutdown, 1 when the gateway cannot start (port in use, store
unreadable), 2 for configuration errors.

SIGHUP re-reads the configuration (the same file and options); ``m2msec gateway reload``
asks the same of a running gateway through its admin socket (``POST /reload``) and says
whether the new configuration is in force or why it was refused (exit 1). SIGTERM/SIGINT
drain (``drain_timeout``); a second one exits at once. docs/operations.md "Reload", "Drain".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.table import Table

from m2msec.cli import gateway_rules
from m2msec.cli.common import (
    ConfigOption,
    LogFormatOption,
    LogLevelOption,
    MetricsOption,
    done,
    fail,
    file_option,
    init_option,
    load_serve_config,
    option,
    path_overrides,
    require_store,
    run_on_fast_loop,
    serve_and_report,
    stderr_console,
    store_option,
    sub_app,
    url_option,
)
from m2msec.config import load_config
from m2msec.config.gateway import read_admin_socket
from m2msec.config.listeners import FRAMEWORKS
from m2msec.errors import ConfigurationError, StoreError
from m2msec.paths import default_admin_socket, default_store_path
from m2msec.sa.admin import AdminProtocolError
from m2msec.servers.admin import AdminClient, AdminUnavailable
from m2msec.servers.gateway import Gateway
from m2msec.service.lifecycle import ReloadOutcome

__all__ = ["app"]

app = sub_app("gateway", "The CSE security gateway: TLS and DTLS in front of a oneM2M CSE.")

app.add_typer(gateway_rules.app, name="rule")


#: Every listener scheme :func:`m2msec.config.listeners.parse_listen_url` accepts.
LISTEN_HELP = (
    "A listener: tls://HOST:PORT (HTTP over TLS, forwarded), dtls://HOST:PORT (CoAP over "
    "DTLS, forwarded), http://HOST:PORT (plain, answers 4107) or "
    "egress://HOST:PORT?upstream=https://PEER:PORT (the CSE's way out over an SA the gateway "
    "keeps, loopback; docs/gateway.md section 11); tls:// and dtls:// take "
    f"?framework={'|'.join(FRAMEWORKS)} when several frameworks are configured. Repeat for "
    "several; replaces the file's list."
)


@app.callback()
def _group() -> None:
    """The CSE security gateway: TLS and DTLS in front of a oneM2M CSE."""
    # A callback keeps ``serve`` a sub-command even while it is the only one.


def _banner(gw: Gateway) -> Table:
    cfg = gw.config
    table = Table(title="m2msec gateway", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for info in gw.listeners:
        if info.spec.scheme == "dtls":
            what = f"CoAP over DTLS, {info.framework}, forwards"
        elif info.spec.secure:
            what = f"HTTP over TLS, {info.framework}, forwards"
        elif info.spec.scheme == "egress":
            what = f"egress: the CSE's requests to the upstream over {info.framework}"
        else:
            what = "plain HTTP, answers 4107 SECURITY_ASSOCIATION_REQUIRED"
        table.add_row("listen", f"{info.url}  ({what})")
    table.add_row("backend", cfg.backend)
    learned = " (learned from the backend's CSEBase)" if cfg.cse_id_source == "backend" else ""
    table.add_row("CSE-ID", f"{cfg.cse_id}{learned}")
    if cfg.in_domain is not None:
        read = " (read from our certificate)" if cfg.in_domain_source == "certificate" else ""
        table.add_row("IN domain", f"{cfg.in_domain}{read}")
    if cfg.psk is not None:
        store = gw.store
        rows = "?"
        if store is not None:
            try:
                rows = str(store.count())
            except StoreError as exc:
                rows = f"unreadable ({exc})"
        name = cfg.psk.store or str(default_store_path())
        table.add_row("framework", f"provisioned PSK (TS-0003 8.2.2.1): {name}, {rows} rows")
    if cfg.certificates is not None:
        table.add_row(
            "framework",
            f"certificates (TS-0003 8.2.2.2): {cfg.certificates.cert}, CA {cfg.certificates.ca}",
        )
    if cfg.maf is not None:
        mafs = ", ".join(f"{fqdn} at {host}:{port}" for fqdn, host, port in cfg.maf.addresses)
        table.add_row("framework", f"MAF-based (TS-0003 8.2.2.3): Key Retrieval from {mafs}")
    if cfg.mef is not None:
        m = cfg.mef
        table.add_row(
            "framework",
            f"Enrolee B (seed 004, TS-0003 8.3.2.1): fetchCredentials from {m.fqdn} at "
            f"{m.host}:{m.port}",
        )
    if cfg.gba is not None:
        g = cfg.gba
        table.add_row(
            "framework",
            f"GBA-based (seed 000 8.2.3.2): NAF {g.naf_fqdn}, BSF {g.bsf_fqdn} (Zn at "
            f"{g.bsf_host}:{g.bsf_port})" + (", GBA_U only" if g.require_uicc else ""),
        )
    sa_store = gw.sa.store
    table.add_row(
        "SA records",
        f"{sa_store.database.label if sa_store is not None else '-'} (seed 003; m2msec sa list)",
    )
    admin = gw.sa.admin_server
    table.add_row("SA admin", str(admin.path) + " (mode 0600)" if admin is not None else "off")
    table.add_row("TLS", "1.2 and 1.3" if cfg.tls13 else "1.2 only")
    table.add_row(
        "resumption",
        "on (the framework re-validates each resumed session)" if cfg.resumption else "off",
    )
    return table


@app.command()
def serve(
    listen: Annotated[
        list[str] | None,
        url_option(LISTEN_HELP, "--listen", "-l"),
    ] = None,
    backend: Annotated[str | None, url_option("The oneM2M CSE behind the gateway.")] = None,
    cse_id: Annotated[
        str | None,
        option(
            "--cse-id",
            metavar="ID",
            help="CSE-ID of the CSE behind the gateway, e.g. /mn-cse-123456 (default: the "
            "csi of the backend's CSEBase, retrieved at start).",
        ),
    ] = None,
    in_domain: Annotated[
        str | None,
        option(
            "--in-domain",
            metavar="FQDN",
            help="IN public domain (default: the one our certificate names, "
            "<CSE-ID>.<IN domain> in its subjectAltName).",
        ),
    ] = None,
    cse_originators: Annotated[
        str | None,
        option(
            "--cse-originators",
            metavar="RULES",
            help="CSE peers' From: ts-0004 (TS-0004 7.3.2.1, default) or strict (under the "
            "peer's CSE-ID).",
        ),
    ] = None,
    store: Annotated[
        str | None,
        store_option("psk-lookup-table: a file, sqlite:///absolute/path or postgresql://... URL."),
    ] = None,
    sa_store: Annotated[
        str | None,
        option(
            "--sa-store",
            metavar="PATH",
            help="SA records: a file, sqlite:///absolute/path or postgresql://... URL "
            "(default: sa.db in the data directory).",
        ),
    ] = None,
    admin_socket: Annotated[
        str | None,
        option(
            "--admin-socket",
            metavar="PATH",
            help="The SA admin socket of m2msec sa (default: admin.sock in the data "
            "directory; '' turns it off).",
        ),
    ] = None,
    cert: Annotated[Path | None, file_option("Our certificate (PEM).")] = None,
    key: Annotated[Path | None, file_option("Our private key (PEM).")] = None,
    ca: Annotated[Path | None, file_option("Trust anchors (PEM).")] = None,
    config: ConfigOption = None,
    first_flight_timeout: Annotated[
        float | None,
        option(
            "--first-flight-timeout",
            metavar="SECONDS",
            help="Seconds from accept to a whole ClientHello (default 2).",
        ),
    ] = None,
    source_share: Annotated[
        float | None,
        option(
            "--source-share",
            metavar="FRACTION",
            help="Share of max_handshakes one source address may hold (default 0.25).",
        ),
    ] = None,
    max_associations_per_credential: Annotated[
        int | None,
        option(
            "--max-associations-per-credential",
            metavar="N",
            help="Live associations one credential may hold; more are refused (default 64).",
        ),
    ] = None,
    request_head_timeout: Annotated[
        float | None,
        option(
            "--request-head-timeout",
            metavar="SECONDS",
            help="Seconds from a request head's first byte to its end; then 408 (default 10).",
        ),
    ] = None,
    metrics: MetricsOption = None,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    init: Annotated[bool, init_option("psk-lookup-table")] = False,
) -> None:
    """Run the gateway until SIGINT or SIGTERM."""
    overrides: dict[str, object] = {
        "gateway.listen": list(listen) if listen else None,
        "gateway.backend": backend,
        "gateway.cse_id": cse_id,
        "gateway.in_domain": in_domain,
        "gateway.cse_originators": cse_originators,
        "psk.store": store,
        "sa.store": sa_store,
        "sa.admin_socket": admin_socket,
        **path_overrides("certificates", cert=cert, key=key, ca=ca),
        "gateway.first_flight_timeout": first_flight_timeout,
        "gateway.source_share": source_share,
        "gateway.max_associations_per_credential": max_associations_per_credential,
        "gateway.request_head_timeout": request_head_timeout,
        "metrics.listen": metrics,
    }
    cfg = load_serve_config(
        log_level, load_config, config, overrides, log_format=log_format
    )
    if cfg.psk is not None and not init:
        require_store(
            cfg.psk.store or default_store_path(),
            label="psk-lookup-table",
            create="m2msec psk add / psk import",
        )
    serve_and_report(
        lambda: Gateway(cfg),
        _banner,
        _stopped,
        reload_config=lambda: load_config(config, overrides),
    )


@app.command()
def reload(
    admin_socket: Annotated[
        Path | None,
        option(
            "--admin-socket",
            metavar="PATH",
            help="The running gateway's admin socket (default: [sa] admin_socket of --config, "
            "else admin.sock in the data directory).",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Make a running gateway re-read its configuration (as SIGHUP does) and say how it went.

    Certificates, keys, trust anchors, CRLs and the TOML are re-read; new handshakes use
    them, live associations continue. A configuration that fails (or changes a setting
    that needs a restart) is refused whole, the running one stays, and this exits 1.
    """
    path = admin_socket or _socket_of(config)

    async def ask() -> ReloadOutcome:
        async with AdminClient(path, timeout=60.0) as client:
            return await client.reload()

    try:
        outcome = run_on_fast_loop(ask())
    except (AdminUnavailable, AdminProtocolError) as exc:
        fail(str(exc), 1)
    if not outcome.applied:
        fail(f"reload refused, the running configuration stays in force: {outcome.message}", 1)
    done("reloaded:", outcome.message)


def _socket_of(config: Path | None) -> Path:
    if config is not None:
        try:
            configured = read_admin_socket(config)
        except ConfigurationError as exc:
            # Unreadable TOML: the gateway will say why; its socket may be the default one.
            stderr_console().print(
                f"warning: {exc}; trying the default admin socket (or give --admin-socket)",
                markup=False,
            )
            configured = None
        if configured == "":
            fail(f'{config} turns the admin socket off ([sa] admin_socket = ""): send SIGHUP', 2)
        if configured is not None:
            return Path(configured)
    return default_admin_socket()


def _stopped(gw: Gateway) -> str:
    stats = gw.stats
    return (
        f"stopped: {stats.associations_established} associations, "
        f"{stats.requests_forwarded} requests forwarded, {stats.requests_refused} refused, "
        f"{stats.plain_requests_refused} plain requests answered 4107"
    )
