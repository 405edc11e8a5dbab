"""What the SA Managements of seed 003 answer: the outcomes of Establish, Update and Remove.

The managements (:mod:`m2msec.sa.management`) are sans-IO: they decide, and return what
the caller (a server or an initiator holding the (D)TLS engine) must do to the session,
with the information flows of seed 003 tables 23-44 that the decision produced.

* :class:`Admission` / :class:`Establishment`: an Establish SA (7.3.2) at the Responder or
  the Initiator; ``refusal`` set when the SA was refused (the caller calls
  ``TLSEngine.refuse``);
* :class:`EstablishmentFailure`: a failed handshake, its Cause of rejection
  (:func:`cause_of_failure`: "No parameters in common with Responder" when OpenSSL found
  nothing in common, "Administrative reasons" for every refusal);
* :class:`UpdatePlan` / :class:`UpdateOutcome`: an Update SA (7.3.3), a fresh handshake
  that retires the old session (docs/readings.md A-24);
* :class:`RemoveOutcome`: a Remove SA (7.3.6) or an expiry: whether to close the session
  with close_notify (informing the peer) and whether to evict it from the session caches
  (``TLSEngine.forget_session``) so that it cannot come back by resumption.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from m2msec.errors import M2MSecError
from m2msec.sa.flows import (
    CauseOfRejection,
    InitiateSaConfirm,
    InitiateSaReceived,
    InitiateSaReceivedConfirm,
    RemoveRejection,
    RemoveSaConfirm,
    SaEstablishmentComplete,
    SaRemovalConfirm,
    SaRemoved,
    SaUpdated,
    UpdateSa,
    UpdateSaConfirm,
)
from m2msec.sa.records import SaId, SaRecord, SaState

__all__ = [
    "Admission",
    "Establishment",
    "EstablishmentFailure",
    "IllegalTransition",
    "RemoveOutcome",
    "SaUnavailable",
    "UpdateOutcome",
    "UpdatePlan",
    "cause_of_failure",
]


class IllegalTransition(M2MSecError, ValueError):
    """An SA event that its state table does not allow in the SA's current state."""

    def __init__(self, sa_id: SaId, state: SaState, event: str) -> None:
        super().__init__(f"SA {sa_id}: no transition from {state.value} on {event}")
        self.sa_id = sa_id
        self.state = state
        self.event = event


class SaUnavailable(M2MSecError):
    """A message over an SA that is unknown, removed, expired or closed: refused, never
    sent or accepted in clear (seed 003 7.3.4 / 7.3.5). ``reason`` is safe to log."""

    def __init__(self, sa_id: SaId, reason: str, state: SaState | None = None) -> None:
        super().__init__(f"SA {sa_id}: {reason}")
        self.sa_id = sa_id
        self.reason = reason
        self.state = state


def cause_of_failure(no_common_parameters: bool) -> CauseOfRejection:
    """The Cause of rejection of a failed Establish (seed 003, table 23).

    ``no_common_parameters`` is the engine's ``HandshakeFailed.no_common_parameters``: an
    empty suite / version / group intersection. Everything else that fails an
    establishment (an unknown or removed credential, a wrong key, a refused certificate, a
    policy or Responder Agent refusal, a peer that went away) is "Administrative reasons".
    """
    if no_common_parameters:
        return CauseOfRejection.NO_PARAMETERS_IN_COMMON
    return CauseOfRejection.ADMINISTRATIVE_REASONS


@dataclass(frozen=True, slots=True)
class Admission:
    """The Responder's answer to a finished handshake (seed 003 7.3.2, tables 24 and 35).

    ``records`` are the records made or changed: the new SA first, then the SA it replaced
    when it completes an update. ``refusal`` is set when the Responder Agent refused the SA
    (the caller then ends the session with ``TLSEngine.refuse``).
    """

    records: tuple[SaRecord, ...]
    received: InitiateSaReceived
    confirm: InitiateSaReceivedConfirm
    complete: SaEstablishmentComplete | None
    updated: SaUpdated | None = None
    refusal: CauseOfRejection | None = None

    @property
    def record(self) -> SaRecord:
        return self.records[0]

    @property
    def sa_id(self) -> SaId:
        return self.records[0].sa_id

    @property
    def admitted(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True, slots=True)
class Establishment:
    """The Initiator's answer to a finished handshake (seed 003, table 23's confirm).

    ``refusal`` is set when the Responder the handshake authenticated is not the one the
    Initiate SA request named (the caller ends the session with ``TLSEngine.refuse``).
    """

    record: SaRecord
    confirm: InitiateSaConfirm

    @property
    def sa_id(self) -> SaId:
        return self.record.sa_id

    @property
    def refusal(self) -> CauseOfRejection | None:
        return self.confirm.cause


@dataclass(frozen=True, slots=True)
class EstablishmentFailure:
    """A handshake that failed: the FAILED record, the Cause of rejection, and the flow
    that told the agent (table 35 at the Responder, table 23's confirm at the Initiator).

    A failed handshake has no session to export an identifier from: its record is named
    by 16 random octets (docs/sa.md).
    """

    record: SaRecord
    cause: CauseOfRejection
    complete: SaEstablishmentComplete | None = None
    confirm: InitiateSaConfirm | None = None


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """What an Update SA (seed 003 7.3.3) asks of the caller.

    ``proceed`` False: the update is rejected at once (``confirm`` says so at the
    Initiator) and the SA is unchanged. Otherwise the SA is ``updating`` and stays live:

    * Initiator (``close_session`` False): run a fresh handshake to the same Responder
      while the old session keeps serving, then report it (``on_update_established`` or
      ``on_update_failed``); the old session is retired only once the new SA stands;
    * Responder (``close_session`` True): end the old session gracefully (close_notify
      once the exchange in flight is answered) so that the Initiator's next handshake is the
      new SA; the old record is replaced when that SA is established.

    Either way the update is rejected, and the old SA keeps working if its session is
    still open, when no new SA stands by ``deadline``.
    """

    sa_id: SaId
    proceed: bool
    close_session: bool = False
    deadline: datetime | None = None
    record: SaRecord | None = None
    request: UpdateSa | None = None
    confirm: UpdateSaConfirm | None = None


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """The end of an Initiator's update: the confirm of table 36, the new SA's record (if
    Accepted) and what to do with the old session (``retire``: close and evict it)."""

    confirm: UpdateSaConfirm
    record: SaRecord | None
    replaced: SaRecord | None
    retire: RemoveOutcome | None


@dataclass(frozen=True, slots=True)
class RemoveOutcome:
    """What a Remove SA (seed 003 7.3.6) or an expiry asks of the caller.

    ``close_session``: send close_notify and close the transport (the peer is told: SA
    Removal, table 43); False for a local-only removal, where the session is left to the
    caller but every message over it is refused (``check_send`` / ``check_receive``).
    ``evict_session``: make the session unresumable (``TLSEngine.forget_session``), so the
    SA cannot come back by resumption. ``accepted`` False with ``rejection_reason`` for an
    unknown SA or one already marked invalid (nothing to do then).
    """

    sa_id: SaId
    accepted: bool
    close_session: bool = False
    evict_session: bool = False
    record: SaRecord | None = None
    rejection_reason: RemoveRejection | None = None
    confirm: RemoveSaConfirm | SaRemovalConfirm | None = None
    removed: SaRemoved | None = None
