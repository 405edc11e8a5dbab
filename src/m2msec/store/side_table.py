"""A table kept beside the psk-lookup-table, in the same database (SQLite or PostgreSQL).

The identity registry (:mod:`m2msec.store.registry`) and the stored serviceSubscribedAppRules
(:mod:`m2msec.store.app_rules`) each hold one table of the psk store's database. The psk
store owns the schema (its migrations create both tables), so a side table only opens its
connection, checks that its table exists, replaces a broken PostgreSQL connection at its
next use, and words its errors.
"""

from __future__ import annotations

import os
import threading

from m2msec.errors import StoreError
from m2msec.store.db import Closing, Connection, Database, open_database
from m2msec.store.psk import PG_SCHEMA

__all__ = ["SideTable"]


class SideTable(Closing):
    """One connection to ``table`` of a psk store's database, serialised by ``_lock``.

    ``target`` is the psk store's :attr:`~m2msec.store.psk.SealedPskStore.database` (or its
    path or URL); the psk store must have opened it first. ``what`` names the table in
    errors ("the identity registry").
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Database,
        *,
        table: str,
        what: str,
        busy_timeout: float = 5.0,
    ) -> None:
        db = open_database(target, pg_schema=PG_SCHEMA, busy_timeout=busy_timeout)
        self._db = db
        self._path = db.label
        self._what = what
        self._lock = threading.Lock()
        try:
            self._c = db.connect()
            self._c.execute(f"SELECT 1 FROM {table} LIMIT 0")
        except db.errors as exc:
            raise StoreError(f"cannot open {what} in {self._path}: {db.message(exc)}") from None

    @property
    def _conn(self) -> Connection:
        # Caller holds _lock. A broken PostgreSQL connection is replaced at its next use.
        self._c = self._db.reconnected(self._c)
        return self._c

    def close(self) -> None:
        with self._lock:
            self._c.close()

    def _fail(self, action: str, exc: Exception) -> StoreError:
        return StoreError(
            f"cannot {action} {self._what} in {self._path}: {self._db.message(exc)}"
        )
