"""The MAF store (TS-0003 8.8) in PostgreSQL, shared by several MAF instances.

Same tables, same sealing and same behaviour as the SQLite store (:mod:`m2msec.maf.store`,
whose code this subclass reuses: only connecting, the schema and a few statements differ).
Opened by ``open_maf_store("postgresql://user@host/db")`` or ``m2msec maf serve --store
postgresql://...``; needs the ``postgres`` extra (psycopg 3).

- **Tables** live in their own PostgreSQL schema (``m2msec_maf`` by default, the ``schema``
  argument), created on first use under an advisory lock so that MAF instances starting
  together do not race; the connecting role needs the CREATE privilege on the database
  then (or a DBA creates the schema and grants it). Text columns use the "C" collation so
  listings sort as in SQLite whatever the database locale.
- **Transactions**: :meth:`MafStore.writer` is one ``BEGIN`` ... ``COMMIT`` on a dedicated
  connection; the MAF server commits a group of Key Registrations and their audit records
  before it answers any of them, as with SQLite. Reads use a second connection in
  autocommit mode. Unlike SQLite, writers of different MAF instances run concurrently
  (READ COMMITTED): the RelativeKeyID primary key is enforced by the database, and an insert
  of a RelativeKeyID another instance is inserting waits for that transaction and then
  writes nothing, so the loser takes the same duplicate path (4105) as with SQLite. Keys
  read to be updated are locked (``SELECT ... FOR UPDATE``).
- **Durability**: ``synchronous="full"`` is PostgreSQL's ``synchronous_commit = on``;
  ``"normal"`` is ``off`` (a committed key survives the MAF process being killed, the last
  commits may be lost if the PostgreSQL server crashes), the same trade as SQLite's.
- **Key-encryption key**: ``kek``, else ``$M2MSEC_KEK``, else the ``kek`` file in ``home``
  (default: the m2msec data directory), created only with a new database. Instances on
  other hosts sharing the database must be given the same KEK (``$M2MSEC_KEK`` from a secret
  manager); a wrong one is refused at open by the sealed check value, as with SQLite.
- **Caches** of clients and Entity Bs follow the ``config-version`` counter in ``meta``,
  bumped by every instance in the transaction of the change.
- A broken connection (the PostgreSQL server restarted) is re-opened at the next read or
  at the next transaction; the operation that met the failure gets a StoreError.

Error messages carry the database's primary message only (no DETAIL with row values) and
the URL without its password.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Final

from m2msec.errors import ConfigurationError, StoreError
from m2msec.maf.store import (
    _KEK_CHECK_AAD,
    _KEK_CHECK_NAME,
    _KEK_CHECK_VALUE,
    _SELECT_KEY,
    SCHEMA_VERSION,
    MafStore,
    redact_url,
)
from m2msec.paths import data_dir, ensure_private_dir
from m2msec.store.seal import KEK_FILE_NAME, Sealer, load_kek

try:
    import psycopg
    from psycopg.pq import TransactionStatus
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

_PG_ERRORS: Final[tuple[type[Exception], ...]] = () if psycopg is None else (psycopg.Error,)

__all__ = ["DEFAULT_PG_SCHEMA", "PgMafStore", "redact_url"]

DEFAULT_PG_SCHEMA: Final = "m2msec_maf"
#: Serialises schema creation between MAF instances (any constant; "m2msMAF1").
_SCHEMA_LOCK: Final = 0x6D32_6D73_4D41_4631

_C: Final = 'TEXT COLLATE "C"'
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_DDL: Final[tuple[str, ...]] = (
    f"CREATE TABLE meta (name {_C} PRIMARY KEY, value BYTEA, counter BIGINT)",
    f"""CREATE TABLE clients (
           km_id      {_C} PRIMARY KEY,
           km_id_text {_C} NOT NULL,
           km         BYTEA NOT NULL,
           entity_id  {_C},
           created    BIGINT NOT NULL,
           enabled    INTEGER NOT NULL DEFAULT 1,
           config     TEXT
       )""",
    f"CREATE TABLE entity_b (entity_id {_C} PRIMARY KEY, created BIGINT NOT NULL, "
    "kind TEXT NOT NULL DEFAULT 'in-cse')",
    f"""CREATE TABLE registrations (
           reg_id     {_C} PRIMARY KEY,
           km_id      {_C} NOT NULL,
           expires_at BIGINT NOT NULL,
           expires_us INTEGER NOT NULL DEFAULT 0,
           labels     TEXT,
           admin_fqdn {_C} NOT NULL,
           created    BIGINT NOT NULL
       )""",
    "CREATE INDEX registrations_km ON registrations (km_id)",
    f"""CREATE TABLE keys (
           rel_id       {_C} PRIMARY KEY,
           kc           BYTEA,
           expires_at   BIGINT NOT NULL,
           km_id        {_C} NOT NULL,
           suid         INTEGER NOT NULL,
           target_ids   TEXT NOT NULL,
           labels       TEXT,
           admin_fqdn   {_C} NOT NULL,
           reg_id       {_C},
           created      BIGINT NOT NULL,
           deregistered INTEGER NOT NULL DEFAULT 0,
           expires_us   INTEGER NOT NULL DEFAULT 0
       )""",
    "CREATE TABLE audit (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "time BIGINT NOT NULL, record TEXT NOT NULL)",
    "INSERT INTO meta (name, counter) VALUES ('config-version', 0)",
)

#: Upgrades from schema version N (the key) to N + 1, as in maf/store.py's _MIGRATIONS.
_PG_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    # Schema 2: Entity B kinds, old rows are IN-CSEs.
    1: ("ALTER TABLE entity_b ADD COLUMN kind TEXT NOT NULL DEFAULT 'in-cse'",),
    # Schema 3: the microseconds of each expiry; old rows have none.
    2: (
        "ALTER TABLE keys ADD COLUMN expires_us INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE registrations ADD COLUMN expires_us INTEGER NOT NULL DEFAULT 0",
    ),
}


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    # Our statements use "?" parameters (sqlite3) and contain no literal "?" or "%".
    return sql.replace("?", "%s")


class _PgConnection:
    """A psycopg connection speaking the sqlite3 subset the store uses (``?`` parameters,
    ``execute`` returning the cursor, ``in_transaction``), re-opened when broken."""

    __slots__ = ("_conn", "_factory", "_in_tx", "_shut")

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._conn: psycopg.Connection[Any] = factory()
        self._in_tx = False
        self._shut = False

    def execute(self, sql: str, args: Any = ()) -> Any:
        if self._shut:
            raise psycopg.OperationalError("the MAF store is closed")
        if self._conn.closed and (sql == "BEGIN" or not self._in_tx):
            self._conn = self._factory()  # re-open after a broken connection
        if sql == "BEGIN":
            self._in_tx = True
        elif sql in ("COMMIT", "ROLLBACK"):
            self._in_tx = False
        return self._conn.execute(_pg_sql(sql), args)

    def executemany(self, sql: str, rows: Any) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_pg_sql(sql), rows)

    @property
    def in_transaction(self) -> bool:
        if self._conn.closed:
            self._in_tx = False
            return False
        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self._shut = True
        self._conn.close()


class PgMafStore(MafStore):
    """The MAF store in a PostgreSQL database (module documentation). Thread-safe.

    ``url`` is a libpq URL (``postgresql://user:password@host:port/db?sslmode=...``);
    ``home`` holds the ``kek`` file (unless ``kek`` or ``$M2MSEC_KEK`` is given) and is the
    folder of :attr:`path` (where the MAF server puts its audit log copy).
    """

    in_process: ClassVar[bool] = False
    _DB_ERRORS: ClassVar[tuple[type[Exception], ...]] = _PG_ERRORS
    _SQL_BEGIN: ClassVar[str] = "BEGIN"
    _SQL_BUMP_CONFIG: ClassVar[str] = (
        "UPDATE meta SET counter = counter + 1 WHERE name = 'config-version'"
    )
    _SQL_CONFIG_VERSION: ClassVar[str] = "SELECT counter FROM meta WHERE name = 'config-version'"
    _SQL_SELECT_KEY_FOR_UPDATE: ClassVar[str] = _SELECT_KEY + " FOR UPDATE"

    def __init__(
        self,
        url: str,
        *,
        kek: bytes | None = None,
        cache_ttl: float = 2.0,
        synchronous: str = "full",
        schema: str = DEFAULT_PG_SCHEMA,
        home: str | os.PathLike[str] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if psycopg is None:
            raise ConfigurationError(
                "a PostgreSQL MAF store needs psycopg 3: pip install 'm2msec[postgres]'"
            )
        self._init_state(cache_ttl, synchronous)
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigurationError(
                f"invalid PostgreSQL schema name {schema!r}: lower-case letters, digits, '_'"
            )
        self._url = url
        self._schema = schema
        self._home = Path(home).expanduser() if home is not None else data_dir()
        self._path = self._home / f"maf-postgresql-{schema}"
        try:
            conninfo = psycopg.conninfo.make_conninfo(url)
            params = psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"invalid PostgreSQL MAF store URL {redact_url(url)}: {_primary(exc)}"
            ) from None
        commit = "on" if self._synchronous == "FULL" else "off"
        # Our settings after any "options" of the URL (say, a statement_timeout).
        options = f"{params.get('options') or ''} -c search_path={schema} "
        options += f"-c synchronous_commit={commit}"
        extra: dict[str, Any] = {"options": options.strip()}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = max(1, round(connect_timeout))
        if "application_name" not in params:
            extra["application_name"] = "m2msec-maf"

        def factory() -> psycopg.Connection[Any]:
            return psycopg.connect(conninfo, autocommit=True, **extra)

        try:
            self._wconn = _PgConnection(factory)
            try:
                self._rconn = _PgConnection(factory)
            except BaseException:
                self._wconn.close()
                raise
        except psycopg.Error as exc:
            raise StoreError(f"cannot open MAF store {self.location}: {_primary(exc)}") from None
        try:
            self._sealer = self._open_pg_schema(kek)
        except BaseException:
            self._rconn.close()
            self._wconn.close()
            raise

    def _open_pg_schema(self, kek: bytes | None) -> Sealer:
        conn = self._wconn
        kek_path = self._home / KEK_FILE_NAME
        try:
            conn.execute("BEGIN")
            try:
                conn.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
                exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
                if exists:
                    row = conn.execute(
                        "SELECT counter FROM meta WHERE name = 'schema-version'"
                    ).fetchone()
                    version = 0 if row is None else int(row[0])
                    if version > SCHEMA_VERSION:
                        raise StoreError(
                            f"MAF store {self.location} has schema version {version}; this "
                            f"version of m2msec reads up to {SCHEMA_VERSION}"
                        )
                    if version not in _PG_MIGRATIONS and version != SCHEMA_VERSION:
                        raise StoreError(
                            f"{self.location}: schema {self._schema} is not a MAF store"
                        )
                    if version != SCHEMA_VERSION:
                        # The steps of maf/store.py's _MIGRATIONS, in PostgreSQL's words.
                        for step in range(version + 1, SCHEMA_VERSION + 1):
                            for statement in _PG_MIGRATIONS[step - 1]:
                                conn.execute(statement)
                        conn.execute(
                            "UPDATE meta SET counter = ? WHERE name = 'schema-version'",
                            (SCHEMA_VERSION,),
                        )
                else:
                    for statement in _DDL:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO meta (name, counter) VALUES ('schema-version', ?)",
                        (SCHEMA_VERSION,),
                    )
                row = conn.execute(
                    "SELECT value FROM meta WHERE name = ?", (_KEK_CHECK_NAME,)
                ).fetchone()
                if row is None:
                    if kek is None:
                        ensure_private_dir(self._home)
                    sealer = Sealer(kek if kek is not None else load_kek(kek_path, create=True))
                    conn.execute(
                        "INSERT INTO meta (name, value) VALUES (?, ?)",
                        (_KEK_CHECK_NAME, sealer.seal(_KEK_CHECK_VALUE, _KEK_CHECK_AAD)),
                    )
                else:
                    sealer = Sealer(kek if kek is not None else load_kek(kek_path, create=False))
                    sealer.check(bytes(row[0]), _KEK_CHECK_AAD, _KEK_CHECK_VALUE, what=self._what)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except psycopg.Error as exc:
            raise StoreError(f"cannot open MAF store {self.location}: {_primary(exc)}") from None
        return sealer

    @property
    def _what(self) -> str:
        return f"the check value of MAF store {self.location}"

    @property
    def location(self) -> str:
        return f"{redact_url(self._url)} (schema {self._schema})"

    @property
    def url(self) -> str:
        """The URL without its password."""
        return redact_url(self._url)

    @property
    def synchronous(self) -> str:
        """The durability: "full" (``synchronous_commit = on``) or "normal" (``off``)."""
        return self._synchronous.lower()

    def __repr__(self) -> str:
        return f"PgMafStore({redact_url(self._url)!r}, schema={self._schema!r})"

    def _error(self, action: str, exc: Exception) -> StoreError:
        if self._closed:
            return StoreError(f"MAF store {self.location} is closed")
        return StoreError(f"cannot {action} MAF store {self.location}: {_primary(exc)}")


def _primary(exc: BaseException) -> str:
    """The database's primary message, without DETAIL (which may quote row values)."""
    diag = getattr(exc, "diag", None)
    message = getattr(diag, "message_primary", None) if diag is not None else None
    if message:
        return str(message)
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
