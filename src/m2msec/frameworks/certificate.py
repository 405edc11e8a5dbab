"""Certificate-Based Security Association Establishment (TS-0003 8.2.2.2).

Both entities hold a private signing key and a certificate chaining to a trust anchor
(Credential Configuration, 8.1.2.3) and run a mutually authenticated (D)TLS handshake
with the ECDHE_ECDSA suites of 10.2.3. OpenSSL performs basic path validation against the
configured trust anchors (8.1.2.2; expired and untrusted chains are refused there); this
module then checks what 8.1.2.5 asks beyond the chain and binds the session:

* Entity A (:class:`CertificateInitiator`) is configured with IdB and accepts the
  server only if its subjectAltName holds an exact match for IdB (8.1.2.4, 8.1.2.5): the
  public domain name of a CSE-ID as a dNSName, the Absolute AE-ID as a URI, or the FQDN of
  a MAF/MEF. It binds the session to IdB (8.2.2.2).
* Entity B (:class:`CertificateResponder`) reads Entity A's identity from its certificate
  (8.2.2.2, docs/readings.md A-30): a CSE-ID certificate binds the CSE-ID, an AE-ID certificate the
  AE-ID. When allowed identities (IdA) are configured, the identity read must be one of
  them, or the handshake fails.

How identities are written in certificates (10.1.1.5-10.1.1.7), which keys and
signature hashes a certificate may carry, and the key identifier of a certificate-based
association (the peer certificate's SHA-256 fingerprint) are the naming checks of
:mod:`m2msec.pki.names`, which the CA shares; CRL checking is
:mod:`m2msec.pki.revocation`. This module turns them into the two roles' (D)TLS
profiles: it loads the credential, binds the peer and configures the ``SSL.Context``.
Identities bind in their SP-relative form (docs/readings.md A-14) when they belong to the
local M2M-SP (``sp_fqdn``, by default the IN public domain), in absolute form otherwise.
Chains are verified with ``X509_STRICT``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto

from m2msec.errors import CertificateError, ConfigurationError, HandshakeError
from m2msec.ids import CseId, absolute_ae_id, check_fqdn, parse_entity_id
from m2msec.pki.names import (
    CertificateIdentity,
    certificate_fingerprint,
    check_peer_certificate,
    check_public_key,
    describe_names,
    dns_and_uri_names,
    identities_in,
    is_ca,
    normal_id,
    spki_der,
    subject_alt_names,
)
from m2msec.pki.revocation import RevocationList
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import (
    CERT_SUITES_DTLS,
    CERT_SUITES_TLS,
    CertificatePolicy,
    TLSProfile,
    Transport,
    new_profile,
)

__all__ = [
    "CertificateCredential",
    "CertificateInitiator",
    "CertificateResponder",
]

log = logging.getLogger(__name__)


def _peer_binding(cert: x509.Certificate, peer_id: str, kind: PeerKind) -> PeerBinding:
    return PeerBinding(
        peer_id=peer_id,
        kind=kind,
        key_id=certificate_fingerprint(cert),
        valid_until=cert.not_valid_after_utc,
    )


def _load_der(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"peer certificate cannot be parsed: {exc}") from None


# ----------------------------------------------------------------------------- credential


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} file {path}: {exc.strerror}") from None


def _load_certs(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateError(f"{what}: no PEM certificate could be read") from None
    if not certs:
        raise CertificateError(f"{what}: no PEM certificate found")
    return certs


@dataclass(frozen=True, eq=False)
class CertificateCredential:
    """An entity's credential (TS-0003 8.1.2.3) and its trust anchors (8.1.2.2).

    ``cert_pem`` holds the entity's certificate first, then any intermediate CA
    certificates; ``key_pem`` the unencrypted private signing key (PKCS#8 or
    traditional PEM); ``ca_pem`` one or more trust-anchor certificates. Everything is
    checked on construction; the key never appears in ``repr``.
    """

    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    ca_pem: bytes = field(repr=False)
    certificate: x509.Certificate = field(init=False)
    chain: tuple[x509.Certificate, ...] = field(init=False, repr=False)
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = field(init=False, repr=False)
    trust_anchors: tuple[x509.Certificate, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        certs = _load_certs(self.cert_pem, "certificate")
        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except TypeError:
            raise CertificateError("private key is encrypted; give an unencrypted key") from None
        except (ValueError, UnsupportedAlgorithm):
            raise CertificateError("private key: no PEM private key could be read") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CertificateError(
                f"private key type {type(key).__name__} is not supported (EC or RSA needed)"
            )
        check_public_key(key.public_key(), "own")
        leaf = certs[0]
        if spki_der(key.public_key()) != spki_der(leaf.public_key()):
            raise CertificateError("private key does not match the certificate")
        anchors = _load_certs(self.ca_pem, "trust anchor (CA)")
        for ca in anchors:
            if not is_ca(ca):
                raise CertificateError(
                    f"trust anchor {ca.subject.rfc4514_string()!r} is not a CA certificate"
                )
            check_public_key(ca.public_key(), "trust anchor")
        now = datetime.now(UTC)
        if leaf.not_valid_after_utc <= now:
            log.warning("own certificate expired on %s", leaf.not_valid_after_utc.isoformat())
        object.__setattr__(self, "certificate", leaf)
        object.__setattr__(self, "chain", tuple(certs[1:]))
        object.__setattr__(self, "private_key", key)
        object.__setattr__(self, "trust_anchors", tuple(anchors))

    @classmethod
    def from_files(
        cls, cert: str | os.PathLike[str], key: str | os.PathLike[str], ca: str | os.PathLike[str]
    ) -> CertificateCredential:
        """Load PEM files; a key file readable by group or others draws a warning."""
        key_path = Path(key)
        credential = cls(
            _read(Path(cert), "certificate"),
            _read(key_path, "private key"),
            _read(Path(ca), "CA certificate"),
        )
        if os.name == "posix" and key_path.stat().st_mode & 0o077:
            log.warning("private key file %s is readable by group or others", key_path)
        return credential

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.certificate)

    def identities(
        self, *, in_domain: str, sp_fqdn: str | None = None, services: Iterable[str] = ()
    ) -> list[CertificateIdentity]:
        """The oneM2M identities named by our own certificate."""
        return identities_in(
            self.certificate, in_domain=in_domain, sp_fqdn=sp_fqdn, services=services
        )

    def _configure(self, ctx: SSL.Context, *, server_side: bool) -> None:
        ctx.use_certificate(self.certificate)
        for extra in self.chain:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(self.private_key)
        ctx.check_privatekey()
        store = ctx.get_cert_store()
        assert store is not None
        # X509_STRICT: refuse malformed chains (explicit curve parameters, missing key
        # identifiers, non-critical CA constraints) that lax parsing would accept.
        store.set_flags(crypto.X509StoreFlags.X509_STRICT)
        for ca in self.trust_anchors:
            store.add_cert(crypto.X509.from_cryptography(ca))
            if server_side:
                ctx.add_client_ca(ca)  # tells clients which roots we trust


def _own_identity(
    credential: CertificateCredential, local_id: str | None, *, in_domain: str, sp_fqdn: str
) -> str | None:
    """Check that our certificate names ``local_id`` (8.1.2.3); infer it when not given."""
    own = credential.identities(in_domain=in_domain, sp_fqdn=sp_fqdn)
    if local_id is None:
        return own[0].entity_id if len(own) == 1 else None
    if "/" not in local_id and "." in local_id:
        # A MAF or MEF names itself by FQDN (10.1.1.6).
        fqdn = check_fqdn(local_id, "local FQDN").lower()
        for ident in credential.identities(in_domain=in_domain, sp_fqdn=sp_fqdn, services=[fqdn]):
            if ident.kind is PeerKind.SERVICE:
                return fqdn
        raise CertificateError(f"own certificate does not name {fqdn}")
    entity = parse_entity_id(local_id)
    want = normal_id(entity, sp_fqdn)
    if not any(_same(i.entity_id, want, i.kind) for i in own):
        named = ", ".join(i.entity_id for i in own) or "no oneM2M identity"
        raise CertificateError(f"own certificate names {named} but local_id is {want}")
    return want


def _same(a: str, b: str, kind: PeerKind) -> bool:
    # A CSE-ID travels in a DNS name, which carries no letter case (docs/readings.md A-05).
    return a.lower() == b.lower() if kind is PeerKind.CSE else a == b


def _suites(transport: Transport, suites: tuple[str, ...] | None) -> tuple[str, ...]:
    allowed = CERT_SUITES_DTLS if transport is Transport.DTLS else CERT_SUITES_TLS
    if suites is None:
        return allowed
    for suite in suites:
        if suite not in allowed:
            raise ConfigurationError(
                f"{suite} is not a certificate suite of this profile (TS-0003 10.2.3): "
                + ", ".join(allowed)
            )
    return suites


class _CertificateRole:
    """What Entity A and Entity B share: our credential and identity, and the profile
    that requires the peer's certificate, verified against our anchors, and binds it."""

    credential: CertificateCredential
    local_id: str | None
    _SERVER_SIDE: ClassVar[bool]

    def bind(self, der: bytes) -> PeerBinding:
        raise NotImplementedError

    def _role_options(self, profile: TLSProfile) -> TLSProfile:
        return profile

    def profile(
        self,
        transport: Transport = Transport.TLS,
        *,
        tls13: bool = True,
        suites: tuple[str, ...] | None = None,
    ) -> TLSProfile:
        """Our role's profile; ``suites`` a subset of the 10.2.3 certificate suites."""
        profile = new_profile(
            Framework.CERTIFICATE,
            transport,
            server_side=self._SERVER_SIDE,
            suites=_suites(transport, suites),
            tls13=tls13,
            local_id=self.local_id,
        )
        self.credential._configure(profile.ssl_context, server_side=self._SERVER_SIDE)
        policy = CertificatePolicy(bind=self.bind, require_peer_certificate=True)
        return self._role_options(replace(profile, certificate_policy=policy))


# ----------------------------------------------------------------------------- Entity B


#: Certificates remembered for re-checking resumed sessions against the CRL (oldest go).
_MAX_REVOCABLE = 65536


class CertificateResponder(_CertificateRole):
    """Entity B of the certificate framework (TS-0003 8.2.2.2): the (D)TLS server.

    ``in_domain`` is the IN public domain under which CSE public domain names are read;
    ``sp_fqdn`` the local M2M-SP FQDN (default ``in_domain``). ``allowed`` is the optional
    configured IdA: AE-IDs and CSE-IDs (any form; bare C-stems are read under
    ``local_id``), one of which the certificate must name (docs/readings.md A-30). ``services``
    lists MAF/MEF FQDNs accepted as clients (10.1.1.6); they bind as
    :attr:`PeerKind.SERVICE`. ``local_id`` defaults to the identity in our certificate.
    """

    _SERVER_SIDE = True

    def __init__(
        self,
        credential: CertificateCredential,
        *,
        in_domain: str,
        local_id: str | None = None,
        allowed: Iterable[str] | None = None,
        services: Iterable[str] = (),
        sp_fqdn: str | None = None,
        require_sni: bool = False,
        crl: Path | str | None = None,
    ) -> None:
        self.in_domain = check_fqdn(in_domain, "IN public domain")
        self.sp_fqdn = check_fqdn(sp_fqdn or in_domain, "M2M-SP FQDN")
        if not isinstance(credential.private_key, ec.EllipticCurvePrivateKey):
            raise CertificateError(
                "the ECDHE_ECDSA suites of TS-0003 10.2.3 need an EC key on the server"
            )
        self.credential = credential
        self.local_id = _own_identity(
            credential, local_id, in_domain=self.in_domain, sp_fqdn=self.sp_fqdn
        )
        self.services = frozenset(check_fqdn(s, "service FQDN").lower() for s in services)
        self.revocation = None if crl is None else RevocationList(crl, credential.trust_anchors)
        self._revocable: dict[str, x509.Certificate] = {}
        self.require_sni = require_sni
        self.allowed: dict[tuple[PeerKind, str], str] | None = None
        if allowed is not None:
            registrar = None
            if self.local_id is not None and self.local_id.startswith("/"):
                # Bare C-stems are read under us, their registrar (docs/readings.md A-14).
                local = parse_entity_id(self.local_id)
                registrar = local if isinstance(local, CseId) else None
            self.allowed = {}
            for text in allowed:
                entity = parse_entity_id(text, registrar)
                kind = PeerKind.CSE if isinstance(entity, CseId) else PeerKind.AE
                normal = normal_id(entity, self.sp_fqdn)
                self.allowed[_key(kind, normal)] = normal

    def __repr__(self) -> str:
        return f"CertificateResponder(local_id={self.local_id!r}, in_domain={self.in_domain!r})"

    def bind(self, der: bytes) -> PeerBinding:
        """The identity of Entity A's certificate (called after OpenSSL verified the chain)."""
        cert = _load_der(der)
        check_peer_certificate(cert)
        if self.revocation is not None:
            self.revocation.check(cert)
        found = identities_in(
            cert, in_domain=self.in_domain, sp_fqdn=self.sp_fqdn, services=self.services
        )
        if not found:
            names = describe_names(subject_alt_names(cert)) or "no subjectAltName"
            raise CertificateError(
                f"certificate has no oneM2M identity ({names}); expected an AE-ID URI "
                f"//{self.sp_fqdn}/... or a CSE public domain name <CSE-ID>.{self.in_domain}"
            )
        if self.allowed is not None:
            matches = []
            for ident in found:
                if ident.kind is PeerKind.SERVICE:
                    matches.append(ident)
                    continue
                configured = self.allowed.get(_key(ident.kind, ident.entity_id))
                if configured is not None:
                    # Bind the configured spelling (a CSE-ID read from a DNS name has no case).
                    matches.append(CertificateIdentity(ident.kind, configured, ident.name))
            if not matches:
                named = ", ".join(i.entity_id for i in found)
                raise CertificateError(f"certificate names {named}, which is not an allowed entity")
            found = matches
        if len(found) > 1:
            named = ", ".join(i.entity_id for i in found)
            raise CertificateError(
                f"certificate names several oneM2M identities ({named}); "
                "configure the allowed entities to choose one"
            )
        ident = found[0]
        binding = _peer_binding(cert, ident.entity_id, ident.kind)
        if self.revocation is not None and binding.key_id is not None:
            # A resumed session runs no verify callback: remember which certificate a
            # session's key_id (fingerprint) stands for, to check it against the CRL again.
            self._revocable.pop(binding.key_id, None)
            self._revocable[binding.key_id] = cert
            while len(self._revocable) > _MAX_REVOCABLE:
                del self._revocable[next(iter(self._revocable))]
        return binding

    def resumption_check(self, binding: PeerBinding) -> PeerBinding | None:
        """Refuse to resume the session of a certificate revoked since (or of no known one)."""
        cert = self._revocable.get(binding.key_id or "")
        if cert is None or self.revocation is None:
            raise HandshakeError(f"session of {binding.peer_id} not resumed: certificate unknown")
        try:
            self.revocation.check(cert)
        except CertificateError as exc:
            raise HandshakeError(f"session of {binding.peer_id} not resumed: {exc}") from None
        return None

    def _role_options(self, profile: TLSProfile) -> TLSProfile:
        # The server side: SNI strictness and the CRL check of resumed sessions.
        return replace(
            profile,
            require_sni=self.require_sni,
            resumption_check=None if self.revocation is None else self.resumption_check,
        )


def _key(kind: PeerKind, entity_id: str) -> tuple[PeerKind, str]:
    return (kind, entity_id.lower() if kind is PeerKind.CSE else entity_id)


# ----------------------------------------------------------------------------- Entity A


class CertificateInitiator(_CertificateRole):
    """Entity A of the certificate framework (TS-0003 8.2.2.2): the (D)TLS client.

    ``id_b`` is IdB, an AE-ID or CSE-ID (use :meth:`for_service` for a MAF or MEF). The
    server's certificate must name exactly IdB (8.1.2.5): a CSE-ID's public domain name
    under ``in_domain`` as a dNSName, or an AE-ID's Absolute AE-ID as a URI. The SNI is
    ``server_name``, by default the CSE's public domain name (docs/readings.md A-11, A-12); an
    AE as IdB (the SA2 case of 8.2.1) has no default SNI.
    """

    _SERVER_SIDE = False

    def __init__(
        self,
        credential: CertificateCredential,
        id_b: str,
        *,
        in_domain: str,
        server_name: str | None = None,
        local_id: str | None = None,
        sp_fqdn: str | None = None,
        kind: PeerKind | None = None,
    ) -> None:
        self.in_domain = check_fqdn(in_domain, "IN public domain")
        self.sp_fqdn = check_fqdn(sp_fqdn or in_domain, "M2M-SP FQDN")
        self.credential = credential
        self.local_id = _own_identity(
            credential, local_id, in_domain=self.in_domain, sp_fqdn=self.sp_fqdn
        )
        self._dns: str | None = None
        self._uri: tuple[str, str] | None = None
        default_sni: str | None
        if kind is PeerKind.SERVICE:
            # An FQDN certificate (10.1.1.6): IdB is the MAF's or MEF's FQDN.
            self.kind = PeerKind.SERVICE
            self.id_b = check_fqdn(id_b, "service FQDN").lower()
            self._dns = self.id_b
            self.expected_name = f"DNS:{self.id_b}"
            default_sni = id_b
        else:
            entity = parse_entity_id(id_b)
            self.id_b = normal_id(entity, self.sp_fqdn)
            if isinstance(entity, CseId):
                self.kind = PeerKind.CSE
                self._dns = entity.public_domain_name(self.in_domain)
                self.expected_name = f"DNS:{self._dns}"
                default_sni = self._dns
            else:
                self.kind = PeerKind.AE
                absolute = absolute_ae_id(entity, self.sp_fqdn)
                fqdn, _, path = absolute[2:].partition("/")
                self._uri = (fqdn.lower(), "/" + path)
                self.expected_name = f"URI:{absolute}"
                default_sni = None
            if kind is not None and kind is not self.kind:
                raise ConfigurationError(f"IdB {id_b} is not a {kind.value.upper()} identity")
        self.server_name = server_name if server_name is not None else default_sni

    @classmethod
    def for_service(
        cls,
        credential: CertificateCredential,
        fqdn: str,
        *,
        in_domain: str,
        local_id: str | None = None,
        sp_fqdn: str | None = None,
    ) -> CertificateInitiator:
        """Entity A towards a MAF or MEF named by an FQDN certificate (10.1.1.6)."""
        return cls(
            credential,
            fqdn,
            in_domain=in_domain,
            local_id=local_id,
            sp_fqdn=sp_fqdn,
            kind=PeerKind.SERVICE,
        )

    def __repr__(self) -> str:
        return f"CertificateInitiator(id_b={self.id_b!r}, server_name={self.server_name!r})"

    def _names_id_b(self, cert: x509.Certificate) -> bool:
        for name in dns_and_uri_names(cert):
            value = name.value
            if self._dns is not None:
                # 8.1.2.5: an exact FQDN match (case-insensitive per docs/readings.md A-05); an
                # FQDN certificate may also carry the FQDN as a URI.
                dns_like = isinstance(name, x509.DNSName) or self.kind is PeerKind.SERVICE
                if dns_like and value.lower() == self._dns.lower():
                    return True
            elif isinstance(name, x509.UniformResourceIdentifier) and value.startswith("//"):
                # The Absolute AE-ID: FQDN case-insensitive, the SP-relative part exact.
                fqdn, _, path = value[2:].partition("/")
                if (fqdn.lower(), "/" + path) == self._uri:
                    return True
        return False

    def bind(self, der: bytes) -> PeerBinding:
        """Check that Entity B's certificate names IdB; bind the session to IdB."""
        cert = _load_der(der)
        check_peer_certificate(cert)
        if not self._names_id_b(cert):
            found = identities_in(cert, in_domain=self.in_domain, sp_fqdn=self.sp_fqdn)
            if found:
                named = ", ".join(i.entity_id for i in found)
            elif subject_alt_names(cert):
                named = describe_names(subject_alt_names(cert))
            else:
                raise CertificateError(
                    f"certificate has no oneM2M identity (no subjectAltName) "
                    f"but {self.id_b} was expected"
                )
            raise CertificateError(
                f"certificate names {named} but {self.id_b} was expected ({self.expected_name})"
            )
        return _peer_binding(cert, self.id_b, self.kind)

    def _role_options(self, profile: TLSProfile) -> TLSProfile:
        return replace(profile, server_name=self.server_name)
