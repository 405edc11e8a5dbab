"""Provisioned Symmetric Key Security Association Establishment (TS-0003 8.2.2.1).

Entity A (initiator) and Entity B (responder) share Kpsa under the identifier KpsaId and
run a (D)TLS-PSK handshake (RFC 4279) with psk_identity = KpsaId and psk = Kpsa, using
the cipher-suite profile of 10.2.2.

* Entity B looks KpsaId up in its psk-lookup-table (TR-0038 7.1.2) and binds the
  session to the entity identity of that row: the AE-ID or CSE-ID, or, when the row has
  none, the Credential-ID ``12-<KpsaId>`` (10.4, docs/readings.md A-13).
* Entity A binds the session to its configured IdB (NOTE 2 of 8.2.2.1).

No identity hint is sent (docs/readings.md A-29); a client ignores any hint it receives.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from m2msec.errors import HandshakeError, IdentifierError
from m2msec.ids import entity_kind
from m2msec.keyids import CredentialId, KpsaId
from m2msec.store.base import PskEntry, PskStore
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import TLSProfile, Transport, new_profile, psk_suites

log = logging.getLogger(__name__)

def psk_profile(
    transport: Transport,
    *,
    server_side: bool,
    tls13: bool,
    local_id: str | None,
    framework: Framework = Framework.PROVISIONED_PSK,
) -> TLSProfile:
    """The start of every PSK role's profile (this framework's, the MAF's, the MEF
    bootstrap's): the 10.2.2 suites (CCM_8 first over DTLS, 10.2.1), no callables yet."""
    return new_profile(
        framework,
        transport,
        server_side=server_side,
        suites=psk_suites(transport),
        tls13=tls13,
        local_id=local_id,
    )


#: Below this length a Kpsa is accepted with a warning (TR-0038's examples are 8 octets).
WEAK_KEY_OCTETS = 16


def binding_for(entry: PskEntry) -> PeerBinding:
    """The identity Entity B associates with a session keyed by ``entry``."""
    return _binding(entry.entity_id, entry.kpsa_id, entry.expires_at)


# Parsing identifiers is a tenth of a DTLS handshake's server CPU; rows change rarely, so
# the results are kept (bounded). PeerBinding is immutable, so sharing one is safe.
@functools.lru_cache(maxsize=8192)
def _binding(entity_id: str | None, kpsa_id: str, expires_at: datetime | None) -> PeerBinding:
    if entity_id:
        return PeerBinding(
            peer_id=entity_id,
            kind=entity_kind(entity_id),
            key_id=kpsa_id,
            valid_until=expires_at,
        )
    return PeerBinding(
        peer_id=str(CredentialId.for_kpsa_id(kpsa_id)),
        kind=PeerKind.CREDENTIAL,
        key_id=kpsa_id,
        valid_until=expires_at,
    )


@functools.lru_cache(maxsize=8192)
def _check_kpsa_id(text: str) -> None:
    """Raises IdentifierError for a malformed KpsaId (only well-formed ones are cached)."""
    KpsaId.parse(text)


class PskResponder:
    """Entity B of the provisioned-PSK framework, backed by a psk-lookup-table."""

    def __init__(
        self,
        store: PskStore,
        *,
        local_id: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.local_id = local_id
        self._clock = clock

    def resolve(self, identity: bytes) -> tuple[bytes, PeerBinding]:
        """OpenSSL's PSK lookup: psk_identity -> (Kpsa, binding); refusals raise."""
        try:
            text = identity.decode("utf-8")
            _check_kpsa_id(text)
        except (UnicodeDecodeError, IdentifierError) as exc:
            raise HandshakeError(f"malformed psk_identity: {exc}") from None
        entry = self.store.get(text)
        if entry is None:
            raise HandshakeError(f"unknown psk_identity {text!r}")
        if entry.expired(self._clock()):
            raise HandshakeError(f"Kpsa for psk_identity {text!r} has expired")
        return entry.kpsa, binding_for(entry)

    def profile(self, transport: Transport = Transport.TLS, *, tls13: bool = True) -> TLSProfile:
        profile = psk_profile(transport, server_side=True, tls13=tls13, local_id=self.local_id)
        return replace(profile, psk_resolver=self.resolve)


class PskInitiator:
    """Entity A of the provisioned-PSK framework: one (KpsaId, Kpsa) for one IdB."""

    def __init__(
        self,
        kpsa_id: str,
        kpsa: bytes,
        id_b: str,
        *,
        local_id: str | None = None,
        server_name: str | None = None,
        verbatim: bool = False,
    ) -> None:
        # verbatim: a GBA bootstrap's KpsaID, the B-TID, skips 10.6's characters (A-25).
        KpsaId.parse(kpsa_id, verbatim=verbatim)
        if not 0 < len(kpsa) <= 64:
            raise ValueError("Kpsa must be 1 to 64 octets")
        if len(kpsa) < WEAK_KEY_OCTETS:
            log.warning("Kpsa for %s is only %d octets; 16 or more is advised", kpsa_id, len(kpsa))
        self.kpsa_id = kpsa_id
        self._kpsa = kpsa
        self.id_b = id_b
        self.local_id = local_id
        self.server_name = server_name

    def __repr__(self) -> str:
        return f"PskInitiator(kpsa_id={self.kpsa_id!r}, id_b={self.id_b!r})"

    def offer(self, hint: bytes | None) -> tuple[bytes, bytes, PeerBinding]:
        # docs/readings.md A-29: no hint is defined for this framework; ignore any we get.
        binding = PeerBinding(peer_id=self.id_b, kind=entity_kind(self.id_b), key_id=self.kpsa_id)
        return self.kpsa_id.encode(), self._kpsa, binding

    def profile(self, transport: Transport = Transport.TLS, *, tls13: bool = True) -> TLSProfile:
        profile = psk_profile(transport, server_side=False, tls13=tls13, local_id=self.local_id)
        return replace(profile, psk_offer=self.offer, server_name=self.server_name)
