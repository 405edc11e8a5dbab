"""The psk-lookup-table of TS-0003 8.2.2.1 / TR-0038 7.1.2 in SQLite.

One table, keyed by KpsaId (octet-exact, SQLite's BINARY collation)::

    psk(kpsa_id TEXT PRIMARY KEY, entity_id TEXT, kpsa BLOB NOT NULL, expires_at INTEGER)
        WITHOUT ROWID

``kpsa`` is sealed (:mod:`m2msec.store.seal`) with associated data binding the row's KpsaId,
entity id and expiry: a sealed key copied to another row, or a row whose entity id or
expiry was edited in the database, fails to unseal. ``expires_at`` is in whole seconds
since the Unix epoch (UTC). ``PRAGMA user_version`` holds the schema version; a ``meta``
table holds a sealed check value that detects a wrong key-encryption key when the store is
opened rather than at the first handshake.

Durability and concurrency: WAL journal, ``synchronous=FULL``; every write is one
transaction. The gateway (asyncio thread, inside OpenSSL's PSK callback) and the CLI
(another process) may use the same file at once. Each store object has a read connection
and a write connection, each behind its own lock, so a long import in one thread does not
hold up lookups in another.

Lookup cache: a bounded LRU of unsealed entries (``cache_size`` entries, 0 disables it).
Writes through this object invalidate it at once. Writes by *other* connections (another
process) are noticed by polling ``PRAGMA data_version`` at most once every ``cache_ttl``
seconds, which drops the whole cache: a key removed or replaced elsewhere may still be
served for up to ``cache_ttl`` seconds (2 s by default; 0 means checked on every lookup).
Absent KpsaIds are never cached, so unknown identities sent by a peer cannot evict
provisioned ones.
"""

from __future__ import annotations

import builtins
import logging
import os
import sqlite3
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Final

from m2msec.errors import (
    ConfigurationError,
    DuplicateCredentialError,
    IdentifierError,
    StoreError,
)
from m2msec.paths import ensure_private_dir
from m2msec.store.base import ProgressCallback, PskEntry, PskInfo
from m2msec.store.schema import KekCheck, open_sealed_schema
from m2msec.store.seal import (
    KEK_FILE_NAME,
    Sealer,
    sealed_plaintext_length,
)

__all__ = [
    "MAX_ENTITY_ID_OCTETS",
    "MAX_KPSA_ID_OCTETS",
    "MAX_KPSA_OCTETS",
    "SCHEMA_VERSION",
    "SqlitePskStore",
    "row_aad",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 3
MAX_KPSA_ID_OCTETS: Final = 128  # RFC 4279 psk_identity limit
MAX_KPSA_OCTETS: Final = 64  # OpenSSL's PSK_MAX_PSK_LEN
MAX_ENTITY_ID_OCTETS: Final = 1024

# Each schema version's statements; applied in order from the file's user_version.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE psk (
               kpsa_id    TEXT PRIMARY KEY,
               entity_id  TEXT,
               kpsa       BLOB NOT NULL,
               expires_at INTEGER
           ) WITHOUT ROWID""",
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    ),
    # The identity registry (m2msec.store.registry): which credential owns an AE-ID/CSE-ID.
    2: (
        """CREATE TABLE identity_owner (
               entity_id  TEXT PRIMARY KEY,
               credential TEXT NOT NULL,
               source     TEXT NOT NULL,
               recorded_at INTEGER NOT NULL
           ) WITHOUT ROWID""",
        "CREATE INDEX identity_owner_credential ON identity_owner (credential)",
        "CREATE INDEX psk_entity_id ON psk (entity_id)",
    ),
    # Stored serviceSubscribedAppRules (m2msec.store.app_rules, ``m2msec gateway rule``).
    3: (
        """CREATE TABLE app_rule (
               id              INTEGER PRIMARY KEY AUTOINCREMENT,
               name            TEXT UNIQUE,
               credentials     TEXT NOT NULL,
               allowed_aes     TEXT NOT NULL,
               allowed_app_ids TEXT NOT NULL,
               created_at      INTEGER NOT NULL
           )""",
    ),
}

_KEK_CHECK: Final = KekCheck(
    aad=b"m2msec/meta/kek-check", value=b"m2msec key-encryption key check, version 1"
)

_SELECT: Final = "SELECT entity_id, kpsa, expires_at FROM psk WHERE kpsa_id = ?"
_INSERT: Final = "INSERT INTO psk (kpsa_id, entity_id, kpsa, expires_at) VALUES (?, ?, ?, ?)"
_UPSERT: Final = (
    "INSERT OR REPLACE INTO psk (kpsa_id, entity_id, kpsa, expires_at) VALUES (?, ?, ?, ?)"
)
_CHUNK: Final = 10_000
_LIST_PAGE: Final = 1_000
# After an import this large, fold the WAL back into the database and truncate it, so the
# WAL does not stay as big as the import on disk.
_CHECKPOINT_AFTER: Final = 50_000

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)

_Row = tuple[str, str | None, bytes, int | None]


def to_epoch(value: datetime | None) -> int | None:
    """Whole seconds since the epoch (floor); a naive datetime is taken as UTC (oneM2M time)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _SECOND


def from_epoch(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(seconds=value)


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


class SqlitePskStore:
    """A :class:`~m2msec.store.base.PskStore` in one SQLite file, Kpsa sealed at rest.

    ``path`` is created (0600, its directory 0700) if missing. ``kek`` overrides the
    key-encryption key from ``$M2MSEC_KEK`` or the ``kek`` file beside the database.
    See the module documentation for caching (``cache_size``, ``cache_ttl``) and
    concurrency. ``busy_timeout`` is how long a writer waits for another process's write.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
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
        self._path = Path(path).expanduser()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._cache: OrderedDict[str, PskEntry] = OrderedDict()
        self._cache_checked_at = -float("inf")
        self._data_version = -1
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()
        self._closed = False

        _create_private_file(self._path)
        try:
            self._wconn = self._connect(busy_timeout)
            try:
                self._rconn = self._connect(busy_timeout)
            except BaseException:
                self._wconn.close()
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self._path}: {exc}") from None
        try:
            self._sealer = self._open_schema(kek)
            self._rcur = self._rconn.cursor()
        except BaseException:
            self._rconn.close()
            self._wconn.close()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread=False: the
        # locks below serialise use of each connection across threads.
        conn = sqlite3.connect(
            os.fspath(self._path),
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _open_schema(self, kek: bytes | None) -> Sealer:
        try:
            return open_sealed_schema(
                self._wconn,
                label=f"store {self._path}",
                kek=kek,
                kek_path=self._path.parent / KEK_FILE_NAME,
                migrations=_MIGRATIONS,
                version=SCHEMA_VERSION,
                check=_KEK_CHECK,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self._path}: {exc}") from None

    # -- PskStore --------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def cache_ttl(self) -> float:
        """Seconds a cached row may be served before the file is re-checked."""
        return self._cache_ttl

    def get(self, kpsa_id: str) -> PskEntry | None:
        """The row for ``kpsa_id`` (octet-exact), possibly from the cache; expired rows too."""
        with self._rlock:
            try:
                if self._cache_size:
                    self._revalidate_cache()
                    entry = self._cache.get(kpsa_id)
                    if entry is not None:
                        self._cache.move_to_end(kpsa_id)
                        return entry
                row = self._rcur.execute(_SELECT, (kpsa_id,)).fetchone()
            except UnicodeEncodeError:
                return None  # not valid UTF-8 text: cannot be a stored KpsaId
            except sqlite3.Error as exc:
                raise self._error("read", exc) from None
            if row is None:
                return None
            entity_id, sealed, expires_at = row
            kpsa = self._sealer.unseal(
                sealed, row_aad(kpsa_id, entity_id, expires_at), what=f"the Kpsa of {kpsa_id!r}"
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
                self._wconn.execute(_UPSERT if replace else _INSERT, row)
            except sqlite3.IntegrityError:
                raise DuplicateCredentialError(f"KpsaId {entry.kpsa_id!r} already exists") from None
            except sqlite3.Error as exc:
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
        sql = _UPSERT if replace else _INSERT
        rows = map(self._prepare, entries)
        done = 0
        with self._wlock:
            conn = self._wconn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    while chunk := builtins.list(islice(rows, _CHUNK)):
                        before = conn.total_changes
                        try:
                            conn.executemany(sql, chunk)
                        except sqlite3.IntegrityError:
                            # executemany stopped at the first conflicting row; the rows before
                            # it were inserted, which tells which one it was.
                            failed = conn.total_changes - before
                            kid = chunk[failed][0] if failed < len(chunk) else "?"
                            raise DuplicateCredentialError(
                                f"KpsaId {kid!r} already exists (nothing was imported)"
                            ) from None
                        done += len(chunk)
                        if progress is not None:
                            progress(done)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                if done >= _CHECKPOINT_AFTER:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                raise self._error("write", exc) from None
        self._invalidate_all()
        return done

    def remove(self, kpsa_id: str) -> bool:
        with self._wlock:
            try:
                cursor = self._wconn.execute("DELETE FROM psk WHERE kpsa_id = ?", (kpsa_id,))
            except UnicodeEncodeError:
                return False
            except sqlite3.Error as exc:
                raise self._error("write", exc) from None
            removed = cursor.rowcount > 0
        self._invalidate(kpsa_id)
        return removed

    def list(self) -> Iterator[PskInfo]:
        """All rows ordered by KpsaId, without keys (nothing is unsealed).

        Read page by page, so no lock or read transaction is held while the caller iterates.
        """
        last: str | None = None
        while True:
            with self._rlock:
                try:
                    if last is None:
                        cursor = self._rconn.execute(
                            "SELECT kpsa_id, entity_id, length(kpsa), expires_at FROM psk "
                            "ORDER BY kpsa_id LIMIT ?",
                            (_LIST_PAGE,),
                        )
                    else:
                        cursor = self._rconn.execute(
                            "SELECT kpsa_id, entity_id, length(kpsa), expires_at FROM psk "
                            "WHERE kpsa_id > ? ORDER BY kpsa_id LIMIT ?",
                            (last, _LIST_PAGE),
                        )
                    page = cursor.fetchall()
                except sqlite3.Error as exc:
                    raise self._error("read", exc) from None
            for kpsa_id, entity_id, sealed_length, expires_at in page:
                yield PskInfo(
                    kpsa_id,
                    entity_id,
                    from_epoch(expires_at),
                    sealed_plaintext_length(sealed_length),
                )
            if len(page) < _LIST_PAGE:
                return
            last = page[-1][0]

    def count(self) -> int:
        with self._rlock:
            try:
                return int(self._rconn.execute("SELECT count(*) FROM psk").fetchone()[0])
            except sqlite3.Error as exc:
                raise self._error("read", exc) from None

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete rows whose expiry is at or before ``now``; return how many."""
        cutoff = to_epoch(now or datetime.now(UTC))
        with self._wlock:
            try:
                cursor = self._wconn.execute(
                    "DELETE FROM psk WHERE expires_at IS NOT NULL AND expires_at <= ?", (cutoff,)
                )
            except sqlite3.Error as exc:
                raise self._error("write", exc) from None
            purged = cursor.rowcount
        if purged:
            self._invalidate_all()
        return purged

    def close(self) -> None:
        with self._wlock, self._rlock:
            if self._closed:
                return
            self._closed = True
            self._cache.clear()
            # Finalise our statement first: otherwise close is deferred until garbage collection
            # and the last close cannot fold the WAL into the database.
            self._rcur.close()
            self._rconn.close()
            self._wconn.close()

    def __enter__(self) -> SqlitePskStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqlitePskStore({os.fspath(self._path)!r})"

    # -- internals -------------------------------------------------------------------------

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

    def _revalidate_cache(self) -> None:
        # Caller holds _rlock. data_version changes when another connection commits.
        now = time.monotonic()
        if now - self._cache_checked_at < self._cache_ttl:
            return
        version = self._rconn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._cache.clear()
            self._data_version = version
        self._cache_checked_at = now

    def _invalidate(self, kpsa_id: str) -> None:
        with self._rlock:
            self._cache.pop(kpsa_id, None)

    def _invalidate_all(self) -> None:
        with self._rlock:
            self._cache.clear()

    def _error(self, action: str, exc: sqlite3.Error) -> StoreError:
        # SQLite's messages never contain bound parameter values, so no key material.
        if self._closed:
            return StoreError(f"store {self._path} is closed")
        return StoreError(f"cannot {action} store {self._path}: {exc}")


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 (its directory 0700) before SQLite opens it.

    Creating it ourselves with an explicit mode avoids changing the process-wide umask,
    which would race with other threads; SQLite gives the -wal and -shm files the mode of
    the database file.
    """
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
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
    else:
        os.close(fd)
