"""The Enrolee's sealed local store of its enrolments (TS-0003 8.3.2.1, 10.7; seed 004).

One SQLite file, by default ``<data dir>/enrolee.db`` (``$M2MSEC_HOME``; created 0600 in
a 0700 directory, WAL, ``synchronous=FULL``, ``secure_delete``), opened, migrated and
KEK-checked by :class:`~m2msec.store.sealed_store.SealedTables` as the MEF's and the
gateway's stores are; the key-encryption key is ``$M2MSEC_KEK`` or the ``kek`` file beside
it. Tables::

    enrolments(ke_id PK, keys sealed, mef_fqdn, bootstrap_id, enrolee_id, target_key,
               target_kind, target_id, naf_fqdn, expires_at, created)
    meta(name PK, value)                    -- the KEK check value

A GBA enrolment (seed 004 8.3.3.1) is kept the same way: KeID = its B-TID verbatim, Ke = Ks,
bootstrap credential ``gba:<IMPI>`` (:mod:`m2msec.frameworks.mef.gba`).
``keys`` is Ke followed by the credential derived for the target (Km or Kpsa), sealed with
the associated data of :func:`m2msec.mef.records.ke_aad` (KeID, Enrolee-ID, target,
expiry) and the bootstrap credential: a row edited without the KEK no longer opens.
:meth:`EnroleeStore.current` finds the live enrolment to reuse; an expired one is not
returned, so the Enrolee bootstraps again (:func:`m2msec.frameworks.mef.enrol_or_reuse`).
"""

# The SQL is formatted with the dialect's placeholder and column types only, never values.
# ruff: noqa: S608

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from m2msec.errors import IdentifierError
from m2msec.frameworks.gba import is_btid
from m2msec.frameworks.mef.result import EnrolmentResult
from m2msec.keyids import KeId
from m2msec.mef.records import EnrolmentTarget, TargetKind, ke_aad, ke_id_text
from m2msec.paths import state_path
from m2msec.store.db import Database, SqliteDatabase, from_epoch, to_epoch
from m2msec.store.schema import KekCheck, SealedSchema
from m2msec.store.sealed_store import SealedTables

__all__ = ["ENROLEE_STORE_NAME", "EnroleeStore", "default_enrolee_store_path"]

ENROLEE_STORE_NAME: Final = "enrolee.db"
SCHEMA_VERSION: Final = 1
_KEK_CHECK: Final = KekCheck(
    b"m2msec/enrolee/meta/kek-check", b"m2msec Enrolee key-encryption key check, version 1"
)
_COLUMNS: Final = (
    "ke_id, keys, mef_fqdn, bootstrap_id, enrolee_id, target_key, target_kind, target_id, "
    "naf_fqdn, expires_at, created"
)


def migrations(db: Database) -> dict[int, tuple[str, ...]]:
    """Each schema version's statements in ``db``'s dialect."""
    t, b, w = db.key_text, db.blob, db.table_suffix
    return {
        1: (
            f"CREATE TABLE meta (name {t} PRIMARY KEY, value {b} NOT NULL){w}",
            f"""CREATE TABLE enrolments (ke_id {t} PRIMARY KEY, keys {b} NOT NULL,
                   mef_fqdn {t} NOT NULL, bootstrap_id {t} NOT NULL, enrolee_id {t} NOT NULL,
                   target_key {t} NOT NULL, target_kind TEXT NOT NULL,
                   target_id {t} NOT NULL, naf_fqdn TEXT, expires_at BIGINT NOT NULL,
                   created BIGINT NOT NULL){w}""",
            "CREATE INDEX enrolments_target ON enrolments (mef_fqdn, target_key, bootstrap_id)",
        ),
    }


_SCHEMA: Final = SealedSchema(migrations, SCHEMA_VERSION, _KEK_CHECK)


def default_enrolee_store_path(*, create: bool = False) -> Path:
    """``<data dir>/enrolee.db``; with ``create``, make the data directory (0700) first."""
    return state_path(ENROLEE_STORE_NAME, create=create)


def _parse_key(text: str) -> KeId | str:
    """A stored KeID: a KeId, else a GBA enrolment's B-TID (seed 004 8.3.3.1), verbatim."""
    try:
        return KeId.parse(text)
    except IdentifierError:
        if is_btid(text):
            return text
        raise


def _aad(
    ke_id: KeId | str, enrolee_id: str, target: EnrolmentTarget, expires: int, boot: str
) -> bytes:
    # The MEF's own binding of a Ke, then what only the Enrolee knows: its bootstrap credential.
    return ke_aad(ke_id, enrolee_id, target, expires) + b"m2msec/enrolee\x00" + boot.encode()


class EnroleeStore(SealedTables):
    """The Enrolee's enrolments (module docstring). Thread-safe.

    ``target`` is a file path, a :class:`~m2msec.store.db.Database`, or None for
    ``<data dir>/enrolee.db``; ``kek`` overrides the key-encryption key.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Database | None = None,
        *,
        kek: bytes | None = None,
        busy_timeout: float = 10.0,
    ) -> None:
        if isinstance(target, Database):
            db = target
        else:
            path = Path(target) if target is not None else default_enrolee_store_path(create=True)
            # A Ke erased (expired, replaced) is overwritten on disk, not left in free pages.
            db = SqliteDatabase(path, busy_timeout=busy_timeout, secure_delete=True)
        super().__init__(db, _SCHEMA, kind="Enrolee store", kek=kek)
        p = db.p
        self._p = p
        self._insert = f"INSERT INTO enrolments ({_COLUMNS}) VALUES ({', '.join([p] * 11)})"

    @property
    def location(self) -> str:
        return self._db.label

    def save(self, result: EnrolmentResult) -> None:
        """Keep an enrolment, and erase the expired ones of the same MEF, target and bootstrap
        credential in the same transaction. A KeID stored already: DuplicateCredentialError."""
        p = self._p
        expires = to_epoch(result.expires)
        target = result.target
        sealed = self._sealer.seal(
            result.ke + result.credential,
            _aad(result.ke_id, result.enrolee_id, target, expires, result.bootstrap_id),
        )
        row = (
            ke_id_text(result.ke_id),
            sealed,
            result.mef_fqdn.lower(),
            result.bootstrap_id,
            result.enrolee_id,
            str(target),
            target.kind.value,
            target.target_id,
            target.naf_fqdn,
            expires,
            to_epoch(result.created),
        )
        erase = (
            f"DELETE FROM enrolments WHERE mef_fqdn = {p} AND target_key = {p} "
            f"AND bootstrap_id = {p} AND expires_at <= {p}"
        )
        now = to_epoch(datetime.now(UTC))

        def run(conn: Any) -> None:
            conn.execute(erase, (row[2], row[5], row[3], now))
            conn.execute(self._insert, row)

        self._transaction(run, duplicate=f"KeID {result.ke_id} is stored already")

    def get(self, ke_id: KeId | str) -> EnrolmentResult | None:
        """The enrolment of a KeID, Ke and credential unsealed (expired ones too: the caller
        decides); None if unknown."""
        key = ke_id_text(ke_id if isinstance(ke_id, KeId) else _parse_key(ke_id))
        sql = f"SELECT {_COLUMNS} FROM enrolments WHERE ke_id = {self._p}"
        row = self._read(sql, (key,), lambda c: c.fetchone())
        return None if row is None else self._result(row)

    def current(
        self,
        mef_fqdn: str,
        target: EnrolmentTarget,
        bootstrap_id: str,
        now: datetime | None = None,
    ) -> EnrolmentResult | None:
        """The newest live enrolment at this MEF for this target and bootstrap credential
        (to reuse), or None: none, or all expired (bootstrap again)."""
        p = self._p
        sql = (
            f"SELECT {_COLUMNS} FROM enrolments WHERE mef_fqdn = {p} AND target_key = {p} "
            f"AND bootstrap_id = {p} AND expires_at > {p} ORDER BY expires_at DESC LIMIT 1"
        )
        args = (mef_fqdn.lower(), str(target), bootstrap_id, to_epoch(now or datetime.now(UTC)))
        row = self._read(sql, args, lambda c: c.fetchone())
        return None if row is None else self._result(row)

    def list(self) -> list[tuple[KeId | str, EnrolmentTarget, datetime]]:
        """Every enrolment's KeID, target and expiry, oldest first; no key is unsealed."""
        sql = "SELECT ke_id, target_kind, target_id, naf_fqdn, expires_at FROM enrolments "
        rows = self._read(sql + "ORDER BY created, ke_id", (), lambda c: list(c.fetchall()))
        return [
            (_parse_key(k), EnrolmentTarget(TargetKind(kind), tid, naf), from_epoch(exp))
            for k, kind, tid, naf, exp in rows
        ]

    def _result(self, row: Sequence[Any]) -> EnrolmentResult:
        key, sealed, _mef, boot, enrolee_id, _tkey, kind, target_id, naf, expires, created = row
        ke_id = _parse_key(key)
        target = EnrolmentTarget(TargetKind(kind), target_id, naf)
        keys = self._sealer.unseal(
            bytes(sealed),
            _aad(ke_id, enrolee_id, target, int(expires), boot),
            what=f"the keys of KeID {ke_id}",
        )
        expiry, made = from_epoch(expires), from_epoch(created)
        return EnrolmentResult(ke_id, target, enrolee_id, expiry, boot, keys[:32], keys[32:], made)
