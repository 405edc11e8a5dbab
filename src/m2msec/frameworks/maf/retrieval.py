"""Entity B as Target MAF Client: Key Retrieval of a Kc by its KcId (TS-0003 8.8.2.8).

:class:`MafKeyRetriever` reads the MAF-FQDN from the KcId (10.3.5), picks that MAF's
address from its configuration and asks for the RelativeKeyID over mutual TLS with
certificates (docs/readings.md A-17; 8.2.2.2 credentials: Entity B's names its CSE-ID,
10.1.1.5, the MAF's its FQDN, 10.1.1.6). Answers are cached until the Kc expires (bounded
LRU); concurrent lookups of the same KcId share one request; kept-alive connections to each
MAF are reused.

Keys never appear in ``repr``, logs or error messages; key identifiers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h11

from m2msec.crypto.keyexport import RELATIVE_ID_LENGTH
from m2msec.errors import CertificateError, ConfigurationError, HandshakeError, IdentifierError
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.frameworks.maf.common import (
    SUID_MAF_SAEF,
    Clock,
    KeyRetrievalError,
    MafError,
    RetrievedKc,
    expect,
    member,
    utc_now,
)
from m2msec.ids import check_fqdn
from m2msec.keyids import KcId
from m2msec.maf import wire
from m2msec.service.onem2m_client import OneM2MClient, OneM2MResponse
from m2msec.tls.aio import TLSConnection
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.profiles import TLSProfile

__all__ = ["MafKeyRetriever", "RetrieverStats"]


@dataclass(slots=True)
class RetrieverStats:
    """Counters of a :class:`MafKeyRetriever` (no identifiers, no keys)."""

    cache_hits: int = 0
    retrievals: int = 0
    coalesced: int = 0
    refused: int = 0
    failed: int = 0
    connections: int = 0


@dataclass(slots=True)
class _Link:
    conn: TLSConnection
    http: OneM2MClient


_CacheKey = tuple[bytes, str]


def _key(kc_id: KcId) -> _CacheKey:
    return (kc_id.relative_bytes, kc_id.maf_fqdn.lower())


def _address(value: object, fqdn: str) -> tuple[str, int]:
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
    elif isinstance(value, str) and ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host.strip("[]")
        port = int(port_text) if port_text.isdigit() else -1
    else:
        raise ConfigurationError(f"MAF {fqdn}: address must be HOST:PORT, got {value!r}")
    if not isinstance(host, str) or not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"MAF {fqdn}: address must be HOST:PORT, got {value!r}")
    return host, port


class MafKeyRetriever:
    """Entity B as Target MAF Client: Key Retrieval (8.8.2.8) over mutual TLS.

    ``credential`` is Entity B's certificate (naming its CSE-ID, 10.1.1.5), which the MAF
    checks against the key's targetIDs. ``maf_addresses`` maps each MAF-FQDN Entity B may
    use to the address of that MAF's retrieval listener (``(host, port)`` or
    ``"host:port"``); the MAF's certificate must name the FQDN (10.1.1.6). ``in_domain``,
    ``local_id`` and ``sp_fqdn`` are as for :class:`CertificateInitiator`.

    Retrieved keys are cached until their expirationTime (at most ``cache_size``, least
    recently used first out); concurrent retrievals of one KcId share one request; at most
    ``max_concurrent`` requests are in flight, over at most ``pool_size`` kept-alive
    connections per MAF.
    """

    def __init__(
        self,
        credential: CertificateCredential,
        maf_addresses: Mapping[str, tuple[str, int] | str],
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
        if not maf_addresses:
            raise ConfigurationError("no MAF configured for Key Retrieval")
        self._addresses: dict[str, tuple[str, int]] = {}
        self._profiles: dict[str, TLSProfile] = {}
        self.local_id: str | None = None
        for fqdn_raw, value in maf_addresses.items():
            fqdn = check_fqdn(fqdn_raw, "MAF FQDN").lower()
            self._addresses[fqdn] = _address(value, fqdn)
            try:
                initiator = CertificateInitiator.for_service(
                    credential, fqdn, in_domain=in_domain, local_id=local_id, sp_fqdn=sp_fqdn
                )
            except (CertificateError, IdentifierError) as exc:
                raise ConfigurationError(f"MAF Key Retrieval credential: {exc}") from None
            self.local_id = initiator.local_id
            self._profiles[fqdn] = initiator.profile(tls13=tls13)
        self.cache_size = cache_size
        self.timeout = timeout
        self.pool_size = pool_size
        self.clock = clock
        self.stats = RetrieverStats()
        self._cache: OrderedDict[_CacheKey, RetrievedKc] = OrderedDict()
        self._inflight: dict[_CacheKey, asyncio.Task[RetrievedKc]] = {}
        self._idle: dict[str, list[_Link]] = {fqdn: [] for fqdn in self._addresses}
        self._limit = asyncio.Semaphore(max_concurrent)
        self._closed = False

    def __repr__(self) -> str:
        return f"MafKeyRetriever(mafs={sorted(self._addresses)!r}, local_id={self.local_id!r})"

    @property
    def mafs(self) -> dict[str, tuple[str, int]]:
        return dict(self._addresses)

    def knows(self, maf_fqdn: str) -> bool:
        """Whether ``maf_fqdn`` is a configured MAF (no network call)."""
        return maf_fqdn.lower() in self._addresses

    def cached(self, kc_id: KcId) -> RetrievedKc | None:
        """The cached, unexpired answer for ``kc_id``, if any."""
        key = _key(kc_id)
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit.expired(self.clock()):
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return hit

    def invalidate(self, kc_id: KcId | str) -> None:
        """Drop a cached key (the next handshake asks the MAF again)."""
        kc = kc_id if isinstance(kc_id, KcId) else KcId.parse(kc_id)
        self._cache.pop(_key(kc), None)

    async def retrieve(self, kc_id: KcId | str) -> RetrievedKc:
        """Kc and its metadata for ``kc_id``; :class:`KeyRetrievalError` with a reason."""
        if self._closed:
            raise KeyRetrievalError("the key retriever is closed")
        try:
            kc = kc_id if isinstance(kc_id, KcId) else KcId.parse(kc_id)
        except IdentifierError as exc:
            raise KeyRetrievalError(str(exc)) from None
        if not self.knows(kc.maf_fqdn):
            self.stats.refused += 1
            raise KeyRetrievalError(f"{kc} names the MAF {kc.maf_fqdn}, which is not configured")
        if len(kc.relative_bytes) != RELATIVE_ID_LENGTH:
            self.stats.refused += 1
            raise KeyRetrievalError(
                f"{kc}: a RelativeKeyID is {RELATIVE_ID_LENGTH} octets (TS-0003 10.3.1)"
            )
        hit = self.cached(kc)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit
        key = _key(kc)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(kc))
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._done(k, t))  # type: ignore[misc]
        else:
            self.stats.coalesced += 1
        # shield: one caller giving up (its handshake timed out) must not cancel the others.
        return await asyncio.shield(task)

    def _done(self, key: _CacheKey, task: asyncio.Task[RetrievedKc]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so that no waiter left is no warning

    async def _fetch(self, kc: KcId) -> RetrievedKc:
        fqdn = kc.maf_fqdn.lower()
        async with self._limit:
            try:
                response = await asyncio.wait_for(self._request(fqdn, kc), self.timeout)
            except TimeoutError:
                self.stats.failed += 1
                raise KeyRetrievalError(
                    f"Key Retrieval of {kc}: the MAF {fqdn} did not answer in time"
                ) from None
            except HandshakeError as exc:
                self.stats.failed += 1
                host, port = self._addresses[fqdn]
                raise KeyRetrievalError(
                    f"Key Retrieval of {kc}: no channel to the MAF {fqdn} at {host}:{port}: "
                    f"{exc.reason}"
                ) from None
            except (ConnectionError, OSError, h11.ProtocolError) as exc:
                self.stats.failed += 1
                raise KeyRetrievalError(
                    f"Key Retrieval of {kc}: the connection to the MAF {fqdn} failed ({exc})"
                ) from None
        self.stats.retrievals += 1
        got = self._read(kc, response)
        if got.expired(self.clock()):
            self.stats.refused += 1
            raise KeyRetrievalError(f"Kc of {kc} expired at {wire.format_time(got.expires)}")
        self._cache[_key(kc)] = got
        self._cache.move_to_end(_key(kc))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return got

    async def _request(self, fqdn: str, kc: KcId) -> OneM2MResponse:
        host, port = self._addresses[fqdn]
        target = f"/maf/keys/{kc.relative_hex}"
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
            except (ConnectionError, OSError, h11.ProtocolError):
                link.conn.abort()
                if reused:
                    # The MAF closed a kept-alive connection; the other idle ones are likely
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
        raise ConnectionError("the MAF closed the connection")

    def _drop_idle(self, fqdn: str) -> None:
        links, self._idle[fqdn] = self._idle[fqdn], []
        for link in links:
            link.conn.abort()

    def _read(self, kc: KcId, response: OneM2MResponse) -> RetrievedKc:
        fqdn = kc.maf_fqdn.lower()
        if response.rsc == 4004:
            self.stats.refused += 1
            raise KeyRetrievalError(
                f"the MAF {fqdn} does not know {kc} (unknown, expired or de-registered)", 4004
            )
        if response.rsc == 4103:
            self.stats.refused += 1
            raise KeyRetrievalError(
                f"the MAF {fqdn} refuses to give us the Kc of {kc}: "
                f"{self.local_id} is not among its targetIDs",
                4103,
            )
        try:
            doc = expect(response, 2000, f"Key Retrieval of {kc}", fqdn)
            key = member(doc, "mafKey", f"Key Retrieval of {kc}", fqdn)
            return self._parse(kc, key)
        except KeyRetrievalError:
            self.stats.failed += 1
            raise
        except MafError as exc:
            self.stats.failed += 1
            raise KeyRetrievalError(exc.reason, exc.rsc) from None

    def _parse(self, kc: KcId, key: dict[str, Any]) -> RetrievedKc:
        fqdn = kc.maf_fqdn.lower()
        what = f"Key Retrieval of {kc}: the MAF {fqdn} answered"
        try:
            body = wire.MafKeyBody.parse(key)
        except wire.WireError as exc:
            raise KeyRetrievalError(f"{what}: {exc}") from None
        if not hmac.compare_digest(body.relative_id, kc.relative_bytes):
            raise KeyRetrievalError(f"{what} for another relativeKeyID")
        if body.suid != SUID_MAF_SAEF:
            raise KeyRetrievalError(
                f"{what} SUID {body.suid!r}: the key is not for the MAF-based SAEF (32)"
            )
        return RetrievedKc(
            kc_id=kc,
            kc=body.key_value,
            expires=body.expires,
            km_id=body.source_client_id,
            entity_id=body.entity_id,
            suid=SUID_MAF_SAEF,
            admin_fqdn=body.admin_fqdn,
            labels=body.labels or (),
        )

    async def close(self) -> None:
        """Close kept-alive connections and cancel retrievals in flight."""
        self._closed = True
        for task in list(self._inflight.values()):
            task.cancel()
        for links in self._idle.values():
            while links:
                link = links.pop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.conn.close(), 1.0)
        self._cache.clear()

    async def __aenter__(self) -> MafKeyRetriever:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
