"""Helpers shared by the CLI sub-commands: one-line errors, context tables, key input,
and running a long-lived server (logging, event loop, signals)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from m2msec.errors import ConfigurationError, M2MSecError, StoreError
from m2msec.tls.context import SecurityContext

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line, no traceback, and exit non-zero (2: a usage or
    configuration error, 1: the operation failed)."""
    text = Text("error: ", style="bold red")
    text.append(message)
    # soft_wrap: a long path in the message stays on one line for grep and for tests.
    Console(stderr=True, highlight=False, soft_wrap=True).print(text)
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


# ----------------------------------------------------------------- serve commands
# ``m2msec gateway serve``, ``maf serve`` and ``bsf serve`` share these steps: check the
# log level, load the config (exit 2 on an error), refuse a missing store unless --init
# (exit 1), start the server, print its banner, run until a signal, then report.

LOG_LEVELS = ("debug", "info", "warning", "error")
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", metavar="FILE", help="TOML configuration file.", show_default=False
    ),
]
LogLevelOption = Annotated[
    str, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error.")
]
C = TypeVar("C")


class Server(Protocol):
    async def start(self) -> None: ...
    async def serve_forever(self, stop: asyncio.Event) -> None: ...


S = TypeVar("S", bound=Server)


def start_logging(level: str) -> None:
    """``--log-level``: refuse an unknown level (exit 2), else log at it."""
    if level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}", 2)
    setup_logging(level)


def load_config_or_exit(
    load: Callable[[Path | None, Mapping[str, Any]], C],
    path: Path | None,
    overrides: Mapping[str, Any],
) -> C:
    """``load(path, overrides)`` (a :mod:`m2msec.config` loader); an error exits 2."""
    try:
        return load(path, overrides)
    except ConfigurationError as exc:
        fail(str(exc), 2)


def require_store(path: str | Path, *, label: str, create: str) -> None:
    """Exit 1 unless the store at ``path`` exists (``--init`` skips this check)."""
    from m2msec.store.schema import require_initialised

    try:
        require_initialised(path, label=label, create=create)
    except StoreError as exc:
        fail(str(exc), 1)


async def _serve(make: Callable[[], S], banner: Callable[[S], RenderableType], out: Console) -> S:
    server = make()
    await server.start()
    out.print(banner(server))
    await serve_until_signalled(server.serve_forever)
    return server


def run_server(
    make: Callable[[], S], banner: Callable[[S], RenderableType], out: Console
) -> S:
    """Build the server (``make``), start it, print ``banner(server)``, serve until
    SIGINT/SIGTERM and return it (for its stats). A configuration error exits 2, any
    other m2msec or OS error 1."""
    try:
        return run_on_fast_loop(_serve(make, banner, out))
    except ConfigurationError as exc:
        fail(str(exc), 2)
    except (M2MSecError, OSError) as exc:
        fail(str(exc), 1)
