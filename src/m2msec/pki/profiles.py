"""The certificate profiles of TS-0003 10.1.1, built with ``cryptography``: no files.

* every certificate (10.1.1.1, 10.1.1.3): ECDSA on P-256, SHA-256, keyUsage with
  digitalSignature, conforming to RFC 5280. A CA is in the chain of every certificate it
  signs, so it carries digitalSignature too, beside keyCertSign and cRLSign;
* CA certificates (8.1.2.2): basicConstraints with a pathLenConstraint and, when asked,
  a critical nameConstraints extension permitting dNSName subtrees (no URI constraint:
  OpenSSL cannot match a scheme-less Absolute AE-ID against one);
* end-entity certificates (10.1.1.5-10.1.1.7): the subjectAltName naming the entity,
  extendedKeyUsage serverAuth and clientAuth (an entity is Entity A on one association
  and Entity B on another).

Which names a certificate may carry is decided by the CA (:mod:`m2msec.pki.authority`)
with the naming rules of :mod:`m2msec.ids` and :mod:`m2msec.pki.names`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "BACKDATE",
    "CN_MAX",
    "ca_certificate",
    "certificate_pem",
    "leaf_certificate",
    "private_key_pem",
    "subject_name",
    "under_domains",
]

#: Backdating of notBefore, to absorb clock skew between entities.
BACKDATE = timedelta(minutes=5)
CN_MAX = 64  # RFC 5280 ub-common-name


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def subject_name(common_name: str | None) -> x509.Name:
    """A subject with the commonName, or empty when there is none that fits."""
    if common_name is None or not 0 < len(common_name) <= CN_MAX:
        return x509.Name([])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def under_domains(fqdn: str, domains: Iterable[str]) -> bool:
    """Whether ``fqdn`` is one of ``domains`` or below one (a dNSName subtree)."""
    fqdn = fqdn.lower()
    return any(fqdn == d.lower() or fqdn.endswith("." + d.lower()) for d in domains)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,  # 10.1.1.1, for every certificate in the chain
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def ca_certificate(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    not_after: datetime,
    path_length: int,
    permitted: tuple[str, ...] | None,
) -> x509.Certificate:
    """A CA certificate: self-signed when ``issuer`` is None, else signed by it."""
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    if issuer is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        issuer_name, signer = subject, key
    else:
        parent, signer = issuer
        aki = _authority_key_id(parent)
        issuer_name = parent.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    if permitted is not None:
        # 8.1.2.2; RFC 5280 4.2.1.10: conforming CAs mark it critical.
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(d) for d in permitted],
                excluded_subtrees=None,
            ),
            critical=True,
        )
    return builder.sign(signer, hashes.SHA256())


def leaf_certificate(
    key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName],
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """An end-entity certificate for ``key`` naming ``names``, signed by ``issuer``."""
    parent, signer = issuer
    cn = str(names[0].value)  # for people reading the certificate; SAN is what counts
    subject = subject_name(cn)
    san_critical = not subject.rdns  # RFC 5280 4.2.1.6: critical if the subject is empty
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=san_critical)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(_authority_key_id(parent), critical=False)
        .sign(signer, hashes.SHA256())
    )
