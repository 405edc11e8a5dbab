"""MAF messages on the wire, shared by both roles (TS-0003 8.8.2; tracker issue 10 item 2).

One module writes and reads what the MAF Client (``frameworks/maf/``: MafSession,
MafClient, MafKeyRetriever) and the MAF server (``maf/protocol.py``) exchange, so the two
ends cannot drift apart again:

- time values only through :mod:`m2msec.m2mtime` (TS-0004 6.3.3 basic format, UTC, no
  zone designator): :func:`parse_time` / :func:`format_time` refuse the same things on both
  ends — a zoned value, padding, a naive datetime — with one :class:`WireError`;
- KcIds only through :class:`m2msec.keyids.KcId` (TS-0003 10.3.5), :func:`kc_id`;
- typed messages built by one end and parsed by the other: the Client Registration answer
  (table 8.8.2.3-2, :class:`MafClientRegBody`), the Key Registration answer
  (table 8.8.2.7-2, :class:`MafKeyRegBody`, MAF -> Entity A) and the Key Retrieval answer
  (table 8.8.2.8-2, :class:`MafKeyBody`, MAF -> Entity B).

Sans-IO: no sockets, no asyncio. Each role maps :class:`WireError` to its own error (4000
BAD_REQUEST on the server, ``MafError`` on the client); messages never hold key values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from m2msec import m2mtime
from m2msec.keyids import KcId

__all__ = [
    "CLIENT_REG_REQUEST_FIELDS",
    "CLIENT_UPDATE_REQUEST_FIELDS",
    "KEY_REG_REQUEST_FIELDS",
    "KEY_UPDATE_REQUEST_FIELDS",
    "MafClientRegBody",
    "MafKeyBody",
    "MafKeyRegBody",
    "WireError",
    "client_registration_request",
    "format_time",
    "kc_id",
    "key_registration_request",
    "parse_labels",
    "parse_time",
]


class WireError(ValueError):
    """A MAF message field that does not follow TS-0003 8.8.2; the message is safe to show."""


def format_time(value: datetime) -> str:
    """``YYYYMMDDThhmmss[,ffffff]`` in UTC; a naive datetime is refused (its zone is a guess)."""
    try:
        return m2mtime.format_time(value)
    except m2mtime.M2MTimeError as exc:
        raise WireError(str(exc)) from None


def parse_time(text: object, what: str = "expirationTime") -> datetime:
    """A UTC datetime from a oneM2M timestamp; a zone designator or padding is refused."""
    try:
        return m2mtime.parse_time(text, what)
    except m2mtime.M2MTimeError as exc:
        raise WireError(str(exc)) from None


def kc_id(relative_hex: str, maf_fqdn: str) -> KcId:
    """The MAF Key Identifier ``hexBinary(RelativeKeyID)@MAF-FQDN`` (TS-0003 10.3.5)."""
    return KcId.from_relative(bytes.fromhex(relative_hex), maf_fqdn)


#: The members of a MAF Client Registration request (table 8.8.2.3-1) and its Update (8.8.2.5).
CLIENT_REG_REQUEST_FIELDS: Final = frozenset({"mafFQDN", "expirationTime", "adminFQDN", "labels"})
CLIENT_UPDATE_REQUEST_FIELDS: Final = frozenset({"mafFQDN", "expirationTime", "labels"})
#: The members of a MAF Key Registration Update request (table 8.8.2.9-1).
KEY_UPDATE_REQUEST_FIELDS: Final = frozenset({"mafFQDN", "expirationTime", "labels", "targetIDs"})


def client_registration_request(
    maf_fqdn: str, expires: datetime, admin_fqdn: str, labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """``mafClientReg`` as Entity A sends it (table 8.8.2.3-1)."""
    reg: dict[str, Any] = {
        "mafFQDN": maf_fqdn,
        "expirationTime": format_time(expires),
        "adminFQDN": admin_fqdn,
    }
    if labels is not None:
        reg["labels"] = list(labels)
    return {"mafClientReg": reg}


#: The members of a MAF Key Registration request (table 8.8.2.7-1).
KEY_REG_REQUEST_FIELDS: Final = frozenset(
    {"mafFQDN", "expirationTime", "adminFQDN", "SUID", "targetIDs", "labels", "keyValue"}
)


def key_registration_request(
    maf_fqdn: str,
    expires: datetime,
    admin_fqdn: str,
    suid: int,
    target_ids: Sequence[str],
    labels: Sequence[str] | None = None,
    key_value: bytes | None = None,
) -> dict[str, Any]:
    """``mafKeyReg`` as Entity A sends it (table 8.8.2.7-1); the MAF reads it with
    ``maf.protocol.parse_key_registration`` (which also applies its policy)."""
    reg: dict[str, Any] = {
        "mafFQDN": maf_fqdn,
        "expirationTime": format_time(expires),
        "adminFQDN": admin_fqdn,
        "SUID": suid,
        "targetIDs": list(target_ids),
    }
    if labels is not None:
        reg["labels"] = list(labels)
    if key_value is not None:
        reg["keyValue"] = key_value.hex()
    return {"mafKeyReg": reg}


def parse_labels(value: object) -> tuple[str, ...] | None:
    """``labels``: absent (None) or a list of strings."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WireError("labels is not a list of strings")
    return tuple(value)


def _hex(value: object) -> bytes:
    try:
        return bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return b""


@dataclass(frozen=True, slots=True)
class MafKeyBody:
    """``mafKey``: the MAF Key Retrieval response (table 8.8.2.8-2), plus the RelativeKeyID
    and (8.2.2.3) Entity A's CSE-ID/AE-ID when the MAF holds one. ``key_value`` (Kc) is
    never in ``repr``."""

    relative_id: bytes
    key_value: bytes = field(repr=False)
    expires: datetime
    source_client_id: str
    admin_fqdn: str | None
    suid: int
    entity_id: str | None = None
    labels: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "relativeKeyID": self.relative_id.hex(),
            "keyValue": self.key_value.hex(),
            "expirationTime": format_time(self.expires),
            "sourceMAFClientID": self.source_client_id,
            "adminFQDN": self.admin_fqdn,
            "SUID": self.suid,
        }
        if self.entity_id:
            out["entityID"] = self.entity_id
        if self.labels is not None:
            out["labels"] = list(self.labels)
        return {"mafKey": out}

    @classmethod
    def parse(cls, key: Mapping[str, Any]) -> MafKeyBody:
        """Read the object under ``mafKey``; the checks of what it must be for this caller
        (which RelativeKeyID, which SUID) are the caller's."""
        secret = _hex(key.get("keyValue"))
        if not 16 <= len(secret) <= 64:
            raise WireError("without a usable keyValue")
        suid = key.get("SUID")
        if not isinstance(suid, int) or isinstance(suid, bool):
            raise WireError(f"SUID {suid!r} is not an integer")
        source = key.get("sourceMAFClientID")
        if not isinstance(source, str) or not source:
            raise WireError("without sourceMAFClientID")
        entity = key.get("entityID")
        if entity is not None and (not isinstance(entity, str) or not entity):
            raise WireError("with a malformed entityID")
        admin = key.get("adminFQDN")
        return cls(
            relative_id=_hex(key.get("relativeKeyID")),
            key_value=secret,
            expires=parse_time(key.get("expirationTime")),
            source_client_id=source,
            admin_fqdn=admin if isinstance(admin, str) else None,
            suid=suid,
            entity_id=entity,
            labels=parse_labels(key.get("labels")),
        )


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class MafKeyRegBody:
    """``mafKeyReg``: the MAF Key Registration response (table 8.8.2.7-2). Read leniently
    where the table lets the MAF omit a member (``SUID``, ``targetIDs``: None when absent);
    what they must be for this Entity A is the caller's check."""

    relative_id: bytes
    expires: datetime
    source_client_id: str | None
    admin_fqdn: str | None
    suid: int | None
    target_ids: tuple[str, ...] | None
    labels: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "relativeKeyID": self.relative_id.hex(),
            "expirationTime": format_time(self.expires),
            "sourceMAFClientID": self.source_client_id,
            "adminFQDN": self.admin_fqdn,
            "SUID": self.suid,
            "targetIDs": None if self.target_ids is None else list(self.target_ids),
        }
        if self.labels is not None:
            out["labels"] = list(self.labels)
        return {"mafKeyReg": out}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> MafKeyRegBody:
        """Read the object under ``mafKeyReg``."""
        rel = _hex(body.get("relativeKeyID"))
        if not rel:
            raise WireError("answered without a valid relativeKeyID")
        suid = body.get("SUID")
        if suid is not None and (not isinstance(suid, int) or isinstance(suid, bool)):
            raise WireError(f"registered SUID {suid!r}, not an integer")
        targets = body.get("targetIDs")
        if targets is not None and (
            not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)
        ):
            raise WireError(f"answered targetIDs {targets!r}, not a list of strings")
        return cls(
            relative_id=rel,
            expires=parse_time(body.get("expirationTime")),
            source_client_id=_optional_str(body.get("sourceMAFClientID")),
            admin_fqdn=_optional_str(body.get("adminFQDN")),
            suid=suid,
            target_ids=None if targets is None else tuple(targets),
            labels=parse_labels(body.get("labels")),
        )


@dataclass(frozen=True, slots=True)
class MafClientRegBody:
    """``mafClientReg``: the MAF Client Registration response (table 8.8.2.3-2)."""

    reg_id: str
    expires: datetime
    client_id: str | None
    admin_fqdn: str | None
    labels: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mafClientRegID": self.reg_id,
            "expirationTime": format_time(self.expires),
            "mafClientID": self.client_id,
            "adminFQDN": self.admin_fqdn,
        }
        if self.labels is not None:
            out["labels"] = list(self.labels)
        return {"mafClientReg": out}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> MafClientRegBody:
        """Read the object under ``mafClientReg``."""
        reg_id = body.get("mafClientRegID")
        if not isinstance(reg_id, str) or not reg_id:
            raise WireError("assigned no mafClientRegID")
        return cls(
            reg_id=reg_id,
            expires=parse_time(body.get("expirationTime")),
            client_id=_optional_str(body.get("mafClientID")),
            admin_fqdn=_optional_str(body.get("adminFQDN")),
            labels=parse_labels(body.get("labels")),
        )
