"""The Establish Security Association flows of seed 003 7.3.2 (tables 23-35).

Over (D)TLS the handshake realises them (docs/sa.md): tables 23, 24 and 35 are produced
by :mod:`m2msec.sa.management` for every framework; table 25 is the ClientHello /
ServerHello negotiation inside OpenSSL, seen only through its outcome; tables 26-34 (key
transport under public keys, authorization tickets and challenges) are never produced by
the PSK, certificate, MAF or GBA handshakes and exist here as the typed model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from m2msec.sa.flows.base import (
    _IA,
    _IM,
    _ON_FAILURE,
    _ON_SUCCESS,
    _RA,
    _RM,
    _SUCCESS_FAILURE,
    Flow,
    values,
)
from m2msec.sa.flows.values import (
    AuthorizationCode,
    CauseOfRejection,
    FailureCause,
    Relationship,
    ResponderAuthorizationCredentials,
    Result,
    SaParameters,
    SessionCredentials,
)
from m2msec.sa.records import SaId


# -- Establish Security Association (seed 003 7.3.2) -------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class InitiateSa(Flow):
    """Initiate SA, request (seed 003, table 23): ra, Initiator Agent to its SA Management."""

    TABLE, NAME = 23, "Initiate SA"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RA, _IA, _IM
    _MANDATORY = ("initiator_id", "responder_id")
    initiator_id: SessionCredentials
    responder_id: ResponderAuthorizationCredentials


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiateSaConfirm(Flow):
    """Initiate SA, confirm (seed 003, table 23): Result, the SA on Success, the Cause of
    rejection (either value) on Failure."""

    TABLE, NAME, PART = 23, "Initiate SA", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RA, _IM, _IA
    _MANDATORY = ("result",)
    _VALUES = values(result=_SUCCESS_FAILURE, cause=tuple(CauseOfRejection))
    result: Result
    security_association: SaParameters | None = None
    cause: CauseOfRejection | None = None

    def _check(self) -> None:
        self._only_if("security_association", self.result is Result.SUCCESS, _ON_SUCCESS)
        self._only_if("cause", self.result is Result.FAILURE, _ON_FAILURE)


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiateSaReceived(Flow):
    """Initiate SA Received, request (seed 003, table 24): rc, Responder's SA Management to
    the Responder Agent, once the handshake has named the Initiator and the SA."""

    TABLE, NAME = 24, "Initiate SA Received"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RC, _RM, _RA
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("initiator_id", "sa_id")
    initiator_id: SessionCredentials
    sa_id: SaId


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiateSaReceivedConfirm(Flow):
    """Initiate SA Received, confirm (seed 003, table 24): the Responder Agent's answer;
    on Failure the cause is "Administrative reasons", the only value the table lists."""

    TABLE, NAME, PART = 24, "Initiate SA Received", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RC, _RA, _RM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "result")
    _VALUES = values(
        result=_SUCCESS_FAILURE,
        cause=(CauseOfRejection.ADMINISTRATIVE_REASONS,),
    )
    sa_id: SaId
    result: Result
    cause: CauseOfRejection | None = None

    def _check(self) -> None:
        self._only_if("cause", self.result is Result.FAILURE, _ON_FAILURE)


@dataclass(frozen=True, slots=True, kw_only=True)
class SaParameterEstablishment(Flow):
    """SA Parameter Establishment, request (seed 003, table 25): the Possible Security
    Associations of the sending node (over (D)TLS: the ClientHello's offer)."""

    TABLE, NAME = 25, "SA Parameter Establishment"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM
    _MANDATORY = ("possible_security_associations",)
    possible_security_associations: tuple[SaParameters, ...]

    def _check(self) -> None:
        object.__setattr__(
            self, "possible_security_associations", tuple(self.possible_security_associations)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SaParameterEstablishmentConfirm(Flow):
    """SA Parameter Establishment, confirm (seed 003, table 25): on Success the SA both
    support and its identifier; on Failure "No parameters in common with responder"."""

    TABLE, NAME, PART = 25, "SA Parameter Establishment", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("result",)
    _VALUES = values(
        result=_SUCCESS_FAILURE,
        cause=(CauseOfRejection.NO_PARAMETERS_IN_COMMON,),
    )
    result: Result
    security_association: SaParameters | None = None
    sa_id: SaId | None = None
    cause: CauseOfRejection | None = None

    def _check(self) -> None:
        success = self.result is Result.SUCCESS
        self._only_if("security_association", success, _ON_SUCCESS)
        self._only_if("sa_id", success, _ON_SUCCESS)
        self._only_if("cause", not success, _ON_FAILURE)


@dataclass(frozen=True, slots=True, kw_only=True)
class _KeySending(Flow):
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "key_authorization_ticket")
    sa_id: SaId
    key_authorization_ticket: bytes
    encryption_key: bytes | None = None
    """A public key (DER SubjectPublicKeyInfo)."""
    encryption_key_reference: str | None = None

    def _check(self) -> None:
        self._at_least_one(("encryption_key", "encryption_key_reference"), "note 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResponderKey(_KeySending):
    """Send Responder Key (seed 003, table 26), unconfirmed, rb: Responder's SA Management
    to the Initiator's; an encryption key or a reference to one (note 1)."""

    TABLE, NAME, PART = 26, "Send Responder Key", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM


@dataclass(frozen=True, slots=True, kw_only=True)
class SendInitiatorKey(_KeySending):
    """Send Initiator Key (seed 003, table 28), unconfirmed, rb: Initiator's SA Management
    to the Responder's; an encryption key or a reference to one (note 1)."""

    TABLE, NAME, PART = 28, "Send Initiator Key", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiatorKeyingMaterial(Flow):
    """Initiator Keying Material, request (seed 003, table 27), rb (direction as the seed
    states it): a random string encrypted under the Responder's public key."""

    TABLE, NAME = 27, "Initiator Keying Material"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "initiator_keying_material")
    sa_id: SaId
    initiator_keying_material: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiatorKeyingMaterialConfirm(Flow):
    """Initiator Keying Material, confirm (seed 003, table 27): the Response proving the
    keys derived from the string."""

    TABLE, NAME, PART = 27, "Initiator Keying Material", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "response")
    sa_id: SaId
    response: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderKeyingMaterial(Flow):
    """Responder Keying Material, request (seed 003, table 29), rb: a random string
    encrypted under the Initiator's public key."""

    TABLE, NAME = 29, "Responder Keying Material"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "responder_keying_material")
    sa_id: SaId
    responder_keying_material: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderKeyingMaterialConfirm(Flow):
    """Responder Keying Material, confirm (seed 003, table 29): the Response."""

    TABLE, NAME, PART = 29, "Responder Keying Material", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "response")
    sa_id: SaId
    response: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResponderAuthorizationContext(Flow):
    """Send Responder Authorization Context (seed 003, table 30), unconfirmed, rb:
    Initiator's SA Management to the Responder's.

    Note 1 (a context description unless the ticket holds one) depends on the ticket's
    content, which is opaque here: both descriptions stay optional (docs/readings.md A-33).
    """

    TABLE, NAME, PART = 30, "Send Responder Authorization Context", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "authorization_ticket")
    sa_id: SaId
    authorization_ticket: bytes
    explicit_context_description: str | None = None
    context_description_reference: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _AuthorizationKeySending(Flow):
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id",)
    sa_id: SaId
    encryption_key: bytes | None = None
    """A public key (DER SubjectPublicKeyInfo)."""
    encryption_key_reference: str | None = None
    """A network address."""
    authorization_ticket: bytes | None = None
    authorization_ticket_reference: str | None = None
    authorization_code: AuthorizationCode | None = None

    def _check(self) -> None:
        self._at_least_one(("authorization_ticket", "authorization_ticket_reference"), "note 2")


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResponderAuthorizationKey(_AuthorizationKeySending):
    """Send Responder Authorization Key (seed 003, table 31), unconfirmed, rb: Responder's
    SA Management to the Initiator's. A ticket or its reference (note 2); notes 1 and 3
    depend on the ticket's content, opaque here (docs/readings.md A-33)."""

    TABLE, NAME, PART = 31, "Send Responder Authorization Key", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM


@dataclass(frozen=True, slots=True, kw_only=True)
class SendInitiatorAuthorizationKey(_AuthorizationKeySending):
    """Send Initiator Authorization Key (seed 003, table 33), unconfirmed, rb (direction as
    the seed states it). A ticket or its reference (note 2); notes 1 and 3 as table 31."""

    TABLE, NAME, PART = 33, "Send Initiator Authorization Key", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM


@dataclass(frozen=True, slots=True, kw_only=True)
class _Challenge(Flow):
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id",)
    sa_id: SaId
    encryption_challenge: bytes | None = None
    authentication_challenge: bytes | None = None

    def _check(self) -> None:
        self._at_least_one(("encryption_challenge", "authentication_challenge"), "note 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class _ChallengeConfirm(Flow):
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id",)
    sa_id: SaId
    response: bytes | None = field(default=None, repr=False)
    authorization_ticket: bytes | None = None
    authorization_code: AuthorizationCode | None = None

    def _check(self) -> None:
        # Notes 2 and 3 depend on the request (check_reply_to); alone: the ticket and the
        # code answer the same challenge, so they come together, and something answers.
        self._only_if(
            "authorization_code", self.authorization_ticket is not None, "note 3: with the ticket"
        )
        self._at_least_one(("response", "authorization_ticket"), "notes 2 and 3")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderAuthorizationChallenge(_Challenge):
    """Responder Authorization Challenge, request (seed 003, table 32), rb: Initiator's SA
    Management to the Responder's; an encryption or an authentication challenge (note 1)."""

    TABLE, NAME = 32, "Responder Authorization Challenge"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderAuthorizationChallengeConfirm(_ChallengeConfirm):
    """Responder Authorization Challenge, confirm (seed 003, table 32): the Response to an
    encryption challenge (note 2), ticket and code for an authentication challenge (note 3)."""

    TABLE, NAME, PART = 32, "Responder Authorization Challenge", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiatorAuthorizationChallenge(_Challenge):
    """Initiator Authorization Challenge, request (seed 003, table 34), rb: Initiator's SA
    Management to the Responder's; an encryption or an authentication challenge (note 1)."""

    TABLE, NAME = 34, "Initiator Authorization Challenge"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _IM, _RM


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiatorAuthorizationChallengeConfirm(_ChallengeConfirm):
    """Initiator Authorization Challenge, confirm (seed 003, table 34): notes 2 and 3 as
    table 32."""

    TABLE, NAME, PART = 34, "Initiator Authorization Challenge", "confirm"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RB, _RM, _IM


@dataclass(frozen=True, slots=True, kw_only=True)
class SaEstablishmentComplete(Flow):
    """SA Establishment Complete (seed 003, table 35), unconfirmed, rc: Responder's SA
    Management to the Responder Agent. The Establishment result is unmarked in the table
    and read as mandatory (docs/readings.md A-33); the Failure cause only on Failure."""

    TABLE, NAME, PART = 35, "SA Establishment Complete", "unconfirmed"
    RELATIONSHIP, SOURCE, DESTINATION = Relationship.RC, _RM, _RA
    _SA_IDS = ("sa_id",)
    _MANDATORY = ("sa_id", "establishment_result")
    _VALUES = values(establishment_result=_SUCCESS_FAILURE, failure_cause=tuple(FailureCause))
    sa_id: SaId
    establishment_result: Result
    failure_cause: FailureCause | None = None

    def _check(self) -> None:
        self._only_if(
            "failure_cause", self.establishment_result is Result.FAILURE, "the note: on Failure"
        )
