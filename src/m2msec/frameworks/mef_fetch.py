"""An Enrolment Target fetching its credential from the MEF (TS-0003 8.3.2.1 step f, seed 004;
V3.18 8.3.5.2.8).

An Enrolee presents its KeID (``hexBinary(RelativeKeID)@MEF-FQDN``, 10.3.4) as the
psk_identity to its Enrolment Target, which does not know it and asks the MEF named in
it: ``GET /fetchCredentials/<KeID>/<SUID>`` over mutual TLS with certificates, the
target's certificate naming its MAF-ID (an FQDN certificate, 10.1.1.6) or its CSE-ID /
AE-ID (10.1.1.5), the MEF's its FQDN, and ``X-M2M-Origin`` the same identity
(docs/mef.md sections 2 and 3). The SUID is the target's usage: 21 for a MAF (the answer
is Km, 10.3.2), 22 for an Enrolee B (Kpsa, 10.3.3).

:class:`MefCredentialFetcher` is a :class:`~m2msec.frameworks.remote_keys.KeyFetcher` as
the MAF's Key Retrieval client is: answers cached until their lifetime ends (Ke's
Enrolment Expiry, docs/readings.md A-28), concurrent fetches of one KeID coalesced, each
bounded by ``timeout`` so that a MEF down or slow fails the waiting handshake in bounded
time. Messages and audit lines come from :mod:`m2msec.mef.wire`.

:class:`MefKeyRetriever` is the same client running V3.18's MEF Key Retrieval
(8.3.5.2.8) instead: ``GET /mef/keys/<RelativeKeyID>`` answered by ``mefKey``, mapped as
the MAF's Key Retrieval (docs/mef.md section 3b, docs/readings.md A-32). The MEF answers
both with one handler, so both give the same credential, Enrolee-ID and lifetime; a
target picks one with :func:`fetcher_class` (the gateway's ``[mef] retrieval``, the MAF's
``mef_retrieval``).

Keys never appear in ``repr``, logs or error messages; KeIDs do.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from m2msec.errors import M2MSecError
from m2msec.frameworks.maf.common import expect, utc_now
from m2msec.frameworks.remote_keys import KeyFetcher
from m2msec.keyids import KeId
from m2msec.mef import wire
from m2msec.mef.records import SUID_ENROLEE_B, SUID_MAF
from m2msec.mef.wire import TargetRetrieval
from m2msec.service.onem2m_client import OneM2MResponse

__all__ = [
    "CredentialFetchError",
    "FetchedCredential",
    "MefCredentialFetcher",
    "MefKeyRetriever",
    "TargetRetrieval",
    "fetcher_class",
]


class CredentialFetchError(M2MSecError):
    """fetchCredentials failed: ``rsc`` is the MEF's Response Status Code when it answered.

    Messages name KeIDs and identities, never keys.
    """

    def __init__(self, reason: str, rsc: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rsc = rsc


@dataclass(frozen=True, slots=True)
class FetchedCredential:
    """Table 8.3.2.1-5 as the target keeps it: Km or Kpsa under the KeID, the Enrolee-ID
    to bind, and when the credential ends; ``credential`` is never in ``repr``."""

    ke_id: KeId
    credential: bytes = field(repr=False)
    enrolee_id: str
    expires: datetime
    suid: int

    def expired(self, now: datetime | None = None, margin: float = 0.0) -> bool:
        """True once fewer than ``margin`` seconds of the lifetime remain."""
        return (now or utc_now()) + timedelta(seconds=margin) >= self.expires


class MefCredentialFetcher(KeyFetcher[KeId, FetchedCredential]):
    """An Enrolment Target's fetchCredentials client (module docstring).

    ``credential`` is the target's certificate; ``addresses`` maps each MEF-FQDN a KeID
    may name to that MEF's target listener (``(host, port)`` or ``"host:port"``); the other
    options are :class:`~m2msec.frameworks.remote_keys.KeyFetcher`'s. Our ``local_id``
    says which target we are: a CSE-ID or AE-ID is an Enrolee B (SUID 22, Kpsa), an FQDN a
    MAF (SUID 21, Km).
    """

    PEER = "MEF"
    PROCEDURE = "fetchCredentials"
    ERROR = CredentialFetchError
    RELATIVE = "RelativeKeID"

    @property
    def enrolee_b(self) -> bool:
        """Whether we fetch as an Enrolee B: our identity is a CSE-ID or AE-ID, not the
        FQDN a MAF's certificate names (10.1.1.6), as the MEF types its requesters."""
        local = self.local_id or ""
        return "/" in local or "." not in local

    @property
    def suid(self) -> int:
        """Our usage: 22 (Kpsa) for an Enrolee B, 21 (Km) for a MAF."""
        return SUID_ENROLEE_B if self.enrolee_b else SUID_MAF

    @property
    def key_name(self) -> str:
        return "Kpsa" if self.enrolee_b else "Km"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mefs={sorted(self._addresses)!r}, "
            f"local_id={self.local_id!r}, suid={self.suid})"
        )

    @property
    def mefs(self) -> dict[str, tuple[str, int]]:
        return dict(self._addresses)

    async def fetch(self, ke_id: KeId | str) -> FetchedCredential:
        """Our credential for ``ke_id``; :class:`CredentialFetchError` with a reason."""
        return await self._get(ke_id)

    def _parse_id(self, text: str) -> KeId:
        return KeId.parse(text)

    def _path(self, ident: KeId) -> str:
        return wire.fetch_path(ident, self.suid)

    def _secret(self, value: FetchedCredential) -> bytes:
        return value.credential

    def _refusal(self, ke: KeId, rsc: int | None) -> str | None:
        fqdn = ke.mef_fqdn.lower()
        if rsc == 4004:
            return (
                f"the MEF {fqdn} has no enrolment {ke} for {self.local_id} "
                "(unknown, expired, or enrolled for another target)"
            )
        if rsc in (4103, 4106):
            return (
                f"the MEF {fqdn} refuses {self.local_id} the credential of {ke}: not an "
                f"Enrolment Target there, or not for SUID {self.suid} (RSC {rsc})"
            )
        return None

    def _answer(self, ke: KeId, response: OneM2MResponse) -> FetchedCredential:
        fqdn = ke.mef_fqdn.lower()
        asked = f"fetchCredentials of {ke}"
        what = f"{asked}: the MEF {fqdn} answered"
        try:
            answer = wire.parse_fetch_answer(expect(response, 2000, asked, fqdn, peer="MEF"))
        except wire.WireError as exc:
            raise CredentialFetchError(f"{what}: {exc}") from None
        if isinstance(answer, wire.FetchFailure):
            raise CredentialFetchError(f"{what} status false")
        same = hmac.compare_digest(answer.ke_id.relative_bytes, ke.relative_bytes)
        if not same or answer.ke_id.mef_fqdn.lower() != fqdn:
            raise CredentialFetchError(f"{what} for another KeID")
        if answer.suid != self.suid:
            raise CredentialFetchError(f"{what} SUID {answer.suid}, not ours ({self.suid})")
        return FetchedCredential(
            ke_id=ke,
            credential=answer.credential,
            enrolee_id=answer.enrolee_id,
            expires=answer.expires,
            suid=answer.suid,
        )


class MefKeyRetriever(MefCredentialFetcher):
    """An Enrolment Target's MEF Key Retrieval client (8.3.5.2.8; module docstring): the
    interface, cache, bounds and refusals of :class:`MefCredentialFetcher`, the request
    ``GET /mef/keys/<RelativeKeyID>`` (table 8.3.5.2.8-1) and the ``mefKey`` answer (table
    8.3.5.2.8-2), checked for the RelativeKeyID asked for and our SUID."""

    PROCEDURE = "MEF Key Retrieval"
    RELATIVE = "RelativeKeyID"

    def _path(self, ident: KeId) -> str:
        return wire.key_path(ident)

    def _answer(self, ke: KeId, response: OneM2MResponse) -> FetchedCredential:
        fqdn = ke.mef_fqdn.lower()
        asked = f"MEF Key Retrieval of {ke}"
        what = f"{asked}: the MEF {fqdn} answered"
        try:
            body = wire.MefKeyBody.parse(expect(response, 2000, asked, fqdn, peer="MEF"))
        except wire.WireError as exc:
            raise CredentialFetchError(f"{what}: {exc}") from None
        if not hmac.compare_digest(body.relative_id, ke.relative_bytes):
            raise CredentialFetchError(f"{what} for another relativeKeyID")
        if body.suid != self.suid:
            raise CredentialFetchError(f"{what} SUID {body.suid}, not ours ({self.suid})")
        return FetchedCredential(
            ke_id=ke,
            credential=body.key_value,
            enrolee_id=body.enrolee_id,
            expires=body.expires,
            suid=body.suid,
        )


def fetcher_class(retrieval: TargetRetrieval | str) -> type[MefCredentialFetcher]:
    """The client of ``retrieval`` ("fetch-credentials" or "key-retrieval")."""
    if TargetRetrieval(retrieval) is TargetRetrieval.KEY_RETRIEVAL:
        return MefKeyRetriever
    return MefCredentialFetcher
