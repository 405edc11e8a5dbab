"""The psk-lookup-table of TS-0003 8.2.2.1 / TR-0038 7.1.2, in SQLite or PostgreSQL.

One table, keyed by KpsaId (octet-exact: SQLite's BINARY collation, PostgreSQL's "C")::

    psk(kpsa_id TEXT PRIMARY KEY, entity_id TEXT, kpsa BLOB NOT NULL, expires_at INTEGER)

``kpsa`` is sealed (:mod:`m2msec.store.seal`) with associated data binding the row's KpsaId,
entity id and expiry: a sealed key copied to another row, or a row whose entity id or
expiry was edited in the database, fails to unseal. ``expires_at`` is in whole seconds
since the Unix epoch (UTC). The schema version and a sealed KEK check value in ``meta``
are handled by :mod:`m2msec.store.schema`, the same for both dialects
(:mod:`m2msec.store.db`, chosen by URL). The identity registry's table lives beside it.

Durability and concurrency: SQLite runs WAL with ``synchronous=FULL``; every write is one
transaction. The gateway (asyncio thread, inside OpenSSL's PSK callback) and the CLI
(another process) may use the same file or PostgreSQL schema at once. Each store object
has a read connection and a write connection, each behind its own lock, so a long import
in one thread does not hold up lookups in another. A broken PostgreSQL connection is
re-opened at its next use; the operation that met the failure gets a StoreError.

Lookup cache: a bounded LRU of unsealed entries (``cache_size`` entries, 0 disables it).
Writes through this object invalidate it at once. Writes by *other* connections (another
process) are noticed by polling the database's change counter (SQLite's ``PRAGMA
data_version``, a trigger-maintained counter in PostgreSQL) at most once every
``cache_ttl`` seconds, which drops the whole cache: a key removed or replaced elsewhere may
still be served for up to ``cache_ttl`` seconds (2 s by default; 0 means checked on every
lookup). Absent KpsaIds are never cached, so unknown identities sent by a peer cannot
evict provisioned ones.
"""

from __future__ import annotations

import builtins
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Final

from m2msec.errors import (
    ConfigurationError,
    DuplicateCredentialError,
    IdentifierError,
    StoreError,
)
from m2msec.store.base import ProgressCallback, PskEntry, PskInfo, credential_key
from m2msec.store.db import (
    Connection,
    Database,
    SqliteDatabase,
    change_counter_ddl,
    from_epoch,
    is_text,
    open_database,
    to_epoch,
)
from m2msec.store.lookups import LookupStats
from m2msec.store.schema import KekCheck, SealedSchema
from m2msec.store.seal import sealed_plaintext_length
from m2msec.store.sealed_store import SealedStore

__all__ = [
    "MAX_ENTITY_ID_OCTETS",
    "MAX_KPSA_ID_OCTETS",
    "MAX_KPSA_OCTETS",
    "PG_SCHEMA",
    "SCHEMA_VERSION",
    "SealedPskStore",
    "SqlitePskStore",
    "row_aad",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 3
MAX_KPSA_ID_OCTETS: Final = 128  # RFC 4279 psk_identity limit
MAX_KPSA_OCTETS: Final = 64  # OpenSSL's PSK_MAX_PSK_LEN
MAX_ENTITY_ID_OCTETS: Final = 1024
#: The PostgreSQL schema holding the psk table and the identity registry.
PG_SCHEMA: Final = "m2msec_psk"


def migrations(db: Database) -> dict[int, tuple[str, ...]]:
    """Each schema version's statements in ``db``'s dialect, applied in order."""
    t, b, w = db.key_text, db.blob, db.table_suffix
    return {
        1: (
            f"""CREATE TABLE psk (
                   kpsa_id    {t} PRIMARY KEY,
                   entity_id  {t},
                   kpsa       {b} NOT NULL,
                   expires_at BIGINT
               ){w}""",
            f"CREATE TABLE meta (name {t} PRIMARY KEY, value {b} NOT NULL){w}",
        ),
        # The identity registry (m2msec.store.registry): which credential owns an AE-ID/CSE-ID.
        2: (
            f"""CREATE TABLE identity_owner (
                   entity_id  {t} PRIMARY KEY,
                   credential {t} NOT NULL,
                   source     TEXT NOT NULL,
                   recorded_at BIGINT NOT NULL
               ){w}""",
            "CREATE INDEX identity_owner_credential ON identity_owner (credential)",
            "CREATE INDEX psk_entity_id ON psk (entity_id)",
            *change_counter_ddl(db, ("psk", "identity_owner")),
        ),
        # Stored serviceSubscribedAppRules (m2msec.store.app_rules, ``m2msec gateway rule``).
        3: (
            f"""CREATE TABLE app_rule (
                   id              {db.serial_key},
                   name            {t} UNIQUE,
                   credentials     TEXT NOT NULL,
                   allowed_aes     TEXT NOT NULL,
                   allowed_app_ids TEXT NOT NULL,
                   created_at      BIGINT NOT NULL
               )""",
        ),
    }


_SCHEMA: Final = SealedSchema(
    migrations,
    SCHEMA_VERSION,
    KekCheck(aad=b"m2msec/meta/kek-check", value=b"m2msec key-encryption key check, version 1"),
)

_CHUNK: Final = 10_000
_LIST_PAGE: Final = 1_000
# After an import this large, fold the WAL back into the database and truncate it, so the
# WAL does not stay as big as the import on disk.
_CHECKPOINT_AFTER: Final = 50_000

_Row = tuple[str, str | None, bytes, int | None]


class _Sql:
    """The psk table's statements, written once with ``db.p`` as placeholder."""

    def __init__(self, db: Database) -> None:
        p = db.p
        cols = "kpsa_id, entity_id, kpsa, expires_at"
        self.select = f"SELECT entity_id, kpsa, expires_at FROM psk WHERE kpsa_id = {p}"
        self.insert = f"INSERT INTO psk ({cols}) VALUES ({p}, {p}, {p}, {p})"
        self.upsert = (
            f"{self.insert} ON CONFLICT (kpsa_id) DO UPDATE SET entity_id = excluded.entity_id,"
            " kpsa = excluded.kpsa, expires_at = excluded.expires_at"
        )
        self.delete = f"DELETE FROM psk WHERE kpsa_id = {p}"
        # The identities a Credential-ID association of the row registered (store/registry.py).
        self.release = f"DELETE FROM identity_owner WHERE credential = {p}"
        self.exists = f"SELECT 1 FROM psk WHERE kpsa_id = {p}"
        listed = "SELECT kpsa_id, entity_id, length(kpsa), expires_at FROM psk"
        self.list_first = f"{listed} ORDER BY kpsa_id LIMIT {p}"
        self.list_after = f"{listed} WHERE kpsa_id > {p} ORDER BY kpsa_id LIMIT {p}"
        self.purge = f"DELETE FROM psk WHERE expires_at IS NOT NULL AND expires_at <= {p}"


def row_aad(kpsa_id: str, entity_id: str | None, expires_at: int | None) -> bytes:
    """Associated data sealing a row's Kpsa: the row's KpsaId, entity id and expiry.

    Length-prefixed so that no two different rows give the same octets.
    """
    kid = kpsa_id.encode("utf-8")
    parts = [len(kid).to_bytes(2, "big"), kid]
    if entity_id is None:
        parts.append(b"\x00")
    else:
        eid = entity_id.encode("utf-8")
        parts += [b"\x01", len(eid).to_bytes(2, "big"), eid]
    if expires_at is None:
        parts.append(b"\x00")
    else:
        parts += [b"\x01", expires_at.to_bytes(8, "big", signed=True)]
    return b"".join(parts)


def _check_text(value: str, what: str, limit: int) -> None:
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise IdentifierError(f"{what} is not valid Unicode text") from None
    if not 1 <= n <= limit:
        raise IdentifierError(f"{what} must be 1 to {limit} octets (UTF-8), not {n}")


class SealedPskStore(SealedStore):
    """A :class:`~m2msec.store.base.PskStore` in SQLite or PostgreSQL, Kpsa sealed at rest.

    ``target`` is a file path, a ``sqlite:///`` or ``postgresql://`` URL, or a
    :class:`~m2msec.store.db.Database`. A SQLite file is created (0600, its directory 0700)
    if missing. ``kek`` overrides the key-encryption key from ``$M2MSEC_KEK`` or the
    ``kek`` file (beside a SQLite file; in the data directory for PostgreSQL). See the
    module documentation for caching (``cache_size``, ``cache_ttl``) and concurrency.
    ``busy_timeout`` is how long a SQLite writer waits for another process's write.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Database,
        *,
        kek: bytes | None = None,
        cache_size: int = 4096,
        cache_ttl: float = 2.0,
        busy_timeout: float = 5.0,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        if cache_ttl < 0:
            raise ValueError("cache_ttl must be >= 0")
        db = open_database(target, pg_schema=PG_SCHEMA, busy_timeout=busy_timeout)
        self._sql = _Sql(db)
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._cache: OrderedDict[str, PskEntry] = OrderedDict()
        self._cache_checked_at = -float("inf")
        self._data_version = -1
        #: Cache hits/misses and latency of :meth:`get` (the metrics read them).
        self.lookups = LookupStats()
        # The identity registry and the stored rules open their tables through .database.
        super().__init__(db, _SCHEMA, kind="store", kek=kek)

    # -- PskStore --------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The SQLite file (AttributeError-free only for SQLite stores)."""
        if not isinstance(self._db, SqliteDatabase):
            raise StoreError(f"store {self._db.label} is not a file")
        return self._db.path

    @property
    def cache_ttl(self) -> float:
        """Seconds a cached row may be served before the database is re-checked."""
        return self._cache_ttl

    def get(self, kpsa_id: str) -> PskEntry | None:
        """The row for ``kpsa_id`` (octet-exact), possibly from the cache; expired rows too."""
        if not is_text(kpsa_id):
            return None  # not valid UTF-8 text: cannot be a stored KpsaId
        started = self.lookups.start()
        with self._rlock:
            try:
                conn = self._reader()
                if self._cache_size:
                    self._revalidate_cache(conn)
                    entry = self._cache.get(kpsa_id)
                    if entry is not None:
                        self._cache.move_to_end(kpsa_id)
                        self.lookups.done(started, hit=True)
                        return entry
                row = conn.execute(self._sql.select, (kpsa_id,)).fetchone()
            except self._db.errors as exc:
                raise self._error("read", exc) from None
            self.lookups.done(started, hit=False)
            if row is None:
                return None
            entity_id, sealed, expires_at = row
            kpsa = self._sealer.unseal(
                bytes(sealed),
                row_aad(kpsa_id, entity_id, expires_at),
                what=f"the Kpsa of {kpsa_id!r}",
            )
            entry = PskEntry(kpsa_id, kpsa, entity_id, from_epoch(expires_at))
            if self._cache_size:
                self._cache[kpsa_id] = entry
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return entry

    def add(self, entry: PskEntry, *, replace: bool = False) -> None:
        row = self._prepare(entry)
        with self._wlock:
            try:
                self._writer().execute(self._sql.upsert if replace else self._sql.insert, row)
            except self._db.integrity_errors:
                raise DuplicateCredentialError(f"KpsaId {entry.kpsa_id!r} already exists") from None
            except self._db.errors as exc:
                raise self._error("write", exc) from None
        self._invalidate(entry.kpsa_id)

    def add_many(
        self,
        entries: Iterable[PskEntry],
        *,
        replace: bool = False,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Insert all ``entries`` in one transaction (all or none); ``progress(n_done)``
        is called after each chunk of rows. Returns the number of rows written."""
        sql = self._sql.upsert if replace else self._sql.insert
        rows = map(self._prepare, entries)
        done = 0
        written: set[str] = set()
        db = self._db
        with self._wlock:
            try:
                with db.transaction(self._writer()) as conn:
                    while chunk := builtins.list(islice(rows, _CHUNK)):
                        try:
                            conn.cursor().executemany(sql, chunk)
                        except db.integrity_errors:
                            conn.execute("ROLLBACK")
                            kid = self._duplicate_in(conn, chunk, written)
                            raise DuplicateCredentialError(
                                f"KpsaId {kid!r} already exists (nothing was imported)"
                            ) from None
                        done += len(chunk)
                        written.update(row[0] for row in chunk)
                        if progress is not None:
                            progress(done)
                if done >= _CHECKPOINT_AFTER:
                    db.after_bulk_write(conn)
            except db.errors as exc:
                raise self._error("write", exc) from None
        self._invalidate_all()
        return done

    def remove(self, kpsa_id: str) -> bool:
        """Remove the row of ``kpsa_id`` and, in the same transaction, release the AE-IDs
        its associations registered (``identity_owner``, :mod:`m2msec.store.registry`), so
        that a later row under the same KpsaId does not inherit them. An expired row that is
        purged keeps them: renewing a device's key keeps its AE-ID."""
        if not is_text(kpsa_id):
            return False
        db = self._db
        with self._wlock:
            try:
                with db.transaction(self._writer()) as conn:
                    cursor = conn.execute(self._sql.delete, (kpsa_id,))
                    removed = bool(cursor.rowcount > 0)
                    if removed:
                        conn.execute(self._sql.release, (credential_key("psk", kpsa_id),))
            except db.errors as exc:
                raise self._error("write", exc) from None
        self._invalidate(kpsa_id)
        return removed

    def list(self, *, after: str | None = None, limit: int | None = None) -> Iterator[PskInfo]:
        """Rows ordered by KpsaId, without keys (nothing is unsealed): those whose KpsaId
        sorts after ``after`` (the last one of the previous page), at most ``limit``.

        Read page by page (keyset paging, one index range scan per page), so memory stays
        bounded at any table size and no lock or read transaction is held while the caller
        iterates.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        last = after
        left = limit
        while left is None or left > 0:
            size = _LIST_PAGE if left is None else min(left, _LIST_PAGE)
            with self._rlock:
                try:
                    conn = self._reader()
                    if last is None:
                        cursor = conn.execute(self._sql.list_first, (size,))
                    else:
                        cursor = conn.execute(self._sql.list_after, (last, size))
                    page = cursor.fetchall()
                except self._db.errors as exc:
                    raise self._error("read", exc) from None
            for kpsa_id, entity_id, sealed_length, expires_at in page:
                yield PskInfo(
                    kpsa_id,
                    entity_id,
                    from_epoch(expires_at),
                    sealed_plaintext_length(sealed_length),
                )
            if len(page) < size:
                return
            last = page[-1][0]
            if left is not None:
                left -= len(page)

    def count(self) -> int:
        with self._rlock:
            try:
                return int(self._reader().execute("SELECT count(*) FROM psk").fetchone()[0])
            except self._db.errors as exc:
                raise self._error("read", exc) from None

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete rows whose expiry is at or before ``now``; return how many."""
        cutoff = to_epoch(now or datetime.now(UTC))
        with self._wlock:
            try:
                cursor = self._writer().execute(self._sql.purge, (cutoff,))
            except self._db.errors as exc:
                raise self._error("write", exc) from None
            purged = int(cursor.rowcount)
        if purged:
            self._invalidate_all()
        return purged

    # -- internals -------------------------------------------------------------------------

    def _clear_caches(self) -> None:
        self._cache.clear()

    def _duplicate_in(
        self, conn: Connection, chunk: builtins.list[_Row], written: set[str]
    ) -> str:
        """Which KpsaId of a refused chunk was already there (or earlier in the import)."""
        seen = set(written)
        for row in chunk:
            kid = row[0]
            if kid in seen or conn.execute(self._sql.exists, (kid,)).fetchone() is not None:
                return kid
            seen.add(kid)
        return "?"

    def _prepare(self, entry: PskEntry) -> _Row:
        """Validate a row and seal its key."""
        kid = entry.kpsa_id
        _check_text(kid, "KpsaId", MAX_KPSA_ID_OCTETS)
        if not 1 <= len(entry.kpsa) <= MAX_KPSA_OCTETS:
            raise ConfigurationError(
                f"the Kpsa of {kid!r} must be 1 to {MAX_KPSA_OCTETS} octets, not {len(entry.kpsa)}"
            )
        if entry.entity_id is not None:
            _check_text(entry.entity_id, f"the entity id of {kid!r}", MAX_ENTITY_ID_OCTETS)
        expires_at = to_epoch(entry.expires_at)
        sealed = self._sealer.seal(bytes(entry.kpsa), row_aad(kid, entry.entity_id, expires_at))
        return (kid, entry.entity_id, sealed, expires_at)

    def _revalidate_cache(self, conn: Connection) -> None:
        # Caller holds _rlock. The change counter moves when another connection commits.
        now = time.monotonic()
        if now - self._cache_checked_at < self._cache_ttl:
            return
        version = self._db.data_version(conn)
        if version != self._data_version:
            self._cache.clear()
            self._data_version = version
        self._cache_checked_at = now

    def _invalidate(self, kpsa_id: str) -> None:
        with self._rlock:
            self._cache.pop(kpsa_id, None)

    def _invalidate_all(self) -> None:
        with self._rlock:
            self._clear_caches()


#: The name this store had when it knew only SQLite.
SqlitePskStore = SealedPskStore
