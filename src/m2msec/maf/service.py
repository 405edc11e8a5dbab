"""The MAF's procedures, without sockets (TS-0003 8.8.2.3-8.8.2.10).

:class:`MafService` decides each request the listeners of :mod:`m2msec.servers.maf` hand
it, from the store's reads, the :class:`~m2msec.maf.protocol.MafPolicy` and a clock:

* ``handle_client`` for a Source MAF Client (Entity A) authenticated by the MAF Handshake
  (8.8.2.2; :class:`ClientSession`): Client Registration, Configuration Retrieval,
  Registration Update, De-Registration (8.8.2.3-8.8.2.6), Key Registration, Key
  Registration Update and Key De-Registration (8.8.2.7, 8.8.2.9, 8.8.2.10), through a
  dispatch table keyed by :class:`~m2msec.maf.requests.Procedure`;
* ``handle_retrieval`` for Entity B on the certificate-authenticated retrieval channel
  (8.8.2.8; :class:`Retriever`).

No asyncio and no writes here: a procedure that changes the store (or must audit before it
answers) returns a :class:`Write`, "commit this op and these audit records, then call
``then`` with the op's outcome", and the server runs it through its journal
(:mod:`m2msec.servers.maf_journal`) before it answers: a 2001 CREATED is never sent for a
key that is not committed. Everything else is answered at once with an ``HttpResponse``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest
from m2msec.crypto.keyexport import EXPORT_LENGTH, LABEL_CONNECTION
from m2msec.errors import IdentifierError, M2MSecError, StoreError
from m2msec.maf import requests as rq
from m2msec.maf import rules
from m2msec.maf.audit import AuditEvent, audit_record
from m2msec.maf.protocol import (
    CONFLICT,
    MafPolicy,
    MafReader,
    MafRefusal,
    canonical_entity,
    format_m2m_time,
    maf_response,
    refusal_response,
)
from m2msec.maf.store import MafWriter, MasterCredential, NewKey

__all__ = [
    "AuditFor",
    "ClientSession",
    "MafService",
    "MafStats",
    "Outcome",
    "Retriever",
    "ServiceReader",
    "Step",
    "Write",
]

log = logging.getLogger(__name__)

Outcome = Any  # a write op's result, or the exception it raised
AuditFor = Callable[[Outcome], Sequence[dict[str, str | int]]]
#: How often a self-generated key's random RelativeKeyID is drawn before giving up.
_KEY_ID_ATTEMPTS = 3
_INTERNAL = "MAF internal error"


@dataclass(slots=True)
class MafStats:
    """Counters since start (no identities, no keys)."""

    client_associations: int = 0
    retrieval_associations: int = 0
    handshakes_failed: int = 0
    requests: int = 0
    keys_issued: int = 0
    keys_retrieved: int = 0
    keys_updated: int = 0
    keys_deregistered: int = 0
    client_registrations: int = 0
    requests_refused: int = 0
    bad_requests: int = 0
    internal_errors: int = 0
    store_errors: int = 0
    refused_by_rsc: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name != "refused_by_rsc"
        }
        out["refused_by_rsc"] = {str(k): v for k, v in sorted(self.refused_by_rsc.items())}
        return out


class ServiceReader(MafReader, Protocol):
    """The store reads of the procedures plus the Configuration Retrieval (8.8.2.4) one
    (:class:`m2msec.maf.store.MafStore`)."""

    def get_client_config(self, km_id: str) -> dict[str, Any] | None: ...


@dataclass(slots=True, eq=False)
class ClientSession:
    """One MAF Handshake session of a Source MAF Client (8.8.2.2): its Master Credential,
    the session's SA id (for the audit), and the session's RFC 5705 exporter (10.3.1),
    which gives at most one exported Kc per session."""

    km: MasterCredential
    sa: str
    export: Callable[[bytes, int], bytes]
    exported_used: bool = False


@dataclass(frozen=True, slots=True)
class Retriever:
    """Entity B on the retrieval channel (8.8.2.8): ``entity_id`` is the AE-ID or CSE-ID
    the certificate framework bound (None for another kind of peer), ``peer_id`` and
    ``kind`` what it bound in any case, ``sa`` the session's SA id."""

    entity_id: str | None
    peer_id: str
    kind: str
    sa: str


@dataclass(frozen=True, slots=True)
class Write:
    """Commit ``op`` (None: audit records only) and ``audit(outcome)`` in one journal
    transaction, then answer with ``then(outcome)``. ``atomic``: the op is one SQL
    statement, no savepoint needed. A failed commit raises StoreError to the server;
    for an audit-only write the server passes the StoreError to ``then`` instead."""

    op: Callable[[MafWriter], Any] | None
    audit: AuditFor
    then: Callable[[Outcome], Step]
    atomic: bool = False


Step = HttpResponse | Write
_Handler = Callable[[ClientSession, str | None, OneM2MRequest], Step]


def _result(outcome: Outcome) -> Any:
    """A write's outcome as the procedure reads it: refusals raised, other failures
    mapped to 4000 (bad values) or 5000."""
    if isinstance(outcome, MafRefusal):
        raise outcome
    if isinstance(outcome, M2MSecError | ValueError):
        raise MafRefusal(RSC.BAD_REQUEST, str(outcome))
    if isinstance(outcome, BaseException):
        log.error("MAF write failed: %r", outcome)
        raise MafRefusal(RSC.INTERNAL_SERVER_ERROR, _INTERNAL)
    return outcome


def _write(
    op: Callable[[MafWriter], Any],
    audit: AuditFor,
    then: Callable[[Any], Step],
    *,
    atomic: bool = False,
) -> Write:
    return Write(op, audit, lambda outcome: then(_result(outcome)), atomic)


def _succeeded(outcome: Outcome) -> bool:
    return not isinstance(outcome, BaseException)


def _audit_if(
    ok: Callable[[Outcome], bool], record: Callable[[Any], dict[str, str | int]]
) -> AuditFor:
    """The audit of a write: one record built from its outcome when ``ok(outcome)``, none
    otherwise (a refused or failed write is answered, not audited as done)."""
    return lambda outcome: [record(outcome)] if ok(outcome) else []


def _audited(record: dict[str, str | int], then: Callable[[], Step]) -> Write:
    """Write one audit record (durably) before answering with ``then()``."""

    def after(outcome: Outcome) -> Step:
        if isinstance(outcome, StoreError):
            raise MafRefusal(RSC.INTERNAL_SERVER_ERROR, _INTERNAL)
        return then()

    return Write(None, lambda _o: [record], after)


def _raise(refusal: MafRefusal) -> Step:
    raise refusal


class MafService:
    """The MAF procedures over one store (module documentation).

    ``clock`` gives "now"; ``token`` draws RelativeKeyIDs of self-generated keys and
    mafClientRegIDs (16 octets). ``stats`` is shared with the server, which counts the
    associations and handshakes. ``clients`` finds a MAF Client by canonical KmId for Key
    Retrieval's answer (default: the store; the server adds clients enrolled at a MEF).
    """

    def __init__(
        self,
        store: ServiceReader,
        policy: MafPolicy,
        clock: Callable[[], datetime],
        *,
        stats: MafStats | None = None,
        token: Callable[[int], bytes] = secrets.token_bytes,
        clients: Callable[[str], MasterCredential | None] | None = None,
    ) -> None:
        self.store = store
        self._clients = clients or store.get_client
        self.policy = policy
        self.stats = stats if stats is not None else MafStats()
        self._clock = clock
        self._token = token
        self._client: dict[rq.Procedure, _Handler] = {
            rq.Procedure.CLIENT_REGISTRATION: self._client_registration,
            rq.Procedure.CONFIG_RETRIEVAL: self._config_retrieval,
            rq.Procedure.REGISTRATION_UPDATE: self._registration_update,
            rq.Procedure.DEREGISTRATION: self._deregistration,
            rq.Procedure.KEY_REGISTRATION: self._key_registration,
            rq.Procedure.KEY_UPDATE: self._key_update,
            rq.Procedure.KEY_DEREGISTRATION: self._key_deregistration,
        }

    # -- refusals -------------------------------------------------------------------------
    def refused(self, refusal: MafRefusal, request: OneM2MRequest, who: str) -> HttpResponse:
        """Count and log a refusal (never the key), and answer it."""
        self.stats.requests_refused += 1
        self.stats.refused_by_rsc[refusal.rsc] += 1
        log.info(
            "refused %s %s from %s: %d %s",
            request.method,
            request.target[:120],
            who,
            refusal.rsc,
            refusal.audit,
        )
        return refusal_response(refusal, request)

    def _answering(self, decide: Callable[[], Step], request: OneM2MRequest, who: str) -> Step:
        """``decide()``, with any refusal it or a later step raises answered."""
        try:
            step = decide()
        except MafRefusal as refusal:
            return self.refused(refusal, request, who)
        if isinstance(step, HttpResponse):
            return step
        then = step.then
        return Write(
            step.op,
            step.audit,
            lambda outcome: self._answering(lambda: then(outcome), request, who),
            step.atomic,
        )

    # -- client listener ------------------------------------------------------------------
    def handle_client(self, s: ClientSession, request: OneM2MRequest) -> Step:
        """A request of a Source MAF Client over its MAF Handshake session."""
        return self._answering(lambda: self._dispatch(s, request), request, s.km.km_id)

    def _dispatch(self, s: ClientSession, request: OneM2MRequest) -> Step:
        rq.request_id(request)
        r = rq.route(request.method, request.target)
        handler = self._client.get(r.procedure)
        if handler is None:  # Key Retrieval
            raise MafRefusal(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                "Key Retrieval is served on the retrieval listener (mutual TLS with "
                "certificates), not over a MAF Handshake",
            )
        return handler(s, r.param, request)

    def _key_registration(self, s: ClientSession, _: str | None, request: OneM2MRequest) -> Step:
        """8.8.2.7."""
        km = s.km
        try:
            req = rq.parse_key_registration(request, self.policy)
            exported: bytes | None = None
            if req.key_value is None and not s.exported_used:
                exported = s.export(LABEL_CONNECTION, EXPORT_LENGTH)
            now = self._clock()
            plan = rules.plan_key_registration(
                self.store,
                self.policy,
                km,
                req,
                now,
                exported=exported,
                random_id=self._token(16),
            )
        except MafRefusal as refusal:
            record = audit_record(
                AuditEvent.KEY_REFUSED,
                kmId=km.km_id,
                rsc=refusal.rsc,
                reason=refusal.audit,
                sa=s.sa,
            )
            return _audited(record, functools.partial(_raise, refusal))
        return self._insert_key(s, request, req, plan, now, exported, _KEY_ID_ATTEMPTS)

    def _insert_key(
        self,
        s: ClientSession,
        request: OneM2MRequest,
        req: rq.KeyRegRequest,
        plan: NewKey,
        now: datetime,
        exported: bytes | None,
        attempts: int,
    ) -> Write:
        km = s.km
        source = "keyValue" if req.key_value is not None else "exporter"
        kc_id = str(self.policy.kc_id(plan.relative_hex))
        target = ",".join(plan.target_ids)

        def audit(outcome: Outcome) -> list[dict[str, str | int]]:
            if outcome is True:
                return [
                    audit_record(
                        AuditEvent.KEY_ISSUED,
                        kcId=kc_id,
                        kmId=km.km_id,
                        target=target,
                        expires=format_m2m_time(plan.expires_at),
                        suid=plan.suid,
                        adminFQDN=plan.admin_fqdn,
                        regId=plan.reg_id,
                        source=source,
                        sa=s.sa,
                    )
                ]
            why = "RelativeKeyID already in use" if outcome is False else str(outcome)
            return [
                audit_record(
                    AuditEvent.KEY_REFUSED,
                    kcId=kc_id,
                    kmId=km.km_id,
                    target=target,
                    rsc=CONFLICT if outcome is False else RSC.INTERNAL_SERVER_ERROR,
                    reason=why,
                    sa=s.sa,
                )
            ]

        def then(stored: bool) -> Step:
            if stored:
                if exported is not None:
                    s.exported_used = True
                self.stats.keys_issued += 1
                return maf_response(RSC.CREATED, rules.key_registration_body(plan, km), request)
            if req.key_value is None:
                raise MafRefusal(
                    CONFLICT,
                    f"RelativeKeyID {plan.relative_hex} is already in use",
                    audit="exported RelativeKeyID already in use",
                )
            # A random RelativeKeyID collided (not expected in practice): draw another.
            again = rules.plan_key_registration(
                self.store, self.policy, km, req, now, exported=None, random_id=self._token(16)
            )
            if attempts <= 1:
                raise MafRefusal(RSC.INTERNAL_SERVER_ERROR, "no free RelativeKeyID")
            return self._insert_key(s, request, req, again, now, exported, attempts - 1)

        return _write(lambda w: w.insert_key(plan, now=now), audit, then, atomic=True)

    def _key_update(self, s: ClientSession, rel_id: str | None, request: OneM2MRequest) -> Step:
        """8.8.2.9."""
        assert rel_id is not None
        req = rq.parse_key_update(request, self.policy)
        now = self._clock()
        key = rules.owned_key(self.store, s.km, rel_id, now)
        changes, body = rules.plan_key_update(self.store, self.policy, key, req, now)
        kc_id = str(self.policy.kc_id(rel_id))

        def op(w: MafWriter) -> Any:
            updated = w.update_key(rel_id, **changes)
            if updated is None:
                raise MafRefusal(RSC.NOT_FOUND, "no such key registration", audit="vanished")
            return updated

        audit = _audit_if(
            _succeeded,
            lambda updated: audit_record(
                AuditEvent.KEY_UPDATED,
                kcId=kc_id,
                kmId=s.km.km_id,
                target=",".join(updated.target_ids),
                expires=format_m2m_time(updated.expires_at),
            ),
        )

        def then(_updated: Any) -> Step:
            self.stats.keys_updated += 1
            return maf_response(RSC.UPDATED, body, request)

        return _write(op, audit, then)

    def _key_deregistration(
        self, s: ClientSession, rel_id: str | None, request: OneM2MRequest
    ) -> Step:
        """8.8.2.10."""
        assert rel_id is not None
        rules.owned_key(self.store, s.km, rel_id, self._clock())
        kc_id = str(self.policy.kc_id(rel_id))

        audit = _audit_if(
            lambda found: found is True,
            lambda _: audit_record(AuditEvent.KEY_DEREGISTERED, kcId=kc_id, kmId=s.km.km_id),
        )

        def then(found: bool) -> Step:
            if not found:
                raise MafRefusal(RSC.NOT_FOUND, "no such key registration", audit="vanished")
            self.stats.keys_deregistered += 1
            return maf_response(RSC.DELETED, None, request)

        return _write(lambda w: w.deregister_key(rel_id), audit, then)

    def _client_registration(self, s: ClientSession, _: str | None, request: OneM2MRequest) -> Step:
        """8.8.2.3."""
        req = rq.parse_client_registration(request, self.policy)
        reg = rules.plan_client_registration(
            self.policy, s.km, req, self._clock(), self._token(16).hex()
        )

        audit = _audit_if(
            _succeeded,
            lambda _: audit_record(
                AuditEvent.CLIENT_REGISTERED,
                kmId=s.km.km_id,
                regId=reg.reg_id,
                adminFQDN=reg.admin_fqdn,
                expires=format_m2m_time(reg.expires_at),
            ),
        )

        def then(_none: Any) -> Step:
            self.stats.client_registrations += 1
            body = rules.client_registration_body(reg, s.km)
            return maf_response(RSC.CREATED, body, request)

        return _write(lambda w: w.insert_registration(reg), audit, then)

    def _config_retrieval(
        self, s: ClientSession, reg_id: str | None, request: OneM2MRequest
    ) -> Step:
        """8.8.2.4."""
        assert reg_id is not None
        rules.owned_registration(self.store, s.km, reg_id, self._clock())
        config = self.store.get_client_config(s.km.canonical)
        if config is None:
            raise MafRefusal(
                RSC.NOT_FOUND, "no MAF Client Configuration is associated with this registration"
            )
        return maf_response(RSC.OK, {"mafClientCfg": config}, request)

    def _registration_update(
        self, s: ClientSession, reg_id: str | None, request: OneM2MRequest
    ) -> Step:
        """8.8.2.5."""
        assert reg_id is not None
        req = rq.parse_registration_update(request, self.policy)
        now = self._clock()
        reg = rules.owned_registration(self.store, s.km, reg_id, now)
        expires, body = rules.plan_registration_update(self.policy, reg, req, now)
        kwargs: dict[str, Any] = {"expires_at": expires}
        if req.has_labels:
            kwargs["labels"] = req.labels

        audit = _audit_if(
            _succeeded,
            lambda updated: audit_record(
                AuditEvent.CLIENT_UPDATED,
                kmId=s.km.km_id,
                regId=reg_id,
                expires=format_m2m_time(updated.expires_at),
            ),
        )

        return _write(
            lambda w: w.update_registration(reg_id, **kwargs),
            audit,
            lambda _reg: maf_response(RSC.UPDATED, body, request),
        )

    def _deregistration(self, s: ClientSession, reg_id: str | None, request: OneM2MRequest) -> Step:
        """8.8.2.6: the registration and the keys registered under it are removed."""
        assert reg_id is not None
        rules.owned_registration(self.store, s.km, reg_id, self._clock())

        audit = _audit_if(
            lambda outcome: _succeeded(outcome) and outcome[0],
            lambda outcome: audit_record(
                AuditEvent.CLIENT_DEREGISTERED, kmId=s.km.km_id, regId=reg_id, keys=outcome[1]
            ),
        )

        def then(outcome: tuple[bool, int]) -> Step:
            if not outcome[0]:
                raise MafRefusal(RSC.NOT_FOUND, "no such MAF Client Registration", audit="vanished")
            return maf_response(RSC.DELETED, None, request)

        return _write(lambda w: w.delete_registration(reg_id), audit, then)

    # -- retrieval listener ---------------------------------------------------------------
    def handle_retrieval(self, peer: Retriever, request: OneM2MRequest) -> Step:
        """8.8.2.8. Refusals are audited before they are answered; a failed audit write
        raises (the server answers 5000)."""
        who = peer.entity_id or peer.peer_id
        if peer.entity_id is not None:
            with contextlib.suppress(IdentifierError):
                who = canonical_entity(peer.entity_id, self.policy.sp_fqdn)
        rel_id: str | None = None
        try:
            rq.request_id(request)
            r = rq.route(request.method, request.target)
            if r.procedure is not rq.Procedure.KEY_RETRIEVAL:
                raise MafRefusal(
                    RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                    "the retrieval listener serves Key Retrieval (GET /maf/keys/{id}) only",
                )
            rel_id = r.param
            assert rel_id is not None
            if peer.entity_id is None:
                raise MafRefusal(
                    RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                    "the authenticated identity is not an AE-ID or CSE-ID",
                    audit=f"retriever {who} ({peer.kind}) is not an AE or CSE",
                )
            key = rules.decide_retrieval(
                self.store, self.policy, peer.entity_id, rel_id, self._clock()
            )
        except MafRefusal as refusal:
            kc_id: str | None = None
            if rel_id is not None:
                # A RelativeKeyID too long for a psk_identity makes no KcId (10.3.5).
                with contextlib.suppress(IdentifierError):
                    kc_id = str(self.policy.kc_id(rel_id))
            record = audit_record(
                AuditEvent.RETRIEVAL_REFUSED,
                kcId=kc_id,
                retriever=who,
                rsc=refusal.rsc,
                reason=refusal.audit,
                sa=peer.sa,
            )
            return _audited(record, functools.partial(self.refused, refusal, request, who))
        client = self._clients(key.km_id)
        record = audit_record(
            AuditEvent.KEY_RETRIEVED,
            kcId=str(self.policy.kc_id(key.relative_id)),
            kmId=client.km_id if client else key.km_id,
            retriever=who,
            target=",".join(key.target_ids),
            expires=format_m2m_time(key.expires_at),
            entityId=client.entity_id if client else None,
            sa=peer.sa,
        )

        def answer() -> Step:
            self.stats.keys_retrieved += 1
            return maf_response(RSC.OK, rules.retrieval_body(key, client), request)

        return _audited(record, answer)
