"""How certificates name oneM2M entities, and which keys they may carry (TS-0003 8.1.2, 10.1.1).

The naming checks shared by the certificate framework (which reads a peer's identity,
8.1.2.4, 8.1.2.5) and the CA (which writes it, 10.1.1): no I/O, no TLS.

* :func:`identities_in` reads every oneM2M identity a certificate's subjectAltName holds.
* :func:`check_public_key` and :func:`check_signature_hash` refuse keys weaker than EC
  P-256 or RSA-2048 and MD5/SHA-1 signatures: the ``@SECLEVEL=0`` of the CCM_8 cipher
  strings (10.2.3) would otherwise let OpenSSL accept them.
* :func:`certificate_fingerprint` is the key identifier of a certificate-based
  association (SHA-256 of the DER, lower-case hex); :func:`public_key_identifier` the
  RFC 6920 identifier of 10.1.2 for raw public keys.

How identities are written in certificates (10.1.1.5, 10.1.1.7, 10.1.1.6):

* CSE-ID certificate: the CSE's public domain name ``<CSE-ID>.<IN public domain>``
  (TS-0001 6.5.1.1) as a dNSName, e.g. ``mn-cse-123456.in.provider.com``. Compared as an
  FQDN, case-insensitively (docs/readings.md A-05).
* AE-ID certificate: "the full URI representation of the AE-ID" as a URI, matched
  "exactly" against the Absolute AE-ID (8.1.2.5), so the URI is the Absolute AE-ID itself,
  ``//{M2M-SP FQDN}/{CSE-ID}/{C-stem}`` or ``//{M2M-SP FQDN}/{S-stem}`` (TS-0001 table
  7.2-1). The FQDN part compares case-insensitively, the rest octet-exact. URIs of any
  other shape are not oneM2M identities and are ignored.
* FQDN certificate (MAF, MEF): the FQDN as a dNSName (a URI equal to the FQDN is also
  accepted, 8.1.2.5).

Wildcards are never accepted (10.1.1.5-10.1.1.8): a certificate carrying one is refused.
Identities bind in their SP-relative form (docs/readings.md A-14) when they belong to the local
M2M-SP (``sp_fqdn``, by default the IN public domain), in absolute form otherwise.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from m2msec.crypto import fingerprint
from m2msec.errors import CertificateError, IdentifierError
from m2msec.ids import AeId, CseId, EntityId, PeerKind, check_fqdn, parse_entity_id

__all__ = [
    "MIN_RSA_BITS",
    "CertificateIdentity",
    "certificate_fingerprint",
    "check_peer_certificate",
    "check_public_key",
    "check_signature_hash",
    "describe_names",
    "dns_and_uri_names",
    "identities_in",
    "in_domain_of",
    "is_ca",
    "normal_id",
    "public_key_identifier",
    "show_name",
    "spki_der",
    "subject_alt_names",
]

#: Curves accepted for our own and for peers' keys (10.1.1.1 mandates P-256; larger
#: NIST curves are no weaker).
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
MIN_RSA_BITS = 2048
#: Signature hashes refused on a peer's certificate (SECLEVEL=0 would let them through).
_WEAK_HASHES = {"md5", "sha1"}


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER certificate, lower-case hex: our certificate key_id.

    The one fingerprint of :mod:`m2msec.crypto.fingerprint`, applied to a parsed certificate.
    """
    return fingerprint.certificate_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def public_key_identifier(cert: x509.Certificate) -> str:
    """RFC 6920 ``ni:///sha-256;...`` over the SubjectPublicKeyInfo (TS-0003 10.1.2)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).rstrip(b"=").decode()
    return f"ni:///sha-256;{digest}"


def check_public_key(key: object, whose: str = "certificate") -> None:
    """Refuse keys weaker than EC P-256 or RSA-2048 (:class:`CertificateError`)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise CertificateError(
                f"{whose} key too weak or unsupported: EC curve {key.curve.name} "
                "(P-256, P-384 or P-521 needed)"
            )
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateError(
                f"{whose} key too weak: RSA-{key.key_size} (at least {MIN_RSA_BITS} bits)"
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise CertificateError(f"{whose} key type {type(key).__name__} is not supported")


def check_signature_hash(cert: x509.Certificate) -> None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise CertificateError("certificate signature algorithm is not supported") from None
    if algorithm is not None and algorithm.name in _WEAK_HASHES:
        raise CertificateError(f"certificate signed with {algorithm.name.upper()}: too weak")


def normal_id(entity: EntityId, sp_fqdn: str) -> str:
    """SP-relative form for the local M2M-SP (docs/readings.md A-14), absolute for another SP."""
    if entity.sp_fqdn is not None and entity.sp_fqdn.lower() != sp_fqdn.lower():
        return str(entity)
    return entity.sp_relative()



@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """A oneM2M identity found in a certificate's subjectAltName.

    ``entity_id`` is the normalised AE-ID or CSE-ID (SP-relative for the local M2M-SP) or,
    for a service, the FQDN in lower case; ``name`` the entry as written (``DNS:...``).
    """

    kind: PeerKind
    entity_id: str
    name: str


def subject_alt_names(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except ValueError as exc:  # malformed extension
        raise CertificateError(f"certificate has a malformed extension: {exc}") from None
    return list(ext.value)


def dns_and_uri_names(
    cert: x509.Certificate,
) -> list[x509.DNSName | x509.UniformResourceIdentifier]:
    """The dNSName and URI entries, where oneM2M identities stand; a wildcard is refused."""
    found: list[x509.DNSName | x509.UniformResourceIdentifier] = []
    for name in subject_alt_names(cert):
        if isinstance(name, x509.DNSName | x509.UniformResourceIdentifier):
            if "*" in name.value:
                raise CertificateError(
                    f"certificate names a wildcard ({name.value}): refused (10.1.1)"
                )
            found.append(name)
    return found


def show_name(name: x509.GeneralName) -> str:
    """A subjectAltName entry as text: ``DNS:...``, ``URI:...``, else its type."""
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    return type(name).__name__


def describe_names(names: Iterable[x509.GeneralName]) -> str:
    out = [show_name(name) for name in names]
    text = ", ".join(out[:6])
    return text + (", ..." if len(out) > 6 else "")


def identities_in(
    cert: x509.Certificate,
    *,
    in_domain: str,
    sp_fqdn: str | None = None,
    services: Iterable[str] = (),
) -> list[CertificateIdentity]:
    """Every oneM2M identity the certificate names (8.1.2.1, 10.1.1).

    A dNSName ``<label>.<in_domain>`` names the CSE ``/<label>``, unless it is one of
    ``services`` (MAF/MEF FQDNs), which name services. A URI ``//<FQDN>/...`` that parses
    as an AE-ID names that AE. A wildcard anywhere raises :class:`CertificateError`.
    """
    sp = sp_fqdn or in_domain
    suffix = "." + in_domain.lower()
    service_names = {s.lower() for s in services}
    found: list[CertificateIdentity] = []
    for name in dns_and_uri_names(cert):
        value = name.value
        if isinstance(name, x509.DNSName):
            lower = value.lower()
            if lower in service_names:
                found.append(CertificateIdentity(PeerKind.SERVICE, lower, f"DNS:{value}"))
            elif lower.endswith(suffix):
                label = value[: -len(suffix)]
                try:
                    cse = CseId(label)
                    cse.public_domain_name(in_domain)  # a single DNS label
                except IdentifierError:
                    continue
                found.append(CertificateIdentity(PeerKind.CSE, normal_id(cse, sp), f"DNS:{value}"))
        elif value.lower() in service_names:
            found.append(CertificateIdentity(PeerKind.SERVICE, value.lower(), f"URI:{value}"))
        elif value.startswith("//"):
            try:
                entity = parse_entity_id(value)
            except IdentifierError:
                continue
            if isinstance(entity, AeId):
                found.append(
                    CertificateIdentity(PeerKind.AE, normal_id(entity, sp), f"URI:{value}")
                )
    return found


def in_domain_of(cert: x509.Certificate, cse_id: CseId | None = None) -> str:
    """The IN public domain a CSE-ID certificate names (10.1.1.7, TS-0001 6.5.1.1).

    10.1.1.7 puts "the public domain name representation of the CSE-ID" in the
    subjectAltName: a dNSName ``<CSE-ID>.<IN public domain>``, the CSE-ID one label. So
    the domain is what follows the CSE-ID's label (``cse_id`` given: only names starting
    with ``<CSE-ID>.``, case-insensitively) or, without ``cse_id``, what follows the first
    label of each dNSName. The subject's CN is not read: it names no oneM2M identity in a
    10.1.1 profile (as :func:`identities_in`). Exactly one domain must result; none or
    several raise :class:`CertificateError`, as does a wildcard.
    """
    prefix = None if cse_id is None else cse_id.relative.lower() + "."
    found: dict[str, None] = {}
    for name in dns_and_uri_names(cert):
        if not isinstance(name, x509.DNSName):
            continue
        lower = name.value.lower().rstrip(".")
        if prefix is not None:
            if not lower.startswith(prefix):
                continue
            domain = lower[len(prefix) :]
        else:
            _, dot, domain = lower.partition(".")
            if not dot:
                continue
        try:
            found[check_fqdn(domain, "IN public domain")] = None
        except IdentifierError:
            continue
    whose = "CSE public domain name" if cse_id is None else f"{cse_id.relative}.<domain>"
    if not found:
        raise CertificateError(
            f"the certificate names no {whose} in its subjectAltName (TS-0003 10.1.1.7; "
            f"it has {describe_names(subject_alt_names(cert)) or 'none'})"
        )
    if len(found) > 1:
        raise CertificateError(
            f"the certificate names several IN public domains ({', '.join(found)})"
        )
    return next(iter(found))


def check_peer_certificate(cert: x509.Certificate) -> None:
    check_public_key(cert.public_key(), "peer certificate")
    check_signature_hash(cert)


def spki_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca
