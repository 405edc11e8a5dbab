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

Three sans-IO modules hold the mapping: this one the basics every procedure shares (the
refusal, the policy, the store reads, canonical identities, times) and the answers;
:mod:`m2msec.maf.requests` routes and parses requests; :mod:`m2msec.maf.rules` applies each
procedure's rules over the store's reads and builds the success bodies. None performs
network I/O or commits (:mod:`m2msec.maf.service` plans the writes, :mod:`m2msec.servers.maf`
commits them). Refusals are :class:`MafRefusal` with a Response
Status Code (TS-0004 6.6) and a message safe to show; ``audit`` says more for the audit log
(e.g. *which* of unknown / expired / de-registered made a Key Retrieval answer 4004).

Times are oneM2M timestamps ``YYYYMMDDTHHMMSS`` in UTC (TS-0004 basic ISO 8601); keys
travel as lower-case hex. Identities in ``targetIDs`` and Entity B's authenticated identity
are compared in one canonical absolute form (:func:`canonical_entity`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest, http_status_for
from m2msec.crypto.keyexport import RELATIVE_ID_LENGTH
from m2msec.errors import IdentifierError
from m2msec.ids import CseId, check_fqdn, parse_entity_id
from m2msec.keyids import KcId
from m2msec.maf import wire
from m2msec.maf.store import ClientRegistration, MafKey, MasterCredential

__all__ = [
    "CONFLICT",
    "DEFAULT_KEY_LIFETIME",
    "DEFAULT_REGISTRATION_LIFETIME",
    "MAF_SUIDS",
    "SAEF_SUID",
    "SINGLE_TARGET_SUIDS",
    "MafPolicy",
    "MafReader",
    "MafRefusal",
    "allowed_entity_bs",
    "bad_request",
    "canonical_entity",
    "format_m2m_time",
    "maf_response",
    "parse_m2m_time",
    "refusal_response",
]

#: 4105 CONFLICT (TS-0004 table 6.6.3.5-1).
CONFLICT: Final = RSC.CONFLICT
#: m2m:suid values of MAF-distributed symmetric keys (TS-0004 table 6.3.4.2.39-1).
SAEF_SUID: Final = 32
MAF_SUIDS: Final = frozenset({32, 33, 34, 35})
#: SUIDs whose targetIDs hold exactly one Absolute AE-ID or CSE-ID (8.8.2.7: SAEF, ESPrim).
SINGLE_TARGET_SUIDS: Final = frozenset({32, 33})
DEFAULT_KEY_LIFETIME: Final = timedelta(hours=24)
DEFAULT_REGISTRATION_LIFETIME: Final = timedelta(days=30)


# ----------------------------------------------------------------------------- basics


class MafRefusal(Exception):
    """A procedure refused: ``rsc`` and a ``message`` safe to show; ``audit`` for the log."""

    def __init__(self, rsc: int, message: str, *, audit: str | None = None) -> None:
        super().__init__(message)
        self.rsc = int(rsc)
        self.message = message
        self.audit = audit or message


def bad_request(message: str) -> MafRefusal:
    """4000 BAD_REQUEST: what every malformed field, body or time is answered with."""
    return MafRefusal(RSC.BAD_REQUEST, message)


def parse_m2m_time(text: object, what: str = "expirationTime") -> datetime:
    """A oneM2M timestamp read as Entity A reads it (:mod:`m2msec.maf.wire`); a zone
    designator or padding is refused with 4000."""
    try:
        return wire.parse_time(text, what)
    except wire.WireError as exc:
        raise bad_request(str(exc)) from None


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
