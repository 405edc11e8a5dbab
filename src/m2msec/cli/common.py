"""Helpers shared by the CLI sub-commands: the one place for what they have in common.

A sub-command group (:func:`sub_app`), the shared options (``--store``, ``--config``,
``--log-level``, ``--init`` and the option shapes every command repeats), output consoles,
key-value tables and "done" lines, one-line errors and their exit codes (:func:`fail`,
:func:`exit_on_errors`, :func:`store_errors`, :func:`exactly_one`: 2 for a usage or
configuration error, 1 when the operation failed), key input, and the ``serve`` commands'
steps: load the config with the options as overrides, run a long-lived server until a
signal (logging, event loop, signals)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from m2msec import logs
from m2msec.errors import ConfigurationError, IdentifierError, M2MSecError, StoreError
from m2msec.tls.context import SecurityContext

console = Console()
err_console = Console(stderr=True)


def sub_app(name: str, help: str) -> typer.Typer:
    """A sub-command group: its help when called bare, no shell completion, and never
    the locals of a crashed command in a traceback (they could hold a key)."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
    )


# ----------------------------------------------------------------- option shapes
# Each returns the typer.Option to put in ``Annotated[type, ...]``; the help texts stay
# with the commands. No square brackets in help texts: typer renders them as rich markup.


def option(*names: str, metavar: str | None = None, help: str) -> Any:
    """An option whose default is not shown in the help: a required one, or one whose
    None stands for the config file's or the built-in value."""
    return typer.Option(*names, metavar=metavar, help=help, show_default=False)


def file_option(help: str, *names: str) -> Any:
    """An optional ``FILE`` option (a certificate, a key, trust anchors)."""
    return option(*names, metavar="FILE", help=help)


def url_option(help: str, *names: str) -> Any:
    """An optional ``URL`` option (a listener, a backend)."""
    return option(*names, metavar="URL", help=help)


def store_option(help: str) -> Any:
    """``--store PATH``: a store file or URL; each store says its default in ``help``."""
    return option("--store", metavar="PATH", help=help)


def import_file_argument(help: str, metavar: str = "FILE") -> Any:
    """The ``FILE`` of an ``import`` command: it must exist and be a readable file."""
    return typer.Argument(metavar=metavar, help=help, exists=True, dir_okay=False, readable=True)


def init_option(store: str) -> Any:
    """``--init`` of a ``serve`` command: create ``store`` when missing."""
    return typer.Option("--init", help=f"Create the {store} if it does not exist yet.")


StoreOption = Annotated[
    str | None,
    store_option(
        "Store file, sqlite:///absolute/path or postgresql://user@host/db URL "
        "(default: m2msec.db in $M2MSEC_HOME, "
        "else in $XDG_DATA_HOME/m2msec, else in ~/.local/share/m2msec)."
    ),
]
"""``--store``: the gateway's psk store (psk-lookup-table, registry, app rules)."""


def stdout_console() -> Console:
    """Standard output for results. Built per call so that it writes to whatever
    sys.stdout is now (CliRunner swaps it); soft_wrap keeps long ids on one line."""
    return Console(highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    """Standard error, as :func:`stdout_console`."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def done(message: str, subject: str, rest: str = "") -> None:
    """One green line on stdout: ``message`` then ``subject`` in bold, then ``rest``."""
    text = Text(message + " ", style="green")
    text.append(subject, style="bold")
    if rest:
        text.append(rest)
    stdout_console().print(text)


def utc_time(moment: datetime | None) -> str:
    """``moment`` as ``2026-01-31T12:00:00Z``, or ``-`` for none (expiries, creation)."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def listing_table(title: str, *columns: str) -> Table:
    """A store listing: titled on the left, one column per name, each cell on one line
    (ids stay whole for grep and copy)."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=True)
    return table


def key_value_table(rows: list[tuple[str, str]]) -> Table:
    """Rows of (name, value), borderless; values as plain text, never markup."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, Text(value))
    return table


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line, no traceback, and exit non-zero (2: a usage or
    configuration error, 1: the operation failed)."""
    text = Text("error: ", style="bold red")
    text.append(message)  # a Text, not markup: ids may contain '[' and ']'
    # soft_wrap: a long path in the message stays on one line for grep and for tests.
    stderr_console().print(text)
    raise typer.Exit(code)


def exactly_one(**options: object) -> None:
    """Exit 2 unless exactly one of two alternative options was given (not None);
    ``entity_id=...`` names ``--entity-id`` in the message."""
    given = [value is not None for value in options.values()]
    if given.count(True) != 1:
        names = " and ".join("--" + name.replace("_", "-") for name in options)
        fail(f"give exactly one of {names}", 2)


def error_text(exc: BaseException) -> str:
    """The message of ``exc``; a KeyError (UnknownCredentialError) would quote it in str()."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


@contextmanager
def exit_on_errors(
    usage: tuple[type[Exception], ...] = (), failure: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """Expected errors become one line and an exit code, never a traceback: ``usage``
    errors exit 2, ``failure`` errors 1 (``usage`` is tried first)."""
    try:
        yield
    except usage as exc:
        fail(error_text(exc), 2)
    except failure as exc:
        fail(error_text(exc), 1)


def store_errors() -> AbstractContextManager[None]:
    """The store commands' errors: a malformed id or value exits 2, a refusing store 1."""
    return exit_on_errors(usage=(IdentifierError, ConfigurationError), failure=(StoreError,))


def read_secret(value: str, prompt: str) -> str:
    """``value``, or for ``-`` a line of stdin (a hidden ``prompt`` on a terminal): a key
    read so keeps out of ``ps`` and shell history."""
    if value != "-":
        return value
    if sys.stdin.isatty():
        text: str = typer.prompt(prompt, hide_input=True, err=True)
        return text
    return sys.stdin.readline()


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


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log m2msec's records at ``level`` (a name such as "info") to stderr, as text lines
    or one JSON object per line (``log_format``; :mod:`m2msec.logs`)."""
    logs.configure(level, log_format)


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
# log level, load the config with the options as overrides (exit 2 on an error), refuse a
# missing store unless --init (exit 1), start the server, print its banner, run until a
# signal, then report.

LOG_LEVELS = ("debug", "info", "warning", "error")
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", metavar="FILE", help="TOML configuration file.", show_default=False
    ),
]
MetricsOption = Annotated[
    str | None,
    typer.Option(
        "--metrics",
        metavar="URL",
        help="Serve /metrics, /healthz and /readyz on http://HOST:PORT, e.g. "
        "http://127.0.0.1:9464 (off by default; 'off' turns the file's [metrics] off).",
        show_default=False,
    ),
]
LogLevelOption = Annotated[
    str, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error.")
]
LogFormatOption = Annotated[
    str,
    typer.Option(
        "--log-format",
        metavar="FORMAT",
        help="text (default) or json: one JSON object per line with time, level, logger, "
        "message and, on association lines, sa_id, peer, framework and cause.",
    ),
]
C = TypeVar("C")


class Server(Protocol):
    async def start(self) -> None: ...
    async def serve_forever(self, stop: asyncio.Event) -> None: ...


S = TypeVar("S", bound=Server)


def path_overrides(section: str, **paths: str | Path | None) -> dict[str, str | None]:
    """The file options as config overrides, ``{"section.name": "path"}`` (None: not
    given, so the file's value stays)."""
    return {
        f"{section}.{name}": None if value is None else str(value) for name, value in paths.items()
    }


def load_serve_config(
    log_level: str,
    load: Callable[[Path | None, Mapping[str, Any]], C],
    path: Path | None,
    overrides: Mapping[str, Any],
    *,
    log_format: str = "text",
) -> C:
    """``--log-level`` and ``--log-format`` checked (exit 2 if unknown) and logged with,
    then ``load(path, overrides)`` (a :mod:`m2msec.config` loader); a configuration error
    exits 2."""
    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}", 2)
    if log_format.lower() not in logs.LOG_FORMATS:
        fail(f"--log-format must be one of {', '.join(logs.LOG_FORMATS)}", 2)
    setup_logging(log_level, log_format.lower())
    with exit_on_errors(usage=(ConfigurationError,)):
        return load(path, overrides)


def require_store(path: str | Path, *, label: str, create: str) -> None:
    """Exit 1 unless the store at ``path`` exists (``--init`` skips this check)."""
    from m2msec.store.schema import require_initialised

    with exit_on_errors(failure=(StoreError,)):
        require_initialised(path, label=label, create=create)


async def _serve(make: Callable[[], S], banner: Callable[[S], RenderableType], out: Console) -> S:
    server = make()
    await server.start()
    out.print(banner(server))
    await serve_until_signalled(server.serve_forever)
    return server


def serve_and_report(
    make: Callable[[], S],
    banner: Callable[[S], RenderableType],
    stopped: Callable[[S], str],
) -> None:
    """Build the server (``make``), start it, print ``banner(server)``, serve until
    SIGINT/SIGTERM, then print ``stopped(server)`` (its stats). A configuration error
    exits 2, any other m2msec or OS error 1."""
    out = Console(highlight=False)
    with exit_on_errors(usage=(ConfigurationError,), failure=(M2MSecError, OSError)):
        server = run_on_fast_loop(_serve(make, banner, out))
    out.print(stopped(server))
