"""What an Enrolee holds after an enrolment (TS-0003 8.3.2.1, 10.3.1-10.3.4, seed 004).

:class:`EnrolmentResult` is one Enrolment Exchange as the Enrolee keeps it: KeID (10.3.4),
the Enrolment Target (a MAF-ID or an Enrolee-B-ID), the Enrolee-ID the MEF answered, the
Enrolment Expiry (10.7), the bootstrap credential it was obtained with (a KpmID or the
Enrolee's certificate identity), Ke, and the credential derived from Ke for the target:
Km (10.3.2) for a MAF, Kpsa (10.3.3) for an Enrolee B. After a GBA bootstrap (seed 004
8.3.3.1) KeID is the B-TID, Ke is Ks and the credential Ks_(ext/int)_NAF
(:mod:`m2msec.frameworks.mef.gba`). Ke and the credential are never in ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from m2msec.keyids import KeId
from m2msec.mef.records import EnrolmentTarget

__all__ = ["EnrolmentResult"]


@dataclass(frozen=True, slots=True)
class EnrolmentResult:
    """One enrolment of this Enrolee (module docstring)."""

    #: A KeId, or the B-TID of a GBA bootstrap (seed 004 8.3.3.1; docs/readings.md A-25).
    ke_id: KeId | str
    target: EnrolmentTarget
    enrolee_id: str
    expires: datetime
    bootstrap_id: str
    ke: bytes = field(repr=False)
    credential: bytes = field(repr=False)
    created: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)

    @property
    def mef_fqdn(self) -> str:
        """The MEF that enrolled us: the domain of KeID (10.3.4), or of the B-TID (the MEF
        as BSF)."""
        if isinstance(self.ke_id, str):
            return self.ke_id.rpartition("@")[2].lower()
        return self.ke_id.mef_fqdn

    @property
    def key_name(self) -> str:
        """Km for a MAF target, Kpsa for an Enrolee B."""
        return self.target.key_name

    def expired(self, now: datetime | None = None) -> bool:
        """True once the Enrolment Expiry is reached: Ke and its credential end (10.7)."""
        return (now or datetime.now(UTC)) >= self.expires
