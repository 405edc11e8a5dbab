"""The Update Security Association flows of seed 003 7.3.3 (tables 36-41).

Over (D)TLS an update is a fresh handshake that retires the old session
(docs/readings.md A-24): the operation is always "Update SA identifier and keys"; the
rb flows (tables 37-40) happen inside that handshake and are not produced as messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from m2msec.sa.flows.base import (
    _ACCEPTED_REJECTED,
    _IA,
    _IM,
    _RA,
    _RM,
    Flow,
    values,
)
from m2msec.sa.flows.values import (
    Acceptance,
    KeyingMaterial,
    KeyUpdateRejection,
    Relationship,
    UpdatedOperation,
    UpdateOperation,
)
from m2msec.sa.records import SaId


# -- Update Security Association (seed 003 7.3.3) ----------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateSa(Flow):
    """Update SA, request (seed 003, table 36): ra, Initiator Agent to its SA Management."""

    TABLE, NAME = 36, "Update SA"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RA, _IA, _IM
    _SA_IDS = ("existing_sa_id",)
    _MANDATORY = ("existing_sa_id", "update_operation")
    _VALUES = values(update_operation=tuple(UpdateOperation))
    existing_sa_id: SaId
    update_operation: UpdateOperation


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateSaConfirm(Flow):
    """Update SA, confirm (seed 003, table 36): the new SA identifier only when Accepted
    and the operation changed the identifier (checked against the request by
    :func:`check_reply_to`)."""

    TABLE, NAME, PART = 36, "Update SA", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RA, _IM, _IA
    _SA_IDS = ("existing_sa_id", "new_sa_id")
    _MANDATORY = ("existing_sa_id", "result")
    _VALUES = values(result=_ACCEPTED_REJECTED)
    existing_sa_id: SaId
    result: Acceptance
    new_sa_id: SaId | None = None

    def _check(self) -> None:
        if self.result is Acceptance.REJECTED:
            self._only_if("new_sa_id", False, "the note: only when Accepted")


@dataclass(frozen=True, slots=True, kw_only=True)
class SaIdentifierUpdate(Flow):
    """SA Identifier Update, request (seed 003, table 37), rb: both identifiers, sent under
    the existing SA's keys."""

    TABLE, NAME = 37, "SA Identifier Update"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM
    _SA_IDS = ("existing_sa_id", "new_sa_id")
    _MANDATORY = ("existing_sa_id", "new_sa_id")
    existing_sa_id: SaId
    new_sa_id: SaId


@dataclass(frozen=True, slots=True, kw_only=True)
class SaIdentifierUpdateConfirm(Flow):
    """SA Identifier Update, confirm (seed 003, table 37): the existing identifier only
    when Rejected (note 1); the new one always (note 2: the proposed one if Accepted,
    another if Rejected, see :func:`check_reply_to`)."""

    TABLE, NAME, PART = 37, "SA Identifier Update", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM
    _SA_IDS = ("existing_sa_id", "new_sa_id")
    _MANDATORY = ("new_sa_id", "result")
    _VALUES = values(result=_ACCEPTED_REJECTED)
    new_sa_id: SaId
    result: Acceptance
    existing_sa_id: SaId | None = None

    def _check(self) -> None:
        self._only_if("existing_sa_id", self.result is Acceptance.REJECTED, "note 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class SaIdentifierUpdateResponse(Flow):
    """SA Identifier Update Response (seed 003, table 38), unconfirmed, rb: the existing
    identifier only when Accepted (its note)."""

    TABLE, NAME, PART = 38, "SA Identifier Update Response", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM
    _SA_IDS = ("existing_sa_id", "new_sa_id")
    _MANDATORY = ("new_sa_id", "result")
    _VALUES = values(result=_ACCEPTED_REJECTED)
    new_sa_id: SaId
    result: Acceptance
    existing_sa_id: SaId | None = None

    def _check(self) -> None:
        self._only_if(
            "existing_sa_id", self.result is Acceptance.ACCEPTED, "the note: when Accepted"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SaKeyUpdate(Flow):
    """SA Key Update, request (seed 003, table 39), rb: new keying material under the
    existing keys; whether the Responder's is wanted (an element read into the request,
    docs/readings.md A-33)."""

    TABLE, NAME = 39, "SA Key Update"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "new_keying_material")
    sa_id: SaId
    new_keying_material: KeyingMaterial
    responder_keying_material_requested: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SaKeyUpdateConfirm(Flow):
    """SA Key Update, confirm (seed 003, table 39): the Rejection reason only when Rejected
    (note 3); the Responder keying material only when asked for (note 2), never on a
    rejection."""

    TABLE, NAME, PART = 39, "SA Key Update", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "result")
    _VALUES = values(result=_ACCEPTED_REJECTED, rejection_reason=tuple(KeyUpdateRejection))
    sa_id: SaId
    result: Acceptance
    responder_keying_material: KeyingMaterial | None = None
    rejection_reason: KeyUpdateRejection | None = None

    def _check(self) -> None:
        rejected = self.result is Acceptance.REJECTED
        self._only_if("rejection_reason", rejected, "note 3")
        if rejected:
            self._only_if("responder_keying_material", False, "note 2: not on a rejection")


@dataclass(frozen=True, slots=True, kw_only=True)
class SaKeyUpdateResponse(Flow):
    """SA Key Update Response (seed 003, table 40), unconfirmed, rb: a Rejection reason
    (of its two) when Rejected (its note says "Accepted", docs/readings.md A-33)."""

    TABLE, NAME, PART = 40, "SA Key Update Response", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "result")
    _VALUES = values(
        result=_ACCEPTED_REJECTED,
        rejection_reason=(
            KeyUpdateRejection.DECRYPTION_FAILURE,
            KeyUpdateRejection.UNWILLING_TO_CHANGE_KEY,
        ),
    )
    sa_id: SaId
    result: Acceptance
    rejection_reason: KeyUpdateRejection | None = None

    def _check(self) -> None:
        self._only_if("rejection_reason", self.result is Acceptance.REJECTED, "its note")


@dataclass(frozen=True, slots=True, kw_only=True)
class SaUpdated(Flow):
    """SA Updated (seed 003, table 41), unconfirmed, rc: Responder's SA Management to the
    Responder Agent; the new identifier exactly when the operation changed it."""

    TABLE, NAME, PART = 41, "SA Updated", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RC, _RM, _RA
    _SA_IDS = ("existing_sa_id", "new_sa_id")
    _MANDATORY = ("existing_sa_id", "update_operation")
    _VALUES = values(update_operation=tuple(UpdatedOperation))
    existing_sa_id: SaId
    update_operation: UpdatedOperation
    new_sa_id: SaId | None = None

    def _check(self) -> None:
        self._only_if("new_sa_id", self.update_operation.changes_identifier, "its note")
