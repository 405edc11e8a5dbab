"""GBA messages on the wire, shared by both roles (TS 24.109 5 / Annex C, TS 33.220 4.5.2,
4.5.3; tracker issue 10 item 2).

One module writes and reads what the two ends of each GBA reference point exchange, so
they cannot drift apart:

- **Ub** (TS 24.109 5.3.2): the ``BootstrappingInfo`` XML document of the BSF's 200
  answer, with the B-TID and the key lifetime as an xs:dateTime. The BSF writes it
  (:mod:`m2msec.gba.service`, :func:`format_bootstrapping_info`), Entity A reads it
  (:mod:`m2msec.gba.ub`, :func:`parse_bootstrapping_info`); the lifetime goes through
  :func:`m2msec.m2mtime.format_xs_datetime` / :func:`~m2msec.m2mtime.parse_xs_datetime`,
  so what one end writes the other reads (fractions of a second and zone offsets too).
- **Zn** (our HTTP mapping of TS 29.109's Bootstrapping-Info-Request/Answer, see
  :mod:`m2msec.gba.zn`): the request-target (:class:`ZnRequest`), the 200 answer
  (:class:`NafKey`, times through :func:`m2msec.m2mtime.format_time` /
  :func:`~m2msec.m2mtime.parse_time`) and the refusal body (:func:`error_body`,
  :func:`error_reason`). The NAF's Zn client (:mod:`m2msec.gba.zn`) and the BSF
  (:mod:`m2msec.gba.service`) both use them; :class:`ZnError` carries the HTTP status.

Sans-IO: no sockets, no asyncio. Messages never show key values (Ks_NAF stays out of repr).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote, urlsplit

from m2msec import m2mtime
from m2msec.crypto.gba import KS_NAF_LENGTH, parse_naf_id
from m2msec.errors import IdentifierError, M2MSecError

__all__ = [
    "BSF_MEDIA_TYPE",
    "GBA_NS",
    "MAX_BOOTSTRAPPING_INFO_OCTETS",
    "MAX_BTID_LENGTH",
    "MAX_NAF_ID_OCTETS",
    "ZN_MEDIA_TYPE",
    "ZN_PATH",
    "NafKey",
    "WireError",
    "ZnError",
    "ZnRequest",
    "error_body",
    "error_reason",
    "format_bootstrapping_info",
    "parse_bootstrapping_info",
]

# ----------------------------------------------------------------------------- Ub

#: XML namespace of the BootstrappingInfo document (TS 24.109 Annex C).
GBA_NS: Final = "uri:3gpp-gba"
#: The media type of the BSF's 200 answer (TS 24.109 5.3.2).
BSF_MEDIA_TYPE: Final = "application/vnd.3gpp.bsf+xml"
MAX_BOOTSTRAPPING_INFO_OCTETS: Final = 16 * 1024


class WireError(ValueError):
    """A GBA message that does not follow its format; the message is safe to show."""


def format_bootstrapping_info(btid: str, lifetime: datetime) -> bytes:
    """The 200 body of Ub (TS 24.109 5.3.2 / Annex C); a naive ``lifetime`` is refused."""
    try:
        when = m2mtime.format_xs_datetime(lifetime)
    except m2mtime.M2MTimeError as exc:
        raise WireError(f"lifetime: {exc}") from None
    root = ET.Element("BootstrappingInfo", xmlns=GBA_NS)
    ET.SubElement(root, "btid").text = btid
    ET.SubElement(root, "lifetime").text = when
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)


def parse_bootstrapping_info(body: bytes) -> tuple[str, datetime]:
    """(B-TID, lifetime in UTC) from a BootstrappingInfo document; :class:`WireError`."""
    if len(body) > MAX_BOOTSTRAPPING_INFO_OCTETS:
        raise WireError("BootstrappingInfo document is too large")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise WireError("BootstrappingInfo document may not carry a DTD")
    try:
        root = ET.fromstring(body)  # noqa: S314 - size-bounded, DTD refused above
    except ET.ParseError as exc:
        raise WireError(f"BootstrappingInfo is not well-formed XML: {exc}") from None
    ns = "{" + GBA_NS + "}"
    if root.tag != ns + "BootstrappingInfo":
        raise WireError(f"expected <BootstrappingInfo xmlns={GBA_NS!r}>, got {root.tag[:80]!r}")
    btid_el = root.find(ns + "btid")
    life_el = root.find(ns + "lifetime")
    if btid_el is None or not (btid_el.text or "").strip():
        raise WireError("BootstrappingInfo has no btid")
    if life_el is None:
        raise WireError("BootstrappingInfo has no lifetime")
    try:
        lifetime = m2mtime.parse_xs_datetime(life_el.text or "", "BootstrappingInfo lifetime")
    except m2mtime.M2MTimeError as exc:
        raise WireError(str(exc)) from None
    return (btid_el.text or "").strip(), lifetime


# ----------------------------------------------------------------------------- Zn

ZN_PATH: Final = "/zn/bootstrap/"
#: The media type of every Zn answer, the key and the refusals.
ZN_MEDIA_TYPE: Final = "application/json"
MAX_BTID_LENGTH: Final = 512
MAX_NAF_ID_OCTETS: Final = 260  # FQDN (253) || Ua protocol id (5)


class ZnError(M2MSecError):
    """A Zn request was refused or failed. ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Zn {status}: {reason}" if status else f"Zn: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ZnRequest:
    """A NAF's request for the key of ``btid`` bound to ``naf_id`` (TS 29.109's
    Bootstrapping-Info-Request: B-TID, NAF_Id, GBA_U awareness)."""

    btid: str
    naf_id: bytes
    gba_u: bool = False

    @property
    def naf_fqdn(self) -> str:
        return parse_naf_id(self.naf_id)[0]

    def target(self) -> str:
        return (
            f"{ZN_PATH}{quote(self.btid, safe='')}"
            f"?nafId={self.naf_id.hex()}&gbaU={1 if self.gba_u else 0}"
        )

    @classmethod
    def from_target(cls, target: str) -> ZnRequest:
        """Parse a request-target; :class:`ZnError` 400 (or 405 for another path)."""
        parts = urlsplit(target)
        if not parts.path.startswith(ZN_PATH):
            raise ZnError(405, f"no Zn resource at {parts.path[:80]!r} (GET {ZN_PATH}<B-TID>)")
        raw = parts.path[len(ZN_PATH) :]
        if not raw or "/" in raw:
            raise ZnError(400, "the path must be /zn/bootstrap/<percent-encoded B-TID>")
        try:
            btid = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise ZnError(400, "the B-TID is not UTF-8") from None
        if not btid or len(btid) > MAX_BTID_LENGTH:
            raise ZnError(400, f"the B-TID must be 1 to {MAX_BTID_LENGTH} characters")
        try:
            query = parse_qs(parts.query, strict_parsing=True, max_num_fields=4)
        except ValueError:
            raise ZnError(400, "malformed query (nafId=<hex>&gbaU=0|1 expected)") from None
        unknown = set(query) - {"nafId", "gbaU"}
        if unknown:
            raise ZnError(400, f"unknown query parameter {sorted(unknown)[0][:40]!r}")
        if any(len(v) != 1 for v in query.values()):
            raise ZnError(400, "each query parameter may appear only once")
        if "nafId" not in query:
            raise ZnError(400, "nafId is missing")
        text = query["nafId"][0]
        if len(text) > 2 * MAX_NAF_ID_OCTETS:
            raise ZnError(400, "nafId is too long")
        try:
            naf_id = bytes.fromhex(text)
        except ValueError:
            raise ZnError(400, "nafId is not hexadecimal") from None
        try:
            parse_naf_id(naf_id)
        except IdentifierError as exc:
            raise ZnError(400, f"nafId: {exc}") from None
        flag = query.get("gbaU", ["0"])[0]
        if flag not in ("0", "1"):
            raise ZnError(400, "gbaU must be 0 or 1")
        return cls(btid, naf_id, flag == "1")


@dataclass(frozen=True, slots=True)
class NafKey:
    """What the BSF hands a NAF (TS 33.220 4.5.3, the Bootstrapping-Info-Answer): Ks_NAF
    (never in repr) and its context."""

    ks_naf: bytes = field(repr=False)
    expires: datetime
    impi: str
    btid: str
    uss: dict[str, Any] = field(default_factory=dict)
    gba_type: str = "GBA_ME"
    bootstrap_time: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "btid": self.btid,
            "impi": self.impi,
            "ksNAF": self.ks_naf.hex(),
            "expires": m2mtime.format_time(self.expires),
            "gbaType": self.gba_type,
            "uss": self.uss,
        }
        if self.bootstrap_time is not None:
            doc["bootstrapTime"] = m2mtime.format_time(self.bootstrap_time)
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: bytes) -> NafKey:
        """Parse a 200 answer; :class:`ZnError` (status 0) when malformed."""
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            ks = bytes.fromhex(_str(doc, "ksNAF"))
            if len(ks) != KS_NAF_LENGTH:
                raise ValueError(f"ksNAF must be {KS_NAF_LENGTH} octets")
            uss = doc.get("uss", {})
            if not isinstance(uss, dict):
                raise TypeError("uss must be a JSON object")
            gba_type = doc.get("gbaType", "GBA_ME")
            if gba_type not in ("GBA_ME", "GBA_U"):
                raise ValueError("gbaType must be GBA_ME or GBA_U")
            boot = doc.get("bootstrapTime")
            return cls(
                ks_naf=ks,
                expires=m2mtime.parse_time(_str(doc, "expires"), "expires"),
                impi=_str(doc, "impi"),
                btid=_str(doc, "btid"),
                uss=uss,
                gba_type=gba_type,
                bootstrap_time=None if boot is None else m2mtime.parse_time(boot, "bootstrapTime"),
            )
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise ZnError(0, f"malformed answer from the BSF: {exc}") from None


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def error_body(reason: str) -> bytes:
    """The body of a Zn refusal: ``{"error": "<reason>"}``."""
    return json.dumps({"error": reason}).encode()


def error_reason(body: bytes) -> str:
    """The reason of a Zn refusal (:func:`error_body`), or the start of whatever came."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])[:300]
    except (ValueError, UnicodeDecodeError):
        pass
    return body[:200].decode("utf-8", "replace") or "no reason given"
