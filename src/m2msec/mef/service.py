"""The MEF's decisions, without sockets (TS-0003 8.3.2.1, seed 004; docs/mef.md).

:class:`MefService` answers the two requests the MEF's listeners (a later
``servers/mef.py``) hand it, as :class:`~m2msec.gba.service.BsfService` does for the BSF:

- :meth:`MefService.enrol`, on the session of a bootstrap handshake (TLS-PSK with
  KpmID/Kpm, 8.3.2.1, or mutual TLS, 8.3.2.2), given who authenticated and the 48 octets
  that session exported with ``EXPORTER-oneM2M-Bootstrap``: Enrolment Key Generation
  (:mod:`m2msec.mef.keys`), the enrolment committed with its audit record, and only then
  the Enrolment Exchange answer (KeID, Enrolment Target, Enrolee-ID, Enrolment Expiry).
  :meth:`MefService.plan_enrolment` is the pure first half (the record and the answer), for
  a server that groups commits; given the Enrolee its handshake's PSK lookup read
  (:meth:`MefService.kpm_for` keeps it, :mod:`m2msec.mef.reads`), it reads nothing, and
  the commit (:meth:`MefService.commit_enrolments`) re-checks that Enrolee in its
  transaction (4103 if it was removed or changed).
- :meth:`MefService.answer_target`, a request of an Enrolment Target authenticated by
  mutual TLS: the seed's RETRIEVE ``/fetchCredentials/<KeID>/<SUID>`` (8.3.2.1 step f)
  or V3.18's MEF Key Retrieval ``GET /mef/keys/<RelativeKeyID>`` (8.3.5.2.8, mapped as
  the MAF's 8.8.2.8; docs/readings.md A-32), one handler for both: Km (10.3.2) or Kpsa
  (10.3.3) derived for that target, the Enrolee-ID, and the lifetime, which ends with
  Ke's (10.7, docs/readings.md A-28). :meth:`MefService.fetch_credentials` is its alias.

Refusals (docs/mef.md section 4): 4000 a malformed request, target or SUID; 4005 another
method; 4106 an ``X-M2M-Origin`` that is not the authenticated target; 4103 a requester
that is not an allowed Enrolment Target, a SUID that is not the usage of the enrolment,
an Enrolee not configured or not for the target it asks for; 4004 an unknown path, or a
KeID that is unknown, expired, of another MEF or for another target — one answer, so a
target learns nothing of other enrolments; 4105 a second enrolment on one bootstrap
session or a KeID already stored; 5000 the store failed. Every decision leaves an audit
record (:class:`~m2msec.mef.records.MefAudit`); no answer, log line or record holds a key.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest, http_status_for
from m2msec.errors import DuplicateCredentialError, IdentifierError, StoreError
from m2msec.ids import derivation_identity
from m2msec.keyids import KeId
from m2msec.maf.protocol import MafRefusal
from m2msec.mef.keys import EnrolmentKey, derive_for_target
from m2msec.mef.reads import BootstrapReads, ChangedDuringBootstrap
from m2msec.mef.records import (
    Bootstrap,
    Enrolee,
    Enrolment,
    EnrolmentTarget,
    MefAudit,
    MefEvent,
)
from m2msec.mef.store import MefStore
from m2msec.mef.wire import (
    ENROLMENT_PATH,
    FETCH_PREFIX,
    KEY_PREFIX,
    CredentialBody,
    EnrolmentBody,
    EnrolmentRequestBody,
    FetchFailure,
    MefKeyBody,
    TargetRetrieval,
    WireError,
    parse_fetch_path,
    parse_key_path,
)

__all__ = [
    "EnroleeIdentity",
    "MefPolicy",
    "MefRefusal",
    "MefService",
    "PlannedEnrolment",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MefPolicy:
    """What the answers depend on: the MEF-FQDN, the domain of every KeID (10.3.4)."""

    fqdn: str


@dataclass(frozen=True, slots=True)
class EnroleeIdentity:
    """Who ran the bootstrap handshake: its KpmID (PSK) or the canonical CSE-ID/AE-ID its
    certificate names (certificates, :func:`m2msec.ids.derivation_identity`)."""

    bootstrap: Bootstrap
    bootstrap_id: str

    def __str__(self) -> str:
        return f"{self.bootstrap.value}:{self.bootstrap_id}"


@dataclass(frozen=True, slots=True)
class PlannedEnrolment:
    """An enrolment to commit, its audit record, and the answer to send after the commit."""

    enrolment: Enrolment
    enrolee: Enrolee
    audit: MefAudit
    answer: EnrolmentBody


class MefRefusal(MafRefusal):
    """A MEF request refused: ``rsc``, a ``message`` safe to answer, ``audit`` for the log
    (the MAF's refusal, so one server loop can answer both)."""


#: How long a handshake's read of its Enrolee is kept without a server's own window (its
#: handshake deadline and a margin).
_READ_WINDOW = 60.0
_NO_SUCH_ENROLMENT = "no such enrolment for this Enrolment Target"
_KE_ID_IN_USE = "this KeID is in use: run a new bootstrap handshake"
_CHANGED = "this Enrolee's configuration changed during the bootstrap: run a new one"


def _answer(rsc: int, body: Mapping[str, Any] | None, request: OneM2MRequest) -> HttpResponse:
    """HTTP status for ``rsc``, ``X-M2M-RSC``, echoed ``X-M2M-RI``/``RVI``, a JSON body."""
    headers = [("X-M2M-RSC", str(int(rsc)))]
    if request.request_id is not None:
        headers.append(("X-M2M-RI", request.request_id))
    if request.release_version is not None:
        headers.append(("X-M2M-RVI", request.release_version))
    data = b""
    if body is not None:
        headers.append(("Content-Type", "application/json"))
        data = json.dumps(body, separators=(",", ":")).encode()
    return HttpResponse(http_status_for(rsc), tuple(headers), data)


def _json_body(request: OneM2MRequest) -> Mapping[str, Any]:
    if not request.body:
        return {}
    try:
        value = json.loads(request.body)
    except ValueError:
        raise MefRefusal(RSC.BAD_REQUEST, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise MefRefusal(RSC.BAD_REQUEST, "the body is not a JSON object")
    return value


def _check_common(request: OneM2MRequest, method: str) -> None:
    if request.method != method:
        raise MefRefusal(RSC.OPERATION_NOT_ALLOWED, f"{request.target} takes {method} only")
    if not request.request_id:
        raise MefRefusal(RSC.BAD_REQUEST, "X-M2M-RI (Request Identifier) is missing")


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a target's request names: the KeID, and the SUID (fetchCredentials only)."""

    ke_id: KeId
    suid: int | None


@dataclass(frozen=True, slots=True)
class _Issued:
    """A credential to hand out: its enrolment, Km or Kpsa, and the audit record."""

    enrolment: Enrolment
    credential: bytes = field(repr=False)
    audit: MefAudit


def _retrieval_of(target: str) -> TargetRetrieval | None:
    """The target-interface procedure a request path belongs to, or None (4004)."""
    if target.startswith(FETCH_PREFIX):
        return TargetRetrieval.FETCH_CREDENTIALS
    if target.startswith(KEY_PREFIX):
        return TargetRetrieval.KEY_RETRIEVAL
    return None


def _failure(retrieval: TargetRetrieval | None, message: str) -> dict[str, Any]:
    """A refusal's body: table 8.3.2.1-6 for fetchCredentials, ``{"m2m:dbg": TEXT}`` for
    MEF Key Retrieval as for the MAF's (and for a path that is neither)."""
    if retrieval is TargetRetrieval.FETCH_CREDENTIALS:
        return FetchFailure(message).to_json()
    return {"m2m:dbg": message}


class MefService:
    """The MEF's decisions (module docstring). ``clock`` gives the current time (tests);
    ``stats`` counts decisions by name (no identities, no keys), shared with the listeners."""

    def __init__(
        self,
        policy: MefPolicy,
        store: MefStore,
        *,
        stats: Counter[str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        reads: BootstrapReads | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._clock = clock
        #: The Enrolee each PSK bootstrap handshake read (:meth:`kpm_for`).
        self.reads = reads if reads is not None else BootstrapReads(_READ_WINDOW)

    # -- the bootstrap handshake ------------------------------------------------------------
    def kpm_for(self, kpm_id: str) -> bytes | None:
        """The Kpm of a KpmID (the psk of 8.3.2.1's handshake), or None: the handshake
        then fails. A store failure is an unknown KpmID here, and is logged. The Enrolee
        read is kept for the session's Enrolment Exchange (:attr:`reads`)."""
        try:
            enrolee = self.store.get_enrolee(Bootstrap.PSK, kpm_id)
        except (StoreError, IdentifierError) as exc:
            self.stats["store_errors"] += 1
            log.error("MEF store: cannot read an Enrolee: %s", exc)
            return None
        if enrolee is None:
            return None
        self.reads.keep(kpm_id, enrolee)
        return enrolee.kpm

    def bootstrap_enrolee(self, who: EnroleeIdentity) -> Enrolee | MefRefusal | None:
        """The Enrolee as the handshake of ``who`` read it (:attr:`reads`), for a session
        to plan with; None when not kept (a certificate bootstrap: the plan reads the
        store); a refusal when it changed during that handshake. No I/O."""
        if who.bootstrap is not Bootstrap.PSK:
            return None
        try:
            return self.reads.claim(who.bootstrap_id)
        except ChangedDuringBootstrap:
            return MefRefusal(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, _CHANGED)

    # -- Enrolment Exchange -----------------------------------------------------------------
    def plan_enrolment(
        self,
        who: EnroleeIdentity,
        exported: bytes,
        asked: EnrolmentTarget | None = None,
        enrolee: Enrolee | None = None,
    ) -> PlannedEnrolment:
        """Enrolment Key Generation for ``who`` from the session's 48 exported octets;
        ``asked`` is the target the Enrolee names (None: the configured one); ``enrolee``
        the configuration the handshake read (None: read it from the store, the only I/O
        here). Writes nothing. Raises :class:`MefRefusal`."""
        if enrolee is None:
            try:
                enrolee = self.store.get_enrolee(who.bootstrap, who.bootstrap_id)
            except (StoreError, IdentifierError) as exc:
                raise self._store_failed("read its store", exc) from None
        if enrolee is None:
            raise MefRefusal(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, "this Enrolee is not configured")
        if asked is not None and asked != enrolee.target:
            raise MefRefusal(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                "this Enrolee is not configured for that Enrolment Target",
                audit=f"asked for {asked}, configured for {enrolee.target}",
            )
        try:
            key = EnrolmentKey.from_export(exported, self.policy.fqdn)
        except ValueError as exc:  # not 48 octets: a fault of the listener, not the Enrolee
            raise MefRefusal(
                RSC.INTERNAL_SERVER_ERROR, "no Enrolment Key from this session", audit=str(exc)
            ) from None
        now = self._clock()
        # Whole seconds: the expiry answered is the one stored.
        expires = (now + enrolee.lifetime).replace(microsecond=0)
        enrolment = Enrolment(key.ke_id, key.ke, enrolee.enrolee_id, enrolee.target, expires, now)
        audit = MefAudit.granted(MefEvent.ENROLLED, enrolment, str(who), int(RSC.CREATED))
        answer = EnrolmentBody(key.ke_id, enrolee.target, enrolee.enrolee_id, expires)
        return PlannedEnrolment(enrolment, enrolee, audit, answer)

    def enrol(
        self, request: OneM2MRequest, who: EnroleeIdentity, exported: bytes | None
    ) -> HttpResponse:
        """Answer ``POST /mef/enrolment`` on a bootstrap session. ``exported`` is None when
        this session has enrolled already (one Ke per handshake: 4105). The three steps
        below, for a caller that commits alone; the MEF server groups the commits of
        concurrent sessions (:mod:`m2msec.service.group_commit`)."""
        planned = self.prepare_enrolment(request, who, exported)
        if isinstance(planned, HttpResponse):
            return planned
        (refusal,) = self.commit_enrolments([planned])
        return self.answer_enrolment(request, who, planned, refusal)

    def prepare_enrolment(
        self, request: OneM2MRequest, who: EnroleeIdentity, exported: bytes | None
    ) -> PlannedEnrolment | HttpResponse:
        """Check the request and plan its enrolment (:meth:`plan_enrolment`), or the
        refusal's answer. Reads the store; writes only a refusal's audit record."""
        try:
            return self.plan_request(request, who, exported)
        except MefRefusal as refusal:
            return self.refuse_enrolment(request, who, refusal)

    def plan_request(
        self,
        request: OneM2MRequest,
        who: EnroleeIdentity,
        exported: bytes | None,
        enrolee: Enrolee | MefRefusal | None = None,
    ) -> PlannedEnrolment:
        """:meth:`prepare_enrolment` without its refusal's answer: raises
        :class:`MefRefusal`. Given the ``enrolee`` its handshake read
        (:meth:`bootstrap_enrolee`), no I/O at all: a server may run it on its loop."""
        if request.target != ENROLMENT_PATH:
            raise MefRefusal(RSC.NOT_FOUND, f"no resource {request.target[:80]!r}")
        _check_common(request, "POST")
        try:
            asked = EnrolmentRequestBody.parse(_json_body(request) or {"mefEnrolReq": {}})
        except WireError as exc:
            raise MefRefusal(RSC.BAD_REQUEST, str(exc)) from None
        if exported is None:
            raise MefRefusal(
                RSC.CONFLICT,
                "one enrolment per bootstrap handshake: run a new one",
            )
        if isinstance(enrolee, MefRefusal):
            raise enrolee
        return self.plan_enrolment(who, exported, asked.target, enrolee)

    def commit_enrolments(self, planned: Sequence[PlannedEnrolment]) -> list[MefRefusal | None]:
        """Store planned enrolments with their audit records in one durable transaction;
        per enrolment, None or why it was not stored. An Enrolee removed or changed since
        its plan read it stores nothing (4103, :meth:`MefStore.enrol`). A KeID already
        stored (a repeated export, 4105) fails only its own enrolment: the batch is then
        stored one by one."""
        try:
            stored = self.store.enrol([(p.enrolment, p.enrolee, p.audit) for p in planned])
            changed = MefRefusal(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, _CHANGED)
            return [None if ok else changed for ok in stored]
        except DuplicateCredentialError:
            if len(planned) == 1:
                return [MefRefusal(RSC.CONFLICT, _KE_ID_IN_USE)]
            return [self.commit_enrolments([p])[0] for p in planned]
        except StoreError as exc:
            refusal = self._store_failed("store the enrolment", exc)
            return [refusal] * len(planned)

    def answer_enrolment(
        self,
        request: OneM2MRequest,
        who: EnroleeIdentity,
        planned: PlannedEnrolment,
        refusal: MefRefusal | None,
    ) -> HttpResponse:
        """The answer to an enrolment once its commit is done: 2001 with KeID, target and
        expiry, or the refusal (recorded in the audit table, which writes the store)."""
        if refusal is not None:
            return self.refuse_enrolment(request, who, refusal)
        self.stats["enrolments"] += 1
        # DEBUG: every enrolment has its audit record (``m2msec mef audit``); a log line
        # each is a cost per enrolment (docs/performance.md) and a flood at provisioning.
        log.debug("enrolled %s as %s for %s", who, planned.answer.ke_id, planned.enrolee.target)
        return _answer(RSC.CREATED, planned.answer.to_json(), request)

    def refuse_enrolment(
        self, request: OneM2MRequest, who: EnroleeIdentity, refusal: MefRefusal
    ) -> HttpResponse:
        """The answer to a refused Enrolment Exchange, after its audit record (a store
        write)."""
        self.stats["enrolments_refused"] += 1
        self._refused(MefEvent.ENROLMENT_REFUSED, str(who), refusal)
        return _answer(refusal.rsc, {"m2m:dbg": refusal.message}, request)

    # -- the target interface: fetchCredentials and MEF Key Retrieval ----------------------
    def answer_target(self, request: OneM2MRequest, requester: EnrolmentTarget) -> HttpResponse:
        """Answer an Enrolment Target's request on the target listener, ``requester`` being
        the identity its mutual TLS authenticated: RETRIEVE
        ``/fetchCredentials/<KeID>/<SUID>`` (8.3.2.1 step f, tables 8.3.2.1-5/-6) or
        ``GET /mef/keys/<RelativeKeyID>`` (MEF Key Retrieval, 8.3.5.2.8, tables
        8.3.5.2.8-1/-2). One handler: the same checks, derivation, lifetime and audit
        (:meth:`_issue`); only the path read and the answer written differ."""
        retrieval = _retrieval_of(request.target)
        try:
            asked = self._asked(request, retrieval)
            issued = self._issue(request, requester, asked)
        except MefRefusal as refusal:
            self.stats["fetch_refused"] += 1
            event = MefEvent.FETCH_REFUSED
            if retrieval is TargetRetrieval.KEY_RETRIEVAL:
                self.stats["key_retrievals_refused"] += 1
                event = MefEvent.KEY_RETRIEVAL_REFUSED
            self._refused(event, str(requester), refusal, request.target)
            return _answer(refusal.rsc, _failure(retrieval, refusal.message), request)
        try:
            self.store.commit(audits=[issued.audit])
        except StoreError as exc:
            # No key leaves the MEF without its audit record.
            self.stats["store_errors"] += 1
            self.stats["fetch_refused"] += 1
            if retrieval is TargetRetrieval.KEY_RETRIEVAL:
                self.stats["key_retrievals_refused"] += 1
            log.error("MEF store: cannot record a fetch: %s", exc)
            failure = _failure(retrieval, "the MEF cannot record the request")
            return _answer(RSC.INTERNAL_SERVER_ERROR, failure, request)
        self.stats["fetched"] += 1
        enrolment = issued.enrolment
        if retrieval is TargetRetrieval.KEY_RETRIEVAL:
            self.stats["key_retrievals"] += 1
            body: Mapping[str, Any] = MefKeyBody(
                asked.ke_id.relative_bytes,
                issued.credential,
                enrolment.expires_at,
                enrolment.enrolee_id,
                self.policy.fqdn,
                enrolment.target.suid,
                entity_id=enrolment.enrolee_id,
            ).to_json()
        else:
            body = CredentialBody(
                asked.ke_id,
                enrolment.target.suid,
                issued.credential,
                enrolment.enrolee_id,
                enrolment.expires_at,
            ).to_json()
        log.info("%s got its %s for %s (%s)", requester, requester.key_name, asked.ke_id, retrieval)
        return _answer(RSC.OK, body, request)

    def fetch_credentials(self, request: OneM2MRequest, requester: EnrolmentTarget) -> HttpResponse:
        """RETRIEVE ``/fetchCredentials/<KeID>/<SUID>``: :meth:`answer_target`, which also
        answers MEF Key Retrieval (kept for the callers of the seed's procedure)."""
        return self.answer_target(request, requester)

    def _asked(self, request: OneM2MRequest, retrieval: TargetRetrieval | None) -> _Asked:
        """The KeID (and, for fetchCredentials, the SUID) a request names; refusals raise."""
        if retrieval is None:
            raise MefRefusal(RSC.NOT_FOUND, f"no resource {request.target[:80]!r}")
        _check_common(request, "GET")
        try:
            if retrieval is TargetRetrieval.KEY_RETRIEVAL:
                return _Asked(parse_key_path(request.target, self.policy.fqdn), None)
            fetch = parse_fetch_path(request.target)
        except WireError as exc:
            raise MefRefusal(RSC.BAD_REQUEST, str(exc)) from None
        return _Asked(fetch.ke_id, fetch.suid)

    def _issue(self, request: OneM2MRequest, requester: EnrolmentTarget, asked: _Asked) -> _Issued:
        """The checks of docs/mef.md section 3, then the credential derived for the
        requester (Km by 10.3.2 for a MAF, Kpsa by 10.3.3 for an Enrolee B) and the audit
        record of handing it out. Raises :class:`MefRefusal`."""
        if request.origin is not None and not self._names(request.origin, requester):
            raise MefRefusal(
                RSC.ORIGINATOR_NOT_AUTHENTICATED,
                "X-M2M-Origin is not the identity this connection authenticated",
                audit=f"X-M2M-Origin {request.origin[:80]!r}",
            )
        try:
            allowed = self.store.is_allowed_target(requester)
            enrolment = None
            if allowed and asked.ke_id.fqdn.lower() == self.policy.fqdn.lower():
                enrolment = self.store.get_enrolment(asked.ke_id)
        except StoreError as exc:
            raise self._store_failed("read its store", exc) from None
        if not allowed:
            raise MefRefusal(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, "not an Enrolment Target of this MEF")
        now = self._clock()
        if enrolment is None or enrolment.target != requester or enrolment.expired(now):
            if enrolment is None:
                why = "unknown KeID"
            elif enrolment.expired(now):
                why = "expired"
            else:
                why = f"enrolled for {enrolment.target}"
            raise MefRefusal(RSC.NOT_FOUND, _NO_SUCH_ENROLMENT, audit=f"{asked.ke_id}: {why}")
        # MEF Key Retrieval names no SUID (table 8.3.5.2.8-1): the enrolment's target is the
        # requester, whose usage it is.
        if asked.suid is not None and asked.suid != requester.suid:
            raise MefRefusal(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                f"SUID {asked.suid} is not the usage of this enrolment ({requester.suid})",
            )
        target = enrolment.target  # the requester, by the check above
        credential = derive_for_target(
            enrolment.ke, target.target_id, enrolee_b=target.is_enrolee_b
        )
        event = MefEvent.KEY_RETRIEVED if asked.suid is None else MefEvent.FETCHED
        audit = MefAudit.granted(event, enrolment, str(requester), int(RSC.OK), now)
        return _Issued(enrolment, credential, audit)

    @staticmethod
    def _names(origin: str, requester: EnrolmentTarget) -> bool:
        """Whether ``X-M2M-Origin`` names the authenticated target (canonical forms)."""
        try:
            return derivation_identity(origin, enrolee_b=requester.is_enrolee_b) == (
                requester.canonical
            )
        except IdentifierError:
            return False

    def _store_failed(self, what: str, exc: Exception) -> MefRefusal:
        """5000: the store failed; the answer says what could not be done, the log why."""
        self.stats["store_errors"] += 1
        return MefRefusal(RSC.INTERNAL_SERVER_ERROR, f"the MEF cannot {what}", audit=str(exc))

    # -- audit of refusals ------------------------------------------------------------------
    def _refused(
        self, event: MefEvent, requester: str, refusal: MefRefusal, target: str | None = None
    ) -> None:
        log.warning("MEF refused %s (%d): %s", requester, refusal.rsc, refusal.audit)
        record = MefAudit(
            event, self._clock(), requester, target=target, rsc=refusal.rsc, reason=refusal.audit
        )
        try:
            self.store.commit(audits=[record])
        except StoreError as exc:
            self.stats["store_errors"] += 1
            log.error("MEF store: cannot record a refusal: %s", exc)
