"""Exception hierarchy of m2msec.

Every error raised on purpose by the library derives from :class:`M2MSecError`.
Messages name identifiers and reasons, never key material.
"""

from __future__ import annotations


class M2MSecError(Exception):
    """Base class of every m2msec error."""


class IdentifierError(M2MSecError, ValueError):
    """An identifier (CSE-ID, AE-ID, KpsaId, KmId, KcId, Credential-ID) is malformed."""


class ConfigurationError(M2MSecError):
    """Configuration is missing, inconsistent or unsafe."""


class StoreError(M2MSecError):
    """A credential store could not be read or written."""


class DuplicateCredentialError(StoreError):
    """A credential with the same key identifier already exists."""


class UnknownCredentialError(StoreError, KeyError):
    """No credential is stored under the given key identifier."""


class HandshakeError(M2MSecError):
    """A (D)TLS handshake failed; ``reason`` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CertificateError(M2MSecError):
    """A certificate is untrusted, expired or does not name the expected entity."""


class CertificateRevoked(CertificateError):
    """The peer's certificate is on its issuer's CRL (ends with ``certificate_revoked``)."""
