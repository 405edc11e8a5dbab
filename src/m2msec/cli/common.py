"""Helpers shared by the CLI sub-commands: one-line errors, context tables, key input,
and running a long-lived server (logging, event loop, signals)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

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


T = TypeVar("T")


def setup_logging(level: str) -> None:
    """Log m2msec's records at ``level`` (a name such as "info") to stderr."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("m2msec").setLevel(level.upper())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: about 1.4x the handshakes and 1.9x the round trips of
    asyncio's own loop in bench/bench_handshakes.py (docs/performance.md)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_on_fast_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on uvloop when installed, else on asyncio's own loop."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


async def serve_until_signalled(serve_forever: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a server's ``serve_forever(stop)`` until SIGINT or SIGTERM sets ``stop``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve_forever(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
