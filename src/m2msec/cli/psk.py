"""``m2msec psk``: manage the psk-lookup-table (TS-0003 8.2.2.1, TR-0038 7.1.2).

Each row binds a KpsaId (the TLS psk_identity, TS-0003 10.5) to a Kpsa and, optionally,
to the AE-ID or CSE-ID of the entity holding it. Keys are written sealed and are never
printed: ``psk list`` shows their length only. Give a key as ``--key -`` to read it from
standard input (a hidden prompt on a terminal), so that it does not show in ``ps`` or in
the shell history.

Exit status: 0 on success, 1 when the store refuses (duplicate, unknown KpsaId, wrong
key-encryption key), 2 for malformed input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from m2msec.cli.common import (
    StoreOption,
    done,
    import_file_argument,
    read_secret,
    stderr_console,
    stdout_console,
    store_errors,
    sub_app,
    utc_time,
)
from m2msec.errors import UnknownCredentialError
from m2msec.paths import default_store_path
from m2msec.store import PskEntry, PskStore, open_store
from m2msec.store.importer import (
    RECOMMENDED_MIN_KPSA_OCTETS,
    PskImportError,
    load_psk_file,
    parse_entity,
    parse_expiry,
    parse_kpsa_hex,
    parse_kpsa_id,
)

__all__ = ["app"]

app = sub_app("psk", "Manage the psk-lookup-table (TS-0003 8.2.2.1): KpsaId -> entity id, Kpsa.")
KpsaIdArgument = Annotated[
    str,
    typer.Argument(
        metavar="KPSAID", help="Key identifier, e.g. AE123456789012-Light@in.provider.com."
    ),
]


def _warn(message: str) -> None:
    stderr_console().print(Text(f"warning: {message}", style="yellow"))


@contextmanager
def _errors() -> Iterator[None]:
    """Turn expected errors into one red line (several for an import) and an exit code."""
    with store_errors():
        try:
            yield
        except PskImportError as exc:
            head, *rest = str(exc).splitlines()
            console = stderr_console()
            console.print(Text(f"error: {head}", style="bold red"))
            for line in rest:
                console.print(Text(line, style="red"))
            raise typer.Exit(2) from None


def _open(store: str | None) -> closing[PskStore]:
    return closing(open_store(store))


def _store_name(store: str | None) -> str:
    return store if store is not None else str(default_store_path())


def _read_key(value: str) -> bytes:
    return parse_kpsa_hex(read_secret(value, "Kpsa (hexadecimal)"))


def _short_key_warning(count: int) -> None:
    if count:
        what = "a key" if count == 1 else f"{count} keys"
        _warn(
            f"{what} shorter than {RECOMMENDED_MIN_KPSA_OCTETS} octets (accepted, as TR-0038 "
            "uses 8-octet keys; stunnel and some TLS stacks refuse them)"
        )


@app.command("add")
def add_command(
    kpsa_id: KpsaIdArgument,
    key: Annotated[
        str,
        typer.Option(
            "--key",
            metavar="HEX",
            help="The Kpsa in hexadecimal (1 to 64 octets), or '-' to read it from standard "
            "input so that it does not show in ps.",
        ),
    ],
    entity_id: Annotated[
        str | None,
        typer.Option(
            "--entity-id",
            metavar="ID",
            help="AE-ID or CSE-ID bound to the key, e.g. Clight-AE1 (without it the "
            "association is bound to the Credential-ID 12-<KpsaId>).",
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", metavar="ISO", help="Expiry, ISO 8601 (UTC if no offset)."),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite an existing row with this KpsaId.")
    ] = False,
    store: StoreOption = None,
) -> None:
    """Add one provisioned key."""
    with _errors():
        kid = parse_kpsa_id(kpsa_id)
        entity = parse_entity(entity_id) if entity_id is not None else None
        expires_at = parse_expiry(expires) if expires is not None else None
        kpsa = _read_key(key)
        with _open(store) as st:
            st.add(PskEntry(kid, kpsa, entity, expires_at), replace=replace)
    _short_key_warning(int(len(kpsa) < RECOMMENDED_MIN_KPSA_OCTETS))
    done("added", kid, f" ({len(kpsa)}-octet key" + (f", entity {entity})" if entity else ")"))


@app.command("list")
def list_command(store: StoreOption = None) -> None:
    """List the rows: KpsaId, entity id, expiry and key length (never the key)."""
    with _errors(), _open(store) as st:
        now = datetime.now(UTC)
        table = Table(title=f"psk-lookup-table {_store_name(store)}", title_justify="left")
        table.add_column("KpsaId", no_wrap=True)
        table.add_column("entity id", no_wrap=True)
        table.add_column("expires (UTC)", no_wrap=True)
        table.add_column("key length", justify="right", no_wrap=True)
        rows = 0
        for info in st.list():
            rows += 1
            expired = info.expires_at is not None and info.expires_at <= now
            expiry = Text(utc_time(info.expires_at), style="red" if expired else "")
            if expired:
                expiry.append(" expired")
            table.add_row(
                Text(info.kpsa_id),
                Text(info.entity_id or "-"),
                expiry,
                Text(f"{info.key_length} octets"),
            )
    if rows == 0:
        stdout_console().print(Text(f"no keys in {_store_name(store)}"))
    else:
        stdout_console().print(table)


@app.command("remove")
def remove_command(kpsa_id: KpsaIdArgument, store: StoreOption = None) -> None:
    """Remove the row of one KpsaId."""
    with _errors(), _open(store) as st:
        # Not re-validated: any stored KpsaId (GBA B-TIDs too) can be removed.
        if not st.remove(kpsa_id):
            raise UnknownCredentialError(f"no key with KpsaId {kpsa_id!r}")
    done("removed", kpsa_id)


@app.command("import")
def import_command(
    file: Annotated[
        Path,
        import_file_argument(
            "CSV (columns kpsa_id,kpsa,entity_id,expires_at) or TOML (psk array of tables)."
        ),
    ],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite rows whose KpsaId already exists.")
    ] = False,
    store: StoreOption = None,
) -> None:
    """Import a psk table: every row is checked first, then all are written in one transaction."""
    with _errors():
        result = load_psk_file(file)
        total = len(result.entries)
        with _open(store) as st:
            progress = Progress(
                TextColumn("importing"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=stderr_console(),
                transient=True,
            )
            with progress:
                task = progress.add_task("import", total=total)
                written = st.add_many(
                    result.entries,
                    replace=replace,
                    progress=lambda done: progress.update(task, completed=done),
                )
    _short_key_warning(result.short_keys)
    stdout_console().print(Text(f"imported {written} key(s) from {file}", style="green"))
