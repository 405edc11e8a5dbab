"""The store of the HSS simulator's subscribers and the BSF's bootstrapping sessions (TS
33.220 4.2.1, 4.2.3, 4.5.2), SQLite or PostgreSQL.

Two tables in one SQLite file (default ``<data dir>/bsf.db``, created 0600 in a 0700
directory) or in the ``m2msec_bsf`` schema of a PostgreSQL database
(``postgresql://...``, :mod:`m2msec.store.db`), shared by several BSF processes::

    subscriber(impi TEXT PRIMARY KEY, k BLOB, opc BLOB, sqn INTEGER, amf BLOB,
               guss TEXT, uicc INTEGER, created_at INTEGER)
    bootstrap(btid TEXT PRIMARY KEY, impi TEXT, rand BLOB, ks BLOB, created_at INTEGER,
              expires_at INTEGER, gba_type TEXT)

The records (:class:`~m2msec.gba.records.Subscriber`, its
:class:`~m2msec.gba.records.Guss`, :class:`~m2msec.gba.records.BootstrapSession`) are
:mod:`m2msec.gba.records`'s. Here K and OPc are sealed with :mod:`m2msec.store.seal` under
the key-encryption key, with the IMPI and the column name as associated data; a session's
Ks with associated data binding B-TID, IMPI, RAND, expiry and type.

SQLite writes use WAL with ``synchronous=NORMAL``: a power cut may lose the last SQN step
or the last session (the device then resynchronises or bootstraps again), but never leaves
the file inconsistent. One connection behind a lock serves the BSF's event loop; the CLI
may use the same store at once from another process (``busy_timeout`` for SQLite). There
is no cache: every read sees what other processes committed. SQN steps lock the
subscriber's row (``FOR UPDATE`` in PostgreSQL, the write lock in SQLite).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from m2msec.crypto.milenage import AMF_LENGTH, KEY_LENGTH
from m2msec.errors import (
    ConfigurationError,
    DuplicateCredentialError,
    StoreError,
    UnknownCredentialError,
)
from m2msec.gba.aka import DEFAULT_AMF, SQN_MAX, SubscriberKeys, next_sqn
from m2msec.gba.records import BootstrapSession, Guss, Subscriber, check_impi
from m2msec.paths import state_path
from m2msec.store.db import (
    Closing,
    Connection,
    Database,
    SqliteDatabase,
    is_text,
    open_database,
)
from m2msec.store.schema import KekCheck, SealedSchema, open_sealed_store

__all__ = ["BSF_STORE_NAME", "SubscriberStore", "default_bsf_store_path"]

BSF_STORE_NAME: Final = "bsf.db"
SCHEMA_VERSION: Final = 1

#: The PostgreSQL schema holding the BSF's tables.
PG_SCHEMA: Final = "m2msec_bsf"


def migrations(db: Database) -> dict[int, tuple[str, ...]]:
    """Each schema version's statements in ``db``'s dialect (:mod:`m2msec.store.db`)."""
    t, b, w = db.key_text, db.blob, db.table_suffix
    return {
        1: (
            f"""CREATE TABLE subscriber (
                   impi       {t} PRIMARY KEY,
                   k          {b} NOT NULL,
                   opc        {b} NOT NULL,
                   sqn        BIGINT NOT NULL,
                   amf        {b} NOT NULL,
                   guss       TEXT NOT NULL,
                   uicc       INTEGER NOT NULL,
                   created_at BIGINT NOT NULL
               ){w}""",
            f"""CREATE TABLE bootstrap (
                   btid       {t} PRIMARY KEY,
                   impi       {t} NOT NULL,
                   rand       {b} NOT NULL,
                   ks         {b} NOT NULL,
                   created_at BIGINT NOT NULL,
                   expires_at BIGINT NOT NULL,
                   gba_type   TEXT NOT NULL
               ){w}""",
            "CREATE INDEX bootstrap_expiry ON bootstrap (expires_at)",
            "CREATE INDEX bootstrap_impi ON bootstrap (impi)",
            f"CREATE TABLE meta (name {t} PRIMARY KEY, value {b} NOT NULL){w}",
        ),
    }


_SCHEMA: Final = SealedSchema(
    migrations,
    SCHEMA_VERSION,
    KekCheck(
        aad=b"m2msec/bsf/meta/kek-check", value=b"m2msec BSF key-encryption key check, version 1"
    ),
)


def default_bsf_store_path(*, create: bool = False) -> Path:
    """``<data dir>/bsf.db``; with ``create``, make the data directory (0700) first."""
    return state_path(BSF_STORE_NAME, create=create)


def _epoch(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def _from_epoch(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


_T = TypeVar("_T")


def _one(cursor: Any) -> Any:
    return cursor.fetchone()


def _all(cursor: Any) -> list[Any]:
    return list(cursor.fetchall())


def _count(cursor: Any) -> int:
    return int(cursor.fetchone()[0])


def _rowcount(cursor: Any) -> int:
    return int(cursor.rowcount)


def _lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


# ----------------------------------------------------------------------------- the store


class SubscriberStore(Closing):
    """Subscribers and bootstrapping sessions in SQLite or PostgreSQL (module docstring).

    ``target`` is a file path, a ``sqlite:///`` or ``postgresql://`` URL, a
    :class:`~m2msec.store.db.Database`, or None for ``<data dir>/bsf.db``. ``kek``
    overrides the key-encryption key (else ``$M2MSEC_KEK`` or the ``kek`` file beside the
    SQLite file / in the data directory, created 0600 for a new store).
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Database | None = None,
        *,
        kek: bytes | None = None,
        busy_timeout: float = 5.0,
    ) -> None:
        db = open_database(
            default_bsf_store_path(create=True) if target is None else target,
            pg_schema=PG_SCHEMA,
            busy_timeout=busy_timeout,
            synchronous="NORMAL",
        )
        self._db = db
        self._path = db.label
        self._lock = threading.Lock()
        p = db.p
        self._p = p
        (self._c,), self._sealer = open_sealed_store(
            db, _SCHEMA, label=f"BSF store {self._path}", connections=1, kek=kek
        )

    @property
    def _conn(self) -> Connection:
        # Caller holds _lock. A broken PostgreSQL connection is replaced at its next use.
        self._c = self._db.reconnected(self._c)
        return self._c

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def database(self) -> Database:
        return self._db

    @property
    def label(self) -> str:
        """The file, or the PostgreSQL URL (without password) and schema, for messages."""
        return self._db.label

    @property
    def path(self) -> Path:
        """The SQLite file (a PostgreSQL store has none)."""
        if not isinstance(self._db, SqliteDatabase):
            raise StoreError(f"BSF store {self._path} is not a file")
        return self._db.path

    def close(self) -> None:
        with self._lock:
            self._c.close()

    def __repr__(self) -> str:
        return f"SubscriberStore({self._path!r})"

    def _error(self, action: str, exc: Exception) -> StoreError:
        return StoreError(f"cannot {action} BSF store {self._path}: {self._db.message(exc)}")

    def _run(
        self,
        sql: str,
        params: tuple[Any, ...] = (),
        *,
        fetch: Callable[[Any], _T],
        action: str = "read",
        duplicate: str | None = None,
    ) -> _T:
        """One statement under the lock, ``fetch`` reading its cursor there; a driver error
        becomes a StoreError naming ``action``, a broken constraint DuplicateCredentialError
        (``duplicate``) when given."""
        with self._lock:
            try:
                return fetch(self._conn.execute(sql, params))
            except self._db.errors as exc:
                if duplicate is not None and isinstance(exc, self._db.integrity_errors):
                    raise DuplicateCredentialError(duplicate) from None
                raise self._error(action, exc) from None

    def _by_key(self, select: str, key: str) -> Any:
        """The row of ``select`` (ending in its key column) for ``key``, or None; a key that
        is not UTF-8 text cannot be stored, so it is not looked up."""
        if not is_text(key):
            return None
        return self._run(f"{select} = {self._p}", (key,), fetch=_one)

    def _write(self, sql: str, params: tuple[Any, ...], duplicate: str | None = None) -> int:
        """Run one write; how many rows it touched."""
        return self._run(sql, params, fetch=_rowcount, action="write", duplicate=duplicate)

    # -- subscribers -----------------------------------------------------------------------
    @staticmethod
    def _secret_aad(impi: str, column: str) -> bytes:
        return b"m2msec/bsf/subscriber" + _lp(impi.encode("utf-8"), column.encode())

    def add_subscriber(
        self,
        impi: str,
        *,
        k: bytes,
        opc: bytes,
        sqn: int = 0,
        amf: bytes = DEFAULT_AMF,
        guss: Guss | None = None,
        uicc: bool = False,
        replace: bool = False,
        now: datetime | None = None,
    ) -> Subscriber:
        """Add (or with ``replace``, overwrite) a subscriber; returns it.

        Raises :class:`DuplicateCredentialError` when the IMPI exists and not ``replace``.
        """
        check_impi(impi)
        if len(k) != KEY_LENGTH or len(opc) != KEY_LENGTH:
            raise ConfigurationError("K and OPc must be 16 octets (128 bits) each")
        if len(amf) != AMF_LENGTH:
            raise ConfigurationError("AMF must be 2 octets")
        if not 0 <= sqn <= SQN_MAX:
            raise ConfigurationError("SQN must be a 48-bit value")
        guss = guss or Guss()
        created = now or datetime.now(UTC)
        row = (
            impi,
            self._sealer.seal(bytes(k), self._secret_aad(impi, "k")),
            self._sealer.seal(bytes(opc), self._secret_aad(impi, "opc")),
            sqn,
            bytes(amf),
            guss.to_json(),
            int(uicc),
            _epoch(created),
        )
        p = self._p
        sql = (
            "INSERT INTO subscriber (impi, k, opc, sqn, amf, guss, uicc, created_at)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
        )
        if replace:
            sql += (
                " ON CONFLICT (impi) DO UPDATE SET k = excluded.k, opc = excluded.opc,"
                " sqn = excluded.sqn, amf = excluded.amf, guss = excluded.guss,"
                " uicc = excluded.uicc, created_at = excluded.created_at"
            )
        self._write(sql, row, duplicate=f"subscriber {impi!r} already exists")
        return Subscriber(impi, bytes(k), bytes(opc), sqn, bytes(amf), guss, uicc, created)

    def get_subscriber(self, impi: str) -> Subscriber | None:
        row = self._by_key(
            "SELECT k, opc, sqn, amf, guss, uicc, created_at FROM subscriber WHERE impi", impi
        )
        if row is None:
            return None
        k_sealed, opc_sealed, sqn, amf, guss, uicc, created = row
        k = self._sealer.unseal(bytes(k_sealed), self._secret_aad(impi, "k"), what=f"K of {impi!r}")
        opc = self._sealer.unseal(
            bytes(opc_sealed), self._secret_aad(impi, "opc"), what=f"OPc of {impi!r}"
        )
        return Subscriber(
            impi,
            k,
            opc,
            int(sqn),
            bytes(amf),
            Guss.from_json(guss),
            bool(uicc),
            _from_epoch(created),
        )

    def subscriber_keys(self, impi: str) -> SubscriberKeys:
        sub = self.get_subscriber(impi)
        if sub is None:
            raise UnknownCredentialError(f"no subscriber {impi[:80]!r}")
        return sub.keys()

    def list_subscribers(self) -> list[Subscriber]:
        """Every subscriber, by IMPI (secrets unsealed: for tools, not for logs)."""
        impis = [r[0] for r in self._run("SELECT impi FROM subscriber ORDER BY impi", fetch=_all)]
        out = []
        for impi in impis:
            sub = self.get_subscriber(impi)
            if sub is not None:
                out.append(sub)
        return out

    def count_subscribers(self) -> int:
        return self._run("SELECT count(*) FROM subscriber", fetch=_count)

    def remove_subscriber(self, impi: str) -> bool:
        """Remove a subscriber and its bootstrapping sessions; False when unknown."""
        p = self._p
        with self._lock:
            try:
                with self._db.transaction(self._conn) as conn:
                    cur = conn.execute(f"DELETE FROM subscriber WHERE impi = {p}", (impi,))
                    removed = bool(cur.rowcount > 0)
                    conn.execute(f"DELETE FROM bootstrap WHERE impi = {p}", (impi,))
            except self._db.errors as exc:
                raise self._error("write", exc) from None
        return removed

    def set_guss(self, impi: str, guss: Guss) -> None:
        p = self._p
        if not self._write(
            f"UPDATE subscriber SET guss = {p} WHERE impi = {p}", (guss.to_json(), impi)
        ):
            raise UnknownCredentialError(f"no subscriber {impi[:80]!r}")

    # -- SQN (the HSS's SqnStore) ----------------------------------------------------------
    def advance_sqn(self, impi: str, ind_bits: int) -> int:
        """Move SQN_HE to the next SQN (TS 33.102 C.3.2) in one transaction; return it."""
        p = self._p
        with self._lock:
            try:
                with self._db.transaction(self._conn) as conn:
                    row = conn.execute(
                        f"SELECT sqn FROM subscriber WHERE impi = {p}{self._db.for_update}",
                        (impi,),
                    ).fetchone()
                    if row is None:
                        raise UnknownCredentialError(f"no subscriber {impi[:80]!r}")
                    new = next_sqn(int(row[0]), ind_bits)
                    conn.execute(f"UPDATE subscriber SET sqn = {p} WHERE impi = {p}", (new, impi))
            except self._db.errors as exc:
                raise self._error("write", exc) from None
        return new

    def reset_sqn(self, impi: str, sqn_ms: int) -> None:
        """SQN_HE := SQN_MS (resynchronisation, TS 33.102 6.3.5)."""
        if not 0 <= sqn_ms <= SQN_MAX:
            raise ValueError("SQN is a 48-bit value")
        p = self._p
        if not self._write(f"UPDATE subscriber SET sqn = {p} WHERE impi = {p}", (sqn_ms, impi)):
            raise UnknownCredentialError(f"no subscriber {impi[:80]!r}")

    # -- bootstrapping sessions ------------------------------------------------------------
    @staticmethod
    def _session_aad(btid: str, impi: str, rand: bytes, expires_at: int, gba_type: str) -> bytes:
        return b"m2msec/bsf/bootstrap" + _lp(
            btid.encode("utf-8"),
            impi.encode("utf-8"),
            bytes(rand),
            expires_at.to_bytes(8, "big", signed=True),
            gba_type.encode("ascii"),
        )

    def put_session(self, session: BootstrapSession) -> None:
        """Store a new bootstrapping session; :class:`DuplicateCredentialError` if its B-TID
        is taken (a repeated RAND)."""
        expires = _epoch(session.expires_at)
        aad = self._session_aad(session.btid, session.impi, session.rand, expires, session.gba_type)
        row = (
            session.btid,
            session.impi,
            bytes(session.rand),
            self._sealer.seal(bytes(session.ks), aad),
            _epoch(session.created_at),
            expires,
            session.gba_type,
        )
        p = self._p
        self._write(
            "INSERT INTO bootstrap (btid, impi, rand, ks, created_at, expires_at,"
            f" gba_type) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
            row,
            duplicate=f"B-TID {session.btid!r} already exists",
        )

    def get_session(self, btid: str) -> BootstrapSession | None:
        """The session of ``btid`` (expired ones too: the caller decides), or None."""
        row = self._by_key(
            "SELECT impi, rand, ks, created_at, expires_at, gba_type FROM bootstrap WHERE btid",
            btid,
        )
        if row is None:
            return None
        impi, rand, sealed, created, expires, gba_type = row
        if gba_type not in ("GBA_ME", "GBA_U"):
            raise StoreError(f"bootstrapping session {btid!r} has an unknown type")
        ks = self._sealer.unseal(
            bytes(sealed),
            self._session_aad(btid, impi, bytes(rand), int(expires), gba_type),
            what=f"Ks of B-TID {btid!r}",
        )
        return BootstrapSession(
            btid, impi, bytes(rand), ks, _from_epoch(created), _from_epoch(expires), gba_type
        )

    def remove_session(self, btid: str) -> bool:
        return self._write(f"DELETE FROM bootstrap WHERE btid = {self._p}", (btid,)) > 0

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete sessions past their lifetime; return how many."""
        cutoff = _epoch(now or datetime.now(UTC))
        return self._write(f"DELETE FROM bootstrap WHERE expires_at <= {self._p}", (cutoff,))

    def count_sessions(self) -> int:
        return self._run("SELECT count(*) FROM bootstrap", fetch=_count)
