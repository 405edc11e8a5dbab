"""MEF messages on the wire, shared by both roles (TS-0003 8.3.2.1, seed 004; docs/mef.md).

Mapped as the MAF's procedures are (docs/maf.md section 3, :mod:`m2msec.maf.wire`): oneM2M
requests over HTTP/1.1, ``X-M2M-*`` headers, JSON bodies, keys as lower-case hex, times as
TS-0004 6.3.3 timestamps through the one codec (:func:`m2msec.maf.wire.format_time` /
:func:`~m2msec.maf.wire.parse_time` on :mod:`m2msec.m2mtime`), errors as one
:class:`~m2msec.maf.wire.WireError`. Sans-IO: no sockets, no asyncio.

- Enrolment Exchange, minimal (8.3.2.1; ISSUE-NOTES): after the bootstrap handshake the
  Enrolee sends ``POST /mef/enrolment`` with :class:`EnrolmentRequestBody` (the target it
  was configured with, or none); the MEF answers 2001 with :class:`EnrolmentBody` (KeID,
  Enrolment Target, Enrolee-ID, Enrolment Expiry) only after Ke is committed.
- fetchCredentials (8.3.2.1 step f): RETRIEVE ``/fetchCredentials/<KeID>/<SUID>``
  (:func:`fetch_path`, :func:`parse_fetch_path`); success (table 8.3.2.1-5) is
  :class:`CredentialBody`, failure (table 8.3.2.1-6) :class:`FetchFailure`.
- MEF Key Retrieval (V3.18 8.3.5.2.8), mapped exactly as the MAF's Key Retrieval (8.8.2.8,
  ``GET /maf/keys/{relativeKeyID}`` answering ``mafKey``): ``GET /mef/keys/<RelativeKeyID>``
  (table 8.3.5.2.8-1; :func:`key_path`, :func:`parse_key_path`) answering
  :class:`MefKeyBody`, ``mefKey`` (table 8.3.5.2.8-2), a refusal ``{"m2m:dbg": TEXT}``.
  Both procedures are one handler at the MEF (docs/mef.md section 3b, docs/readings.md
  A-32); :class:`TargetRetrieval` names the one a target uses.

A target is written ``{"mafID": FQDN}`` or ``{"enroleeBID": ID, "nafFQDN"?: FQDN}``
(docs/readings.md A-27); the lifetime answered ends with Ke's (A-28).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote

from m2msec.crypto.keyexport import RELATIVE_ID_LENGTH
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.keyids import KeId
from m2msec.maf.wire import WireError, format_time, parse_time
from m2msec.mef.records import SUID_ENROLEE_B, SUID_MAF, EnrolmentTarget

__all__ = [
    "CREDENTIAL_OCTETS",
    "ENROLMENT_PATH",
    "FETCH_PREFIX",
    "KEY_PREFIX",
    "CredentialBody",
    "EnrolmentBody",
    "EnrolmentRequestBody",
    "FetchFailure",
    "FetchRequest",
    "MefKeyBody",
    "TargetRetrieval",
    "WireError",
    "fetch_path",
    "key_path",
    "parse_fetch_answer",
    "parse_fetch_path",
    "parse_key_path",
]

ENROLMENT_PATH: Final = "/mef/enrolment"
FETCH_PREFIX: Final = "/fetchCredentials/"
#: MEF Key Retrieval (8.3.5.2.8), as the MAF's ``/maf/keys/`` (docs/maf.md section 2).
KEY_PREFIX: Final = "/mef/keys/"
#: Km and Kpsa are HMAC-SHA-256 outputs (10.3.2, 10.3.3).
CREDENTIAL_OCTETS: Final = 32
_SUIDS: Final = frozenset({SUID_MAF, SUID_ENROLEE_B})


def _member(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = body.get(name) if isinstance(body, Mapping) else None
    if not isinstance(value, Mapping):
        raise WireError(f"the body has no {name!r} object")
    return value


def _text(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise WireError(f"{name} is missing or not a string")
    return value


def _ke_id(text: str) -> KeId:
    try:
        return KeId.parse(text)
    except IdentifierError as exc:
        raise WireError(str(exc)) from None


def _target_json(target: EnrolmentTarget) -> dict[str, str]:
    if not target.is_enrolee_b:
        return {"mafID": target.target_id}
    out = {"enroleeBID": target.target_id}
    if target.naf_fqdn is not None:
        out["nafFQDN"] = target.naf_fqdn
    return out


def _parse_target(obj: Mapping[str, Any]) -> EnrolmentTarget | None:
    maf, enrolee_b = obj.get("mafID"), obj.get("enroleeBID")
    if maf is None and enrolee_b is None:
        return None
    try:
        if maf is not None and enrolee_b is None and isinstance(maf, str):
            return EnrolmentTarget.maf(maf)
        naf = obj.get("nafFQDN")
        if maf is None and isinstance(enrolee_b, str) and isinstance(naf, str | None):
            return EnrolmentTarget.enrolee_b(enrolee_b, naf)
    except (IdentifierError, ConfigurationError) as exc:
        raise WireError(f"Enrolment Target: {exc}") from None
    raise WireError("the Enrolment Target is either one mafID or one enroleeBID (strings)")


# --------------------------------------------------------------------- Enrolment Exchange


@dataclass(frozen=True, slots=True)
class EnrolmentRequestBody:
    """``mefEnrolReq``: what the Enrolee asks for (our reading of table 8.3.2.1-1: the
    Enrolment Target it was configured with, or None to take the MEF's configuration)."""

    target: EnrolmentTarget | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mefEnrolReq": {} if self.target is None else _target_json(self.target)}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> EnrolmentRequestBody:
        obj = _member(body, "mefEnrolReq")
        unknown = set(obj) - {"mafID", "enroleeBID", "nafFQDN"}
        if unknown:
            raise WireError(f"unknown member {sorted(unknown)[0]!r} in mefEnrolReq")
        return cls(_parse_target(obj))


@dataclass(frozen=True, slots=True)
class EnrolmentBody:
    """``mefEnrol``: the MEF's answer once Ke is committed — KeID (10.3.4), the Enrolment
    Target, the Enrolee-ID and the Enrolment Expiry (10.7)."""

    ke_id: KeId
    target: EnrolmentTarget
    enrolee_id: str
    expires: datetime

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keID": str(self.ke_id), **_target_json(self.target)}
        out["enroleeID"] = self.enrolee_id
        out["expirationTime"] = format_time(self.expires)
        return {"mefEnrol": out}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> EnrolmentBody:
        obj = _member(body, "mefEnrol")
        target = _parse_target(obj)
        if target is None:
            raise WireError("the answer names no Enrolment Target")
        return cls(
            _ke_id(_text(obj, "keID")),
            target,
            _text(obj, "enroleeID"),
            parse_time(obj.get("expirationTime")),
        )


# --------------------------------------------------------------------- fetchCredentials


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """The target of a fetchCredentials RETRIEVE: ``/fetchCredentials/<KeID>/<SUID>``."""

    ke_id: KeId
    suid: int


def fetch_path(ke_id: KeId, suid: int) -> str:
    """The request target an Enrolment Target sends (8.3.2.1 step f)."""
    return f"{FETCH_PREFIX}{ke_id}/{suid:d}"


def parse_fetch_path(target: str) -> FetchRequest:
    """Read ``/fetchCredentials/<KeID>/<SUID>``; the SUID must be 21 or 22 (m2m:suid of a
    key remotely provisioned for a MAF or an SAEF peer). WireError otherwise."""
    if not target.startswith(FETCH_PREFIX):
        raise WireError("not a fetchCredentials target")
    rest = target[len(FETCH_PREFIX) :]
    if "?" in rest or "#" in rest:
        raise WireError("fetchCredentials takes no query")
    ke_text, sep, suid_text = unquote(rest).rpartition("/")
    if not sep or not ke_text or "/" in ke_text:
        raise WireError("expected /fetchCredentials/<KeID>/<SUID>")
    if not suid_text.isdigit() or len(suid_text) > 3:
        raise WireError(f"SUID {suid_text[:8]!r} is not a decimal m2m:suid")
    suid = int(suid_text)
    if suid not in _SUIDS:
        raise WireError(f"SUID {suid} is not a remotely provisioned key (21 MAF, 22 SAEF)")
    return FetchRequest(_ke_id(ke_text), suid)


@dataclass(frozen=True, slots=True)
class CredentialBody:
    """Table 8.3.2.1-5, Status True: the credential (Km or Kpsa) for the asking target,
    the Enrolee-ID, and the lifetime as the time it ends (at most Ke's, A-28); with the
    KeID and SUID asked for, so the target can check the answer. ``credential`` is never
    in ``repr``."""

    ke_id: KeId
    suid: int
    credential: bytes = field(repr=False)
    enrolee_id: str
    expires: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "fetchCredentials": {
                "status": True,
                "keID": str(self.ke_id),
                "SUID": self.suid,
                "credential": self.credential.hex(),
                "enroleeID": self.enrolee_id,
                "lifetime": format_time(self.expires),
            }
        }

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> CredentialBody:
        """Read the object under ``fetchCredentials`` whose status is true."""
        try:
            credential = bytes.fromhex(_text(obj, "credential"))
        except ValueError:
            credential = b""
        if len(credential) != CREDENTIAL_OCTETS:
            raise WireError(f"credential is not {CREDENTIAL_OCTETS} octets of hex")
        suid = obj.get("SUID")
        if not isinstance(suid, int) or isinstance(suid, bool) or suid not in _SUIDS:
            raise WireError(f"SUID {suid!r} is not 21 or 22")
        return cls(
            _ke_id(_text(obj, "keID")),
            suid,
            credential,
            _text(obj, "enroleeID"),
            parse_time(obj.get("lifetime"), "lifetime"),
        )


@dataclass(frozen=True, slots=True)
class FetchFailure:
    """Table 8.3.2.1-6, Status False, with the ErrorString answered (never key material);
    ``m2m:dbg`` carries the same text for generic oneM2M clients."""

    error: str

    def to_json(self) -> dict[str, Any]:
        return {
            "m2m:dbg": self.error,
            "fetchCredentials": {"status": False, "errorString": self.error},
        }


def parse_fetch_answer(body: Mapping[str, Any]) -> CredentialBody | FetchFailure:
    """A fetchCredentials answer as the target reads it."""
    obj = _member(body, "fetchCredentials")
    status = obj.get("status")
    if status is True:
        return CredentialBody.parse(obj)
    if status is False:
        error = obj.get("errorString")
        return FetchFailure(error if isinstance(error, str) else "")
    raise WireError("fetchCredentials status is not a boolean")


# --------------------------------------------------------------------- MEF Key Retrieval


class TargetRetrieval(enum.StrEnum):
    """Which procedure an Enrolment Target runs to get its credential from the MEF: the
    seed's fetchCredentials (8.3.2.1 step f) or V3.18's MEF Key Retrieval (8.3.5.2.8).
    The MEF answers both, with one handler (docs/mef.md section 3b)."""

    FETCH_CREDENTIALS = "fetch-credentials"
    KEY_RETRIEVAL = "key-retrieval"


def key_path(ke_id: KeId) -> str:
    """The request target of a MEF Key Retrieval: ``/mef/keys/<RelativeKeyID>`` (table
    8.3.5.2.8-1: the RelativeKeyID only; the KeID's FQDN is the MEF's own)."""
    return f"{KEY_PREFIX}{ke_id.relative_hex}"


def parse_key_path(target: str, mef_fqdn: str) -> KeId:
    """The KeID a ``/mef/keys/<RelativeKeyID>`` names at the MEF ``mef_fqdn``: the
    RelativeKeyID is 16 octets of hexBinary in either letter case (10.3.1, 10.3.4;
    docs/readings.md A-05). WireError otherwise."""
    if not target.startswith(KEY_PREFIX):
        raise WireError("not a MEF Key Retrieval target")
    rest = target[len(KEY_PREFIX) :]
    if "?" in rest or "#" in rest:
        raise WireError("MEF Key Retrieval takes no query")
    try:
        relative = bytes.fromhex(rest) if rest.isascii() and rest.isalnum() else b""
    except ValueError:
        relative = b""
    if len(relative) != RELATIVE_ID_LENGTH:
        raise WireError(
            f"expected /mef/keys/<RelativeKeyID>, {RELATIVE_ID_LENGTH} octets of hexBinary"
        )
    return _key_id_of(relative, mef_fqdn)


def _key_id_of(relative: bytes, mef_fqdn: str) -> KeId:
    try:
        return KeId.from_relative(relative, mef_fqdn)
    except IdentifierError as exc:
        raise WireError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class MefKeyBody:
    """``mefKey``: the MEF Key Retrieval response (table 8.3.5.2.8-2), in the shape of the
    MAF's ``mafKey`` (:class:`m2msec.maf.wire.MafKeyBody`): the RelativeKeyID asked for,
    the Key Value (Km or Kpsa derived for the asking target, seed 004), expirationTime
    (Ke's Enrolment Expiry, A-28), sourceMEFClientID and entityID (both the Enrolee-ID:
    the Source MEF Client is the Enrolee, A-32), adminFQDN (the MEF-FQDN), the SUID (21 or
    22) and no labels. ``key_value`` is never in ``repr``."""

    relative_id: bytes
    key_value: bytes = field(repr=False)
    expires: datetime
    source_client_id: str
    admin_fqdn: str
    suid: int
    entity_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "relativeKeyID": self.relative_id.hex(),
            "keyValue": self.key_value.hex(),
            "expirationTime": format_time(self.expires),
            "sourceMEFClientID": self.source_client_id,
            "adminFQDN": self.admin_fqdn,
            "SUID": self.suid,
        }
        if self.entity_id:
            out["entityID"] = self.entity_id
        return {"mefKey": out}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> MefKeyBody:
        """Read a whole answer ``{"mefKey": {...}}``; which RelativeKeyID and SUID it must
        carry is the caller's check."""
        obj = _member(body, "mefKey")
        try:
            relative = bytes.fromhex(_text(obj, "relativeKeyID"))
            key_value = bytes.fromhex(_text(obj, "keyValue"))
        except ValueError:
            raise WireError("relativeKeyID or keyValue is not hexBinary") from None
        if len(key_value) != CREDENTIAL_OCTETS:
            raise WireError(f"keyValue is not {CREDENTIAL_OCTETS} octets of hex")
        suid = obj.get("SUID")
        if not isinstance(suid, int) or isinstance(suid, bool) or suid not in _SUIDS:
            raise WireError(f"SUID {suid!r} is not 21 or 22")
        entity = obj.get("entityID")
        if entity is not None and (not isinstance(entity, str) or not entity):
            raise WireError("with a malformed entityID")
        return cls(
            relative,
            key_value,
            parse_time(obj.get("expirationTime")),
            _text(obj, "sourceMEFClientID"),
            _text(obj, "adminFQDN"),
            suid,
            entity,
        )

    @property
    def enrolee_id(self) -> str:
        """The identity a target binds: ``entityID``, else ``sourceMEFClientID``."""
        return self.entity_id or self.source_client_id
