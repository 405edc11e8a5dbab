"""The gateway's SA services as the operator sees them: seed 003's Update and Remove, and
the records, behind the admin socket (:class:`~m2msec.sa.admin.SaAdmin`, docs/sa.md).

:class:`SaAdminOps` holds the operations of :class:`~m2msec.sa.admin.SaAdmin` over both
sides of the gateway: the Responder's SAs (its SA Management and live sessions, kept by
:class:`~m2msec.servers.gateway_sa.GatewaySa`) and the SAs it initiated
(:class:`InitiatorSide`: the egress). ``list`` and ``show`` read the SA record store
after a flush; Remove ends a session at once (close_notify, evicted), Update ends it
gracefully so that the Initiator's next handshake replaces the SA, or re-keys an SA the
gateway initiated in place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Final, Protocol

from m2msec.errors import StoreError
from m2msec.sa.admin import AdminOutcome, RejectionReason, SaAdmin, SaDetail, SaQuery
from m2msec.sa.admin_wire import history_entry
from m2msec.sa.flows import RemoveRejection
from m2msec.sa.management import InitiatorSaManagement, ResponderSaManagement
from m2msec.sa.outcomes import RemoveOutcome, UpdateOutcome
from m2msec.sa.records import SaId, SaRecord, SaRole, SaState
from m2msec.sa.store import SaRecordStore

__all__ = ["LIST_LIMIT", "OPERATOR_REMOVED", "InitiatorSide", "SaAdminOps"]

#: The reason recorded when an operator removes an SA (``m2msec sa remove``).
OPERATOR_REMOVED: Final = "administrative reasons: removed by the operator"
#: At most this many records in one ``list`` answer (oldest first).
LIST_LIMIT: Final = 10_000


class InitiatorSide(Protocol):
    """The gateway's SAs as Initiator (the egress, :class:`~m2msec.servers.egress.Egress`):
    its Initiator's SA Management, and Update / Remove of one of its SAs (None: not one of
    them)."""

    @property
    def management(self) -> InitiatorSaManagement: ...

    async def update_sa(self, sa_id: SaId) -> UpdateOutcome | None: ...

    async def remove_sa(self, sa_id: SaId, reason: str) -> RemoveOutcome | None: ...


class SaAdminOps(SaAdmin):
    """:class:`~m2msec.sa.admin.SaAdmin` over the gateway's two sides (module docstring);
    :class:`~m2msec.servers.gateway_sa.GatewaySa` supplies the state and the two hooks."""

    management: ResponderSaManagement
    store: SaRecordStore | None
    _initiators: list[InitiatorSide]

    def remove_sa(self, sa_id: SaId, reason: str, *, close_now: bool = True) -> RemoveOutcome:
        raise NotImplementedError

    def _end_for_update(self, sa_id: SaId) -> None:
        raise NotImplementedError

    def _initiator_of(self, sa_id: SaId) -> InitiatorSide | None:
        return next((s for s in self._initiators if s.management.get(sa_id) is not None), None)

    async def remove(self, sa_id: SaId) -> AdminOutcome:
        side = self._initiator_of(sa_id)
        if side is not None:
            done = await side.remove_sa(sa_id, OPERATOR_REMOVED)
            if done is not None and done.accepted and done.record is not None:
                return AdminOutcome.accept(
                    [done.record],
                    "marked invalid; its session was ended (close_notify); the next request "
                    "establishes a new SA",
                )
        outcome = self.remove_sa(sa_id, OPERATOR_REMOVED)
        if not outcome.accepted:
            return await self._rejected(sa_id, outcome.rejection_reason)
        assert outcome.record is not None
        return AdminOutcome.accept(
            [outcome.record], "marked invalid; its session was ended (close_notify)"
        )

    async def remove_peer(self, peer_id: str) -> AdminOutcome:
        done: list[SaRecord] = []
        for rec in self.management.find(peer_id=peer_id):
            outcome = self.remove_sa(rec.sa_id, OPERATOR_REMOVED)
            if outcome.accepted and outcome.record is not None:
                done.append(outcome.record)
        for side in self._initiators:
            for rec in side.management.find(peer_id=peer_id):
                ended = await side.remove_sa(rec.sa_id, OPERATOR_REMOVED)
                if ended is not None and ended.accepted and ended.record is not None:
                    done.append(ended.record)
        if not done:
            return AdminOutcome.reject(RejectionReason.UNKNOWN_PEER)
        return AdminOutcome.accept(done, f"{len(done)} SAs marked invalid, sessions ended")

    async def update(self, sa_id: SaId) -> AdminOutcome:
        side = self._initiator_of(sa_id)
        if side is not None:
            return await self._update_initiated(side, sa_id)
        rec = self.management.get(sa_id)
        if rec is not None and rec.state is SaState.UPDATING:
            return AdminOutcome.reject(
                RejectionReason.REFUSED, "an update of this SA is already in progress"
            )
        plan = self.management.update(sa_id)
        if not plan.proceed or plan.record is None:
            return await self._rejected(sa_id, None)
        self._end_for_update(sa_id)
        seconds = int(self.management.update_timeout.total_seconds())
        return AdminOutcome.accept(
            [plan.record],
            f"its session is being ended; the Initiator's next handshake replaces it "
            f"(within {seconds} s, else the update is rejected)",
        )

    async def _update_initiated(self, side: InitiatorSide, sa_id: SaId) -> AdminOutcome:
        """Update of an SA the gateway initiated: re-keyed in place (a fresh handshake, the
        switch, the old session closed after its requests in flight)."""
        rec = side.management.get(sa_id)
        if rec is not None and rec.state is SaState.UPDATING:
            return AdminOutcome.reject(
                RejectionReason.REFUSED, "an update of this SA is already in progress"
            )
        outcome = await side.update_sa(sa_id)
        if outcome is None:
            return await self._rejected(sa_id, None)
        if outcome.record is None or outcome.replaced is None:
            return AdminOutcome.reject(
                RejectionReason.REFUSED, "the new handshake failed; the SA keeps serving"
            )
        return AdminOutcome.accept(
            [outcome.replaced, outcome.record],
            f"re-keyed in place: replaced by {outcome.record.sa_id}",
        )

    async def _rejected(self, sa_id: SaId, why: RemoveRejection | None) -> AdminOutcome:
        known = why is RemoveRejection.SA_IDENTIFIER_ALREADY_MARKED_INVALID
        if not known and self.store is not None:
            with contextlib.suppress(StoreError):
                known = await asyncio.to_thread(self.store.get, sa_id) is not None
        return AdminOutcome.reject(
            RejectionReason.NOT_LIVE if known else RejectionReason.UNKNOWN_SA
        )

    async def list(self, query: SaQuery) -> Sequence[SaRecord]:
        store = self.store
        roles = self._roles()
        if store is None:
            return [r for r in self._live_records() if query.matches(r)]

        def read() -> list[SaRecord]:
            store.flush(2.0)  # what was recorded before the question
            rows = store.list(
                peer=query.peer,
                state=query.state,
                live_only=query.live_only and query.state is None,
                limit=LIST_LIMIT,
            )
            return [r for r in rows if r.role in roles]

        try:
            return await asyncio.to_thread(read)
        except StoreError:
            if query.state is None and query.live_only:
                return [r for r in self._live_records() if query.matches(r)]
            raise

    def _roles(self) -> frozenset[SaRole]:
        if self._initiators:
            return frozenset({SaRole.RESPONDER, SaRole.INITIATOR})
        return frozenset({SaRole.RESPONDER})

    def _live_records(self) -> tuple[SaRecord, ...]:
        sides = (self.management, *(side.management for side in self._initiators))
        return tuple(rec for m in sides for rec in m.live())

    async def show(self, sa_id: SaId) -> SaDetail | None:
        store = self.store
        if store is None:
            rec = self.management.get(sa_id)
            side = self._initiator_of(sa_id) if rec is None else None
            rec = rec if side is None else side.management.get(sa_id)
            return None if rec is None else SaDetail(rec)

        def read() -> SaDetail | None:
            store.flush(2.0)
            rec = store.get(sa_id, SaRole.RESPONDER)
            if rec is None and self._initiators:
                rec = store.get(sa_id, SaRole.INITIATOR)
            if rec is None:
                return None
            events = store.history(sa_id)
            return SaDetail(rec, tuple(history_entry(e) for e in events if e.role is rec.role))

        return await asyncio.to_thread(read)

