"""Where a sealed store lives: one SQLite file or one PostgreSQL schema (issue 10 item 3).

Every m2msec store (the psk-lookup-table of TS-0003 8.2.2.1, the MAF store of 8.8, the BSF
store of 8.3) is a few tables plus a ``meta`` table holding the sealed KEK check value
(:mod:`m2msec.store.schema`). A :class:`Database` names where they live and is the *dialect*
the store's SQL is written against; nothing rewrites SQL:

- ``db.p`` is the parameter placeholder (``?`` for sqlite3, ``%s`` for psycopg 3), put into
  each statement once, when the store builds its statements for its database;
- ``db.blob`` and ``db.key_text`` are the column types for sealed values and for
  octet-ordered text keys (SQLite's BINARY collation, PostgreSQL's "C");
- schema version, write lock, change counter and connection health are methods.

:func:`open_database` chooses by URL: a plain path or ``sqlite:///abs/path`` is SQLite,
``postgresql://user@host/db`` is PostgreSQL (tables in one schema per store, e.g.
``m2msec_psk``; needs psycopg 3, the ``postgres`` extra). Statements common to both use
``INSERT ... ON CONFLICT``, which SQLite has had since 3.24.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self, cast, overload
from urllib.parse import unquote, urlsplit

from m2msec.errors import ConfigurationError, StoreError
from m2msec.paths import data_dir, ensure_private_dir, write_private
from m2msec.store.seal import KEK_FILE_NAME

__all__ = [
    "Closing",
    "Connection",
    "Database",
    "PostgresDatabase",
    "SqliteDatabase",
    "create_private_file",
    "from_epoch",
    "from_micros",
    "is_text",
    "open_database",
    "redact_url",
    "to_epoch",
    "to_micros",
]

log = logging.getLogger(__name__)

_URL: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
_MICROSECOND: Final = timedelta(microseconds=1)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def close(self) -> None: ...


class Connection(Protocol):
    """What the stores use of a sqlite3 or psycopg connection (both DB-API shaped)."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


@overload
def to_epoch(value: datetime) -> int: ...
@overload
def to_epoch(value: None) -> None: ...
@overload
def to_epoch(value: datetime | None) -> int | None: ...
def to_epoch(value: datetime | None) -> int | None:
    """Whole seconds since the epoch (floor); a naive datetime is taken as UTC (oneM2M time)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _SECOND


@overload
def from_epoch(value: int) -> datetime: ...
@overload
def from_epoch(value: None) -> None: ...
@overload
def from_epoch(value: int | None) -> datetime | None: ...
def from_epoch(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(seconds=value)


@overload
def to_micros(value: datetime) -> int: ...
@overload
def to_micros(value: None) -> None: ...
@overload
def to_micros(value: datetime | None) -> int | None: ...
def to_micros(value: datetime | None) -> int | None:
    """Microseconds since the epoch, exact; a naive datetime is taken as UTC (oneM2M time).

    For stored times that must read back equal (the SA records' established / updated /
    expires); :func:`to_epoch` keeps whole seconds."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


@overload
def from_micros(value: int) -> datetime: ...
@overload
def from_micros(value: None) -> None: ...
@overload
def from_micros(value: int | None) -> datetime | None: ...
def from_micros(value: int | None) -> datetime | None:
    """The UTC datetime of :func:`to_micros`."""
    return None if value is None else _EPOCH + timedelta(microseconds=value)


_PASSWORD_PARAM: Final = re.compile(r"((?:^|&)password=)[^&]*")


def redact_url(url: str) -> str:
    """``url`` without its password, in the user part or the query (for messages)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, hosts = netloc.rpartition("@")
        if ":" in user:
            netloc = f"{user.split(':', 1)[0]}:***@{hosts}"
    query = _PASSWORD_PARAM.sub(r"\1***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Not urlunsplit: it drops the empty host of "postgresql:///db?host=/run".
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return out + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8 (a lone surrogate cannot be a stored key)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Closing(ABC):
    """A store used as a context manager: ``with Store(...) as st:`` closes it."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Database(ABC):
    """A store's location and SQL dialect (module docstring)."""

    p: str
    blob: str
    key_text: str
    #: Appended to CREATE TABLE of tables keyed by their primary key.
    table_suffix: str
    #: The column type of a generated row id that is never reused.
    serial_key: str
    #: Appended to a SELECT of rows the transaction will update (PostgreSQL's writers run
    #: concurrently; SQLite's writer is alone).
    for_update: str
    #: Appended to a SELECT of rows the transaction relies on but does not change, so that
    #: no other writer removes or edits them before it commits (PostgreSQL; SQLite's
    #: writer is alone).
    for_share: str
    errors: tuple[type[Exception], ...]
    integrity_errors: tuple[type[Exception], ...]
    label: str
    kek_path: Path

    @abstractmethod
    def connect(self) -> Connection:
        """A new connection in autocommit mode: the stores issue BEGIN/COMMIT themselves."""

    @abstractmethod
    def prepare(self) -> None:
        """Create what must exist before the first connection (the file, the schema)."""

    @abstractmethod
    def begin_exclusive(self, conn: Connection) -> None:
        """Begin the transaction that migrates the schema (one process at a time)."""

    @abstractmethod
    def schema_version(self, conn: Connection) -> int: ...

    @abstractmethod
    def set_schema_version(self, conn: Connection, version: int) -> None: ...

    @abstractmethod
    def data_version(self, conn: Connection) -> int:
        """A value that changes when any connection commits a change (for the caches)."""

    @abstractmethod
    def in_transaction(self, conn: Connection) -> bool: ...

    @abstractmethod
    def usable(self, conn: Connection) -> bool:
        """False once the connection is broken (the server went away): open a new one."""

    def begin(self, conn: Connection) -> None:
        conn.execute("BEGIN")

    @contextlib.contextmanager
    def transaction(self, conn: Connection, *, exclusive: bool = False) -> Iterator[Connection]:
        """BEGIN (:meth:`begin_exclusive`, the migration lock, with ``exclusive``), then
        COMMIT when the block ends; on any error ROLLBACK, if the connection still works."""
        if exclusive:
            self.begin_exclusive(conn)
        else:
            self.begin(conn)
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if self.usable(conn) and self.in_transaction(conn):
                conn.execute("ROLLBACK")
            raise

    def reconnected(self, conn: Connection) -> Connection:
        """``conn``, or a new connection in its place if it is broken (the server went away)."""
        return conn if self.usable(conn) else self.connect()

    def after_bulk_write(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Called after a large import (SQLite folds its WAL back)."""

    def message(self, exc: Exception) -> str:
        """The database's message, without row values."""
        return str(exc)


class SqliteDatabase(Database):
    """One SQLite file, WAL, ``synchronous`` FULL (or NORMAL); created 0600 in a 0700 directory."""

    p = "?"
    blob = "BLOB"
    key_text = "TEXT"
    table_suffix = " WITHOUT ROWID"
    serial_key = "INTEGER PRIMARY KEY AUTOINCREMENT"
    for_update = ""
    for_share = ""
    errors = (sqlite3.Error,)
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        secure_delete: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.secure_delete = secure_delete
        self.label = os.fspath(self.path)
        self.kek_path = self.path.parent / KEK_FILE_NAME

    def prepare(self) -> None:
        create_private_file(self.path)

    def connect(self) -> Connection:
        # check_same_thread=False: each store serialises use of a connection with a lock.
        conn = sqlite3.connect(
            os.fspath(self.path),
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        if self.secure_delete:
            # Erased values are overwritten on disk, not left in free pages.
            conn.execute("PRAGMA secure_delete = ON")
        return cast(Connection, conn)

    def begin_exclusive(self, conn: Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("%s: journal_mode is %s, not wal", self.label, mode)
        conn.execute("BEGIN IMMEDIATE")

    def begin(self, conn: Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def schema_version(self, conn: Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, conn: Connection, version: int) -> None:
        conn.execute(f"PRAGMA user_version = {version:d}")

    def data_version(self, conn: Connection) -> int:
        # Changes when *another* connection commits; our own writes invalidate directly.
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def in_transaction(self, conn: Connection) -> bool:
        return bool(cast(sqlite3.Connection, conn).in_transaction)

    def usable(self, conn: Connection) -> bool:
        return True

    def after_bulk_write(self, conn: Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def __repr__(self) -> str:
        return f"SqliteDatabase({self.label!r})"


class PostgresDatabase(Database):
    """One PostgreSQL schema (``schema``) in the database at ``url``, via psycopg 3.

    The schema is created on first use; the connecting role then needs CREATE on the
    database. Text keys use the "C" collation so that ordering matches SQLite's. The KEK
    comes from ``$M2MSEC_KEK`` or the ``kek`` file of the data directory: every process
    sharing the database must be given the same one. ``data_version`` reads a counter that
    a statement trigger on each table bumps (see :func:`change_counter_ddl`).

    ``settings`` are session settings (``-c name=value``, after any ``options`` of the URL),
    ``application_name`` and ``connect_timeout`` (seconds) apply unless the URL sets them;
    given any of the three, the URL is checked at once (ConfigurationError naming
    ``what``, "store" by default) instead of at the first connection.
    """

    p = "%s"
    blob = "BYTEA"
    key_text = 'TEXT COLLATE "C"'
    table_suffix = ""
    serial_key = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    for_update = " FOR UPDATE"
    for_share = " FOR SHARE"

    def __init__(
        self,
        url: str,
        *,
        schema: str,
        home: Path | None = None,
        settings: dict[str, str] | None = None,
        application_name: str | None = None,
        connect_timeout: float | None = None,
        what: str = "store",
    ) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigurationError(
                "a PostgreSQL store needs psycopg 3: pip install 'm2msec[postgres]'"
            ) from None
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigurationError(f"invalid PostgreSQL schema name {schema!r}")
        self._psycopg = psycopg
        self.url = url
        self.schema = schema
        self.errors = (psycopg.Error,)
        self.integrity_errors = (psycopg.IntegrityError,)
        self.label = f"{redact_url(url)} (schema {schema})"
        self.kek_path = (home if home is not None else data_dir()) / KEK_FILE_NAME
        self._conninfo = url
        self._extra: dict[str, Any] = {}
        if settings or application_name is not None or connect_timeout is not None:
            self._conninfo, self._extra = self._parameters(
                settings or {}, application_name, connect_timeout, what
            )

    def _parameters(
        self,
        settings: dict[str, str],
        application_name: str | None,
        connect_timeout: float | None,
        what: str,
    ) -> tuple[str, dict[str, Any]]:
        conninfo_mod = self._psycopg.conninfo
        try:
            conninfo = conninfo_mod.make_conninfo(self.url)
            params = conninfo_mod.conninfo_to_dict(conninfo)
        except self._psycopg.Error as exc:
            raise ConfigurationError(
                f"invalid PostgreSQL {what} URL {redact_url(self.url)}: {self.message(exc)}"
            ) from None
        extra: dict[str, Any] = {}
        if settings:
            ours = " ".join(f"-c {name}={value}" for name, value in settings.items())
            extra["options"] = f"{params.get('options') or ''} {ours}".strip()
        if connect_timeout is not None and "connect_timeout" not in params:
            extra["connect_timeout"] = max(1, round(connect_timeout))
        if application_name is not None and "application_name" not in params:
            extra["application_name"] = application_name
        return conninfo, extra

    def prepare(self) -> None:
        ensure_private_dir(self.kek_path.parent)

    def connect(self) -> Connection:
        conn = self._psycopg.connect(self._conninfo, autocommit=True, **self._extra)
        try:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        except self._psycopg.errors.UniqueViolation:
            pass  # two processes creating it at once: the other one won
        except self._psycopg.errors.InsufficientPrivilege:
            pass  # created by a DBA; the role may still use it
        conn.execute(f"SET search_path TO {self.schema}")
        return cast(Connection, conn)

    def begin_exclusive(self, conn: Connection) -> None:
        conn.execute("BEGIN")
        # One migrating process per schema; the key is derived from the schema name.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"m2msec:{self.schema}",))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )

    def schema_version(self, conn: Connection) -> int:
        if not self._has_table(conn, "schema_version"):
            return 0
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        return 0 if row is None else int(row[0])

    def set_schema_version(self, conn: Connection, version: int) -> None:
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    def data_version(self, conn: Connection) -> int:
        return int(conn.execute("SELECT n FROM change_counter").fetchone()[0])

    def in_transaction(self, conn: Connection) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(conn.info.transaction_status != TransactionStatus.IDLE)  # type: ignore[attr-defined]

    def usable(self, conn: Connection) -> bool:
        return not conn.closed  # type: ignore[attr-defined]

    def message(self, exc: Exception) -> str:
        diag = getattr(exc, "diag", None)
        primary = getattr(diag, "message_primary", None)
        if primary:
            return str(primary)
        # Connection failures have no diagnostics; libpq's text names host and port only.
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__

    def _has_table(self, conn: Connection, name: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (self.schema, name),
        ).fetchone()
        return row is not None

    def __repr__(self) -> str:
        return f"PostgresDatabase({self.label!r})"


def change_counter_ddl(db: Database, tables: tuple[str, ...]) -> tuple[str, ...]:
    """PostgreSQL: a ``change_counter`` row bumped by every statement changing ``tables``.

    SQLite needs nothing (``PRAGMA data_version``). Part of a store's first migration.
    """
    if not isinstance(db, PostgresDatabase):
        return ()
    out = [
        "CREATE TABLE change_counter (n BIGINT NOT NULL)",
        "INSERT INTO change_counter (n) VALUES (0)",
        """CREATE FUNCTION bump_change_counter() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN UPDATE change_counter SET n = n + 1; RETURN NULL; END $$""",
    ]
    for table in tables:
        out.append(
            f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION bump_change_counter()"
        )
    return tuple(out)


def open_database(
    url_or_path: str | os.PathLike[str] | Database,
    *,
    pg_schema: str,
    busy_timeout: float = 5.0,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
) -> Database:
    """The :class:`Database` named by a plain path, ``sqlite:///path`` or ``postgresql://``;
    a :class:`Database` is taken as it is."""
    if isinstance(url_or_path, Database):
        return url_or_path
    text = os.fspath(url_or_path)
    if not _URL.match(text):
        return SqliteDatabase(text, busy_timeout=busy_timeout, synchronous=synchronous)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise ConfigurationError(
                "a SQLite store URL has the form sqlite:///absolute/path/to/file.db"
            )
        return SqliteDatabase(
            unquote(parts.path), busy_timeout=busy_timeout, synchronous=synchronous
        )
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(text, schema=pg_schema)
    raise ConfigurationError(f"unsupported store URL scheme {scheme!r}")


def create_private_file(path: Path) -> None:
    """Create the database file 0600 (its directory 0700) before SQLite opens it.

    Creating it ourselves with an explicit mode avoids changing the process-wide umask,
    which would race with other threads; SQLite gives the -wal and -shm files the mode of
    the database file.
    """
    ensure_private_dir(path.parent)
    try:
        write_private(path, b"")
    except FileExistsError:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"store {path} is not a regular file") from None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            log.warning(
                "store %s is accessible by group/others (mode %03o); run chmod 600 on it",
                path,
                mode,
            )
    except OSError as exc:
        raise StoreError(f"cannot create store {path}: {exc.strerror}") from None
