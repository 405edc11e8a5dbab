"""The Security Association Initiator and Responder Agents of seed 003 (7.3.1.1.2.1, 7.3.1.1.2.3).

The Responder Agent "responds to the request from the Initiator to establish or update an
SA": the application registers one with :class:`~m2msec.sa.management.ResponderSaManagement`
(the gateway is one), which tells it, across relationship rc, of

* Initiate SA Received (seed 003, table 24): a confirmed flow; the agent answers Success,
  or Failure with "Administrative reasons" to refuse the SA (the session is then ended and
  the SA recorded as refused);
* SA Establishment Complete (table 35), SA Updated (table 41) and SA Removed (table 44).

The Initiator Agent "determines the need ... to establish or update an SA ... and initiates
the procedure": it hands Initiate SA, Update SA and Remove SA requests (tables 23, 36, 42)
to :class:`~m2msec.sa.management.InitiatorSaManagement` across ra and is given their
confirms through the :class:`InitiatorAgent` protocol.

Agents are called synchronously from the sans-IO managements and must not block; an agent
that raises is treated as refusing (Responder) or ignored (Initiator), and logged.
"""

from __future__ import annotations

from typing import Protocol

from m2msec.sa.flows import (
    CauseOfRejection,
    InitiateSaConfirm,
    InitiateSaReceived,
    InitiateSaReceivedConfirm,
    RemoveSaConfirm,
    Result,
    SaEstablishmentComplete,
    SaRemoved,
    SaUpdated,
    UpdateSaConfirm,
)

__all__ = [
    "AcceptAll",
    "IgnoreConfirms",
    "InitiatorAgent",
    "ResponderAgent",
    "accept",
    "refuse",
]


class ResponderAgent(Protocol):
    """The Security Association Responder Agent (seed 003 7.3.1.1.2.3), across rc."""

    def initiate_sa_received(self, flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
        """Table 24: accept (Success) or refuse (Failure, Administrative reasons) the SA."""
        ...

    def sa_establishment_complete(self, flow: SaEstablishmentComplete) -> None:
        """Table 35: the SA is established (Success), or its establishment failed."""
        ...

    def sa_updated(self, flow: SaUpdated) -> None:
        """Table 41: an SA was replaced by a new one (its new identifier in the flow)."""
        ...

    def sa_removed(self, flow: SaRemoved) -> None:
        """Table 44: an SA was marked invalid."""
        ...


def accept(flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
    """The confirm of table 24 that accepts ``flow``'s SA."""
    return InitiateSaReceivedConfirm(sa_id=flow.sa_id, result=Result.SUCCESS)


def refuse(flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
    """The confirm of table 24 that refuses ``flow``'s SA for administrative reasons."""
    return InitiateSaReceivedConfirm(
        sa_id=flow.sa_id,
        result=Result.FAILURE,
        cause=CauseOfRejection.ADMINISTRATIVE_REASONS,
    )


class AcceptAll:
    """The default Responder Agent: accepts every SA the framework has authenticated, and
    takes note of nothing else (the SA records keep the history)."""

    def initiate_sa_received(self, flow: InitiateSaReceived) -> InitiateSaReceivedConfirm:
        return accept(flow)

    def sa_establishment_complete(self, flow: SaEstablishmentComplete) -> None:
        return None

    def sa_updated(self, flow: SaUpdated) -> None:
        return None

    def sa_removed(self, flow: SaRemoved) -> None:
        return None


class InitiatorAgent(Protocol):
    """The Security Association Initiator Agent (seed 003 7.3.1.1.2.1), across ra: the
    confirms of the requests it made."""

    def initiate_sa_confirmed(self, confirm: InitiateSaConfirm) -> None:
        """Table 23: the SA is established (its parameters) or not (the cause)."""
        ...

    def update_sa_confirmed(self, confirm: UpdateSaConfirm) -> None:
        """Table 36: the update was Accepted (the new identifier) or Rejected."""
        ...

    def remove_sa_confirmed(self, confirm: RemoveSaConfirm) -> None:
        """Table 42: the SA was marked invalid (Accepted) or not (the rejection reason)."""
        ...


class IgnoreConfirms:
    """The default Initiator Agent: the caller reads the outcomes the management returns."""

    def initiate_sa_confirmed(self, confirm: InitiateSaConfirm) -> None:
        return None

    def update_sa_confirmed(self, confirm: UpdateSaConfirm) -> None:
        return None

    def remove_sa_confirmed(self, confirm: RemoveSaConfirm) -> None:
        return None
