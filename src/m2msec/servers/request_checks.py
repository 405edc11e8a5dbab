"""The gateway's rules for each request of an association: a pure decision, no I/O.

Rules, applied to each request before anything is forwarded (:func:`check_request`, a
pure function of the association and the request):

(a) **Lifetime.** Past the association's ``valid_until`` (the key's lifetime) the request
    is answered 4107 SECURITY_ASSOCIATION_REQUIRED and the association is closed: a fresh
    handshake is needed (docs/readings.md A-16; open sessions run until their next request after
    expiry, which is then refused).
(b) **Originator.** ``X-M2M-Origin`` (TS-0004 From) is normalised with
    :func:`m2msec.ids.normalise_originator` under the gateway's CSE-ID and must equal the
    association's identity, normalised alike. A CSE peer is held to TS-0004 7.3.2.1's CSE
    rules (``[gateway] cse_originators = "ts-0004"``, the default: a CSE-relative C-stem,
    another registree CSE's CSE-ID or a C-stem AE-ID under one is 4106, transit
    originators of CSEs/AEs below it pass) or, with ``"strict"``, to the older rule below.
    Over an AE's association From must be the
    AE-ID-Stem itself (``Clight-AE1``): its SP-relative or absolute form
    (``/mn-cse-123456/Clight-AE1``) is 4000 BAD_REQUEST (TS-0004 7.3.2.1; docs/readings.md A-14 as
    corrected in ISSUE-NOTES). A CSE peer (TS-0003 8.2.2: CSE-ID bound) may
    use its CSE-ID or any originator under it (:func:`m2msec.ids.originator_within`); a
    ``<remoteCSE>`` CREATE (ty=16) must come from the CSE-ID itself.
(c) **AE registration** (CREATE with ty=2, TS-0001 V3.36 10.2.2.2, steps 001-003)
    happens only over an established association (every ``tls://`` request is). Its From
    must be the authenticated AE-ID; an absent or empty From, ``C`` or ``S`` (cases iii-v
    of step 002: "assign me one") is replaced by the authenticated AE-ID-Stem, so the AE
    is registered under the identity it proved. An association bound to a Credential-ID
    (``12-<KpsaId>``, docs/readings.md A-13) may only register an AE (From absent, ``C``, ``S``
    or an AE-ID-Stem of this CSE or an S-stem); the backend receives the Credential-ID
    (``X-M2MSec-Credential-ID``) for its step 003 check against the service subscription
    (allowed AE-ID-Stems and App-IDs). On 2001 CREATED the gateway reads ``m2m:ae/aei``
    from the JSON answer and binds the association to that AE-ID for the rest of its
    life; until then everything else is refused.
(d) A From that does not match the association's identity (rule (b)) is answered 4106
    ORIGINATOR_NOT_AUTHENTICATED (TS-0004 7.3.2.1, TS-0003 V3.18 7.2.1); anything else is
    answered 4103 ORIGINATOR_HAS_NO_PRIVILEGE by the gateway itself, and nothing is
    forwarded (a missing From, outside AE registration, is 4000 BAD_REQUEST).
"""

from __future__ import annotations

import enum
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from m2msec.app_rules import AppRule, check_app_rules
from m2msec.bindings.messages import RSC, OneM2MRequest, Operation
from m2msec.errors import IdentifierError
from m2msec.ids import AeId, CseId, normalise_originator, originator_within, parse_entity_id
from m2msec.servers.association import Association, credential_of
from m2msec.tls.context import PeerKind

__all__ = [
    "AE_RESOURCE_TYPE",
    "REMOTE_CSE_RESOURCE_TYPE",
    "Forward",
    "OwnerOf",
    "Refuse",
    "Rule",
    "check_request",
]

AE_RESOURCE_TYPE = 2  # TS-0004 table 6.3.4.2.1-1
REMOTE_CSE_RESOURCE_TYPE = 16

_ASSIGN_ME = ("", "C", "S")  # From values that ask the CSE to assign the AE-ID


class Rule(enum.StrEnum):
    """Why the gateway answered a request itself (for logs, stats and docs)."""

    EXPIRED = "association-expired"  # (a)
    NO_ASSOCIATION = "security-association-required"  # plain http listener
    ORIGIN_MISSING = "originator-missing"  # (d), 4000
    ORIGIN_MALFORMED = "originator-malformed"  # (b)
    ORIGIN_MISMATCH = "originator-mismatch"  # (b) AE
    OUTSIDE_CSE = "originator-outside-cse"  # (b) CSE
    ORIGIN_NOT_STEM = "originator-not-stem"  # (b) AE: SP-relative/absolute form of itself
    CSE_REGISTRATION = "remote-cse-originator"  # (b) ty=16
    UNBOUND_CREDENTIAL = "credential-not-registered"  # (c) A-13
    REGISTRATION_IDENTITY = "registration-identity"  # (c)
    IDENTITY_OWNED = "identity-owned"  # (c) the AE-ID belongs to another credential
    APP_RULE = "app-rule"  # (c) serviceSubscribedAppRule, 4126 / 4128
    SERVICE_PEER = "service-peer"  # MAF/MEF/BSF certificates carry no oneM2M originator
    NO_IDENTITY = "identity-unusable"
    METHOD = "method-not-mapped"
    SA_UNAVAILABLE = "sa-unavailable"  # seed 003 7.3.5: the SA was removed, expired or closed


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward the request with ``X-M2M-Origin: origin`` (None: without the header).

    ``bind_on_created``: read ``m2m:ae/aei`` from a 2001 answer and bind the association.
    """

    origin: str | None
    bind_on_created: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the request ourselves with ``rsc``; close the association if ``close``."""

    rsc: int
    rule: Rule
    reason: str
    close: bool = False


def _app_id(request: OneM2MRequest) -> str | None:
    """``m2m:ae/api`` of a JSON registration body, if readable."""
    try:
        api = json.loads(request.body)["m2m:ae"]["api"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
    return api if isinstance(api, str) else None


def _is_registration(request: OneM2MRequest) -> bool:
    return request.operation is Operation.CREATE and request.resource_type == AE_RESOURCE_TYPE


OwnerOf = Callable[[str], "str | None"]
"""Which credential owns a normalised entity id (the identity registry; None: nobody)."""


def _cse_originator_refusal(
    assoc: Association, origin: str, normal: str, owner_of: OwnerOf | None
) -> str | None:
    """Why TS-0004 7.3.2.1 refuses ``origin`` from a registree CSE (None: it may carry it).

    A transit CSE carries requests of CSEs and AEs registered below it (multi-hop MN-CSE
    chains), so only what the clause lists is refused: a CSE-relative C-stem, another
    registree CSE's CSE-ID, or a C-stem AE-ID under another registree CSE. "Registree CSE"
    is decided by ``owner_of``: an id owned by a credential other than the one that owns the
    peer's CSE-ID. Without a registry only the C-stem rule is decidable.
    """
    if not origin.startswith("/") and origin.startswith("C"):
        return f"originator {origin!r} is a CSE-relative C-stem, not an originator a CSE carries"
    if owner_of is None or normal == assoc.identity:
        return None
    try:
        entity = parse_entity_id(normal, assoc.registrar)
    except IdentifierError:
        return None
    if isinstance(entity, CseId):
        cse_id = normal
    elif entity.stem.startswith("C") and entity.cse is not None:
        cse_id = normalise_originator("/" + entity.cse, assoc.registrar, assoc.sp_fqdn)
        if entity.sp_fqdn is not None and normal.startswith("//"):
            cse_id = f"//{entity.sp_fqdn}/{entity.cse}"
        if cse_id == assoc.identity:
            return None
    else:
        return None
    owner = owner_of(cse_id)
    if owner is None:
        return None
    own = owner_of(assoc.identity) if assoc.identity else None
    if own is not None and hmac.compare_digest(owner, own):
        return None
    return f"originator {origin!r} names {cse_id}, another registree CSE"


def check_request(
    assoc: Association,
    request: OneM2MRequest,
    now: datetime | None = None,
    owner_of: OwnerOf | None = None,
    app_rules: Sequence[AppRule] | None = None,
    *,
    cse_originators: str = "ts-0004",
) -> Forward | Refuse:
    """Decide one request of an established association (rules (a)-(d), module doc).

    ``cse_originators`` and ``owner_of`` decide CSE peers' originators (rule (b)).

    ``owner_of`` is the identity registry's lookup (normalised entity id -> credential key):
    a Credential-ID association may not register an AE-ID another credential owns.
    ``app_rules`` (None: not checked) are the serviceSubscribedAppRules a Credential-ID
    registration must satisfy (m2msec.app_rules): 4128 / 4126 otherwise.
    """
    ctx = assoc.context
    if ctx.expired(now or datetime.now(UTC)):
        return Refuse(
            RSC.SECURITY_ASSOCIATION_REQUIRED,
            Rule.EXPIRED,
            "the security association has expired; establish a new one",
            close=True,
        )
    if request.operation is None:
        return Refuse(
            RSC.BAD_REQUEST, Rule.METHOD, f"HTTP method {request.method} maps to no operation"
        )
    raw = request.origin
    origin = (raw or "").strip()
    registration = _is_registration(request)

    if assoc.kind is PeerKind.SERVICE:
        return Refuse(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            Rule.SERVICE_PEER,
            f"{assoc.peer_id} is a MAF/MEF/BSF, not an AE or CSE",
        )

    if assoc.kind is PeerKind.CREDENTIAL and assoc.identity is None:
        if not registration:
            return Refuse(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                Rule.UNBOUND_CREDENTIAL,
                f"association bound to {assoc.peer_id}: register an AE first",
            )
        if app_rules is not None and assoc.credential_id is not None:
            wanted = origin.rsplit("/", 1)[-1] if origin else "C"
            rsc = check_app_rules(app_rules, assoc.credential_id, wanted, _app_id(request))
            if rsc is not None:
                return Refuse(
                    RSC(rsc),
                    Rule.APP_RULE,
                    f"no serviceSubscribedAppRule lets {assoc.credential_id} register {wanted!r}",
                )
        if origin in _ASSIGN_ME:
            return Forward(raw, bind_on_created=True)
        try:
            entity = parse_entity_id(origin, assoc.registrar)
            normal = assoc.normalise(origin)
        except IdentifierError as exc:
            return Refuse(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, Rule.ORIGIN_MALFORMED, str(exc))
        local = originator_within(normal, assoc.registrar) or (
            isinstance(entity, AeId) and entity.stem.startswith("S") and entity.sp_fqdn is None
        )
        if not isinstance(entity, AeId) or not local:
            return Refuse(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                Rule.REGISTRATION_IDENTITY,
                f"{origin!r} is not an AE-ID this CSE can register",
            )
        if owner_of is not None:
            owner = owner_of(normal)
            if owner is not None and owner != credential_of(ctx):
                # TS-0001 9.6.1.2.2: only the owner of an AE-ID may register it (issue 9).
                return Refuse(
                    RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                    Rule.IDENTITY_OWNED,
                    f"{origin!r} is bound to another credential",
                )
        return Forward(raw, bind_on_created=True)

    if assoc.identity is None:
        return Refuse(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            Rule.NO_IDENTITY,
            f"the authenticated identity {ctx.peer_id!r} is not a usable AE-ID or CSE-ID",
        )

    if registration and assoc.kind is PeerKind.AE and origin in _ASSIGN_ME:
        stem = assoc.registration_origin()
        if stem is None:
            return Refuse(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                Rule.REGISTRATION_IDENTITY,
                f"{assoc.identity} cannot register with this CSE ({assoc.registrar})",
            )
        return Forward(stem)

    if not origin:
        return Refuse(RSC.BAD_REQUEST, Rule.ORIGIN_MISSING, "X-M2M-Origin is missing")
    try:
        normal = assoc.normalise(origin)
    except IdentifierError as exc:
        return Refuse(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, Rule.ORIGIN_MALFORMED, str(exc))

    if assoc.kind is PeerKind.CSE:
        assert assoc.cse is not None
        if cse_originators == "strict":
            if not originator_within(normal, assoc.cse):
                return Refuse(
                    RSC.ORIGINATOR_NOT_AUTHENTICATED,
                    Rule.OUTSIDE_CSE,
                    f"originator {origin!r} is neither {assoc.identity} nor under it",
                )
        else:
            why = _cse_originator_refusal(assoc, origin, normal, owner_of)
            if why is not None:
                return Refuse(RSC.ORIGINATOR_NOT_AUTHENTICATED, Rule.OUTSIDE_CSE, why)
        if (
            request.operation is Operation.CREATE
            and request.resource_type == REMOTE_CSE_RESOURCE_TYPE
            and normal != assoc.identity
        ):
            return Refuse(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                Rule.CSE_REGISTRATION,
                f"only {assoc.identity} itself may register as a remote CSE",
            )
        return Forward(raw)

    if normal != assoc.identity:
        return Refuse(
            RSC.ORIGINATOR_NOT_AUTHENTICATED,
            Rule.ORIGIN_MISMATCH,
            f"originator {origin!r} is not the authenticated AE {assoc.identity}",
        )
    if origin.startswith("/"):
        # TS-0004 7.3.2.1: a registree AE's From is its AE-ID-Stem; the SP-relative or
        # absolute form of its own AE-ID is a malformed request, not the same AE.
        return Refuse(
            RSC.BAD_REQUEST,
            Rule.ORIGIN_NOT_STEM,
            f"originator {origin!r}: a registree AE sends its AE-ID-Stem as From",
        )
    return Forward(raw)
