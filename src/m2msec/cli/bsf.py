"""``m2msec bsf``: the BSF with its HSS simulator (TS 33.220), from the shell.

* ``m2msec bsf serve`` runs Ub (HTTP Digest AKA bootstrapping, TS 24.109) and Zn (NAF key
  retrieval over mutual TLS, our mapping of TS 29.109), see :mod:`m2msec.servers.bsf`.
  Settings come from a TOML file (``--config``, section ``[bsf]``); options override it.
* ``m2msec bsf add-subscriber IMPI --k HEX (--opc HEX | --op HEX)`` provisions a
  subscriber of the HSS simulator: K and OPc (computed from OP with MILENAGE when ``--op``
  is given; OP itself is not stored), SQN_HE (``--sqn``, 12 hex digits, default 0), the AMF
  of its vectors (``--amf``, default 0000), the NAFs it may use (``--allow-naf FQDN``,
  repeatable; ``--uss FQDN=JSON`` gives a NAF its user security settings, e.g.
  ``'mn.example.com={"aeId": "/mn-cse/Cdev"}'``; ``--any-naf`` allows every NAF) and
  ``--uicc`` for a UICC-based (GBA_U) credential. ``--k``, ``--opc`` and ``--op`` take
  ``-`` (standard input, a hidden prompt on a terminal), ``@FILE`` or their ``--*-file``
  twin (docs/cli.md "Secret options"); a literal value works with a warning.
* ``m2msec bsf list`` shows the subscribers (never their keys; ``--json``: JSON lines),
  ``m2msec bsf remove IMPI`` removes one with its bootstrapping sessions.

Exit status: 0 on success, 1 when the store or the server fails, 2 for malformed input
or configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from m2msec.cli.common import (
    ConfigOption,
    JsonOption,
    LogFormatOption,
    LogLevelOption,
    MetricsOption,
    exactly_one,
    fail,
    file_option,
    init_option,
    load_serve_config,
    option,
    path_overrides,
    print_listing,
    require_store,
    serve_and_report,
    stderr_console,
    stdout_console,
    store_errors,
    store_option,
    sub_app,
    url_option,
)
from m2msec.cli.secrets import secret_file_option, secret_option, secret_text
from m2msec.crypto.milenage import opc as derive_opc
from m2msec.gba.aka import DEFAULT_AMF
from m2msec.gba.records import Guss, Subscriber
from m2msec.gba.subscribers import SubscriberStore, default_bsf_store_path
from m2msec.servers.bsf import BsfServer, load_bsf_config

__all__ = ["app"]

app = sub_app("bsf", "The BSF and its HSS simulator (3GPP TS 33.220 GBA).")


StoreOption = Annotated[
    str | None,
    store_option(
        "Subscriber store: a file, sqlite:///absolute/path or postgresql://... URL "
        "(default: bsf.db in the m2msec data directory)."
    ),
]


def _read_hex(value: str, what: str, length: int) -> bytes:
    text = value.strip().replace(":", "").replace(" ", "")
    if text.lower().startswith("0x"):
        text = text[2:]
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        fail(f"{what} must be hexadecimal", 2)
    if len(raw) != length:
        fail(f"{what} must be {length} octets ({2 * length} hex digits), got {len(raw)}", 2)
    return raw


@app.callback()
def _group() -> None:
    """The BSF and its HSS simulator (3GPP TS 33.220 GBA)."""


# ----------------------------------------------------------------------------- subscribers


@app.command("add-subscriber")
def add_subscriber(
    impi: Annotated[str, typer.Argument(metavar="IMPI", help="Private user identity (NAI).")],
    k: Annotated[str | None, secret_option("--k", "Subscriber key K (16 octets, hex)")] = None,
    k_file: Annotated[Path | None, secret_file_option("--k-file", "K in hex")] = None,
    opc: Annotated[str | None, secret_option("--opc", "OPc (16 octets, hex)")] = None,
    opc_file: Annotated[Path | None, secret_file_option("--opc-file", "OPc in hex")] = None,
    op: Annotated[
        str | None, secret_option("--op", "OP (16 octets, hex); OPc is derived, OP not kept")
    ] = None,
    op_file: Annotated[Path | None, secret_file_option("--op-file", "OP in hex")] = None,
    sqn: Annotated[
        str, typer.Option("--sqn", metavar="HEX", help="SQN_HE, 6 octets.")
    ] = "000000000000",
    amf: Annotated[
        str, typer.Option("--amf", metavar="HEX", help="AMF of the vectors, 2 octets.")
    ] = DEFAULT_AMF.hex(),
    allow_naf: Annotated[
        list[str] | None,
        option(
            "--allow-naf", metavar="FQDN", help="A NAF the subscriber may use (repeat)."
        ),
    ] = None,
    uss: Annotated[
        list[str] | None,
        option(
            "--uss", metavar="FQDN=JSON", help="A NAF with its user security settings."
        ),
    ] = None,
    any_naf: Annotated[
        bool, typer.Option("--any-naf", help="Allow every NAF (empty USS).")
    ] = False,
    uicc: Annotated[
        bool, typer.Option("--uicc", help="UICC-based credential: GBA_U (Ks_int_NAF).")
    ] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing one.")] = False,
    store: StoreOption = None,
) -> None:
    """Provision a subscriber of the HSS simulator."""
    if k is None and k_file is None:
        fail("give K: --k - (standard input), --k @FILE or --k-file FILE", 2)
    exactly_one(opc=opc if opc_file is None else opc_file, op=op if op_file is None else op_file)
    key = _read_hex(secret_text(k, "--k", file=k_file, prompt="K (hexadecimal)") or "", "K", 16)
    opc_text = secret_text(opc, "--opc", file=opc_file, prompt="OPc (hexadecimal)")
    if opc_text is not None:
        opc_value = _read_hex(opc_text, "OPc", 16)
    else:
        op_text = secret_text(op, "--op", file=op_file, prompt="OP (hexadecimal)") or ""
        opc_value = derive_opc(key, _read_hex(op_text, "OP", 16))
    sqn_value = int.from_bytes(_read_hex(sqn, "SQN", 6), "big")
    amf_value = _read_hex(amf, "AMF", 2)
    nafs: dict[str, dict[str, Any]] = {f: {} for f in allow_naf or ()}
    for item in uss or ():
        fqdn, sep, text = item.partition("=")
        if not sep:
            fail(f"--uss {item!r}: write FQDN=JSON", 2)
        try:
            value = json.loads(text)
        except ValueError as exc:
            fail(f"--uss {fqdn}: not JSON: {exc}", 2)
        if not isinstance(value, dict):
            fail(f"--uss {fqdn}: the USS must be a JSON object", 2)
        nafs[fqdn] = value
    with store_errors():
        guss = Guss.allowing(nafs, any_naf=any_naf)
        with SubscriberStore(store) as st:
            sub = st.add_subscriber(
                impi,
                k=key,
                opc=opc_value,
                sqn=sqn_value,
                amf=amf_value,
                guss=guss,
                uicc=uicc,
                replace=replace,
            )
            where = st.label
    allowed = "any NAF" if any_naf else (", ".join(sorted(guss.nafs)) or "no NAF yet")
    stdout_console().print(
        f"added {sub.impi} ({sub.gba_type}, SQN {sub.sqn:012x}, AMF {sub.amf.hex()}; "
        f"allowed: {allowed}) to {where}"
    )
    if not guss.nafs and not any_naf:
        stderr_console().print(
            Text(
                "warning: no NAF is allowed: every Zn request for this subscriber will be "
                "refused (use --allow-naf or --any-naf)",
                style="yellow",
            )
        )


def _subscriber_json(sub: Subscriber) -> dict[str, Any]:
    return {
        "impi": sub.impi,
        "type": sub.gba_type,
        "sqn": f"{sub.sqn:012x}",
        "amf": sub.amf.hex(),
        "anyNaf": sub.guss.any_naf,
        "nafs": {fqdn: dict(uss) for fqdn, uss in sorted(sub.guss.nafs.items())},
    }


def _subscriber_cells(sub: Subscriber) -> tuple[str, ...]:
    nafs = [fqdn + (f" {json.dumps(dict(uss))}" if uss else "")
            for fqdn, uss in sorted(sub.guss.nafs.items())]  # fmt: skip
    if sub.guss.any_naf:
        nafs.append("(any NAF)")
    return sub.impi, sub.gba_type, f"{sub.sqn:012x}", sub.amf.hex(), ", ".join(nafs) or "-"


@app.command("list")
def list_subscribers(as_json: JsonOption = False, store: StoreOption = None) -> None:
    """Show the subscribers (never their keys)."""
    with store_errors(), SubscriberStore(store) as st:
        subs = st.list_subscribers()
        sessions = st.count_sessions()
        where = st.label
    print_listing(
        subs,
        title=f"subscribers in {where}",
        columns=("IMPI", "type", "SQN", "AMF", "allowed NAFs"),
        cells=_subscriber_cells,
        to_json=_subscriber_json,
        as_json=as_json,
        empty=f"no subscribers in {where}",
    )
    if not as_json:
        stdout_console().print(f"{len(subs)} subscriber(s), {sessions} bootstrapping session(s)")


@app.command("remove")
def remove(
    impi: Annotated[str, typer.Argument(metavar="IMPI")],
    store: StoreOption = None,
) -> None:
    """Remove a subscriber and its bootstrapping sessions."""
    with store_errors(), SubscriberStore(store) as st:
        removed = st.remove_subscriber(impi)
    if not removed:
        fail(f"no subscriber {impi!r}", 1)
    stdout_console().print(f"removed {impi}")


# ----------------------------------------------------------------------------- serve


def _banner(bsf: BsfServer) -> Table:
    cfg = bsf.config
    table = Table(title="m2msec BSF", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("FQDN", f"{cfg.fqdn} (realm, B-TID domain)")
    for host, port in bsf.ub_addresses:
        table.add_row("Ub", f"http://{host}:{port}/  (HTTP Digest AKA, TS 24.109)")
    for host, port in bsf.zn_addresses:
        table.add_row("Zn", f"tls://{host}:{port}  (mutual TLS, NAF certificates from {cfg.ca})")
    store = bsf.store
    table.add_row(
        "store",
        f"{store.label}: {store.count_subscribers()} subscriber(s), "
        f"{store.count_sessions()} session(s)",
    )
    table.add_row("Ks lifetime", f"{cfg.ks_lifetime:g} s")
    return table


@app.command()
def serve(
    listen: Annotated[
        list[str] | None,
        url_option("Ub listener http://HOST:PORT (repeat).", "--listen", "-l"),
    ] = None,
    zn_listen: Annotated[
        list[str] | None, url_option("Zn listener tls://HOST:PORT (repeat).", "--zn-listen")
    ] = None,
    fqdn: Annotated[
        str | None, option("--fqdn", metavar="FQDN", help="The BSF's FQDN.")
    ] = None,
    store: StoreOption = None,
    cert: Annotated[Path | None, file_option("Our FQDN certificate (PEM).")] = None,
    key: Annotated[Path | None, file_option("Our private key (PEM).")] = None,
    ca: Annotated[Path | None, file_option("CA of the NAF certificates (PEM).")] = None,
    ks_lifetime: Annotated[
        float | None,
        option("--ks-lifetime", metavar="SECONDS", help="Key lifetime."),
    ] = None,
    ub_rate: Annotated[
        float | None,
        option(
            "--ub-rate",
            metavar="PER_SECOND",
            help="Ub requests per second per source address (then 429).",
        ),
    ] = None,
    ub_burst: Annotated[
        int | None,
        option("--ub-burst", metavar="N", help="Burst of the Ub rate limit."),
    ] = None,
    config: ConfigOption = None,
    metrics: MetricsOption = None,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    init: Annotated[bool, init_option("BSF store")] = False,
) -> None:
    """Run the BSF until SIGINT or SIGTERM."""
    overrides: dict[str, Any] = {
        "bsf.listen": list(listen) if listen else None,
        "bsf.zn_listen": list(zn_listen) if zn_listen else None,
        "bsf.fqdn": fqdn,
        **path_overrides("bsf", store=store, cert=cert, key=key, ca=ca),
        "bsf.ks_lifetime": ks_lifetime,
        "bsf.ub_rate": ub_rate,
        "bsf.ub_burst": ub_burst,
        "metrics.listen": metrics,
    }
    cfg = load_serve_config(
        log_level, load_bsf_config, config, overrides, log_format=log_format
    )
    if not init:
        require_store(
            cfg.store or default_bsf_store_path(),
            label="BSF store",
            create="m2msec bsf add-subscriber",
        )
    serve_and_report(
        lambda: BsfServer(cfg),
        _banner,
        _stopped,
        reload_config=lambda: load_bsf_config(config, overrides),
    )


def _stopped(bsf: BsfServer) -> str:
    stats = bsf.stats
    return (
        f"stopped: {stats.bootstraps} bootstrap(s), {stats.resyncs} resynchronisation(s), "
        f"{stats.zn_answered} Zn key(s) given, {stats.ub_refused + stats.zn_refused} refused, "
        f"{stats.ub_rate_limited} rate-limited, {stats.challenges_reused} challenge(s) reused"
    )
