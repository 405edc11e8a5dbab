"""The information flows of seed 003's Security Association services, tables 23 to 44.

Seed 003 7.3.1.1 names four functional entities (the Security Association Initiator
Agent, the Initiator's SA Management, the Responder's SA Management, the Security
Association Responder Agent) and the relationships between them: ra (Initiator Agent -
Initiator's SA Management), rb (the two SA Managements) and rc (Responder's SA Management
- Responder Agent). Every flow of tables 23-44 crosses one of them. Each is a frozen
dataclass here with exactly the service elements of its table, in snake_case: a confirmed
flow is a request class and a ``...Confirm`` class, an unconfirmed one a single class.

Construction checks what the table and its notes say, and raises :class:`ValueError`:

* a mandatory element ("M") that is None or empty (an omitted keyword is Python's
  TypeError; :meth:`Flow.from_elements` turns a missing element into ValueError too);
* a conditional element ("O (note)") present exactly when its note says: the SA
  parameters of a successful Initiate SA, the cause of a rejected one, the rejection
  reason of a rejected Remove SA, ...; notes that depend on the request (table 36's new
  identifier, tables 32/34's answers to a challenge, table 39's responder keying
  material) are checked by :func:`check_reply_to`;
* values outside the table's list: tables 23-35 answer ``Success`` / ``Failure``
  (:class:`Result`), tables 36-44 ``Accepted`` / ``Rejected`` (:class:`Acceptance`); the
  Cause of rejection takes ``No parameters in common with Responder`` and ``Administrative
  reasons`` only where the table lists them (both in table 23, the second alone in 24, the
  first alone in 25). Remove (tables 42-44) has no cause element; its Rejection reason is
  ``Unknown SA Identifier`` / ``SA Identifier already marked invalid``.

The seed's slips and gaps, and how we read them, are docs/readings.md A-33 (notes of
tables 23, 24 and 40 naming the wrong result, table 35's unmarked result, table 39's
misplaced request column, table 41's third operation, table 25's relationship "re").
Secret-bearing elements (keying material, challenge responses) are left out of ``repr``.
Which flows the (D)TLS handshakes of each framework produce is docs/sa.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from m2msec.sa.flows.base import Flow, _fail
from m2msec.sa.flows.establish import (
    InitiateSa,
    InitiateSaConfirm,
    InitiateSaReceived,
    InitiateSaReceivedConfirm,
    InitiatorAuthorizationChallenge,
    InitiatorAuthorizationChallengeConfirm,
    InitiatorKeyingMaterial,
    InitiatorKeyingMaterialConfirm,
    ResponderAuthorizationChallenge,
    ResponderAuthorizationChallengeConfirm,
    ResponderKeyingMaterial,
    ResponderKeyingMaterialConfirm,
    SaEstablishmentComplete,
    SaParameterEstablishment,
    SaParameterEstablishmentConfirm,
    SendInitiatorAuthorizationKey,
    SendInitiatorKey,
    SendResponderAuthorizationContext,
    SendResponderAuthorizationKey,
    SendResponderKey,
    _Challenge,
    _ChallengeConfirm,
)
from m2msec.sa.flows.remove import RemoveSa, RemoveSaConfirm, SaRemoval, SaRemovalConfirm, SaRemoved
from m2msec.sa.flows.update import (
    SaIdentifierUpdate,
    SaIdentifierUpdateConfirm,
    SaIdentifierUpdateResponse,
    SaKeyUpdate,
    SaKeyUpdateConfirm,
    SaKeyUpdateResponse,
    SaUpdated,
    UpdateSa,
    UpdateSaConfirm,
)
from m2msec.sa.flows.values import (
    Acceptance,
    AuthorizationCode,
    CauseOfRejection,
    FailureCause,
    FunctionalEntity,
    KeyingMaterial,
    KeyingMaterialKind,
    KeyUpdateRejection,
    Relationship,
    RemoveRejection,
    ResponderAuthorizationCredentials,
    Result,
    SaParameters,
    SessionCredentials,
    SignatureKind,
    UpdatedOperation,
    UpdateOperation,
)

__all__ = [
    "CONFIRM_OF",
    "FLOWS_BY_TABLE",
    "Acceptance",
    "AuthorizationCode",
    "CauseOfRejection",
    "FailureCause",
    "Flow",
    "FunctionalEntity",
    "InitiateSa",
    "InitiateSaConfirm",
    "InitiateSaReceived",
    "InitiateSaReceivedConfirm",
    "InitiatorAuthorizationChallenge",
    "InitiatorAuthorizationChallengeConfirm",
    "InitiatorKeyingMaterial",
    "InitiatorKeyingMaterialConfirm",
    "KeyUpdateRejection",
    "KeyingMaterial",
    "KeyingMaterialKind",
    "Relationship",
    "RemoveRejection",
    "RemoveSa",
    "RemoveSaConfirm",
    "ResponderAuthorizationChallenge",
    "ResponderAuthorizationChallengeConfirm",
    "ResponderAuthorizationCredentials",
    "ResponderKeyingMaterial",
    "ResponderKeyingMaterialConfirm",
    "Result",
    "SaEstablishmentComplete",
    "SaIdentifierUpdate",
    "SaIdentifierUpdateConfirm",
    "SaIdentifierUpdateResponse",
    "SaKeyUpdate",
    "SaKeyUpdateConfirm",
    "SaKeyUpdateResponse",
    "SaParameterEstablishment",
    "SaParameterEstablishmentConfirm",
    "SaParameters",
    "SaRemoval",
    "SaRemovalConfirm",
    "SaRemoved",
    "SaUpdated",
    "SendInitiatorAuthorizationKey",
    "SendInitiatorKey",
    "SendResponderAuthorizationContext",
    "SendResponderAuthorizationKey",
    "SendResponderKey",
    "SessionCredentials",
    "SignatureKind",
    "UpdateOperation",
    "UpdateSa",
    "UpdateSaConfirm",
    "UpdatedOperation",
    "check_reply_to",
]


# -- the tables as a whole ---------------------------------------------------------------
#: Each confirmed flow's request class and its confirm class.
CONFIRM_OF: Mapping[type[Flow], type[Flow]] = {
    InitiateSa: InitiateSaConfirm,
    InitiateSaReceived: InitiateSaReceivedConfirm,
    SaParameterEstablishment: SaParameterEstablishmentConfirm,
    InitiatorKeyingMaterial: InitiatorKeyingMaterialConfirm,
    ResponderKeyingMaterial: ResponderKeyingMaterialConfirm,
    ResponderAuthorizationChallenge: ResponderAuthorizationChallengeConfirm,
    InitiatorAuthorizationChallenge: InitiatorAuthorizationChallengeConfirm,
    UpdateSa: UpdateSaConfirm,
    SaIdentifierUpdate: SaIdentifierUpdateConfirm,
    SaKeyUpdate: SaKeyUpdateConfirm,
    RemoveSa: RemoveSaConfirm,
    SaRemoval: SaRemovalConfirm,
}

_UNCONFIRMED: tuple[type[Flow], ...] = (
    SendResponderKey,
    SendInitiatorKey,
    SendResponderAuthorizationContext,
    SendResponderAuthorizationKey,
    SendInitiatorAuthorizationKey,
    SaEstablishmentComplete,
    SaIdentifierUpdateResponse,
    SaKeyUpdateResponse,
    SaUpdated,
    SaRemoved,
)


def _by_table() -> dict[int, tuple[type[Flow], ...]]:
    out: dict[int, list[type[Flow]]] = {}
    for request, confirm in CONFIRM_OF.items():
        out.setdefault(request.TABLE, []).extend((request, confirm))
    for flow in _UNCONFIRMED:
        out.setdefault(flow.TABLE, []).append(flow)
    return {table: tuple(out[table]) for table in sorted(out)}


#: Tables 23-44, each with its flow classes (request first).
FLOWS_BY_TABLE: Mapping[int, tuple[type[Flow], ...]] = _by_table()


def _same(request: Flow, confirm: Flow, name: str) -> None:
    a, b = getattr(request, name, None), getattr(confirm, name, None)
    if a is not None and b is not None and a != b:
        raise _fail(confirm, f"{name} {b} does not answer the request's {a}")


def check_reply_to(request: Flow, confirm: Flow) -> None:
    """Check that ``confirm`` answers ``request``; ValueError saying why not.

    The confirm must be the request's own confirm class and name the same SA (``sa_id``,
    ``existing_sa_id``), and the notes that depend on the request must hold: the SA chosen
    in table 25 is one of those offered; table 36's new identifier exactly when Accepted
    for an operation that changes the identifier; table 37's new identifier is the
    proposed one if Accepted and another if Rejected; table 39's Responder keying material
    exactly when asked for and Accepted; tables 32/34 answer each challenge that was sent
    (a Response to an encryption challenge, a ticket and code to an authentication one).
    """
    expected = CONFIRM_OF.get(type(request))
    if expected is None:
        raise ValueError(f"{type(request).__name__} is not the request of a confirmed flow")
    if type(confirm) is not expected:
        raise ValueError(
            f"{type(confirm).__name__} does not answer {request.NAME} "
            f"(seed 003, table {request.TABLE}: {expected.__name__})"
        )
    _same(request, confirm, "sa_id")
    _same(request, confirm, "existing_sa_id")
    if isinstance(request, SaParameterEstablishment):
        assert isinstance(confirm, SaParameterEstablishmentConfirm)
        chosen = confirm.security_association
        if chosen is not None and chosen not in request.possible_security_associations:
            raise _fail(confirm, "the Security Association chosen was not among those offered")
    elif isinstance(request, UpdateSa):
        assert isinstance(confirm, UpdateSaConfirm)
        if confirm.result is Acceptance.ACCEPTED:
            confirm._only_if("new_sa_id", request.update_operation.changes_identifier, "the note")
    elif isinstance(request, SaIdentifierUpdate):
        assert isinstance(confirm, SaIdentifierUpdateConfirm)
        proposed = confirm.new_sa_id == request.new_sa_id
        if proposed != (confirm.result is Acceptance.ACCEPTED):
            raise _fail(
                confirm,
                "note 2: the proposed new identifier if Accepted, a different one if Rejected",
            )
    elif isinstance(request, SaKeyUpdate):
        assert isinstance(confirm, SaKeyUpdateConfirm)
        if confirm.result is Acceptance.ACCEPTED:
            confirm._only_if(
                "responder_keying_material",
                request.responder_keying_material_requested,
                "note 2: when the request asked for it",
            )
    elif isinstance(request, _Challenge):
        assert isinstance(confirm, _ChallengeConfirm)
        confirm._only_if("response", request.encryption_challenge is not None, "note 2")
        confirm._only_if(
            "authorization_ticket", request.authentication_challenge is not None, "note 3"
        )
