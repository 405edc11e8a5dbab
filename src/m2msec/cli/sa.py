"""``m2msec sa``: the live Security Associations of a running gateway (seed 003 7.3).

``list``, ``show``, ``update`` (seed 003 7.3.3: the session is ended gracefully and the
Initiator's next handshake is a new SA) and ``remove`` (seed 003 7.3.6: the SA is marked
invalid and its session ended at once; the peer's next request gets no service). They
talk to the gateway over its admin socket (:mod:`m2msec.servers.admin`, a Unix socket
only its owner can use), never over a public listener; ``--admin-socket`` names it,
by default ``admin.sock`` in the data directory (:func:`m2msec.paths.default_admin_socket`,
the gateway's default too). docs/sa.md section 7 describes the commands and the JSON.

Tables keep every cell whole when standard output is not a terminal (a pipe, a file),
so that ids survive ``grep`` and ``cut``; ``list --json`` writes one JSON object per SA
and line, ``show --json`` one object.

Exit status: 0 on success, 1 when the gateway cannot be reached or refuses (unknown SA,
SA not live), 2 for malformed input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.text import Text

from m2msec.cli.common import (
    JsonOption,
    done,
    fail,
    json_line,
    key_value_table,
    listing_table,
    option,
    print_listing,
    result_console,
    run_on_fast_loop,
    stdout_console,
    sub_app,
    utc_time,
)
from m2msec.paths import default_admin_socket
from m2msec.sa.admin import (
    AdminOutcome,
    AdminProtocolError,
    SaDetail,
    SaQuery,
    detail_to_json,
    parse_sa_id,
    record_to_json,
    sa_query,
)
from m2msec.sa.records import SaId, SaRecord
from m2msec.servers.admin import AdminClient, AdminUnavailable

__all__ = ["app"]

app = sub_app(
    "sa", "Security associations of a running gateway (seed 003 7.3): list, show, update, remove."
)

AdminSocketOption = Annotated[
    Path | None,
    option(
        "--admin-socket",
        metavar="PATH",
        help="The gateway's admin socket (default: admin.sock in $M2MSEC_HOME, else in "
        "$XDG_DATA_HOME/m2msec, else in ~/.local/share/m2msec).",
    ),
]
SaIdArgument = Annotated[
    str, typer.Argument(metavar="SAID", help="The SA identifier in hex, as sa list shows it.")
]
T = TypeVar("T")


def _socket(path: Path | None) -> Path:
    return path if path is not None else default_admin_socket()


def _ask(path: Path | None, call: Callable[[AdminClient], Awaitable[T]]) -> T:
    """Run one request against the admin socket; unreachable or refused: one line, exit 1."""

    async def run() -> T:
        async with AdminClient(_socket(path)) as client:
            return await call(client)

    main: Coroutine[Any, Any, T] = run()
    try:
        return run_on_fast_loop(main)
    except (AdminUnavailable, AdminProtocolError) as exc:
        fail(str(exc), 1)


def _sa_id(text: str) -> SaId:
    try:
        return parse_sa_id(text)
    except ValueError as exc:
        fail(str(exc), 2)


def _state(record: SaRecord) -> Text:
    return Text(record.state.value, style="green" if record.state.live else "")


@app.command("list")
def list_command(
    peer: Annotated[
        str | None,
        option("--peer", metavar="ID", help="Only the SAs of this peer (AE-ID, CSE-ID)."),
    ] = None,
    state: Annotated[
        str,
        typer.Option(
            "--state",
            metavar="STATE",
            help="live (SAs messages may pass over), all, or one state: established, "
            "updating, updated, removed, expired, closed, failed.",
        ),
    ] = "live",
    as_json: JsonOption = False,
    admin_socket: AdminSocketOption = None,
) -> None:
    """List the gateway's SAs: id, peer, framework, suite, key id, state, times."""
    try:
        query: SaQuery = sa_query(peer, state)
    except ValueError as exc:
        fail(f"--{exc}" if str(exc).startswith("peer") else str(exc), 2)
    records = _ask(admin_socket, lambda client: client.list(query))
    what = "live SAs" if state == "live" else "SAs" if state == "all" else f"{state} SAs"
    print_listing(
        records,
        title=f"Security associations ({state})",
        columns=_SA_COLUMNS,
        cells=_sa_cells,
        to_json=record_to_json,
        as_json=as_json,
        empty=f"no {what}" + (f" of peer {peer}" if peer else ""),
    )


_SA_COLUMNS = (
    "SA id", "role", "peer", "framework", "protocol", "cipher suite", "key id",
    "state", "established (UTC)", "expires (UTC)",
)  # fmt: skip


def _sa_cells(r: SaRecord) -> tuple[str | Text, ...]:
    return (
        r.sa_id.hex(),
        r.role.value,
        r.peer_id,
        r.framework,
        r.protocol,
        r.cipher_suite,
        r.key_id or "-",
        _state(r),
        utc_time(r.established_at),
        utc_time(r.expires_at),
    )


def _detail_rows(detail: SaDetail) -> list[tuple[str, str]]:
    r = detail.record
    return [
        ("SA id", r.sa_id.hex()),
        ("state", r.state.value + (" (live)" if r.state.live else "")),
        ("role", r.role.value),
        ("direction", r.direction.value),
        ("framework", r.framework),
        ("local id", r.local_id or "-"),
        ("peer", r.peer_id),
        ("peer address", r.peer_address or "-"),
        ("protocol", r.protocol),
        ("cipher suite", r.cipher_suite),
        ("key id", r.key_id or "-"),
        ("key fingerprint", r.key_fingerprint or "-"),
        ("established (UTC)", utc_time(r.established_at)),
        ("updated (UTC)", utc_time(r.updated_at)),
        ("expires (UTC)", utc_time(r.expires_at)),
        ("cause", r.cause or "-"),
        ("replaced by", r.replaced_by.hex() if r.replaced_by is not None else "-"),
    ]


@app.command("show")
def show_command(
    sa_id: SaIdArgument, as_json: JsonOption = False, admin_socket: AdminSocketOption = None
) -> None:
    """Show one SA: every parameter of its record (never a key) and its history."""
    said = _sa_id(sa_id)
    detail = _ask(admin_socket, lambda client: client.show(said))
    if detail is None:
        fail(f"no SA {said.hex()} at the gateway", 1)
    if as_json:
        json_line(detail_to_json(detail))
        return
    out = result_console()
    out.print(key_value_table(_detail_rows(detail)))
    if detail.history:
        table = listing_table("History", "at (UTC)", "event", "state", "cause")
        for entry in detail.history:
            table.add_row(
                Text(utc_time(entry.at)),
                Text(entry.event),
                Text(entry.state.value),
                Text(entry.cause or "-"),
            )
        out.print(table)


def _report(outcome: AdminOutcome) -> None:
    if not outcome.accepted:
        assert outcome.reason is not None
        fail(f"{outcome.message} ({outcome.reason.value})", 1)


@app.command("update")
def update_command(sa_id: SaIdArgument, admin_socket: AdminSocketOption = None) -> None:
    """Update an SA: ask its initiator to re-key (its session is ended gracefully; the
    next handshake is a new SA)."""
    said = _sa_id(sa_id)
    outcome = _ask(admin_socket, lambda client: client.update(said))
    _report(outcome)
    done("update requested for SA", said.hex(), f": {outcome.message}" if outcome.message else "")


@app.command("remove")
def remove_command(
    sa_id: Annotated[
        str | None,
        typer.Argument(
            metavar="SAID", help="The SA identifier in hex (or give --peer).", show_default=False
        ),
    ] = None,
    peer: Annotated[
        str | None, option("--peer", metavar="ID", help="Remove every live SA of this peer.")
    ] = None,
    admin_socket: AdminSocketOption = None,
) -> None:
    """Remove an SA, or every live SA of a peer: marked invalid, its session ended at once."""
    if (sa_id is None) == (peer is None):
        fail("give an SA identifier or --peer ID (one of them)", 2)
    if sa_id is not None:
        said = _sa_id(sa_id)
        outcome = _ask(admin_socket, lambda client: client.remove(said))
        _report(outcome)
        done("removed SA", said.hex())
        return
    assert peer is not None
    outcome = _ask(admin_socket, lambda client: client.remove_peer(peer))
    _report(outcome)
    count = len(outcome.records)
    done("removed", f"{count} SA{'s' if count != 1 else ''}", f" of peer {peer}")
    for record in outcome.records:
        stdout_console().print(Text(f"  {record.sa_id.hex()}"))
