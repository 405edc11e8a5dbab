"""``m2msec demo``: TR-0038's home scenario on loopback (see :mod:`m2msec.demo`)."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from m2msec.cli.common import console, fail
from m2msec.errors import M2MSecError


def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="keep keys, stores and CSE logs here (default: a temp dir)")
    ] = None,
) -> None:
    """Run TR-0038's lights, home gateway and IN-CSE with real security associations."""
    from m2msec.demo import run_demo

    logging.getLogger("m2msec").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="m2msec-demo-") as tmp:
        where = workdir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        try:
            result = asyncio.run(run_demo(where, lambda text: console.print(text)))
        except M2MSecError as exc:
            fail(str(exc))
    console.print()
    table = Table(title="Security associations established (SA records on both sides)")
    for col in (
        "Entity A -> Entity B",
        "framework",
        "A bound B to",
        "B bound A to",
        "protocol, suite",
    ):
        table.add_column(col, overflow="fold")
    for label, a_ctx, b_ctx in result.associations:
        framework = a_ctx.framework  # an SA record (the egress's) names it as text
        table.add_row(
            label,
            framework if isinstance(framework, str) else framework.value,
            a_ctx.peer_id,
            b_ctx.peer_id if b_ctx else "(no record)",
            f"{a_ctx.protocol} {a_ctx.cipher_suite}",
        )
    console.print(table)
    stats = Table(title="Gateways")
    for col in ("gateway", "established", "refused handshakes", "forwarded", "refused requests"):
        stats.add_column(col)
    for name, s in result.gateway_stats.items():
        stats.add_row(
            name,
            str(s["associations_established"]),
            str(s["handshakes_failed"]),
            str(s["requests_forwarded"]),
            str(s["requests_refused"]),
        )
    console.print(stats)
    e = result.egress_stats
    if e:
        console.print(
            f"Home gateway egress: {e['sas_established']} SA(s) established to the IN-CSE, "
            f"{e['requests_forwarded']} requests relayed, {e['requests_refused']} refused, "
            f"{e['upstream_errors']} upstream errors"
        )
    if not result.ok:
        failed = [what for what, _, passed in result.steps if not passed]
        fail("demo steps did not go as expected: " + "; ".join(failed))
    console.print("[bold green]All steps behaved as TS-0003 and TR-0038 describe.[/]")
