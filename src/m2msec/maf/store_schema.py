"""The MAF store's tables and statements (TS-0003 8.8), in the dialect of one Database.

The tables hold the MAF Clients' Master Credentials (``clients``, 8.8.3.1, with the MAF
Client Configuration of 8.8.2.4), the Entity B identities keys may go to (``entity_b``,
8.2.2.3), MAF Client Registration records (``registrations``, 8.8.2.3), Key Registrations
(``keys``, 8.8.2.7; a de-registered key, 8.8.2.10, keeps its row without its value), the
audit journal (``audit``) and ``meta`` (the sealed KEK check value and ``config-version``).

Every statement is written once, against :class:`~m2msec.store.db.Database`'s ``p``
(placeholder), ``key_text``, ``blob``, ``table_suffix``, ``serial_key`` and ``for_update``;
:func:`m2msec.store.schema.open_sealed_schema` applies :func:`migrations`, SQLite and
PostgreSQL alike. PostgreSQL schemas made before that (``maf/store_pg.py``, their version
in a ``meta`` row) are taken over by :func:`adopt_legacy_schema` (from
:func:`inspect_maf_schema`, which a MAF store runs before its migrations).

``config-version`` is a random value rewritten in the transaction of every change to
clients, entity_b or registrations, by any process: the read caches compare it. It is not
the database's change counter (``data_version``), which every Key Registration moves.
"""

# The SQL is formatted with the dialect's placeholder and column types only, never values.
# ruff: noqa: S608

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, Literal

from m2msec.errors import StoreError
from m2msec.maf.store_records import (
    ClientRegistration,
    MafClientInfo,
    MafKey,
    json_tuple,
    kc_aad,
    stored_time,
)
from m2msec.store.db import Connection, Database, PostgresDatabase, SqliteDatabase, open_database
from m2msec.store.schema import KekCheck, SealedSchema
from m2msec.store.seal import Sealer, sealed_plaintext_length

__all__ = [
    "KEK_CHECK",
    "MAF_SCHEMA",
    "SCHEMA_VERSION",
    "KeyRow",
    "MafSql",
    "adopt_legacy_schema",
    "client_info_from_row",
    "inspect_maf_schema",
    "key_from_row",
    "maf_database",
    "migrations",
    "new_config_version",
    "registration_from_row",
]

SCHEMA_VERSION: Final = 3

KEK_CHECK: Final = KekCheck(
    b"m2msec/maf/meta/kek-check", b"m2msec MAF key-encryption key check, version 1"
)


def migrations(db: Database) -> dict[int, tuple[str, ...]]:
    """Each schema version's statements in ``db``'s dialect, applied in order."""
    t, b, w = db.key_text, db.blob, db.table_suffix
    return {
        1: (
            f"CREATE TABLE meta (name {t} PRIMARY KEY, value {b} NOT NULL){w}",
            f"""CREATE TABLE clients (
                   km_id      {t} PRIMARY KEY,
                   km_id_text {t} NOT NULL,
                   km         {b} NOT NULL,
                   entity_id  {t},
                   created    BIGINT NOT NULL,
                   enabled    INTEGER NOT NULL DEFAULT 1,
                   config     TEXT
               ){w}""",
            f"CREATE TABLE entity_b (entity_id {t} PRIMARY KEY, created BIGINT NOT NULL){w}",
            f"""CREATE TABLE registrations (
                   reg_id     {t} PRIMARY KEY,
                   km_id      {t} NOT NULL,
                   expires_at BIGINT NOT NULL,
                   labels     TEXT,
                   admin_fqdn {t} NOT NULL,
                   created    BIGINT NOT NULL
               ){w}""",
            "CREATE INDEX registrations_km ON registrations (km_id)",
            f"""CREATE TABLE keys (
                   rel_id       {t} PRIMARY KEY,
                   kc           {b},
                   expires_at   BIGINT NOT NULL,
                   km_id        {t} NOT NULL,
                   suid         INTEGER NOT NULL,
                   target_ids   TEXT NOT NULL,
                   labels       TEXT,
                   admin_fqdn   {t} NOT NULL,
                   reg_id       {t},
                   created      BIGINT NOT NULL,
                   deregistered INTEGER NOT NULL DEFAULT 0
               ){w}""",
            # No secondary index on keys: every index is one more page written per Key
            # Registration; the scans by KmId, registration or expiry are rare admin work.
            f"CREATE TABLE audit (seq {db.serial_key}, time BIGINT NOT NULL, "
            "record TEXT NOT NULL)",
            "INSERT INTO meta (name, value) VALUES ('config-version', '')",
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


MAF_SCHEMA: Final = SealedSchema(migrations, SCHEMA_VERSION, KEK_CHECK)


def new_config_version() -> bytes:
    """A fresh ``config-version`` value (only compared for equality)."""
    return os.urandom(8)


def inspect_maf_schema(db: Database, conn: Connection) -> None:
    """What a MAF store checks of the database it opens, before its migrations: a SQLite
    file holding a psk-lookup-table is refused, a legacy PostgreSQL schema adopted."""
    if isinstance(db, SqliteDatabase):
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        }
        if "psk" in tables and "keys" not in tables:
            raise StoreError(f"{db.path} is a psk-lookup-table (m2msec psk), not a MAF store")
    adopt_legacy_schema(db, conn, f"MAF store {db.label}")


def adopt_legacy_schema(db: Database, conn: Connection, label: str) -> None:
    """Take over a PostgreSQL MAF schema made by ``maf/store_pg.py`` (before issue 10).

    That layout kept its version in ``meta`` ('schema-version', counter) and matches
    :func:`migrations` otherwise. Its version moves to the Database's ``schema_version``
    under the migration lock; :func:`~m2msec.store.schema.open_sealed_schema` then
    upgrades it as any other. SQLite files always had ``PRAGMA user_version``.
    """
    if not isinstance(db, PostgresDatabase) or db.schema_version(conn) != 0:
        return
    if not conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]:
        return  # a new schema
    with db.transaction(conn, exclusive=True):
        if db.schema_version(conn) != 0:
            return  # adopted by another process meanwhile
        row = conn.execute("SELECT counter FROM meta WHERE name = 'schema-version'").fetchone()
        if row is None:
            raise StoreError(f"{label}: schema {db.schema} is not a MAF store")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{label} has schema version {version}; this version of m2msec reads up "
                f"to {SCHEMA_VERSION}"
            )
        db.set_schema_version(conn, version)
        conn.execute("DELETE FROM meta WHERE name = 'schema-version'")
        conn.execute(
            f"UPDATE meta SET value = {db.p} WHERE name = 'config-version'",
            (new_config_version(),),
        )


KeyRow = tuple[str, bytes | None, int, str, int, str, str | None, str, str | None, int, int, int]


def key_from_row(sealer: Sealer, row: KeyRow, *, unseal: bool) -> MafKey:
    """A :class:`MafKey` from the columns :attr:`MafSql.key_columns`; Kc unsealed if asked."""
    rel, sealed, expires, km_id, suid, targets, labels, admin, reg_id, created, dereg, us = row
    kc: bytes | None = None
    if unseal and sealed is not None:
        kc = sealer.unseal(
            bytes(sealed),
            kc_aad(rel, km_id, suid, targets, expires, us),
            what=f"the key value of RelativeKeyID {rel}",
        )
    target_ids = json_tuple(targets)
    assert target_ids is not None
    return MafKey(
        rel,
        kc,
        stored_time(expires, us),
        km_id,
        suid,
        target_ids,
        admin,
        json_tuple(labels),
        reg_id,
        stored_time(created),
        bool(dereg),
    )


def registration_from_row(row: Any) -> ClientRegistration:
    """A :class:`ClientRegistration` from the columns of :attr:`MafSql.select_registration`."""
    rid, km, expires, admin, labels, created, us = row
    return ClientRegistration(
        rid, km, stored_time(expires, us), admin, json_tuple(labels), stored_time(created)
    )


def client_info_from_row(row: tuple[Any, ...]) -> MafClientInfo:
    """A :class:`MafClientInfo` from the columns of :attr:`MafSql.client_info`."""
    text, canonical, entity_id, created, enabled, sealed_len, has_config = row
    return MafClientInfo(
        text,
        canonical,
        entity_id,
        stored_time(created),
        bool(enabled),
        sealed_plaintext_length(sealed_len),
        bool(has_config),
    )


def maf_database(
    target: str | os.PathLike[str] | Database,
    *,
    busy_timeout: float,
    synchronous: Literal["FULL", "NORMAL"],
    schema: str,
    home: str | os.PathLike[str] | None,
    connect_timeout: float,
) -> Database:
    """The Database of a MAF store: SQLite with ``secure_delete`` (erased key values are
    overwritten on disk), or PostgreSQL with the MAF's session settings."""
    if isinstance(target, Database):
        return target
    db = open_database(target, pg_schema=schema, busy_timeout=busy_timeout)
    if isinstance(db, SqliteDatabase):
        return SqliteDatabase(
            db.path, busy_timeout=busy_timeout, synchronous=synchronous, secure_delete=True
        )
    assert isinstance(db, PostgresDatabase)
    commit = "on" if synchronous == "FULL" else "off"
    return PostgresDatabase(
        db.url,
        schema=schema,
        home=Path(home).expanduser() if home is not None else None,
        settings={"synchronous_commit": commit},
        application_name="m2msec-maf",
        connect_timeout=connect_timeout,
        what="MAF store",
    )


class MafSql:
    """The MAF store's statements, written once with ``db.p`` as placeholder."""

    key_columns: Final = (
        "rel_id, kc, expires_at, km_id, suid, target_ids, labels, admin_fqdn, reg_id, "
        "created, deregistered, expires_us"
    )

    def __init__(self, db: Database) -> None:
        p = self.p = db.p
        cols = self.key_columns
        # config-version (module docstring)
        self.bump_config = f"UPDATE meta SET value = {p} WHERE name = 'config-version'"
        self.config_version = "SELECT value FROM meta WHERE name = 'config-version'"
        # keys
        self.select_key = f"SELECT {cols} FROM keys WHERE rel_id = {p}"
        self.select_key_for_update = self.select_key + db.for_update
        # "ON CONFLICT ... DO NOTHING" rather than catching the integrity error: in
        # PostgreSQL an error would abort the whole group transaction, and a concurrent
        # insert of the same RelativeKeyID by another MAF instance waits for that one to
        # commit, then writes nothing (rowcount 0): the loser sees a duplicate, never an error.
        self.insert_key = (
            f"INSERT INTO keys ({cols}) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, "
            f"{p}, 0, {p}) ON CONFLICT (rel_id) DO NOTHING"
        )
        self.update_key = (
            f"UPDATE keys SET kc = {p}, expires_at = {p}, expires_us = {p}, target_ids = {p}, "
            f"labels = {p} WHERE rel_id = {p}"
        )
        erase = "UPDATE keys SET kc = NULL, deregistered = 1 WHERE"
        self.deregister_key = f"{erase} rel_id = {p} AND deregistered = 0"
        self.deregister_keys_of_km = f"{erase} km_id = {p} AND deregistered = 0"
        self.deregister_keys_of_reg = f"{erase} reg_id = {p} AND deregistered = 0"
        self.list_keys = f"SELECT {cols} FROM keys WHERE rel_id > {p} ORDER BY rel_id LIMIT {p}"
        self.list_keys_of = (
            f"SELECT {cols} FROM keys WHERE rel_id > {p} AND km_id = {p} "
            f"ORDER BY rel_id LIMIT {p}"
        )
        self.count_keys = "SELECT count(*) FROM keys"
        self.count_live_keys = (
            f"SELECT count(*) FROM keys WHERE deregistered = 0 AND (expires_at > {p} OR "
            f"(expires_at = {p} AND expires_us > {p}))"
        )
        self.purge_keys = f"DELETE FROM keys WHERE expires_at <= {p}"
        # registrations
        self.select_registration = (
            "SELECT reg_id, km_id, expires_at, admin_fqdn, labels, created, expires_us "
            f"FROM registrations WHERE reg_id = {p}"
        )
        self.live_registration = (
            f"SELECT reg_id FROM registrations WHERE km_id = {p} AND lower(admin_fqdn) = {p} "
            "ORDER BY expires_at DESC, expires_us DESC LIMIT 1"
        )
        self.list_registrations = "SELECT reg_id FROM registrations ORDER BY reg_id"
        self.list_registrations_of = (
            f"SELECT reg_id FROM registrations WHERE km_id = {p} ORDER BY reg_id"
        )
        self.insert_registration = (
            "INSERT INTO registrations (reg_id, km_id, expires_at, expires_us, labels, "
            f"admin_fqdn, created) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) "
            "ON CONFLICT (reg_id) DO NOTHING"
        )
        self.registration_expiry = f"expires_at = {p}, expires_us = {p}"
        self.registration_labels = f"labels = {p}"
        self.delete_registration = f"DELETE FROM registrations WHERE reg_id = {p}"
        self.delete_registrations_of = f"DELETE FROM registrations WHERE km_id = {p}"
        self.purge_registrations = f"DELETE FROM registrations WHERE expires_at <= {p}"
        # clients
        insert_client = (
            "INSERT INTO clients (km_id, km_id_text, km, entity_id, created, enabled) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, 1) "
        )
        self.add_client = insert_client + "ON CONFLICT (km_id) DO NOTHING"
        # A replaced client keeps its MAF Client Configuration.
        self.replace_client = insert_client + (
            "ON CONFLICT (km_id) DO UPDATE SET km_id_text = excluded.km_id_text, "
            "km = excluded.km, entity_id = excluded.entity_id, created = excluded.created, "
            "enabled = 1"
        )
        self.delete_client = f"DELETE FROM clients WHERE km_id = {p}"
        self.enable_client = f"UPDATE clients SET enabled = {p} WHERE km_id = {p}"
        self.set_client_config = f"UPDATE clients SET config = {p} WHERE km_id = {p}"
        self.client_config = f"SELECT config FROM clients WHERE km_id = {p}"
        self.select_client = (
            f"SELECT km_id_text, km, entity_id, enabled FROM clients WHERE km_id = {p}"
        )
        info = (
            "SELECT km_id_text, km_id, entity_id, created, enabled, length(km), "
            "config IS NOT NULL FROM clients"
        )
        self.client_info = f"{info} WHERE km_id = {p}"
        self.list_clients = f"{info} ORDER BY km_id"
        # Entity B
        self.add_entity_b = (
            f"INSERT INTO entity_b (entity_id, created, kind) VALUES ({p}, {p}, {p}) "
            "ON CONFLICT (entity_id) DO NOTHING"
        )
        self.entity_b_kinds = "SELECT entity_id, kind FROM entity_b ORDER BY entity_id"
        self.remove_entity_b = f"DELETE FROM entity_b WHERE entity_id = {p}"
        self.list_entity_b = "SELECT entity_id FROM entity_b ORDER BY entity_id"
        # audit
        self.append_audit = f"INSERT INTO audit (time, record) VALUES ({p}, {p})"
        self.purge_audit = f"DELETE FROM audit WHERE time < {p}"
        self.read_audit = f"SELECT seq, record FROM audit WHERE seq > {p} ORDER BY seq LIMIT {p}"
        self.count_audit = "SELECT count(*) FROM audit"
