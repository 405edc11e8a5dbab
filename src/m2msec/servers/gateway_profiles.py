"""The Entity B profiles behind the gateway's ``tls://`` and ``dtls://`` listeners.

One :class:`ResponderProfiles` per gateway turns the configuration into a
:class:`~m2msec.tls.profiles.TLSProfile` per framework and transport: provisioned PSK
(TS-0003 8.2.2.1) over the psk-lookup-table, certificates (8.2.2.2), the MAF framework
(8.2.2.3: KcIds resolved by Key Retrieval at the MAF), GBA (seed 000 8.2.3.2: the
gateway as NAF, Ks_NAF over Zn) and the gateway as Enrolee B (seed 004, 8.3.2.1: KeIDs
resolved by fetchCredentials at the MEF). It owns what those need for the gateway's life
(the psk store it opened, the MAF retrieval and MEF fetch clients, the Zn client) and
closes them in :meth:`aclose`.
Resumed sessions are re-validated first (:func:`psk_row_check` for provisioned PSK);
:meth:`ResponderProfiles.key_source` tells the SA sweep which fetcher re-validates a live
MAF or MEF SA's key (issue 12 item 3, docs/sa.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from m2msec.config import (
    GatewayConfig,
    GbaConfig,
    ListenerSpec,
    MafRetrievalConfig,
    MefTargetConfig,
)
from m2msec.errors import CertificateError, ConfigurationError, HandshakeError, IdentifierError
from m2msec.servers.association import sp_fqdn_of
from m2msec.store.base import PskStore
from m2msec.tls.context import Framework, PeerBinding, SecurityContext
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = ["Profiles", "ResponderProfiles", "pick", "psk_row_check"]

if TYPE_CHECKING:
    from m2msec.frameworks.gba import GbaResponder
    from m2msec.frameworks.maf import MafResponder
    from m2msec.frameworks.mef_responder import MefResponder
    from m2msec.frameworks.remote_keys import KeyFetcher
    from m2msec.gba.zn import ZnClient

_F = TypeVar("_F", bound="KeyFetcher[Any, Any]")
_R = TypeVar("_R")

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
        #: Enrolee B of seed 004 (KeIDs fetched at the MEF).
        self.mef: MefResponder | None = None

    async def aclose(self) -> None:
        if self.zn is not None:
            await self.zn.close()
        if self.maf is not None:
            await self.maf.retriever.close()
        if self.mef is not None:
            await self.mef.fetcher.close()
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
            self.psk_revalidate = self._not_enrolled(psk_row_check(psk_responder.resolve))
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
        if cfg.mef is not None and (wanted & {"mef", "*"}):
            out["mef"] = ("mef", self._mef_profile(cfg.mef, transport))
        if cfg.resumption:
            # Devices that come back resume their session once the framework re-validates
            # the binding (m2msec.tls.sessions); one cache per context, sized by
            # [gateway] session_cache_size / session_lifetime (DTLSServer keeps it).
            from m2msec.tls.resumption import enable_resumption
            from m2msec.tls.sessions import ServerSessionCache

            caches: dict[int, ServerSessionCache] = {}
            for key, (name, p) in list(out.items()):
                cache = p.session_cache
                if cache is None:
                    cache = caches.get(id(p.ssl_context))
                if cache is None:
                    cache = ServerSessionCache(
                        max_sessions=cfg.session_cache_size, lifetime=cfg.session_lifetime
                    )
                caches[id(p.ssl_context)] = cache
                out[key] = (name, enable_resumption(p, cache))
        return out

    def key_source(self, ctx: SecurityContext) -> tuple[str, KeyFetcher[Any, Any]] | None:
        """The function that issued the key of a live SA and the fetcher that asks it:
        ("MAF", Key Retrieval) for the MAF framework, ("MEF", fetchCredentials or MEF Key
        Retrieval) for a KeID of our MEF; None for every other key (psk rows, GBA)."""
        if ctx.framework is Framework.MAF and self.maf is not None:
            return "MAF", self.maf.retriever
        if (
            ctx.framework is Framework.PROVISIONED_PSK
            and self.mef is not None
            and self.mef.owns(ctx.key_id)
        ):
            return "MEF", self.mef.fetcher
        return None

    def _not_enrolled(
        self, check: Callable[[PeerBinding], PeerBinding]
    ) -> Callable[[PeerBinding], PeerBinding]:
        """``check`` for psk-lookup-table bindings; a KeID of our MEF (the same framework,
        its Kpsa fetched, not in the table) keeps its binding: its lifetime is its bound."""

        def revalidate(binding: PeerBinding) -> PeerBinding:
            if self.mef is not None and self.mef.owns(binding.key_id):
                return binding
            return check(binding)

        return revalidate

    def _maf_profile(self, maf: MafRetrievalConfig, transport: Transport) -> TLSProfile:
        """Entity B of the MAF framework (TS-0003 8.2.2.3): KcIds resolved by Key Retrieval.

        One responder (one Kc cache, one retrieval client) serves both transports.
        """
        from m2msec.frameworks.maf import MafKeyRetriever, MafResponder

        if self.maf is None:
            addresses = {fqdn: (host, port) for fqdn, host, port in maf.addresses}
            retriever = self._fetcher(MafKeyRetriever, maf, addresses, "maf")
            self.maf = self._responder(MafResponder, retriever)
        return self.maf.profile(transport, tls13=self.config.tls13)

    def _mef_profile(self, mef: MefTargetConfig, transport: Transport) -> TLSProfile:
        """Enrolee B (seed 004, TS-0003 8.3.2.1): KeIDs resolved by fetchCredentials, or
        MEF Key Retrieval (8.3.5.2.8) with ``[mef] retrieval = "key-retrieval"`` (SUID
        22), the association bound to the Enrolee-ID. One responder for both transports."""
        from m2msec.frameworks.mef_fetch import fetcher_class
        from m2msec.frameworks.mef_responder import MefResponder

        if self.mef is None:
            addresses = {mef.fqdn: (mef.host, mef.port)}
            fetcher = self._fetcher(fetcher_class(mef.retrieval), mef, addresses, "mef")
            self.mef = self._responder(MefResponder, fetcher)
            if self.config.gba is not None:
                # A B-TID KeID (GBA bootstrap, seed 004 8.3.3.1): Ks_NAF from the same NAF.
                self.mef.gba = self._gba_responder(self.config.gba)
        return self.mef.profile(transport, tls13=self.config.tls13)

    def _responder(self, kind: Callable[..., _R], fetcher: KeyFetcher[Any, Any]) -> _R:
        """Entity B over a key fetcher, bound as our CSE-ID under our M2M-SP
        (docs/readings.md A-14)."""
        cfg = self.config
        return kind(fetcher, str(cfg.cse_id), sp_fqdn=sp_fqdn_of(cfg), require_sni=cfg.require_sni)

    def _fetcher(
        self,
        kind: type[_F],
        section: MafRetrievalConfig | MefTargetConfig,
        addresses: dict[str, tuple[str, int]],
        name: str,
    ) -> _F:
        """The client of ``[maf]`` or ``[mef]``: our CSE-ID certificate over mutual TLS."""
        from m2msec.frameworks.certificate import CertificateCredential

        cfg = self.config
        assert cfg.in_domain is not None  # enforced by the configuration
        try:
            return kind(
                CertificateCredential.from_files(section.cert, section.key, section.ca),
                addresses,
                in_domain=cfg.in_domain,
                local_id=str(cfg.cse_id),
                sp_fqdn=cfg.cse_id.sp_fqdn,
                cache_size=section.cache_size,
                timeout=section.timeout,
                tls13=cfg.tls13,
            )
        except (CertificateError, IdentifierError) as exc:
            raise ConfigurationError(f"{name}: {exc}") from None

    def _gba_profile(self, gba: GbaConfig, transport: Transport) -> TLSProfile:
        """The gateway as NAF (seed 000 8.2.3.2): Zn client to the BSF, GBA responder.

        Over DTLS (``dtls://...?framework=gba``) the same NAF answers DTLS-PSK: our extension
        (docs/conformance.md); NAF_Id names the suite the DTLS ServerHello chose.
        """
        return self._gba_responder(gba).profile(transport)

    def _gba_responder(self, gba: GbaConfig) -> GbaResponder:
        """The one NAF of ``[gba]`` (its Zn client and key cache), made on first use."""
        from m2msec.frameworks.certificate import CertificateCredential
        from m2msec.frameworks.gba import GbaResponder, zn_profile
        from m2msec.gba.zn import ZnClient

        if self.gba is not None:
            return self.gba
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
        return self.gba


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
