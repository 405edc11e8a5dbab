"""The state table of one Security Association and what both SA Managements share.

Seed 003 7.3.1.1.2.2 / 7.3.1.1.2.4: each side's SA Management stores the SA parameters
(an :class:`~m2msec.sa.records.SaRecord`, never a key). Every change of an SA's state
goes through :data:`TRANSITIONS` (state x event -> state, h11 style); any other change
raises :class:`~m2msec.sa.outcomes.IllegalTransition`. Each change is handed to a
:class:`RecordSink` with its :class:`SaEvent`. :class:`SaManagementBase` holds the live
SAs of one side, the Send / Receive checks (7.3.4, 7.3.5), expiry, the end of sessions and
Remove (7.3.6); :mod:`m2msec.sa.management` adds the two roles.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Protocol

from m2msec.sa.flows import (
    Acceptance,
    CauseOfRejection,
    RemoveRejection,
    RemoveSaConfirm,
    SaParameters,
    SaRemovalConfirm,
    SaRemoved,
)
from m2msec.sa.outcomes import IllegalTransition, RemoveOutcome, SaUnavailable
from m2msec.sa.records import Direction, SaId, SaRecord, SaRole, SaState
from m2msec.tls.context import SecurityContext

__all__ = [
    "DEFAULT_TOMBSTONES",
    "DEFAULT_UPDATE_TIMEOUT",
    "TRANSITIONS",
    "Clock",
    "MemorySink",
    "RecordSink",
    "SaEvent",
    "SaManagementBase",
    "sa_parameters",
]

log = logging.getLogger("m2msec.sa.management")


class SaEvent(enum.StrEnum):
    """What happened to an SA: the events of :data:`TRANSITIONS`, as given to a sink."""

    ESTABLISHED = "established"
    REFUSED = "refused"  # the Responder Agent or the Initiator's check refused it
    FAILED = "failed"  # the handshake failed
    UPDATING = "updating"  # an Update SA started; the SA stays live
    UPDATED = "updated"  # replaced by a new SA (``replaced_by``)
    UPDATE_REJECTED = "update-rejected"  # no new SA came: the old one keeps working
    REMOVED = "removed"
    EXPIRED = "expired"
    CLOSED = "closed"  # the session ended without a Remove


_S, _E = SaState, SaEvent

#: The state table of one SA: (state, event) -> next state. Nothing else is allowed.
TRANSITIONS: Mapping[tuple[SaState, SaEvent], SaState] = MappingProxyType(
    {
        (_S.ESTABLISHING, _E.ESTABLISHED): _S.ESTABLISHED,
        (_S.ESTABLISHING, _E.REFUSED): _S.FAILED,
        (_S.ESTABLISHING, _E.FAILED): _S.FAILED,
        (_S.ESTABLISHED, _E.UPDATING): _S.UPDATING,
        (_S.ESTABLISHED, _E.REMOVED): _S.REMOVED,
        (_S.ESTABLISHED, _E.EXPIRED): _S.EXPIRED,
        (_S.ESTABLISHED, _E.CLOSED): _S.CLOSED,
        (_S.UPDATING, _E.UPDATED): _S.UPDATED,
        (_S.UPDATING, _E.UPDATE_REJECTED): _S.ESTABLISHED,
        (_S.UPDATING, _E.REMOVED): _S.REMOVED,
        (_S.UPDATING, _E.EXPIRED): _S.EXPIRED,
        (_S.UPDATING, _E.CLOSED): _S.CLOSED,
    }
)


class RecordSink(Protocol):
    """Where the SA records go with each event: must not block (enqueue, then return)."""

    def record(self, rec: SaRecord, event: str) -> None: ...


class MemorySink:
    """A :class:`RecordSink` keeping ``(record, event)`` in a list (tests, demos)."""

    def __init__(self) -> None:
        self.entries: list[tuple[SaRecord, str]] = []

    def record(self, rec: SaRecord, event: str) -> None:
        self.entries.append((rec, event))

    def events(self, sa_id: SaId | None = None) -> list[str]:
        return [e for r, e in self.entries if sa_id is None or r.sa_id == sa_id]


class _NoSink:
    def record(self, rec: SaRecord, event: str) -> None:
        return None


Clock = Callable[[], datetime]

#: How long an update may take before it is rejected (the old SA keeps working).
DEFAULT_UPDATE_TIMEOUT = timedelta(seconds=60)
#: Ended SAs remembered to answer "SA Identifier already marked invalid" (table 42).
DEFAULT_TOMBSTONES = 4096


def _utcnow() -> datetime:
    return datetime.now(UTC)


def sa_parameters(ctx: SecurityContext) -> SaParameters:
    return SaParameters(
        framework=str(ctx.framework),
        protocol=ctx.protocol,
        cipher_suite=ctx.cipher_suite,
        key_id=ctx.key_id,
        key_fingerprint=ctx.key_fingerprint,
        valid_until=ctx.valid_until,
    )


class SaManagementBase:
    """What both SA Managements share: the live SAs, the state table, send/receive checks,
    expiry, closing and removal."""

    role: SaRole

    def __init__(
        self,
        sink: RecordSink | None,
        clock: Clock | None,
        update_timeout: timedelta,
        tombstones: int,
    ) -> None:
        self._sink: RecordSink = sink if sink is not None else _NoSink()
        self._clock: Clock = clock or _utcnow
        self.update_timeout = update_timeout
        self._records: dict[SaId, SaRecord] = {}
        self._open: set[SaId] = set()
        self._deadlines: dict[SaId, datetime] = {}
        self._gone: OrderedDict[SaId, SaState] = OrderedDict()
        self._tombstones = tombstones

    # -- reading ---------------------------------------------------------------------------
    def get(self, sa_id: SaId) -> SaRecord | None:
        """The live SA ``sa_id`` (established or updating), or None."""
        return self._records.get(sa_id)

    def live(self) -> Iterator[SaRecord]:
        return iter(list(self._records.values()))

    def find(self, *, peer_id: str | None = None, key_id: str | None = None) -> list[SaRecord]:
        """The live SAs with that peer and/or key identifier (e.g. to remove the SAs of a
        removed credential)."""
        return [
            r
            for r in self._records.values()
            if (peer_id is None or r.peer_id == peer_id) and (key_id is None or r.key_id == key_id)
        ]

    # -- the state table -------------------------------------------------------------------
    def _transition(self, rec: SaRecord, event: SaEvent, **changes: object) -> SaRecord:
        state = TRANSITIONS.get((rec.state, event))
        if state is None:
            raise IllegalTransition(rec.sa_id, rec.state, event.value)
        new = replace(rec, state=state, **changes)  # type: ignore[arg-type]
        if state.live:
            self._records[new.sa_id] = new
        else:
            self._records.pop(new.sa_id, None)
            self._open.discard(new.sa_id)
            self._deadlines.pop(new.sa_id, None)
            self._gone[new.sa_id] = state
            while len(self._gone) > self._tombstones:
                self._gone.popitem(last=False)
        self._emit(new, event)
        return new

    def _emit(self, rec: SaRecord, event: SaEvent) -> None:
        try:
            self._sink.record(rec, event.value)
        except Exception as exc:  # a sink must not fail the handshake path
            log.warning(
                "SA record sink failed on %s of %s: %s", event, rec.sa_id, type(exc).__name__
            )

    def _new_record(
        self, ctx: SecurityContext, peer_address: str | None, now: datetime
    ) -> SaRecord:
        sa_id = SaId.from_hex(ctx.sa_id)
        known = self._records.get(sa_id)
        state = known.state if known is not None else self._gone.get(sa_id)
        if state is not None:  # one session is established once
            raise IllegalTransition(sa_id, state, _E.ESTABLISHED.value)
        return SaRecord(
            sa_id=sa_id,
            role=self.role,
            framework=str(ctx.framework),
            local_id=ctx.local_id,
            peer_id=ctx.peer_id,
            protocol=ctx.protocol,
            cipher_suite=ctx.cipher_suite,
            key_id=ctx.key_id,
            key_fingerprint=ctx.key_fingerprint,
            direction=Direction.BOTH,
            established_at=now,
            state=SaState.ESTABLISHING,
            expires_at=ctx.valid_until,
            peer_address=peer_address,
        )

    def _established(self, rec: SaRecord) -> SaRecord:
        rec = self._transition(rec, _E.ESTABLISHED)
        self._open.add(rec.sa_id)
        return rec

    def _failed_record(
        self,
        reason: str,
        cause: CauseOfRejection,
        *,
        framework: str,
        peer_id: str | None,
        protocol: str,
        cipher_suite: str,
        peer_address: str | None,
        now: datetime,
    ) -> SaRecord:
        # No session, so no exporter value: 16 random octets name the attempt's record.
        rec = SaRecord(
            sa_id=SaId(secrets.token_bytes(16)),
            role=self.role,
            framework=framework,
            local_id=None,
            peer_id=peer_id or "",
            protocol=protocol,
            cipher_suite=cipher_suite,
            key_id=None,
            key_fingerprint=None,
            direction=Direction.BOTH,
            established_at=now,
            state=SaState.ESTABLISHING,
            peer_address=peer_address,
        )
        return self._transition(rec, _E.FAILED, cause=f"{cause.value}: {reason}")

    # -- Send / Receive Secured Message (7.3.4, 7.3.5) ---------------------------------------
    def check_send(self, sa_id: SaId, now: datetime | None = None) -> SaRecord:
        """The SA to protect an outgoing message with; :class:`SaUnavailable` if there is
        none usable (unknown, removed, expired, session closed): never send in clear."""
        return self._usable(sa_id, now, "send")

    def check_receive(self, sa_id: SaId, now: datetime | None = None) -> SaRecord:
        """The SA an incoming message arrived over; :class:`SaUnavailable` if it may no
        longer be used: the message is refused, not served."""
        return self._usable(sa_id, now, "receive")

    def _usable(self, sa_id: SaId, now: datetime | None, what: str) -> SaRecord:
        rec = self._records.get(sa_id)
        if rec is None:
            state = self._gone.get(sa_id)
            why = f"the SA is {state.value}" if state is not None else "unknown SA"
            raise SaUnavailable(sa_id, f"cannot {what}: {why}", state)
        now = now or self._clock()
        if rec.expires_at is not None and now >= rec.expires_at:
            rec = self._transition(
                rec, _E.EXPIRED, updated_at=now, cause="the key's lifetime ended"
            )
            raise SaUnavailable(sa_id, f"cannot {what}: the SA has expired", rec.state)
        if sa_id not in self._open:
            raise SaUnavailable(sa_id, f"cannot {what}: its session is closed", rec.state)
        return rec

    # -- expiry and the end of sessions ------------------------------------------------------
    def expire_due(self, now: datetime | None = None) -> list[RemoveOutcome]:
        """Expire every SA whose key's lifetime has ended (close and evict its session),
        and settle every update past its deadline (the old SA keeps working if its session
        is open, else it is closed)."""
        now = now or self._clock()
        out: list[RemoveOutcome] = []
        for rec in list(self._records.values()):
            if rec.expires_at is not None and now >= rec.expires_at:
                was_open = rec.sa_id in self._open
                done = self._transition(
                    rec, _E.EXPIRED, updated_at=now, cause="the key's lifetime ended"
                )
                out.append(RemoveOutcome(done.sa_id, True, was_open, True, done))
        for sa_id, deadline in list(self._deadlines.items()):
            updating = self._records.get(sa_id)
            if updating is not None and now >= deadline:
                self._update_rejected(updating, now, "no new SA before the update's deadline")
        return out

    def _update_rejected(self, rec: SaRecord, now: datetime, reason: str) -> SaRecord:
        self._deadlines.pop(rec.sa_id, None)
        if rec.sa_id in self._open:
            return self._transition(rec, _E.UPDATE_REJECTED, updated_at=now, cause=reason)
        return self._transition(rec, _E.CLOSED, updated_at=now, cause=reason)

    def on_session_closed(self, sa_id: SaId, now: datetime | None = None) -> SaRecord | None:
        """The session of ``sa_id`` ended without a Remove (transport closed, idle,
        shutdown): the SA is ``closed``. An SA already ended is left as it is (None)."""
        rec = self._records.get(sa_id)
        if rec is None:
            return None
        return self._transition(rec, _E.CLOSED, updated_at=now or self._clock())

    def on_sa_removal(self, sa_id: SaId, now: datetime | None = None) -> RemoveOutcome:
        """The peer's close_notify: its SA Removal (seed 003, table 43) of ``sa_id``.

        The SA is marked invalid (``removed``) and the confirm says Accepted. The peer
        ended it itself, so its session is not evicted: a resumption would be a new SA,
        re-validated by its framework.
        """
        rec = self._records.get(sa_id)
        if rec is None:
            return self._not_removable(sa_id, confirm_cls=SaRemovalConfirm)
        done = self._transition(
            rec, _E.REMOVED, updated_at=now or self._clock(), cause="removed by the peer"
        )
        return RemoveOutcome(
            sa_id,
            True,
            record=done,
            confirm=SaRemovalConfirm(sa_id=sa_id, result=Acceptance.ACCEPTED),
            removed=self._tell_removed(sa_id),
        )

    def _tell_removed(self, sa_id: SaId) -> SaRemoved | None:
        return None

    def _rejection(self, sa_id: SaId) -> RemoveRejection:
        if sa_id in self._gone:
            return RemoveRejection.SA_IDENTIFIER_ALREADY_MARKED_INVALID
        return RemoveRejection.UNKNOWN_SA_IDENTIFIER

    def _not_removable(
        self, sa_id: SaId, confirm_cls: type[RemoveSaConfirm] | type[SaRemovalConfirm] | None
    ) -> RemoveOutcome:
        reason = self._rejection(sa_id)
        confirm = (
            confirm_cls(sa_id=sa_id, result=Acceptance.REJECTED, rejection_reason=reason)
            if confirm_cls is not None
            else None
        )
        return RemoveOutcome(sa_id, False, rejection_reason=reason, confirm=confirm)

    def _remove(
        self, sa_id: SaId, reason: str, both_sides: bool, now: datetime | None
    ) -> RemoveOutcome | SaRecord:
        rec = self._records.get(sa_id)
        if rec is None:
            return RemoveOutcome(sa_id, False, rejection_reason=self._rejection(sa_id))
        done = self._transition(rec, _E.REMOVED, updated_at=now or self._clock(), cause=reason)
        where = "both sides" if both_sides else "locally"
        log.info("SA %s with %s removed (%s): %s", sa_id, done.peer_id, where, reason)
        return done

    def _start_update(self, rec: SaRecord, now: datetime) -> SaRecord:
        rec = self._transition(rec, _E.UPDATING, updated_at=now)
        self._deadlines[rec.sa_id] = now + self.update_timeout
        return rec
