"""``m2msec psk``: manage the psk-lookup-table (TS-0003 8.2.2.1, TR-0038 7.1.2).

Each row binds a KpsaId (the TLS psk_identity, TS-0003 10.5) to a Kpsa and, optionally,
to the AE-ID or CSE-ID of the entity holding it. Keys are written sealed and are never
printed: ``psk list`` shows their length only. Give a key as ``--key -`` to read it from
standard input (a hidden prompt on a terminal), ``--key @FILE`` or ``--key-file FILE``, so
that it does not show in ``ps`` or in the shell history (docs/cli.md "Secret options").
``psk list`` streams the table in KpsaId order (``--json``: JSON lines), a page at a time;
``--limit N --after KPSAID`` pages through it.

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
from rich.text import Text

from m2msec.cli.common import (
    JsonOption,
    StoreOption,
    done,
    fail,
    import_file_argument,
    option,
    print_listing,
    stderr_console,
    stdout_console,
    store_errors,
    sub_app,
    utc_time,
)
from m2msec.cli.secrets import secret_file_option, secret_option, secret_text, warn
from m2msec.errors import ConfigurationError, UnknownCredentialError
from m2msec.paths import default_store_path
from m2msec.store import PskEntry, PskInfo, PskStore, open_store
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


def _read_key(value: str | None, file: Path | None) -> bytes:
    text = secret_text(value, "--key", file=file, prompt="Kpsa (hexadecimal)")
    if text is None:
        raise ConfigurationError("give the Kpsa: --key - (standard input), @FILE or --key-file")
    return parse_kpsa_hex(text)


def _short_key_warning(count: int) -> None:
    if count:
        what = "a key" if count == 1 else f"{count} keys"
        warn(
            f"{what} shorter than {RECOMMENDED_MIN_KPSA_OCTETS} octets (accepted, as TR-0038 "
            "uses 8-octet keys; stunnel and some TLS stacks refuse them)"
        )


@app.command("add")
def add_command(
    kpsa_id: KpsaIdArgument,
    key: Annotated[
        str | None, secret_option("--key", "The Kpsa in hexadecimal (1 to 64 octets)")
    ] = None,
    key_file: Annotated[
        Path | None, secret_file_option("--key-file", "the Kpsa in hexadecimal")
    ] = None,
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
        kpsa = _read_key(key, key_file)
        with _open(store) as st:
            st.add(PskEntry(kid, kpsa, entity, expires_at), replace=replace)
    _short_key_warning(int(len(kpsa) < RECOMMENDED_MIN_KPSA_OCTETS))
    done("added", kid, f" ({len(kpsa)}-octet key" + (f", entity {entity})" if entity else ")"))


def _info_json(info: PskInfo) -> dict[str, object]:
    return {
        "kpsaId": info.kpsa_id,
        "entityId": info.entity_id,
        "expires": utc_time(info.expires_at) if info.expires_at is not None else None,
        "keyLength": info.key_length,
    }


@app.command("list")
def list_command(
    as_json: JsonOption = False,
    limit: Annotated[
        int | None, option("--limit", metavar="N", help="Print at most N rows (default: all).")
    ] = None,
    after: Annotated[
        str | None,
        option(
            "--after",
            metavar="KPSAID",
            help="Start after this KpsaId: the last one of the previous page.",
        ),
    ] = None,
    store: StoreOption = None,
) -> None:
    """List the rows in KpsaId order: KpsaId, entity id, expiry and key length (never the
    key), streamed; --limit and --after page through a large table."""
    if limit is not None and limit < 0:
        fail("--limit must not be negative", 2)
    now = datetime.now(UTC)
    last: list[str] = []

    def cells(info: PskInfo) -> tuple[str | Text, ...]:
        last[:] = [info.kpsa_id]
        expiry: str | Text = utc_time(info.expires_at)
        if info.expires_at is not None and info.expires_at <= now:
            expiry = Text(f"{expiry} expired", style="red")
        return info.kpsa_id, info.entity_id or "-", expiry, f"{info.key_length} octets"

    def to_json(info: PskInfo) -> dict[str, object]:
        last[:] = [info.kpsa_id]
        return _info_json(info)

    with _errors(), _open(store) as st:
        shown = print_listing(
            st.list(after=after, limit=limit),
            title=f"psk-lookup-table {_store_name(store)}",
            columns=("KpsaId", "entity id", "expires (UTC)", "key length"),
            right=("key length",),
            cells=cells,
            to_json=to_json,
            as_json=as_json,
            empty=f"no keys in {_store_name(store)}" + (f" after {after}" if after else ""),
        )
    if limit is not None and shown == limit and last:
        # On stderr, so a pipe of rows or JSON lines stays clean.
        stderr_console().print(Text(f"next page: --after {last[0]}"))


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
