"""The records of the MAF store (TS-0003 8.8): what the tables hold, and how secrets are bound.

- :class:`MasterCredential` / :class:`MafClientInfo`: a MAF Client's Master Credential,
  KmId -> Km (8.8.3.1), with the optional CSE-ID/AE-ID of Entity A (8.2.2.3);
- :class:`ClientRegistration`: a MAF Client Registration record (8.8.2.3);
- :class:`NewKey` / :class:`MafKey`: a Key Registration (8.8.2.7) to store / as stored.

:func:`km_aad` and :func:`kc_aad` are the associated data a Km and a Kc are sealed with
(:mod:`m2msec.store.seal`): a row edited in the database no longer unseals. KmIds are
parsed as TS-0003 10.6 says (docs/readings.md A-05, A-25); RelativeKeyIDs are stored as
lower-case hex. Times are whole seconds since the epoch plus, for expiries, microseconds
(schema 3, TS-0004 6.3.3).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from m2msec.errors import ConfigurationError, IdentifierError, StoreError
from m2msec.ids import parse_entity_id
from m2msec.keyids import KmId
from m2msec.store.db import from_epoch, to_epoch

__all__ = [
    "ENTITY_B_KINDS",
    "MAX_ENTITY_ID_OCTETS",
    "MAX_KEY_OCTETS",
    "MIN_KEY_OCTETS",
    "ClientRegistration",
    "MafClientInfo",
    "MafKey",
    "MasterCredential",
    "NewKey",
    "check_entity",
    "check_entity_b",
    "check_key",
    "epoch",
    "json_list",
    "json_tuple",
    "kc_aad",
    "km_aad",
    "micros",
    "parse_km_id",
    "parse_relative_key_id",
    "stored_time",
    "utc_now",
]

#: Entity B kinds (TS-0003 8.2.2.3, seed 001): in this release Entity B is an IN-CSE.
ENTITY_B_KINDS: Final = ("in-cse", "mn-cse", "asn-cse", "ae")
#: Key values (Km, Kc) we accept: OpenSSL's PSK limit above, 128 bits below.
MIN_KEY_OCTETS: Final = 16
MAX_KEY_OCTETS: Final = 64
MAX_ENTITY_ID_OCTETS: Final = 1024
#: RelativeKeyIDs are hexBinary; ours are 16 octets, foreign ones at most 64.
_REL_ID = re.compile(r"(?:[0-9A-Fa-f]{2}){1,64}")


def parse_km_id(text: str) -> KmId:
    """A KmId (TS-0003 10.6); a GBA B-TID used as KmId (docs/readings.md A-25) is taken verbatim."""
    try:
        return KmId.parse(text)
    except IdentifierError:
        return KmId.parse(text, verbatim=True)


def parse_relative_key_id(value: str | bytes) -> str:
    """A RelativeKeyID as stored: lower-case hex. Raises IdentifierError when malformed."""
    if isinstance(value, bytes | bytearray):
        if not 1 <= len(value) <= 64:
            raise IdentifierError("a RelativeKeyID is 1 to 64 octets")
        return bytes(value).hex()
    if not _REL_ID.fullmatch(value):
        raise IdentifierError(
            f"invalid RelativeKeyID {value[:80]!r}: expected an even number of hex digits "
            "(at most 128)"
        )
    return value.lower()


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def km_aad(km_id: str, entity_id: str | None) -> bytes:
    """Associated data sealing a Km: the canonical KmId and the entity id."""
    tail = b"\x00" if entity_id is None else b"\x01" + _lp(entity_id.encode())
    return b"m2msec/maf/km\x00" + _lp(km_id.encode()) + tail


def kc_aad(
    rel_id: str, km_id: str, suid: int, target_ids: str, expires_at: int, expires_us: int = 0
) -> bytes:
    """Associated data sealing a Kc: everything that decides who may have it, and until when.

    The expiry's microseconds are appended only when non-zero, so rows sealed before schema
    3 (whole seconds) still open; the fixed-width tail keeps the encoding unambiguous.
    """
    tail = expires_us.to_bytes(4, "big") if expires_us else b""
    return b"".join(
        (
            b"m2msec/maf/kc\x00",
            _lp(rel_id.encode()),
            _lp(km_id.encode()),
            suid.to_bytes(2, "big"),
            _lp(target_ids.encode()),
            expires_at.to_bytes(8, "big", signed=True),
            tail,
        )
    )


def json_list(values: Sequence[str] | None) -> str | None:
    if values is None:
        return None
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)


def json_tuple(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    data = json.loads(text)
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise StoreError("a stored list column is not a list of strings")
    return tuple(data)


def check_key(key: bytes, what: str) -> None:
    if not MIN_KEY_OCTETS <= len(key) <= MAX_KEY_OCTETS:
        raise ConfigurationError(
            f"{what} must be {MIN_KEY_OCTETS} to {MAX_KEY_OCTETS} octets, not {len(key)}"
        )


def check_entity(entity_id: str, what: str) -> str:
    if len(entity_id.encode("utf-8", "replace")) > MAX_ENTITY_ID_OCTETS:
        raise IdentifierError(f"{what} is longer than {MAX_ENTITY_ID_OCTETS} octets")
    parse_entity_id(entity_id)
    return entity_id


def check_entity_b(entity_id: str, kind: str, *, allow_non_in: bool) -> None:
    """An Entity B identity of ``kind`` (one of :data:`ENTITY_B_KINDS`) the MAF may hand
    keys to. Seed 001: in this release Entity B is an IN-CSE, any other kind needs
    ``allow_non_in``."""
    check_entity(entity_id, "the Entity B identity")
    if kind not in ENTITY_B_KINDS:
        raise ConfigurationError(
            f"unknown Entity B kind {kind!r}; one of {', '.join(ENTITY_B_KINDS)}"
        )
    if kind != "in-cse" and not allow_non_in:
        raise ConfigurationError(
            f"Entity B {entity_id!r} of kind {kind}: in this release Entity B is an "
            "IN-CSE (TS-0003 8.2.2.3); an explicit override is needed for another kind"
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


def epoch(value: datetime) -> int:
    """Whole seconds since the epoch (floor)."""
    out = to_epoch(value)
    assert out is not None
    return out


def stored_time(value: int, micros: int = 0) -> datetime:
    """The datetime of stored whole seconds and microseconds."""
    out = from_epoch(value)
    assert out is not None
    return out.replace(microsecond=micros) if micros else out


def micros(value: datetime) -> int:
    """The sub-second part of an expiry, kept beside its whole seconds (schema 3)."""
    return value.microsecond


@dataclass(frozen=True, slots=True)
class MasterCredential:
    """One MAF Client's Master Credential (8.8.3.1): KmId -> Km; Km never in ``repr``."""

    km_id: str
    canonical: str
    km: bytes = field(repr=False)
    entity_id: str | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class MafClientInfo:
    """A MAF Client as listed to operators: everything but the key."""

    km_id: str
    canonical: str
    entity_id: str | None
    created: datetime
    enabled: bool
    key_octets: int
    has_config: bool


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    """A MAF Client Registration record (8.8.2.3)."""

    reg_id: str
    km_id: str
    expires_at: datetime
    admin_fqdn: str
    labels: tuple[str, ...] | None = None
    created: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return (now or utc_now()) >= self.expires_at


@dataclass(frozen=True, slots=True)
class NewKey:
    """A Key Registration to store (8.8.2.7); ``relative_id`` is 16 octets for our keys."""

    relative_id: bytes
    kc: bytes = field(repr=False)
    expires_at: datetime
    km_id: str
    suid: int
    target_ids: tuple[str, ...]
    admin_fqdn: str
    labels: tuple[str, ...] | None = None
    reg_id: str | None = None

    @property
    def relative_hex(self) -> str:
        return self.relative_id.hex()


@dataclass(frozen=True, slots=True)
class MafKey:
    """A stored Key Registration. ``kc`` is None when listed (never unsealed) and after
    de-registration (the key value is erased)."""

    relative_id: str
    kc: bytes | None = field(repr=False)
    expires_at: datetime
    km_id: str
    suid: int
    target_ids: tuple[str, ...]
    admin_fqdn: str
    labels: tuple[str, ...] | None
    reg_id: str | None
    created: datetime
    deregistered: bool

    def expired(self, now: datetime | None = None) -> bool:
        return (now or utc_now()) >= self.expires_at

    def live(self, now: datetime | None = None) -> bool:
        """Neither de-registered nor expired."""
        return not self.deregistered and not self.expired(now)


