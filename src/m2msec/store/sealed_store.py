"""The frame of a sealed store on two connections: the psk-lookup-table (TS-0003 8.2.2.1)
and the MAF store (8.8).

Each has a write connection and a read connection, each behind its own lock, so that a long
write transaction in one thread does not hold up lookups (the PSK callback, Key Retrieval)
in another. Both are opened by :func:`m2msec.store.schema.open_sealed_store`, replaced at
their next use when broken (a PostgreSQL server that went away; the operation that met the
failure gets a StoreError), and closed together. The BSF store has a single connection and
opens directly with :func:`~m2msec.store.schema.open_sealed_store`. :class:`SealedTables`
adds the plain read / write / transaction steps of a store without caches (the MEF's, the
Enrolee's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from m2msec.errors import DuplicateCredentialError, StoreError
from m2msec.store.db import Closing, Connection, Database
from m2msec.store.schema import SealedSchema, open_sealed_store

__all__ = ["SealedStore", "SealedTables"]

_T = TypeVar("_T")


class SealedStore(Closing):
    """A store's database (``_db``), Sealer (``_sealer``) and its two connections.

    ``_writer()`` is used under ``_wlock``, ``_reader()`` under ``_rlock``. ``kind`` names
    the store in errors ("store", "MAF store"). Subclasses drop their caches in
    :meth:`_clear_caches`, which :meth:`close` calls.
    """

    def __init__(
        self,
        db: Database,
        schema: SealedSchema,
        *,
        kind: str,
        kek: bytes | None,
        inspect: Callable[[Connection], None] | None = None,
    ) -> None:
        self._db = db
        self._kind = kind
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()
        self._closed = False
        (self._wconn, self._rconn), self._sealer = open_sealed_store(
            db, schema, label=f"{kind} {db.label}", connections=2, kek=kek, inspect=inspect
        )

    @property
    def database(self) -> Database:
        """Where the tables live, and their dialect."""
        return self._db

    def close(self) -> None:
        with self._wlock, self._rlock:
            if self._closed:
                return
            self._closed = True
            self._clear_caches()
            self._rconn.close()
            self._wconn.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db.label!r})"

    def _clear_caches(self) -> None:
        """Drop whatever the store caches; the caller holds ``_rlock``."""

    def _reader(self) -> Connection:
        # Caller holds _rlock. A broken PostgreSQL connection is replaced at its next use.
        if not self._closed:
            self._rconn = self._db.reconnected(self._rconn)
        return self._rconn

    def _writer(self) -> Connection:
        # Caller holds _wlock.
        if not self._closed:
            self._wconn = self._db.reconnected(self._wconn)
        return self._wconn

    def _error(self, action: str, exc: Exception) -> StoreError:
        # Neither SQLite's messages nor PostgreSQL's primary message hold parameter values.
        if self._closed:
            return StoreError(f"{self._kind} {self._db.label} is closed")
        return StoreError(
            f"cannot {action} {self._kind} {self._db.label}: {self._db.message(exc)}"
        )


class SealedTables(SealedStore):
    """A :class:`SealedStore` whose every read goes to the database (no cache): one
    statement read (:meth:`_read`), written (:meth:`_write`) or a transaction of several
    (:meth:`_transaction`), each turning the database's errors into StoreError."""

    def _read(self, sql: str, args: tuple[Any, ...], fetch: Callable[[Any], _T]) -> _T:
        with self._rlock:
            try:
                return fetch(self._reader().execute(sql, args))
            except self._db.errors as exc:
                raise self._error("read", exc) from None

    def _write(self, sql: str, args: tuple[Any, ...], duplicate: str | None = None) -> int:
        return self._transaction(lambda conn: int(conn.execute(sql, args).rowcount), duplicate)

    def _transaction(self, run: Callable[[Connection], _T], duplicate: str | None = None) -> _T:
        """``run`` inside BEGIN ... COMMIT on the write connection; rolled back on error.
        A broken constraint becomes DuplicateCredentialError(``duplicate``) when given."""
        db = self._db
        with self._wlock:
            try:
                with db.transaction(self._writer()) as conn:
                    out = run(conn)
            except db.integrity_errors as exc:
                if duplicate is None:
                    raise self._error("write", exc) from None
                raise DuplicateCredentialError(duplicate) from None
            except db.errors as exc:
                raise self._error("write", exc) from None
        return out
