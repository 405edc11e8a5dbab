"""The SA records' tables and statements (seed 003 7.3.1.1.2.2 / 7.3.1.1.2.4), in one dialect.

Seed 003 gives the Initiator's and the Responder's SA Management the job of storing "the SA
keys and parameters"; :class:`~m2msec.sa.records.SaRecord` is those parameters (never a
key). Two tables hold them, in SQLite or in the ``m2msec_sa`` schema of a PostgreSQL
database (:mod:`m2msec.store.db`; docs/sa.md section 6):

- ``sa_records``: the current parameters of each SA as one side keeps it, one row per
  ``(sa_id, role)``, replaced by every later event of that SA; ``changed_at`` is the time of
  its last event and ``ended_at`` the time it stopped being live (NULL while it is, the
  first such time kept when several events end it);
- ``owner`` (schema version 2) names the process that keeps a record (``[sa] instance``),
  so that a Responder restarting after a crash closes its own stale live records and no
  other's in a shared PostgreSQL store (:meth:`~m2msec.sa.store.SaRecordStore.close_stale`);
- ``sa_history``: append-only, one row per event (``sa_id, role, event, state, at,
  cause``, with the peer, framework and key identifier copied so that history alone says
  who and with what).

Times are microseconds since the epoch, UTC (:func:`m2msec.store.db.to_micros`); an SA
identifier is its lowercase hex (:class:`~m2msec.sa.records.SaId`), as the operator types
it. Every statement is written once with the dialect's placeholder and column types.
"""

# The SQL is formatted with the dialect's placeholder and column types only, never values.
# ruff: noqa: S608

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from m2msec.sa.records import Direction, SaId, SaRecord, SaRole, SaState
from m2msec.store.db import Database, from_micros, is_text, to_micros

__all__ = [
    "PG_SCHEMA",
    "SCHEMA_VERSION",
    "SaEvent",
    "SaSql",
    "event_from_row",
    "history_row",
    "migrations",
    "record_from_row",
    "record_row",
]

SCHEMA_VERSION: Final = 2
#: The PostgreSQL schema of the SA records.
PG_SCHEMA: Final = "m2msec_sa"

#: The states in which an SA is live (:attr:`SaState.live`), for SQL.
LIVE_STATES: Final = tuple(s.value for s in SaState if s.live)

_RECORD_COLUMNS: Final = (
    "sa_id",
    "role",
    "framework",
    "local_id",
    "peer_id",
    "protocol",
    "cipher_suite",
    "key_id",
    "key_fingerprint",
    "direction",
    "established_at",
    "updated_at",
    "expires_at",
    "state",
    "cause",
    "replaced_by",
    "peer_address",
    "last_event",
    "changed_at",
    "ended_at",
    "owner",
)
_HISTORY_COLUMNS: Final = (
    "sa_id",
    "role",
    "event",
    "state",
    "at",
    "cause",
    "peer_id",
    "framework",
    "key_id",
)


def migrations(db: Database) -> dict[int, tuple[str, ...]]:
    """Each schema version's statements in ``db``'s dialect, applied in order."""
    t, w = db.key_text, db.table_suffix
    return {
        1: (
            f"""CREATE TABLE sa_records (
                   sa_id           {t} NOT NULL,
                   role            {t} NOT NULL,
                   framework       TEXT NOT NULL,
                   local_id        TEXT,
                   peer_id         {t} NOT NULL,
                   protocol        TEXT NOT NULL,
                   cipher_suite    TEXT NOT NULL,
                   key_id          TEXT,
                   key_fingerprint TEXT,
                   direction       TEXT NOT NULL,
                   established_at  BIGINT NOT NULL,
                   updated_at      BIGINT,
                   expires_at      BIGINT,
                   state           TEXT NOT NULL,
                   cause           TEXT,
                   replaced_by     TEXT,
                   peer_address    TEXT,
                   last_event      TEXT NOT NULL,
                   changed_at      BIGINT NOT NULL,
                   ended_at        BIGINT,
                   PRIMARY KEY (sa_id, role)
               ){w}""",
            "CREATE INDEX sa_records_by_time ON sa_records (established_at, sa_id, role)",
            "CREATE INDEX sa_records_by_peer ON sa_records (peer_id, established_at, sa_id, role)",
            "CREATE INDEX sa_records_by_state ON sa_records (state, established_at, sa_id, role)",
            "CREATE INDEX sa_records_by_change ON sa_records (changed_at)",
            f"""CREATE TABLE sa_history (
                   id         {db.serial_key},
                   sa_id      {t} NOT NULL,
                   role       {t} NOT NULL,
                   event      TEXT NOT NULL,
                   state      TEXT NOT NULL,
                   at         BIGINT NOT NULL,
                   cause      TEXT,
                   peer_id    {t} NOT NULL,
                   framework  TEXT NOT NULL,
                   key_id     TEXT
               )""",
            "CREATE INDEX sa_history_by_sa ON sa_history (sa_id, id)",
            "CREATE INDEX sa_history_by_peer ON sa_history (peer_id, id)",
            "CREATE INDEX sa_history_by_time ON sa_history (at)",
        ),
        2: (
            "ALTER TABLE sa_records ADD COLUMN owner TEXT",
            "CREATE INDEX sa_records_by_owner ON sa_records (owner, state)",
        ),
    }


@dataclass(frozen=True, slots=True)
class SaEvent:
    """One row of an SA's history: what happened to it, when, and its state after."""

    event_id: int
    """The row's position in the history (increasing with commit order; a paging cursor)."""
    sa_id: SaId
    role: SaRole
    event: str
    state: SaState
    at: datetime
    peer_id: str
    framework: str
    key_id: str | None = None
    cause: str | None = None


def _text(value: object, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not is_text(value):
        raise TypeError(f"SA record: {what} must be a text string")
    return value


def record_row(
    rec: SaRecord, event: str, at: datetime, owner: str | None = None
) -> tuple[Any, ...]:
    """The ``sa_records`` row of ``rec`` after ``event`` at ``at``, kept by ``owner``
    (checked: a value the database would refuse is a TypeError here, at the caller, not a
    failed batch later)."""
    if not isinstance(rec.sa_id, bytes) or not rec.sa_id:
        raise TypeError("SA record: sa_id must be a non-empty SaId")
    state = SaState(rec.state)
    return (
        rec.sa_id.hex(),
        SaRole(rec.role).value,
        _text(rec.framework, "framework"),
        _text(rec.local_id, "local_id", optional=True),
        _text(rec.peer_id, "peer_id"),
        _text(rec.protocol, "protocol"),
        _text(rec.cipher_suite, "cipher_suite"),
        _text(rec.key_id, "key_id", optional=True),
        _text(rec.key_fingerprint, "key_fingerprint", optional=True),
        Direction(rec.direction).value,
        to_micros(rec.established_at),
        to_micros(rec.updated_at),
        to_micros(rec.expires_at),
        state.value,
        _text(rec.cause, "cause", optional=True),
        None if rec.replaced_by is None else bytes(rec.replaced_by).hex(),
        _text(rec.peer_address, "peer_address", optional=True),
        _text(event, "event"),
        to_micros(at),
        None if state.live else to_micros(at),
        _text(owner, "owner", optional=True),
    )


def history_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The ``sa_history`` row of an event, from its :func:`record_row`."""
    return (row[0], row[1], row[17], row[13], row[18], row[14], row[4], row[2], row[7])


def record_from_row(row: Any) -> SaRecord:
    """An :class:`SaRecord` from a ``SELECT`` of :attr:`SaSql.record_columns`."""
    return SaRecord(
        sa_id=SaId(bytes.fromhex(row[0])),
        role=SaRole(row[1]),
        framework=row[2],
        local_id=row[3],
        peer_id=row[4],
        protocol=row[5],
        cipher_suite=row[6],
        key_id=row[7],
        key_fingerprint=row[8],
        direction=Direction(row[9]),
        established_at=from_micros(int(row[10])),
        updated_at=from_micros(None if row[11] is None else int(row[11])),
        expires_at=from_micros(None if row[12] is None else int(row[12])),
        state=SaState(row[13]),
        cause=row[14],
        replaced_by=None if row[15] is None else SaId(bytes.fromhex(row[15])),
        peer_address=row[16],
    )


def event_from_row(row: Any) -> SaEvent:
    """An :class:`SaEvent` from a ``SELECT`` of :attr:`SaSql.history_columns`."""
    return SaEvent(
        event_id=int(row[0]),
        sa_id=SaId(bytes.fromhex(row[1])),
        role=SaRole(row[2]),
        event=row[3],
        state=SaState(row[4]),
        at=from_micros(int(row[5])),
        cause=row[6],
        peer_id=row[7],
        framework=row[8],
        key_id=row[9],
    )


class SaSql:
    """The statements of the SA records in ``db``'s dialect (written once, formatted here)."""

    record_columns: Final = ", ".join(_RECORD_COLUMNS[:17])
    history_columns: Final = "id, " + ", ".join(_HISTORY_COLUMNS)

    def __init__(self, db: Database) -> None:
        p = db.p
        marks = ", ".join([p] * len(_RECORD_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _RECORD_COLUMNS[2:] if c != "ended_at")
        self.upsert = (
            f"INSERT INTO sa_records ({', '.join(_RECORD_COLUMNS)}) VALUES ({marks}) "
            f"ON CONFLICT (sa_id, role) DO UPDATE SET {updates}, "
            "ended_at = CASE WHEN excluded.ended_at IS NULL THEN NULL "
            "ELSE COALESCE(sa_records.ended_at, excluded.ended_at) END"
        )
        self.append = (
            f"INSERT INTO sa_history ({', '.join(_HISTORY_COLUMNS)}) "
            f"VALUES ({', '.join([p] * len(_HISTORY_COLUMNS))})"
        )
        self.get = (
            f"SELECT {self.record_columns} FROM sa_records WHERE sa_id = {p} "
            "ORDER BY changed_at DESC"
        )
        self.get_role = (
            f"SELECT {self.record_columns} FROM sa_records WHERE sa_id = {p} AND role = {p}"
        )
        live = ", ".join(f"'{s}'" for s in LIVE_STATES)
        self.live_states = live
        # A crashed process's live records, closed by its successor (the same owner).
        closed = SaState.CLOSED.value
        mine = f"owner = {p} AND role = {p} AND state IN ({live})"
        self.close_stale_history = (
            "INSERT INTO sa_history (sa_id, role, event, state, at, cause, peer_id, "
            f"framework, key_id) SELECT sa_id, role, '{closed}', '{closed}', {p}, {p}, "
            f"peer_id, framework, key_id FROM sa_records WHERE {mine}"
        )
        self.close_stale = (
            f"UPDATE sa_records SET state = '{closed}', last_event = '{closed}', "
            f"cause = {p}, updated_at = {p}, changed_at = {p}, ended_at = {p} WHERE {mine}"
        )
        self.prune_history = (
            "DELETE FROM sa_history WHERE id IN "
            f"(SELECT id FROM sa_history WHERE at < {p} ORDER BY id LIMIT {p})"
        )
        self.prune_records = (
            "DELETE FROM sa_records WHERE (sa_id, role) IN "
            "(SELECT sa_id, role FROM sa_records WHERE "
            f"(state NOT IN ({live}) AND changed_at < {p}) "
            f"OR (expires_at IS NOT NULL AND expires_at < {p}) LIMIT {p})"
        )
        self.p = p
