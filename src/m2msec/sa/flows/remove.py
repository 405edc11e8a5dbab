"""The Remove Security Association flows of seed 003 7.3.6 (tables 42-44).

Remove has no Cause of rejection: the reason of a removal goes into the SA record and the
log (docs/sa.md). Over (D)TLS, SA Removal (table 43) is the close_notify.
"""

from __future__ import annotations

from dataclasses import dataclass

from m2msec.sa.flows.base import _ACCEPTED_REJECTED, _IA, _IM, _ON_REJECTED, _RA, _RM, Flow, values
from m2msec.sa.flows.values import Acceptance, Relationship, RemoveRejection
from m2msec.sa.records import SaId


# -- Remove Security Association (seed 003 7.3.6): no cause element ----------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveSa(Flow):
    """Remove SA, request (seed 003, table 42): ra, Initiator Agent to its SA Management."""

    TABLE, NAME = 42, "Remove SA"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RA, _IA, _IM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id",)
    sa_id: SaId


@dataclass(frozen=True, slots=True, kw_only=True)
class _RemovalConfirm(Flow):
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "result")
    _VALUES = values(result=_ACCEPTED_REJECTED, rejection_reason=tuple(RemoveRejection))
    sa_id: SaId
    result: Acceptance
    rejection_reason: RemoveRejection | None = None

    def _check(self) -> None:
        self._only_if("rejection_reason", self.result is Acceptance.REJECTED, _ON_REJECTED)


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveSaConfirm(_RemovalConfirm):
    """Remove SA, confirm (seed 003, table 42): Accepted, or Rejected with its reason."""

    TABLE, NAME, PART = 42, "Remove SA", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RA, _IM, _IA


@dataclass(frozen=True, slots=True, kw_only=True)
class SaRemoval(Flow):
    """SA Removal, request (seed 003, table 43), rb: over (D)TLS, the close_notify."""

    TABLE, NAME = 43, "SA Removal"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id",)
    sa_id: SaId


@dataclass(frozen=True, slots=True, kw_only=True)
class SaRemovalConfirm(_RemovalConfirm):
    """SA Removal, confirm (seed 003, table 43): Accepted, or Rejected with its reason."""

    TABLE, NAME, PART = 43, "SA Removal", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM


@dataclass(frozen=True, slots=True, kw_only=True)
class SaRemoved(Flow):
    """SA Removed (seed 003, table 44), unconfirmed, rc: Responder's SA Management to the
    Responder Agent. The identifier alone: no cause (the reason of a removal goes into the
    SA record and the log, docs/sa.md)."""

    TABLE, NAME, PART = 44, "SA Removed", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RC, _RM, _RA
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id",)
    sa_id: SaId
