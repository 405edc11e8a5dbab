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
mapping of TS 29.109, see :mod:`m2msec.gba.zn`, messages in :mod:`m2msec.gba.wire`).
The NAF's certificate must chain to the configured CA and name at least one dNSName (a
CSE-ID certificate's public domain name or a service certificate's FQDN); those names are
the NAF FQDNs it may ask keys for: the FQDN inside ``nafId`` must be one of them (403
otherwise: a NAF asking for a key bound to another NAF). Then unknown or expired B-TID
-> 404, a NAF the subscriber's GUSS does not allow -> 403, ``gbaU=1`` for a GBA_ME
subscriber -> 403, else 200 with Ks_(ext|int)_NAF.

This module holds the listeners, the Zn TLS profile, the dispatch of each request and
the lifecycle; the answers themselves are :class:`m2msec.gba.service.BsfService`'s
(``BsfServer.service``), which has no asyncio.

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
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from m2msec.bindings.http import BadRequest
from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.config.bsf import (
    BsfConfig,
    load_bsf_config,
    parse_bsf_config,
)
from m2msec.errors import (
    CertificateError,
    ConfigurationError,
    StoreError,
)
from m2msec.frameworks.certificate import CertificateCredential
from m2msec.gba.aka import Hss
from m2msec.gba.service import BsfPolicy, BsfService, BsfStats, text_response
from m2msec.gba.subscribers import SubscriberStore
from m2msec.pki.names import certificate_fingerprint, check_public_key
from m2msec.servers.metrics import bsf_families
from m2msec.service.lifecycle import ServerLifecycle, stop_accepting, wait_closed
from m2msec.service.limits import HttpLimits
from m2msec.service.metrics import Readiness, store_ready
from m2msec.service.server import Handler, HttpService, PlainConnections, ServiceHooks
from m2msec.store.outage import StoreOutage
from m2msec.tls.aio import TLSConnection, TLSServer
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import (
    CERT_SUITES_TLS,
    CertificatePolicy,
    TLSProfile,
    Transport,
    new_profile,
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

_MAX_BODY: Final = 16 * 1024
#: An IMPI no subscriber is given (the ``.invalid`` TLD): its read reaches the store.
_PROBE_IMPI: Final = "readyz-probe@bsf.invalid"


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
    profile = new_profile(
        Framework.CERTIFICATE,
        Transport.TLS,
        server_side=True,
        suites=CERT_SUITES_TLS,
        local_id=fqdn,
    )
    credential._configure(profile.ssl_context, server_side=True)
    return replace(
        profile, certificate_policy=CertificatePolicy(bind=_bind_naf, require_peer_certificate=True)
    )


# ----------------------------------------------------------------------------- server


class BsfServer(ServerLifecycle):
    """The BSF (module docstring): ``async with BsfServer(config) as bsf: ...``.

    ``store`` overrides the configured subscriber store (not closed by the server);
    ``clock`` gives the current time (tests).
    """

    what = "BSF"
    kind = "bsf"

    def __init__(
        self,
        config: BsfConfig,
        *,
        store: SubscriberStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(config.metrics)
        self.config = config
        self.stats = BsfStats()
        self.metrics.register(lambda: bsf_families(self.stats))
        self._store_outage = StoreOutage(
            "BSF store", logger=log, on_failure=self._count_store_error
        )
        self._store = store
        self._own_store = store is None
        self._clock = clock
        self._answers: BsfService | None = None
        self._servers: list[asyncio.Server] = []
        self._tls: list[TLSServer] = []
        self._ub: list[tuple[str, int]] = []
        self._zn: list[tuple[str, int]] = []
        self._http_service = HttpService(
            HttpLimits(
                max_body=_MAX_BODY,
                request_head_timeout=config.request_head_timeout,
                idle_timeout=config.idle_timeout,
            ),
            ServiceHooks(
                bad_request=lambda event: text_response(event.response.status, event.reason),
                on_bad_request=self._count_bad_request,
            ),
            name="BSF",
        )
        self._plain = PlainConnections(self._http_service)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def store(self) -> SubscriberStore:
        if self._store is None:
            raise RuntimeError("the BSF is not started")
        return self._store

    @property
    def hss(self) -> Hss:
        return self.service.hss

    @property
    def service(self) -> BsfService:
        """The answers to Ub and Zn requests (:mod:`m2msec.gba.service`)."""
        if self._answers is None:
            raise RuntimeError("the BSF is not started")
        return self._answers

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

    def readiness(self) -> Readiness:
        """``/readyz``: the subscriber store answers a read."""
        return store_ready("BSF store", lambda: self.store.get_subscriber(_PROBE_IMPI))

    def _count_store_error(self) -> None:
        self.stats.store_errors += 1

    async def _open(self) -> None:
        """Open the store, the HSS and the Ub and Zn listeners."""
        cfg = self.config
        if self._store is None:
            self._store = SubscriberStore(cfg.store)
        hss = Hss(self._store, ind_bits=cfg.ind_bits)
        policy = BsfPolicy(
            cfg.fqdn,
            cfg.ks_lifetime,
            cfg.challenge_timeout,
            cfg.max_pending,
            cfg.max_pending_per_impi,
            cfg.ub_rate,
            cfg.ub_burst,
        )
        self._answers = BsfService(policy, self._store, hss, stats=self.stats, clock=self._clock)
        profile = self._zn_profile(cfg) if cfg.zn_listen else None
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
                self.metrics.counted(profile, self._serve_zn),
                handshake_timeout=cfg.handshake_timeout,
                max_handshakes=cfg.max_handshakes,
                on_failure=self.metrics.failure_hook(profile),
            )
            await tls.start(host, port)
            self._tls.append(tls)
            sock = tls.sockets[0].getsockname()
            self._zn.append((sock[0], sock[1]))
            log.info("Zn listening on tls://%s:%s", sock[0], sock[1])

    def _zn_profile(self, cfg: BsfConfig) -> TLSProfile:
        """The Zn listeners' profile: the BSF certificate of ``cfg`` (ConfigurationError)."""
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
        return _zn_profile(credential, cfg.fqdn)

    async def _reload(self, config: Any) -> str:
        """A new BSF certificate (cert/key/ca) for the Zn listeners, or ConfigurationError
        with nothing changed (:mod:`m2msec.servers.service_reload`)."""
        from m2msec.servers.service_reload import reload_service_certificates

        if not isinstance(config, BsfConfig):
            raise ConfigurationError("a reload needs a BSF configuration")
        built: list[TLSProfile] = []

        async def build() -> TLSProfile:  # one profile for every Zn listener, as at start
            if not built:
                built.append(self._zn_profile(config))
            return built[0]

        message = await reload_service_certificates(
            self.config, config, "bsf", [(tls, build) for tls in self._tls]
        )
        self.config = config
        return message

    async def _shutdown(self) -> None:
        stop_accepting(self._servers)
        await self._http_service.close(self.drain_timeout)
        await self._plain.cancel()
        for tls in self._tls:
            await tls.close()
        await wait_closed(self._servers)
        if self._own_store and self._store is not None:
            self._store.close()
        if self._answers is not None:
            self._answers.clear()
        log.info("BSF stopped: %s", self.stats.as_dict())

    # -- HTTP plumbing ---------------------------------------------------------------------
    async def _serve_ub(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")

        async def handle(request: OneM2MRequest) -> HttpResponse:
            return self.service.handle_ub(request, peer)

        await self._plain.serve(reader, writer, self._answering(handle))

    async def _serve_zn(self, conn: TLSConnection) -> None:
        cert = conn.engine.connection.get_peer_certificate(as_cryptography=True)
        try:
            names = naf_names(cert) if cert is not None else frozenset()
        except CertificateError:
            names = frozenset()
        peer = conn.context.peer_id

        async def handle(request: OneM2MRequest) -> HttpResponse:
            return self.service.handle_zn(request, names, peer)

        await self._http_service.serve(conn, self._answering(handle))

    def _answering(self, handle: Callable[[OneM2MRequest], Awaitable[HttpResponse]]) -> Handler:
        """``handle`` as the HTTP loop's handler: a store outage is one log line per outage
        and a 500, any other failure a 500 (the BSF keeps serving the others)."""

        async def answer(request: OneM2MRequest) -> tuple[HttpResponse, bool]:
            try:
                response = await handle(request)
                self._store_outage.succeeded()
            except StoreError as exc:
                self._store_outage.failed(exc)  # one line per outage
                response = text_response(500, "BSF store error")
            except Exception:
                log.exception("BSF request handling failed")
                response = text_response(500, "BSF error")
            return response, False

        return answer

    def _count_bad_request(self, event: BadRequest) -> None:
        self.stats.bad_requests += 1


def _own_names(cert: x509.Certificate) -> frozenset[str]:
    try:
        return naf_names(cert)
    except CertificateError:
        return frozenset()
