"""Entity A of the MAF-based SAEF towards one Entity B (TS-0003 8.2.2.3, seed 001).

:class:`MafInitiator` runs TLS-PSK (or DTLS-PSK, 10.2.1) with Entity B, psk_identity =
KcId (10.3.5), psk = Kc, and binds the session to its configured IdB. The whole 32-octet
Kc is the psk (our reading; V3.18 8.8.1 says "first half" where a protocol needs one key:
a documented deviation). It reuses a valid Kc; once the Kc is past its lifetime, or a
handshake with it fails in a way that says Entity B refused it (docs/readings.md A-16), it
runs a fresh MAF Handshake and Key Registration (8.8.2.2, 8.8.2.7) by itself and retries
once.

Keys never appear in ``repr``, logs or error messages; key identifiers do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import timedelta
from typing import TypeVar

from m2msec.errors import HandshakeError
from m2msec.frameworks.maf.client import MafClient, absolute_target
from m2msec.frameworks.maf.common import Clock, IssuedKc, MafError, maf_profile
from m2msec.ids import entity_kind, parse_entity_id
from m2msec.tls.aio import TLSConnection
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.aio_dtls import DTLSAssociation, dtls_connect
from m2msec.tls.context import PeerBinding, PeerKind
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = ["MafInitiator"]

log = logging.getLogger(__name__)

_Channel = TypeVar("_Channel")


def _kc_refused(reason: str) -> bool:
    """Whether a failed handshake may mean Entity B refused our Kc (docs/readings.md A-16).

    Entity B fails the handshake with an alert (unknown_psk_identity in TLS 1.2; TLS 1.3
    falls back to a handshake_failure). A peer we could not reach, or that did not answer
    in time, says nothing about the Kc.
    """
    lowered = reason.lower()
    return not (lowered.startswith("cannot reach") or "timed out" in lowered)


class MafInitiator:
    """Entity A of the MAF-based framework towards one Entity B (8.2.2.3).

    ``target_id`` is IdB as registered in targetIDs (an Absolute CSE-ID or AE-ID, 8.8.2.7;
    with ``sp_fqdn`` an SP-relative one is made absolute under it); ``id_b`` the identity
    the session is bound to (default: ``target_id`` as given). ``server_name`` is the SNI
    for Entity B. ``lifetime`` is the Kc lifetime to propose; a Kc is renewed
    ``renew_before`` seconds before it expires. ``entity_a_kind="cse"`` declares Entity A a
    CSE, which seed 001 (8.2.2.3 Credential Configuration) requires to be configured with
    its CSE-ID: ``local_id`` must then be that CSE-ID.
    """

    def __init__(
        self,
        maf_client: MafClient,
        target_id: str,
        server_name: str | None = None,
        *,
        id_b: str | None = None,
        local_id: str | None = None,
        lifetime: timedelta | float | None = None,
        renew_before: float = 5.0,
        tls13: bool = True,
        sp_fqdn: str | None = None,
        clock: Clock | None = None,
        entity_a_kind: str | None = None,
    ) -> None:
        if entity_a_kind not in (None, "cse", "ae"):
            raise ValueError(f"unknown Entity A kind {entity_a_kind!r}; cse or ae")
        if entity_a_kind == "cse" and (
            local_id is None or entity_kind(local_id) is not PeerKind.CSE
        ):
            raise ValueError("an Entity A that is a CSE needs its CSE-ID (seed 001)")
        self.entity_a_kind = entity_a_kind
        self.maf_client = maf_client
        parse_entity_id(target_id)  # a malformed IdB fails here, not at the MAF
        self.id_b = id_b or target_id
        self.target_id = absolute_target(target_id, sp_fqdn) if sp_fqdn else target_id
        self._kind = entity_kind(self.id_b)
        self.server_name = server_name
        self.local_id = local_id
        if isinstance(lifetime, int | float):
            lifetime = timedelta(seconds=lifetime)
        self.lifetime = lifetime
        self.renew_before = renew_before
        self.tls13 = tls13
        self.clock = clock or maf_client.clock
        self._current: IssuedKc | None = None
        #: The profiles offering the current Kc, one a transport (built on first use).
        self._profiles: dict[Transport, TLSProfile] = {}
        self._lock = asyncio.Lock()
        #: How many Key Registrations this initiator has run (for tests and logs).
        self.registrations = 0

    def __repr__(self) -> str:
        return f"MafInitiator(target_id={self.target_id!r}, maf={self.maf_client.maf_fqdn!r})"

    @property
    def current(self) -> IssuedKc | None:
        """The Kc in use, if any (Entity A's store of Kc and KcId)."""
        return self._current

    def _usable(self, issued: IssuedKc | None) -> bool:
        return issued is not None and not issued.expired(self.clock(), self.renew_before)

    def invalidate(self) -> None:
        """Forget the current Kc (e.g. after Entity B answered 4107 on expiry)."""
        self._current = None
        self._profiles.clear()

    async def kc(self) -> IssuedKc:
        """A Kc valid for a while yet, registering a fresh one when needed."""
        current = self._current
        if current is not None and self._usable(current):
            return current
        return await self._renew(current)

    async def _renew(self, stale: IssuedKc | None) -> IssuedKc:
        async with self._lock:
            current = self._current
            if current is not None and current is not stale and self._usable(current):
                return current  # another task renewed meanwhile
            issued = await self.maf_client.register_key(self.target_id, self.lifetime)
            self.registrations += 1
            self._current = issued
            self._profiles.clear()
            return issued

    async def update_key(
        self, *, lifetime: timedelta | None = None, labels: Iterable[str] | None = None
    ) -> IssuedKc:
        """Key Registration Update (8.8.2.9) of the current Kc; the Kc in use then carries
        the expiry the MAF granted, so it is not renewed before that."""
        async with self._lock:
            current = self._current
            if current is None:
                raise MafError("no Kc yet: call kc() or connect() first")
            new_labels = tuple(labels) if labels is not None else None
            expires = await self.maf_client.update_key(
                current.kc_id, lifetime=lifetime, labels=new_labels
            )
            updated = replace(
                current,
                expires=expires if expires is not None else current.expires,
                labels=new_labels if new_labels is not None else current.labels,
            )
            self._current = updated
            self._profiles.clear()  # their binding's valid_until was the old expiry
            return updated

    def profile(
        self, issued: IssuedKc | None = None, transport: Transport = Transport.TLS
    ) -> TLSProfile:
        """The TLS-PSK (or, with ``transport=Transport.DTLS``, DTLS-PSK: TS-0003 10.2.1,
        CCM_8 first) profile offering ``issued`` (default: the current Kc)."""
        issued = issued or self._current
        if issued is None:
            raise MafError("no Kc yet: call kc() or connect() first")
        cached = self._profiles.get(transport)
        if cached is not None and issued is self._current:
            return cached
        binding = PeerBinding(
            peer_id=self.id_b,
            kind=self._kind,
            key_id=str(issued.kc_id),
            valid_until=issued.expires,
        )
        identity = str(issued.kc_id).encode()
        kc = issued.kc

        def offer(hint: bytes | None) -> tuple[bytes, bytes, PeerBinding]:
            return identity, kc, binding  # any identity hint is ignored

        start = maf_profile(transport, server_side=False, tls13=self.tls13, local_id=self.local_id)
        profile = replace(start, psk_offer=offer, server_name=self.server_name)
        if issued is self._current:
            self._profiles[transport] = profile
        return profile

    async def connect(self, host: str, port: int, *, timeout: float = 10.0) -> TLSConnection:
        """Associate with Entity B; renew the Kc and retry once if B refuses it."""

        def dial(issued: IssuedKc) -> Awaitable[TLSConnection]:
            return tls_connect(host, port, self.profile(issued), timeout=timeout)

        return await self._associate(dial, "handshake")

    async def connect_dtls(self, host: str, port: int, *, timeout: float = 10.0) -> DTLSAssociation:
        """:meth:`connect` over DTLS 1.2 (CoAP binding, TS-0003 10.2.1): the same Kc and
        KcId as psk_identity, the DTLS-PSK suites; renew and retry once if B refuses it."""

        def dial(issued: IssuedKc) -> Awaitable[DTLSAssociation]:
            return dtls_connect(self.profile(issued, Transport.DTLS), host, port, timeout=timeout)

        return await self._associate(dial, "DTLS handshake")

    async def _associate(
        self, dial: Callable[[IssuedKc], Awaitable[_Channel]], what: str
    ) -> _Channel:
        """Dial with a valid Kc; if it was not fresh and B refused it, renew and dial once more."""
        before = self._current
        issued = await self.kc()
        fresh = issued is not before
        try:
            return await dial(issued)
        except HandshakeError as exc:
            if fresh or not _kc_refused(exc.reason):
                raise
            log.info(
                "%s with KcId %s failed (%s); running a fresh MAF Handshake",
                what,
                issued.kc_id,
                exc.reason,
            )
        renewed = await self._renew(issued)
        try:
            return await dial(renewed)
        except HandshakeError as exc:
            raise HandshakeError(f"{exc.reason} (also with a fresh Kc {renewed.kc_id})") from None
