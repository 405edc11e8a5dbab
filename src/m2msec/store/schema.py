"""Opening a sealed store (SQLite or PostgreSQL): schema migrations and the KEK check.

The psk-lookup-table, the MAF store and the BSF store share one way of starting
(:func:`open_sealed_store`): the file or schema, the connections, WAL, then (under the
write lock, so that two processes opening a new store agree on one schema and one KEK) the
migrations up to the current version, and a sealed check value in the ``meta`` table that
proves the KEK is the one the store was sealed under.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from m2msec.errors import StoreError
from m2msec.store.db import Connection, Database, SqliteDatabase
from m2msec.store.seal import Sealer, load_kek

log = logging.getLogger(__name__)

# The dialect of a bare sqlite3 connection (its path is not used).
_SQLITE: Final = SqliteDatabase(":memory:")

__all__ = [
    "KekCheck",
    "SealedSchema",
    "open_sealed_schema",
    "open_sealed_store",
    "open_tables",
    "require_initialised",
]


@dataclass(frozen=True, slots=True)
class KekCheck:
    """The sealed value in ``meta`` that a store's KEK must open."""

    aad: bytes
    value: bytes
    name: str = "kek-check"


@dataclass(frozen=True, slots=True)
class SealedSchema:
    """A sealed store's tables: its migrations (each version's statements in a dialect),
    the version they lead to, and the check value its KEK must open."""

    migrations: Callable[[Database], Mapping[int, tuple[str, ...]]]
    version: int
    check: KekCheck


def open_sealed_schema(
    conn: sqlite3.Connection | Connection,
    *,
    db: Database | None = None,
    label: str,
    kek: bytes | None,
    kek_path: Path,
    migrations: Mapping[int, tuple[str, ...]],
    version: int,
    check: KekCheck,
) -> Sealer:
    """Bring ``conn``'s schema to ``version`` and return the store's :class:`Sealer`.

    ``label`` names the store in messages ("MAF store /path"). ``kek`` None reads the KEK
    file at ``kek_path``, which is created only together with a brand-new store. Raises
    :class:`StoreError` for a newer schema or a KEK that does not open the check value;
    the database's own errors (``db.errors``) are left to the caller. ``db`` is the
    dialect (:mod:`m2msec.store.db`); None means a SQLite connection.
    """
    what = f"the check value of {label}"
    d: Database = db if db is not None else _SQLITE
    c = cast(Connection, conn)
    # Fast path, no write lock: an existing store of our version.
    if d.schema_version(c) == version:
        sealed = _check_value(d, c, check)
        if sealed is not None:
            sealer = Sealer(kek if kek is not None else load_kek(kek_path, create=False))
            sealer.check(sealed, check.aad, check.value, what=what)
            return sealer
    with d.transaction(c, exclusive=True):
        current = _migrate(d, c, label=label, migrations=migrations, version=version)
        sealed = _check_value(d, c, check)
        if sealed is None:
            # A brand-new store: the KEK file may be created now. A store file that had
            # no schema (e.g. truncated to 0 bytes) is sealed under an existing KEK file
            # only loudly: that file may belong to the keys that were lost.
            if kek is None and current == 0 and kek_path.exists():
                log.warning(
                    "%s had no schema: initialising it as a new, empty store sealed under "
                    "the existing key-encryption key file %s",
                    label,
                    kek_path,
                )
            sealer = Sealer(kek if kek is not None else load_kek(kek_path, create=True))
            c.execute(
                f"INSERT INTO meta (name, value) VALUES ({d.p}, {d.p})",
                (check.name, sealer.seal(check.value, check.aad)),
            )
        else:
            sealer = Sealer(kek if kek is not None else load_kek(kek_path, create=False))
            sealer.check(sealed, check.aad, check.value, what=what)
    return sealer


def open_sealed_store(
    db: Database,
    schema: SealedSchema,
    *,
    label: str,
    connections: int,
    kek: bytes | None,
    inspect: Callable[[Connection], None] | None = None,
) -> tuple[list[Connection], Sealer]:
    """Open a sealed store in ``db``: its ``connections`` connections and its Sealer.

    Creates what must exist first (:meth:`~m2msec.store.db.Database.prepare`: the 0600
    file, the KEK file's directory), connects, runs ``inspect`` on the first connection (a
    store's own checks of what it found) and then :func:`open_sealed_schema` there for
    ``schema``, with the KEK file beside the database (``db.kek_path``). The database's
    errors become :class:`StoreError` "cannot open <label>: ..."; on any failure no
    connection is left open.
    """
    db.prepare()
    opened: list[Connection] = []
    try:
        try:
            for _ in range(connections):
                opened.append(db.connect())
            if inspect is not None:
                inspect(opened[0])
            sealer = open_sealed_schema(
                opened[0],
                db=db,
                label=label,
                kek=kek,
                kek_path=db.kek_path,
                migrations=schema.migrations(db),
                version=schema.version,
                check=schema.check,
            )
        except db.errors as exc:
            raise StoreError(f"cannot open {label}: {db.message(exc)}") from None
    except BaseException:
        for conn in opened:
            conn.close()
        raise
    return opened, sealer


def open_tables(
    db: Database,
    *,
    migrations: Mapping[int, tuple[str, ...]],
    version: int,
    label: str,
    connections: int,
) -> list[Connection]:
    """Open a store without secrets in ``db``: ``connections`` connections, its schema at
    ``version``.

    The unsealed sibling of :func:`open_sealed_store` for tables that hold no key (the SA
    records of :mod:`m2msec.sa.store`): the same 0600 file or PostgreSQL schema
    (:meth:`~m2msec.store.db.Database.prepare`), the same migrations under the database's
    write lock, no KEK and no ``meta`` check value. The database's errors become
    :class:`StoreError` "cannot open <label>: ..."; on any failure no connection is left
    open.
    """
    db.prepare()
    opened: list[Connection] = []
    try:
        try:
            for _ in range(connections):
                opened.append(db.connect())
            c = opened[0]
            if db.schema_version(c) != version:
                with db.transaction(c, exclusive=True):
                    _migrate(db, c, label=label, migrations=migrations, version=version)
        except db.errors as exc:
            raise StoreError(f"cannot open {label}: {db.message(exc)}") from None
    except BaseException:
        for conn in opened:
            conn.close()
        raise
    return opened


def _migrate(
    d: Database,
    c: Connection,
    *,
    label: str,
    migrations: Mapping[int, tuple[str, ...]],
    version: int,
) -> int:
    """Inside the migration transaction: apply the versions after the current one; the
    version found. A newer schema than ``version`` is a StoreError."""
    current = d.schema_version(c)
    if current > version:
        raise StoreError(
            f"{label} has schema version {current}; this version of m2msec reads up to "
            f"{version}"
        )
    for v in range(current + 1, version + 1):
        for statement in migrations[v]:
            c.execute(statement)
        d.set_schema_version(c, v)
    return current


def require_initialised(path: str | os.PathLike[str] | None, *, label: str, create: str) -> None:
    """Refuse to serve from a store that was never created (issue 9 item 3).

    A server opens a store only if the file exists and holds a schema with its KEK check
    value; a missing, 0-byte or schema-less file raises :class:`StoreError` with a one-line
    message naming the file and how to create it (``create``). ``path`` None or a URL
    (PostgreSQL) is not checked here: the server's own open reports those. The check
    opens the file read-only, so it never creates or modifies anything.
    """
    if path is None:
        return
    text = os.fspath(path)
    if "://" in text:
        if not text.lower().startswith("sqlite:///"):
            return
        text = text[len("sqlite://"):]
    file = Path(text).expanduser()
    if not file.exists():
        raise StoreError(f"{label} {file} does not exist; create it with {create}, or serve --init")
    if file.stat().st_size == 0:
        raise StoreError(
            f"{label} {file} is empty (0 bytes), not a store; restore it from a backup, or "
            f"remove it and create a new one with {create} or serve --init"
        )
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            has_meta = conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{label} {file} is not a readable store: {exc}") from None
    if version == 0 or has_meta is None:
        raise StoreError(
            f"{label} {file} has no m2msec schema; restore it from a backup, or remove it "
            f"and create a new one with {create} or serve --init"
        )


def _check_value(d: Database, conn: Connection, check: KekCheck) -> bytes | None:
    if d.schema_version(conn) == 0:
        return None  # no meta table yet
    row = conn.execute(f"SELECT value FROM meta WHERE name = {d.p}", (check.name,)).fetchone()
    return None if row is None else bytes(row[0])
