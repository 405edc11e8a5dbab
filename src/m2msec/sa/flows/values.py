"""The values of seed 003's SA information flows (tables 23-44): results, causes,
operations, rejection reasons, and the composite elements (credentials, SA parameters,
authorization codes, keying material). See :mod:`m2msec.sa.flows`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


# -- values of the tables ------------------------------------------------------------------
class Result(enum.StrEnum):
    """Result of tables 23-35 (seed 003)."""

    SUCCESS = "Success"
    FAILURE = "Failure"


class Acceptance(enum.StrEnum):
    """Result of tables 36-44 (seed 003)."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


class CauseOfRejection(enum.StrEnum):
    """Cause of rejection (seed 003 tables 23: both; 24: administrative; 25: no parameters)."""

    NO_PARAMETERS_IN_COMMON = "No parameters in common with Responder"
    ADMINISTRATIVE_REASONS = "Administrative reasons"


class FailureCause(enum.StrEnum):
    """Failure cause of SA Establishment Complete (seed 003, table 35)."""

    UNABLE_TO_MATCH_SECURITY_PARAMETERS = "Unable to match security parameters with Initiator"


class UpdateOperation(enum.StrEnum):
    """Update operation of Update SA (seed 003, table 36)."""

    UPDATE_SA_IDENTIFIER = "Update SA identifier"
    UPDATE_SA_KEYS = "Update SA keys"
    UPDATE_SA_IDENTIFIER_AND_KEYS = "Update SA identifier and keys"

    @property
    def changes_identifier(self) -> bool:
        return self is not UpdateOperation.UPDATE_SA_KEYS


class UpdatedOperation(enum.StrEnum):
    """Update operation of SA Updated (seed 003, table 41; the third value is its note's)."""

    SA_IDENTIFIER_UPDATED = "SA identifier updated"
    SA_KEYS_UPDATED = "SA keys updated"
    SA_IDENTIFIER_AND_KEYS_UPDATED = "SA identifier and keys updated"

    @property
    def changes_identifier(self) -> bool:
        return self is not UpdatedOperation.SA_KEYS_UPDATED


class KeyUpdateRejection(enum.StrEnum):
    """Rejection reason of SA Key Update (seed 003, table 39; table 40 allows two of them)."""

    DECRYPTION_FAILURE = "Decryption failure"
    UNABLE_TO_ENCRYPT_WITH_INITIATOR_KEY = "Unable to encrypt with Initiator key"
    UNWILLING_TO_CHANGE_KEY = "Unwilling to change key"


class RemoveRejection(enum.StrEnum):
    """Rejection reason of Remove SA and SA Removal (seed 003, tables 42 and 43)."""

    UNKNOWN_SA_IDENTIFIER = "Unknown SA Identifier"
    SA_IDENTIFIER_ALREADY_MARKED_INVALID = "SA Identifier already marked invalid"


class SignatureKind(enum.StrEnum):
    """What an Authorization code is (seed 003, tables 31-34)."""

    PUBLIC_KEY = "Cryptographic signature generated with a public key"
    SYMMETRIC_KEY = "Cryptographic signature generated with a symmetric key"


class KeyingMaterialKind(enum.StrEnum):
    """What keying material is (seed 003, table 39)."""

    ENCRYPTION_KEY = "Encryption key"
    DERIVATION_STRING = "Cryptographic string from which the key can be derived"


class FunctionalEntity(enum.StrEnum):
    """The functional entities of seed 003 7.3.1.1.2."""

    INITIATOR_AGENT = "Security Association Initiator Agent"
    INITIATOR_SA_MANAGEMENT = "Initiator's Security Association Management"
    RESPONDER_SA_MANAGEMENT = "Responder's Security Association Management"
    RESPONDER_AGENT = "Security Association Responder Agent"


class Relationship(enum.StrEnum):
    """The relationships of seed 003 7.3.1.1.1."""

    RA = "ra"
    RB = "rb"
    RC = "rc"


# -- composite values --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Credentials:
    entity_id: str
    """The CSE-ID or AE-ID (IdA, IdB of TS-0003 8.2)."""
    framework: str
    """The Security Association Establishment Framework (``tls.context.Framework`` value)."""
    key_id: str | None = None
    """KpsaId, KmId/KcId, the certificate fingerprint or the B-TID; never a key."""

    def __post_init__(self) -> None:
        if not self.entity_id or not self.framework:
            raise ValueError(f"{type(self).__name__} needs an entity identifier and a framework")


@dataclass(frozen=True, slots=True)
class SessionCredentials(_Credentials):
    """The Initiator's identifier: "Session Credentials" (seed 003, tables 23 and 24)."""


@dataclass(frozen=True, slots=True)
class ResponderAuthorizationCredentials(_Credentials):
    """The Responder's identifier: "Responder Authorization Credentials" (seed 003, table 23)."""


@dataclass(frozen=True, slots=True)
class SaParameters:
    """One "Set of Security Association Parameters" (seed 003, tables 23 and 25).

    Over (D)TLS: the framework, protocol version and cipher suite, with the key's
    identifier and fingerprint and its end of life once agreed (docs/sa.md).
    """

    framework: str
    protocol: str
    cipher_suite: str
    key_id: str | None = None
    key_fingerprint: str | None = None
    valid_until: datetime | None = None

    def __post_init__(self) -> None:
        if not self.framework or not self.protocol or not self.cipher_suite:
            raise ValueError("SA parameters need a framework, a protocol and a cipher suite")


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    """An Authorization code: a signature and how it was made (seed 003, tables 31-34)."""

    kind: SignatureKind
    signature: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SignatureKind(self.kind))
        if not self.signature:
            raise ValueError("an authorization code needs a signature")


@dataclass(frozen=True, slots=True)
class KeyingMaterial:
    """New or responder keying material (seed 003, table 39), encrypted under the SA's keys."""

    kind: KeyingMaterialKind
    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", KeyingMaterialKind(self.kind))
        if not self.value:
            raise ValueError("keying material must not be empty")
