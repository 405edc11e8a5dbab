"""Routing and parsing of the MAF requests (TS-0003 8.8.2.3-8.8.2.10), sans-IO.

Our HTTP mapping (table in :mod:`m2msec.maf.protocol`, docs/maf.md; TS-0032 is not
available, docs/readings.md A-17): :func:`route` maps method and path to a
:class:`Procedure`, :func:`request_id` and :func:`json_body` read what every request
carries, and one ``parse_*`` per procedure turns the body into a request dataclass after
checking its fields against the tables of 8.8.2 (:mod:`m2msec.maf.wire` names them).
Every malformed request is a 4000 :class:`~m2msec.maf.protocol.MafRefusal`.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from m2msec.bindings.messages import RSC, OneM2MRequest
from m2msec.errors import IdentifierError
from m2msec.ids import check_fqdn
from m2msec.maf import wire
from m2msec.maf.protocol import (
    MAF_SUIDS,
    SINGLE_TARGET_SUIDS,
    MafPolicy,
    MafRefusal,
    bad_request,
    canonical_entity,
    parse_m2m_time,
)
from m2msec.maf.store import MAX_KEY_OCTETS, MIN_KEY_OCTETS, parse_relative_key_id

__all__ = [
    "ClientRegRequest",
    "KeyRegRequest",
    "KeyUpdateRequest",
    "Procedure",
    "RegUpdateRequest",
    "Route",
    "json_body",
    "parse_client_registration",
    "parse_key_registration",
    "parse_key_update",
    "parse_registration_update",
    "request_id",
    "route",
]

MAX_TARGETS: Final = 64
MAX_LABELS: Final = 64
MAX_LABEL_LENGTH: Final = 256

_REG_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


# ----------------------------------------------------------------------------- routing


class Procedure(enum.StrEnum):
    CLIENT_REGISTRATION = "client-registration"  # 8.8.2.3
    CONFIG_RETRIEVAL = "configuration-retrieval"  # 8.8.2.4
    REGISTRATION_UPDATE = "registration-update"  # 8.8.2.5
    DEREGISTRATION = "de-registration"  # 8.8.2.6
    KEY_REGISTRATION = "key-registration"  # 8.8.2.7
    KEY_RETRIEVAL = "key-retrieval"  # 8.8.2.8
    KEY_UPDATE = "key-registration-update"  # 8.8.2.9
    KEY_DEREGISTRATION = "key-de-registration"  # 8.8.2.10


@dataclass(frozen=True, slots=True)
class Route:
    procedure: Procedure
    param: str | None = None


def route(method: str, target: str) -> Route:
    """The procedure a request asks for; 4004 for an unknown path, 4005 for a method the
    path does not take."""
    path = target.split("?", 1)[0]
    parts = path.split("/")
    # "/maf/keys/x" -> ["", "maf", "keys", "x"]
    if len(parts) < 3 or parts[0] != "" or parts[1] != "maf":
        raise MafRefusal(RSC.NOT_FOUND, f"no MAF resource at {path[:80]!r}")
    methods: dict[str, Procedure]
    param: str | None = None
    rest = parts[2:]
    if rest == ["clients"]:
        methods = {"POST": Procedure.CLIENT_REGISTRATION}
    elif len(rest) == 2 and rest[0] == "clients" and rest[1]:
        param = rest[1]
        methods = {"PUT": Procedure.REGISTRATION_UPDATE, "DELETE": Procedure.DEREGISTRATION}
    elif len(rest) == 3 and rest[0] == "clients" and rest[1] and rest[2] == "config":
        param = rest[1]
        methods = {"GET": Procedure.CONFIG_RETRIEVAL}
    elif rest == ["keys"]:
        methods = {"POST": Procedure.KEY_REGISTRATION}
    elif len(rest) == 2 and rest[0] == "keys" and rest[1]:
        param = rest[1]
        methods = {
            "GET": Procedure.KEY_RETRIEVAL,
            "PUT": Procedure.KEY_UPDATE,
            "DELETE": Procedure.KEY_DEREGISTRATION,
        }
    else:
        raise MafRefusal(RSC.NOT_FOUND, f"no MAF resource at {path[:80]!r}")
    procedure = methods.get(method.upper())
    if procedure is None:
        allowed = ", ".join(sorted(methods))
        raise MafRefusal(
            RSC.OPERATION_NOT_ALLOWED, f"{method} is not allowed on {path[:80]} (use {allowed})"
        )
    if param is not None:
        if procedure in (
            Procedure.KEY_RETRIEVAL,
            Procedure.KEY_UPDATE,
            Procedure.KEY_DEREGISTRATION,
        ):
            try:
                param = parse_relative_key_id(param)
            except IdentifierError as exc:
                raise bad_request(str(exc)) from None
        elif not _REG_ID.fullmatch(param):
            raise bad_request(f"invalid mafClientRegID {param[:80]!r}")
    return Route(procedure, param)


def request_id(request: OneM2MRequest) -> str:
    """``X-M2M-RI``, required (TS-0004 6.4.1)."""
    rid = request.request_id
    if rid is None or not rid.strip():
        raise bad_request("X-M2M-RI (Request Identifier) is missing")
    return rid


def json_body(request: OneM2MRequest, root: str) -> dict[str, Any]:
    """The object under ``root`` in the request's JSON body."""
    media = (request.content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise bad_request(f"Content-Type must be application/json, not {media[:60]!r}")
    if not request.body:
        raise bad_request(f"the request needs a JSON body {{{root!r}: {{...}}}}")
    try:
        doc = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    inner = doc.get(root) if isinstance(doc, dict) else None
    if not isinstance(inner, dict):
        raise bad_request(f"the body must be a JSON object {{{root!r}: {{...}}}}")
    return inner


# ----------------------------------------------------------------------------- fields


def _labels(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("labels must be a list of strings")
    if len(value) > MAX_LABELS:
        raise bad_request(f"at most {MAX_LABELS} labels")
    for v in value:
        if not 1 <= len(v) <= MAX_LABEL_LENGTH:
            raise bad_request(f"each label is 1 to {MAX_LABEL_LENGTH} characters")
    return tuple(value)


@functools.lru_cache(maxsize=1024)
def _checked_fqdn(value: str, what: str) -> str:
    return check_fqdn(value, what)


def _fqdn(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{what} must be an FQDN string")
    try:
        return _checked_fqdn(value, what)
    except IdentifierError as exc:
        raise bad_request(str(exc)) from None


def _maf_fqdn(body: Mapping[str, Any], policy: MafPolicy) -> None:
    if "mafFQDN" not in body:
        raise bad_request("mafFQDN is missing")
    fqdn = _fqdn(body["mafFQDN"], "mafFQDN")
    if fqdn.lower() != policy.fqdn.lower():
        raise bad_request(f"mafFQDN {fqdn!r} is not this MAF ({policy.fqdn})")


def _check_fields(body: Mapping[str, Any], known: frozenset[str], root: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise bad_request(f"unknown field {root}/{unknown[0][:40]!r}")


def _targets(
    value: object, policy: MafPolicy, suid: int | None
) -> tuple[tuple[str, ...], list[str]]:
    """(targetIDs as given, their canonical forms); ``suid`` None: not known yet."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("targetIDs must be a list of AE-IDs or CSE-IDs")
    if suid in SINGLE_TARGET_SUIDS and len(value) != 1:
        raise bad_request(
            f"targetIDs must hold exactly one Absolute AE-ID or CSE-ID for SUID {suid} "
            f"(TS-0003 8.8.2.7), not {len(value)}"
        )
    if not 1 <= len(value) <= MAX_TARGETS:
        raise bad_request(f"targetIDs must hold 1 to {MAX_TARGETS} identities")
    canonical = []
    for text in value:
        try:
            canonical.append(canonical_entity(text, policy.sp_fqdn))
        except IdentifierError as exc:
            raise bad_request(f"targetIDs: {exc}") from None
    return tuple(value), canonical


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class ClientRegRequest:
    """Table 8.8.2.3-1."""

    expires: datetime
    admin_fqdn: str
    labels: tuple[str, ...] | None = None


def parse_client_registration(request: OneM2MRequest, policy: MafPolicy) -> ClientRegRequest:
    body = json_body(request, "mafClientReg")
    _check_fields(body, wire.CLIENT_REG_REQUEST_FIELDS, "mafClientReg")
    _maf_fqdn(body, policy)
    if "expirationTime" not in body:
        raise bad_request("expirationTime is missing")
    if "adminFQDN" not in body:
        raise bad_request("adminFQDN is missing")
    labels = _labels(body["labels"]) if "labels" in body else None
    return ClientRegRequest(
        parse_m2m_time(body["expirationTime"]), _fqdn(body["adminFQDN"], "adminFQDN"), labels
    )


@dataclass(frozen=True, slots=True)
class RegUpdateRequest:
    """Table 8.8.2.5-1: at least one of expirationTime and labels."""

    expires: datetime | None = None
    labels: tuple[str, ...] | None = None
    has_labels: bool = False


def parse_registration_update(request: OneM2MRequest, policy: MafPolicy) -> RegUpdateRequest:
    body = json_body(request, "mafClientReg")
    _check_fields(body, wire.CLIENT_UPDATE_REQUEST_FIELDS, "mafClientReg")
    if "mafFQDN" in body:
        _maf_fqdn(body, policy)
    if "expirationTime" not in body and "labels" not in body:
        raise bad_request("give expirationTime, labels or both (TS-0003 table 8.8.2.5-1)")
    expires = parse_m2m_time(body["expirationTime"]) if "expirationTime" in body else None
    labels = _labels(body["labels"]) if "labels" in body else None
    return RegUpdateRequest(expires, labels, "labels" in body)


@dataclass(frozen=True, slots=True)
class KeyRegRequest:
    """Table 8.8.2.7-1. ``key_value`` None: Kc comes from the TLS exporter (10.3.1)."""

    expires: datetime
    admin_fqdn: str
    suid: int
    target_ids: tuple[str, ...]
    canonical_targets: tuple[str, ...]
    labels: tuple[str, ...] | None = None
    key_value: bytes | None = field(default=None, repr=False)


def parse_key_registration(request: OneM2MRequest, policy: MafPolicy) -> KeyRegRequest:
    body = json_body(request, "mafKeyReg")
    _check_fields(body, wire.KEY_REG_REQUEST_FIELDS, "mafKeyReg")
    _maf_fqdn(body, policy)
    for name in ("expirationTime", "adminFQDN", "SUID", "targetIDs"):
        # targetIDs is 0..1 in table 8.8.2.7-1, but SAEF and ESPrim need exactly one and
        # the MAF has no rule to invent it: we require it.
        if name not in body:
            raise bad_request(f"{name} is missing")
    suid = body["SUID"]
    if isinstance(suid, bool) or not isinstance(suid, int):
        raise bad_request("SUID must be an integer")
    if suid not in MAF_SUIDS:
        raise bad_request(
            f"SUID {suid} is not a MAF-distributed key (32 SAEF, 33 ESPrim, 34/35 ESData)"
        )
    targets, canonical = _targets(body["targetIDs"], policy, suid)
    key_value: bytes | None = None
    if "keyValue" in body:
        raw = body["keyValue"]
        if not isinstance(raw, str):
            raise bad_request("keyValue must be a hex string")
        try:
            key_value = bytes.fromhex(raw)
        except ValueError:
            raise bad_request("keyValue must be hexadecimal") from None
        if not MIN_KEY_OCTETS <= len(key_value) <= MAX_KEY_OCTETS:
            raise bad_request(f"keyValue must be {MIN_KEY_OCTETS} to {MAX_KEY_OCTETS} octets")
    labels = _labels(body["labels"]) if "labels" in body else None
    return KeyRegRequest(
        expires=parse_m2m_time(body["expirationTime"]),
        admin_fqdn=_fqdn(body["adminFQDN"], "adminFQDN"),
        suid=suid,
        target_ids=targets,
        canonical_targets=tuple(canonical),
        labels=labels,
        key_value=key_value,
    )


@dataclass(frozen=True, slots=True)
class KeyUpdateRequest:
    """Table 8.8.2.9-1: at least one of expirationTime, labels, targetIDs."""

    expires: datetime | None = None
    labels: tuple[str, ...] | None = None
    has_labels: bool = False
    target_ids: tuple[str, ...] | None = None
    canonical_targets: tuple[str, ...] | None = None


def parse_key_update(request: OneM2MRequest, policy: MafPolicy) -> KeyUpdateRequest:
    body = json_body(request, "mafKeyReg")
    _check_fields(body, wire.KEY_UPDATE_REQUEST_FIELDS, "mafKeyReg")
    if "mafFQDN" in body:
        _maf_fqdn(body, policy)
    if not {"expirationTime", "labels", "targetIDs"} & set(body):
        raise bad_request("give expirationTime, labels or targetIDs (TS-0003 table 8.8.2.9-1)")
    expires = parse_m2m_time(body["expirationTime"]) if "expirationTime" in body else None
    labels = _labels(body["labels"]) if "labels" in body else None
    targets = canonical = None
    if "targetIDs" in body:
        # The number of targets allowed depends on the stored key's SUID: plan_key_update.
        targets, canon = _targets(body["targetIDs"], policy, None)
        canonical = tuple(canon)
    return KeyUpdateRequest(expires, labels, "labels" in body, targets, canonical)
