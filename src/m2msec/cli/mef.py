"""``m2msec mef``: the M2M Enrolment Function (TS-0003 8.3.2.1, seed 004) from the shell.

``serve`` runs the MEF (:mod:`m2msec.servers.mef`): its Enrolee listeners (the bootstrap
handshake, TLS-PSK with KpmID/Kpm or certificates, then the Enrolment Exchange) and its
target listener (fetchCredentials and MEF Key Retrieval over mutual TLS). The commands
that manage its store (Enrolees, allowed targets, enrolments, audit, import) come from
:mod:`m2msec.cli.mef_admin`.

Keys are never printed. Exit status: 0 on success, 1 when the store refuses or the server
cannot run, 2 for malformed input or configuration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from rich.table import Table

from m2msec.cli import mef_admin
from m2msec.cli.common import (
    ConfigOption,
    LogFormatOption,
    LogLevelOption,
    MetricsOption,
    file_option,
    init_option,
    key_value_table,
    load_serve_config,
    option,
    path_overrides,
    serve_and_report,
    sub_app,
)
from m2msec.cli.mef_admin import StoreOption

if TYPE_CHECKING:
    from m2msec.config.mef import MefConfig
    from m2msec.servers.mef import MefServer

__all__ = ["app"]

app = sub_app("mef", "The M2M Enrolment Function (TS-0003 8.3.2.1): serve, and manage its store.")

mef_admin.register(app)  # the store commands (add-enrolee, allow-target, keys, audit, ...)


@app.command("serve")
def serve(
    config: ConfigOption = None,
    fqdn: Annotated[
        str | None, option("--fqdn", metavar="FQDN", help="The MEF-FQDN (the domain of KeIDs).")
    ] = None,
    enrolee_listen: Annotated[
        list[str] | None,
        option(
            "--listen",
            "--enrolee-listen",
            metavar="URL",
            help="Enrolee listener, tls://HOST:PORT (TLS-PSK, KpmID/Kpm), "
            "tls://HOST:PORT?framework=certificate or dtls://HOST:PORT; repeat for several "
            "(default tls://127.0.0.1:8446).",
        ),
    ] = None,
    target_listen: Annotated[
        str | None,
        option(
            "--target-listen",
            metavar="URL",
            help="fetchCredentials and MEF Key Retrieval listener, tls://HOST:PORT, mutual "
            "TLS (default tls://127.0.0.1:8447); 'off' disables it.",
        ),
    ] = None,
    cert: Annotated[Path | None, file_option("The MEF's FQDN certificate (PEM).")] = None,
    key: Annotated[Path | None, file_option("Its private key (PEM).")] = None,
    ca: Annotated[
        Path | None, file_option("Trust anchors for targets and certificate Enrolees (PEM).")
    ] = None,
    in_domain: Annotated[
        str | None,
        option(
            "--in-domain",
            metavar="FQDN",
            help="IN public domain of CSE certificates (default: the FQDN without its "
            "first label).",
        ),
    ] = None,
    store: StoreOption = None,
    metrics: MetricsOption = None,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    init: Annotated[bool, init_option("MEF store")] = False,
) -> None:
    """Run the MEF until SIGINT or SIGTERM."""
    from m2msec.config.mef import load_mef_config

    overrides: dict[str, object] = {
        "mef.fqdn": fqdn,
        "mef.enrolee_listen": enrolee_listen or None,
        "mef.target_listen": "" if target_listen == "off" else target_listen,
        "mef.store": store,
        "mef.in_domain": in_domain,
        "metrics.listen": metrics,
        **path_overrides("certificates", cert=cert, key=key, ca=ca),
    }
    cfg = load_serve_config(
        log_level, load_mef_config, config, overrides, log_format=log_format
    )
    serve_and_report(
        lambda: _server(cfg, init=init),
        _banner,
        _stopped,
        reload_config=lambda: load_mef_config(config, overrides),
    )


def _server(cfg: MefConfig, *, init: bool) -> MefServer:
    from m2msec.servers.mef import MefServer

    mef = MefServer(cfg)
    mef.require_existing_store = not init  # a new store only with --init
    return mef


def _banner(mef: MefServer) -> Table:
    st = mef.store
    rows = [("MEF-FQDN", mef.config.fqdn)]
    for listener in mef.listeners:
        what = (
            "fetchCredentials, MEF Key Retrieval, mutual TLS"
            if listener.role == "target"
            else f"bootstrap, {'certificates' if listener.framework == 'certificate' else 'PSK'}"
        )
        rows.append((f"{listener.role} listener", f"{listener.url}  ({what})"))
    rows.append(
        (
            "store",
            f"{st.location}: {len(st.list_enrolees())} Enrolees, "
            f"{st.count_enrolments(live_at=datetime.now(UTC))} live enrolments",
        )
    )
    rows.append(("targets", ", ".join(str(t) for t in st.list_targets()) or "none allowed yet"))
    table = key_value_table(rows)
    table.title = "m2msec MEF"
    table.title_justify = "left"
    return table


def _stopped(mef: MefServer) -> str:
    s = mef.stats
    return (
        f"stopped: {s['enrolments']} enrolments, {s['fetched']} credentials fetched, "
        f"{s['enrolments_refused'] + s['fetch_refused']} requests refused, "
        f"{s['handshakes_failed']} handshakes refused"
    )
