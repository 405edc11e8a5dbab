"""The Initiator's and the Responder's Security Association Management of seed 003 (7.3.1.1.2).

Sans-IO, in the manner of h11: each management is a state machine over the SAs one side
holds, fed with what the (D)TLS engine reports (a finished or failed handshake, a
close_notify, a closed session) and with the operator's or the Initiator Agent's requests
(update, remove), and answering with what the caller must do to the session
(:mod:`m2msec.sa.outcomes`) and the seed's information flows (:mod:`m2msec.sa.flows`).
Nothing here touches a socket, a clock it was not given, or a key.

Every change of an SA's state goes through :data:`TRANSITIONS` (state x event -> state);
any other change raises :class:`~m2msec.sa.outcomes.IllegalTransition`. Each change is
handed to a :class:`RecordSink` (non-blocking; :mod:`m2msec.sa.store` keeps the records
with their history) with its :class:`SaEvent`.

The mapping onto (D)TLS (docs/readings.md A-24, docs/sa.md):

* Establish: one finished handshake is one SA record with direction ``both`` (SA1, the
  Initiator's requests, and SA2, the answers and requests towards the Initiator, share one
  session, one key schedule and one fate); its identifier is the session's exporter value.
  The Responder Agent is asked (Initiate SA Received, table 24) and may refuse: the record
  is ``failed`` (event ``refused``) and the caller ends the session (``TLSEngine.refuse``).
  A failed handshake is a ``failed`` record with its Cause of rejection.
* Update: a fresh handshake that retires the old session; the old SA stays live until the
  new one is established, and a rejected update leaves it working.
* Send / Receive Secured Message: :meth:`check_send` / :meth:`check_receive` refuse a
  message over an SA that is unknown, removed, expired or whose session is closed.
* Remove: marked invalid at once; close_notify (both sides) or local only; the session is
  always evicted from the resumption caches.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta

from m2msec.sa.agent import AcceptAll, IgnoreConfirms, InitiatorAgent, ResponderAgent, refuse
from m2msec.sa.flows import (
    Acceptance,
    CauseOfRejection,
    FailureCause,
    InitiateSa,
    InitiateSaConfirm,
    InitiateSaReceived,
    InitiateSaReceivedConfirm,
    RemoveSa,
    RemoveSaConfirm,
    Result,
    SaEstablishmentComplete,
    SaRemovalConfirm,
    SaRemoved,
    SaUpdated,
    SessionCredentials,
    UpdatedOperation,
    UpdateOperation,
    UpdateSa,
    UpdateSaConfirm,
    check_reply_to,
)
from m2msec.sa.machine import (
    DEFAULT_TOMBSTONES,
    DEFAULT_UPDATE_TIMEOUT,
    TRANSITIONS,
    Clock,
    MemorySink,
    RecordSink,
    SaEvent,
    SaManagementBase,
    sa_parameters,
)
from m2msec.sa.outcomes import (
    Admission,
    Establishment,
    EstablishmentFailure,
    RemoveOutcome,
    UpdateOutcome,
    UpdatePlan,
    cause_of_failure,
)
from m2msec.sa.records import SaId, SaRecord, SaRole, SaState
from m2msec.tls.context import SecurityContext

__all__ = [
    "TRANSITIONS",
    "InitiatorSaManagement",
    "MemorySink",
    "RecordSink",
    "ResponderSaManagement",
    "SaEvent",
]

log = logging.getLogger(__name__)
_E = SaEvent


class ResponderSaManagement(SaManagementBase):
    """The Responder's Security Association Management (seed 003 7.3.1.1.2.4).

    Told of every handshake its listeners finish (:meth:`on_handshake_complete`) or fail
    (:meth:`on_handshake_failed`); asks the Responder Agent about each SA (table 24) and
    tells it of the establishment (35), updates (41) and removals (44).
    """

    role = SaRole.RESPONDER

    def __init__(
        self,
        agent: ResponderAgent | None = None,
        sink: RecordSink | None = None,
        *,
        clock: Clock | None = None,
        update_timeout: timedelta = DEFAULT_UPDATE_TIMEOUT,
        tombstones: int = DEFAULT_TOMBSTONES,
    ) -> None:
        super().__init__(sink, clock, update_timeout, tombstones)
        self.agent: ResponderAgent = agent if agent is not None else AcceptAll()

    # -- Establish (7.3.2) -------------------------------------------------------------------
    def on_handshake_complete(
        self,
        ctx: SecurityContext,
        *,
        peer_address: str | None = None,
        now: datetime | None = None,
    ) -> Admission:
        """A handshake finished: make the SA's record and ask the Responder Agent.

        Refused (``Admission.refusal``): the record is ``failed`` (event ``refused``) and
        the caller ends the session with ``TLSEngine.refuse``. Admitted: ``established``,
        the agent is told SA Establishment Complete, and if the same peer's SA was being
        updated, that SA is ``updated`` (replaced by this one) and the agent told SA Updated.
        """
        now = now or self._clock()
        rec = self._new_record(ctx, peer_address, now)
        received = InitiateSaReceived(
            initiator_id=SessionCredentials(
                entity_id=ctx.peer_id, framework=str(ctx.framework), key_id=ctx.key_id
            ),
            sa_id=rec.sa_id,
        )
        confirm = self._ask(received)
        if confirm.result is Result.FAILURE:
            cause = CauseOfRejection.ADMINISTRATIVE_REASONS
            done = self._transition(
                rec, _E.REFUSED, cause=f"{cause.value}: refused by the Responder Agent"
            )
            log.info("SA %s with %s refused by the Responder Agent", rec.sa_id, rec.peer_id)
            return Admission((done,), received, confirm, None, refusal=cause)
        rec = self._established(rec)
        records: tuple[SaRecord, ...] = (rec,)
        updated: SaUpdated | None = None
        old = self._updating_peer(rec)
        if old is not None:
            replaced = self._transition(old, _E.UPDATED, updated_at=now, replaced_by=rec.sa_id)
            records = (rec, replaced)
            updated = SaUpdated(
                existing_sa_id=old.sa_id,
                update_operation=UpdatedOperation.SA_IDENTIFIER_AND_KEYS_UPDATED,
                new_sa_id=rec.sa_id,
            )
        complete = SaEstablishmentComplete(sa_id=rec.sa_id, establishment_result=Result.SUCCESS)
        self._call("sa_establishment_complete", complete)
        if updated is not None:
            self._call("sa_updated", updated)
        return Admission(records, received, confirm, complete, updated)

    def on_handshake_failed(
        self,
        reason: str,
        *,
        no_common_parameters: bool = False,
        framework: str = "",
        peer_id: str | None = None,
        protocol: str = "",
        cipher_suite: str = "",
        peer_address: str | None = None,
        now: datetime | None = None,
    ) -> EstablishmentFailure:
        """A handshake failed (``HandshakeFailed``): a ``failed`` record with its Cause of
        rejection (:func:`~m2msec.sa.outcomes.cause_of_failure`), and SA Establishment
        Complete with Failure for the Responder Agent (table 35)."""
        cause = cause_of_failure(no_common_parameters)
        rec = self._failed_record(
            reason,
            cause,
            framework=framework,
            peer_id=peer_id,
            protocol=protocol,
            cipher_suite=cipher_suite,
            peer_address=peer_address,
            now=now or self._clock(),
        )
        complete = SaEstablishmentComplete(
            sa_id=rec.sa_id,
            establishment_result=Result.FAILURE,
            failure_cause=FailureCause.UNABLE_TO_MATCH_SECURITY_PARAMETERS,
        )
        self._call("sa_establishment_complete", complete)
        return EstablishmentFailure(rec, cause, complete=complete)

    def _ask(self, received: InitiateSaReceived) -> InitiateSaReceivedConfirm:
        try:
            confirm = self.agent.initiate_sa_received(received)
            check_reply_to(received, confirm)
        except Exception as exc:  # an agent that fails refuses
            log.warning(
                "Responder Agent failed on SA %s (%s): refused", received.sa_id, type(exc).__name__
            )
            return refuse(received)
        assert isinstance(confirm, InitiateSaReceivedConfirm)
        return confirm

    def _call(self, method: str, flow: object) -> None:
        try:
            getattr(self.agent, method)(flow)
        except Exception as exc:
            log.warning("Responder Agent failed on %s: %s", method, type(exc).__name__)

    def _updating_peer(self, new: SaRecord) -> SaRecord | None:
        for rec in self._records.values():
            if (
                rec.state is SaState.UPDATING
                and rec.sa_id != new.sa_id
                and (rec.peer_id, rec.framework, rec.local_id)
                == (new.peer_id, new.framework, new.local_id)
            ):
                return rec
        return None

    # -- Update (7.3.3) ----------------------------------------------------------------------
    def update(self, sa_id: SaId, now: datetime | None = None) -> UpdatePlan:
        """Ask the Initiator of ``sa_id`` to re-key (an operator's ``sa update``).

        The SA becomes ``updating`` and stays live; the caller ends its session gracefully
        (``close_session``) so that the Initiator's next handshake is the new SA, which
        replaces this one when it is established. No new SA by the deadline: the update is
        rejected (the old SA keeps working if its session is still open). Not established
        (unknown, ended, already updating): ``proceed`` False.
        """
        rec = self._records.get(sa_id)
        if rec is None or rec.state is not SaState.ESTABLISHED:
            return UpdatePlan(sa_id, False, record=rec)
        now = now or self._clock()
        rec = self._start_update(rec, now)
        return UpdatePlan(sa_id, True, True, self._deadlines[sa_id], rec)

    def on_session_closed(self, sa_id: SaId, now: datetime | None = None) -> SaRecord | None:
        """As :meth:`SaManagementBase.on_session_closed`; an SA being updated stays
        ``updating`` (its session ended as the update asked) until its replacement is
        established or the update's deadline passes."""
        rec = self._records.get(sa_id)
        if rec is not None and rec.state is SaState.UPDATING:
            self._open.discard(sa_id)
            return rec
        return super().on_session_closed(sa_id, now)

    def on_sa_removal(self, sa_id: SaId, now: datetime | None = None) -> RemoveOutcome:
        rec = self._records.get(sa_id)
        if rec is not None and rec.state is SaState.UPDATING:
            # The Initiator answering the close_notify the update sent: not a Remove.
            self._open.discard(sa_id)
            confirm = SaRemovalConfirm(sa_id=sa_id, result=Acceptance.ACCEPTED)
            return RemoveOutcome(sa_id, True, record=rec, confirm=confirm)
        return super().on_sa_removal(sa_id, now)

    # -- Remove (7.3.6) ----------------------------------------------------------------------
    def remove(
        self, sa_id: SaId, reason: str, *, both_sides: bool, now: datetime | None = None
    ) -> RemoveOutcome:
        """Mark ``sa_id`` invalid (``removed``, ``reason`` in its record and the log) and tell
        the Responder Agent (SA Removed, table 44).

        ``both_sides``: close the session with close_notify (the peer is told); else local
        only, and every message over it is refused. The session is always evicted, so the
        SA cannot come back by resumption (e.g. after ``psk remove``).
        """
        was_open = sa_id in self._open
        done = self._remove(sa_id, reason, both_sides, now)
        if isinstance(done, RemoveOutcome):
            return done
        return RemoveOutcome(
            sa_id,
            True,
            close_session=both_sides and was_open,
            evict_session=True,
            record=done,
            removed=self._tell_removed(sa_id),
        )

    def _tell_removed(self, sa_id: SaId) -> SaRemoved:
        flow = SaRemoved(sa_id=sa_id)
        self._call("sa_removed", flow)
        return flow


class InitiatorSaManagement(SaManagementBase):
    """The Initiator's Security Association Management (seed 003 7.3.1.1.2.2).

    Takes the Initiator Agent's requests (Initiate SA, Update SA, Remove SA: tables 23, 36,
    42), is told how the handshakes it asked for ended, and gives the agent the confirms.
    """

    role = SaRole.INITIATOR

    def __init__(
        self,
        agent: InitiatorAgent | None = None,
        sink: RecordSink | None = None,
        *,
        clock: Clock | None = None,
        update_timeout: timedelta = DEFAULT_UPDATE_TIMEOUT,
        tombstones: int = DEFAULT_TOMBSTONES,
    ) -> None:
        super().__init__(sink, clock, update_timeout, tombstones)
        self.agent: InitiatorAgent = agent if agent is not None else IgnoreConfirms()

    # -- Establish (7.3.2) -------------------------------------------------------------------
    def on_handshake_complete(
        self,
        ctx: SecurityContext,
        request: InitiateSa | None = None,
        *,
        peer_address: str | None = None,
        now: datetime | None = None,
    ) -> Establishment:
        """The handshake ``request`` asked for finished: the SA is ``established`` and the
        agent gets Initiate SA's confirm (Success, the SA parameters).

        When the Responder the handshake authenticated is not the one ``request`` named,
        the SA is refused (Failure, Administrative reasons): the caller ends the session
        with ``TLSEngine.refuse``.
        """
        now = now or self._clock()
        rec = self._new_record(ctx, peer_address, now)
        if request is not None and request.responder_id.entity_id != ctx.peer_id:
            cause = CauseOfRejection.ADMINISTRATIVE_REASONS
            done = self._transition(
                rec,
                _E.REFUSED,
                cause=f"{cause.value}: the Responder is {ctx.peer_id}, "
                f"not {request.responder_id.entity_id}",
            )
            confirm = InitiateSaConfirm(result=Result.FAILURE, cause=cause)
            self._confirm("initiate_sa_confirmed", confirm)
            return Establishment(done, confirm)
        rec = self._established(rec)
        confirm = InitiateSaConfirm(result=Result.SUCCESS, security_association=sa_parameters(ctx))
        self._confirm("initiate_sa_confirmed", confirm)
        return Establishment(rec, confirm)

    def on_handshake_failed(
        self,
        reason: str,
        request: InitiateSa | None = None,
        *,
        no_common_parameters: bool = False,
        framework: str = "",
        protocol: str = "",
        peer_address: str | None = None,
        now: datetime | None = None,
    ) -> EstablishmentFailure:
        """The handshake failed: a ``failed`` record, and Initiate SA's confirm with Failure
        and its Cause of rejection for the agent."""
        cause = cause_of_failure(no_common_parameters)
        rec = self._failed_record(
            reason,
            cause,
            framework=framework or (request.initiator_id.framework if request else ""),
            peer_id=request.responder_id.entity_id if request else None,
            protocol=protocol,
            cipher_suite="",
            peer_address=peer_address,
            now=now or self._clock(),
        )
        confirm = InitiateSaConfirm(result=Result.FAILURE, cause=cause)
        self._confirm("initiate_sa_confirmed", confirm)
        return EstablishmentFailure(rec, cause, confirm=confirm)

    def _confirm(self, method: str, confirm: object) -> None:
        try:
            getattr(self.agent, method)(confirm)
        except Exception as exc:
            log.warning("Initiator Agent failed on %s: %s", method, type(exc).__name__)

    # -- Update (7.3.3) ----------------------------------------------------------------------
    def update(self, request: UpdateSa, now: datetime | None = None) -> UpdatePlan:
        """Start the update ``request`` asks for: a fresh handshake to the same Responder
        while the old SA keeps serving (``close_session`` False).

        Over (D)TLS only "Update SA identifier and keys" can be done (a new handshake
        changes both); the other operations, and an SA that is not established, are
        Rejected at once (``proceed`` False, the confirm given to the agent).
        """
        sa_id = request.existing_sa_id
        rec = self._records.get(sa_id)
        if (
            rec is None
            or rec.state is not SaState.ESTABLISHED
            or request.update_operation is not UpdateOperation.UPDATE_SA_IDENTIFIER_AND_KEYS
        ):
            confirm = UpdateSaConfirm(existing_sa_id=sa_id, result=Acceptance.REJECTED)
            self._confirm("update_sa_confirmed", confirm)
            return UpdatePlan(sa_id, False, record=rec, request=request, confirm=confirm)
        now = now or self._clock()
        rec = self._start_update(rec, now)
        return UpdatePlan(sa_id, True, False, self._deadlines[sa_id], rec, request)

    def on_update_established(
        self,
        existing: SaId,
        ctx: SecurityContext,
        *,
        peer_address: str | None = None,
        also: tuple[SaId, ...] = (),
        now: datetime | None = None,
    ) -> UpdateOutcome:
        """The update's new handshake finished: the new SA is ``established``, the old one
        ``updated`` (replaced by it) and its session retired (``retire``: close, evict);
        the agent gets Update SA's confirm (Accepted, the new identifier).

        ``also``: further SAs of the same Responder being updated with ``existing`` (the
        egress keeps several sessions to one upstream), ``updated`` and replaced by the
        same new SA; their sessions are the caller's to retire."""
        now = now or self._clock()
        rec = self._established(self._new_record(ctx, peer_address, now))
        for other in also:
            more = self._records.get(other)
            if other != existing and more is not None and more.state is SaState.UPDATING:
                self._deadlines.pop(other, None)
                self._transition(more, _E.UPDATED, updated_at=now, replaced_by=rec.sa_id)
        old = self._records.get(existing)
        replaced: SaRecord | None = None
        retire: RemoveOutcome | None = None
        if old is not None and old.state is SaState.UPDATING:
            was_open = existing in self._open
            self._deadlines.pop(existing, None)
            replaced = self._transition(old, _E.UPDATED, updated_at=now, replaced_by=rec.sa_id)
            retire = RemoveOutcome(existing, True, was_open, True, replaced)
        confirm = UpdateSaConfirm(
            existing_sa_id=existing, result=Acceptance.ACCEPTED, new_sa_id=rec.sa_id
        )
        self._confirm("update_sa_confirmed", confirm)
        return UpdateOutcome(confirm, rec, replaced, retire)

    def on_update_failed(
        self, existing: SaId, reason: str, now: datetime | None = None
    ) -> UpdateOutcome:
        """The update's new handshake failed: the update is Rejected and the old SA keeps
        working (``established`` again) while its session is open."""
        now = now or self._clock()
        old = self._records.get(existing)
        kept: SaRecord | None = None
        if old is not None and old.state is SaState.UPDATING:
            kept = self._update_rejected(old, now, f"update rejected: {reason}")
        confirm = UpdateSaConfirm(existing_sa_id=existing, result=Acceptance.REJECTED)
        self._confirm("update_sa_confirmed", confirm)
        return UpdateOutcome(confirm, kept, None, None)

    # -- Remove (7.3.6) ----------------------------------------------------------------------
    def remove(
        self,
        request: RemoveSa,
        reason: str = "removed by the Initiator Agent",
        *,
        both_sides: bool = True,
        now: datetime | None = None,
    ) -> RemoveOutcome:
        """Remove SA (table 42): mark the SA invalid; ``both_sides`` also informs the
        Responder (SA Removal, table 43: close_notify). The session is always evicted.
        The agent gets the confirm: Accepted, or Rejected (unknown / already invalid)."""
        sa_id = request.sa_id
        was_open = sa_id in self._open
        done = self._remove(sa_id, reason, both_sides, now)
        if isinstance(done, RemoveOutcome):
            confirm = RemoveSaConfirm(
                sa_id=sa_id, result=Acceptance.REJECTED, rejection_reason=done.rejection_reason
            )
            self._confirm("remove_sa_confirmed", confirm)
            return replace(done, confirm=confirm)
        confirm = RemoveSaConfirm(sa_id=sa_id, result=Acceptance.ACCEPTED)
        self._confirm("remove_sa_confirmed", confirm)
        return RemoveOutcome(
            sa_id,
            True,
            close_session=both_sides and was_open,
            evict_session=True,
            record=done,
            confirm=confirm,
        )
