"""The MAF as Enrolment Target of a MEF (seed 004, TS-0003 8.3.2.1; ``maf serve --mef``).

A MAF Client enrolled at the MEF for this MAF holds Km = HMAC-SHA-256(Ke, "oneM2M Enrolment
Key to Master Credential derivation" || MAF-ID) (10.3.2) and runs the MAF Handshake
(8.8.2.2) with its KeID as KmID. The MAF store does not know it: :class:`EnrolledClients`
fetches Km at the MEF the KeID names (fetchCredentials, SUID 21, over mutual TLS with the
MAF's FQDN certificate, :class:`~m2msec.frameworks.mef_fetch.MefCredentialFetcher`; or MEF
Key Retrieval, 8.3.5.2.8, :class:`~m2msec.frameworks.mef_fetch.MefKeyRetriever`, with
``mef_retrieval = "key-retrieval"``) and
makes it that client's Master Credential while it lives: the Enrolee-ID the MEF returned
is its entity ID, its lifetime Ke's (docs/readings.md A-28). Nothing is written to the MAF
store; the fetcher's cache is where such clients live (bounded, until they expire).

With ``mef_zn`` (the MEF as BSF, the GBA bootstrap of seed 004 8.3.3.1 = V3.18 8.3.2.3) a
B-TID is a KmID too (verbatim, docs/readings.md A-25): the MAF plays the NAF and fetches
Km = Ks_NAF for its FQDN (NAF_Id's Ua id 01 00 01 00 AE, A-31) over Zn with the same
certificate (:class:`~m2msec.frameworks.gba.GbaResponder`, GUSS-gated at the BSF); the
client's entity ID is the AE-ID or CSE-ID the USS names, if any.

Keys never appear in ``repr``, logs or error messages; KeIDs do.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from m2msec.config.maf import MafConfig
from m2msec.errors import CertificateError, ConfigurationError, HandshakeError, IdentifierError
from m2msec.frameworks.certificate import CertificateCredential
from m2msec.frameworks.gba import GbaResponder, is_btid, zn_profile
from m2msec.frameworks.mef.gba import enrolment_naf_id
from m2msec.frameworks.mef_fetch import CredentialFetchError, MefCredentialFetcher, fetcher_class
from m2msec.gba.zn import ZnClient
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

    def __init__(
        self,
        fetcher: MefCredentialFetcher | None,
        gba: GbaResponder | None = None,
        zn: ZnClient | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.gba = gba
        self._zn = zn
        # The MAF looks clients up by canonical (lower-case) KmID; a B-TID is base64, so
        # keep the B-TID each canonical form was resolved from (bounded as the NAF's cache).
        self._btids: OrderedDict[str, str] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: MafConfig) -> EnrolledClients | None:
        """From ``mef``/``mef_fqdn``/``mef_retrieval``, ``mef_zn``/``mef_bsf_fqdn`` and the
        MAF's certificate, or None without either."""
        target, zn = cfg.mef_target(), cfg.mef_zn_target()
        if target is None and zn is None:
            return None
        if cfg.cert is None or cfg.key is None or cfg.ca is None:
            raise ConfigurationError(
                "maf.mef: fetchCredentials and Zn need the MAF's FQDN certificate: give "
                "--cert, --key and --ca ([certificates] in the config file)"
            )
        try:
            credential = CertificateCredential.from_files(cfg.cert, cfg.key, cfg.ca)
            fetcher = None
            if target is not None:
                host, port, fqdn = target
                fetcher = fetcher_class(cfg.mef_retrieval)(
                    credential,
                    {fqdn: (host, port)},
                    in_domain=cfg.effective_in_domain,
                    local_id=cfg.fqdn.lower(),
                    sp_fqdn=cfg.effective_sp_fqdn,
                    timeout=cfg.mef_timeout,
                    tls13=cfg.tls13,
                )
            gba = client = None
            if zn is not None:
                host, port, bsf = zn
                profile = zn_profile(credential, bsf, in_domain=cfg.effective_in_domain)
                client = ZnClient(profile, host, port, bsf, timeout=cfg.mef_timeout)
                gba = GbaResponder(client, cfg.fqdn)
        except (CertificateError, IdentifierError) as exc:
            raise ConfigurationError(f"maf.mef: {exc}") from None
        return cls(fetcher, gba, client if zn is not None else None)

    def _btid(self, text: str) -> str | None:
        # A B-TID of the MEF's BSF, not a KeID: the GBA bootstrap's KmID.
        if self.gba is None or _ke_id(text) is not None or not is_btid(text):
            return None
        return text

    def owns(self, identity: bytes) -> bool:
        """Whether a psk_identity is a KeID of our MEF, or a B-TID with ``mef_zn`` (no
        network call)."""
        try:
            text = identity.decode("ascii")
        except UnicodeDecodeError:
            return False
        ke_id = _ke_id(text)
        if ke_id is None:
            return self._btid(text) is not None
        return self.fetcher is not None and self.fetcher.knows(ke_id.mef_fqdn)

    async def resolve(self, identity: bytes) -> tuple[bytes, PeerBinding]:
        """The MAF Handshake's lookup of a KeID: Km fetched, bound as KmID ``11-<KeID>``."""
        text = identity.decode("ascii", "replace")
        btid = self._btid(text)
        if btid is not None:
            assert self.gba is not None
            km, named = await self.gba.naf_key(btid, self._nid(), False)
            km_id = KmId.parse(btid, verbatim=True)
            self._btids[km_id.canonical] = btid
            self._btids.move_to_end(km_id.canonical)
            while len(self._btids) > self.gba.cache_size:
                self._btids.popitem(last=False)
            return km, _km_binding(km_id, named.valid_until)
        ke_id = _ke_id(text)
        if ke_id is None or self.fetcher is None:
            raise HandshakeError("not a KeID")
        try:
            got = await self.fetcher.fetch(ke_id)
        except CredentialFetchError as exc:
            raise HandshakeError(exc.reason) from None
        return got.credential, _km_binding(KmId.parse(str(ke_id)), got.expires)

    def client(self, key_id: str) -> MasterCredential | None:
        """The Master Credential of an enrolled client while its Km is held, else None."""
        btid = self._btids.get(key_id)
        if btid is not None and self.gba is not None:
            held = self.gba.cached(btid, self._nid(), False)
            if held is None:
                return None
            named = held[1]
            entity = None if named.kind is PeerKind.CREDENTIAL else named.peer_id
            return _credential(KmId.parse(btid, verbatim=True), held[0], entity)
        ke_id = _ke_id(key_id)
        got = None if ke_id is None or self.fetcher is None else self.fetcher.cached(ke_id)
        if got is None:
            return None
        return _credential(KmId.parse(str(got.ke_id)), got.credential, got.enrolee_id)

    def _nid(self) -> bytes:
        assert self.gba is not None
        return enrolment_naf_id(self.gba.naf_fqdn)

    async def close(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.close()
        if self._zn is not None:
            await self._zn.close()


def _km_binding(km_id: KmId, valid_until: datetime | None) -> PeerBinding:
    return PeerBinding(
        peer_id=str(CredentialId.for_km_id(km_id)),
        kind=PeerKind.CREDENTIAL,
        key_id=km_id.canonical,
        valid_until=valid_until,
    )


def _credential(km_id: KmId, km: bytes, entity_id: str | None) -> MasterCredential:
    return MasterCredential(
        km_id=str(km_id), canonical=km_id.canonical, km=km, entity_id=entity_id, enabled=True
    )
