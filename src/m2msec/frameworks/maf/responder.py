"""Entity B of the MAF-based SAEF: the TLS-PSK server that resolves KcIds (TS-0003 8.2.2.3).

:class:`MafResponder` resolves the psk_identity with the engine's asynchronous PSK hook
(:attr:`m2msec.tls.profiles.TLSProfile.psk_async_resolver`) by Key Retrieval (8.8.2.8) and
binds the session (docs/readings.md A-06) to the CSE-ID or AE-ID the MAF returned, else to
the Credential-ID ``11-<KmID>`` (10.4); key_id = KcId and valid_until = the Kc's
expirationTime. Identities that are not KcIds (10.3.5) of a configured MAF are refused
without any network call; unknown, expired or refused keys fail the handshake
(unknown_psk_identity in TLS 1.2).

Keys never appear in ``repr``, logs or error messages; key identifiers do.
"""

from __future__ import annotations

from dataclasses import replace

from m2msec.errors import HandshakeError, IdentifierError
from m2msec.frameworks.maf.common import (
    Clock,
    KeyRetrievalError,
    RetrievedKc,
    maf_profile,
    printable,
)
from m2msec.frameworks.maf.retrieval import MafKeyRetriever
from m2msec.frameworks.remote_keys import entity_binding
from m2msec.ids import check_fqdn
from m2msec.keyids import CredentialId, KcId, KmId
from m2msec.maf import wire
from m2msec.tls.context import PeerBinding, PeerKind
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = ["MafResponder"]


def _km_credential(km_id: str) -> str:
    try:
        km = KmId.parse(km_id)
    except IdentifierError:
        km = KmId.parse(km_id, verbatim=True)  # a GBA B-TID as KmID (docs/readings.md A-25)
    return str(CredentialId.for_km_id(km))


class MafResponder:
    """Entity B of the MAF-based framework (8.2.2.3): TLS-PSK server resolving KcIds.

    ``local_id`` is Entity B's own CSE-ID; ``sp_fqdn`` the local M2M-SP FQDN, under which
    absolute identities from the MAF are shortened to their SP-relative form (docs/readings.md
    A-14), as the other frameworks bind them.
    """

    def __init__(
        self,
        retriever: MafKeyRetriever,
        local_id: str | None = None,
        *,
        sp_fqdn: str | None = None,
        require_sni: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.retriever = retriever
        self.local_id = local_id
        self.sp_fqdn = check_fqdn(sp_fqdn, "M2M-SP FQDN").lower() if sp_fqdn else None
        self.require_sni = require_sni
        self.clock = clock or retriever.clock

    def __repr__(self) -> str:
        return f"MafResponder(local_id={self.local_id!r}, mafs={sorted(self.retriever.mafs)!r})"

    def binding_for(self, got: RetrievedKc) -> PeerBinding:
        """IdA from the MAF (AE-ID or CSE-ID), else the Credential-ID ``11-<KmID>`` (10.4)."""
        if got.entity_id:
            try:
                return entity_binding(got.entity_id, self.sp_fqdn, str(got.kc_id), got.expires)
            except IdentifierError as exc:
                raise HandshakeError(
                    f"the MAF gave an unusable entity ID for {got.kc_id}: {exc}"
                ) from None
        try:
            credential = _km_credential(got.km_id)
        except IdentifierError as exc:
            raise HandshakeError(
                f"the MAF gave an unusable Source MAF Client ID for {got.kc_id}: {exc}"
            ) from None
        return PeerBinding(
            credential, PeerKind.CREDENTIAL, key_id=str(got.kc_id), valid_until=got.expires
        )

    async def resolve(
        self, identity: bytes, cipher_suite: int | None = None
    ) -> tuple[bytes, PeerBinding]:
        """The engine's asynchronous PSK lookup: KcId -> (Kc, binding); refusals raise."""
        try:
            kc_id = KcId.parse(identity.decode("ascii"))
        except (UnicodeDecodeError, IdentifierError):
            raise HandshakeError(
                f"psk_identity {printable(identity)!r} is not a MAF Key Identifier "
                "(hexBinary(KcID)@MAF-FQDN, TS-0003 10.3.5)"
            ) from None
        if not self.retriever.knows(kc_id.maf_fqdn):
            raise HandshakeError(f"{kc_id} names the MAF {kc_id.maf_fqdn}, which is not ours")
        try:
            got = await self.retriever.retrieve(kc_id)
        except KeyRetrievalError as exc:
            raise HandshakeError(exc.reason) from None
        if got.expired(self.clock()):
            raise HandshakeError(f"Kc of {kc_id} expired at {wire.format_time(got.expires)}")
        return got.kc, self.binding_for(got)

    def resumption_check(self, binding: PeerBinding) -> PeerBinding | None:
        """Before a session is resumed (when resumption is enabled, m2msec.tls.sessions):
        its Kc must still be held and unexpired; otherwise a full handshake asks the MAF."""
        try:
            kc_id = KcId.parse(binding.key_id or "")
        except IdentifierError:
            raise HandshakeError("session not resumed: it carries no KcId") from None
        if self.retriever.cached(kc_id) is None:
            raise HandshakeError(f"session not resumed: the Kc of {kc_id} is no longer held")
        return None

    def profile(self, transport: Transport = Transport.TLS, *, tls13: bool = True) -> TLSProfile:
        """Entity B's profile: the 10.2.2 PSK suites and the asynchronous KcId lookup."""
        start = maf_profile(transport, server_side=True, tls13=tls13, local_id=self.local_id)
        return replace(
            start,
            psk_async_resolver=self.resolve,
            require_sni=self.require_sni,
            resumption_check=self.resumption_check,
        )
