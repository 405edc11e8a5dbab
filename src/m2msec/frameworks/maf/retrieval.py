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

import hmac
from typing import Any

from m2msec.frameworks.maf.common import (
    SUID_MAF_SAEF,
    KeyRetrievalError,
    RetrievedKc,
    expect,
    member,
)
from m2msec.frameworks.remote_keys import FetcherStats, KeyFetcher
from m2msec.keyids import KcId
from m2msec.maf import wire
from m2msec.service.onem2m_client import OneM2MResponse

__all__ = ["MafKeyRetriever", "RetrieverStats"]

#: The counters of a :class:`MafKeyRetriever` (no identifiers, no keys).
RetrieverStats = FetcherStats


class MafKeyRetriever(KeyFetcher[KcId, RetrievedKc]):
    """Entity B as Target MAF Client: Key Retrieval (8.8.2.8) over mutual TLS.

    ``credential`` is Entity B's certificate (naming its CSE-ID, 10.1.1.5), which the MAF
    checks against the key's targetIDs. ``addresses`` maps each MAF-FQDN Entity B may
    use to the address of that MAF's retrieval listener (``(host, port)`` or
    ``"host:port"``); the MAF's certificate must name the FQDN (10.1.1.6). ``in_domain``,
    ``local_id`` and ``sp_fqdn`` are as for :class:`CertificateInitiator`.

    Retrieved keys are cached until their expirationTime (at most ``cache_size``, least
    recently used first out); concurrent retrievals of one KcId share one request; at most
    ``max_concurrent`` requests are in flight, over at most ``pool_size`` kept-alive
    connections per MAF (:class:`~m2msec.frameworks.remote_keys.KeyFetcher`).
    """

    PEER = "MAF"
    PROCEDURE = "Key Retrieval"
    ERROR = KeyRetrievalError
    RELATIVE = "RelativeKeyID"
    KEY_NAME = "Kc"

    def __repr__(self) -> str:
        return f"MafKeyRetriever(mafs={sorted(self._addresses)!r}, local_id={self.local_id!r})"

    @property
    def mafs(self) -> dict[str, tuple[str, int]]:
        return dict(self._addresses)

    async def retrieve(self, kc_id: KcId | str) -> RetrievedKc:
        """Kc and its metadata for ``kc_id``; :class:`KeyRetrievalError` with a reason."""
        return await self._get(kc_id)

    def _parse_id(self, text: str) -> KcId:
        return KcId.parse(text)

    def _path(self, ident: KcId) -> str:
        return f"/maf/keys/{ident.relative_hex}"

    def _secret(self, value: RetrievedKc) -> bytes:
        return value.kc

    def _refusal(self, kc: KcId, rsc: int | None) -> str | None:
        fqdn = kc.maf_fqdn.lower()
        if rsc == 4004:
            return f"the MAF {fqdn} does not know {kc} (unknown, expired or de-registered)"
        if rsc == 4103:
            return (
                f"the MAF {fqdn} refuses to give us the Kc of {kc}: "
                f"{self.local_id} is not among its targetIDs"
            )
        return None

    def _answer(self, kc: KcId, response: OneM2MResponse) -> RetrievedKc:
        fqdn = kc.maf_fqdn.lower()
        doc = expect(response, 2000, f"Key Retrieval of {kc}", fqdn)
        return self._parse(kc, member(doc, "mafKey", f"Key Retrieval of {kc}", fqdn))

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
