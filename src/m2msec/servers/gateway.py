"""The CSE security gateway: Entity B in front of a real oneM2M CSE.

The gateway terminates the Security Association Establishment of TS-0003 clause 8.2
(provisioned PSK, 8.2.2.1; certificates, 8.2.2.2; GBA with the gateway as NAF, seed 000
8.2.3.2, :mod:`m2msec.frameworks.gba`; MAF-based, 8.2.2.3, the gateway resolving KcIds by
Key Retrieval at the MAF, :mod:`m2msec.frameworks.maf`) on ``tls://`` listeners (and, all
four, on ``dtls://``; GBA over DTLS-PSK is our extension), then reads
oneM2M HTTP requests (:mod:`m2msec.bindings.http`) from each association, checks every
request's originator against the identity the association was bound to, and forwards the
requests it accepts to the CSE behind it (the *backend*, for example ACME).
``dtls://`` listeners do the same for the CoAP binding over DTLS 1.2 (TS-0003 10.2.1,
TS-0008; :mod:`m2msec.servers.coap_gateway`): a CoAP request is read as the same oneM2M
request and goes through the same pipeline (:meth:`Gateway.process`), so the rules below
hold alike for both transports. Session resumption (``[gateway] resumption``, on by
default) is enabled on both; a session is resumed only after the framework re-validates
its binding (:func:`m2msec.tls.resumption.revalidate`: key expiry for all, the
psk-lookup-table row for provisioned PSK, the held Kc for MAF, the certificate's notAfter
for certificates).

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

``http://`` listeners are plain: every request there is answered 4107
SECURITY_ASSOCIATION_REQUIRED (TS-0004 table 6.6.3.5-1) and nothing is forwarded.

Forwarded requests lose any incoming ``X-M2MSec-*`` header and gain the association's
identity: ``X-M2MSec-Peer-ID`` (the bound identity, normalised; for an AE its Absolute
AE-ID when the CSE-ID carries the M2M-SP's FQDN), ``X-M2MSec-Peer-Kind``,
``X-M2MSec-Framework``, ``X-M2MSec-Key-ID`` (KpsaId or certificate fingerprint, never a
key), ``X-M2MSec-SA-ID`` and, for Credential-ID bound peers, ``X-M2MSec-Credential-ID``.
Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded either way. Requests travel over a
pool of persistent HTTP/1.1 connections (:class:`m2msec.servers.backend.BackendPool`, on
the one HTTP client).
A backend that cannot be reached is answered 5103 TARGET_NOT_REACHABLE (4008
REQUEST_TIMEOUT when it does not answer within ``backend_timeout``); the gateway keeps
serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hmac
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from m2msec.app_rules import AppRule, check_app_rules
from m2msec.bindings.http import (
    BadRequest,
)
from m2msec.bindings.messages import (
    RSC,
    HttpResponse,
    OneM2MRequest,
    Operation,
    error_response,
    media_type_and_ty,
)
from m2msec.config import GatewayConfig, GbaConfig, ListenerSpec, MafRetrievalConfig
from m2msec.errors import (
    CertificateError,
    ConfigurationError,
    HandshakeError,
    IdentifierError,
    StoreError,
)
from m2msec.ids import AeId, CseId, normalise_originator, originator_within, parse_entity_id
from m2msec.servers.backend import (
    BackendError,
    BackendPool,
    BackendRequestError,
    BackendTimeout,
    BackendTooLarge,
)
from m2msec.servers.coap_gateway import CoapListener
from m2msec.service.limits import HttpLimits
from m2msec.service.server import HttpService, ServiceHooks
from m2msec.service.streams import PlainStream
from m2msec.store.app_rules import AppRuleStore
from m2msec.store.base import PskStore
from m2msec.store.psk import SealedPskStore
from m2msec.store.registry import IdentityRegistry
from m2msec.tls.aio import EVICTED, NO_FIRST_FLIGHT, TLSConnection, TLSServer
from m2msec.tls.context import Framework, PeerBinding, PeerKind, SecurityContext
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = [
    "AE_RESOURCE_TYPE",
    "REMOTE_CSE_RESOURCE_TYPE",
    "Association",
    "Forward",
    "Gateway",
    "GatewayStats",
    "ListenerInfo",
    "Refuse",
    "Rule",
    "aei_from_response",
    "check_request",
    "forwarded_headers",
    "response_headers",
]

if TYPE_CHECKING:
    from m2msec.frameworks.gba import GbaResponder
    from m2msec.frameworks.maf import MafResponder
    from m2msec.gba.zn import ZnClient

log = logging.getLogger(__name__)

#: How many SA records Entity B keeps in ``Gateway.recent_associations``.
RECENT_ASSOCIATIONS = 1024

AE_RESOURCE_TYPE = 2  # TS-0004 table 6.3.4.2.1-1
REMOTE_CSE_RESOURCE_TYPE = 16

#: Largest backend answer relayed; beyond it the client gets 5000 (a CSE answer this
#: large is a discovery gone wrong, not something to hold in memory).
MAX_RESPONSE_BODY = 64 * 1024 * 1024
#: Connections to the backend: at most this many open, this many kept idle between requests.
BACKEND_CONNECTIONS = 100
BACKEND_IDLE_CONNECTIONS = 20
#: How long close() lets requests in progress finish before cutting them.
SHUTDOWN_GRACE = 5.0

_ASSIGN_ME = ("", "C", "S")  # From values that ask the CSE to assign the AE-ID

# RFC 9110 7.6.1 hop-by-hop fields, plus framing and Host, which the next hop sets.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "expect",  # 100-continue was answered here; the backend gets the whole body
    }
)
_OURS = "x-m2msec-"


# ----------------------------------------------------------------------------- rules


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


@dataclass(slots=True)
class Association:
    """The identity state of one security association, as the rules see it.

    ``identity`` is the bound identity in normalised form (SP-relative AE-ID or CSE-ID,
    docs/readings.md A-14), or None while a Credential-ID binding awaits AE registration.
    """

    context: SecurityContext
    registrar: CseId
    sp_fqdn: str | None
    kind: PeerKind
    identity: str | None
    credential_id: str | None = None
    cse: CseId | None = None
    #: time.monotonic() of the last live revalidation of its psk row (ISSUE-NOTES issue 6).
    revalidated_at: float = -float("inf")

    @classmethod
    def from_context(
        cls, context: SecurityContext, registrar: CseId, sp_fqdn: str | None = None
    ) -> Association:
        sp = sp_fqdn if sp_fqdn is not None else registrar.sp_fqdn
        kind = context.peer_kind
        if kind is PeerKind.CREDENTIAL:
            return cls(context, registrar, sp, kind, None, credential_id=context.peer_id)
        if kind is PeerKind.SERVICE:
            return cls(context, registrar, sp, kind, None)
        try:
            identity = normalise_originator(context.peer_id, registrar, sp)
            cse = CseId.parse(identity) if kind is PeerKind.CSE else None
        except IdentifierError:
            return cls(context, registrar, sp, kind, None)
        return cls(context, registrar, sp, kind, identity, cse=cse)

    @property
    def peer_id(self) -> str:
        """The identity told to the backend: bound identity, else the Credential-ID."""
        if self.identity is not None:
            return self.identity
        return self.credential_id or self.context.peer_id

    @property
    def absolute_id(self) -> str:
        """The Absolute AE-ID (``//{SP FQDN}/{cse}/{stem}``, TS-0001 7.2) the context is bound
        to, when the M2M-SP's FQDN is known; else :attr:`peer_id` (ISSUE-NOTES, A-14)."""
        identity = self.identity
        local = identity and identity.startswith("/") and not identity.startswith("//")
        if self.kind is PeerKind.AE and local and self.sp_fqdn:
            return f"//{self.sp_fqdn}{identity}"
        return self.peer_id

    def normalise(self, origin: str) -> str:
        return normalise_originator(origin, self.registrar, self.sp_fqdn)

    def registration_origin(self) -> str | None:
        """The AE-ID-Stem to register under, if it names exactly our identity here."""
        if self.kind is not PeerKind.AE or self.identity is None:
            return None
        try:
            entity = parse_entity_id(self.identity, self.registrar)
            if not isinstance(entity, AeId):
                return None
            if self.normalise(entity.stem) != self.identity:
                return None  # a C-stem of another registrar, or another M2M-SP's AE
        except IdentifierError:
            return None
        return entity.stem

    def bind_ae(self, aei: str) -> str:
        """Bind a Credential-ID association to the AE-ID the CSE assigned (A-13)."""
        identity = self.normalise(aei)
        entity = parse_entity_id(identity, self.registrar)
        if not isinstance(entity, AeId):
            raise IdentifierError(f"invalid AE-ID {aei!r}: names a CSE")
        self.identity = identity
        self.kind = PeerKind.AE
        return identity


_CREDENTIAL_PREFIX: dict[Framework, str] = {
    Framework.PROVISIONED_PSK: "psk",
    Framework.MAF: "maf",
    Framework.GBA: "gba",
    Framework.CERTIFICATE: "cert",
}


def credential_of(context: SecurityContext) -> str | None:
    """The identity registry's key of the association's credential (m2msec.store.registry).

    psk and certificate: the KpsaId / fingerprint. MAF: ``maf:<KmId>`` from a Credential-ID
    ``11-<KmId>`` (the KcId changes with every key); with IdA the MAF vouches for the
    identity itself, so ``maf:<IdA>``. GBA likewise: ``gba:<B-TID>`` or ``gba:<USS identity>``.
    """
    prefix = _CREDENTIAL_PREFIX[context.framework]
    if context.framework in (Framework.MAF, Framework.GBA):
        peer = context.peer_id
        credential_prefix = "11-" if context.framework is Framework.MAF else "12-"
        if peer.startswith(credential_prefix):
            peer = peer[3:]
        return f"{prefix}:{peer}"
    if context.key_id is None:
        return None
    return f"{prefix}:{context.key_id}"


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


def forwarded_headers(
    request: OneM2MRequest, assoc: Association, origin: str | None
) -> list[tuple[str, str]]:
    """The request headers for the backend: hop-by-hop and ``X-M2MSec-*`` removed, From set,
    the association's identity added."""
    dropped = set(_HOP_BY_HOP) | _connection_tokens(request.headers)
    headers = [
        (name, value)
        for name, value in request.headers
        if name not in dropped and not name.startswith(_OURS) and name != "x-m2m-origin"
    ]
    if origin is not None:
        headers.append(("X-M2M-Origin", origin))
    ctx = assoc.context
    headers.append(("X-M2MSec-Peer-ID", assoc.absolute_id))
    headers.append(("X-M2MSec-Peer-Kind", assoc.kind.value))
    headers.append(("X-M2MSec-Framework", ctx.framework.value))
    if ctx.key_id:
        headers.append(("X-M2MSec-Key-ID", ctx.key_id))
    headers.append(("X-M2MSec-SA-ID", ctx.sa_id))
    if assoc.credential_id:
        headers.append(("X-M2MSec-Credential-ID", assoc.credential_id))
    return headers


def response_headers(raw: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """The backend's response headers minus hop-by-hop fields (h11 reframes the body)."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    lowered = tuple((k.lower(), v) for k, v in headers)
    dropped = set(_HOP_BY_HOP) | _connection_tokens(lowered)
    return tuple((k, v) for k, v in headers if k.lower() not in dropped)


def _connection_tokens(headers: tuple[tuple[str, str], ...]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def aei_from_response(response: HttpResponse) -> str | None:
    """``m2m:ae/aei`` of a 2001 CREATED answer in JSON, or None."""
    if response.rsc != RSC.CREATED:
        return None
    ctype = next((v for k, v in response.headers if k.lower() == "content-type"), None)
    encoding = next((v for k, v in response.headers if k.lower() == "content-encoding"), "")
    media, _ = media_type_and_ty(ctype)
    if media is None or "json" not in media or encoding.strip().lower() not in ("", "identity"):
        return None
    try:
        doc = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return None
    ae = doc.get("m2m:ae") if isinstance(doc, dict) else None
    aei = ae.get("aei") if isinstance(ae, dict) else None
    return aei if isinstance(aei, str) and aei else None


# ----------------------------------------------------------------------------- server


@dataclass(slots=True)
class GatewayStats:
    """Counters since start (no identities, no keys)."""

    associations_established: int = 0
    associations_closed: int = 0
    handshakes_failed: int = 0
    requests_forwarded: int = 0
    requests_refused: int = 0
    plain_requests_refused: int = 0
    bad_requests: int = 0
    backend_errors: int = 0
    registrations_bound: int = 0
    dtls_associations: int = 0  # of associations_established: CoAP over DTLS
    coap_requests: int = 0
    coap_bad_messages: int = 0  # datagrams inside DTLS that were not (valid) CoAP
    handshakes_evicted: int = 0  # of handshakes_failed: silent connections making room
    first_flight_timeouts: int = 0  # of handshakes_failed: no ClientHello within the deadline
    associations_over_credential_cap: int = 0  # refused: the credential holds the maximum
    request_head_timeouts: int = 0  # heads not complete within request_head_timeout: 408
    refused_by_rule: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name != "refused_by_rule"
        }
        out["refused_by_rule"] = dict(self.refused_by_rule)
        return out


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    """A running listener: its configuration and the address it is bound to."""

    spec: ListenerSpec
    host: str
    port: int
    framework: str | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = f"?framework={self.spec.framework}" if self.spec.framework else ""
        return f"{self.spec.scheme}://{host}:{self.port}{suffix}"


class Gateway:
    """The CSE security gateway (module docstring): ``await start()``, ``await close()``.

    ``store`` overrides the configured psk-lookup-table (the gateway does not close a
    store it was given). Requests are forwarded over a :class:`~m2msec.servers.backend.
    BackendPool` of persistent HTTP/1.1 connections (``backend`` once started).
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: PskStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        # A stand-in owner_of (tests); otherwise the identity registry of the psk store.
        self.owner_of: OwnerOf | None = None
        self.stats = GatewayStats()
        self._live_by_credential: Counter[str] = Counter()
        self._store = store
        self._own_store = False
        # Live revalidation of provisioned-PSK associations: the row check and how often
        # (the store's lookup cache lifetime: a change is not visible sooner anyway).
        self._psk_revalidate: Callable[[PeerBinding], PeerBinding] | None = None
        self._registry: IdentityRegistry | None = None
        self._rule_store: AppRuleStore | None = None
        self._clock = clock
        #: The client of the backend CSE, once started.
        self.backend: BackendPool | None = None
        self._tls: list[TLSServer] = []
        self._coap: list[CoapListener] = []
        #: The NAF of the GBA framework (``[gba]``), once started; its Zn client.
        self.gba: GbaResponder | None = None
        self._zn: ZnClient | None = None
        #: Entity B of the MAF framework (``[maf]``), once started; its Key Retrieval client.
        self.maf: MafResponder | None = None
        self._servers: list[asyncio.Server] = []
        self._listeners: list[ListenerInfo] = []
        self._http = HttpService(
            HttpLimits.of(config),
            ServiceHooks(
                internal_error=lambda request: _answer(
                    request, RSC.INTERNAL_SERVER_ERROR, "gateway error"
                ),
                on_bad_request=self._count_bad_request,
                on_head_timeout=self._count_head_timeout,
            ),
            name="gateway",
        )
        #: SA records of Entity B: the most recent associations, by SA identifier, open or
        #: closed (bounded, so a long-running gateway does not grow without limit).
        self.recent_associations: OrderedDict[str, SecurityContext] = OrderedDict()
        self._plain_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def listeners(self) -> list[ListenerInfo]:
        return list(self._listeners)

    @property
    def store(self) -> PskStore | None:
        return self._store

    @property
    def registry(self) -> IdentityRegistry | None:
        """The identity registry beside the psk store's table (None without one)."""
        if self._registry is None and isinstance(self._store, SealedPskStore):
            prefix = f"{self.config.cse_id}/"

            def forms(entity_id: str) -> tuple[str, ...]:
                # A psk row may spell a local AE-ID as its stem.
                if entity_id.startswith(prefix):
                    return (entity_id, entity_id[len(prefix) :])
                return (entity_id,)

            self._registry = IdentityRegistry(self._store.database, psk_forms=forms)
        return self._registry

    @property
    def rule_store(self) -> AppRuleStore | None:
        """The stored serviceSubscribedAppRules (``m2msec gateway rule``), beside the registry."""
        if self._rule_store is None and isinstance(self._store, SealedPskStore):
            self._rule_store = AppRuleStore(self._store.database, cache_ttl=self._store.cache_ttl)
        return self._rule_store

    def app_rules(self) -> tuple[AppRule, ...]:
        """The TOML's rules, then the stored ones (re-read within the lookup cache lifetime)."""
        stored = self.rule_store
        return self.config.app_rules + (() if stored is None else stored.rules())

    def url(self, index: int = 0) -> str:
        return self._listeners[index].url

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the listeners; raises ConfigurationError (or OSError when a port is taken)."""
        if self._started:
            raise RuntimeError("gateway already started")
        self._started = True
        cfg = self.config
        try:
            profiles = {
                Transport.TLS: self._profiles(Transport.TLS),
                Transport.DTLS: self._profiles(Transport.DTLS),
            }
            self.backend = BackendPool(
                cfg.backend,
                max_connections=BACKEND_CONNECTIONS,
                max_idle=BACKEND_IDLE_CONNECTIONS,
                timeout=cfg.backend_timeout,
                connect_timeout=min(cfg.backend_timeout, 5.0),
                max_body=MAX_RESPONSE_BODY,
            )
            openers = {"tls": self._open_tls, "dtls": self._open_dtls, "http": self._open_http}
            for spec in cfg.listen:
                info = await openers[spec.scheme](spec, profiles)
                self._listeners.append(info)
                log.info(
                    "listening on %s (%s%s)",
                    info.url,
                    info.framework or "plain",
                    ", CoAP" if spec.scheme == "dtls" else "",
                )
        except BaseException:
            await self.close()
            raise

    # -- listeners, by URL scheme ---------------------------------------------------------
    async def _open_tls(self, spec: ListenerSpec, profiles: _Profiles) -> ListenerInfo:
        cfg = self.config
        framework, profile = _pick(profiles[Transport.TLS], spec)
        tls = TLSServer(
            profile,
            self._serve_tls,
            handshake_timeout=cfg.handshake_timeout,
            max_handshakes=cfg.max_handshakes,
            on_failure=self.handshake_failed,
            first_flight_timeout=cfg.first_flight_timeout,
            source_share=cfg.source_share,
        )
        server = await tls.start(spec.host, spec.port)
        self._tls.append(tls)
        return self._bound(spec, server, framework)

    async def _open_dtls(self, spec: ListenerSpec, profiles: _Profiles) -> ListenerInfo:
        name, dtls = _pick(profiles[Transport.DTLS], spec)
        coap = CoapListener(self, dtls)
        self._coap.append(coap)
        host, port = await coap.start(spec.host, spec.port)
        return ListenerInfo(spec, host, port, name)

    async def _open_http(self, spec: ListenerSpec, profiles: _Profiles) -> ListenerInfo:
        server = await asyncio.start_server(self._serve_plain, spec.host, spec.port)
        return self._bound(spec, server, None)

    def _bound(
        self, spec: ListenerSpec, server: asyncio.Server, framework: str | None
    ) -> ListenerInfo:
        self._servers.append(server)
        sock = server.sockets[0].getsockname()
        return ListenerInfo(spec, sock[0], sock[1], framework)

    async def close(self) -> None:
        """Stop listening, let requests in progress finish (a few seconds), close the rest."""
        if self._closing:
            return
        self._closing = True
        for server in self._servers:
            server.close()  # stop accepting; connections stay up
        await self._http.close(SHUTDOWN_GRACE)
        for tls in self._tls:
            await tls.close()
        for coap in self._coap:
            await coap.close(SHUTDOWN_GRACE)
        for task in list(self._plain_tasks):
            task.cancel()
        if self._plain_tasks:
            await asyncio.gather(*self._plain_tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self.backend is not None:
            await self.backend.aclose()
        if self._zn is not None:
            await self._zn.close()
        if self.maf is not None:
            await self.maf.retriever.close()
        if self._registry is not None:
            self._registry.close()
            self._registry = None
        if self._rule_store is not None:
            self._rule_store.close()
            self._rule_store = None
        if self._own_store and self._store is not None:
            self._store.close()
        log.info("gateway stopped: %s", self.stats.as_dict())

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then close."""
        try:
            await stop.wait()
        finally:
            await self.close()

    # -- setup ----------------------------------------------------------------------------
    def _profiles(self, transport: Transport) -> dict[str, tuple[str, TLSProfile]]:
        """The responder profiles the ``tls://`` (or ``dtls://``) listeners need, by framework.

        Both transports share the psk-lookup-table and the certificate configuration.
        """
        cfg = self.config
        scheme = "dtls" if transport is Transport.DTLS else "tls"
        wanted = {s.framework or "*" for s in cfg.listen if s.scheme == scheme}
        out: dict[str, tuple[str, TLSProfile]] = {}
        if not wanted:
            return out
        if cfg.psk is not None and (wanted & {"psk", "*"}):
            from m2msec.frameworks.provisioned import PskResponder

            if self._store is None:
                from m2msec.store import open_store

                self._store = open_store(cfg.psk.store)
                self._own_store = True
            psk_responder = PskResponder(self._store, local_id=str(cfg.cse_id))
            self._psk_revalidate = _psk_row_check(psk_responder.resolve)
            profile = dataclasses.replace(
                psk_responder.profile(transport, tls13=cfg.tls13),
                require_sni=cfg.require_sni,
                resumption_check=self._psk_revalidate,
            )
            out["psk"] = ("provisioned-psk", profile)
        if cfg.certificates is not None and (wanted & {"certificate", "*"}):
            from m2msec.frameworks.certificate import CertificateCredential, CertificateResponder

            c = cfg.certificates
            assert cfg.in_domain is not None  # enforced by the configuration
            try:
                responder = CertificateResponder(
                    CertificateCredential.from_files(c.cert, c.key, c.ca),
                    in_domain=cfg.in_domain,
                    local_id=str(cfg.cse_id),
                    allowed=c.allowed,
                    sp_fqdn=cfg.cse_id.sp_fqdn,
                    require_sni=cfg.require_sni,
                    crl=c.crl,
                )
            except (CertificateError, IdentifierError) as exc:
                raise ConfigurationError(f"certificates: {exc}") from None
            out["certificate"] = (
                "certificate",
                responder.profile(transport=transport, tls13=cfg.tls13),
            )
        if cfg.gba is not None and (wanted & {"gba", "*"}):
            out["gba"] = ("gba", self._gba_profile(cfg.gba, transport))
        if cfg.maf is not None and (wanted & {"maf", "*"}):
            out["maf"] = ("maf", self._maf_profile(cfg.maf, transport))
        if cfg.resumption and transport is Transport.TLS:
            # Devices that come back resume their session once the framework re-validates
            # the binding (m2msec.tls.sessions); DTLS listeners do so in DTLSServer.
            from m2msec.tls.resumption import enable_resumption

            out = {key: (name, enable_resumption(p)) for key, (name, p) in out.items()}
        return out

    def _maf_profile(self, maf: MafRetrievalConfig, transport: Transport) -> TLSProfile:
        """Entity B of the MAF framework (TS-0003 8.2.2.3): KcIds resolved by Key Retrieval.

        One responder (one Kc cache, one retrieval client) serves both transports.
        """
        from m2msec.frameworks.certificate import CertificateCredential
        from m2msec.frameworks.maf import MafKeyRetriever, MafResponder

        cfg = self.config
        if self.maf is not None:
            return self.maf.profile(transport, tls13=cfg.tls13)
        assert cfg.in_domain is not None  # enforced by the configuration
        try:
            retriever = MafKeyRetriever(
                CertificateCredential.from_files(maf.cert, maf.key, maf.ca),
                {fqdn: (host, port) for fqdn, host, port in maf.addresses},
                in_domain=cfg.in_domain,
                local_id=str(cfg.cse_id),
                sp_fqdn=cfg.cse_id.sp_fqdn,
                cache_size=maf.cache_size,
                timeout=maf.timeout,
                tls13=cfg.tls13,
            )
        except (CertificateError, IdentifierError) as exc:
            raise ConfigurationError(f"maf: {exc}") from None
        self.maf = MafResponder(
            retriever, str(cfg.cse_id), sp_fqdn=self._sp_fqdn(), require_sni=cfg.require_sni
        )
        return self.maf.profile(transport, tls13=cfg.tls13)

    def _gba_profile(self, gba: GbaConfig, transport: Transport) -> TLSProfile:
        """The gateway as NAF (seed 000 8.2.3.2): Zn client to the BSF, GBA responder.

        Over DTLS (``dtls://...?framework=gba``) the same NAF answers DTLS-PSK: our extension
        (docs/conformance.md); NAF_Id names the suite the DTLS ServerHello chose.
        """
        from m2msec.frameworks.certificate import CertificateCredential
        from m2msec.frameworks.gba import GbaResponder
        from m2msec.gba.zn import ZnClient

        if self.gba is not None:
            return self.gba.profile(transport)

        try:
            credential = CertificateCredential.from_files(gba.cert, gba.key, gba.ca)
        except CertificateError as exc:
            raise ConfigurationError(f"gba: {exc}") from None
        self._zn = ZnClient(
            credential,
            gba.bsf_host,
            gba.bsf_port,
            gba.bsf_fqdn,
            in_domain=self.config.in_domain,
            timeout=self.config.handshake_timeout,
        )
        self.gba = GbaResponder(
            self._zn,
            gba.naf_fqdn,
            local_id=str(self.config.cse_id),
            require_uicc=gba.require_uicc,
            require_sni=self.config.require_sni,
        )
        return self.gba.profile(transport)

    # -- associations ---------------------------------------------------------------------
    def handshake_failed(self, peer: tuple[Any, ...] | None, reason: str) -> None:
        """Listeners report refused handshakes here (TLS and DTLS alike)."""
        self.stats.handshakes_failed += 1
        if reason == EVICTED:
            self.stats.handshakes_evicted += 1
        elif reason == NO_FIRST_FLIGHT:
            self.stats.first_flight_timeouts += 1

    def _sp_fqdn(self) -> str | None:
        return self.config.cse_id.sp_fqdn or self.config.in_domain

    def admit_association(self, ctx: SecurityContext, peer: Any) -> bool:
        """Count a new association against its credential's cap; False: refuse it (issue 9).

        Refuse-new rather than evict-oldest: evicting would let whoever holds a copy of the
        key knock the device's own associations off at will; refusing keeps what works and
        bounds what one key can hold. Each admitted association is released by
        :meth:`close_association`.
        """
        key = _credential(ctx)
        if self._live_by_credential[key] >= self.config.max_associations_per_credential:
            self.stats.associations_over_credential_cap += 1
            log.warning(
                "association refused: peer=%s key_id=%s holds %d live associations (the cap) "
                "from=%s",
                ctx.peer_id, ctx.key_id, self._live_by_credential[key], _addr(peer),
            )
            return False
        self._live_by_credential[key] += 1
        return True

    def open_association(self, ctx: SecurityContext, peer: Any) -> Association:
        """Record a newly established association (SA record, stats, log); its rule state."""
        assoc = Association.from_context(ctx, self.config.cse_id, self._sp_fqdn())
        registry = self.registry
        credential = credential_of(ctx)
        if assoc.identity is None and registry is not None and credential is not None:
            # A credential's later sessions act as the AE-ID it registered (issue 9).
            recorded = registry.recorded_for(credential)
            if recorded is not None:
                try:
                    assoc.bind_ae(recorded)
                except IdentifierError:
                    log.warning("recorded AE-ID of %s is not usable here", assoc.peer_id)
        elif (
            assoc.identity is not None
            and registry is not None
            and credential is not None
            and ctx.framework in (Framework.MAF, Framework.GBA)
            and registry.owner_of(assoc.identity) is None
        ):
            # A MAF IdA / GBA USS identity is owned by the credential that proved it.
            registry.record(assoc.identity, credential, source=ctx.framework.value)
        self.stats.associations_established += 1
        if ctx.protocol.upper().startswith("DTLS"):
            self.stats.dtls_associations += 1
        self.recent_associations[ctx.sa_id] = ctx
        while len(self.recent_associations) > RECENT_ASSOCIATIONS:
            self.recent_associations.popitem(last=False)
        log.info(
            "association established: peer=%s kind=%s framework=%s key_id=%s sa=%s "
            "cipher=%s/%s from=%s",
            assoc.peer_id,
            ctx.peer_kind.value,
            ctx.framework.value,
            ctx.key_id,
            ctx.sa_id,
            ctx.protocol,
            ctx.cipher_suite,
            _addr(peer),
        )
        return assoc

    def close_association(self, assoc: Association) -> None:
        key = _credential(assoc.context)
        self._live_by_credential[key] -= 1
        if self._live_by_credential[key] <= 0:
            del self._live_by_credential[key]
        self.stats.associations_closed += 1
        log.info("association closed: peer=%s sa=%s", assoc.peer_id, assoc.context.sa_id)

    def _count_bad_request(self, event: BadRequest) -> None:
        self.stats.bad_requests += 1

    def _count_head_timeout(self, event: BadRequest) -> None:
        self.stats.request_head_timeouts += 1

    async def _serve_tls(self, conn: TLSConnection) -> None:
        if not self.admit_association(conn.context, conn.peer_address):
            return  # TLSServer closes it with close_notify
        assoc = self.open_association(conn.context, conn.peer_address)

        async def handle(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            return await self.process(assoc, request)

        try:
            await self._http.serve(conn, handle)
        finally:
            self.close_association(assoc)

    async def _serve_plain(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._plain_tasks.add(task)
        peer = writer.get_extra_info("peername")

        async def handle(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            self.stats.plain_requests_refused += 1
            self.stats.refused_by_rule[Rule.NO_ASSOCIATION.value] += 1
            log.warning(
                "refused %s %s from %s originator=%r rule=%s: plain HTTP",
                request.method,
                _short(request.target),
                _addr(peer),
                request.origin,
                Rule.NO_ASSOCIATION.value,
            )
            return _answer(
                request,
                RSC.SECURITY_ASSOCIATION_REQUIRED,
                "a security association (TLS) is required; this listener is plain HTTP",
            ), False

        try:
            await self._http.serve(PlainStream(reader, writer), handle)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._plain_tasks.discard(task)

    def _revalidate(self, assoc: Association) -> Refuse | None:
        """Re-check a live provisioned-PSK association's psk row, at most once per lookup
        cache lifetime: a removed row ends it (4107, closed); an expiry moved earlier
        becomes the association's lifetime, which rule (a) then enforces."""
        ctx = assoc.context
        check = self._psk_revalidate
        if check is None or ctx.framework is not Framework.PROVISIONED_PSK:
            return None
        now = time.monotonic()
        if now - assoc.revalidated_at < getattr(self._store, "cache_ttl", 2.0):
            return None
        assoc.revalidated_at = now
        try:
            fresh = check(PeerBinding(ctx.peer_id, ctx.peer_kind, ctx.key_id, ctx.valid_until))
        except HandshakeError as exc:
            log.info("association of peer=%s sa=%s ended: %s", ctx.peer_id, ctx.sa_id, exc)
            return Refuse(
                RSC.SECURITY_ASSOCIATION_REQUIRED,
                Rule.EXPIRED,
                "the credential of this security association was removed or has expired",
                close=True,
            )
        except StoreError:
            return None  # an outage does not end live associations; logged by the store
        until = fresh.valid_until
        if until is not None and (ctx.valid_until is None or until < ctx.valid_until):
            assoc.context = dataclasses.replace(ctx, valid_until=until)
        return None

    async def process(
        self, assoc: Association, request: OneM2MRequest
    ) -> tuple[HttpResponse, bool]:
        """The request pipeline of every secured transport: rules (a)-(d), then forwarding.

        Returns the answer and whether the association must be closed after it.
        """
        registry = self.registry
        owner_of = self.owner_of or (None if registry is None else registry.owner_of)
        decision = self._revalidate(assoc) or check_request(
            assoc,
            request,
            self._clock(),
            owner_of,
            self.app_rules(),
            cse_originators=self.config.cse_originators,
        )
        if isinstance(decision, Refuse):
            self.stats.requests_refused += 1
            self.stats.refused_by_rule[decision.rule.value] += 1
            log.warning(
                "refused %s %s from peer=%s originator=%r rule=%s: %s",
                request.method,
                _short(request.target),
                assoc.peer_id,
                request.origin,
                decision.rule.value,
                decision.reason,
            )
            return _answer(request, decision.rsc, decision.reason), decision.close
        response = await self._forward(assoc, request, decision)
        if decision.bind_on_created:
            self._bind(assoc, response)
        return response, False

    def _bind(self, assoc: Association, response: HttpResponse) -> None:
        aei = aei_from_response(response)
        if aei is None:
            if response.rsc == RSC.CREATED:
                log.warning(
                    "AE registration by %s succeeded but the answer carries no readable "
                    "m2m:ae/aei (JSON); the association stays unbound",
                    assoc.peer_id,
                )
            return
        try:
            identity = assoc.bind_ae(aei)
        except IdentifierError as exc:
            log.warning("cannot bind %s to the registered AE-ID: %s", assoc.peer_id, exc)
            return
        self.stats.registrations_bound += 1
        log.info("association %s bound to AE %s", assoc.credential_id, identity)
        registry = self.registry
        credential = credential_of(assoc.context)
        if (
            registry is not None
            and credential is not None
            and not registry.record(identity, credential)
        ):
            log.warning(
                "AE-ID %s registered by %s is recorded for another credential",
                identity,
                assoc.peer_id,
            )

    async def _forward(
        self, assoc: Association, request: OneM2MRequest, decision: Forward
    ) -> HttpResponse:
        assert self.backend is not None
        headers = forwarded_headers(request, assoc, decision.origin)
        if decision.bind_on_created:
            # The aei must be readable in the answer: ask for it uncompressed.
            headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"]
        try:
            resp = await self.backend.request(
                request.method, request.target, headers, request.body
            )
        except BackendTimeout:
            return self._backend_error(request, RSC.REQUEST_TIMEOUT, "did not answer in time")
        except BackendTooLarge:
            return self._backend_error(
                request, RSC.INTERNAL_SERVER_ERROR, "answered more than the gateway relays"
            )
        except BackendRequestError:
            # Header text HTTP/1.1 cannot carry (e.g. from CoAP options): nothing was sent.
            self.stats.bad_requests += 1
            return _answer(request, RSC.BAD_REQUEST, "the request cannot be forwarded as HTTP")
        except BackendError as exc:
            return self._backend_error(
                request, RSC.TARGET_NOT_REACHABLE, f"cannot be reached ({exc})"
            )
        self.stats.requests_forwarded += 1
        return HttpResponse(resp.status, response_headers(resp.headers), resp.body)

    def _backend_error(self, request: OneM2MRequest, rsc: int, what: str) -> HttpResponse:
        self.stats.backend_errors += 1
        target = _short(request.target)
        log.error("backend %s %s (%s %s)", self.config.backend, what, request.method, target)
        return _answer(request, rsc, f"the CSE behind the gateway {what}")


def _answer(request: OneM2MRequest, rsc: int, message: str) -> HttpResponse:
    return error_response(
        rsc, message, request_id=request.request_id, release_version=request.release_version
    )


def _psk_row_check(
    resolve: Callable[[bytes], tuple[bytes, PeerBinding]],
) -> Callable[[PeerBinding], PeerBinding]:
    """Re-validation of a provisioned-PSK session before it is resumed (TS-0003 8.2.2.1).

    The psk-lookup-table row named by the binding's KpsaId must still exist, be unexpired
    and bind the same entity. Looked up by the binding's key ID rather than by the psk
    identity the session cache recorded, which a resumed handshake does not carry forward.
    """

    def check(binding: PeerBinding) -> PeerBinding:
        if not binding.key_id:
            raise HandshakeError(f"session of {binding.peer_id} not resumed: it has no KpsaId")
        _, fresh = resolve(binding.key_id.encode())  # HandshakeError: removed or expired
        if (fresh.peer_id, fresh.kind) != (binding.peer_id, binding.kind):
            raise HandshakeError(
                f"session of {binding.peer_id} not resumed: its KpsaId now binds {fresh.peer_id}"
            )
        return fresh

    return check


_Profiles = dict[Transport, dict[str, tuple[str, TLSProfile]]]


def _pick(
    profiles: dict[str, tuple[str, TLSProfile]], spec: ListenerSpec
) -> tuple[str, TLSProfile]:
    return profiles[spec.framework or _only(profiles)]


def _only(profiles: dict[str, tuple[str, TLSProfile]]) -> str:
    if len(profiles) != 1:  # the configuration prevents this
        raise ConfigurationError("name the framework of each tls:// listener")
    return next(iter(profiles))


def _addr(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _quietly(aw: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await aw


def _credential(ctx: SecurityContext) -> str:
    """What the per-credential cap counts: the framework's key id, else the peer identity."""
    return f"{ctx.framework.value}:{ctx.key_id or ctx.peer_id}"
