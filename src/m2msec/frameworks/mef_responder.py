"""Enrolee B: the TLS-PSK server that resolves KeIDs at the MEF (TS-0003 8.3.2.1, seed 004).

After its enrolment an Enrolee holds Kpsa = HMAC-SHA-256(Ke, ... || Enrolee-B-ID) (10.3.3)
and presents its KeID as psk_identity to Enrolee B (our gateway), which runs the
Provisioned Symmetric Key framework (8.2.2.1) with that remotely provisioned key:
:class:`MefResponder` answers the engine's asynchronous PSK lookup
(:attr:`m2msec.tls.profiles.TLSProfile.psk_async_resolver`) with fetchCredentials at the
MEF named in the KeID (SUID 22, :class:`~m2msec.frameworks.mef_fetch.MefCredentialFetcher`)
and binds the session to the Enrolee-ID the MEF returned, as a psk-lookup-table row with
an entity ID binds it: key_id = KeID, valid_until = the credential's lifetime. Identities
that are not KeIDs of a configured MEF are refused without any network call; a MEF that
refuses, is down or is slow fails the handshake (unknown_psk_identity in TLS 1.2) within
the fetcher's timeout. A resumed session needs its Kpsa still held and unexpired.

With ``gba`` (the gateway's NAF, ``[gba]``), a psk_identity that is a B-TID is the KeID of
the GBA-based bootstrap (seed 004 8.3.3.1, V3.18 8.3.2.3; KpsaID = B-TID verbatim,
docs/readings.md A-25): Kpsa = Ks_NAF for NAF_Id = our NAF FQDN || 01 00 01 00 AE (A-31),
fetched over Zn from the MEF's BSF (GUSS-gated there), bound as the USS says
(:func:`m2msec.frameworks.gba.binding_for_naf_key`). Such sessions are not resumed.

Keys never appear in ``repr``, logs or error messages; KeIDs do.
"""

from __future__ import annotations

from dataclasses import replace

from m2msec.errors import HandshakeError, IdentifierError
from m2msec.frameworks.gba import GbaResponder, is_btid
from m2msec.frameworks.maf.common import Clock, printable
from m2msec.frameworks.mef.gba import enrolment_naf_id
from m2msec.frameworks.mef_fetch import CredentialFetchError, MefCredentialFetcher
from m2msec.frameworks.remote_keys import entity_binding
from m2msec.ids import check_fqdn
from m2msec.keyids import KeId
from m2msec.m2mtime import format_time
from m2msec.tls.context import Framework, PeerBinding
from m2msec.tls.profiles import TLSProfile, Transport, new_profile, psk_suites

__all__ = ["MefResponder"]


class MefResponder:
    """Enrolee B (module docstring). ``local_id`` is our CSE-ID; ``sp_fqdn`` the local
    M2M-SP FQDN under which absolute Enrolee-IDs are shortened (docs/readings.md A-14)."""

    def __init__(
        self,
        fetcher: MefCredentialFetcher,
        local_id: str | None = None,
        *,
        sp_fqdn: str | None = None,
        require_sni: bool = False,
        clock: Clock | None = None,
        gba: GbaResponder | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.gba = gba
        self.local_id = local_id
        self.sp_fqdn = check_fqdn(sp_fqdn, "M2M-SP FQDN").lower() if sp_fqdn else None
        self.require_sni = require_sni
        self.clock = clock or fetcher.clock

    def __repr__(self) -> str:
        return f"MefResponder(local_id={self.local_id!r}, mefs={sorted(self.fetcher.mefs)!r})"

    async def resolve(
        self, identity: bytes, cipher_suite: int | None = None
    ) -> tuple[bytes, PeerBinding]:
        """The engine's asynchronous PSK lookup: KeID -> (Kpsa, binding); refusals raise."""
        try:
            ke_id = KeId.parse(identity.decode("ascii"))
        except (UnicodeDecodeError, IdentifierError):
            btid = identity.decode("ascii", "replace")
            if self.gba is not None and is_btid(btid):
                # The GBA bootstrap's KeID (module docstring): Kpsa = Ks_NAF over Zn.
                nid = enrolment_naf_id(self.gba.naf_fqdn)
                return await self.gba.naf_key(btid, nid, self.gba.require_uicc)
            raise HandshakeError(
                f"psk_identity {printable(identity)!r} is not a KeID "
                "(hexBinary(RelativeKeID)@MEF-FQDN, TS-0003 10.3.4)"
            ) from None
        if not self.fetcher.knows(ke_id.mef_fqdn):
            raise HandshakeError(f"{ke_id} names the MEF {ke_id.mef_fqdn}, which is not ours")
        try:
            got = await self.fetcher.fetch(ke_id)
        except CredentialFetchError as exc:
            raise HandshakeError(exc.reason) from None
        if got.expired(self.clock()):
            raise HandshakeError(f"Kpsa of {ke_id} expired at {format_time(got.expires)}")
        try:
            binding = entity_binding(got.enrolee_id, self.sp_fqdn, str(ke_id), got.expires)
        except IdentifierError as exc:
            raise HandshakeError(
                f"the MEF gave an unusable Enrolee-ID for {ke_id}: {exc}"
            ) from None
        return got.credential, binding

    def owns(self, key_id: str | None) -> bool:
        """Whether ``key_id`` is a KeID of a configured MEF (a binding made here)."""
        try:
            return self.fetcher.knows(KeId.parse(key_id or "").mef_fqdn)
        except IdentifierError:
            return False

    def resumption_check(self, binding: PeerBinding) -> PeerBinding | None:
        """Before a session is resumed: its Kpsa must still be held and unexpired;
        otherwise a full handshake asks the MEF again."""
        try:
            ke_id = KeId.parse(binding.key_id or "")
        except IdentifierError:
            raise HandshakeError("session not resumed: it carries no KeID") from None
        if self.fetcher.cached(ke_id) is None:
            raise HandshakeError(f"session not resumed: the Kpsa of {ke_id} is no longer held")
        return None

    def profile(self, transport: Transport = Transport.TLS, *, tls13: bool = True) -> TLSProfile:
        """The provisioned-PSK profile (10.2.2 suites) with the asynchronous KeID lookup."""
        start = new_profile(
            Framework.PROVISIONED_PSK,
            transport,
            server_side=True,
            suites=psk_suites(transport),
            tls13=tls13,
            local_id=self.local_id,
        )
        return replace(
            start,
            psk_async_resolver=self.resolve,
            require_sni=self.require_sni,
            resumption_check=self.resumption_check,
        )
