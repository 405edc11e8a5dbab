"""The responder profile of a service named by its FQDN: the MAF's Key Retrieval listener
and the MEF's target and certificate Enrolee listeners (TS-0003 10.1.1.6, 8.2.2.2).

The service presents its FQDN certificate and requires the peer's, checked against the
configured trust anchors (and CRL); the peer binds as a CSE, an AE, or one of
``services`` (other services' FQDNs, :attr:`~m2msec.ids.PeerKind.SERVICE`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from m2msec.errors import CertificateError, ConfigurationError, IdentifierError
from m2msec.frameworks.certificate import CertificateCredential, CertificateResponder
from m2msec.tls.profiles import TLSProfile

__all__ = ["ServiceCertificateSettings", "service_responder_profile"]


class ServiceCertificateSettings(Protocol):
    """What a service's configuration (``MafConfig``, ``MefConfig``) says of its certificate."""

    @property
    def fqdn(self) -> str: ...
    @property
    def cert(self) -> str | Path | None: ...
    @property
    def key(self) -> str | Path | None: ...
    @property
    def ca(self) -> str | Path | None: ...
    @property
    def crl(self) -> str | Path | None: ...
    @property
    def tls13(self) -> bool: ...
    @property
    def effective_in_domain(self) -> str: ...
    @property
    def effective_sp_fqdn(self) -> str: ...


def service_responder_profile(
    cfg: ServiceCertificateSettings, *, services: Iterable[str], what: str
) -> TLSProfile:
    """The profile (module docstring); ``cert``, ``key`` and ``ca`` must be set. A bad
    certificate raises ConfigurationError prefixed with ``what`` ("MAF certificate")."""
    assert cfg.cert is not None and cfg.key is not None and cfg.ca is not None
    try:
        credential = CertificateCredential.from_files(cfg.cert, cfg.key, cfg.ca)
        responder = CertificateResponder(
            credential,
            in_domain=cfg.effective_in_domain,
            local_id=cfg.fqdn.lower(),
            services=services,
            sp_fqdn=cfg.effective_sp_fqdn,
            crl=cfg.crl,
        )
    except (CertificateError, IdentifierError) as exc:
        raise ConfigurationError(f"{what}: {exc}") from None
    return responder.profile(tls13=cfg.tls13)
