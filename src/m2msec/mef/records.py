"""The MEF's records (TS-0003 8.3.2.1, seed 004): Enrolees, their targets, enrolments, audit.

- :class:`EnrolmentTarget`: either a MAF (its MAF-ID, an FQDN) or an Enrolee B (its CSE-ID
  or AE-ID); an AE as Enrolee B needs a configured NAF FQDN (docs/readings.md A-27). Its
  :attr:`~EnrolmentTarget.canonical` text is the HMAC input and the comparison key
  (:func:`m2msec.ids.derivation_identity`); :attr:`~EnrolmentTarget.suid` the m2m:suid of
  its key (TS-0004 6.3.4.2.39: 21 for a MAF, 22 for an SAEF peer).
- :class:`Enrolee`: the Bootstrap Instruction Configuration of one Enrolee, found by its
  bootstrap credential (a KpmID, 8.3.2.1, or its certificate's identity, 8.3.2.2): the
  Enrolee-ID, the Enrolment Target and the lifetime of Ke (the Enrolment Expiry, 10.7).
- :class:`Enrolment`: Ke under its KeID, for which Enrolee and target, until when.
- :class:`MefAudit`: one audit record; it holds text and integers only, never a key.

:func:`enrolee_aad` and :func:`ke_aad` are the associated data the store seals Kpm and Ke
with (:mod:`m2msec.store.seal`): a row edited without the KEK (another target, a longer
expiry) no longer unseals.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import AeId, check_fqdn, derivation_identity, parse_entity_id
from m2msec.keyids import MAX_PSK_IDENTITY_LENGTH, KeId
from m2msec.maf.store_records import check_entity, check_key

__all__ = [
    "SUID_ENROLEE_B",
    "SUID_MAF",
    "Bootstrap",
    "Enrolee",
    "Enrolment",
    "EnrolmentTarget",
    "MefAudit",
    "MefEvent",
    "TargetKind",
    "check_kpm_id",
    "enrolee_aad",
    "ke_aad",
    "ke_id_text",
]

#: m2m:suid (TS-0004 6.3.4.2.39) of a remotely provisioned key for a MAF / for an SAEF peer.
SUID_MAF: Final = 21
SUID_ENROLEE_B: Final = 22


class TargetKind(enum.StrEnum):
    """What an Enrolment Target is (seed 004: a MAF or an Enrolee B)."""

    MAF = "maf"
    ENROLEE_B = "enrolee-b"


class Bootstrap(enum.StrEnum):
    """How an Enrolee authenticates its bootstrap handshake."""

    PSK = "psk"  # 8.3.2.1: psk_identity = KpmID, psk = Kpm
    CERTIFICATE = "cert"  # 8.3.2.2: the identity its certificate names


@dataclass(frozen=True, slots=True)
class EnrolmentTarget:
    """A MAF or an Enrolee B (module docstring); equal when kind and canonical text are."""

    kind: TargetKind
    target_id: str = field(compare=False)
    naf_fqdn: str | None = field(default=None, compare=False)
    canonical: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TargetKind(self.kind))
        enrolee_b = self.kind is TargetKind.ENROLEE_B
        canonical = derivation_identity(self.target_id, enrolee_b=enrolee_b)
        if self.naf_fqdn is not None:
            check_fqdn(self.naf_fqdn, "NAF FQDN")
            if not enrolee_b:
                raise ConfigurationError(
                    "a MAF target has no separate NAF FQDN: its MAF-ID is its FQDN"
                )
        object.__setattr__(self, "canonical", canonical)

    def check_configurable(self) -> None:
        """Refuse a target an Enrolee cannot be configured for: an AE as Enrolee B without
        its NAF FQDN (docs/readings.md A-27). A target that authenticated to fetch needs
        none, so this is not part of every value's check."""
        if (
            self.is_enrolee_b
            and self.naf_fqdn is None
            and isinstance(parse_entity_id(self.canonical), AeId)
        ):
            raise ConfigurationError(
                f"Enrolee B {self.target_id!r} is an AE: configure its NAF FQDN "
                "(docs/readings.md A-27)"
            )

    @classmethod
    def maf(cls, maf_id: str) -> EnrolmentTarget:
        return cls(TargetKind.MAF, maf_id)

    @classmethod
    def enrolee_b(cls, enrolee_b_id: str, naf_fqdn: str | None = None) -> EnrolmentTarget:
        return cls(TargetKind.ENROLEE_B, enrolee_b_id, naf_fqdn)

    @property
    def is_enrolee_b(self) -> bool:
        return self.kind is TargetKind.ENROLEE_B

    @property
    def suid(self) -> int:
        """The m2m:suid of the key this target fetches (21 MAF, 22 Enrolee B)."""
        return SUID_ENROLEE_B if self.is_enrolee_b else SUID_MAF

    @property
    def key_name(self) -> str:
        """The key's name for messages: "Kpsa" or "Km"."""
        return "Kpsa" if self.is_enrolee_b else "Km"

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.canonical}"


def check_kpm_id(kpm_id: str) -> str:
    """A KpmID travels as psk_identity (8.3.2.1): 1 to 128 octets (RFC 4279 5.3) of
    visible ASCII (our rule: TS-0003 gives it no syntax)."""
    if not kpm_id or not kpm_id.isascii() or not kpm_id.isprintable() or " " in kpm_id:
        raise IdentifierError(f"invalid KpmID {kpm_id[:80]!r}: visible ASCII only")
    if len(kpm_id) > MAX_PSK_IDENTITY_LENGTH:
        raise IdentifierError(f"KpmID is longer than {MAX_PSK_IDENTITY_LENGTH} octets")
    return kpm_id


@dataclass(frozen=True, slots=True)
class Enrolee:
    """One Enrolee's Bootstrap Instruction Configuration (8.3.2.1).

    ``bootstrap_id`` is the KpmID (``Bootstrap.PSK``) or the canonical Enrolee identity its
    certificate names (``Bootstrap.CERTIFICATE``). ``kpm`` is None for certificates and in
    listings; it is never in ``repr``. ``lifetime`` is the Enrolment Expiry given to Ke.
    """

    bootstrap: Bootstrap
    bootstrap_id: str
    enrolee_id: str
    target: EnrolmentTarget
    lifetime: timedelta
    kpm: bytes | None = field(default=None, repr=False)
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap", Bootstrap(self.bootstrap))
        if self.bootstrap is Bootstrap.PSK:
            check_kpm_id(self.bootstrap_id)
        else:
            canonical = derivation_identity(self.bootstrap_id, enrolee_b=True)
            if canonical != self.bootstrap_id:
                raise IdentifierError(
                    f"a certificate Enrolee is named by its canonical id {canonical!r}"
                )
        check_entity(self.enrolee_id, "the Enrolee-ID")
        self.target.check_configurable()
        if self.kpm is not None and self.bootstrap is Bootstrap.CERTIFICATE:
            raise ConfigurationError("a certificate Enrolee has no Kpm")
        if self.kpm is not None:
            check_key(self.kpm, f"the Kpm of {self.bootstrap_id!r}")
        if self.lifetime <= timedelta(0):
            raise ConfigurationError("the Enrolment Expiry (lifetime of Ke) must be positive")


@dataclass(frozen=True, slots=True)
class Enrolment:
    """Ke under its KeID (10.3.4), for ``enrolee_id`` and ``target``, until ``expires_at``
    (the Enrolment Expiry, 10.7; whole seconds). ``ke`` is never in ``repr``."""

    ke_id: KeId
    ke: bytes = field(repr=False)
    enrolee_id: str
    target: EnrolmentTarget
    expires_at: datetime
    created_at: datetime

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires_at


class MefEvent(enum.StrEnum):
    """What an audit record is about."""

    ENROLLED = "enrolled"  # Ke committed, Enrolment Exchange answered
    ENROLMENT_REFUSED = "enrolment-refused"
    FETCHED = "credentials-fetched"  # fetchCredentials answered with a key
    FETCH_REFUSED = "fetch-refused"
    KEY_RETRIEVED = "key-retrieved"  # MEF Key Retrieval (8.3.5.2.8) answered with a key
    KEY_RETRIEVAL_REFUSED = "key-retrieval-refused"
    ENROLEE_REMOVED = "enrolee-removed"  # m2msec mef remove-enrolee: its KeIDs refused (4004)


@dataclass(frozen=True, slots=True)
class MefAudit:
    """One audit record: text and integers only (keys cannot be put in one).

    ``requester`` is the authenticated identity of whoever asked (an Enrolee's bootstrap
    credential, or a target), ``reason`` why a request was refused (the detail behind the
    answer; never key material).
    """

    event: MefEvent
    time: datetime
    requester: str
    ke_id: str | None = None
    enrolee_id: str | None = None
    target: str | None = None
    suid: int | None = None
    expires: datetime | None = None
    rsc: int | None = None
    reason: str | None = None

    @classmethod
    def granted(
        cls,
        event: MefEvent,
        enrolment: Enrolment,
        requester: str,
        rsc: int,
        time: datetime | None = None,
    ) -> MefAudit:
        """The record of an enrolment made or a credential handed out (at ``time``, by
        default when the enrolment was made)."""
        return cls(
            event,
            enrolment.created_at if time is None else time,
            requester,
            ke_id=str(enrolment.ke_id),
            enrolee_id=enrolment.enrolee_id,
            target=str(enrolment.target),
            suid=enrolment.target.suid,
            expires=enrolment.expires_at,
            rsc=rsc,
        )

    def to_json(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {
            "time": self.time.astimezone(UTC).isoformat(timespec="milliseconds"),
            "event": self.event.value,
            "requester": self.requester[:256],
        }
        optional: dict[str, str | int | None] = {
            "keId": self.ke_id,
            "enroleeId": self.enrolee_id,
            "target": self.target,
            "suid": self.suid,
            "expires": None if self.expires is None else self.expires.isoformat(),
            "rsc": self.rsc,
            "reason": self.reason,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


def _lp(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _target_aad(target: EnrolmentTarget) -> bytes:
    return _lp(target.kind.value) + _lp(target.canonical) + _lp(target.naf_fqdn or "")


def enrolee_aad(enrolee: Enrolee) -> bytes:
    """Associated data sealing an Enrolee's Kpm (empty for certificates): everything that
    decides what the MEF provisions for it."""
    return b"".join(
        (
            b"m2msec/mef/enrolee\x00",
            _lp(f"{enrolee.bootstrap.value}:{enrolee.bootstrap_id}"),
            _lp(enrolee.enrolee_id),
            _target_aad(enrolee.target),
            int(enrolee.lifetime.total_seconds()).to_bytes(8, "big"),
        )
    )


def ke_id_text(ke_id: KeId | str) -> str:
    """The one stored text of a KeID: hexBinary in lower case, the FQDN case-insensitive
    (docs/readings.md A-05); a GBA KeID, the B-TID (seed 004 8.3.3.1), verbatim (A-25)."""
    if isinstance(ke_id, str):
        return ke_id
    return f"{ke_id.relative_hex}@{ke_id.fqdn.lower()}"


def ke_aad(ke_id: KeId | str, enrolee_id: str, target: EnrolmentTarget, expires: int) -> bytes:
    """Associated data sealing a Ke: its KeID, who it serves, until when (epoch seconds)."""
    return b"".join(
        (
            b"m2msec/mef/ke\x00",
            _lp(ke_id_text(ke_id)),
            _lp(enrolee_id),
            _target_aad(target),
            expires.to_bytes(8, "big", signed=True),
        )
    )
