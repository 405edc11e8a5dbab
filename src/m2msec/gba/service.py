"""The BSF's answers on Ub and Zn, without sockets (TS 33.220 4.5.2, 4.5.3; TS 24.109 5).

:class:`BsfService` decides each request the listeners of :mod:`m2msec.servers.bsf` hand
it: ``handle_ub`` (HTTP Digest AKA, RFC 3310) and ``handle_zn`` (our HTTP mapping of
TS 29.109, :mod:`m2msec.gba.zn`). No asyncio: it reads and writes the subscriber store
(:class:`~m2msec.gba.subscribers.SubscriberStore`) and asks the HSS simulator
(:class:`~m2msec.gba.aka.Hss`) for vectors; its messages are the ones of
:mod:`m2msec.gba.wire` and :mod:`m2msec.gba.digest`, which the device and the NAF read with.
The behaviour (challenges, reuse under floods, refusals, rate limit) is described in
:mod:`m2msec.servers.bsf`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Final

from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.crypto.gba import btid as make_btid
from m2msec.crypto.gba import ks_ext_naf, ks_from, ks_int_naf
from m2msec.errors import DuplicateCredentialError
from m2msec.gba.aka import AkaError, AuthVector, Hss, MacFailure
from m2msec.gba.digest import (
    AKAV1_MD5,
    AuthenticationInfo,
    Authorization,
    Challenge,
    DigestError,
    make_nonce,
    parse_authorization,
    response_matches,
)
from m2msec.gba.records import BootstrapSession
from m2msec.gba.subscribers import SubscriberStore
from m2msec.gba.wire import (
    BSF_MEDIA_TYPE,
    ZN_MEDIA_TYPE,
    NafKey,
    ZnError,
    ZnRequest,
    error_body,
    format_bootstrapping_info,
)

__all__ = [
    "BsfPolicy",
    "BsfService",
    "BsfStats",
    "SourceLimiter",
    "rate_limit_source",
    "text_response",
]

log = logging.getLogger(__name__)

_SERVER_DATA: Final = 8


@dataclass(frozen=True, slots=True)
class BsfPolicy:
    """The settings the answers depend on (from :class:`m2msec.config.bsf.BsfConfig`):
    the BSF's FQDN (realm and B-TID domain), the Ks lifetime, how long and how many
    challenges are kept, and the per-source Ub rate limit (seconds, counts, per second)."""

    fqdn: str
    ks_lifetime: float
    challenge_timeout: float
    max_pending: int
    max_pending_per_impi: int
    ub_rate: float
    ub_burst: int


@dataclass(slots=True)
class BsfStats:
    """Counters since start (no identities, no keys)."""

    challenges: int = 0
    bootstraps: int = 0
    resyncs: int = 0
    ub_refused: int = 0
    zn_answered: int = 0
    zn_refused: int = 0
    bad_requests: int = 0
    challenges_reused: int = 0
    ub_rate_limited: int = 0
    store_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(slots=True)
class _Pending:
    impi: str
    vector: AuthVector = field(repr=False)
    gba_type: str
    created: datetime


class SourceLimiter:
    """A token bucket per source (an IPv4 address or an IPv6 /64, :func:`rate_limit_source`;
    ``rate`` per second, ``burst`` deep) over at most ``max_sources`` sources; the least
    recently seen are forgotten first (a forgotten source starts with a full bucket, which
    only ever errs towards serving)."""

    def __init__(self, rate: float, burst: int, max_sources: int = 4096) -> None:
        self.rate, self.burst, self.max_sources = rate, float(burst), max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, source: str, now: float) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[source] = (tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return wait


def text_response(
    status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
) -> HttpResponse:
    """A refusal with a one-line reason as ``text/plain``."""
    return HttpResponse(
        status,
        (*headers, ("Content-Type", "text/plain; charset=utf-8")),
        reason.encode("utf-8") + b"\n",
    )


def _json(status: int, body: bytes) -> HttpResponse:
    return HttpResponse(status, (("Content-Type", ZN_MEDIA_TYPE),), body)


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BsfService:
    """The BSF's decisions on Ub and Zn (module docstring).

    ``clock`` gives the current time (tests); ``stats`` is shared with the listeners, which
    count what they refuse before a request gets here.
    """

    def __init__(
        self,
        policy: BsfPolicy,
        store: SubscriberStore,
        hss: Hss,
        *,
        stats: BsfStats | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.policy = policy
        self.store = store
        self.hss = hss
        self.stats = stats if stats is not None else BsfStats()
        self._clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._by_impi: dict[str, list[str]] = {}  # IMPI -> its pending nonces, oldest first
        self._limiter = SourceLimiter(policy.ub_rate, policy.ub_burst)

    def clear(self) -> None:
        """Forget every pending challenge (the BSF stops)."""
        self._pending.clear()
        self._by_impi.clear()

    # -- Ub ----------------------------------------------------------------------------------
    def handle_ub(self, request: OneM2MRequest, peer: object = None) -> HttpResponse:
        """Answer one Ub request from ``peer`` (its socket address)."""
        wait = self._limiter.take(rate_limit_source(peer), time.monotonic())
        if wait > 0:
            self.stats.ub_rate_limited += 1
            log.debug("Ub: rate limit for %s", _addr(peer))
            return text_response(
                429,
                "too many Ub requests from this address",
                (("Retry-After", str(max(1, math.ceil(wait)))),),
            )
        try:
            return self._ub_decide(request)
        except _Refused as refusal:
            self.stats.ub_refused += 1
            log.warning("Ub refused (%s from %s): %s", refusal.status, _addr(peer), refusal.reason)
            headers: tuple[tuple[str, str], ...] = ()
            if refusal.status == 405:
                headers = (("Allow", "GET, POST"),)
            return text_response(refusal.status, refusal.reason, headers)

    def _ub_decide(self, request: OneM2MRequest) -> HttpResponse:
        if request.method not in ("GET", "POST"):
            raise _Refused(405, f"method {request.method} not allowed on Ub (GET or POST)")
        values = [v for k, v in request.headers if k == "authorization"]
        if not values:
            raise _Refused(
                400,
                'Authorization: Digest username="<IMPI>" is required to bootstrap '
                "(TS 24.109 5.2.1)",
            )
        if len(values) > 1:
            raise _Refused(400, "Authorization appears more than once")
        try:
            auth = parse_authorization(values[0])
        except DigestError as exc:
            raise _Refused(400, str(exc)) from None
        if auth.uri != request.target:
            raise _Refused(
                400, f"Authorization uri {auth.uri[:80]!r} is not the request-URI (RFC 2617)"
            )
        self._expire_pending()
        # Looked up, not taken: only a verified answer (or AUTS) uses a challenge up, so a
        # forged answer cannot cancel a device's bootstrap.
        pending = self._pending.get(auth.nonce) if auth.nonce else None
        if pending is None:
            if auth.nonce:
                log.info("Ub: unknown or expired nonce from %s: new challenge", auth.username)
            return self._challenge(auth.username)
        return self._answer(request, auth, pending)

    def _expire_pending(self) -> None:
        cutoff = self._clock() - timedelta(seconds=self.policy.challenge_timeout)
        while self._pending:
            nonce, first = next(iter(self._pending.items()))
            if first.created > cutoff:
                break
            self._forget(nonce)

    def _forget(self, nonce: str) -> None:
        pending = self._pending.pop(nonce, None)
        if pending is None:
            return
        nonces = self._by_impi.get(pending.impi, [])
        with contextlib.suppress(ValueError):
            nonces.remove(nonce)
        if not nonces:
            self._by_impi.pop(pending.impi, None)

    def _reusable(self, impi: str) -> str | None:
        """A pending nonce of ``impi`` still in the first half of its lifetime, so the
        device has at least half of ``challenge_timeout`` to answer it."""
        half = self._clock() - timedelta(seconds=self.policy.challenge_timeout / 2)
        for nonce in reversed(self._by_impi.get(impi, ())):
            if self._pending[nonce].created > half:
                return nonce
        return None

    def _challenge(self, impi: str) -> HttpResponse:
        # An unanswered challenge is handed out again rather than a new vector made: an
        # unauthenticated request must not step SQN_HE or write the store each time.  The
        # same RAND/AUTN is one vector, so the USIM still accepts it at most once (TS 33.102
        # C.2); at most max_pending_per_impi vectors are outstanding per IMPI.
        reused = self._reusable(impi)
        if reused is not None:
            self.stats.challenges_reused += 1
            return self._challenge_response(reused)
        subscriber = self.store.get_subscriber(impi)
        if subscriber is None:
            raise _Refused(403, f"unknown IMPI {impi[:80]!r}")
        try:
            vector = self.hss.generate_vector(subscriber.impi)
        except AkaError as exc:
            raise _Refused(500, f"cannot make an authentication vector: {exc}") from None
        nonce = make_nonce(vector.rand, vector.autn, os.urandom(_SERVER_DATA))
        nonces = self._by_impi.setdefault(impi, [])
        while len(nonces) >= self.policy.max_pending_per_impi:
            self._forget(nonces[0])
            nonces = self._by_impi.setdefault(impi, [])
        self._pending[nonce] = _Pending(impi, vector, subscriber.gba_type, self._clock())
        nonces.append(nonce)
        while len(self._pending) > self.policy.max_pending:
            self._forget(next(iter(self._pending)))
        self.stats.challenges += 1
        return self._challenge_response(nonce)

    def _challenge_response(self, nonce: str) -> HttpResponse:
        challenge = Challenge(realm=self.policy.fqdn, nonce=nonce, algorithm=AKAV1_MD5)
        return text_response(
            401,
            "AKA challenge: answer with RES (RFC 3310)",
            (("WWW-Authenticate", challenge.header_value()),),
        )

    def _answer(
        self, request: OneM2MRequest, auth: Authorization, pending: _Pending
    ) -> HttpResponse:
        if auth.username != pending.impi:
            raise _Refused(403, "this nonce was issued to another user")
        if auth.realm.lower() != self.policy.fqdn:
            raise _Refused(400, f"realm {auth.realm[:80]!r} is not {self.policy.fqdn}")
        if auth.algorithm != AKAV1_MD5:
            raise _Refused(400, "algorithm must be AKAv1-MD5")
        if auth.qop != "auth-int":
            raise _Refused(400, 'qop must be "auth-int" (as offered)')
        vector = pending.vector

        def expected(password: bytes) -> str:
            return auth.digest(password, request.method, request.body)

        if auth.auts is not None:
            try:
                auts = auth.auts_bytes()
            except DigestError as exc:
                raise _Refused(400, str(exc)) from None
            assert auts is not None
            if not response_matches(expected(b""), auth.response):
                raise _Refused(403, "resynchronisation request: response does not verify")
            try:
                self.hss.resync(pending.impi, vector.rand, auts)
            except MacFailure:
                raise _Refused(403, "AUTS does not verify (MAC-S): no resynchronisation") from None
            except AkaError as exc:
                raise _Refused(400, f"AUTS refused: {exc}") from None
            self.stats.resyncs += 1
            log.info("Ub: SQN resynchronised for %s", pending.impi)
            # Every pending vector of this IMPI carries an SQN the USIM just refused.
            for nonce in list(self._by_impi.get(pending.impi, ())):
                self._forget(nonce)
            return self._challenge(pending.impi)

        if not response_matches(expected(vector.xres), auth.response):
            if response_matches(expected(b""), auth.response):
                raise _Refused(
                    403,
                    "the client could not authenticate the network (MAC failure reported)",
                )
            raise _Refused(403, "authentication failed: the digest response (RES) does not verify")
        self._forget(auth.nonce)
        return self._bootstrapped(auth, pending)

    def _bootstrapped(self, auth: Authorization, pending: _Pending) -> HttpResponse:
        vector = pending.vector
        now = self._clock().replace(microsecond=0)
        expires = now + timedelta(seconds=self.policy.ks_lifetime)
        btid = make_btid(vector.rand, self.policy.fqdn)
        session = BootstrapSession(
            btid=btid,
            impi=pending.impi,
            rand=vector.rand,
            ks=ks_from(vector.ck, vector.ik),
            created_at=now,
            expires_at=expires,
            gba_type="GBA_U" if pending.gba_type == "GBA_U" else "GBA_ME",
        )
        try:
            self.store.put_session(session)
        except DuplicateCredentialError:
            raise _Refused(500, "B-TID collision: bootstrap again") from None
        body = format_bootstrapping_info(btid, expires)
        info = AuthenticationInfo(auth.rspauth(vector.xres, body), auth.qop, auth.nc, auth.cnonce)
        self.stats.bootstraps += 1
        log.info(
            "bootstrapped %s: B-TID %s (%s) until %s",
            pending.impi,
            btid,
            session.gba_type,
            expires.isoformat(),
        )
        return HttpResponse(
            200,
            (
                ("Authentication-Info", info.header_value()),
                ("Content-Type", BSF_MEDIA_TYPE),
                ("Expires", format_datetime(expires, usegmt=True)),
            ),
            body,
        )

    # -- Zn ----------------------------------------------------------------------------------
    def handle_zn(
        self, request: OneM2MRequest, naf_fqdns: frozenset[str], peer: str = "?"
    ) -> HttpResponse:
        """Answer one Zn request from a NAF authenticated for ``naf_fqdns``."""
        try:
            key = self._zn_decide(request, naf_fqdns)
        except ZnError as refusal:
            self.stats.zn_refused += 1
            log.warning("Zn refused (%s, NAF %s): %s", refusal.status, peer, refusal.reason)
            return _json(refusal.status, error_body(refusal.reason))
        self.stats.zn_answered += 1
        log.info("Zn: key for B-TID %s given to NAF %s (%s)", key.btid, peer, key.gba_type)
        return _json(200, key.to_json())

    def _zn_decide(self, request: OneM2MRequest, naf_fqdns: frozenset[str]) -> NafKey:
        if request.method != "GET":
            raise ZnError(405, f"method {request.method} not allowed on Zn (GET)")
        zn = ZnRequest.from_target(request.target)
        fqdn = zn.naf_fqdn
        if fqdn not in naf_fqdns:
            named = ", ".join(sorted(naf_fqdns)) or "no FQDN"
            raise ZnError(
                403,
                f"nafId names NAF {fqdn}, but this NAF's certificate authenticates {named}",
            )
        session = self.store.get_session(zn.btid)
        if session is None:
            raise ZnError(404, f"unknown B-TID {zn.btid[:100]!r}")
        if session.expired(self._clock()):
            raise ZnError(404, f"B-TID {zn.btid[:100]!r} has expired: the device must bootstrap")
        subscriber = self.store.get_subscriber(session.impi)
        if subscriber is None:
            raise ZnError(404, f"B-TID {zn.btid[:100]!r}: its subscriber no longer exists")
        uss = subscriber.guss.uss_for(fqdn)
        if uss is None:
            raise ZnError(403, f"the subscriber's GUSS does not allow NAF {fqdn}")
        if zn.gba_u and session.gba_type != "GBA_U":
            raise ZnError(
                403,
                "gbaU=1 but the subscriber has no UICC-based credential (GBA_ME): "
                "no Ks_int_NAF exists",
            )
        derive = ks_int_naf if zn.gba_u else ks_ext_naf
        return NafKey(
            ks_naf=derive(session.ks, session.rand, session.impi, zn.naf_id),
            expires=session.expires_at,
            impi=session.impi,
            btid=session.btid,
            uss=uss,
            gba_type=session.gba_type,
            bootstrap_time=session.created_at,
        )


def rate_limit_source(peer: object) -> str:
    """The Ub rate limit's key for ``peer``: its IPv4 address, or its IPv6 /64 (one host
    commonly holds a whole /64, so a per-address bucket would give it 2^64 of them)."""
    host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


def _addr(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
