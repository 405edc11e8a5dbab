"""The MAF's store (TS-0003 8.8): Master Credentials, Entity Bs, registrations, keys.

One SQLite file (WAL, ``synchronous=FULL``, created 0600), or a PostgreSQL database shared
by several MAF instances (:mod:`m2msec.maf.store_pg`, a subclass running this same code;
``open_maf_store("postgresql://...")``), with these tables:

``clients``
    the MAF Clients' Master Credentials (8.8.3.1, pre-provisioned): KmId (canonical form:
    lower case, TS-0003 10.6 / docs/readings.md A-05), KmId as given, Km (sealed), the optional
    CSE-ID or AE-ID of Entity A (8.2.2.3: passed to Entity B when configured), an enabled
    flag and the MAF Client Configuration (``mafClientCfg``, 8.8.2.4) set by the admin.
``entity_b``
    the Entity B identities (IN identities, 8.2.2.3 "Association Configuration") the MAF
    may hand keys to, as given (CSE-IDs or AE-IDs in any form).
``registrations``
    MAF Client Registration records (8.8.2.3): mafClientRegID, KmId, expirationTime,
    labels, adminFQDN.
``audit``
    the audit log (:mod:`m2msec.maf.audit`): one JSON record per event, appended in the
    transaction of the change it records, so a key is never committed without its
    "key-issued" record nor the other way round.
``keys``
    Key Registrations (8.8.2.7): RelativeKeyID (lower-case hex, primary key), the key value
    Kc (sealed), expirationTime, source KmId, SUID, targetIDs (JSON), labels, adminFQDN,
    the client registration it was made under, and a de-registered flag. A de-registered
    key keeps its row (so its RelativeKeyID is never handed out again and Key Retrieval
    can say in the audit log why it refused) but loses its key value.

Secrets are sealed with :mod:`m2msec.store.seal` under the same key-encryption key
handling as the psk-lookup-table (``$M2MSEC_KEK`` or the ``kek`` file beside the
database). Associated data binds Km to its KmId and entity id, and Kc to its RelativeKeyID,
source KmId, SUID, targetIDs and expiry: a row edited in the database (say, a target or
a lifetime changed) no longer unseals, so write access to the file without the KEK cannot
redirect or extend a key.

Writes happen in transactions opened with :meth:`MafStore.writer` (one ``BEGIN
IMMEDIATE`` ... ``COMMIT``); the server groups concurrent Key Registrations into one
transaction and answers none of them before it has committed (crash safety). Reads use a
second connection; the small ``clients`` and ``entity_b`` tables are cached, and the cache
is dropped when the ``config-version`` counter in ``meta`` (bumped in the same transaction
as every change to those tables, by any process) has moved; it is polled at most every
``cache_ttl`` seconds, so ``m2msec maf remove-client`` in another process takes effect
within that time. Keys are never cached: a de-registration is seen at once.

Durability: ``synchronous="full"`` (the default) fsyncs the WAL at every commit, so a
committed key survives a power cut; ``"normal"`` fsyncs only at checkpoints: a committed
key still survives the MAF process being killed (SIGKILL), but the last commits may be lost
with the machine. For the MAF that loss is recoverable (Entity A's handshake with Entity B
fails and it runs a fresh MAF Handshake, 8.2.2.3), which is why a deployment may trade it
for throughput.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final
from urllib.parse import unquote, urlsplit

from m2msec.errors import (
    ConfigurationError,
    DuplicateCredentialError,
    IdentifierError,
    StoreError,
    UnknownCredentialError,
)
from m2msec.ids import parse_entity_id
from m2msec.keyids import KmId
from m2msec.paths import data_dir, ensure_private_dir
from m2msec.store.db import create_private_file as _create_private_file
from m2msec.store.db import from_epoch, to_epoch
from m2msec.store.schema import KekCheck, open_sealed_schema
from m2msec.store.seal import KEK_FILE_NAME, Sealer, sealed_plaintext_length

__all__ = [
    "DEFAULT_MAF_STORE_NAME",
    "MAX_KEY_OCTETS",
    "MIN_KEY_OCTETS",
    "SCHEMA_VERSION",
    "ClientRegistration",
    "MafClientInfo",
    "MafKey",
    "MafStore",
    "MafWriter",
    "MasterCredential",
    "NewKey",
    "default_maf_store_path",
    "kc_aad",
    "km_aad",
    "open_maf_store",
    "parse_km_id",
    "parse_relative_key_id",
    "redact_url",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 3
#: Entity B kinds (TS-0003 8.2.2.3, seed 001): in this release Entity B is an IN-CSE.
ENTITY_B_KINDS: Final = ("in-cse", "mn-cse", "asn-cse", "ae")
DEFAULT_MAF_STORE_NAME: Final = "maf.db"
#: Key values (Km, Kc) we accept: OpenSSL's PSK limit above, 128 bits below.
MIN_KEY_OCTETS: Final = 16
MAX_KEY_OCTETS: Final = 64
MAX_ENTITY_ID_OCTETS: Final = 1024
#: RelativeKeyIDs are hexBinary; ours are 16 octets, foreign ones at most 64.
_REL_ID = re.compile(r"(?:[0-9A-Fa-f]{2}){1,64}")

_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        """CREATE TABLE clients (
               km_id      TEXT PRIMARY KEY,
               km_id_text TEXT NOT NULL,
               km         BLOB NOT NULL,
               entity_id  TEXT,
               created    INTEGER NOT NULL,
               enabled    INTEGER NOT NULL DEFAULT 1,
               config     TEXT
           ) WITHOUT ROWID""",
        "CREATE TABLE entity_b (entity_id TEXT PRIMARY KEY, created INTEGER NOT NULL) "
        "WITHOUT ROWID",
        """CREATE TABLE registrations (
               reg_id     TEXT PRIMARY KEY,
               km_id      TEXT NOT NULL,
               expires_at INTEGER NOT NULL,
               labels     TEXT,
               admin_fqdn TEXT NOT NULL,
               created    INTEGER NOT NULL
           ) WITHOUT ROWID""",
        "CREATE INDEX registrations_km ON registrations (km_id)",
        """CREATE TABLE keys (
               rel_id       TEXT PRIMARY KEY,
               kc           BLOB,
               expires_at   INTEGER NOT NULL,
               km_id        TEXT NOT NULL,
               suid         INTEGER NOT NULL,
               target_ids   TEXT NOT NULL,
               labels       TEXT,
               admin_fqdn   TEXT NOT NULL,
               reg_id       TEXT,
               created      INTEGER NOT NULL,
               deregistered INTEGER NOT NULL DEFAULT 0
           ) WITHOUT ROWID""",
        # No secondary index on keys: every index is one more page written per Key
        # Registration; the scans by KmId, registration or expiry are rare admin work.
        # The audit log (m2msec.maf.audit): JSON records, written in the transaction of the
        # change they describe.
        "CREATE TABLE audit (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, record TEXT NOT NULL)",
        # Bumped by every change to clients or entity_b, by any process: read caches check it.
        "INSERT INTO meta (name, value) VALUES ('config-version', 0)",
    ),
    # Version 2: the kind of each Entity B; rows of version 1 were allowed as IN-CSEs.
    2: ("ALTER TABLE entity_b ADD COLUMN kind TEXT NOT NULL DEFAULT 'in-cse'",),
    # Version 3: the microseconds of each expiry (issue 9 item 7: the MAF grants and keeps
    # the expirationTime to the microsecond, TS-0004 6.3.3); rows of version 2 have none.
    3: (
        "ALTER TABLE keys ADD COLUMN expires_us INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE registrations ADD COLUMN expires_us INTEGER NOT NULL DEFAULT 0",
    ),
}

_KEK_CHECK_NAME: Final = "kek-check"
_KEK_CHECK_AAD: Final = b"m2msec/maf/meta/kek-check"
_KEK_CHECK_VALUE: Final = b"m2msec MAF key-encryption key check, version 1"
_KEK_CHECK: Final = KekCheck(_KEK_CHECK_AAD, _KEK_CHECK_VALUE, _KEK_CHECK_NAME)

_KEY_COLUMNS: Final = (
    "rel_id, kc, expires_at, km_id, suid, target_ids, labels, admin_fqdn, reg_id, created, "
    "deregistered, expires_us"
)
_SELECT_KEY: Final = f"SELECT {_KEY_COLUMNS} FROM keys WHERE rel_id = ?"  # noqa: S608
# "ON CONFLICT ... DO NOTHING" (SQLite and PostgreSQL alike) rather than catching the
# integrity error: in PostgreSQL an error would abort the whole group transaction, and a
# concurrent insert of the same RelativeKeyID by another MAF instance waits for that one to
# commit, then writes nothing (rowcount 0): the loser sees a duplicate, never an error.
_INSERT_KEY: Final = (
    f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) "  # noqa: S608
    "ON CONFLICT (rel_id) DO NOTHING"
)
_INSERT_CLIENT: Final = (
    "INSERT INTO clients (km_id, km_id_text, km, entity_id, created, enabled) "
    "VALUES (?, ?, ?, ?, ?, 1) "
)
# A replaced client keeps its MAF Client Configuration.
_REPLACE_CLIENT: Final = _INSERT_CLIENT + (
    "ON CONFLICT (km_id) DO UPDATE SET km_id_text = excluded.km_id_text, km = excluded.km, "
    "entity_id = excluded.entity_id, created = excluded.created, enabled = 1"
)
_ADD_CLIENT: Final = _INSERT_CLIENT + "ON CONFLICT (km_id) DO NOTHING"
_LIST_PAGE: Final = 1_000
_NO_LIMIT: Final = 1 << 62
_UNSET: Any = object()


# ----------------------------------------------------------------------------- values


def parse_km_id(text: str) -> KmId:
    """A KmId (TS-0003 10.6); a GBA B-TID used as KmId (docs/readings.md A-25) is taken verbatim."""
    try:
        return KmId.parse(text)
    except IdentifierError:
        return KmId.parse(text, verbatim=True)


def parse_relative_key_id(value: str | bytes) -> str:
    """A RelativeKeyID as stored: lower-case hex. Raises IdentifierError when malformed."""
    if isinstance(value, bytes | bytearray):
        if not 1 <= len(value) <= 64:
            raise IdentifierError("a RelativeKeyID is 1 to 64 octets")
        return bytes(value).hex()
    if not _REL_ID.fullmatch(value):
        raise IdentifierError(
            f"invalid RelativeKeyID {value[:80]!r}: expected an even number of hex digits "
            "(at most 128)"
        )
    return value.lower()


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def km_aad(km_id: str, entity_id: str | None) -> bytes:
    """Associated data sealing a Km: the canonical KmId and the entity id."""
    tail = b"\x00" if entity_id is None else b"\x01" + _lp(entity_id.encode())
    return b"m2msec/maf/km\x00" + _lp(km_id.encode()) + tail


def kc_aad(
    rel_id: str, km_id: str, suid: int, target_ids: str, expires_at: int, expires_us: int = 0
) -> bytes:
    """Associated data sealing a Kc: everything that decides who may have it, and until when.

    The expiry's microseconds are appended only when non-zero, so rows sealed before schema
    3 (whole seconds) still open; the fixed-width tail keeps the encoding unambiguous.
    """
    tail = expires_us.to_bytes(4, "big") if expires_us else b""
    return b"".join(
        (
            b"m2msec/maf/kc\x00",
            _lp(rel_id.encode()),
            _lp(km_id.encode()),
            suid.to_bytes(2, "big"),
            _lp(target_ids.encode()),
            expires_at.to_bytes(8, "big", signed=True),
            tail,
        )
    )


def _json_list(values: Sequence[str] | None) -> str | None:
    if values is None:
        return None
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)


def _tuple(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    data = json.loads(text)
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise StoreError("a stored list column is not a list of strings")
    return tuple(data)


def _check_key(key: bytes, what: str) -> None:
    if not MIN_KEY_OCTETS <= len(key) <= MAX_KEY_OCTETS:
        raise ConfigurationError(
            f"{what} must be {MIN_KEY_OCTETS} to {MAX_KEY_OCTETS} octets, not {len(key)}"
        )


def _check_entity(entity_id: str, what: str) -> str:
    if len(entity_id.encode("utf-8", "replace")) > MAX_ENTITY_ID_OCTETS:
        raise IdentifierError(f"{what} is longer than {MAX_ENTITY_ID_OCTETS} octets")
    parse_entity_id(entity_id)
    return entity_id


def _now() -> datetime:
    return datetime.now(UTC)


def _epoch(value: datetime) -> int:
    out = to_epoch(value)
    assert out is not None
    return out


def _dt(value: int, micros: int = 0) -> datetime:
    out = from_epoch(value)
    assert out is not None
    return out.replace(microsecond=micros) if micros else out


def _micros(value: datetime) -> int:
    """The sub-second part of an expiry, kept beside its whole seconds (schema 3)."""
    return value.microsecond


@dataclass(frozen=True, slots=True)
class MasterCredential:
    """One MAF Client's Master Credential (8.8.3.1): KmId -> Km; Km never in ``repr``."""

    km_id: str
    canonical: str
    km: bytes = field(repr=False)
    entity_id: str | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class MafClientInfo:
    """A MAF Client as listed to operators: everything but the key."""

    km_id: str
    canonical: str
    entity_id: str | None
    created: datetime
    enabled: bool
    key_octets: int
    has_config: bool


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    """A MAF Client Registration record (8.8.2.3)."""

    reg_id: str
    km_id: str
    expires_at: datetime
    admin_fqdn: str
    labels: tuple[str, ...] | None = None
    created: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return (now or _now()) >= self.expires_at


@dataclass(frozen=True, slots=True)
class NewKey:
    """A Key Registration to store (8.8.2.7); ``relative_id`` is 16 octets for our keys."""

    relative_id: bytes
    kc: bytes = field(repr=False)
    expires_at: datetime
    km_id: str
    suid: int
    target_ids: tuple[str, ...]
    admin_fqdn: str
    labels: tuple[str, ...] | None = None
    reg_id: str | None = None

    @property
    def relative_hex(self) -> str:
        return self.relative_id.hex()


@dataclass(frozen=True, slots=True)
class MafKey:
    """A stored Key Registration. ``kc`` is None when listed (never unsealed) and after
    de-registration (the key value is erased)."""

    relative_id: str
    kc: bytes | None = field(repr=False)
    expires_at: datetime
    km_id: str
    suid: int
    target_ids: tuple[str, ...]
    admin_fqdn: str
    labels: tuple[str, ...] | None
    reg_id: str | None
    created: datetime
    deregistered: bool

    def expired(self, now: datetime | None = None) -> bool:
        return (now or _now()) >= self.expires_at

    def live(self, now: datetime | None = None) -> bool:
        """Neither de-registered nor expired."""
        return not self.deregistered and not self.expired(now)


_KeyRow = tuple[
    str, bytes | None, int, str, int, str, str | None, str, str | None, int, int, int
]


# ----------------------------------------------------------------------------- writer


class MafWriter:
    """The write operations of one open transaction (see :meth:`MafStore.writer`).

    Use :meth:`savepoint` to make one operation all-or-nothing inside a larger batch.
    """

    def __init__(self, store: MafStore, conn: Any) -> None:
        self._store = store
        self._conn = conn
        self._sealer = store._sealer
        self._sp = 0
        self.config_changed = False

    def _bump_config(self) -> None:
        """Record a change to clients, entity_b or registrations (the read caches of every
        process drop)."""
        self._conn.execute(self._store._SQL_BUMP_CONFIG)
        self.config_changed = True

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self._sp += 1
        name = f"op{self._sp}"
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        self._conn.execute(f"RELEASE {name}")

    # -- keys ---------------------------------------------------------------------------
    def insert_key(self, key: NewKey, *, now: datetime | None = None) -> bool:
        """Store a Key Registration; False (nothing written) if its RelativeKeyID is taken."""
        rel = parse_relative_key_id(key.relative_id)
        _check_key(key.kc, "the key value")
        if not 0 < key.suid < 100:
            raise ConfigurationError(f"SUID {key.suid} is out of range")
        targets = _json_list(key.target_ids)
        assert targets is not None
        expires, micros = _epoch(key.expires_at), _micros(key.expires_at)
        sealed = self._sealer.seal(
            key.kc, kc_aad(rel, key.km_id, key.suid, targets, expires, micros)
        )
        row = (
            rel,
            sealed,
            expires,
            key.km_id,
            key.suid,
            targets,
            _json_list(key.labels),
            key.admin_fqdn,
            key.reg_id,
            _epoch(now or _now()),
            micros,
        )
        return bool(self._conn.execute(_INSERT_KEY, row).rowcount > 0)

    def get_key(self, rel_id: str | bytes) -> MafKey | None:
        """Read a key inside this transaction (unsealed)."""
        row = self._conn.execute(
            self._store._SQL_SELECT_KEY_FOR_UPDATE, (parse_relative_key_id(rel_id),)
        ).fetchone()
        return None if row is None else self._store._key(row, unseal=True)

    def update_key(
        self,
        rel_id: str | bytes,
        *,
        expires_at: datetime | None = None,
        labels: tuple[str, ...] | None = _UNSET,
        target_ids: tuple[str, ...] | None = None,
    ) -> MafKey | None:
        """Change a key's metadata (8.8.2.9), re-sealing Kc; None if there is no such key
        or it is de-registered."""
        key = self.get_key(rel_id)
        if key is None or key.deregistered or key.kc is None:
            return None
        new_expires = key.expires_at if expires_at is None else expires_at
        new_targets = key.target_ids if target_ids is None else tuple(target_ids)
        new_labels = key.labels if labels is _UNSET else labels
        targets = _json_list(new_targets)
        assert targets is not None
        expires, micros = _epoch(new_expires), _micros(new_expires)
        sealed = self._sealer.seal(
            key.kc, kc_aad(key.relative_id, key.km_id, key.suid, targets, expires, micros)
        )
        self._conn.execute(
            "UPDATE keys SET kc = ?, expires_at = ?, expires_us = ?, target_ids = ?, labels = ? "
            "WHERE rel_id = ?",
            (sealed, expires, micros, targets, _json_list(new_labels), key.relative_id),
        )
        return self.get_key(key.relative_id)

    def deregister_key(self, rel_id: str | bytes) -> bool:
        """De-register (8.8.2.10): erase Kc, keep the row as a tombstone."""
        cursor = self._conn.execute(
            "UPDATE keys SET kc = NULL, deregistered = 1 WHERE rel_id = ? AND deregistered = 0",
            (parse_relative_key_id(rel_id),),
        )
        return bool(cursor.rowcount > 0)

    def deregister_keys_of(self, *, km_id: str | None = None, reg_id: str | None = None) -> int:
        """De-register every live key of a KmId or of a client registration."""
        if km_id is not None:
            sql, arg = "km_id = ?", km_id
        elif reg_id is not None:
            sql, arg = "reg_id = ?", reg_id
        else:
            raise ValueError("give km_id or reg_id")
        cursor = self._conn.execute(
            f"UPDATE keys SET kc = NULL, deregistered = 1 WHERE {sql} AND deregistered = 0",  # noqa: S608
            (arg,),
        )
        return int(cursor.rowcount)

    # -- client registrations -----------------------------------------------------------
    def insert_registration(self, reg: ClientRegistration, *, now: datetime | None = None) -> None:
        cursor = self._conn.execute(
            "INSERT INTO registrations (reg_id, km_id, expires_at, expires_us, labels, "
            "admin_fqdn, created) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reg_id) DO NOTHING",
            (
                reg.reg_id,
                reg.km_id,
                _epoch(reg.expires_at),
                _micros(reg.expires_at),
                _json_list(reg.labels),
                reg.admin_fqdn,
                _epoch(reg.created or now or _now()),
            ),
        )
        if cursor.rowcount == 0:
            raise DuplicateCredentialError(f"mafClientRegID {reg.reg_id!r} already exists")
        self._bump_config()

    def update_registration(
        self,
        reg_id: str,
        *,
        expires_at: datetime | None = None,
        labels: tuple[str, ...] | None = _UNSET,
    ) -> ClientRegistration | None:
        sets: list[str] = []
        args: list[object] = []
        if expires_at is not None:
            sets.append("expires_at = ?, expires_us = ?")
            args.extend((_epoch(expires_at), _micros(expires_at)))
        if labels is not _UNSET:
            sets.append("labels = ?")
            args.append(_json_list(labels))
        if sets:
            self._conn.execute(
                f"UPDATE registrations SET {', '.join(sets)} WHERE reg_id = ?",  # noqa: S608
                (*args, reg_id),
            )
            self._bump_config()
        return self._store._registration(self._conn, reg_id)

    def delete_registration(self, reg_id: str) -> tuple[bool, int]:
        """Remove a registration and de-register the keys made under it: (found, keys)."""
        cursor = self._conn.execute("DELETE FROM registrations WHERE reg_id = ?", (reg_id,))
        if cursor.rowcount == 0:
            return False, 0
        self._bump_config()
        return True, self.deregister_keys_of(reg_id=reg_id)

    # -- audit --------------------------------------------------------------------------
    def append_audit(
        self, records: Sequence[Mapping[str, Any]], *, now: datetime | None = None
    ) -> None:
        """Append audit records (already free of key material, see m2msec.maf.audit)."""
        if not records:
            return
        stamp = _epoch(now or _now())
        self._conn.executemany(
            "INSERT INTO audit (time, record) VALUES (?, ?)",
            [
                (stamp, json.dumps(dict(r), separators=(",", ":"), ensure_ascii=False))
                for r in records
            ],
        )

    def purge_audit(self, before: datetime) -> int:
        """Delete audit records older than ``before``."""
        cursor = self._conn.execute("DELETE FROM audit WHERE time < ?", (_epoch(before),))
        return int(cursor.rowcount)

    # -- housekeeping -------------------------------------------------------------------
    def purge(self, now: datetime, retention: timedelta) -> tuple[int, int]:
        """Delete keys and registrations that expired more than ``retention`` ago."""
        cutoff = _epoch(now - retention)
        keys = self._conn.execute("DELETE FROM keys WHERE expires_at <= ?", (cutoff,)).rowcount
        regs = self._conn.execute(
            "DELETE FROM registrations WHERE expires_at <= ?", (cutoff,)
        ).rowcount
        if regs:
            self._bump_config()
        return keys, regs


# ----------------------------------------------------------------------------- store


class MafStore:
    """The MAF store in one SQLite file (module documentation). Thread-safe.

    ``path`` is created (0600, its directory 0700) when missing; ``kek`` overrides the
    key-encryption key of ``$M2MSEC_KEK`` or the ``kek`` file beside the database.

    The SQL below is shared with the PostgreSQL store (:mod:`m2msec.maf.store_pg`, a
    subclass): it uses ``?`` parameters and the few statements that differ are the class
    attributes here.
    """

    #: Commits happen in this process without network round trips (SQLite): cheap enough
    #: to run on an event loop's thread when they do not fsync. False for PostgreSQL.
    in_process: ClassVar[bool] = True
    #: The database driver's errors (turned into StoreError).
    _DB_ERRORS: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)
    #: Opens a write transaction: SQLite takes the write lock at once.
    _SQL_BEGIN: ClassVar[str] = "BEGIN IMMEDIATE"
    _SQL_BUMP_CONFIG: ClassVar[str] = (
        "UPDATE meta SET value = value + 1 WHERE name = 'config-version'"
    )
    _SQL_CONFIG_VERSION: ClassVar[str] = "SELECT value FROM meta WHERE name = 'config-version'"
    #: A key read inside a write transaction, to be updated (SQLite's writer is alone).
    _SQL_SELECT_KEY_FOR_UPDATE: ClassVar[str] = _SELECT_KEY
    #: The write and read connections: sqlite3's, or adapters with the same methods.
    _wconn: Any
    _rconn: Any

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        kek: bytes | None = None,
        busy_timeout: float = 10.0,
        cache_ttl: float = 2.0,
        synchronous: str = "full",
    ) -> None:
        self._init_state(cache_ttl, synchronous)
        self._path = Path(path).expanduser()
        _create_private_file(self._path)
        try:
            self._wconn = self._connect(busy_timeout)
            try:
                self._rconn = self._connect(busy_timeout)
            except BaseException:
                self._wconn.close()
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open MAF store {self._path}: {exc}") from None
        try:
            self._sealer = self._open_schema(kek)
        except BaseException:
            self._rconn.close()
            self._wconn.close()
            raise

    def _init_state(self, cache_ttl: float, synchronous: str) -> None:
        """The backend-neutral state: caches and locks."""
        if cache_ttl < 0:
            raise ValueError("cache_ttl must be >= 0")
        if synchronous.lower() not in ("full", "normal"):
            raise ConfigurationError("synchronous must be 'full' or 'normal'")
        self._synchronous = synchronous.upper()
        self._cache_ttl = cache_ttl
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()
        self._closed = False
        self._clients: dict[str, MasterCredential | None] = {}
        self._by_text: dict[str, MasterCredential] = {}
        self._live_regs: dict[tuple[str, str], ClientRegistration | None] = {}
        self._entity_b: tuple[str, ...] | None = None
        self._checked_at = -float("inf")
        self._config_version: object = None

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(
            os.fspath(self._path),
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        # Erased key values (de-registration, purge) are overwritten on disk, not left in
        # free pages: they are sealed anyway, this is defence in depth.
        conn.execute("PRAGMA secure_delete = ON")
        return conn

    def _open_schema(self, kek: bytes | None) -> Sealer:
        conn = self._wconn
        kek_path = self._path.parent / KEK_FILE_NAME
        try:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            }
            if "psk" in tables and "keys" not in tables:
                raise StoreError(
                    f"{self._path} is a psk-lookup-table (m2msec psk), not a MAF store"
                )
            return open_sealed_schema(
                conn,
                label=f"MAF store {self._path}",
                kek=kek,
                kek_path=kek_path,
                migrations=_MIGRATIONS,
                version=SCHEMA_VERSION,
                check=_KEK_CHECK,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open MAF store {self._path}: {exc}") from None

    @property
    def _what(self) -> str:
        return f"the check value of MAF store {self._path}"

    @property
    def path(self) -> Path:
        """The database file (for PostgreSQL: a name in the local directory holding the
        ``kek`` file and the audit log copy, see :mod:`m2msec.maf.store_pg`)."""
        return self._path

    @property
    def location(self) -> str:
        """Where the store is, for operators: the file, or the URL without a password."""
        return os.fspath(self._path)

    @property
    def synchronous(self) -> str:
        """SQLite's ``synchronous`` setting of this store: "full" or "normal"."""
        return self._synchronous.lower()

    def __repr__(self) -> str:
        return f"MafStore({os.fspath(self._path)!r})"

    # -- transactions --------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self) -> Iterator[MafWriter]:
        """One write transaction: committed when the block ends, rolled back on error."""
        with self._wlock:
            conn = self._wconn
            try:
                conn.execute(self._SQL_BEGIN)
                w = MafWriter(self, conn)
                try:
                    yield w
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except self._DB_ERRORS as exc:
                raise self._error("write", exc) from None
        if w.config_changed:
            self._invalidate()

    # -- MAF Clients (Master Credentials) -----------------------------------------------
    def add_client(
        self,
        km_id: str,
        km: bytes,
        entity_id: str | None = None,
        *,
        replace: bool = False,
        now: datetime | None = None,
    ) -> MafClientInfo:
        """Provision a MAF Client's (KmId, Km) and optional CSE-ID/AE-ID of Entity A."""
        kid = parse_km_id(km_id)
        _check_key(km, f"the Km of {km_id!r}")
        if entity_id is not None:
            _check_entity(entity_id, f"the entity id of {km_id!r}")
        sealed = self._sealer.seal(bytes(km), km_aad(kid.canonical, entity_id))
        created = _epoch(now or _now())
        with self.writer() as w:
            cursor = w._conn.execute(
                _REPLACE_CLIENT if replace else _ADD_CLIENT,
                (kid.canonical, str(kid), sealed, entity_id, created),
            )
            if cursor.rowcount == 0:
                raise DuplicateCredentialError(f"KmId {km_id!r} already exists")
            w._bump_config()
        info = self.client_info(kid.canonical)
        assert info is not None
        return info

    def remove_client(self, km_id: str) -> tuple[bool, int]:
        """Remove a MAF Client, its registrations, and de-register its keys:
        (found, number of keys de-registered)."""
        canonical = parse_km_id(km_id).canonical
        with self.writer() as w:
            found = (
                w._conn.execute("DELETE FROM clients WHERE km_id = ?", (canonical,)).rowcount > 0
            )
            w._conn.execute("DELETE FROM registrations WHERE km_id = ?", (canonical,))
            keys = w.deregister_keys_of(km_id=canonical)
            w._bump_config()
        return found, keys

    def set_client_enabled(self, km_id: str, enabled: bool) -> bool:
        canonical = parse_km_id(km_id).canonical
        with self.writer() as w:
            cursor = w._conn.execute(
                "UPDATE clients SET enabled = ? WHERE km_id = ?", (int(enabled), canonical)
            )
            w._bump_config()
        return bool(cursor.rowcount > 0)

    def set_client_config(self, km_id: str, config: Mapping[str, Any] | None) -> None:
        """Set (or clear, with None) the MAF Client Configuration (8.8.2.4) of a KmId."""
        canonical = parse_km_id(km_id).canonical
        text = None if config is None else json.dumps(dict(config), separators=(",", ":"))
        with self.writer() as w:
            cursor = w._conn.execute(
                "UPDATE clients SET config = ? WHERE km_id = ?", (text, canonical)
            )
        if cursor.rowcount == 0:
            raise UnknownCredentialError(f"no MAF Client with KmId {km_id!r}")

    def get_client_config(self, km_id: str) -> dict[str, Any] | None:
        canonical = parse_km_id(km_id).canonical
        row = self._read("SELECT config FROM clients WHERE km_id = ?", (canonical,))
        if row is None or row[0] is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def get_client(self, km_id: str) -> MasterCredential | None:
        """The Master Credential of a KmId (any letter case), from the cache when fresh."""
        with self._rlock:
            self._revalidate()
            hit = self._by_text.get(km_id)
            if hit is not None:
                return hit
        try:
            canonical = parse_km_id(km_id).canonical
        except IdentifierError:
            return None
        with self._rlock:
            if canonical in self._clients:
                return self._clients[canonical]
            try:
                row = self._rconn.execute(
                    "SELECT km_id_text, km, entity_id, enabled FROM clients WHERE km_id = ?",
                    (canonical,),
                ).fetchone()
            except self._DB_ERRORS as exc:
                raise self._error("read", exc) from None
            cred: MasterCredential | None = None
            if row is not None:
                text, sealed, entity_id, enabled = row
                km = self._sealer.unseal(
                    sealed, km_aad(canonical, entity_id), what=f"the Km of {text!r}"
                )
                cred = MasterCredential(text, canonical, km, entity_id, bool(enabled))
                # Only known KmIds are cached: unknown ones sent by peers cannot fill it.
                self._clients[canonical] = cred
                if len(self._by_text) < 65536:
                    self._by_text[km_id] = cred
            return cred

    def client_info(self, km_id: str) -> MafClientInfo | None:
        canonical = parse_km_id(km_id).canonical
        row = self._read(
            "SELECT km_id_text, km_id, entity_id, created, enabled, length(km), "
            "config IS NOT NULL FROM clients WHERE km_id = ?",
            (canonical,),
        )
        return None if row is None else self._client_info(row)

    def list_clients(self) -> list[MafClientInfo]:
        rows = self._read_all(
            "SELECT km_id_text, km_id, entity_id, created, enabled, length(km), "
            "config IS NOT NULL FROM clients ORDER BY km_id",
            (),
        )
        return [self._client_info(r) for r in rows]

    @staticmethod
    def _client_info(row: tuple[Any, ...]) -> MafClientInfo:
        text, canonical, entity_id, created, enabled, sealed_len, has_config = row
        return MafClientInfo(
            text,
            canonical,
            entity_id,
            _dt(created),
            bool(enabled),
            sealed_plaintext_length(sealed_len),
            bool(has_config),
        )

    # -- Entity B -----------------------------------------------------------------------
    def add_entity_b(
        self,
        entity_id: str,
        *,
        kind: str = "in-cse",
        allow_non_in: bool = False,
        now: datetime | None = None,
    ) -> bool:
        """Allow the MAF to hand keys to ``entity_id`` of ``kind`` (one of
        :data:`ENTITY_B_KINDS`); False if it was already allowed.

        Seed 001: in this release Entity B is an Infrastructure Node, so any other kind is
        refused unless ``allow_non_in`` (an explicit override the caller warns about).
        """
        _check_entity(entity_id, "the Entity B identity")
        if kind not in ENTITY_B_KINDS:
            raise ConfigurationError(
                f"unknown Entity B kind {kind!r}; one of {', '.join(ENTITY_B_KINDS)}"
            )
        if kind != "in-cse" and not allow_non_in:
            raise ConfigurationError(
                f"Entity B {entity_id!r} of kind {kind}: in this release Entity B is an "
                "IN-CSE (TS-0003 8.2.2.3); an explicit override is needed for another kind"
            )
        with self.writer() as w:
            cursor = w._conn.execute(
                "INSERT INTO entity_b (entity_id, created, kind) VALUES (?, ?, ?) "
                "ON CONFLICT (entity_id) DO NOTHING",
                (entity_id, _epoch(now or _now()), kind),
            )
            w._bump_config()
        return bool(cursor.rowcount > 0)

    def entity_b_kinds(self) -> dict[str, str]:
        """The allowed Entity B identities with their kinds."""
        with self._rlock:
            try:
                rows = self._rconn.execute(
                    "SELECT entity_id, kind FROM entity_b ORDER BY entity_id"
                ).fetchall()
            except self._DB_ERRORS as exc:
                raise self._error("read", exc) from None
        return {str(r[0]): str(r[1]) for r in rows}

    def remove_entity_b(self, entity_id: str) -> bool:
        with self.writer() as w:
            cursor = w._conn.execute("DELETE FROM entity_b WHERE entity_id = ?", (entity_id,))
            w._bump_config()
        return bool(cursor.rowcount > 0)

    def list_entity_b(self) -> tuple[str, ...]:
        """The allowed Entity B identities as given (cached like the clients)."""
        with self._rlock:
            self._revalidate()
            if self._entity_b is None:
                try:
                    rows = self._rconn.execute(
                        "SELECT entity_id FROM entity_b ORDER BY entity_id"
                    ).fetchall()
                except self._DB_ERRORS as exc:
                    raise self._error("read", exc) from None
                self._entity_b = tuple(r[0] for r in rows)
            return self._entity_b

    # -- client registrations ------------------------------------------------------------
    def get_registration(self, reg_id: str) -> ClientRegistration | None:
        with self._rlock:
            return self._registration(self._rconn, reg_id)

    def _registration(self, conn: Any, reg_id: str) -> ClientRegistration | None:
        try:
            row = conn.execute(
                "SELECT reg_id, km_id, expires_at, admin_fqdn, labels, created, expires_us "
                "FROM registrations WHERE reg_id = ?",
                (reg_id,),
            ).fetchone()
        except self._DB_ERRORS as exc:
            raise self._error("read", exc) from None
        if row is None:
            return None
        rid, km, expires, admin, labels, created, micros = row
        return ClientRegistration(
            rid, km, _dt(expires, micros), admin, _tuple(labels), _dt(created)
        )

    def live_registration(
        self, km_id: str, admin_fqdn: str, now: datetime | None = None
    ) -> ClientRegistration | None:
        """The live registration of canonical ``km_id`` for ``admin_fqdn`` lasting longest,
        if any (cached like the clients: registrations change rarely)."""
        key = (km_id, admin_fqdn.lower())
        with self._rlock:
            self._revalidate()
            if key in self._live_regs:
                reg = self._live_regs[key]
            else:
                try:
                    row = self._rconn.execute(
                        "SELECT reg_id FROM registrations WHERE km_id = ? AND "
                        "lower(admin_fqdn) = ? ORDER BY expires_at DESC, expires_us DESC LIMIT 1",
                        key,
                    ).fetchone()
                except self._DB_ERRORS as exc:
                    raise self._error("read", exc) from None
                reg = None if row is None else self._registration(self._rconn, row[0])
                if len(self._live_regs) < 65536:
                    self._live_regs[key] = reg
        if reg is None or reg.expired(now):
            return None
        return reg

    def list_registrations(self, km_id: str | None = None) -> list[ClientRegistration]:
        if km_id is None:
            rows = self._read_all("SELECT reg_id FROM registrations ORDER BY reg_id", ())
        else:
            canonical = parse_km_id(km_id).canonical
            rows = self._read_all(
                "SELECT reg_id FROM registrations WHERE km_id = ? ORDER BY reg_id", (canonical,)
            )
        out = [self.get_registration(r[0]) for r in rows]
        return [r for r in out if r is not None]

    # -- keys ---------------------------------------------------------------------------
    def get_key(self, rel_id: str | bytes) -> MafKey | None:
        """A Key Registration by RelativeKeyID (either letter case), Kc unsealed; also
        expired and de-registered ones (check :meth:`MafKey.live`). Never cached."""
        try:
            rel = parse_relative_key_id(rel_id)
        except IdentifierError:
            return None
        row = self._read(_SELECT_KEY, (rel,))
        return None if row is None else self._key(row, unseal=True)

    def _key(self, row: _KeyRow, *, unseal: bool) -> MafKey:
        rel, sealed, expires, km_id, suid, targets, labels, admin, reg_id, created, dereg, us = (
            row
        )
        kc: bytes | None = None
        if unseal and sealed is not None:
            kc = self._sealer.unseal(
                sealed,
                kc_aad(rel, km_id, suid, targets, expires, us),
                what=f"the key value of RelativeKeyID {rel}",
            )
        target_ids = _tuple(targets)
        assert target_ids is not None
        return MafKey(
            rel,
            kc,
            _dt(expires, us),
            km_id,
            suid,
            target_ids,
            admin,
            _tuple(labels),
            reg_id,
            _dt(created),
            bool(dereg),
        )

    def list_keys(self, *, km_id: str | None = None, unseal: bool = False) -> Iterator[MafKey]:
        """Every Key Registration by RelativeKeyID, page by page; key values are left
        sealed (``kc`` None) unless ``unseal`` (used by consistency checks)."""
        canonical = None if km_id is None else parse_km_id(km_id).canonical
        last = ""
        while True:
            if canonical is None:
                page = self._read_all(
                    f"SELECT {_KEY_COLUMNS} FROM keys WHERE rel_id > ? "  # noqa: S608
                    "ORDER BY rel_id LIMIT ?",
                    (last, _LIST_PAGE),
                )
            else:
                page = self._read_all(
                    f"SELECT {_KEY_COLUMNS} FROM keys WHERE rel_id > ? AND km_id = ? "  # noqa: S608
                    "ORDER BY rel_id LIMIT ?",
                    (last, canonical, _LIST_PAGE),
                )
            for row in page:
                yield self._key(row, unseal=unseal)
            if len(page) < _LIST_PAGE:
                return
            last = page[-1][0]

    def count_keys(self, *, live_at: datetime | None = None) -> int:
        if live_at is None:
            row = self._read("SELECT count(*) FROM keys", ())
        else:
            row = self._read(
                "SELECT count(*) FROM keys WHERE deregistered = 0 AND (expires_at > ? OR "
                "(expires_at = ? AND expires_us > ?))",
                (_epoch(live_at), _epoch(live_at), _micros(live_at)),
            )
        assert row is not None
        return int(row[0])

    # -- audit ---------------------------------------------------------------------------
    def read_audit(
        self, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """Audit records with a sequence number above ``after``, oldest first."""
        rows = self._read_all(
            "SELECT seq, record FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, _NO_LIMIT if limit is None else limit),
        )
        out = []
        for seq, text in rows:
            value = json.loads(text)
            if isinstance(value, dict):
                out.append((int(seq), value))
        return out

    def count_audit(self) -> int:
        row = self._read("SELECT count(*) FROM audit", ())
        assert row is not None
        return int(row[0])

    # -- single-operation conveniences ---------------------------------------------------
    def register_key(self, key: NewKey) -> None:
        """Store one Key Registration in its own transaction."""
        with self.writer() as w:
            if not w.insert_key(key):
                raise DuplicateCredentialError(
                    f"RelativeKeyID {key.relative_hex} is already in use"
                )

    def register_keys(self, keys: Sequence[NewKey]) -> list[bool]:
        """Store many Key Registrations in one transaction; False where the RelativeKeyID
        was already taken (those rows are not written, the others are)."""
        with self.writer() as w:
            return [w.insert_key(k) for k in keys]

    def deregister_key(self, rel_id: str | bytes) -> bool:
        with self.writer() as w:
            return w.deregister_key(rel_id)

    def purge(self, now: datetime | None = None, retention: timedelta = timedelta(0)) -> int:
        with self.writer() as w:
            keys, _ = w.purge(now or _now(), retention)
        return keys

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        with self._wlock, self._rlock:
            if self._closed:
                return
            self._closed = True
            self._clients.clear()
            self._by_text.clear()
            self._rconn.close()
            self._wconn.close()

    def __enter__(self) -> MafStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------
    def _read(self, sql: str, args: tuple[object, ...]) -> Any:
        with self._rlock:
            try:
                return self._rconn.execute(sql, args).fetchone()
            except self._DB_ERRORS as exc:
                raise self._error("read", exc) from None

    def _read_all(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        with self._rlock:
            try:
                return list(self._rconn.execute(sql, args).fetchall())
            except self._DB_ERRORS as exc:
                raise self._error("read", exc) from None

    def _revalidate(self) -> None:
        # Caller holds _rlock. The config-version row changes with clients and entity_b.
        now = time.monotonic()
        if now - self._checked_at < self._cache_ttl:
            return
        try:
            row = self._rconn.execute(self._SQL_CONFIG_VERSION).fetchone()
        except self._DB_ERRORS as exc:
            raise self._error("read", exc) from None
        version = None if row is None else row[0]
        if version != self._config_version or version is None:
            self._clients.clear()
            self._by_text.clear()
            self._live_regs.clear()
            self._entity_b = None
            self._config_version = version
        self._checked_at = now

    def _invalidate(self) -> None:
        with self._rlock:
            self._clients.clear()
            self._by_text.clear()
            self._live_regs.clear()
            self._entity_b = None

    def _error(self, action: str, exc: Exception) -> StoreError:
        # SQLite's messages never contain bound parameter values, so no key material.
        if self._closed:
            return StoreError(f"MAF store {self._path} is closed")
        return StoreError(f"cannot {action} MAF store {self._path}: {exc}")


# ----------------------------------------------------------------------------- opening

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


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
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return out + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def default_maf_store_path(*, create: bool = False) -> Path:
    """``<data dir>/maf.db`` (see :mod:`m2msec.paths`)."""
    directory = data_dir()
    if create:
        ensure_private_dir(directory)
    return directory / DEFAULT_MAF_STORE_NAME


def open_maf_store(url_or_path: str | os.PathLike[str] | None = None, **options: Any) -> MafStore:
    """Open the MAF store named by a path, ``sqlite:///abs/path``, a ``postgresql://`` (or
    ``postgres://``) URL (:mod:`m2msec.maf.store_pg`, needs ``m2msec[postgres]``), or None
    (the default SQLite file in the data directory)."""
    if url_or_path is None:
        return MafStore(default_maf_store_path(create=True), **options)
    text = os.fspath(url_or_path)
    if not _URL.match(text):
        return MafStore(text, **options)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise ConfigurationError(
                "a SQLite MAF store URL has the form sqlite:///absolute/path/to/maf.db"
            )
        return MafStore(unquote(parts.path), **options)
    if scheme in ("postgresql", "postgres"):
        from m2msec.maf.store_pg import PgMafStore  # psycopg is an optional extra

        options.pop("busy_timeout", None)
        return PgMafStore(text, **options)
    raise ConfigurationError(f"unsupported MAF store URL scheme {scheme!r}")
