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
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from m2msec.cli import gateway_rules
from m2msec.cli.common import (
    ConfigOption,
    LogLevelOption,
    load_config_or_exit,
    require_store,
    run_server,
    start_logging,
)
from m2msec.config import load_config
from m2msec.errors import StoreError
from m2msec.paths import default_store_path
from m2msec.servers.gateway import Gateway

__all__ = ["app"]

app = typer.Typer(
    name="gateway",
    help="The CSE security gateway: TLS and DTLS in front of a oneM2M CSE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals could hold keys
)

app.add_typer(gateway_rules.app, name="rule")


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
        else:
            what = "plain HTTP, answers 4107 SECURITY_ASSOCIATION_REQUIRED"
        table.add_row("listen", f"{info.url}  ({what})")
    table.add_row("backend", cfg.backend)
    table.add_row("CSE-ID", str(cfg.cse_id))
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
    if cfg.gba is not None:
        g = cfg.gba
        table.add_row(
            "framework",
            f"GBA-based (seed 000 8.2.3.2): NAF {g.naf_fqdn}, BSF {g.bsf_fqdn} (Zn at "
            f"{g.bsf_host}:{g.bsf_port})" + (", GBA_U only" if g.require_uicc else ""),
        )
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
        typer.Option(
            "--listen",
            "-l",
            metavar="URL",
            help="tls://HOST:PORT or http://HOST:PORT; repeat for several. Replaces the "
            "file's list.",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(metavar="URL", help="The oneM2M CSE behind the gateway.", show_default=False),
    ] = None,
    cse_id: Annotated[
        str | None,
        typer.Option(
            "--cse-id",
            metavar="ID",
            help="CSE-ID of the CSE behind the gateway, e.g. /mn-cse-123456.",
            show_default=False,
        ),
    ] = None,
    in_domain: Annotated[
        str | None,
        typer.Option(
            "--in-domain", metavar="FQDN", help="IN public domain.", show_default=False
        ),
    ] = None,
    cse_originators: Annotated[
        str | None,
        typer.Option(
            "--cse-originators",
            metavar="RULES",
            help="CSE peers' From: ts-0004 (TS-0004 7.3.2.1, default) or strict (under the "
            "peer's CSE-ID).",
            show_default=False,
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="psk-lookup-table: a file, sqlite:///absolute/path or postgresql://... URL.",
            show_default=False,
        ),
    ] = None,
    cert: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Our certificate (PEM).", show_default=False)
    ] = None,
    key: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Our private key (PEM).", show_default=False)
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Trust anchors (PEM).", show_default=False),
    ] = None,
    config: ConfigOption = None,
    first_flight_timeout: Annotated[
        float | None,
        typer.Option("--first-flight-timeout", metavar="SECONDS",
                     help="Seconds from accept to a whole ClientHello (default 2).",
                     show_default=False),
    ] = None,
    source_share: Annotated[
        float | None,
        typer.Option("--source-share", metavar="FRACTION",
                     help="Share of max_handshakes one source address may hold (default 0.25).",
                     show_default=False),
    ] = None,
    max_associations_per_credential: Annotated[
        int | None,
        typer.Option("--max-associations-per-credential", metavar="N",
                     help="Live associations one credential may hold; more are refused "
                     "(default 64).", show_default=False),
    ] = None,
    request_head_timeout: Annotated[
        float | None,
        typer.Option("--request-head-timeout", metavar="SECONDS",
                     help="Seconds from a request head's first byte to its end; then 408 "
                     "(default 10).", show_default=False),
    ] = None,
    log_level: LogLevelOption = "info",
    init: Annotated[
        bool,
        typer.Option("--init", help="Create the psk-lookup-table if it does not exist yet."),
    ] = False,
) -> None:
    """Run the gateway until SIGINT or SIGTERM."""
    start_logging(log_level)
    overrides: dict[str, object] = {
        "gateway.listen": list(listen) if listen else None,
        "gateway.backend": backend,
        "gateway.cse_id": cse_id,
        "gateway.in_domain": in_domain,
        "gateway.cse_originators": cse_originators,
        "psk.store": store,
        "certificates.cert": None if cert is None else str(cert),
        "certificates.key": None if key is None else str(key),
        "certificates.ca": None if ca is None else str(ca),
        "gateway.first_flight_timeout": first_flight_timeout,
        "gateway.source_share": source_share,
        "gateway.max_associations_per_credential": max_associations_per_credential,
        "gateway.request_head_timeout": request_head_timeout,
    }
    cfg = load_config_or_exit(load_config, config, overrides)
    if cfg.psk is not None and not init:
        require_store(
            cfg.psk.store or default_store_path(),
            label="psk-lookup-table",
            create="m2msec psk add / psk import",
        )
    console = Console(highlight=False)
    gw = run_server(lambda: Gateway(cfg), _banner, console)
    stats = gw.stats
    console.print(
        f"stopped: {stats.associations_established} associations, "
        f"{stats.requests_forwarded} requests forwarded, {stats.requests_refused} refused, "
        f"{stats.plain_requests_refused} plain requests answered 4107"
    )
