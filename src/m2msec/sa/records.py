"""The SA record: the parameters of one Security Association as one side keeps them.

Seed 003 7.3.1.1.2.2 and 7.3.1.1.2.4: the Initiator's and the Responder's SA Management
each "stores the SA keys and parameters". We store the parameters, never the keys: a
(D)TLS session holds those, and a record that outlives the process must not
(docs/sa.md). Per docs/readings.md A-24 an SA record is one (D)TLS session as seen from one
side; its identifier is an octet string derived from the session by a key exporter, the
same on both ends, never from a key.

Records are plain values; :mod:`m2msec.sa.store` keeps them with their history.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

# The one fingerprint implementation lives in the crypto layer (the TLS engine uses it
# too); the SA records name it here because a record holds its value.
from m2msec.crypto.fingerprint import FINGERPRINT_LABEL as FINGERPRINT_LABEL
from m2msec.crypto.fingerprint import certificate_fingerprint as certificate_fingerprint
from m2msec.crypto.fingerprint import key_fingerprint as key_fingerprint

__all__ = [
    "FINGERPRINT_LABEL",
    "Direction",
    "SaId",
    "SaRecord",
    "SaRole",
    "SaState",
    "certificate_fingerprint",
    "key_fingerprint",
]


class SaId(bytes):
    """A Security Association identifier: an octet string (seed 003, tables 24-44).

    Shown and typed as lowercase hex; the engine derives it with a key exporter
    (``SecurityContext.sa_id`` is its hex form).
    """

    __slots__ = ()

    @classmethod
    def from_hex(cls, text: str) -> SaId:
        """Parse the hex form; ValueError for anything else (an operator's typo)."""
        value = bytes.fromhex(text.strip())
        if not value:
            raise ValueError("an SA identifier is a non-empty octet string")
        return cls(value)

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"SaId({self.hex()!r})"


class SaRole(enum.StrEnum):
    """Which side of the SA this record is kept by (seed 003 7.3.1.1.1)."""

    INITIATOR = "initiator"
    RESPONDER = "responder"


class Direction(enum.StrEnum):
    """Which way protected messages flow over a one-way SA (seed 003 7.3.1).

    A (D)TLS session carries both ways, so it is recorded as the two one-way SAs of A-24:
    ``initiator-to-responder`` (SA1: requests of the TLS client) and
    ``responder-to-initiator`` (SA2: for request-reachable entities).
    """

    INITIATOR_TO_RESPONDER = "initiator-to-responder"
    RESPONDER_TO_INITIATOR = "responder-to-initiator"
    BOTH = "both"


class SaState(enum.StrEnum):
    """The life of an SA: established, then replaced by an update or marked invalid."""

    ESTABLISHING = "establishing"
    ESTABLISHED = "established"
    UPDATING = "updating"
    UPDATED = "updated"  # replaced by a newer SA (``replaced_by``), seed 003 7.3.3
    REMOVED = "removed"  # marked invalid, seed 003 7.3.6
    EXPIRED = "expired"  # its key's lifetime ended
    CLOSED = "closed"  # the session ended without a Remove (peer closed, idle, shutdown)
    FAILED = "failed"  # establishment refused; ``cause`` says why

    @property
    def live(self) -> bool:
        """True while messages may be sent and received over the SA."""
        return self in (SaState.ESTABLISHED, SaState.UPDATING)


@dataclass(frozen=True, slots=True)
class SaRecord:
    """The parameters of one SA as one side keeps them (never a key)."""

    sa_id: SaId
    role: SaRole
    framework: str
    local_id: str | None
    peer_id: str
    protocol: str
    cipher_suite: str
    key_id: str | None
    key_fingerprint: str | None
    direction: Direction
    established_at: datetime
    state: SaState
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    cause: str | None = None
    """The cause of the last refusal or the reason of a removal, safe to show."""
    replaced_by: SaId | None = None
    peer_address: str | None = None
