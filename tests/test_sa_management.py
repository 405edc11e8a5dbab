"""The Responder's and the Initiator's SA Management (m2msec.sa.management), without a network.

The state table and its illegal transitions; Establish with the Responder Agent consulted
(and refusing); a failed handshake's Cause of rejection; Update keeping the old SA live
until the new one is established, and a rejected update leaving it working; Remove on both
sides or locally (always evicting the session); Send / Receive refused over a removed,
expired or closed SA. The handshake path itself (real engines) is tests/test_sa_engine.py.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from m2msec.sa.agent import AcceptAll, accept, refuse
from m2msec.sa.flows import (
    Acceptance,
    CauseOfRejection,
    FailureCause,
    InitiateSa,
    InitiateSaConfirm,
    InitiateSaReceived,
    InitiateSaReceivedConfirm,
    RemoveRejection,
    RemoveSa,
    RemoveSaConfirm,
    ResponderAuthorizationCredentials,
    Result,
    SaEstablishmentComplete,
    SaRemoved,
    SaUpdated,
    SessionCredentials,
    UpdatedOperation,
    UpdateOperation,
    UpdateSa,
    UpdateSaConfirm,
)
from m2msec.sa.management import (
    TRANSITIONS,
    InitiatorSaManagement,
    MemorySink,
    ResponderSaManagement,
    SaEvent,
)
from m2msec.sa.outcomes import IllegalTransition, SaUnavailable
from m2msec.sa.records import Direction, SaId, SaRecord, SaRole, SaState
from m2msec.tls.context import Framework, PeerKind, SecurityContext

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
AE = "Clight-AE1"
KPSA_ID = "AE123456789012-Light@in.provider.com"


def context(
    peer: str = AE,
    *,
    valid_until: datetime | None = None,
    key_id: str = KPSA_ID,
    local_id: str | None = "/mn-cse-123456",
) -> SecurityContext:
    return SecurityContext(
        framework=Framework.PROVISIONED_PSK,
        local_id=local_id,
        peer_id=peer,
        peer_kind=PeerKind.AE,
        protocol="TLSv1.2",
        cipher_suite="PSK-AES128-CCM8",
        key_id=key_id,
        established_at=T0,
        valid_until=valid_until,
        sa_id=secrets.token_hex(16),
        key_fingerprint="0123456789abcdef",
    )


class Agent:
    """A Responder Agent that writes down every flow and refuses the peers in ``refused``."""

    def __init__(self, refused: tuple[str, ...] = ()) -> None:
        self.refused = refused
        self.flows: list[object] = []

    def initiate_sa_received(self, flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
        self.flows.append(flow)
        return refuse(flow) if flow.initiator_id.entity_id in self.refused else accept(flow)

    def sa_establishment_complete(self, flow: SaEstablishmentComplete) -> None:
        self.flows.append(flow)

    def sa_updated(self, flow: SaUpdated) -> None:
        self.flows.append(flow)

    def sa_removed(self, flow: SaRemoved) -> None:
        self.flows.append(flow)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def responder(
    agent: Agent | None = None, sink: MemorySink | None = None
) -> tuple[ResponderSaManagement, Agent, MemorySink, Clock]:
    agent = agent or Agent()
    sink = sink or MemorySink()
    clock = Clock()
    return ResponderSaManagement(agent, sink, clock=clock), agent, sink, clock


# -- the state table ---------------------------------------------------------------------
def test_state_table_is_explicit_and_ends_in_terminal_states() -> None:
    live = {SaState.ESTABLISHED, SaState.UPDATING}
    terminal = {SaState.UPDATED, SaState.REMOVED, SaState.EXPIRED, SaState.CLOSED, SaState.FAILED}
    sources = {state for state, _ in TRANSITIONS}
    assert sources == live | {SaState.ESTABLISHING}
    assert not sources & terminal  # nothing leaves a terminal state
    assert set(TRANSITIONS.values()) <= live | terminal
    assert TRANSITIONS[(SaState.UPDATING, SaEvent.UPDATE_REJECTED)] is SaState.ESTABLISHED
    assert TRANSITIONS[(SaState.ESTABLISHING, SaEvent.REFUSED)] is SaState.FAILED
    with pytest.raises(TypeError):
        TRANSITIONS[(SaState.REMOVED, SaEvent.ESTABLISHED)] = SaState.ESTABLISHED  # type: ignore[index]


@pytest.mark.parametrize("state", list(SaState))
@pytest.mark.parametrize("event", list(SaEvent))
def test_every_other_transition_is_illegal(state: SaState, event: SaEvent) -> None:
    mgmt, _, sink, _ = responder()
    rec = SaRecord(
        sa_id=SaId(b"\x01" * 16),
        role=SaRole.RESPONDER,
        framework="provisioned-psk",
        local_id=None,
        peer_id=AE,
        protocol="TLSv1.2",
        cipher_suite="PSK-AES128-CCM8",
        key_id=None,
        key_fingerprint=None,
        direction=Direction.BOTH,
        established_at=T0,
        state=state,
    )
    if (state, event) in TRANSITIONS:
        assert mgmt._transition(rec, event).state is TRANSITIONS[(state, event)]
        assert sink.entries[-1][1] == event.value
    else:
        with pytest.raises(IllegalTransition, match=f"no transition from {state.value}"):
            mgmt._transition(rec, event)
        assert sink.entries == []


def test_a_session_is_established_once() -> None:
    mgmt, *_ = responder()
    ctx = context()
    mgmt.on_handshake_complete(ctx)
    with pytest.raises(IllegalTransition):
        mgmt.on_handshake_complete(ctx)
    mgmt.remove(SaId.from_hex(ctx.sa_id), "operator", both_sides=True)
    with pytest.raises(IllegalTransition):  # a removed SA does not come back either
        mgmt.on_handshake_complete(ctx)


# -- Establish -----------------------------------------------------------------------------
def test_establish_consults_the_agent_and_records_the_sa() -> None:
    mgmt, agent, sink, _ = responder()
    ctx = context(valid_until=T0 + timedelta(hours=1))
    admission = mgmt.on_handshake_complete(ctx, peer_address="127.0.0.1:40001")
    assert admission.admitted and admission.refusal is None
    rec = admission.record
    assert rec.sa_id == SaId.from_hex(ctx.sa_id) == admission.sa_id
    assert (rec.role, rec.state, rec.direction) == (
        SaRole.RESPONDER,
        SaState.ESTABLISHED,
        Direction.BOTH,
    )
    assert (rec.peer_id, rec.key_id, rec.key_fingerprint) == (AE, KPSA_ID, "0123456789abcdef")
    assert rec.expires_at == ctx.valid_until and rec.peer_address == "127.0.0.1:40001"
    received, complete = agent.flows
    assert received == InitiateSaReceived(
        initiator_id=SessionCredentials(entity_id=AE, framework="provisioned-psk", key_id=KPSA_ID),
        sa_id=rec.sa_id,
    )
    assert complete == SaEstablishmentComplete(sa_id=rec.sa_id, establishment_result=Result.SUCCESS)
    assert admission.confirm.result is Result.SUCCESS
    assert sink.events() == ["established"]
    assert mgmt.check_send(rec.sa_id) == rec == mgmt.check_receive(rec.sa_id)
    assert mgmt.find(peer_id=AE) == [rec] and mgmt.find(key_id="other") == []


def test_the_agent_may_refuse_for_administrative_reasons() -> None:
    mgmt, agent, sink, _ = responder(Agent(refused=(AE,)))
    admission = mgmt.on_handshake_complete(context())
    assert not admission.admitted
    assert admission.refusal is CauseOfRejection.ADMINISTRATIVE_REASONS
    assert admission.confirm.cause is CauseOfRejection.ADMINISTRATIVE_REASONS
    assert admission.complete is None
    rec = admission.record
    assert rec.state is SaState.FAILED and rec.cause is not None
    assert rec.cause.startswith("Administrative reasons")
    assert sink.events() == ["refused"]
    assert len(agent.flows) == 1  # asked, and not told of a completion
    with pytest.raises(SaUnavailable, match="failed"):
        mgmt.check_send(rec.sa_id)
    assert mgmt.get(rec.sa_id) is None


def test_an_agent_that_fails_or_answers_another_sa_refuses() -> None:
    class Broken(AcceptAll):
        def initiate_sa_received(self, flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
            raise RuntimeError("agent down")

    class Confused(AcceptAll):
        def initiate_sa_received(self, flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
            return InitiateSaReceivedConfirm(sa_id=SaId(b"\x99" * 16), result=Result.SUCCESS)

    for agent in (Broken(), Confused()):
        mgmt = ResponderSaManagement(agent)
        admission = mgmt.on_handshake_complete(context())
        assert admission.refusal is CauseOfRejection.ADMINISTRATIVE_REASONS
        assert admission.record.state is SaState.FAILED


@pytest.mark.parametrize(
    ("mismatch", "cause"),
    [
        (True, CauseOfRejection.NO_PARAMETERS_IN_COMMON),
        (False, CauseOfRejection.ADMINISTRATIVE_REASONS),
    ],
)
def test_a_failed_handshake_has_the_tables_cause(mismatch: bool, cause: CauseOfRejection) -> None:
    mgmt, agent, sink, _ = responder()
    failure = mgmt.on_handshake_failed(
        "handshake failed: no shared cipher" if mismatch else "unknown psk_identity 'x'",
        no_common_parameters=mismatch,
        framework="provisioned-psk",
        peer_address="127.0.0.1:40001",
    )
    assert failure.cause is cause
    assert failure.record.state is SaState.FAILED
    assert failure.record.cause is not None and failure.record.cause.startswith(cause.value)
    assert len(failure.record.sa_id) == 16
    assert agent.flows == [failure.complete]
    assert failure.complete is not None
    assert failure.complete.establishment_result is Result.FAILURE
    assert failure.complete.failure_cause is FailureCause.UNABLE_TO_MATCH_SECURITY_PARAMETERS
    assert sink.events() == ["failed"]


# -- Send / Receive ------------------------------------------------------------------------
def test_no_message_over_an_expired_sa() -> None:
    mgmt, _, sink, clock = responder()
    rec = mgmt.on_handshake_complete(context(valid_until=T0 + timedelta(minutes=5))).record
    assert mgmt.check_send(rec.sa_id).state is SaState.ESTABLISHED
    clock.now = T0 + timedelta(minutes=5)
    with pytest.raises(SaUnavailable, match="expired") as exc:
        mgmt.check_send(rec.sa_id)
    assert exc.value.state is SaState.EXPIRED
    with pytest.raises(SaUnavailable, match="expired"):
        mgmt.check_receive(rec.sa_id)
    assert sink.events(rec.sa_id) == ["established", "expired"]


def test_expire_due_ends_and_evicts_expired_sessions() -> None:
    mgmt, _, _sink, _ = responder()
    short = mgmt.on_handshake_complete(context(valid_until=T0 + timedelta(minutes=1))).record
    long = mgmt.on_handshake_complete(context(valid_until=T0 + timedelta(days=1))).record
    forever = mgmt.on_handshake_complete(context()).record
    assert mgmt.expire_due(T0) == []
    (outcome,) = mgmt.expire_due(T0 + timedelta(minutes=2))
    assert outcome.sa_id == short.sa_id
    assert outcome.close_session and outcome.evict_session
    assert outcome.record is not None and outcome.record.state is SaState.EXPIRED
    assert {r.sa_id for r in mgmt.live()} == {long.sa_id, forever.sa_id}
    with pytest.raises(SaUnavailable):
        mgmt.check_send(short.sa_id, T0 + timedelta(minutes=2))


def test_no_message_over_a_closed_or_unknown_sa() -> None:
    mgmt, _, sink, _ = responder()
    rec = mgmt.on_handshake_complete(context()).record
    closed = mgmt.on_session_closed(rec.sa_id)
    assert closed is not None and closed.state is SaState.CLOSED
    assert mgmt.on_session_closed(rec.sa_id) is None  # already ended
    with pytest.raises(SaUnavailable, match="closed"):
        mgmt.check_receive(rec.sa_id)
    with pytest.raises(SaUnavailable, match="unknown SA"):
        mgmt.check_send(SaId(b"\x77" * 16))
    assert sink.events() == ["established", "closed"]


# -- Remove --------------------------------------------------------------------------------
@pytest.mark.parametrize("both_sides", [True, False])
def test_remove_marks_invalid_tells_the_agent_and_evicts(both_sides: bool) -> None:
    mgmt, agent, sink, _ = responder()
    rec = mgmt.on_handshake_complete(context()).record
    outcome = mgmt.remove(rec.sa_id, "psk remove of " + KPSA_ID, both_sides=both_sides)
    assert outcome.accepted
    assert outcome.close_session is both_sides  # close_notify only when the peer is told
    assert outcome.evict_session  # never back by resumption
    assert outcome.record is not None and outcome.record.state is SaState.REMOVED
    assert outcome.record.cause == "psk remove of " + KPSA_ID
    assert outcome.removed == SaRemoved(sa_id=rec.sa_id)
    assert agent.flows[-1] == SaRemoved(sa_id=rec.sa_id)
    assert sink.events(rec.sa_id) == ["established", "removed"]
    with pytest.raises(SaUnavailable, match="removed"):
        mgmt.check_send(rec.sa_id)
    with pytest.raises(SaUnavailable, match="removed"):
        mgmt.check_receive(rec.sa_id)
    again = mgmt.remove(rec.sa_id, "twice", both_sides=True)
    assert not again.accepted and not again.close_session and not again.evict_session
    assert again.rejection_reason is RemoveRejection.SA_IDENTIFIER_ALREADY_MARKED_INVALID
    unknown = mgmt.remove(SaId(b"\x55" * 16), "typo", both_sides=True)
    assert unknown.rejection_reason is RemoveRejection.UNKNOWN_SA_IDENTIFIER


def test_the_peers_close_notify_is_its_sa_removal() -> None:
    mgmt, agent, _sink, _ = responder()
    rec = mgmt.on_handshake_complete(context()).record
    outcome = mgmt.on_sa_removal(rec.sa_id)
    assert outcome.accepted and outcome.confirm is not None
    assert outcome.confirm.result is Acceptance.ACCEPTED
    assert not outcome.close_session and not outcome.evict_session
    assert agent.flows[-1] == SaRemoved(sa_id=rec.sa_id)
    again = mgmt.on_sa_removal(rec.sa_id)
    assert again.confirm is not None and again.confirm.result is Acceptance.REJECTED
    assert again.rejection_reason is RemoveRejection.SA_IDENTIFIER_ALREADY_MARKED_INVALID


# -- Update at the Responder ----------------------------------------------------------------
def test_responder_update_keeps_the_old_sa_live_until_the_new_one() -> None:
    mgmt, agent, sink, clock = responder()
    old = mgmt.on_handshake_complete(context()).record
    plan = mgmt.update(old.sa_id)
    assert plan.proceed and plan.close_session  # ask the Initiator: end the session gracefully
    assert plan.deadline == T0 + mgmt.update_timeout
    assert mgmt.check_send(old.sa_id).state is SaState.UPDATING  # still live
    assert not mgmt.update(old.sa_id).proceed  # already updating
    # The old session ends as the update asked (close_notify both ways): not a removal.
    mgmt.on_sa_removal(old.sa_id)
    mgmt.on_session_closed(old.sa_id)
    updating = mgmt.get(old.sa_id)
    assert updating is not None and updating.state is SaState.UPDATING
    with pytest.raises(SaUnavailable, match="closed"):
        mgmt.check_send(old.sa_id)
    # Another peer's new SA replaces nothing.
    other = mgmt.on_handshake_complete(context("Clight-AE2"))
    assert other.updated is None
    # The Initiator's next handshake is the new SA.
    clock.now = T0 + timedelta(seconds=5)
    admission = mgmt.on_handshake_complete(context())
    new = admission.record
    replaced = admission.records[1]
    assert replaced.sa_id == old.sa_id and replaced.state is SaState.UPDATED
    assert replaced.replaced_by == new.sa_id and replaced.updated_at == clock.now
    assert admission.updated == SaUpdated(
        existing_sa_id=old.sa_id,
        update_operation=UpdatedOperation.SA_IDENTIFIER_AND_KEYS_UPDATED,
        new_sa_id=new.sa_id,
    )
    assert agent.flows[-1] == admission.updated
    assert sink.events(old.sa_id) == ["established", "updating", "updated"]
    assert mgmt.check_send(new.sa_id) == new
    with pytest.raises(SaUnavailable, match="updated"):
        mgmt.check_send(old.sa_id)


def test_responder_update_rejected_leaves_the_old_sa_working() -> None:
    mgmt, _, sink, clock = responder()
    old = mgmt.on_handshake_complete(context()).record
    mgmt.update(old.sa_id)
    # The peer's new handshake is refused: the update is not complete.
    mgmt.agent = Agent(refused=(AE,))
    assert not mgmt.on_handshake_complete(context()).admitted
    assert mgmt.check_send(old.sa_id).state is SaState.UPDATING
    clock.now = T0 + mgmt.update_timeout
    assert mgmt.expire_due() == []
    kept = mgmt.check_send(old.sa_id)
    assert kept.state is SaState.ESTABLISHED  # no gap in service
    assert sink.events(old.sa_id) == ["established", "updating", "update-rejected"]
    assert mgmt.update(old.sa_id).proceed  # and it can be updated again


def test_responder_update_whose_session_closed_and_no_one_came_back() -> None:
    mgmt, _, sink, clock = responder()
    old = mgmt.on_handshake_complete(context()).record
    mgmt.update(old.sa_id)
    mgmt.on_session_closed(old.sa_id)
    clock.now = T0 + mgmt.update_timeout
    mgmt.expire_due()
    assert mgmt.get(old.sa_id) is None
    assert sink.events(old.sa_id) == ["established", "updating", "closed"]


def test_remove_during_an_update() -> None:
    mgmt, *_ = responder()
    old = mgmt.on_handshake_complete(context()).record
    mgmt.update(old.sa_id)
    outcome = mgmt.remove(old.sa_id, "operator", both_sides=True)
    assert outcome.accepted and outcome.close_session
    assert mgmt.on_handshake_complete(context()).updated is None  # nothing left to replace


# -- the Initiator -----------------------------------------------------------------------
class Confirms:
    def __init__(self) -> None:
        self.flows: list[object] = []

    def initiate_sa_confirmed(self, confirm: InitiateSaConfirm) -> None:
        self.flows.append(confirm)

    def update_sa_confirmed(self, confirm: UpdateSaConfirm) -> None:
        self.flows.append(confirm)

    def remove_sa_confirmed(self, confirm: RemoveSaConfirm) -> None:
        self.flows.append(confirm)


REQUEST = InitiateSa(
    initiator_id=SessionCredentials(entity_id=AE, framework="provisioned-psk", key_id=KPSA_ID),
    responder_id=ResponderAuthorizationCredentials(
        entity_id="/mn-cse-123456", framework="provisioned-psk"
    ),
)


def initiator() -> tuple[InitiatorSaManagement, Confirms, MemorySink]:
    agent, sink = Confirms(), MemorySink()
    return InitiatorSaManagement(agent, sink, clock=lambda: T0), agent, sink


def test_initiator_establish_confirms_with_the_sa_parameters() -> None:
    mgmt, agent, _sink = initiator()
    ctx = context("/mn-cse-123456", local_id=None)
    est = mgmt.on_handshake_complete(ctx, REQUEST)
    assert est.refusal is None and est.record.role is SaRole.INITIATOR
    (confirm,) = agent.flows
    assert isinstance(confirm, InitiateSaConfirm) and confirm.result is Result.SUCCESS
    assert confirm.security_association is not None
    assert confirm.security_association.cipher_suite == "PSK-AES128-CCM8"
    assert confirm.security_association.key_fingerprint == "0123456789abcdef"
    assert mgmt.check_send(est.sa_id) == est.record


def test_initiator_refuses_a_responder_it_did_not_ask_for() -> None:
    mgmt, _agent, sink = initiator()
    est = mgmt.on_handshake_complete(context("/mn-cse-999999"), REQUEST)
    assert est.refusal is CauseOfRejection.ADMINISTRATIVE_REASONS
    assert est.record.state is SaState.FAILED and sink.events() == ["refused"]
    with pytest.raises(SaUnavailable):
        mgmt.check_send(est.sa_id)


def test_initiator_failed_handshake_confirms_the_cause() -> None:
    mgmt, agent, _ = initiator()
    failure = mgmt.on_handshake_failed("no shared cipher", REQUEST, no_common_parameters=True)
    assert failure.confirm == InitiateSaConfirm(
        result=Result.FAILURE, cause=CauseOfRejection.NO_PARAMETERS_IN_COMMON
    )
    assert agent.flows == [failure.confirm]
    assert failure.record.peer_id == "/mn-cse-123456"


def test_initiator_update_keeps_the_old_sa_until_the_new_one_stands() -> None:
    mgmt, agent, _sink = initiator()
    old = mgmt.on_handshake_complete(context("/mn-cse-123456"), REQUEST).record
    request = UpdateSa(
        existing_sa_id=old.sa_id, update_operation=UpdateOperation.UPDATE_SA_IDENTIFIER_AND_KEYS
    )
    plan = mgmt.update(request)
    assert plan.proceed and not plan.close_session  # keep serving during the new handshake
    assert mgmt.check_send(old.sa_id).state is SaState.UPDATING
    outcome = mgmt.on_update_established(old.sa_id, context("/mn-cse-123456"))
    assert outcome.record is not None and outcome.replaced is not None
    assert outcome.confirm == UpdateSaConfirm(
        existing_sa_id=old.sa_id, result=Acceptance.ACCEPTED, new_sa_id=outcome.record.sa_id
    )
    assert outcome.retire is not None
    assert outcome.retire.close_session and outcome.retire.evict_session
    assert outcome.replaced.replaced_by == outcome.record.sa_id
    assert agent.flows[-1] == outcome.confirm
    with pytest.raises(SaUnavailable, match="updated"):
        mgmt.check_send(old.sa_id)
    assert mgmt.check_send(outcome.record.sa_id) == outcome.record


def test_initiator_update_rejected_leaves_the_old_sa_working() -> None:
    mgmt, _agent, sink = initiator()
    old = mgmt.on_handshake_complete(context("/mn-cse-123456"), REQUEST).record
    request = UpdateSa(
        existing_sa_id=old.sa_id, update_operation=UpdateOperation.UPDATE_SA_IDENTIFIER_AND_KEYS
    )
    assert mgmt.update(request).proceed
    outcome = mgmt.on_update_failed(old.sa_id, "handshake failed: tls alert handshake failure")
    assert outcome.confirm.result is Acceptance.REJECTED and outcome.confirm.new_sa_id is None
    assert mgmt.check_send(old.sa_id).state is SaState.ESTABLISHED
    assert sink.events(old.sa_id) == ["established", "updating", "update-rejected"]


@pytest.mark.parametrize(
    "operation", [UpdateOperation.UPDATE_SA_KEYS, UpdateOperation.UPDATE_SA_IDENTIFIER]
)
def test_initiator_rejects_updates_tls_cannot_do(operation: UpdateOperation) -> None:
    mgmt, _agent, _ = initiator()
    old = mgmt.on_handshake_complete(context("/mn-cse-123456"), REQUEST).record
    plan = mgmt.update(UpdateSa(existing_sa_id=old.sa_id, update_operation=operation))
    assert not plan.proceed and plan.confirm is not None
    assert plan.confirm.result is Acceptance.REJECTED
    assert mgmt.check_send(old.sa_id).state is SaState.ESTABLISHED


@pytest.mark.parametrize("both_sides", [True, False])
def test_initiator_remove(both_sides: bool) -> None:
    mgmt, agent, _sink = initiator()
    rec = mgmt.on_handshake_complete(context("/mn-cse-123456"), REQUEST).record
    outcome = mgmt.remove(RemoveSa(sa_id=rec.sa_id), both_sides=both_sides)
    assert outcome.accepted and outcome.close_session is both_sides and outcome.evict_session
    assert outcome.confirm == RemoveSaConfirm(sa_id=rec.sa_id, result=Acceptance.ACCEPTED)
    again = mgmt.remove(RemoveSa(sa_id=rec.sa_id))
    assert again.confirm == RemoveSaConfirm(
        sa_id=rec.sa_id,
        result=Acceptance.REJECTED,
        rejection_reason=RemoveRejection.SA_IDENTIFIER_ALREADY_MARKED_INVALID,
    )
    assert agent.flows[-2:] == [outcome.confirm, again.confirm]
    with pytest.raises(SaUnavailable):
        mgmt.check_send(rec.sa_id)


def test_a_failing_sink_does_not_fail_the_sa() -> None:
    class Full:
        def record(self, rec: SaRecord, event: str) -> None:
            raise OSError("queue full")

    mgmt = ResponderSaManagement(sink=Full())
    rec = mgmt.on_handshake_complete(context()).record
    assert mgmt.check_send(rec.sa_id) == rec
