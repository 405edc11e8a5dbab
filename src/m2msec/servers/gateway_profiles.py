"""The Entity B profiles behind the gateway's ``tls://`` and ``dtls://`` listeners.

One :class:`ResponderProfiles` per gateway turns the configuration into a
:class:`~m2msec.tls.profiles.TLSProfile` per framework and transport: provisioned PSK
(TS-0003 8.2.2.1) over the psk-lookup-table, certificates (8.2.2.2), the MAF framework
(8.2.2.3: KcIds resolved by Key Retrieval at the MAF) and GBA (seed 000 8.2.3.2: the
gateway as NAF, Ks_NAF over Zn). It owns what those need for the gateway's life (the psk
store it opened, the MAF retrieval client, the Zn client) and closes them in :meth:`aclose`.
Resumed sessions are re-validated first (:func:`psk_row_check` for provisioned PSK).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from m2msec.config import GatewayConfig, GbaConfig, ListenerSpec, MafRetrievalConfig
from m2msec.errors import CertificateError, ConfigurationError, HandshakeError, IdentifierError
from m2msec.servers.association import sp_fqdn_of
from m2msec.store.base import PskStore
from m2msec.tls.context import PeerBinding
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = ["Profiles", "ResponderProfiles", "pick", "psk_row_check"]

if TYPE_CHECKING:
    from m2msec.frameworks.gba import GbaResponder
    from m2msec.frameworks.maf import MafResponder
    from m2msec.gba.zn import ZnClient

#: The responder profiles of one transport, by framework key: (framework name, profile).
Profiles = dict[str, tuple[str, TLSProfile]]


class ResponderProfiles:
    """The gateway's Entity B side of each framework (module docstring)."""

    def __init__(self, config: GatewayConfig, store: PskStore | None = None) -> None:
        self.config = config
        #: The psk-lookup-table (given, or opened from ``[psk] store`` when needed).
        self.store = store
        self.own_store = False
        #: Live revalidation of a provisioned-PSK binding (its psk row), once known.
        self.psk_revalidate: Callable[[PeerBinding], PeerBinding] | None = None
        #: The NAF of the GBA framework and its Zn client; Entity B of the MAF framework.
        self.gba: GbaResponder | None = None
        self.zn: ZnClient | None = None
        self.maf: MafResponder | None = None

    async def aclose(self) -> None:
        if self.zn is not None:
            await self.zn.close()
        if self.maf is not None:
            await self.maf.retriever.close()
        if self.own_store and self.store is not None:
            self.store.close()

    def for_transport(self, transport: Transport) -> dict[str, tuple[str, TLSProfile]]:
        """The responder profiles the ``tls://`` (or ``dtls://``) listeners need, by framework.

        Both transports share the psk-lookup-table and the certificate configuration.
        """
        cfg = self.config
        scheme = "dtls" if transport is Transport.DTLS else "tls"
        wanted = {s.framework or "*" for s in cfg.listen if s.scheme == scheme}
        out: dict[str, tuple[str, TLSProfile]] = {}
        if not wanted:
            return out
        if cfg.psk is not None and (wanted & {"psk", "*"}):
            from m2msec.frameworks.provisioned import PskResponder

            if self.store is None:
                from m2msec.store import open_store

                self.store = open_store(cfg.psk.store)
                self.own_store = True
            psk_responder = PskResponder(self.store, local_id=str(cfg.cse_id))
            self.psk_revalidate = psk_row_check(psk_responder.resolve)
            profile = dataclasses.replace(
                psk_responder.profile(transport, tls13=cfg.tls13),
                require_sni=cfg.require_sni,
                resumption_check=self.psk_revalidate,
            )
            out["psk"] = ("provisioned-psk", profile)
        if cfg.certificates is not None and (wanted & {"certificate", "*"}):
            from m2msec.frameworks.certificate import CertificateCredential, CertificateResponder

            c = cfg.certificates
            assert cfg.in_domain is not None  # enforced by the configuration
            try:
                responder = CertificateResponder(
                    CertificateCredential.from_files(c.cert, c.key, c.ca),
                    in_domain=cfg.in_domain,
                    local_id=str(cfg.cse_id),
                    allowed=c.allowed,
                    sp_fqdn=cfg.cse_id.sp_fqdn,
                    require_sni=cfg.require_sni,
                    crl=c.crl,
                )
            except (CertificateError, IdentifierError) as exc:
                raise ConfigurationError(f"certificates: {exc}") from None
            out["certificate"] = (
                "certificate",
                responder.profile(transport=transport, tls13=cfg.tls13),
            )
        if cfg.gba is not None and (wanted & {"gba", "*"}):
            out["gba"] = ("gba", self._gba_profile(cfg.gba, transport))
        if cfg.maf is not None and (wanted & {"maf", "*"}):
            out["maf"] = ("maf", self._maf_profile(cfg.maf, transport))
        if cfg.resumption and transport is Transport.TLS:
            # Devices that come back resume their session once the framework re-validates
            # the binding (m2msec.tls.sessions); DTLS listeners do so in DTLSServer.
            from m2msec.tls.resumption import enable_resumption

            out = {key: (name, enable_resumption(p)) for key, (name, p) in out.items()}
        return out

    def _maf_profile(self, maf: MafRetrievalConfig, transport: Transport) -> TLSProfile:
        """Entity B of the MAF framework (TS-0003 8.2.2.3): KcIds resolved by Key Retrieval.

        One responder (one Kc cache, one retrieval client) serves both transports.
        """
        from m2msec.frameworks.certificate import CertificateCredential
        from m2msec.frameworks.maf import MafKeyRetriever, MafResponder

        cfg = self.config
        if self.maf is not None:
            return self.maf.profile(transport, tls13=cfg.tls13)
        assert cfg.in_domain is not None  # enforced by the configuration
        try:
            retriever = MafKeyRetriever(
                CertificateCredential.from_files(maf.cert, maf.key, maf.ca),
                {fqdn: (host, port) for fqdn, host, port in maf.addresses},
                in_domain=cfg.in_domain,
                local_id=str(cfg.cse_id),
                sp_fqdn=cfg.cse_id.sp_fqdn,
                cache_size=maf.cache_size,
                timeout=maf.timeout,
                tls13=cfg.tls13,
            )
        except (CertificateError, IdentifierError) as exc:
            raise ConfigurationError(f"maf: {exc}") from None
        self.maf = MafResponder(
            retriever, str(cfg.cse_id), sp_fqdn=sp_fqdn_of(cfg), require_sni=cfg.require_sni
        )
        return self.maf.profile(transport, tls13=cfg.tls13)

    def _gba_profile(self, gba: GbaConfig, transport: Transport) -> TLSProfile:
        """The gateway as NAF (seed 000 8.2.3.2): Zn client to the BSF, GBA responder.

        Over DTLS (``dtls://...?framework=gba``) the same NAF answers DTLS-PSK: our extension
        (docs/conformance.md); NAF_Id names the suite the DTLS ServerHello chose.
        """
        from m2msec.frameworks.certificate import CertificateCredential
        from m2msec.frameworks.gba import GbaResponder, zn_profile
        from m2msec.gba.zn import ZnClient

        if self.gba is not None:
            return self.gba.profile(transport)

        try:
            credential = CertificateCredential.from_files(gba.cert, gba.key, gba.ca)
        except CertificateError as exc:
            raise ConfigurationError(f"gba: {exc}") from None
        self.zn = ZnClient(
            zn_profile(credential, gba.bsf_fqdn, in_domain=self.config.in_domain),
            gba.bsf_host,
            gba.bsf_port,
            gba.bsf_fqdn,
            timeout=self.config.handshake_timeout,
        )
        self.gba = GbaResponder(
            self.zn,
            gba.naf_fqdn,
            local_id=str(self.config.cse_id),
            require_uicc=gba.require_uicc,
            require_sni=self.config.require_sni,
        )
        return self.gba.profile(transport)


def psk_row_check(
    resolve: Callable[[bytes], tuple[bytes, PeerBinding]],
) -> Callable[[PeerBinding], PeerBinding]:
    """Re-validation of a provisioned-PSK session before it is resumed (TS-0003 8.2.2.1).

    The psk-lookup-table row named by the binding's KpsaId must still exist, be unexpired
    and bind the same entity. Looked up by the binding's key ID rather than by the psk
    identity the session cache recorded, which a resumed handshake does not carry forward.
    """

    def check(binding: PeerBinding) -> PeerBinding:
        if not binding.key_id:
            raise HandshakeError(f"session of {binding.peer_id} not resumed: it has no KpsaId")
        _, fresh = resolve(binding.key_id.encode())  # HandshakeError: removed or expired
        if (fresh.peer_id, fresh.kind) != (binding.peer_id, binding.kind):
            raise HandshakeError(
                f"session of {binding.peer_id} not resumed: its KpsaId now binds {fresh.peer_id}"
            )
        return fresh

    return check


def pick(profiles: Profiles, spec: ListenerSpec) -> tuple[str, TLSProfile]:
    return profiles[spec.framework or _only(profiles)]


def _only(profiles: Profiles) -> str:
    if len(profiles) != 1:  # the configuration prevents this
        raise ConfigurationError("name the framework of each tls:// listener")
    return next(iter(profiles))
