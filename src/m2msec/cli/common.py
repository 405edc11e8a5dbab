"""Helpers shared by the CLI sub-commands: one-line errors, context tables, key input."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from m2msec.tls.context import SecurityContext

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line, no traceback, and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def read_key(value: str, what: str = "key") -> bytes:
    """A hex key from the command line, or from stdin when given as ``-``.

    Reading from stdin keeps the key out of ``ps`` and shell history.
    """
    text = sys.stdin.readline().strip() if value == "-" else value.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        fail(f"{what} must be hexadecimal")
    if not 0 < len(key) <= 64:
        fail(f"{what} must be 1 to 64 octets, got {len(key)}")
    return key


def context_details(ctx: SecurityContext) -> Table:
    """One association as a two-column table, readable in a narrow terminal."""
    table = Table(show_header=False, title="Security association", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = (
        ("framework", ctx.framework.value),
        ("peer (as bound)", f"{ctx.peer_id} ({ctx.peer_kind.value})"),
        ("protocol", ctx.protocol),
        ("cipher suite", ctx.cipher_suite),
        ("key id", ctx.key_id or "-"),
        ("server name", ctx.server_name or "-"),
        ("valid until", ctx.valid_until.isoformat(timespec="seconds") if ctx.valid_until else "-"),
        ("SA id", ctx.sa_id),
    )
    for key, value in rows:
        table.add_row(key, value)
    return table
