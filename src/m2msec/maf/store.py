"""The MAF's store (TS-0003 8.8): Master Credentials, Entity Bs, registrations, keys.

One SQLite file (WAL, ``synchronous=FULL``, created 0600) or one PostgreSQL schema shared by
several MAF instances (``postgresql://...``, needs ``m2msec[postgres]``): the same
:class:`MafStore` on either :class:`~m2msec.store.db.Database` dialect, its tables and
statements in :mod:`m2msec.maf.store_schema`, its records in
:mod:`m2msec.maf.store_records`, its write operations in :mod:`m2msec.maf.store_writer`.

Secrets are sealed with :mod:`m2msec.store.seal` under the same key-encryption key handling
as the psk-lookup-table (``$M2MSEC_KEK`` or the ``kek`` file beside the SQLite file, or in
``home`` for PostgreSQL; every instance sharing a PostgreSQL store needs the same one).
Associated data binds Km to its KmId and entity id, and Kc to its RelativeKeyID, source
KmId, SUID, targetIDs and expiry: a row edited in the database (say, a target or a lifetime
changed) no longer unseals, so write access to the tables without the KEK cannot redirect
or extend a key.

Writes happen in transactions opened with :meth:`MafStore.writer`; the server groups
concurrent Key Registrations into one transaction and answers none of them before it has
committed (crash safety). In PostgreSQL writers of different instances run concurrently
(READ COMMITTED): the RelativeKeyID primary key is enforced by the database, and a key read
to be updated is locked. Reads use a second connection; the small ``clients``,
``entity_b`` and registration lookups are cached, and the cache is dropped when
``config-version`` (rewritten in the transaction of every change to those tables, by any
process) has moved; it is polled at most every ``cache_ttl`` seconds, so ``m2msec maf
remove-client`` in another process takes effect within that time. Keys are never cached:
a de-registration is seen at once. A broken PostgreSQL connection is re-opened at its next
use; the operation that met the failure gets a StoreError.

Durability: ``synchronous="full"`` (the default) fsyncs every commit (PostgreSQL:
``synchronous_commit = on``); ``"normal"`` (``off``) may lose the last commits with the
machine, not with the MAF process; the MAF recovers (a fresh MAF Handshake, 8.2.2.3).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, cast

from m2msec.errors import (
    ConfigurationError,
    DuplicateCredentialError,
    IdentifierError,
    UnknownCredentialError,
)
from m2msec.maf.audit import AuditEvent, audit_record
from m2msec.maf.store_records import (
    ENTITY_B_KINDS,
    MAX_KEY_OCTETS,
    MIN_KEY_OCTETS,
    ClientRegistration,
    MafClientInfo,
    MafKey,
    MasterCredential,
    NewKey,
    check_entity,
    check_entity_b,
    check_key,
    epoch,
    kc_aad,
    km_aad,
    micros,
    parse_km_id,
    parse_relative_key_id,
    utc_now,
)
from m2msec.maf.store_schema import (
    MAF_SCHEMA,
    SCHEMA_VERSION,
    MafSql,
    client_info_from_row,
    inspect_maf_schema,
    key_from_row,
    maf_database,
    registration_from_row,
)
from m2msec.maf.store_writer import MafWriter
from m2msec.paths import state_path
from m2msec.store.db import (
    Database,
    PostgresDatabase,
    SqliteDatabase,
    redact_url,
)
from m2msec.store.lookups import LookupStats
from m2msec.store.sealed_store import SealedStore

__all__ = [
    "DEFAULT_MAF_STORE_NAME",
    "DEFAULT_PG_SCHEMA",
    "ENTITY_B_KINDS",
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

DEFAULT_MAF_STORE_NAME: Final = "maf.db"
#: The PostgreSQL schema of the MAF store's tables.
DEFAULT_PG_SCHEMA: Final = "m2msec_maf"
_LIST_PAGE: Final = 1_000
_NO_LIMIT: Final = 1 << 62
#: Bounds of the lookup caches: peers cannot grow them without limit.
_CACHE_LIMIT: Final = 65536


class MafStore(SealedStore):
    """The MAF store (module documentation). Thread-safe.

    ``target`` is a file path, a ``sqlite:///`` or ``postgresql://`` URL, or a
    :class:`~m2msec.store.db.Database`. A SQLite file is created (0600, its directory 0700)
    when missing; ``busy_timeout`` is how long its writer waits for another process's.
    PostgreSQL tables live in ``schema``; ``home`` holds the ``kek`` file (unless ``kek``
    or ``$M2MSEC_KEK`` is given) and is the folder of :attr:`path`. ``kek`` overrides the
    key-encryption key.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Database,
        *,
        kek: bytes | None = None,
        busy_timeout: float = 10.0,
        cache_ttl: float = 2.0,
        synchronous: str = "full",
        schema: str = DEFAULT_PG_SCHEMA,
        home: str | os.PathLike[str] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if cache_ttl < 0:
            raise ValueError("cache_ttl must be >= 0")
        if synchronous.lower() not in ("full", "normal"):
            raise ConfigurationError("synchronous must be 'full' or 'normal'")
        self._synchronous = synchronous.lower()
        db = maf_database(
            target,
            busy_timeout=busy_timeout,
            synchronous=cast(Literal["FULL", "NORMAL"], synchronous.upper()),
            schema=schema,
            home=home,
            connect_timeout=connect_timeout,
        )
        self._sql = MafSql(db)
        self._cache_ttl = cache_ttl
        self._clients: dict[str, MasterCredential | None] = {}
        self._by_text: dict[str, MasterCredential] = {}
        self._live_regs: dict[tuple[str, str], ClientRegistration | None] = {}
        self._entity_b: tuple[str, ...] | None = None
        self._checked_at = -float("inf")
        self._config_version: object = None
        #: Cache hits/misses and latency of :meth:`get_client` (the metrics read them).
        self.lookups = LookupStats()
        if isinstance(db, SqliteDatabase):
            self._path = db.path
        else:
            self._path = db.kek_path.parent / f"maf-postgresql-{schema}"
        super().__init__(
            db, MAF_SCHEMA, kind="MAF store", kek=kek, inspect=lambda c: inspect_maf_schema(db, c)
        )

    # -- where ----------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The database file (for PostgreSQL: a name in the local directory holding the
        ``kek`` file and the audit log copy)."""
        return self._path

    @property
    def location(self) -> str:
        """Where the store is, for operators: the file, or the URL without a password."""
        return self._db.label

    @property
    def url(self) -> str | None:
        """The PostgreSQL URL without its password; None for a SQLite file."""
        return redact_url(self._db.url) if isinstance(self._db, PostgresDatabase) else None

    @property
    def in_process(self) -> bool:
        """Commits happen in this process without network round trips (SQLite): cheap
        enough to run on an event loop's thread when they do not fsync."""
        return isinstance(self._db, SqliteDatabase)

    @property
    def synchronous(self) -> str:
        """The durability: "full" or "normal" (module documentation)."""
        return self._synchronous

    # -- transactions ---------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self) -> Iterator[MafWriter]:
        """One write transaction: committed when the block ends, rolled back on error."""
        db = self._db
        with self._wlock:
            try:
                with db.transaction(self._writer()) as conn:
                    w = MafWriter(conn, self._sql, self._sealer)
                    yield w
            except db.errors as exc:
                raise self._error("write", exc) from None
        if w.config_changed:
            self._invalidate()

    # -- MAF Clients (Master Credentials) -------------------------------------------------
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
        check_key(km, f"the Km of {km_id!r}")
        if entity_id is not None:
            check_entity(entity_id, f"the entity id of {km_id!r}")
        sealed = self._sealer.seal(bytes(km), km_aad(kid.canonical, entity_id))
        created = epoch(now or utc_now())
        with self.writer() as w:
            cursor = w.execute(
                self._sql.replace_client if replace else self._sql.add_client,
                (kid.canonical, str(kid), sealed, entity_id, created),
            )
            if cursor.rowcount == 0:
                raise DuplicateCredentialError(f"KmId {km_id!r} already exists")
            w.bump_config()
        info = self.client_info(kid.canonical)
        assert info is not None
        return info

    def remove_client(self, km_id: str) -> tuple[bool, int]:
        """Remove a MAF Client, its registrations, and de-register its keys:
        (found, number of keys de-registered)."""
        canonical = parse_km_id(km_id).canonical
        with self.writer() as w:
            found = w.execute(self._sql.delete_client, (canonical,)).rowcount > 0
            w.execute(self._sql.delete_registrations_of, (canonical,))
            keys = w.deregister_keys_of(km_id=canonical)
            w.bump_config()
            if found or keys:
                # In the transaction of the change, as the protocol's de-registrations are:
                # Key Retrieval refuses these keys (4004) from now on, and Entity B ends
                # the live SAs over them (docs/sa.md).
                w.append_audit(
                    [
                        audit_record(
                            AuditEvent.CLIENT_DEREGISTERED,
                            kmId=canonical,
                            keys=keys,
                            reason="removed by the operator",
                        )
                    ]
                )
        return bool(found), keys

    def set_client_enabled(self, km_id: str, enabled: bool) -> bool:
        canonical = parse_km_id(km_id).canonical
        with self.writer() as w:
            cursor = w.execute(self._sql.enable_client, (int(enabled), canonical))
            w.bump_config()
        return bool(cursor.rowcount > 0)

    def set_client_config(self, km_id: str, config: Mapping[str, Any] | None) -> None:
        """Set (or clear, with None) the MAF Client Configuration (8.8.2.4) of a KmId."""
        canonical = parse_km_id(km_id).canonical
        text = None if config is None else json.dumps(dict(config), separators=(",", ":"))
        with self.writer() as w:
            cursor = w.execute(self._sql.set_client_config, (text, canonical))
        if cursor.rowcount == 0:
            raise UnknownCredentialError(f"no MAF Client with KmId {km_id!r}")

    def get_client_config(self, km_id: str) -> dict[str, Any] | None:
        canonical = parse_km_id(km_id).canonical
        row = self._read(self._sql.client_config, (canonical,))
        if row is None or row[0] is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def get_client(self, km_id: str) -> MasterCredential | None:
        """The Master Credential of a KmId (any letter case), from the cache when fresh."""
        started = self.lookups.start()
        with self._rlock:
            self._revalidate()
            hit = self._by_text.get(km_id)
            if hit is not None:
                self.lookups.done(started, hit=True)
                return hit
        try:
            canonical = parse_km_id(km_id).canonical
        except IdentifierError:
            return None
        with self._rlock:
            if canonical in self._clients:
                self.lookups.done(started, hit=True)
                return self._clients[canonical]
            row = self._fetch(self._sql.select_client, (canonical,))
            self.lookups.done(started, hit=False)
            cred: MasterCredential | None = None
            if row is not None:
                text, sealed, entity_id, enabled = row
                km = self._sealer.unseal(
                    bytes(sealed), km_aad(canonical, entity_id), what=f"the Km of {text!r}"
                )
                cred = MasterCredential(text, canonical, km, entity_id, bool(enabled))
                # Only known KmIds are cached: unknown ones sent by peers cannot fill it.
                self._clients[canonical] = cred
                if len(self._by_text) < _CACHE_LIMIT:
                    self._by_text[km_id] = cred
            return cred

    def client_info(self, km_id: str) -> MafClientInfo | None:
        canonical = parse_km_id(km_id).canonical
        row = self._read(self._sql.client_info, (canonical,))
        return None if row is None else client_info_from_row(row)

    def list_clients(self) -> list[MafClientInfo]:
        return [client_info_from_row(r) for r in self._read(self._sql.list_clients, (), many=True)]

    # -- Entity B -------------------------------------------------------------------------
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
        check_entity_b(entity_id, kind, allow_non_in=allow_non_in)
        with self.writer() as w:
            cursor = w.execute(self._sql.add_entity_b, (entity_id, epoch(now or utc_now()), kind))
            w.bump_config()
        return bool(cursor.rowcount > 0)

    def entity_b_kinds(self) -> dict[str, str]:
        """The allowed Entity B identities with their kinds."""
        rows = self._read(self._sql.entity_b_kinds, (), many=True)
        return {str(r[0]): str(r[1]) for r in rows}

    def remove_entity_b(self, entity_id: str) -> bool:
        with self.writer() as w:
            cursor = w.execute(self._sql.remove_entity_b, (entity_id,))
            w.bump_config()
        return bool(cursor.rowcount > 0)

    def list_entity_b(self) -> tuple[str, ...]:
        """The allowed Entity B identities as given (cached like the clients)."""
        with self._rlock:
            self._revalidate()
            if self._entity_b is None:
                rows = self._fetch(self._sql.list_entity_b, (), many=True)
                self._entity_b = tuple(r[0] for r in rows)
            return self._entity_b

    # -- client registrations -------------------------------------------------------------
    def get_registration(self, reg_id: str) -> ClientRegistration | None:
        row = self._read(self._sql.select_registration, (reg_id,))
        return None if row is None else registration_from_row(row)

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
                row = self._fetch(self._sql.live_registration, key)
                found = None if row is None else self._fetch(self._sql.select_registration, row)
                reg = None if found is None else registration_from_row(found)
                if len(self._live_regs) < _CACHE_LIMIT:
                    self._live_regs[key] = reg
        if reg is None or reg.expired(now):
            return None
        return reg

    def list_registrations(self, km_id: str | None = None) -> list[ClientRegistration]:
        if km_id is None:
            rows = self._read(self._sql.list_registrations, (), many=True)
        else:
            canonical = parse_km_id(km_id).canonical
            rows = self._read(self._sql.list_registrations_of, (canonical,), many=True)
        out = [self.get_registration(r[0]) for r in rows]
        return [r for r in out if r is not None]

    # -- keys -----------------------------------------------------------------------------
    def get_key(self, rel_id: str | bytes) -> MafKey | None:
        """A Key Registration by RelativeKeyID (either letter case), Kc unsealed; also
        expired and de-registered ones (check :meth:`MafKey.live`). Never cached."""
        try:
            rel = parse_relative_key_id(rel_id)
        except IdentifierError:
            return None
        row = self._read(self._sql.select_key, (rel,))
        return None if row is None else key_from_row(self._sealer, row, unseal=True)

    def list_keys(self, *, km_id: str | None = None, unseal: bool = False) -> Iterator[MafKey]:
        """Every Key Registration by RelativeKeyID, page by page; key values are left
        sealed (``kc`` None) unless ``unseal`` (used by consistency checks)."""
        canonical = None if km_id is None else parse_km_id(km_id).canonical
        last = ""
        while True:
            if canonical is None:
                page = self._read(self._sql.list_keys, (last, _LIST_PAGE), many=True)
            else:
                page = self._read(self._sql.list_keys_of, (last, canonical, _LIST_PAGE), many=True)
            for row in page:
                yield key_from_row(self._sealer, row, unseal=unseal)
            if len(page) < _LIST_PAGE:
                return
            last = page[-1][0]

    def count_keys(self, *, live_at: datetime | None = None) -> int:
        if live_at is None:
            row = self._read(self._sql.count_keys, ())
        else:
            second = epoch(live_at)
            row = self._read(self._sql.count_live_keys, (second, second, micros(live_at)))
        assert row is not None
        return int(row[0])

    # -- audit ----------------------------------------------------------------------------
    def read_audit(
        self, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """Audit records with a sequence number above ``after``, oldest first."""
        bound = _NO_LIMIT if limit is None else limit
        rows = self._read(self._sql.read_audit, (after, bound), many=True)
        out = []
        for seq, text in rows:
            value = json.loads(text)
            if isinstance(value, dict):
                out.append((int(seq), value))
        return out

    def count_audit(self) -> int:
        row = self._read(self._sql.count_audit, ())
        assert row is not None
        return int(row[0])

    # -- single-operation conveniences ----------------------------------------------------
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
            keys, _ = w.purge(now or utc_now(), retention)
        return keys

    # -- internals ------------------------------------------------------------------------
    def _fetch(self, sql: str, args: tuple[object, ...], *, many: bool = False) -> Any:
        # Caller holds _rlock.
        try:
            cursor = self._reader().execute(sql, args)
            return list(cursor.fetchall()) if many else cursor.fetchone()
        except self._db.errors as exc:
            raise self._error("read", exc) from None

    def _read(self, sql: str, args: tuple[object, ...], *, many: bool = False) -> Any:
        with self._rlock:
            return self._fetch(sql, args, many=many)

    def _revalidate(self) -> None:
        # Caller holds _rlock. config-version changes with clients, entity_b, registrations.
        now = time.monotonic()
        if now - self._checked_at < self._cache_ttl:
            return
        row = self._fetch(self._sql.config_version, ())
        version = None if row is None else row[0]
        if version != self._config_version or version is None:
            self._clear_caches()
            self._config_version = version
        self._checked_at = now

    def _invalidate(self) -> None:
        with self._rlock:
            self._clear_caches()

    def _clear_caches(self) -> None:
        self._clients.clear()
        self._by_text.clear()
        self._live_regs.clear()
        self._entity_b = None


# ----------------------------------------------------------------------------- opening


def default_maf_store_path(*, create: bool = False) -> Path:
    """``<data dir>/maf.db`` (see :mod:`m2msec.paths`)."""
    return state_path(DEFAULT_MAF_STORE_NAME, create=create)


def open_maf_store(url_or_path: str | os.PathLike[str] | None = None, **options: Any) -> MafStore:
    """Open the MAF store named by a path, ``sqlite:///abs/path``, a ``postgresql://`` (or
    ``postgres://``) URL (needs ``m2msec[postgres]``), or None (the default SQLite file in
    the data directory)."""
    if url_or_path is None:
        return MafStore(default_maf_store_path(create=True), **options)
    return MafStore(url_or_path, **options)
