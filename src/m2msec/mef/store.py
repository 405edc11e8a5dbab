"""The MEF's store (TS-0003 8.3.2.1, seed 004): Enrolees, allowed targets, enrolments, audit.

One SQLite file (default ``<data dir>/mef.db``; WAL, ``synchronous=FULL``, ``secure_delete``,
created 0600 in a 0700 directory) or the ``m2msec_mef`` schema of a PostgreSQL database
(``postgresql://...``, needs ``m2msec[postgres]``), on :class:`~m2msec.store.db.Database`
as the MAF and BSF stores are; :class:`~m2msec.store.sealed_store.SealedTables` opens it
(:func:`~m2msec.store.schema.open_sealed_store`), migrates it and checks the
key-encryption key (``$M2MSEC_KEK`` or the ``kek`` file). Tables::

    enrolees(bootstrap_key PK, kpm sealed, enrolee_id, target_kind, target_id, naf_fqdn,
             lifetime, created)        -- Bootstrap Instruction Configuration, 8.3.2.1
    targets(target_key PK, kind, target_id, naf_fqdn, created)  -- who may fetch
    enrolments(ke_id PK, ke sealed, bootstrap_key, enrolee_id, target_kind, target_id,
               naf_fqdn, expires_at, created)                   -- Ke, KeID, 10.7
    audit(seq, time, record)                                    -- JSON, no keys
    meta(name PK, value)                                        -- the KEK check value

Kpm and Ke are sealed (:mod:`m2msec.store.seal`) with the associated data of
:func:`~m2msec.mef.records.enrolee_aad` / :func:`~m2msec.mef.records.ke_aad`; a
certificate Enrolee's row seals an empty value, so its target cannot be edited either.
:meth:`MefStore.commit` writes enrolments with their audit records in one transaction,
fsynced before it returns; :meth:`MefStore.enrol` does the same for the Enrolment Exchange,
re-checking in that transaction that each Enrolee is still configured as its bootstrap
handshake read it. The MEF answers an Enrolment Exchange only after it (the
acknowledgement of issue 11 item 6). Nothing is cached: every read sees other processes'
commits (``m2msec mef remove-enrolee`` acts at once).
"""

# The SQL is formatted with the dialect's placeholder and column types only, never values.
# ruff: noqa: S608

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from m2msec.errors import DuplicateCredentialError
from m2msec.keyids import KeId
from m2msec.mef.records import (
    Bootstrap,
    Enrolee,
    Enrolment,
    EnrolmentTarget,
    MefAudit,
    MefEvent,
    TargetKind,
    enrolee_aad,
    ke_aad,
)
from m2msec.paths import data_dir, ensure_private_dir
from m2msec.store.db import (
    Connection,
    Database,
    PostgresDatabase,
    SqliteDatabase,
    from_epoch,
    open_database,
    to_epoch,
)
from m2msec.store.schema import KekCheck, SealedSchema
from m2msec.store.sealed_store import SealedTables

__all__ = [
    "MEF_STORE_NAME",
    "PG_SCHEMA",
    "MefStore",
    "default_mef_store_path",
]

MEF_STORE_NAME: Final = "mef.db"
PG_SCHEMA: Final = "m2msec_mef"
SCHEMA_VERSION: Final = 1
_KEK_CHECK: Final = KekCheck(
    b"m2msec/mef/meta/kek-check", b"m2msec MEF key-encryption key check, version 1"
)
#: Rows per progress report of a bulk import.
_CHUNK: Final = 500


def migrations(db: Database) -> dict[int, tuple[str, ...]]:
    """Each schema version's statements in ``db``'s dialect."""
    t, b, w = db.key_text, db.blob, db.table_suffix
    target = f"target_kind TEXT NOT NULL, target_id {t} NOT NULL, naf_fqdn TEXT"
    return {
        1: (
            f"CREATE TABLE meta (name {t} PRIMARY KEY, value {b} NOT NULL){w}",
            f"""CREATE TABLE enrolees (bootstrap_key {t} PRIMARY KEY, kpm {b} NOT NULL,
                   enrolee_id {t} NOT NULL, {target}, lifetime BIGINT NOT NULL,
                   created BIGINT NOT NULL){w}""",
            f"""CREATE TABLE targets (target_key {t} PRIMARY KEY, kind TEXT NOT NULL,
                   target_id {t} NOT NULL, naf_fqdn TEXT, created BIGINT NOT NULL){w}""",
            f"""CREATE TABLE enrolments (ke_id {t} PRIMARY KEY, ke {b} NOT NULL,
                   bootstrap_key {t} NOT NULL, enrolee_id {t} NOT NULL, {target},
                   expires_at BIGINT NOT NULL, created BIGINT NOT NULL){w}""",
            "CREATE INDEX enrolments_expiry ON enrolments (expires_at)",
            f"CREATE TABLE audit (seq {db.serial_key}, time BIGINT NOT NULL, record TEXT NOT NULL)",
        ),
    }


def default_mef_store_path(*, create: bool = False) -> Path:
    """``<data dir>/mef.db``; with ``create``, make the data directory (0700) first."""
    directory = data_dir()
    if create:
        ensure_private_dir(directory)
    return directory / MEF_STORE_NAME


def _database(
    target: str | os.PathLike[str] | Database | None,
    busy_timeout: float,
    home: str | os.PathLike[str] | None,
) -> Database:
    if isinstance(target, Database):
        return target
    if target is None:
        target = default_mef_store_path(create=True)
    if isinstance(target, Path):
        target = target.expanduser()
    db = open_database(target, pg_schema=PG_SCHEMA, busy_timeout=busy_timeout)
    if isinstance(db, SqliteDatabase):
        # An erased Ke (purge, remove-enrolee) is overwritten on disk, not left in free pages.
        return SqliteDatabase(db.path, busy_timeout=busy_timeout, secure_delete=True)
    assert isinstance(db, PostgresDatabase)
    return PostgresDatabase(
        db.url,
        schema=PG_SCHEMA,
        home=None if home is None else Path(home).expanduser(),
        application_name="m2msec-mef",
        what="MEF store",
    )


def _bootstrap_key(bootstrap: Bootstrap, bootstrap_id: str) -> str:
    return f"{bootstrap.value}:{bootstrap_id}"


def _target_key(target: EnrolmentTarget) -> str:
    return str(target)


def _ke_key(ke_id: KeId) -> str:
    # hexBinary in lower case, the FQDN case-insensitive (docs/readings.md A-05).
    return f"{ke_id.relative_hex}@{ke_id.fqdn.lower()}"


def _target(kind: str, target_id: str, naf_fqdn: str | None) -> EnrolmentTarget:
    return EnrolmentTarget(TargetKind(kind), target_id, naf_fqdn)


def _time(value: int) -> datetime:
    out = from_epoch(value)
    assert out is not None
    return out


def _epoch(value: datetime) -> int:
    out = to_epoch(value)
    assert out is not None
    return out


_SCHEMA: Final = SealedSchema(migrations, SCHEMA_VERSION, _KEK_CHECK)


class MefStore(SealedTables):
    """The MEF store (module docstring). Thread-safe.

    ``target`` is a file path, a ``sqlite:///`` or ``postgresql://`` URL, a
    :class:`~m2msec.store.db.Database`, or None for ``<data dir>/mef.db``. ``home`` holds
    the ``kek`` file of a PostgreSQL store; ``kek`` overrides the key-encryption key.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Database | None = None,
        *,
        kek: bytes | None = None,
        busy_timeout: float = 10.0,
        home: str | os.PathLike[str] | None = None,
    ) -> None:
        db = _database(target, busy_timeout, home)
        super().__init__(db, _SCHEMA, kind="MEF store", kek=kek)
        p = db.p
        self._p = p
        target_cols = "target_kind, target_id, naf_fqdn"
        self._enrolee_cols = f"bootstrap_key, kpm, enrolee_id, {target_cols}, lifetime, created"
        self._enrolment_cols = (
            f"ke_id, ke, bootstrap_key, enrolee_id, {target_cols}, expires_at, created"
        )
        self._insert_enrolment = (
            f"INSERT INTO enrolments ({self._enrolment_cols}) VALUES "
            f"({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
        )
        self._insert_audit = f"INSERT INTO audit (time, record) VALUES ({p}, {p})"
        self._insert_enrolee = (
            f"INSERT INTO enrolees ({self._enrolee_cols}) VALUES "
            f"({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
        )

    # -- where ------------------------------------------------------------------------------
    @property
    def location(self) -> str:
        """The file, or the PostgreSQL URL (without password) and schema, for messages."""
        return self._db.label

    # -- Enrolees (Bootstrap Instruction Configuration) -------------------------------------
    def add_enrolee(self, enrolee: Enrolee, *, replace: bool = False) -> None:
        """Configure an Enrolee; DuplicateCredentialError if its bootstrap credential is
        configured already and not ``replace``."""
        self.add_enrolees([enrolee], replace=replace)

    def add_enrolees(
        self,
        enrolees: Iterable[Enrolee],
        *,
        replace: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Configure many Enrolees in one durable transaction, all or none (``m2msec mef
        import``); ``progress(n_done)`` after each chunk. A bootstrap credential configured
        already (and not ``replace``) raises DuplicateCredentialError naming it."""
        sql = self._insert_enrolee
        if replace:
            sql += " ON CONFLICT (bootstrap_key) DO UPDATE SET " + ", ".join(
                f"{c} = excluded.{c}" for c in self._enrolee_cols.split(", ")[1:]
            )
        rows = [self._enrolee_row(e) for e in enrolees]
        integrity = self._db.integrity_errors
        refused: list[tuple[Any, ...]] = []

        def run(conn: Connection) -> int:
            cursor = conn.cursor()
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                try:
                    cursor.executemany(sql, chunk)
                except integrity:
                    refused.extend(chunk)
                    raise
                if progress is not None:
                    progress(start + len(chunk))
            return len(rows)

        try:
            return self._transaction(run, duplicate="an Enrolee is configured already")
        except DuplicateCredentialError:
            # Rolled back; name the first row whose credential is configured (not a value).
            taken = next((r[0] for r in refused if self._configured(r[0])), None)
            raise DuplicateCredentialError(
                f"Enrolee {taken!r} is configured already"
                if taken is not None
                else "two Enrolees of this batch have one bootstrap credential"
            ) from None

    def _configured(self, bootstrap_key: str) -> bool:
        sql = f"SELECT 1 FROM enrolees WHERE bootstrap_key = {self._p}"
        return self._read(sql, (bootstrap_key,), lambda c: c.fetchone()) is not None

    def _enrolee_row(self, enrolee: Enrolee) -> tuple[Any, ...]:
        kpm = enrolee.kpm if enrolee.bootstrap is Bootstrap.PSK else b""
        if kpm is None:
            raise ValueError("a PSK Enrolee needs its Kpm")
        target = enrolee.target
        created = enrolee.created_at or datetime.now(UTC)
        return (
            _bootstrap_key(enrolee.bootstrap, enrolee.bootstrap_id),
            self._sealer.seal(bytes(kpm), enrolee_aad(enrolee)),
            enrolee.enrolee_id,
            target.kind.value,
            target.target_id,
            target.naf_fqdn,
            int(enrolee.lifetime.total_seconds()),
            _epoch(created),
        )

    def get_enrolee(self, bootstrap: Bootstrap, bootstrap_id: str) -> Enrolee | None:
        """The Enrolee of a KpmID or certificate identity, Kpm unsealed; None if unknown."""
        key = _bootstrap_key(bootstrap, bootstrap_id)
        row = self._read(
            f"SELECT {self._enrolee_cols} FROM enrolees WHERE bootstrap_key = {self._p}",
            (key,),
            lambda c: c.fetchone(),
        )
        return None if row is None else self._enrolee(row, unseal=True)

    def list_enrolees(self) -> list[Enrolee]:
        """Every Enrolee by bootstrap credential, without Kpm (its seal is still checked)."""
        rows = self._read(
            f"SELECT {self._enrolee_cols} FROM enrolees ORDER BY bootstrap_key",
            (),
            lambda c: list(c.fetchall()),
        )
        return [self._enrolee(r, unseal=False) for r in rows]

    def remove_enrolee(self, bootstrap: Bootstrap, bootstrap_id: str) -> tuple[bool, int]:
        """Remove an Enrolee and erase its enrolments: (found, enrolments erased), with an
        audit record in the same transaction. Its KeIDs are refused (4004) from then on,
        and the Enrolee Bs holding its Kpsa end their live SAs (docs/sa.md)."""
        key = _bootstrap_key(bootstrap, bootstrap_id)
        p = self._p

        def run(conn: Connection) -> tuple[bool, int]:
            found = conn.execute(f"DELETE FROM enrolees WHERE bootstrap_key = {p}", (key,))
            gone = conn.execute(f"DELETE FROM enrolments WHERE bootstrap_key = {p}", (key,))
            removed = bool(found.rowcount > 0), int(gone.rowcount)
            if removed[0] or removed[1]:
                record = MefAudit(
                    MefEvent.ENROLEE_REMOVED,
                    datetime.now(UTC),
                    "operator",
                    reason=f"Enrolee {key} removed, {removed[1]} enrolment(s) erased",
                )
                conn.execute(self._insert_audit, _audit_row(record))
            return removed

        return self._transaction(run)

    def _enrolee(self, row: Sequence[Any], *, unseal: bool) -> Enrolee:
        key, sealed, enrolee_id, kind, target_id, naf, lifetime, created = row
        framework, _, bootstrap_id = str(key).partition(":")
        enrolee = Enrolee(
            Bootstrap(framework),
            bootstrap_id,
            enrolee_id,
            _target(kind, target_id, naf),
            timedelta(seconds=int(lifetime)),
            created_at=_time(created),
        )
        kpm = self._sealer.unseal(
            bytes(sealed), enrolee_aad(enrolee), what=f"the configuration of Enrolee {key!r}"
        )
        if unseal and enrolee.bootstrap is Bootstrap.PSK:
            return Enrolee(
                enrolee.bootstrap,
                bootstrap_id,
                enrolee_id,
                enrolee.target,
                enrolee.lifetime,
                kpm,
                enrolee.created_at,
            )
        return enrolee

    # -- Enrolment Targets that may fetch ---------------------------------------------------
    def allow_target(self, target: EnrolmentTarget, now: datetime | None = None) -> bool:
        """Let ``target`` fetch credentials; False if it was allowed already."""
        p = self._p
        sql = (
            "INSERT INTO targets (target_key, kind, target_id, naf_fqdn, created) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (target_key) DO NOTHING"
        )
        created = _epoch(now or datetime.now(UTC))
        row = (_target_key(target), target.kind.value, target.target_id, target.naf_fqdn, created)
        return self._write(sql, row) > 0

    def remove_target(self, target: EnrolmentTarget) -> bool:
        sql = f"DELETE FROM targets WHERE target_key = {self._p}"
        return self._write(sql, (_target_key(target),)) > 0

    def is_allowed_target(self, target: EnrolmentTarget) -> bool:
        sql = f"SELECT 1 FROM targets WHERE target_key = {self._p}"
        return self._read(sql, (_target_key(target),), lambda c: c.fetchone()) is not None

    def list_targets(self) -> list[EnrolmentTarget]:
        rows = self._read(
            "SELECT kind, target_id, naf_fqdn FROM targets ORDER BY target_key",
            (),
            lambda c: list(c.fetchall()),
        )
        return [_target(*r) for r in rows]

    # -- enrolments -------------------------------------------------------------------------
    def commit(
        self,
        enrolments: Iterable[tuple[Enrolment, Enrolee]] = (),
        audits: Iterable[MefAudit] = (),
    ) -> None:
        """Write enrolments (each with the Enrolee it was made for) and audit records in one
        durable transaction. A KeID already stored raises DuplicateCredentialError and
        writes nothing (a repeated export: the Enrolee must bootstrap again)."""
        rows = [self._enrolment_row(e, who) for e, who in enrolments]
        records = [_audit_row(a) for a in audits]

        def run(conn: Connection) -> None:
            for row in rows:
                conn.execute(self._insert_enrolment, row)
            for record in records:
                conn.execute(self._insert_audit, record)

        self._transaction(run, duplicate="a KeID of this batch is stored already")

    def enrol(self, batch: Sequence[tuple[Enrolment, Enrolee, MefAudit]]) -> list[bool]:
        """Store enrolments, each with its audit record, in one durable transaction, each
        only if its Enrolee is still configured as given (the configuration the bootstrap
        handshake read): per item, whether it was stored. The Enrolee's row is read in the
        transaction (``FOR SHARE`` on PostgreSQL, so that ``remove-enrolee`` or a replace
        waits for this commit or wins before it); an Enrolee removed or changed meanwhile
        stores neither its enrolment nor its audit record. A KeID already stored raises
        DuplicateCredentialError and writes nothing, as :meth:`commit` does."""
        items = [
            (
                _bootstrap_key(who.bootstrap, who.bootstrap_id),
                who,
                self._enrolment_row(e, who),
                _audit_row(a),
            )
            for e, who, a in batch
        ]
        select = (
            f"SELECT {self._enrolee_cols} FROM enrolees WHERE bootstrap_key = {self._p}"
            f"{self._db.for_share}"
        )

        def run(conn: Connection) -> list[bool]:
            current: dict[str, Sequence[Any] | None] = {}
            stored: list[bool] = []
            for key, who, row, record in items:
                if key not in current:
                    current[key] = conn.execute(select, (key,)).fetchone()
                ok = self._still_configured(current[key], who)
                if ok:
                    conn.execute(self._insert_enrolment, row)
                    conn.execute(self._insert_audit, record)
                stored.append(ok)
            return stored

        return self._transaction(run, duplicate="a KeID of this batch is stored already")

    def _still_configured(self, row: Sequence[Any] | None, read: Enrolee) -> bool:
        """Whether the stored row of an Enrolee holds the configuration ``read``: each
        column equal, and the sealed Kpm, unsealed under that configuration's associated
        data, the same Kpm (constant time); an edited row fails to unseal (StoreError)."""
        if row is None:
            return False
        _key, sealed, enrolee_id, kind, target_id, naf, lifetime, created = row
        target, created_at = read.target, read.created_at
        if (
            enrolee_id != read.enrolee_id
            or (kind, target_id, naf) != (target.kind.value, target.target_id, target.naf_fqdn)
            or int(lifetime) != int(read.lifetime.total_seconds())
            or created_at is None
            or int(created) != _epoch(created_at)
        ):
            return False
        kpm = self._sealer.unseal(
            bytes(sealed), enrolee_aad(read), what=f"the configuration of Enrolee {_key!r}"
        )
        return hmac.compare_digest(kpm, read.kpm or b"")

    def _enrolment_row(self, e: Enrolment, enrolee: Enrolee) -> tuple[Any, ...]:
        expires = _epoch(e.expires_at)
        target = e.target
        return (
            _ke_key(e.ke_id),
            self._sealer.seal(e.ke, ke_aad(e.ke_id, e.enrolee_id, target, expires)),
            _bootstrap_key(enrolee.bootstrap, enrolee.bootstrap_id),
            e.enrolee_id,
            target.kind.value,
            target.target_id,
            target.naf_fqdn,
            expires,
            _epoch(e.created_at),
        )

    def get_enrolment(self, ke_id: KeId) -> Enrolment | None:
        """The enrolment of a KeID, Ke unsealed (expired ones too: the caller decides)."""
        row = self._read(
            f"SELECT {self._enrolment_cols} FROM enrolments WHERE ke_id = {self._p}",
            (_ke_key(ke_id),),
            lambda c: c.fetchone(),
        )
        return None if row is None else self._enrolment(ke_id, row)

    def _enrolment(self, ke_id: KeId, row: Sequence[Any]) -> Enrolment:
        _key, sealed, _bootstrap, enrolee_id, kind, target_id, naf, expires, created = row
        target = _target(kind, target_id, naf)
        ke = self._sealer.unseal(
            bytes(sealed),
            ke_aad(ke_id, enrolee_id, target, int(expires)),
            what=f"the Ke of KeID {ke_id}",
        )
        return Enrolment(ke_id, ke, enrolee_id, target, _time(expires), _time(created))

    def list_enrolments(self, *, limit: int = 1000) -> list[tuple[str, Enrolment]]:
        """(the Enrolee's bootstrap credential, ``psk:KPMID`` or ``cert:ID``, enrolment),
        oldest first. Ke is unsealed, so an edited row fails here as it would at
        fetchCredentials; listings show the rest only."""
        rows = self._read(
            f"SELECT {self._enrolment_cols} FROM enrolments ORDER BY created, ke_id "
            f"LIMIT {self._p}",
            (limit,),
            lambda c: list(c.fetchall()),
        )
        return [(str(row[2]), self._enrolment(KeId.parse(row[0]), row)) for row in rows]

    def count_enrolments(self, *, live_at: datetime | None = None) -> int:
        if live_at is None:
            return self._read("SELECT count(*) FROM enrolments", (), _count)
        sql = f"SELECT count(*) FROM enrolments WHERE expires_at > {self._p}"
        return self._read(sql, (_epoch(live_at),), _count)

    def purge_expired(self, now: datetime | None = None) -> int:
        """Erase enrolments past their Enrolment Expiry; how many."""
        cutoff = _epoch(now or datetime.now(UTC))
        return self._write(f"DELETE FROM enrolments WHERE expires_at <= {self._p}", (cutoff,))

    # -- audit ------------------------------------------------------------------------------
    def read_audit(self, *, after: int = 0, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """Audit records with a sequence number above ``after``, oldest first."""
        p = self._p
        rows = self._read(
            f"SELECT seq, record FROM audit WHERE seq > {p} ORDER BY seq LIMIT {p}",
            (after, limit),
            lambda c: list(c.fetchall()),
        )
        return [(int(seq), json.loads(text)) for seq, text in rows]


def _count(cursor: Any) -> int:
    return int(cursor.fetchone()[0])


def _audit_row(audit: MefAudit) -> tuple[int, str]:
    record = json.dumps(audit.to_json(), separators=(",", ":"), ensure_ascii=False)
    return _epoch(audit.time), record
