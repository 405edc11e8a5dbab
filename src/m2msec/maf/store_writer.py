"""The write operations of one MAF store transaction (TS-0003 8.8).

Key Registration (8.8.2.7), update (8.8.2.9) and de-registration (8.8.2.10) of keys;
MAF Client Registration records (8.8.2.3, their update and deletion); the audit journal
(:mod:`m2msec.maf.audit`: records appended in the transaction of the change they record, so
a key is never committed without its "key-issued" record nor the other way round); and
the purge of expired keys, registrations and audit records after their retention.

A :class:`MafWriter` is handed out by :meth:`m2msec.maf.store.MafStore.writer`, which
commits or rolls back; it works on any :class:`~m2msec.store.db.Database` dialect.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from m2msec.errors import ConfigurationError, DuplicateCredentialError
from m2msec.maf.store_records import (
    ClientRegistration,
    MafKey,
    NewKey,
    check_key,
    epoch,
    json_list,
    kc_aad,
    micros,
    parse_relative_key_id,
    utc_now,
)
from m2msec.maf.store_schema import MafSql, key_from_row, new_config_version, registration_from_row
from m2msec.store.db import Connection
from m2msec.store.seal import Sealer

__all__ = ["UNSET", "MafWriter"]

#: "Leave unchanged" for arguments where None is a value (labels).
UNSET: Final[Any] = object()


class MafWriter:
    """The write operations of one open transaction (see :meth:`MafStore.writer`).

    Use :meth:`savepoint` to make one operation all-or-nothing inside a larger batch.
    """

    def __init__(self, conn: Connection, sql: MafSql, sealer: Sealer) -> None:
        self._conn = conn
        self._sql = sql
        self._sealer = sealer
        self._sp = 0
        self.config_changed = False

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> Any:
        """Run one statement of this transaction (the store's own operations use it)."""
        return self._conn.execute(sql, args)

    def bump_config(self) -> None:
        """Record a change to clients, entity_b or registrations (the read caches of every
        process drop)."""
        self._conn.execute(self._sql.bump_config, (new_config_version(),))
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
        check_key(key.kc, "the key value")
        if not 0 < key.suid < 100:
            raise ConfigurationError(f"SUID {key.suid} is out of range")
        targets = json_list(key.target_ids)
        assert targets is not None
        expires, us = epoch(key.expires_at), micros(key.expires_at)
        sealed = self._sealer.seal(key.kc, kc_aad(rel, key.km_id, key.suid, targets, expires, us))
        row = (
            rel,
            sealed,
            expires,
            key.km_id,
            key.suid,
            targets,
            json_list(key.labels),
            key.admin_fqdn,
            key.reg_id,
            epoch(now or utc_now()),
            us,
        )
        return bool(self._conn.execute(self._sql.insert_key, row).rowcount > 0)

    def get_key(self, rel_id: str | bytes) -> MafKey | None:
        """Read a key inside this transaction (unsealed), locked for update."""
        row = self._conn.execute(
            self._sql.select_key_for_update, (parse_relative_key_id(rel_id),)
        ).fetchone()
        return None if row is None else key_from_row(self._sealer, row, unseal=True)

    def update_key(
        self,
        rel_id: str | bytes,
        *,
        expires_at: datetime | None = None,
        labels: tuple[str, ...] | None = UNSET,
        target_ids: tuple[str, ...] | None = None,
    ) -> MafKey | None:
        """Change a key's metadata (8.8.2.9), re-sealing Kc; None if there is no such key
        or it is de-registered."""
        key = self.get_key(rel_id)
        if key is None or key.deregistered or key.kc is None:
            return None
        new_expires = key.expires_at if expires_at is None else expires_at
        new_targets = key.target_ids if target_ids is None else tuple(target_ids)
        new_labels = key.labels if labels is UNSET else labels
        targets = json_list(new_targets)
        assert targets is not None
        expires, us = epoch(new_expires), micros(new_expires)
        sealed = self._sealer.seal(
            key.kc, kc_aad(key.relative_id, key.km_id, key.suid, targets, expires, us)
        )
        self._conn.execute(
            self._sql.update_key,
            (sealed, expires, us, targets, json_list(new_labels), key.relative_id),
        )
        return self.get_key(key.relative_id)

    def deregister_key(self, rel_id: str | bytes) -> bool:
        """De-register (8.8.2.10): erase Kc, keep the row as a tombstone."""
        cursor = self._conn.execute(self._sql.deregister_key, (parse_relative_key_id(rel_id),))
        return bool(cursor.rowcount > 0)

    def deregister_keys_of(self, *, km_id: str | None = None, reg_id: str | None = None) -> int:
        """De-register every live key of a KmId or of a client registration."""
        if km_id is not None:
            sql, arg = self._sql.deregister_keys_of_km, km_id
        elif reg_id is not None:
            sql, arg = self._sql.deregister_keys_of_reg, reg_id
        else:
            raise ValueError("give km_id or reg_id")
        return int(self._conn.execute(sql, (arg,)).rowcount)

    # -- client registrations -----------------------------------------------------------
    def insert_registration(self, reg: ClientRegistration, *, now: datetime | None = None) -> None:
        cursor = self._conn.execute(
            self._sql.insert_registration,
            (
                reg.reg_id,
                reg.km_id,
                epoch(reg.expires_at),
                micros(reg.expires_at),
                json_list(reg.labels),
                reg.admin_fqdn,
                epoch(reg.created or now or utc_now()),
            ),
        )
        if cursor.rowcount == 0:
            raise DuplicateCredentialError(f"mafClientRegID {reg.reg_id!r} already exists")
        self.bump_config()

    def get_registration(self, reg_id: str) -> ClientRegistration | None:
        """Read a registration inside this transaction."""
        row = self._conn.execute(self._sql.select_registration, (reg_id,)).fetchone()
        return None if row is None else registration_from_row(row)

    def update_registration(
        self,
        reg_id: str,
        *,
        expires_at: datetime | None = None,
        labels: tuple[str, ...] | None = UNSET,
    ) -> ClientRegistration | None:
        sets: list[str] = []
        args: list[object] = []
        if expires_at is not None:
            sets.append(self._sql.registration_expiry)
            args.extend((epoch(expires_at), micros(expires_at)))
        if labels is not UNSET:
            sets.append(self._sql.registration_labels)
            args.append(json_list(labels))
        if sets:
            p = self._sql.p
            self._conn.execute(
                f"UPDATE registrations SET {', '.join(sets)} WHERE reg_id = {p}",  # noqa: S608
                (*args, reg_id),
            )
            self.bump_config()
        return self.get_registration(reg_id)

    def delete_registration(self, reg_id: str) -> tuple[bool, int]:
        """Remove a registration and de-register the keys made under it: (found, keys)."""
        cursor = self._conn.execute(self._sql.delete_registration, (reg_id,))
        if cursor.rowcount == 0:
            return False, 0
        self.bump_config()
        return True, self.deregister_keys_of(reg_id=reg_id)

    # -- audit --------------------------------------------------------------------------
    def append_audit(
        self, records: Sequence[Mapping[str, Any]], *, now: datetime | None = None
    ) -> None:
        """Append audit records (already free of key material, see m2msec.maf.audit)."""
        if not records:
            return
        stamp = epoch(now or utc_now())
        rows = [
            (stamp, json.dumps(dict(r), separators=(",", ":"), ensure_ascii=False))
            for r in records
        ]
        cursor = self._conn.cursor()
        try:
            cursor.executemany(self._sql.append_audit, rows)
        finally:
            cursor.close()

    def purge_audit(self, before: datetime) -> int:
        """Delete audit records older than ``before``."""
        return int(self._conn.execute(self._sql.purge_audit, (epoch(before),)).rowcount)

    # -- housekeeping -------------------------------------------------------------------
    def purge(self, now: datetime, retention: timedelta) -> tuple[int, int]:
        """Delete keys and registrations that expired more than ``retention`` ago."""
        cutoff = epoch(now - retention)
        keys = self._conn.execute(self._sql.purge_keys, (cutoff,)).rowcount
        regs = self._conn.execute(self._sql.purge_registrations, (cutoff,)).rowcount
        if regs:
            self.bump_config()
        return int(keys), int(regs)
