"""Our HTTP mapping of the MAF procedures (TS-0003 8.8.2), sans-IO.

TS-0032, which gives the MAF interface its resources and wire formats, is not available to
us (NOTES, docs/readings.md A-17): the mapping below is ours and ``docs/maf.md`` documents it.
Requests travel as HTTP/1.1 over the MAF Handshake's TLS session (client listener) or over
the certificate-authenticated retrieval channel (retrieval listener), with oneM2M-style
headers (``X-M2M-RI`` required and echoed, ``X-M2M-RSC`` on every answer) and JSON bodies.

=========================  ==========================================  =====================
TS-0003 procedure          request                                     success
=========================  ==========================================  =====================
8.8.2.3 Client Reg.        ``POST /maf/clients``  {"mafClientReg"}      2001 {"mafClientReg"}
8.8.2.4 Config Retrieval   ``GET /maf/clients/{regID}/config``         2000 {"mafClientCfg"}
8.8.2.5 Reg. Update        ``PUT /maf/clients/{regID}``                2004 {"mafClientReg"}
8.8.2.6 De-Registration    ``DELETE /maf/clients/{regID}``             2002
8.8.2.7 Key Registration   ``POST /maf/keys``  {"mafKeyReg"}            2001 {"mafKeyReg"}
8.8.2.9 Key Reg. Update    ``PUT /maf/keys/{relativeKeyID}``           2004 {"mafKeyReg"}
8.8.2.10 Key De-Reg.       ``DELETE /maf/keys/{relativeKeyID}``        2002
8.8.2.8 Key Retrieval      ``GET /maf/keys/{relativeKeyID}`` (retr.)   2000 {"mafKey"}
=========================  ==========================================  =====================

This module parses and validates requests, applies each procedure's rules over the store's
reads, and builds the answers; it performs no network I/O and commits nothing (the server
does, see :mod:`m2msec.servers.maf`). Refusals are :class:`MafRefusal` with a Response
Status Code (TS-0004 6.6) and a message safe to show; ``audit`` says more for the audit log
(e.g. *which* of unknown / expired / de-registered made a Key Retrieval answer 4004).

Times are oneM2M timestamps ``YYYYMMDDTHHMMSS`` in UTC (TS-0004 basic ISO 8601); keys
travel as lower-case hex. Identities in ``targetIDs`` and Entity B's authenticated identity
are compared in one canonical absolute form (:func:`canonical_entity`).
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest, http_status_for
from m2msec.crypto.keyexport import EXPORT_LENGTH, RELATIVE_ID_LENGTH, split_export
from m2msec.errors import IdentifierError
from m2msec.ids import CseId, check_fqdn, parse_entity_id
from m2msec.keyids import KcId
from m2msec.maf import wire
from m2msec.maf.store import (
    MAX_KEY_OCTETS,
    MIN_KEY_OCTETS,
    ClientRegistration,
    MafKey,
    MasterCredential,
    NewKey,
    parse_relative_key_id,
)

__all__ = [
    "CONFLICT",
    "DEFAULT_KEY_LIFETIME",
    "DEFAULT_REGISTRATION_LIFETIME",
    "MAF_SUIDS",
    "SAEF_SUID",
    "ClientRegRequest",
    "KeyRegRequest",
    "KeyUpdateRequest",
    "MafPolicy",
    "MafReader",
    "MafRefusal",
    "Procedure",
    "RegUpdateRequest",
    "Route",
    "assign_expiry",
    "canonical_entity",
    "client_registration_body",
    "decide_retrieval",
    "format_m2m_time",
    "json_body",
    "key_registration_body",
    "maf_response",
    "owned_key",
    "owned_registration",
    "parse_client_registration",
    "parse_key_registration",
    "parse_key_update",
    "parse_m2m_time",
    "parse_registration_update",
    "plan_client_registration",
    "plan_key_registration",
    "plan_key_update",
    "plan_registration_update",
    "refusal_response",
    "request_id",
    "retrieval_body",
    "route",
]

#: 4105 CONFLICT (TS-0004 table 6.6.3.5-1); not in m2msec.bindings.messages.RSC.
CONFLICT: Final = 4105
#: m2m:suid values of MAF-distributed symmetric keys (TS-0004 table 6.3.4.2.39-1).
SAEF_SUID: Final = 32
MAF_SUIDS: Final = frozenset({32, 33, 34, 35})
#: SUIDs whose targetIDs hold exactly one Absolute AE-ID or CSE-ID (8.8.2.7: SAEF, ESPrim).
_SINGLE_TARGET_SUIDS: Final = frozenset({32, 33})
MAX_TARGETS: Final = 64
MAX_LABELS: Final = 64
MAX_LABEL_LENGTH: Final = 256
DEFAULT_KEY_LIFETIME: Final = timedelta(hours=24)
DEFAULT_REGISTRATION_LIFETIME: Final = timedelta(days=30)

_REG_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


# ----------------------------------------------------------------------------- basics


class MafRefusal(Exception):
    """A procedure refused: ``rsc`` and a ``message`` safe to show; ``audit`` for the log."""

    def __init__(self, rsc: int, message: str, *, audit: str | None = None) -> None:
        super().__init__(message)
        self.rsc = int(rsc)
        self.message = message
        self.audit = audit or message


def _bad(message: str) -> MafRefusal:
    return MafRefusal(RSC.BAD_REQUEST, message)


def parse_m2m_time(text: object, what: str = "expirationTime") -> datetime:
    """A oneM2M timestamp read as Entity A reads it (:mod:`m2msec.maf.wire`); a zone
    designator or padding is refused with 4000."""
    try:
        return wire.parse_time(text, what)
    except wire.WireError as exc:
        raise _bad(str(exc)) from None


def format_m2m_time(value: datetime) -> str:
    """``YYYYMMDDThhmmss[,ffffff]`` in UTC (:mod:`m2msec.maf.wire`); naive values refused."""
    return wire.format_time(value)


@functools.lru_cache(maxsize=4096)
def canonical_entity(text: str, sp_fqdn: str) -> str:
    """The absolute form ``//{FQDN}/...`` used to compare targetIDs, Entity B identities
    and a retriever's authenticated identity.

    SP-relative ids are read under ``sp_fqdn``; FQDNs compare case-insensitively and so do
    CSE-IDs (they reach us in DNS names, docs/readings.md A-05); AE-IDs compare exactly. A bare
    C-stem has no registrar and is not accepted. Raises IdentifierError.
    """
    entity = parse_entity_id(text)
    fqdn = (entity.sp_fqdn or sp_fqdn).lower()
    if isinstance(entity, CseId):
        return f"//{fqdn}/{entity.relative.lower()}"
    return f"//{fqdn}{entity.sp_relative()}"


@dataclass(frozen=True, slots=True)
class MafPolicy:
    """What the MAF decides on its own (8.8.2.3, 8.8.2.7: "the MAF may assign different
    values"): its FQDN, the M2M-SP FQDN under which SP-relative ids are read, and the
    longest lifetimes it grants."""

    fqdn: str
    sp_fqdn: str
    key_lifetime: timedelta = DEFAULT_KEY_LIFETIME
    registration_lifetime: timedelta = DEFAULT_REGISTRATION_LIFETIME

    def __post_init__(self) -> None:
        check_fqdn(self.fqdn, "MAF FQDN")
        check_fqdn(self.sp_fqdn, "M2M-SP FQDN")
        # The Key Identifier <32 hex digits>@<MAF-FQDN> must fit a psk_identity.
        KcId.from_relative(bytes(RELATIVE_ID_LENGTH), self.fqdn)
        if self.key_lifetime <= timedelta(0) or self.registration_lifetime <= timedelta(0):
            raise ValueError("lifetimes must be positive")

    def kc_id(self, relative_id: str) -> KcId:
        """The MAF Key Identifier ``<relativeKeyID>@<MAF-FQDN>`` (TS-0003 10.3.5)."""
        return wire.kc_id(relative_id, self.fqdn)


class MafReader(Protocol):
    """The store reads the procedures need (:class:`m2msec.maf.store.MafStore`)."""

    def get_client(self, km_id: str) -> MasterCredential | None: ...

    def list_entity_b(self) -> tuple[str, ...]: ...

    def get_registration(self, reg_id: str) -> ClientRegistration | None: ...

    def live_registration(
        self, km_id: str, admin_fqdn: str, now: datetime | None = None
    ) -> ClientRegistration | None: ...

    def get_key(self, rel_id: str | bytes) -> MafKey | None: ...


class _EntityBCache:
    """Canonical forms of the store's Entity B list, recomputed when the list changes."""

    def __init__(self) -> None:
        self._source: tuple[str, ...] | None = None
        self._sp: str | None = None
        self._canonical: frozenset[str] = frozenset()

    def get(self, store: MafReader, sp_fqdn: str) -> frozenset[str]:
        listed = store.list_entity_b()
        if listed is not self._source or sp_fqdn != self._sp:
            out = set()
            for text in listed:
                try:
                    out.add(canonical_entity(text, sp_fqdn))
                except IdentifierError:
                    continue  # validated when added; skip rather than fail every request
            self._canonical = frozenset(out)
            self._source = listed
            self._sp = sp_fqdn
        return self._canonical


_ENTITY_B = _EntityBCache()


def allowed_entity_bs(store: MafReader, policy: MafPolicy) -> frozenset[str]:
    """The Entity B identities the MAF may hand keys to, canonical."""
    return _ENTITY_B.get(store, policy.sp_fqdn)


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
                raise _bad(str(exc)) from None
        elif not _REG_ID.fullmatch(param):
            raise _bad(f"invalid mafClientRegID {param[:80]!r}")
    return Route(procedure, param)


def request_id(request: OneM2MRequest) -> str:
    """``X-M2M-RI``, required (TS-0004 6.4.1)."""
    rid = request.request_id
    if rid is None or not rid.strip():
        raise _bad("X-M2M-RI (Request Identifier) is missing")
    return rid


def json_body(request: OneM2MRequest, root: str) -> dict[str, Any]:
    """The object under ``root`` in the request's JSON body."""
    media = (request.content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise _bad(f"Content-Type must be application/json, not {media[:60]!r}")
    if not request.body:
        raise _bad(f"the request needs a JSON body {{{root!r}: {{...}}}}")
    try:
        doc = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise _bad("the body is not valid JSON") from None
    inner = doc.get(root) if isinstance(doc, dict) else None
    if not isinstance(inner, dict):
        raise _bad(f"the body must be a JSON object {{{root!r}: {{...}}}}")
    return inner


# ----------------------------------------------------------------------------- fields


def _labels(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad("labels must be a list of strings")
    if len(value) > MAX_LABELS:
        raise _bad(f"at most {MAX_LABELS} labels")
    for v in value:
        if not 1 <= len(v) <= MAX_LABEL_LENGTH:
            raise _bad(f"each label is 1 to {MAX_LABEL_LENGTH} characters")
    return tuple(value)


@functools.lru_cache(maxsize=1024)
def _checked_fqdn(value: str, what: str) -> str:
    return check_fqdn(value, what)


def _fqdn(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"{what} must be an FQDN string")
    try:
        return _checked_fqdn(value, what)
    except IdentifierError as exc:
        raise _bad(str(exc)) from None


def _maf_fqdn(body: Mapping[str, Any], policy: MafPolicy) -> None:
    if "mafFQDN" not in body:
        raise _bad("mafFQDN is missing")
    fqdn = _fqdn(body["mafFQDN"], "mafFQDN")
    if fqdn.lower() != policy.fqdn.lower():
        raise _bad(f"mafFQDN {fqdn!r} is not this MAF ({policy.fqdn})")


def _check_fields(body: Mapping[str, Any], known: frozenset[str], root: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise _bad(f"unknown field {root}/{unknown[0][:40]!r}")


def _targets(
    value: object, policy: MafPolicy, suid: int | None
) -> tuple[tuple[str, ...], list[str]]:
    """(targetIDs as given, their canonical forms); ``suid`` None: not known yet."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad("targetIDs must be a list of AE-IDs or CSE-IDs")
    if suid in _SINGLE_TARGET_SUIDS and len(value) != 1:
        raise _bad(
            f"targetIDs must hold exactly one Absolute AE-ID or CSE-ID for SUID {suid} "
            f"(TS-0003 8.8.2.7), not {len(value)}"
        )
    if not 1 <= len(value) <= MAX_TARGETS:
        raise _bad(f"targetIDs must hold 1 to {MAX_TARGETS} identities")
    canonical = []
    for text in value:
        try:
            canonical.append(canonical_entity(text, policy.sp_fqdn))
        except IdentifierError as exc:
            raise _bad(f"targetIDs: {exc}") from None
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
        raise _bad("expirationTime is missing")
    if "adminFQDN" not in body:
        raise _bad("adminFQDN is missing")
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
        raise _bad("give expirationTime, labels or both (TS-0003 table 8.8.2.5-1)")
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
            raise _bad(f"{name} is missing")
    suid = body["SUID"]
    if isinstance(suid, bool) or not isinstance(suid, int):
        raise _bad("SUID must be an integer")
    if suid not in MAF_SUIDS:
        raise _bad(f"SUID {suid} is not a MAF-distributed key (32 SAEF, 33 ESPrim, 34/35 ESData)")
    targets, canonical = _targets(body["targetIDs"], policy, suid)
    key_value: bytes | None = None
    if "keyValue" in body:
        raw = body["keyValue"]
        if not isinstance(raw, str):
            raise _bad("keyValue must be a hex string")
        try:
            key_value = bytes.fromhex(raw)
        except ValueError:
            raise _bad("keyValue must be hexadecimal") from None
        if not MIN_KEY_OCTETS <= len(key_value) <= MAX_KEY_OCTETS:
            raise _bad(f"keyValue must be {MIN_KEY_OCTETS} to {MAX_KEY_OCTETS} octets")
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
        raise _bad("give expirationTime, labels or targetIDs (TS-0003 table 8.8.2.9-1)")
    expires = parse_m2m_time(body["expirationTime"]) if "expirationTime" in body else None
    labels = _labels(body["labels"]) if "labels" in body else None
    targets = canonical = None
    if "targetIDs" in body:
        # The number of targets allowed depends on the stored key's SUID: plan_key_update.
        targets, canon = _targets(body["targetIDs"], policy, None)
        canonical = tuple(canon)
    return KeyUpdateRequest(expires, labels, "labels" in body, targets, canonical)


# ----------------------------------------------------------------------------- rules


def assign_expiry(
    requested: datetime, now: datetime, max_lifetime: timedelta, cap: datetime | None = None
) -> datetime:
    """The expirationTime the MAF grants: the request, shortened to ``max_lifetime`` from
    now and to ``cap`` (the client registration), to the microsecond (TS-0004 6.3.3 allows
    a fraction; rounding to whole seconds cut a 6 s Kc to 5.x s, issue 9 item 7)."""
    if requested <= now:
        raise _bad("expirationTime is not in the future")
    granted = min(requested, now + max_lifetime)
    if cap is not None:
        granted = min(granted, cap)
    if granted <= now:
        raise _bad("the expirationTime the MAF could grant has already passed")
    return granted


def plan_client_registration(
    policy: MafPolicy, km: MasterCredential, req: ClientRegRequest, now: datetime, reg_id: str
) -> ClientRegistration:
    """8.8.2.3: a registration record with the lifetime the MAF grants."""
    expires = assign_expiry(req.expires, now, policy.registration_lifetime)
    return ClientRegistration(reg_id, km.canonical, expires, req.admin_fqdn, req.labels, now)


def client_registration_body(reg: ClientRegistration, km: MasterCredential) -> dict[str, Any]:
    """Table 8.8.2.3-2 (:class:`m2msec.maf.wire.MafClientRegBody`)."""
    return wire.MafClientRegBody(
        reg.reg_id, reg.expires_at, km.km_id, reg.admin_fqdn, reg.labels
    ).to_json()


def owned_registration(
    store: MafReader, km: MasterCredential, reg_id: str, now: datetime
) -> ClientRegistration:
    """A live registration of this MAF Client, or 4004 (unknown, expired or another's)."""
    reg = store.get_registration(reg_id)
    if reg is None:
        raise MafRefusal(RSC.NOT_FOUND, "no such MAF Client Registration", audit="unknown")
    if reg.km_id != km.canonical:
        raise MafRefusal(
            RSC.NOT_FOUND, "no such MAF Client Registration", audit="registration of another KmId"
        )
    if reg.expired(now):
        raise MafRefusal(RSC.NOT_FOUND, "no such MAF Client Registration", audit="expired")
    return reg


def plan_registration_update(
    policy: MafPolicy, reg: ClientRegistration, req: RegUpdateRequest, now: datetime
) -> tuple[datetime | None, dict[str, Any]]:
    """8.8.2.5: the new expirationTime (or None) and the response body, which holds only
    the fields of the request (table 8.8.2.5-2 NOTE)."""
    out: dict[str, Any] = {}
    expires = None
    if req.expires is not None:
        expires = assign_expiry(req.expires, now, policy.registration_lifetime)
        out["expirationTime"] = format_m2m_time(expires)
    if req.has_labels:
        out["labels"] = list(req.labels or ())
    return expires, {"mafClientReg": out}


def plan_key_registration(
    store: MafReader,
    policy: MafPolicy,
    km: MasterCredential,
    req: KeyRegRequest,
    now: datetime,
    *,
    exported: bytes | None,
    random_id: bytes,
) -> NewKey:
    """8.8.2.7: check the targets, choose the key value and RelativeKeyID, grant the lifetime.

    ``exported`` is the session's 48-octet ``EXPORTER-oneM2M-Connection`` output (None if
    the session already gave its exported key); ``random_id`` the RelativeKeyID to use
    for a self-generated ``keyValue``.
    """
    allowed = allowed_entity_bs(store, policy)
    for given, canonical in zip(req.target_ids, req.canonical_targets, strict=True):
        if canonical not in allowed:
            raise MafRefusal(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                f"this MAF is not authorised to provide keys to {given}",
                audit=f"target {canonical} is not an allowed Entity B",
            )
    if req.key_value is not None:
        if len(random_id) != RELATIVE_ID_LENGTH:
            raise ValueError("random_id must be 16 octets")
        relative_id, kc = random_id, req.key_value
    else:
        if exported is None:
            raise MafRefusal(
                CONFLICT,
                "this TLS session's exported key is already registered; run a new MAF "
                "Handshake for another key",
                audit="second exporter-based registration in one session",
            )
        if len(exported) != EXPORT_LENGTH:
            raise ValueError("exported keying material must be 48 octets")
        relative_id, kc = split_export(exported)
    reg = store.live_registration(km.canonical, req.admin_fqdn, now)
    expires = assign_expiry(
        req.expires, now, policy.key_lifetime, None if reg is None else reg.expires_at
    )
    return NewKey(
        relative_id=relative_id,
        kc=kc,
        expires_at=expires,
        km_id=km.canonical,
        suid=req.suid,
        target_ids=req.target_ids,
        admin_fqdn=req.admin_fqdn,
        labels=req.labels,
        reg_id=None if reg is None else reg.reg_id,
    )


def key_registration_body(key: NewKey, km: MasterCredential) -> dict[str, Any]:
    """Table 8.8.2.7-2 (:class:`m2msec.maf.wire.MafKeyRegBody`)."""
    return wire.MafKeyRegBody(
        relative_id=bytes.fromhex(key.relative_hex),
        expires=key.expires_at,
        source_client_id=km.km_id,
        admin_fqdn=key.admin_fqdn,
        suid=key.suid,
        target_ids=tuple(key.target_ids),
        labels=key.labels,
    ).to_json()


def owned_key(store: MafReader, km: MasterCredential, rel_id: str, now: datetime) -> MafKey:
    """A live key registered by this MAF Client, or 4004 (8.8.2.9/8.8.2.10 pre-conditions)."""
    key = store.get_key(rel_id)
    reason = None
    if key is None:
        reason = "unknown"
    elif key.km_id != km.canonical:
        reason = "key of another KmId"
    elif key.deregistered:
        reason = "de-registered"
    elif key.expired(now):
        reason = "expired"
    if reason is not None or key is None:
        raise MafRefusal(RSC.NOT_FOUND, "no such key registration", audit=reason)
    return key


def plan_key_update(
    store: MafReader,
    policy: MafPolicy,
    key: MafKey,
    req: KeyUpdateRequest,
    now: datetime,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """8.8.2.9: (arguments for :meth:`MafWriter.update_key`, response body with only the
    requested fields, table 8.8.2.9-2 NOTE)."""
    changes: dict[str, Any] = {}
    out: dict[str, Any] = {}
    if req.target_ids is not None:
        assert req.canonical_targets is not None
        if key.suid in _SINGLE_TARGET_SUIDS and len(req.target_ids) != 1:
            raise _bad(f"targetIDs must hold exactly one identity for SUID {key.suid}")
        allowed = allowed_entity_bs(store, policy)
        for given, canonical in zip(req.target_ids, req.canonical_targets, strict=True):
            if canonical not in allowed:
                raise MafRefusal(
                    RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                    f"this MAF is not authorised to provide keys to {given}",
                    audit=f"target {canonical} is not an allowed Entity B",
                )
        changes["target_ids"] = req.target_ids
        out["targetIDs"] = list(req.target_ids)
    if req.expires is not None:
        reg = store.get_registration(key.reg_id) if key.reg_id else None
        cap = None if reg is None or reg.expired(now) else reg.expires_at
        expires = assign_expiry(req.expires, now, policy.key_lifetime, cap)
        changes["expires_at"] = expires
        out["expirationTime"] = format_m2m_time(expires)
    if req.has_labels:
        changes["labels"] = req.labels
        out["labels"] = list(req.labels or ())
    return changes, {"mafKeyReg": out}


def decide_retrieval(
    store: MafReader,
    policy: MafPolicy,
    retriever: str,
    rel_id: str,
    now: datetime,
) -> MafKey:
    """8.8.2.8: the key for an authenticated Target MAF Client, or a refusal.

    ``retriever`` is Entity B's authenticated identity (CSE-ID or AE-ID as the certificate
    framework bound it). It must be an allowed Entity B (else 4103). An unknown, expired or
    de-registered key is 4004 with one message for all three (the audit says which); a
    retriever not in the key's targetIDs is 4103.
    """
    try:
        who = canonical_entity(retriever, policy.sp_fqdn)
    except IdentifierError:
        raise MafRefusal(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            "the authenticated identity is not an AE-ID or CSE-ID",
            audit=f"retriever {retriever!r} is not an AE-ID or CSE-ID",
        ) from None
    if who not in allowed_entity_bs(store, policy):
        raise MafRefusal(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            "this MAF does not hand keys to you",
            audit=f"retriever {who} is not an allowed Entity B",
        )
    key = store.get_key(rel_id)
    reason = None
    if key is None:
        reason = "unknown"
    elif key.deregistered or key.kc is None:
        reason = "de-registered"
    elif key.expired(now):
        reason = "expired"
    if reason is not None or key is None:
        raise MafRefusal(RSC.NOT_FOUND, "no such key", audit=f"{reason} key")
    targets = set()
    for text in key.target_ids:
        try:
            targets.add(canonical_entity(text, policy.sp_fqdn))
        except IdentifierError:
            continue
    if who not in targets:
        raise MafRefusal(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            "you are not a target of this key",
            audit=f"retriever {who} is not in targetIDs",
        )
    return key


def retrieval_body(key: MafKey, client: MasterCredential | None) -> dict[str, Any]:
    """Table 8.8.2.8-2, plus the RelativeKeyID and (8.2.2.3) Entity A's CSE-ID/AE-ID when
    the MAF is configured with one."""
    assert key.kc is not None
    return wire.MafKeyBody(
        relative_id=bytes.fromhex(key.relative_id),
        key_value=key.kc,
        expires=key.expires_at,
        source_client_id=client.km_id if client is not None else key.km_id,
        admin_fqdn=key.admin_fqdn,
        suid=key.suid,
        entity_id=client.entity_id if client is not None else None,
        labels=key.labels,
    ).to_json()


# ----------------------------------------------------------------------------- answers


def _headers(
    rsc: int, rid: str | None, rvi: str | None, has_body: bool
) -> tuple[tuple[str, str], ...]:
    headers = [("X-M2M-RSC", str(int(rsc)))]
    if rid is not None:
        headers.append(("X-M2M-RI", rid))
    if rvi is not None:
        headers.append(("X-M2M-RVI", rvi))
    if has_body:
        headers.append(("Content-Type", "application/json"))
    return tuple(headers)


def maf_response(rsc: int, body: Mapping[str, Any] | None, request: OneM2MRequest) -> HttpResponse:
    """A MAF answer: HTTP status for ``rsc``, ``X-M2M-RSC``, echoed ``X-M2M-RI``/``RVI``."""
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    return HttpResponse(
        http_status_for(rsc),
        _headers(rsc, request.request_id, request.release_version, bool(data)),
        data,
    )


def refusal_response(refusal: MafRefusal, request: OneM2MRequest | None) -> HttpResponse:
    """``{"m2m:dbg": message}`` with the refusal's RSC (never the audit detail)."""
    data = json.dumps({"m2m:dbg": refusal.message}).encode()
    rid = request.request_id if request is not None else None
    rvi = request.release_version if request is not None else None
    return HttpResponse(http_status_for(refusal.rsc), _headers(refusal.rsc, rid, rvi, True), data)
