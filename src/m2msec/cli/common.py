"""Helpers shared by the CLI sub-commands: the one place for what they have in common.

A sub-command group (:func:`sub_app`), the shared options (``--store``, ``--config``,
``--log-level``, ``--init`` and the option shapes every command repeats), output consoles,
key-value tables and "done" lines, one-line errors and their exit codes (:func:`fail`,
:func:`exit_on_errors`, :func:`store_errors`, :func:`exactly_one`: 2 for a usage or
configuration error, 1 when the operation failed), the one printer of listings
(:func:`print_listing`: ``--json`` lines, tables never cut when stdout is not a terminal,
streamed a page at a time), and the ``serve`` commands' steps: load the config with the
options as overrides, run a long-lived server until a signal (logging, event loop,
signals). Secret options are read by :mod:`m2msec.cli.secrets`. docs/cli.md describes
what an operator sees of these."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import (
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, Protocol, TextIO, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from m2msec import logs
from m2msec.errors import ConfigurationError, IdentifierError, M2MSecError, StoreError
from m2msec.service.lifecycle import ReloadOutcome
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


# ----------------------------------------------------------------- listings
# Every list and show command prints through these (docs/cli.md "Output"): --json writes
# one JSON object per row and line (JSON lines, streamed); a table on a terminal is a rich
# table; elsewhere (a pipe, a file) plain aligned columns, every cell whole on one line, so
# that ids survive grep, cut and awk. Rows are printed a page at a time: a listing of a
# million rows holds one page in memory.

JsonOption = Annotated[
    bool, typer.Option("--json", help="JSON lines: one JSON object per row and line.")
]
LISTING_PAGE: Final = 1000
R = TypeVar("R")
Cell = str | Text


def result_console() -> Console:
    """stdout for results; when it is not a terminal, wide enough that no cell is cut."""
    if sys.stdout.isatty():
        return stdout_console()
    return Console(highlight=False, soft_wrap=True, width=100_000)


def json_line(doc: Mapping[str, Any]) -> None:
    """One JSON object on one line of stdout (no key is ever in ``doc``)."""
    sys.stdout.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n")


def listing_table(title: str | None, *columns: str, right: Collection[str] = ()) -> Table:
    """A rich listing: titled on the left, one column per name, each cell on one line
    (``right``: right-justified columns)."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=True, justify="right" if column in right else "left")
    return table


def _printable(cell: str) -> str:
    """``cell`` with control characters (a terminal escape in a stored id) shown as
    ``\\xNN``, as rich strips them on a terminal."""
    if cell.isprintable():
        return cell
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in cell)


def _plain_page(
    out: TextIO, title: str | None, columns: Sequence[str], rows: list[Sequence[Cell]],
    widths: list[int], right: Collection[str],
) -> None:  # fmt: skip
    texts = [[_printable(c.plain if isinstance(c, Text) else c) for c in row] for row in rows]
    for row in texts:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [title] if title is not None else []
    if title is not None:
        lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in texts:
        cells = (
            cell.rjust(w) if name in right else cell.ljust(w)
            for cell, w, name in zip(row, widths, columns, strict=True)
        )
        lines.append("  ".join(cells).rstrip())
    out.write("\n".join(lines) + "\n")


def print_listing(
    rows: Iterable[R],
    *,
    title: str,
    columns: Sequence[str],
    cells: Callable[[R], Sequence[Cell]],
    to_json: Callable[[R], Mapping[str, Any]],
    as_json: bool,
    empty: str,
    right: Collection[str] = (),
) -> int:
    """Print ``rows`` (module comment above): as JSON lines (``to_json``), or as a table
    of ``columns`` whose cells are ``cells(row)``; ``empty`` is the line printed for no
    rows (nothing for JSON). Returns how many rows were printed."""
    count = 0
    if as_json:
        for row in rows:
            json_line(to_json(row))
            count += 1
        return count
    terminal = sys.stdout.isatty()
    widths = [len(c) for c in columns]
    page: list[Sequence[Cell]] = []

    def flush(first: bool) -> None:
        if terminal:
            table = listing_table(title if first else None, *columns, right=right)
            table.show_header = first
            for row in page:
                table.add_row(*(Text(c) if isinstance(c, str) else c for c in row))
            stdout_console().print(table)
        else:
            _plain_page(sys.stdout, title if first else None, columns, page, widths, right)
        page.clear()

    for row in rows:
        page.append(cells(row))
        count += 1
        if len(page) == LISTING_PAGE:
            flush(count == LISTING_PAGE)
    if page or count == 0:
        if count == 0:
            stdout_console().print(Text(empty))
        else:
            flush(count <= LISTING_PAGE)
    sys.stdout.flush()
    return count


def print_audit(
    records: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    title: str,
    as_json: bool,
    empty: str,
    columns: Sequence[str] | None = None,
) -> None:
    """Audit records (sequence number, record) by :func:`print_listing`: JSON lines with
    ``seq`` first, or a table of ``columns`` (default: every field, in order of first
    appearance); a missing field shows as ``-``."""
    if columns is None:
        seen: dict[str, None] = {}
        for _seq, record in records:
            seen.update(dict.fromkeys(record))
        columns = tuple(seen)

    def cells(item: tuple[int, Mapping[str, Any]]) -> list[str]:
        seq, record = item
        return [str(seq), *(str(record.get(c, "-")).replace("+00:00", "Z") for c in columns)]

    print_listing(
        records,
        title=title,
        columns=("seq", *columns),
        right=("seq",),
        cells=cells,
        to_json=lambda item: {"seq": item[0], **item[1]},
        as_json=as_json,
        empty=empty,
    )


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
_log = logging.getLogger("m2msec.cli")


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


#: The exit status when a second SIGINT/SIGTERM cuts the drain short.
EXIT_SECOND_SIGNAL = 1


async def serve_until_signalled(server: Server) -> None:
    """Run ``server.serve_forever(stop)`` under the operators' signals (docs/operations.md):

    * the first SIGTERM or SIGINT sets ``stop``: the server drains (stops accepting, gives
      requests in progress ``drain_timeout`` seconds, ends every association with
      close_notify) and the command exits 0;
    * a second one exits at once with :data:`EXIT_SECOND_SIGNAL`, without the drain;
    * SIGHUP reloads the configuration (:meth:`ServerLifecycle.reload`: applied, or
      refused with one log line and the old one kept).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[Any]] = set()

    def on_stop(sig: signal.Signals) -> None:
        if stop.is_set():
            _log.warning("second %s: exiting at once, without the drain", sig.name)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_SECOND_SIGNAL)
        _log.info(
            "%s: draining (up to %g s for requests in progress); a second signal exits at once",
            sig.name,
            server.drain_timeout,
        )
        stop.set()

    def on_hangup() -> None:
        if stop.is_set():
            return
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    stops = (signal.SIGINT, signal.SIGTERM)
    for sig in stops:
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await server.serve_forever(stop)
    finally:
        for sig in (*stops, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in list(reloads):
            task.cancel()


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
    """What the serve steps need of a server (``m2msec.service.lifecycle.ServerLifecycle``)."""

    drain_timeout: float
    config_source: Callable[[], Any] | None

    async def start(self) -> None: ...
    async def serve_forever(self, stop: asyncio.Event) -> None: ...
    async def reload(self) -> ReloadOutcome: ...


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


async def _serve(
    make: Callable[[], S],
    banner: Callable[[S], RenderableType],
    out: Console,
    reload_config: Callable[[], Any] | None,
) -> S:
    server = make()
    server.config_source = reload_config
    await server.start()
    out.print(banner(server))
    await serve_until_signalled(server)
    return server


def serve_and_report(
    make: Callable[[], S],
    banner: Callable[[S], RenderableType],
    stopped: Callable[[S], str],
    reload_config: Callable[[], Any] | None = None,
) -> None:
    """Build the server (``make``), start it, print ``banner(server)``, serve until
    SIGINT/SIGTERM, then print ``stopped(server)`` (its stats). ``reload_config``
    re-reads the configuration on SIGHUP (the loader with the same file and options).
    A configuration error exits 2, any other m2msec or OS error 1."""
    out = Console(highlight=False)
    with exit_on_errors(usage=(ConfigurationError,), failure=(M2MSecError, OSError)):
        server = run_on_fast_loop(_serve(make, banner, out, reload_config))
    out.print(stopped(server))
