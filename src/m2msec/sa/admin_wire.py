"""The messages of the SA administration API, for both its roles (sans-IO).

The values an operator's request and its answer carry, and their JSON: the SA record
(:func:`record_to_json` / :func:`record_from_json`, every field of
:class:`~m2msec.sa.records.SaRecord`, times in TS-0004 6.3.3's basic UTC format through
:mod:`m2msec.m2mtime`; never a key, only its one-way fingerprint), an SA's detail with
its history, the outcome of an Update (seed 003 7.3.3) or Remove (seed 003 7.3.6) and its
:class:`RejectionReason`. The server side (:mod:`m2msec.sa.admin`) writes them, the client
(``m2msec.servers.admin.AdminClient``) reads the answers with :func:`read_list`,
:func:`read_detail` and :func:`read_outcome`, as the MAF's wire module serves Entity A and
the MAF alike. docs/sa.md section 7 describes the format.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

from m2msec.errors import M2MSecError
from m2msec.m2mtime import M2MTimeError, format_time, parse_time
from m2msec.sa.records import Direction, SaId, SaRecord, SaRole, SaState
from m2msec.sa.store_schema import SaEvent

__all__ = [
    "MAX_SA_ID_OCTETS",
    "AdminOutcome",
    "AdminProtocolError",
    "RejectionReason",
    "SaDetail",
    "SaHistoryEntry",
    "SaJsonError",
    "detail_from_json",
    "detail_to_json",
    "history_entry",
    "parse_sa_id",
    "read_detail",
    "read_list",
    "read_outcome",
    "record_from_json",
    "record_to_json",
]

#: The longest SA identifier accepted (ours are 16 octets, docs/readings.md A-24).
MAX_SA_ID_OCTETS: Final = 64
E = TypeVar("E", bound=enum.StrEnum)


# ----------------------------------------------------------------------------- values


class SaJsonError(ValueError):
    """A JSON document that is not an SA record (or detail, or answer) of this API."""


@dataclass(frozen=True, slots=True)
class SaHistoryEntry:
    """One event in the life of an SA as its side recorded it (established, updated, ...)."""

    at: datetime
    event: str
    state: SaState
    cause: str | None = None


def history_entry(event: SaEvent) -> SaHistoryEntry:
    """The one adapter from a row of the record store's history
    (:class:`~m2msec.sa.store_schema.SaEvent`) to what an operator is shown of it."""
    return SaHistoryEntry(at=event.at, event=event.event, state=event.state, cause=event.cause)


@dataclass(frozen=True, slots=True)
class SaDetail:
    """What ``GET /sa/<hex>`` shows: the record as it stands and the events before it."""

    record: SaRecord
    history: tuple[SaHistoryEntry, ...] = ()


class RejectionReason(enum.StrEnum):
    """Why the Responder did not perform an operator's request (each has its HTTP status)."""

    UNKNOWN_SA = "unknown-sa"  # no SA with that identifier (404)
    UNKNOWN_PEER = "unknown-peer"  # no live SA with that peer (404)
    NOT_LIVE = "not-live"  # the SA was already removed, replaced, closed or expired (409)
    REFUSED = "refused"  # the SA Management or the Responder Agent refused (409)
    UNAVAILABLE = "unavailable"  # the Responder is shutting down (503)

    @property
    def http_status(self) -> int:
        return _REJECTION_STATUS[self]


_REJECTION_STATUS: Final = {
    RejectionReason.UNKNOWN_SA: 404,
    RejectionReason.UNKNOWN_PEER: 404,
    RejectionReason.NOT_LIVE: 409,
    RejectionReason.REFUSED: 409,
    RejectionReason.UNAVAILABLE: 503,
}


@dataclass(frozen=True, slots=True)
class AdminOutcome:
    """The result of an Update or Remove: accepted with the SAs it acted on, or rejected.

    ``message`` is shown to the operator as it is: it must be safe to show (no key).
    """

    accepted: bool
    records: tuple[SaRecord, ...] = ()
    reason: RejectionReason | None = None
    message: str = ""

    def __post_init__(self) -> None:
        if self.accepted == (self.reason is not None):
            raise ValueError("an accepted outcome has no rejection reason, a rejected one has")

    @classmethod
    def accept(cls, records: Sequence[SaRecord] = (), message: str = "") -> AdminOutcome:
        return cls(True, tuple(records), None, message)

    @classmethod
    def reject(cls, reason: RejectionReason, message: str = "") -> AdminOutcome:
        return cls(False, (), reason, message or _DEFAULT_MESSAGE[reason])


_DEFAULT_MESSAGE: Final = {
    RejectionReason.UNKNOWN_SA: "no SA with this identifier",
    RejectionReason.UNKNOWN_PEER: "no live SA with this peer",
    RejectionReason.NOT_LIVE: "the SA is no longer live",
    RejectionReason.REFUSED: "the Responder refused the operation",
    RejectionReason.UNAVAILABLE: "the Responder is shutting down",
}


# ----------------------------------------------------------------------------- JSON


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def record_to_json(record: SaRecord) -> dict[str, Any]:
    """An SA record as a JSON object: every field, plus ``live`` for the reader's ease."""
    return {
        "sa_id": record.sa_id.hex(),
        "role": record.role.value,
        "framework": record.framework,
        "local_id": record.local_id,
        "peer_id": record.peer_id,
        "protocol": record.protocol,
        "cipher_suite": record.cipher_suite,
        "key_id": record.key_id,
        "key_fingerprint": record.key_fingerprint,
        "direction": record.direction.value,
        "established_at": format_time(record.established_at),
        "state": record.state.value,
        "live": record.state.live,
        "updated_at": _time(record.updated_at),
        "expires_at": _time(record.expires_at),
        "cause": record.cause,
        "replaced_by": None if record.replaced_by is None else record.replaced_by.hex(),
        "peer_address": record.peer_address,
    }


def _field(doc: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    if name not in doc:
        if optional:
            return None
        raise SaJsonError(f"SA record has no {name!r}")
    value = doc[name]
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SaJsonError(f"SA record field {name!r} must be a string")
    return value


def _enum(kind: type[E], doc: Mapping[str, Any], name: str) -> E:
    text = _field(doc, name)
    try:
        return kind(text)
    except ValueError:
        raise SaJsonError(f"SA record field {name!r} has an unknown value {text[:40]!r}") from None


def _id(text: str | None, name: str) -> SaId | None:
    if text is None:
        return None
    try:
        return parse_sa_id(text)
    except ValueError as exc:
        raise SaJsonError(f"SA record field {name!r}: {exc}") from None


def _parsed_time(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text, name)
    except M2MTimeError as exc:
        raise SaJsonError(str(exc)) from None


def record_from_json(doc: object) -> SaRecord:
    """The SA record of a :func:`record_to_json` object; :class:`SaJsonError` otherwise.

    Fields this reader does not know (a newer Responder's) are ignored; ``live`` is
    derived from ``state``, so it is not read back.
    """
    if not isinstance(doc, Mapping):
        raise SaJsonError("an SA record is a JSON object")
    sa_id = _id(_field(doc, "sa_id"), "sa_id")
    established = _parsed_time(_field(doc, "established_at"), "established_at")
    assert sa_id is not None and established is not None
    return SaRecord(
        sa_id=sa_id,
        role=_enum(SaRole, doc, "role"),
        framework=_field(doc, "framework"),
        local_id=_field(doc, "local_id", optional=True),
        peer_id=_field(doc, "peer_id"),
        protocol=_field(doc, "protocol"),
        cipher_suite=_field(doc, "cipher_suite"),
        key_id=_field(doc, "key_id", optional=True),
        key_fingerprint=_field(doc, "key_fingerprint", optional=True),
        direction=_enum(Direction, doc, "direction"),
        established_at=established,
        state=_enum(SaState, doc, "state"),
        updated_at=_parsed_time(_field(doc, "updated_at", optional=True), "updated_at"),
        expires_at=_parsed_time(_field(doc, "expires_at", optional=True), "expires_at"),
        cause=_field(doc, "cause", optional=True),
        replaced_by=_id(_field(doc, "replaced_by", optional=True), "replaced_by"),
        peer_address=_field(doc, "peer_address", optional=True),
    )


def detail_to_json(detail: SaDetail) -> dict[str, Any]:
    """``{"sa": record, "history": [{"at", "event", "state", "cause"}, ...]}``."""
    return {
        "sa": record_to_json(detail.record),
        "history": [
            {
                "at": format_time(entry.at),
                "event": entry.event,
                "state": entry.state.value,
                "cause": entry.cause,
            }
            for entry in detail.history
        ],
    }


def detail_from_json(doc: object) -> SaDetail:
    """The :class:`SaDetail` of a :func:`detail_to_json` object; SaJsonError otherwise."""
    if not isinstance(doc, Mapping):
        raise SaJsonError("an SA detail is a JSON object")
    history = doc.get("history", [])
    if not isinstance(history, list):
        raise SaJsonError("an SA history is a JSON array")
    entries = []
    for item in history:
        if not isinstance(item, Mapping):
            raise SaJsonError("an SA history entry is a JSON object")
        at = _parsed_time(_field(item, "at"), "at")
        assert at is not None
        entries.append(
            SaHistoryEntry(
                at=at,
                event=_field(item, "event"),
                state=_enum(SaState, item, "state"),
                cause=_field(item, "cause", optional=True),
            )
        )
    return SaDetail(record_from_json(doc.get("sa")), tuple(entries))


def parse_sa_id(text: str) -> SaId:
    """An SA identifier typed as hex (either case); ValueError with a clear message."""
    text = text.strip()
    if not text or len(text) > 2 * MAX_SA_ID_OCTETS:
        raise ValueError(
            f"an SA identifier is 1 to {MAX_SA_ID_OCTETS} octets in hex "
            f"(got {len(text)} characters)"
        )
    if any(c not in "0123456789abcdefABCDEF" for c in text) or len(text) % 2:
        raise ValueError(f"SA identifier {text[:40]!r} is not hexadecimal octets")
    return SaId.from_hex(text)


# ----------------------------------------------------------------------------- client side


class AdminProtocolError(M2MSecError):
    """The Responder answered something other than this API's answer (or refused the request
    as malformed): ``status`` and its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the admin endpoint answered {status}: {message}")
        self.status = status
        self.message = message


def _document(status: int, body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeError, ValueError):
        raise AdminProtocolError(status, "not a JSON answer") from None
    if not isinstance(doc, dict):
        raise AdminProtocolError(status, "not a JSON object")
    return doc


def _rejected(status: int, doc: Mapping[str, Any]) -> AdminOutcome | None:
    if doc.get("result") != "rejected":
        return None
    try:
        reason = RejectionReason(str(doc.get("reason")))
    except ValueError:
        return AdminOutcome.reject(RejectionReason.REFUSED, str(doc.get("error", ""))[:500])
    return AdminOutcome.reject(reason, str(doc.get("error", ""))[:500])


def _failure(status: int, doc: Mapping[str, Any]) -> AdminProtocolError:
    return AdminProtocolError(status, str(doc.get("error", "no error message"))[:500])


def read_list(status: int, body: bytes) -> tuple[SaRecord, ...]:
    """The records of a list answer; AdminProtocolError for any other answer."""
    doc = _document(status, body)
    if status != 200:
        raise _failure(status, doc)
    items = doc.get("sas")
    if not isinstance(items, list):
        raise AdminProtocolError(status, "a list answer has an 'sas' array")
    try:
        return tuple(record_from_json(item) for item in items)
    except SaJsonError as exc:
        raise AdminProtocolError(status, str(exc)) from None


def read_detail(status: int, body: bytes) -> SaDetail | None:
    """The detail of a show answer; None for an unknown SA."""
    doc = _document(status, body)
    if status != 200:
        rejected = _rejected(status, doc)
        if rejected is not None and rejected.reason is RejectionReason.UNKNOWN_SA:
            return None
        raise _failure(status, doc)
    try:
        return detail_from_json(doc)
    except SaJsonError as exc:
        raise AdminProtocolError(status, str(exc)) from None


def read_outcome(status: int, body: bytes) -> AdminOutcome:
    """The outcome of an update or remove answer, accepted or rejected."""
    doc = _document(status, body)
    rejected = _rejected(status, doc)
    if rejected is not None:
        return rejected
    if status != 200 or doc.get("result") != "accepted":
        raise _failure(status, doc)
    items = doc.get("sas", [])
    if not isinstance(items, list):
        raise AdminProtocolError(status, "an outcome's 'sas' is an array")
    try:
        records = [record_from_json(item) for item in items]
    except SaJsonError as exc:
        raise AdminProtocolError(status, str(exc)) from None
    return AdminOutcome.accept(records, str(doc.get("message", ""))[:500])
