"""The Bootstrapping Server Function (TS 33.220 4.2.1) with an HSS simulator behind it.

Two kinds of listener (:class:`BsfServer`):

**Ub** (``http://HOST:PORT``, plain TCP, TS 24.109 clause 5 / TS 33.220 4.5.2). HTTP
Digest AKA (RFC 3310) on any request-URI, GET or POST:

1. A request whose ``Authorization: Digest`` names the user (``username`` = IMPI) with an
   empty or unknown nonce gets ``401`` and a fresh challenge: the HSS simulator
   (:class:`~m2msec.gba.aka.Hss`) makes a vector, the BSF keeps it under the nonce
   ``base64(RAND || AUTN || 8 random octets)`` for ``challenge_timeout`` seconds and sends
   ``WWW-Authenticate: Digest realm="<BSF FQDN>", nonce=..., algorithm=AKAv1-MD5,
   qop="auth-int"``.
2. The answer to a challenge is checked (a verified answer uses the nonce up): with
   ``response`` computed from RES = XRES the user is authenticated, Ks = CK || IK is kept
   with B-TID = base64(RAND)@<BSF FQDN> for ``ks_lifetime`` seconds, and the BSF answers
   ``200`` with ``Authentication-Info`` (``rspauth``, over the body for auth-int) and the
   ``BootstrappingInfo`` XML (B-TID, key lifetime). With ``auts`` (and a response over an
   empty password, RFC 3310 3.4) the HSS resynchronises (TS 33.102 6.3.5) and a fresh
   challenge follows.
3. Refusals, each with a one-line reason as ``text/plain``: ``400`` no or malformed
   ``Authorization`` (quoted-string errors, duplicates, missing fields), a ``uri`` that is
   not the request-URI, a qop or algorithm we did not offer; ``403`` unknown IMPI, a
   response that does not verify (wrong RES), an answer for another user's nonce, an AUTS
   whose MAC-S does not verify, or a client reporting that it could not authenticate the
   network (a response over an empty password without ``auts``: MAC failure at the USIM);
   ``405`` other methods.

A wrong RES is answered 403 rather than with a new challenge: each challenge costs an
authentication vector, and a client that computed a wrong RES will not do better with the
next one.

Challenge floods (issue 9 item 5). Anyone can send ``username=<IMPI>``; making a vector
steps SQN_HE and writes the store. So while an IMPI has an unanswered challenge in the
first half of ``challenge_timeout``, a new unauthenticated request gets the same nonce
(same RAND/AUTN: one vector, which the USIM accepts at most once, TS 33.102 C.2, so SQN
freshness is unchanged); at most ``max_pending_per_impi`` vectors are outstanding per
IMPI (the oldest is dropped), so a flood steps SQN about once per half timeout. A wrong
RES, a foreign user's answer or a (forgeable) MAC-failure report leaves the challenge
pending: only a verified answer or a verified AUTS uses it up, so a forged answer cannot
cancel a device's bootstrap. A resynchronisation drops every pending vector of the IMPI
(their SQNs are the ones the USIM refused). Before any parsing, a token bucket per source
address (``ub_rate`` per second, ``ub_burst``; 4,096 addresses, least recently seen
forgotten) answers ``429`` with ``Retry-After``; counters ``challenges_reused`` and
``ub_rate_limited``.

**Zn** (``tls://HOST:PORT``, mutual TLS with certificates of the ``m2msec ca``; our HTTP
mapping of TS 29.109, see :mod:`m2msec.gba.zn`). The NAF's certificate must chain to the
configured CA and name at least one dNSName (a CSE-ID certificate's public domain name or
a service certificate's FQDN); those names are the NAF FQDNs it may ask keys for: the FQDN
inside ``nafId`` must be one of them (403 otherwise: a NAF asking for a key bound to
another NAF). Then unknown or expired B-TID -> 404, a NAF the subscriber's GUSS does not
allow -> 403, ``gbaU=1`` for a GBA_ME subscriber -> 403, else 200 with Ks_(ext|int)_NAF.

Configuration (:class:`BsfConfig`, TOML via :func:`load_bsf_config`)::

    [bsf]
    fqdn = "bsf.in.provider.com"          # realm, B-TID domain, name in our certificate
    listen = ["http://127.0.0.1:8090"]    # Ub
    zn_listen = ["tls://127.0.0.1:8091"]  # Zn (needs cert, key, ca)
    store = "bsf.db"                      # default: <data dir>/bsf.db
    cert = "bsf.pem"                      # FQDN certificate from 'm2msec ca issue-service'
    key = "bsf.key"
    ca = "ca.pem"                         # the CA the NAFs' certificates chain to
    ks_lifetime = 3600                    # seconds (TS 33.220 leaves it to the operator)
    challenge_timeout = 60                # seconds an unanswered challenge is kept
    max_pending = 10000                   # challenges kept at once (oldest dropped)
    max_pending_per_impi = 2              # distinct unanswered vectors per IMPI
    ub_rate = 10.0                        # Ub requests per second per source address
    ub_burst = 50                         # ... with this burst (then 429 + Retry-After)
    ind_bits = 5                          # IND length of SQN (TS 33.102 C.3.2)
    handshake_timeout = 10
    idle_timeout = 60
    request_head_timeout = 10             # seconds from a head's first byte to its end: 408
    max_handshakes = 1024
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Final

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from m2msec.bindings.http import (
    BadRequest,
)
from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.config.bsf import (
    BsfConfig,
    load_bsf_config,
    parse_bsf_config,
)
from m2msec.crypto.gba import btid as make_btid
from m2msec.crypto.gba import ks_ext_naf, ks_from, ks_int_naf
from m2msec.errors import (
    CertificateError,
    ConfigurationError,
    DuplicateCredentialError,
    StoreError,
)
from m2msec.frameworks.certificate import CertificateCredential
from m2msec.gba.aka import AkaError, AuthVector, Hss, MacFailure
from m2msec.gba.digest import (
    AKAV1_MD5,
    AuthenticationInfo,
    Authorization,
    Challenge,
    DigestError,
    compute_response,
    compute_rspauth,
    make_nonce,
    parse_authorization,
    response_matches,
)
from m2msec.gba.subscribers import BootstrapSession, SubscriberStore
from m2msec.gba.ub import format_bootstrapping_info
from m2msec.gba.zn import NafKey, ZnError, ZnRequest, error_body
from m2msec.pki.names import certificate_fingerprint, check_public_key
from m2msec.service.limits import HttpLimits
from m2msec.service.server import HttpService, ServiceHooks
from m2msec.service.streams import PlainStream, Stream
from m2msec.store.outage import StoreOutage
from m2msec.tls.aio import TLSConnection, TLSServer
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import (
    CERT_SUITES_TLS,
    CertificatePolicy,
    TLSProfile,
    Transport,
    new_context,
)

__all__ = [
    "BsfConfig",
    "BsfServer",
    "BsfStats",
    "load_bsf_config",
    "naf_names",
    "parse_bsf_config",
]

log = logging.getLogger(__name__)

BSF_MEDIA_TYPE: Final = "application/vnd.3gpp.bsf+xml"
_SERVER_DATA: Final = 8
_MAX_BODY: Final = 16 * 1024


# ----------------------------------------------------------------------------- Zn identity


def naf_names(cert: x509.Certificate) -> frozenset[str]:
    """The NAF FQDNs a certificate authenticates: its dNSName entries, in lower case.

    A wildcard (TS-0003 10.1.1) or a certificate without dNSName raises CertificateError.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("NAF certificate has no subjectAltName (dNSName needed)") from None
    names = san.get_values_for_type(x509.DNSName)
    if any("*" in n for n in names):
        raise CertificateError("NAF certificate names a wildcard: refused (TS-0003 10.1.1)")
    if not names:
        raise CertificateError("NAF certificate names no FQDN (no dNSName in subjectAltName)")
    return frozenset(n.lower().rstrip(".") for n in names)


def _bind_naf(der: bytes) -> PeerBinding:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"NAF certificate cannot be parsed: {exc}") from None
    check_public_key(cert.public_key(), "NAF certificate")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise CertificateError("NAF certificate is not for TLS clients (extendedKeyUsage)")
    except x509.ExtensionNotFound:
        pass
    names = sorted(naf_names(cert))
    return PeerBinding(
        peer_id=names[0],
        kind=PeerKind.SERVICE,
        key_id=certificate_fingerprint(cert),
        valid_until=cert.not_valid_after_utc,
    )


def _zn_profile(credential: CertificateCredential, fqdn: str) -> TLSProfile:
    ctx = new_context(Transport.TLS, server_side=True, suites=CERT_SUITES_TLS, tls13=True)
    credential._configure(ctx, server_side=True)
    return TLSProfile(
        framework=Framework.CERTIFICATE,
        transport=Transport.TLS,
        server_side=True,
        ssl_context=ctx,
        local_id=fqdn,
        certificate_policy=CertificatePolicy(bind=_bind_naf, require_peer_certificate=True),
    )


# ----------------------------------------------------------------------------- state


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


class _SourceLimiter:
    """A token bucket per source address (``rate`` per second, ``burst`` deep) over at most
    ``max_sources`` addresses; the least recently seen are forgotten first (a forgotten
    address starts with a full bucket, which only ever errs towards serving)."""

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


def _text(status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(
        status,
        (*headers, ("Content-Type", "text/plain; charset=utf-8")),
        reason.encode("utf-8") + b"\n",
    )


def _json(status: int, body: bytes) -> HttpResponse:
    return HttpResponse(status, (("Content-Type", "application/json"),), body)


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# ----------------------------------------------------------------------------- server


class BsfServer:
    """The BSF (module docstring): ``async with BsfServer(config) as bsf: ...``.

    ``store`` overrides the configured subscriber store (not closed by the server);
    ``clock`` gives the current time (tests).
    """

    def __init__(
        self,
        config: BsfConfig,
        *,
        store: SubscriberStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.stats = BsfStats()
        self._store_outage = StoreOutage(
            "BSF store", logger=log, on_failure=self._count_store_error
        )
        self._store = store
        self._own_store = store is None
        self._clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._by_impi: dict[str, list[str]] = {}  # IMPI -> its pending nonces, oldest first
        self._limiter = _SourceLimiter(config.ub_rate, config.ub_burst)
        self._servers: list[asyncio.Server] = []
        self._tls: list[TLSServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._ub: list[tuple[str, int]] = []
        self._zn: list[tuple[str, int]] = []
        self._hss: Hss | None = None
        self._started = False
        self._closing = False
        self._service = HttpService(
            HttpLimits(
                max_body=_MAX_BODY,
                request_head_timeout=config.request_head_timeout,
                idle_timeout=config.idle_timeout,
            ),
            ServiceHooks(
                bad_request=lambda event: _text(event.response.status, event.reason),
                on_bad_request=self._count_bad_request,
            ),
            name="BSF",
        )

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def store(self) -> SubscriberStore:
        if self._store is None:
            raise RuntimeError("the BSF is not started")
        return self._store

    @property
    def hss(self) -> Hss:
        if self._hss is None:
            raise RuntimeError("the BSF is not started")
        return self._hss

    @property
    def ub_addresses(self) -> list[tuple[str, int]]:
        return list(self._ub)

    @property
    def zn_addresses(self) -> list[tuple[str, int]]:
        return list(self._zn)

    def ub_url(self, index: int = 0) -> str:
        host, port = self._ub[index]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    async def __aenter__(self) -> BsfServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _count_store_error(self) -> None:
        self.stats.store_errors += 1

    async def start(self) -> None:
        """Open the store and the listeners (ConfigurationError, StoreError, OSError)."""
        if self._started:
            raise RuntimeError("BSF already started")
        self._started = True
        cfg = self.config
        try:
            if self._store is None:
                self._store = SubscriberStore(cfg.store)
            self._hss = Hss(self._store, ind_bits=cfg.ind_bits)
            profile = None
            if cfg.zn_listen:
                assert cfg.cert is not None and cfg.key is not None and cfg.ca is not None
                try:
                    credential = CertificateCredential.from_files(cfg.cert, cfg.key, cfg.ca)
                except CertificateError as exc:
                    raise ConfigurationError(f"Zn certificate: {exc}") from None
                if cfg.fqdn not in _own_names(credential.certificate):
                    log.warning(
                        "the BSF certificate %s does not name %s: NAFs will refuse it",
                        cfg.cert,
                        cfg.fqdn,
                    )
                profile = _zn_profile(credential, cfg.fqdn)
            for host, port in cfg.listen:
                server = await asyncio.start_server(self._serve_ub, host, port)
                self._servers.append(server)
                sock = server.sockets[0].getsockname()
                self._ub.append((sock[0], sock[1]))
                log.info("Ub listening on http://%s:%s/", sock[0], sock[1])
            for host, port in cfg.zn_listen:
                assert profile is not None
                tls = TLSServer(
                    profile,
                    self._serve_zn,
                    handshake_timeout=cfg.handshake_timeout,
                    max_handshakes=cfg.max_handshakes,
                )
                await tls.start(host, port)
                self._tls.append(tls)
                sock = tls.sockets[0].getsockname()
                self._zn.append((sock[0], sock[1]))
                log.info("Zn listening on tls://%s:%s", sock[0], sock[1])
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._service.closing = True
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for tls in self._tls:
            await tls.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self._own_store and self._store is not None:
            self._store.close()
        self._pending.clear()
        self._by_impi.clear()
        log.info("BSF stopped: %s", self.stats.as_dict())

    async def serve_forever(self, stop: asyncio.Event) -> None:
        try:
            await stop.wait()
        finally:
            await self.close()

    # -- HTTP plumbing ---------------------------------------------------------------------
    async def _serve_ub(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            peer = writer.get_extra_info("peername")

            async def handle(request: OneM2MRequest) -> HttpResponse:
                return self.handle_ub(request, peer)

            await self._http(PlainStream(reader, writer), handle)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _serve_zn(self, conn: TLSConnection) -> None:
        cert = conn.engine.connection.get_peer_certificate(as_cryptography=True)
        try:
            names = naf_names(cert) if cert is not None else frozenset()
        except CertificateError:
            names = frozenset()
        peer = conn.context.peer_id

        async def handle(request: OneM2MRequest) -> HttpResponse:
            return self.handle_zn(request, names, peer)

        await self._http(conn, handle)

    async def _http(
        self, stream: Stream, handle: Callable[[OneM2MRequest], Awaitable[HttpResponse]]
    ) -> None:
        async def answer(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            try:
                response = await handle(request)
                self._store_outage.succeeded()
            except StoreError as exc:
                self._store_outage.failed(exc)  # one line per outage
                response = _text(500, "BSF store error")
            except Exception:
                log.exception("BSF request handling failed")
                response = _text(500, "BSF error")
            return response, False

        await self._service.serve(stream, answer)

    def _count_bad_request(self, event: BadRequest) -> None:
        self.stats.bad_requests += 1

    # -- Ub ----------------------------------------------------------------------------------
    def handle_ub(self, request: OneM2MRequest, peer: object = None) -> HttpResponse:
        """Answer one Ub request (sans-IO apart from the store)."""
        wait = self._limiter.take(_host(peer), time.monotonic())
        if wait > 0:
            self.stats.ub_rate_limited += 1
            log.debug("Ub: rate limit for %s", _addr(peer))
            return _text(
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
            return _text(refusal.status, refusal.reason, headers)

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
        cutoff = self._clock() - timedelta(seconds=self.config.challenge_timeout)
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
        half = self._clock() - timedelta(seconds=self.config.challenge_timeout / 2)
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
        while len(nonces) >= self.config.max_pending_per_impi:
            self._forget(nonces[0])
            nonces = self._by_impi.setdefault(impi, [])
        self._pending[nonce] = _Pending(impi, vector, subscriber.gba_type, self._clock())
        nonces.append(nonce)
        while len(self._pending) > self.config.max_pending:
            self._forget(next(iter(self._pending)))
        self.stats.challenges += 1
        return self._challenge_response(nonce)

    def _challenge_response(self, nonce: str) -> HttpResponse:
        challenge = Challenge(realm=self.config.fqdn, nonce=nonce, algorithm=AKAV1_MD5)
        return _text(
            401,
            "AKA challenge: answer with RES (RFC 3310)",
            (("WWW-Authenticate", challenge.header_value()),),
        )

    def _answer(
        self, request: OneM2MRequest, auth: Authorization, pending: _Pending
    ) -> HttpResponse:
        if auth.username != pending.impi:
            raise _Refused(403, "this nonce was issued to another user")
        if auth.realm.lower() != self.config.fqdn:
            raise _Refused(400, f"realm {auth.realm[:80]!r} is not {self.config.fqdn}")
        if auth.algorithm != AKAV1_MD5:
            raise _Refused(400, "algorithm must be AKAv1-MD5")
        if auth.qop != "auth-int":
            raise _Refused(400, 'qop must be "auth-int" (as offered)')
        vector = pending.vector

        def expected(password: bytes) -> str:
            return compute_response(
                password=password,
                username=auth.username,
                realm=auth.realm,
                method=request.method,
                uri=auth.uri,
                nonce=auth.nonce,
                qop=auth.qop,
                nc=auth.nc,
                cnonce=auth.cnonce,
                body=request.body,
            )

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
        expires = now + timedelta(seconds=self.config.ks_lifetime)
        btid = make_btid(vector.rand, self.config.fqdn)
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
        rspauth = compute_rspauth(
            password=vector.xres,
            username=auth.username,
            realm=auth.realm,
            uri=auth.uri,
            nonce=auth.nonce,
            qop=auth.qop,
            nc=auth.nc,
            cnonce=auth.cnonce,
            body=body,
        )
        info = AuthenticationInfo(rspauth, auth.qop, auth.nc, auth.cnonce)
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


def _own_names(cert: x509.Certificate) -> frozenset[str]:
    try:
        return naf_names(cert)
    except CertificateError:
        return frozenset()


def _host(peer: object) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _addr(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
