"""A target fetching keys by identifier from the function that issued them, over mutual TLS.

Two procedures have the same shape: Entity B's Key Retrieval of a Kc at the MAF (TS-0003
8.8.2.8, :class:`m2msec.frameworks.maf.MafKeyRetriever`) and an Enrolment Target's
fetchCredentials of a Km or Kpsa at the MEF (8.3.2.1 step f, seed 004,
:class:`m2msec.frameworks.mef_fetch.MefCredentialFetcher`). :class:`KeyFetcher` is what
they share: the identifier names the function by its FQDN (10.3.4, 10.3.5); that
function's address comes from the configuration and its FQDN certificate is checked
(10.1.1.6) while ours names our identity; answers are cached until the key's lifetime
ends (bounded LRU); concurrent lookups of one identifier share one request; requests are
bounded in time and number and kept-alive connections are reused. Subclasses say which
request to send and how to read the answer.

:meth:`KeyFetcher.revalidate` asks again for a key a live SA holds, bypassing the cache
(coalesced with any fetch of that identifier in flight), and says what the function
answered: the same key (:attr:`Verdict.HELD`), a definite refusal
(:attr:`Verdict.REVOKED`: the cached key is dropped), another key value for the same
identifier (:attr:`Verdict.CHANGED`: the new one is cached) or nothing usable
(:attr:`Verdict.UNREACHABLE`: a network error, a timeout, a 5xx - the cache is left as it
is). The gateway's sweep ends live SAs on the second (issue 12 item 3, docs/sa.md).

:func:`entity_binding` is how either responder binds a session to the entity identity the
function returned (docs/readings.md A-06, A-14).

Keys never appear in ``repr``, logs or error messages; key identifiers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Generic, Protocol, Self, TypeVar

from m2msec.crypto.fingerprint import key_fingerprint
from m2msec.crypto.keyexport import RELATIVE_ID_LENGTH
from m2msec.errors import CertificateError, ConfigurationError, HandshakeError, IdentifierError
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.frameworks.maf.common import Clock, MafError, utc_now
from m2msec.ids import check_fqdn, entity_kind, parse_entity_id
from m2msec.m2mtime import format_time
from m2msec.service.onem2m_client import OneM2MClient, OneM2MResponse
from m2msec.tls.aio import TLSConnection
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.context import PeerBinding, PeerKind
from m2msec.tls.profiles import TLSProfile

__all__ = [
    "Expiring",
    "FetcherStats",
    "KeyFetcher",
    "KeyIdentifier",
    "Revalidation",
    "Verdict",
    "entity_binding",
]


class KeyIdentifier(Protocol):
    """``hexBinary(relative)@FQDN``: a KcId (10.3.5) or a KeID (10.3.4)."""

    @property
    def relative_bytes(self) -> bytes: ...

    @property
    def fqdn(self) -> str: ...


class Expiring(Protocol):
    """A fetched key: cached until ``expires``."""

    @property
    def expires(self) -> datetime: ...

    def expired(self, now: datetime | None = None, margin: float = 0.0) -> bool: ...


IdT = TypeVar("IdT", bound=KeyIdentifier)
V = TypeVar("V", bound=Expiring)


class Verdict(enum.StrEnum):
    """What asking the function again for a held key showed (:meth:`KeyFetcher.revalidate`)."""

    HELD = "held"  # the function still hands out the same, unexpired key
    REVOKED = "revoked"  # a definite refusal (unknown, expired, de-registered, not for us)
    CHANGED = "changed"  # the same identifier now names another key value
    UNREACHABLE = "unreachable"  # no usable answer: network error, timeout, 5xx


@dataclass(frozen=True, slots=True)
class Revalidation:
    """A :meth:`KeyFetcher.revalidate` outcome; ``reason`` names identifiers, never keys."""

    verdict: Verdict
    reason: str = ""
    rsc: int | None = None
    #: The one-way fingerprint of the key answered (HELD, CHANGED), never the key.
    fingerprint: str | None = None

    @property
    def ends_sa(self) -> bool:
        return self.verdict in (Verdict.REVOKED, Verdict.CHANGED)


@dataclass(slots=True)
class FetcherStats:
    """Counters of a :class:`KeyFetcher` (no identifiers, no keys)."""

    cache_hits: int = 0
    retrievals: int = 0
    coalesced: int = 0
    refused: int = 0
    failed: int = 0
    connections: int = 0
    revalidations: int = 0
    revoked: int = 0


@dataclass(slots=True)
class _Link:
    conn: TLSConnection
    http: OneM2MClient


_CacheKey = tuple[bytes, str]


def _key(ident: KeyIdentifier) -> _CacheKey:
    return (ident.relative_bytes, ident.fqdn.lower())


def _address(value: object, what: str) -> tuple[str, int]:
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
    elif isinstance(value, str) and ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host.strip("[]")
        port = int(port_text) if port_text.isdigit() else -1
    else:
        raise ConfigurationError(f"{what}: address must be HOST:PORT, got {value!r}")
    if not isinstance(host, str) or not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"{what}: address must be HOST:PORT, got {value!r}")
    return host, port


def entity_binding(
    entity_id: str, sp_fqdn: str | None, key_id: str, valid_until: datetime
) -> PeerBinding:
    """Bind a session to the CSE-ID or AE-ID a MAF or MEF returned for its key: in its
    SP-relative form when it is absolute under our SP (docs/readings.md A-14), as the other
    frameworks bind. IdentifierError for an unusable identity."""
    entity = parse_entity_id(entity_id)
    if entity.sp_fqdn is not None and entity.sp_fqdn.lower() == sp_fqdn:
        peer = entity.sp_relative()
    else:
        peer = str(entity)
    kind = PeerKind.CSE if entity_kind(str(entity)) is PeerKind.CSE else PeerKind.AE
    return PeerBinding(peer, kind, key_id=key_id, valid_until=valid_until)


class KeyFetcher(Generic[IdT, V]):
    """Fetch keys by identifier from the functions named in ``addresses`` (module docstring).

    ``credential`` is our certificate (naming ``local_id``, inferred when not given);
    ``addresses`` maps each function's FQDN to its listener (``(host, port)`` or
    ``"host:port"``), whose certificate must name that FQDN (10.1.1.6). ``in_domain``,
    ``local_id`` and ``sp_fqdn`` are as for :class:`CertificateInitiator`. Answers are
    cached until they expire (at most ``cache_size``, least recently used first out); at
    most ``max_concurrent`` requests are in flight, each within ``timeout`` seconds, over at
    most ``pool_size`` kept-alive connections per function. Subclasses set the names used
    in messages and implement :meth:`_path` and :meth:`_read`.
    """

    #: "MAF" / "MEF", and the procedure, for messages.
    PEER: ClassVar[str]
    PROCEDURE: ClassVar[str]
    #: The error raised, built with (reason, rsc=None); the name of the relative ID.
    ERROR: ClassVar[type[Exception]]
    RELATIVE: ClassVar[str]
    #: The key's name in messages ("Kc", "Km"...).
    KEY_NAME: ClassVar[str] = "key"
    #: The function's answers that are definite refusals of a key (not outages): unknown,
    #: expired or de-registered (4004), not for us (4103).
    REFUSING_RSCS: ClassVar[frozenset[int]] = frozenset({4004, 4103})

    def __init__(
        self,
        credential: CertificateCredential,
        addresses: Mapping[str, tuple[str, int] | str],
        *,
        in_domain: str,
        local_id: str | None = None,
        sp_fqdn: str | None = None,
        cache_size: int = 1024,
        timeout: float = 5.0,
        max_concurrent: int = 64,
        pool_size: int = 4,
        tls13: bool = True,
        clock: Clock = utc_now,
    ) -> None:
        if cache_size < 1 or max_concurrent < 1 or pool_size < 0:
            raise ValueError("cache_size and max_concurrent must be positive")
        if not addresses:
            raise ConfigurationError(f"no {self.PEER} configured for {self.PROCEDURE}")
        self._addresses: dict[str, tuple[str, int]] = {}
        self._profiles: dict[str, TLSProfile] = {}
        self.local_id: str | None = None
        for fqdn_raw, value in addresses.items():
            fqdn = check_fqdn(fqdn_raw, f"{self.PEER} FQDN").lower()
            self._addresses[fqdn] = _address(value, f"{self.PEER} {fqdn}")
            try:
                initiator = CertificateInitiator.for_service(
                    credential, fqdn, in_domain=in_domain, local_id=local_id, sp_fqdn=sp_fqdn
                )
            except (CertificateError, IdentifierError) as exc:
                raise ConfigurationError(
                    f"{self.PEER} {self.PROCEDURE} credential: {exc}"
                ) from None
            self.local_id = initiator.local_id
            self._profiles[fqdn] = initiator.profile(tls13=tls13)
        self.cache_size = cache_size
        self.timeout = timeout
        self.pool_size = pool_size
        self.clock = clock
        self.stats = FetcherStats()
        self._cache: OrderedDict[_CacheKey, V] = OrderedDict()
        #: Retrievals in flight, shared by handshakes and revalidations of one identifier.
        self._inflight: dict[_CacheKey, asyncio.Task[V]] = {}
        self._idle: dict[str, list[_Link]] = {fqdn: [] for fqdn in self._addresses}
        self._limit = asyncio.Semaphore(max_concurrent)
        self._closed = False

    @property
    def key_name(self) -> str:
        return self.KEY_NAME

    def knows(self, fqdn: str) -> bool:
        """Whether ``fqdn`` is a configured function (no network call)."""
        return fqdn.lower() in self._addresses

    def cached(self, ident: IdT) -> V | None:
        """The cached, unexpired answer for ``ident``, if any."""
        key = _key(ident)
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit.expired(self.clock()):
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return hit

    def invalidate(self, ident: IdT | str) -> None:
        """Drop a cached key (the next handshake asks again)."""
        self._cache.pop(_key(self._parse_id(ident) if isinstance(ident, str) else ident), None)

    def _refuse(self, reason: str) -> Exception:
        self.stats.refused += 1
        return self.ERROR(reason)

    async def _get(self, value: IdT | str) -> V:
        """The key for ``value``: cached, coalesced or fetched; :attr:`ERROR` with a reason."""
        if self._closed:
            raise self.ERROR(f"the {self.PROCEDURE} client is closed")
        try:
            ident = self._parse_id(value) if isinstance(value, str) else value
        except IdentifierError as exc:
            raise self.ERROR(str(exc)) from None
        if not self.knows(ident.fqdn):
            raise self._refuse(
                f"{ident} names the {self.PEER} {ident.fqdn}, which is not configured"
            )
        if len(ident.relative_bytes) != RELATIVE_ID_LENGTH:
            raise self._refuse(
                f"{ident}: a {self.RELATIVE} is {RELATIVE_ID_LENGTH} octets (TS-0003 10.3.1)"
            )
        hit = self.cached(ident)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit
        got = await self._shared(ident)
        if got.expired(self.clock()):
            raise self._refuse(f"{self.key_name} of {ident} expired at {format_time(got.expires)}")
        return got

    def _shared(self, ident: IdT) -> asyncio.Future[V]:
        """The retrieval of ``ident`` in flight, else a new one (coalesced); shielded: one
        caller giving up (its handshake timed out) must not cancel the others."""
        key = _key(ident)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(ident))
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._done(k, t))  # type: ignore[misc]
        else:
            self.stats.coalesced += 1
        return asyncio.shield(task)

    async def revalidate(self, value: IdT | str, fingerprint: str | None = None) -> Revalidation:
        """Ask the function again for the key of ``value``, which a live SA holds (module
        docstring); ``fingerprint`` is that SA's key fingerprint
        (:func:`m2msec.crypto.fingerprint.key_fingerprint`), compared in constant time
        with the key answered (None: not compared). REVOKED drops the cached key."""
        try:
            ident = self._parse_id(value) if isinstance(value, str) else value
        except IdentifierError as exc:
            return Revalidation(Verdict.REVOKED, str(exc))
        key = _key(ident)
        if not self.knows(ident.fqdn) or len(ident.relative_bytes) != RELATIVE_ID_LENGTH:
            self._cache.pop(key, None)
            why = f"{ident} is not a key of a configured {self.PEER}"
            return Revalidation(Verdict.REVOKED, why)
        if self._closed:
            return Revalidation(Verdict.UNREACHABLE, f"the {self.PROCEDURE} client is closed")
        self.stats.revalidations += 1
        try:
            got = await self._shared(ident)
        except self.ERROR as exc:
            rsc = getattr(exc, "rsc", None)
            if rsc in self.REFUSING_RSCS:
                self._cache.pop(key, None)
                self.stats.revoked += 1
                return Revalidation(Verdict.REVOKED, str(exc), rsc)
            return Revalidation(Verdict.UNREACHABLE, str(exc), rsc)
        if got.expired(self.clock()):
            self._cache.pop(key, None)
            self.stats.revoked += 1
            return Revalidation(
                Verdict.REVOKED, f"{self.key_name} of {ident} expired at {format_time(got.expires)}"
            )
        fresh = key_fingerprint(self._secret(got))
        if fingerprint is not None and not hmac.compare_digest(fresh, fingerprint):
            self.stats.revoked += 1
            return Revalidation(
                Verdict.CHANGED,
                f"the {self.PEER} now gives another {self.key_name} for {ident}",
                fingerprint=fresh,
            )
        return Revalidation(Verdict.HELD, fingerprint=fresh)

    def _done(self, key: _CacheKey, task: asyncio.Task[V]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so that no waiter left is no warning

    async def _fetch(self, ident: IdT) -> V:
        fqdn = ident.fqdn.lower()
        what = f"{self.PROCEDURE} of {ident}"
        async with self._limit:
            try:
                response = await asyncio.wait_for(self._request(fqdn, ident), self.timeout)
            except TimeoutError:
                self.stats.failed += 1
                raise self.ERROR(f"{what}: the {self.PEER} {fqdn} did not answer in time") from None
            except HandshakeError as exc:
                self.stats.failed += 1
                host, port = self._addresses[fqdn]
                raise self.ERROR(
                    f"{what}: no channel to the {self.PEER} {fqdn} at {host}:{port}: {exc.reason}"
                ) from None
            except (ConnectionError, OSError) as exc:
                self.stats.failed += 1
                raise self.ERROR(
                    f"{what}: the connection to the {self.PEER} {fqdn} failed ({exc})"
                ) from None
        self.stats.retrievals += 1
        got = self._read(ident, response)
        key = _key(ident)
        if got.expired(self.clock()):
            self._cache.pop(key, None)  # the callers refuse it
            return got
        self._cache[key] = got
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return got

    def _parse_id(self, text: str) -> IdT:
        raise NotImplementedError

    def _path(self, ident: IdT) -> str:
        raise NotImplementedError

    def _secret(self, value: V) -> bytes:
        """The key in a fetched answer (for its fingerprint; never shown)."""
        raise NotImplementedError

    def _refusal(self, ident: IdT, rsc: int | None) -> str | None:
        """Why the function refused, for the RSCs that are refusals; None otherwise."""
        raise NotImplementedError

    def _answer(self, ident: IdT, response: OneM2MResponse) -> V:
        """The key in a successful ``response``; :attr:`ERROR` (or MafError) when malformed."""
        raise NotImplementedError

    def _read(self, ident: IdT, response: OneM2MResponse) -> V:
        refusal = self._refusal(ident, response.rsc)
        if refusal is not None:
            self.stats.refused += 1
            raise self.ERROR(refusal, response.rsc)
        try:
            return self._answer(ident, response)
        except self.ERROR:
            self.stats.failed += 1
            raise
        except MafError as exc:  # read by frameworks.maf.common.expect
            self.stats.failed += 1
            raise self.ERROR(exc.reason, exc.rsc) from None

    async def _request(self, fqdn: str, ident: IdT) -> OneM2MResponse:
        host, port = self._addresses[fqdn]
        target = self._path(ident)
        origin = self.local_id or ""
        for _ in range(2):
            idle = self._idle[fqdn]
            link = idle.pop() if idle else None
            reused = link is not None
            if link is None:
                conn = await tls_connect(host, port, self._profiles[fqdn], timeout=self.timeout)
                self.stats.connections += 1
                link = _Link(conn, OneM2MClient(conn, host=fqdn))
            try:
                response = await link.http.request("GET", target, origin=origin)
            except (ConnectionError, OSError):
                link.conn.abort()
                if reused:
                    # The peer closed a kept-alive connection; the other idle ones are likely
                    # as old: drop them all and try once more on a fresh connection.
                    self._drop_idle(fqdn)
                    continue
                raise
            except BaseException:
                link.conn.abort()  # cancelled mid-request: the HTTP state is unknown
                raise
            keep = response.headers.get("connection", "").lower() != "close"
            if keep and not self._closed and len(self._idle[fqdn]) < self.pool_size:
                self._idle[fqdn].append(link)
            else:
                with contextlib.suppress(Exception):
                    await link.conn.close()
            return response
        raise ConnectionError(f"the {self.PEER} closed the connection")

    def _drop_idle(self, fqdn: str) -> None:
        links, self._idle[fqdn] = self._idle[fqdn], []
        for link in links:
            link.conn.abort()

    async def close(self) -> None:
        """Close kept-alive connections and cancel fetches in flight."""
        self._closed = True
        for task in list(self._inflight.values()):
            task.cancel()
        for links in self._idle.values():
            while links:
                link = links.pop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.conn.close(), 1.0)
        self._cache.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
