"""The MAF as Enrolment Target of a MEF (seed 004, TS-0003 8.3.2.1; ``maf serve --mef``).

A MAF Client enrolled at the MEF for this MAF holds Km = HMAC-SHA-256(Ke, "oneM2M Enrolment
Key to Master Credential derivation" || MAF-ID) (10.3.2) and runs the MAF Handshake
(8.8.2.2) with its KeID as KmID. The MAF store does not know it: :class:`EnrolledClients`
fetches Km at the MEF the KeID names (fetchCredentials, SUID 21, over mutual TLS with the
MAF's FQDN certificate, :class:`~m2msec.frameworks.mef_fetch.MefCredentialFetcher`) and
makes it that client's Master Credential while it lives: the Enrolee-ID the MEF returned
is its entity ID, its lifetime Ke's (docs/readings.md A-28). Nothing is written to the MAF
store; the fetcher's cache is where such clients live (bounded, until they expire).

Keys never appear in ``repr``, logs or error messages; KeIDs do.
"""

from __future__ import annotations

from m2msec.config.maf import MafConfig
from m2msec.errors import CertificateError, ConfigurationError, HandshakeError, IdentifierError
from m2msec.frameworks.certificate import CertificateCredential
from m2msec.frameworks.mef_fetch import CredentialFetchError, MefCredentialFetcher
from m2msec.keyids import CredentialId, KeId, KmId
from m2msec.maf.store_records import MasterCredential
from m2msec.tls.context import PeerBinding, PeerKind

__all__ = ["EnrolledClients"]


def _ke_id(text: str) -> KeId | None:
    try:
        return KeId.parse(text)
    except IdentifierError:
        return None


class EnrolledClients:
    """MAF Clients enrolled at a MEF for this MAF (module docstring)."""

    def __init__(self, fetcher: MefCredentialFetcher) -> None:
        self.fetcher = fetcher

    @classmethod
    def from_config(cls, cfg: MafConfig) -> EnrolledClients | None:
        """From ``mef``/``mef_fqdn`` and the MAF's certificate, or None without ``mef``."""
        target = cfg.mef_target()
        if target is None:
            return None
        host, port, fqdn = target
        if cfg.cert is None or cfg.key is None or cfg.ca is None:
            raise ConfigurationError(
                "maf.mef: fetchCredentials needs the MAF's FQDN certificate: give --cert, "
                "--key and --ca ([certificates] in the config file)"
            )
        try:
            fetcher = MefCredentialFetcher(
                CertificateCredential.from_files(cfg.cert, cfg.key, cfg.ca),
                {fqdn: (host, port)},
                in_domain=cfg.effective_in_domain,
                local_id=cfg.fqdn.lower(),
                sp_fqdn=cfg.effective_sp_fqdn,
                timeout=cfg.mef_timeout,
                tls13=cfg.tls13,
            )
        except (CertificateError, IdentifierError) as exc:
            raise ConfigurationError(f"maf.mef: {exc}") from None
        return cls(fetcher)

    def owns(self, identity: bytes) -> bool:
        """Whether a psk_identity is a KeID of our MEF (no network call)."""
        try:
            ke_id = _ke_id(identity.decode("ascii"))
        except UnicodeDecodeError:
            return False
        return ke_id is not None and self.fetcher.knows(ke_id.mef_fqdn)

    async def resolve(self, identity: bytes) -> tuple[bytes, PeerBinding]:
        """The MAF Handshake's lookup of a KeID: Km fetched, bound as KmID ``11-<KeID>``."""
        ke_id = _ke_id(identity.decode("ascii", "replace"))
        if ke_id is None:
            raise HandshakeError("not a KeID")
        try:
            got = await self.fetcher.fetch(ke_id)
        except CredentialFetchError as exc:
            raise HandshakeError(exc.reason) from None
        km_id = KmId.parse(str(ke_id))
        binding = PeerBinding(
            peer_id=str(CredentialId.for_km_id(km_id)),
            kind=PeerKind.CREDENTIAL,
            key_id=km_id.canonical,
            valid_until=got.expires,
        )
        return got.credential, binding

    def client(self, key_id: str) -> MasterCredential | None:
        """The Master Credential of an enrolled client while its Km is held, else None."""
        ke_id = _ke_id(key_id)
        got = None if ke_id is None else self.fetcher.cached(ke_id)
        if got is None:
            return None
        km_id = KmId.parse(str(got.ke_id))
        return MasterCredential(
            km_id=str(km_id),
            canonical=km_id.canonical,
            km=got.credential,
            entity_id=got.enrolee_id,
            enabled=True,
        )

    async def close(self) -> None:
        await self.fetcher.close()
