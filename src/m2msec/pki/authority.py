"""A small certificate authority for the Certificate-Based framework (TS-0003 8.2.2.2).

It issues the certificate flavours of TS-0003 8.1.2.1 that the framework needs (the
profiles of 10.1.1 are built by :mod:`m2msec.pki.profiles`):

* CSE-ID certificates (10.1.1.7): the CSE's public domain name
  ``<CSE-ID>.<IN public domain>`` (TS-0001 6.5.1.1) as a dNSName;
* AE-ID certificates (10.1.1.5): the Absolute AE-ID ``//{M2M-SP FQDN}/{CSE-ID}/{stem}``
  as a URI, the form 8.1.2.5 matches "exactly";
* FQDN certificates for a MAF or MEF (10.1.1.6): the FQDN as a dNSName.

No certificate carries a wildcard. 8.1.2.2 asks CA certificates to constrain the names
below them: the root carries a critical nameConstraints extension permitting the dNSName
subtrees of the IN public domain (and of any extra domains given at ``init``), and the CA
refuses to issue a dNSName outside them. There is no URI constraint; Entity B checks the
FQDN of an AE-ID itself. Revocation is recorded here and published as a CRL (RFC 5280 5),
which :mod:`m2msec.pki.revocation` checks.

The CA directory holds ``ca.pem``, ``ca.key`` (0600, created with O_EXCL, never
overwritten) and ``ca.toml`` (the IN public domain, the M2M-SP FQDN and the permitted
domains), so that ``issue`` knows how to name CSEs and AEs. The key is stored
unencrypted and protected by file permissions only.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import AeId, CseId, check_fqdn, parse_entity_id, subject_alt_name
from m2msec.paths import write_private
from m2msec.pki.names import show_name, spki_der
from m2msec.pki.profiles import (
    BACKDATE,
    CN_MAX,
    ca_certificate,
    certificate_pem,
    leaf_certificate,
    private_key_pem,
    subject_name,
    under_domains,
)

__all__ = [
    "CA_CERT",
    "CA_CONFIG",
    "CA_KEY",
    "CertificateAuthority",
    "IssuedCredential",
    "write_credential",
]

log = logging.getLogger(__name__)

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_CONFIG = "ca.toml"
CA_REVOKED = "revoked.json"
CA_CRL = "crl.pem"
#: The certificates between an intermediate CA and its root (the intermediate first):
#: appended to every certificate the intermediate issues, so peers can build the chain.
CA_CHAIN = "chain.pem"


@dataclass(frozen=True)
class IssuedCredential:
    """A freshly issued private key and certificate, both PEM; the key stays out of repr."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    identity: str = ""
    """The identity the certificate names, normalised (``/mn-cse-123456``, an FQDN...)."""
    names: tuple[str, ...] = ()
    """The subjectAltName entries as text (``DNS:...``, ``URI:...``)."""

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _write_ca(
    directory: Path,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    in_domain: str,
    sp: str,
    permitted: tuple[str, ...] | None,
    chain: tuple[x509.Certificate, ...],
) -> None:
    """Write a new CA's files into ``directory`` (0700); never over an existing CA."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = [n for n in (CA_KEY, CA_CERT, CA_CONFIG) if (directory / n).exists()]
    if existing:
        raise ConfigurationError(
            f"a CA already exists in {directory} ({', '.join(existing)}); "
            "refusing to overwrite it"
        )
    config = "# m2msec certificate authority (TS-0003 8.1.2, 10.1.1)\n"
    config += f"in_domain = {json.dumps(in_domain)}\n"
    config += f"sp_fqdn = {json.dumps(sp)}\n"
    config += f"name_constraints = {json.dumps(permitted is not None)}\n"
    config += f"permitted = {json.dumps(list(permitted or ()))}\n"
    files = [
        (CA_KEY, private_key_pem(key), 0o600),
        (CA_CERT, certificate_pem(cert), 0o644),
        (CA_CONFIG, config.encode(), 0o644),
    ]
    if chain:
        files.append((CA_CHAIN, b"".join(certificate_pem(c) for c in chain), 0o644))
    written: list[Path] = []
    try:
        # The key first: its O_EXCL creation is what makes a concurrent init lose.
        for fname, data, mode in files:
            write_private(directory / fname, data, mode=mode)
            written.append(directory / fname)
    except FileExistsError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise ConfigurationError(
            f"a CA already exists in {directory} ({Path(str(exc.filename)).name}); "
            "refusing to overwrite it"
        ) from None
    except OSError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


class CertificateAuthority:
    """A root CA (ECDSA P-256, SHA-256) that names oneM2M entities per TS-0003 10.1.1.

    Create one with :meth:`init`, open it with :meth:`load`.
    """

    def __init__(
        self,
        directory: Path,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        *,
        in_domain: str,
        sp_fqdn: str,
        permitted: tuple[str, ...] | None,
        chain: tuple[x509.Certificate, ...] = (),
    ) -> None:
        self.directory = directory
        self.certificate = certificate
        self._key = key
        self.in_domain = in_domain
        self.sp_fqdn = sp_fqdn
        #: dNSName subtrees of the root's nameConstraints; None when unconstrained.
        self.permitted = permitted
        #: For an intermediate: itself and the CAs above it short of the root (RFC 5280 6.1).
        self.chain = chain

    def __repr__(self) -> str:
        return f"CertificateAuthority({str(self.directory)!r}, in_domain={self.in_domain!r})"

    @property
    def cert_pem(self) -> bytes:
        return certificate_pem(self.certificate)

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    # -- revocation (RFC 5280 5) ---------------------------------------------------------
    @property
    def crl_path(self) -> Path:
        return self.directory / CA_CRL

    def _revoked(self) -> dict[str, str]:
        path = self.directory / CA_REVOKED
        if not path.exists():
            return {}
        data: dict[str, str] = json.loads(path.read_text())
        return data

    def revoke(self, serial: int) -> None:
        """Record ``serial`` as revoked (now); :meth:`write_crl` publishes it."""
        revoked = self._revoked()
        revoked.setdefault(format(serial, "x"), datetime.now(UTC).isoformat(timespec="seconds"))
        data = json.dumps(revoked, indent=1).encode()
        write_private(self.directory / CA_REVOKED, data, exist_ok=True)

    def crl(self, *, days: int = 7) -> x509.CertificateRevocationList:
        """A CRL of every revoked serial, signed by the CA, valid ``days``."""
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - timedelta(minutes=1))
            .next_update(now + timedelta(days=days))
        )
        for serial, when in sorted(self._revoked().items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(datetime.fromisoformat(when))
                .build()
            )
        return builder.sign(self._key, hashes.SHA256())

    def write_crl(self, *, days: int = 7) -> Path:
        """Write ``crl.pem`` atomically (listeners reload it when it changes)."""
        crl = self.crl(days=days)
        pem = crl.public_bytes(serialization.Encoding.PEM)
        write_private(self.crl_path, pem, exist_ok=True, mode=0o644)
        return self.crl_path

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        domain: str = "in.provider.com",
        name: str | None = None,
        days: int = 3650,
        sp_fqdn: str | None = None,
        extra_domains: Iterable[str] = (),
        name_constraints: bool = True,
        path_length: int = 0,
    ) -> CertificateAuthority:
        """Create a new CA in ``directory`` (created 0700); refuse to replace one.

        ``path_length`` is the root's pathLenConstraint (RFC 5280 4.2.1.9): 0, the
        default, lets it sign only end-entity certificates; 1 lets it sign one level of
        intermediates (:meth:`intermediate`).

        ``domain`` is the IN public domain under which CSEs are named; ``sp_fqdn`` the
        M2M-SP FQDN of Absolute AE-IDs (default ``domain``); ``extra_domains`` further
        DNS subtrees the CA may name (MAF/MEF FQDNs outside ``domain``).
        """
        directory = Path(directory)
        in_domain = check_fqdn(domain, "IN public domain")
        sp = check_fqdn(sp_fqdn or domain, "M2M-SP FQDN")
        extra = [check_fqdn(d, "permitted domain") for d in extra_domains]
        if days < 1:
            raise ConfigurationError("the CA validity must be at least one day")
        if path_length < 0:
            raise ConfigurationError("the path length must be 0 or more")
        permitted: tuple[str, ...] | None = None
        if name_constraints:
            permitted = tuple(dict.fromkeys(d.lower() for d in [in_domain, sp, *extra]))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = subject_name(name or f"m2msec oneM2M CA {in_domain}"[:CN_MAX])
        now = datetime.now(UTC)
        cert = ca_certificate(
            key,
            subject,
            issuer=None,
            not_after=now + timedelta(days=days),
            path_length=path_length,
            permitted=permitted,
        )
        _write_ca(directory, key, cert, in_domain, sp, permitted, chain=())
        return cls(directory, cert, key, in_domain=in_domain, sp_fqdn=sp, permitted=permitted)

    def intermediate(
        self, directory: Path, *, name: str | None = None, days: int = 1825
    ) -> CertificateAuthority:
        """Create an intermediate CA in ``directory``, signed by this CA (TS-0003 8.1.2.2).

        It names the same domains under the same name constraints, may sign end-entity
        certificates only (pathLenConstraint 0), and appends itself to what it issues.
        Needs this CA's own pathLenConstraint to allow it (``ca init --path-length 1``).
        """
        bc = self.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.path_length is not None and bc.path_length < 1:
            raise ConfigurationError(
                f"the CA in {self.directory} has path length {bc.path_length}: it cannot "
                "sign an intermediate (create the root with --path-length 1 or more)"
            )
        if days < 1:
            raise ConfigurationError("the CA validity must be at least one day")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = subject_name(name or f"m2msec oneM2M intermediate CA {self.in_domain}"[:CN_MAX])
        not_after = min(
            datetime.now(UTC) + timedelta(days=days), self.certificate.not_valid_after_utc
        )
        cert = ca_certificate(
            key,
            subject,
            issuer=(self.certificate, self._key),
            not_after=not_after,
            path_length=0,
            permitted=self.permitted,
        )
        chain = (cert, *self.chain)
        directory = Path(directory)
        _write_ca(directory, key, cert, self.in_domain, self.sp_fqdn, self.permitted, chain)
        return CertificateAuthority(
            directory,
            cert,
            key,
            in_domain=self.in_domain,
            sp_fqdn=self.sp_fqdn,
            permitted=self.permitted,
            chain=chain,
        )

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Open the CA in ``directory``."""
        directory = Path(directory)
        paths = {n: directory / n for n in (CA_KEY, CA_CERT, CA_CONFIG)}
        missing = [n for n, p in paths.items() if not p.exists()]
        if missing:
            raise ConfigurationError(
                f"no CA in {directory}: missing {', '.join(missing)} (run 'm2msec ca init')"
            )
        try:
            config = tomllib.loads(paths[CA_CONFIG].read_text("utf-8"))
            in_domain = check_fqdn(str(config["in_domain"]), "IN public domain")
            sp = check_fqdn(str(config.get("sp_fqdn", in_domain)), "M2M-SP FQDN")
            permitted: tuple[str, ...] | None = None
            if config.get("name_constraints", False):
                permitted = tuple(str(d) for d in config.get("permitted", [in_domain]))
        except (tomllib.TOMLDecodeError, KeyError, IdentifierError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"{paths[CA_CONFIG]} is not a valid CA config: {exc}"
            ) from None
        try:
            cert = x509.load_pem_x509_certificate(paths[CA_CERT].read_bytes())
            key = serialization.load_pem_private_key(paths[CA_KEY].read_bytes(), password=None)
            chain_path = directory / CA_CHAIN
            chain = (
                tuple(x509.load_pem_x509_certificates(chain_path.read_bytes()))
                if chain_path.exists()
                else ()
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot read the CA in {directory}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigurationError(f"{paths[CA_KEY]} is not an EC private key")
        if spki_der(key.public_key()) != spki_der(cert.public_key()):
            raise ConfigurationError(f"{paths[CA_KEY]} does not match {paths[CA_CERT]}")
        if os.name == "posix" and paths[CA_KEY].stat().st_mode & 0o077:
            log.warning("CA key %s is readable by group or others", paths[CA_KEY])
        return cls(
            directory, cert, key, in_domain=in_domain, sp_fqdn=sp, permitted=permitted, chain=chain
        )

    # -- issuing -------------------------------------------------------------------------
    def issue(
        self,
        entity_id: str,
        *,
        days: int = 365,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> IssuedCredential:
        """A CSE-ID or AE-ID certificate and its new key (TS-0003 10.1.1.5, 10.1.1.7).

        ``entity_id`` is a CSE-ID (``/mn-cse-123456``, ``mn-cse-123456`` or absolute) or
        an AE-ID (``/mn-cse-123456/Clight-AE1``, ``/S...`` or absolute). ``not_before``
        and ``not_after`` override the validity exactly (tests issue expired
        certificates this way); otherwise the certificate is valid from now for ``days``,
        and never beyond the CA's own validity.
        """
        entity = parse_entity_id(entity_id)
        if entity.sp_fqdn is not None and entity.sp_fqdn.lower() != self.sp_fqdn.lower():
            raise ConfigurationError(
                f"{entity_id} belongs to the M2M-SP {entity.sp_fqdn}, "
                f"not to this CA's {self.sp_fqdn}"
            )
        if isinstance(entity, AeId):
            if entity.stem.startswith("C") and entity.cse is None:
                raise ConfigurationError(
                    f"AE-ID {entity_id} is a bare AE-ID-Stem: give it with its registrar, "
                    f"as /{{CSE-ID}}/{entity_id}"
                )
            identity = entity.sp_relative()
        else:
            assert isinstance(entity, CseId)
            identity = entity.sp_relative()
        kind, name = subject_alt_name(entity, in_domain=self.in_domain, sp_fqdn=self.sp_fqdn)
        names: list[x509.GeneralName] = [
            x509.DNSName(name) if kind == "DNS" else x509.UniformResourceIdentifier(name)
        ]
        return self._issue(identity, names, days=days, not_before=not_before, not_after=not_after)

    def issue_service(
        self,
        fqdn: str,
        *,
        days: int = 365,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> IssuedCredential:
        """An FQDN certificate for a MAF or MEF (TS-0003 10.1.1.6)."""
        fqdn = check_fqdn(fqdn, "service FQDN")
        return self._issue(
            fqdn.lower(),
            [x509.DNSName(fqdn)],
            days=days,
            not_before=not_before,
            not_after=not_after,
        )

    def _issue(
        self,
        identity: str,
        names: list[x509.GeneralName],
        *,
        days: int,
        not_before: datetime | None,
        not_after: datetime | None,
    ) -> IssuedCredential:
        for name in names:
            if "*" in str(name.value):
                raise ConfigurationError("wildcard names are never issued (TS-0003 10.1.1)")
            if (
                isinstance(name, x509.DNSName)
                and self.permitted is not None
                and not under_domains(name.value, self.permitted)
            ):
                raise ConfigurationError(
                    f"{name.value} is outside this CA's name constraints "
                    f"({', '.join(self.permitted)}); init the CA with --extra-domain"
                )
        now = datetime.now(UTC)
        ca_end = self.certificate.not_valid_after_utc
        if not_before is None:
            not_before = now - BACKDATE
        if not_after is None:
            if days < 1:
                raise ConfigurationError("the validity must be at least one day")
            not_after = min(now + timedelta(days=days), ca_end)
        if not_after <= not_before:
            raise ConfigurationError("notAfter must be later than notBefore")

        key = ec.generate_private_key(ec.SECP256R1())
        cert = leaf_certificate(
            key,
            names,
            issuer=(self.certificate, self._key),
            not_before=not_before,
            not_after=not_after,
        )
        return IssuedCredential(
            key_pem=private_key_pem(key),
            cert_pem=certificate_pem(cert) + b"".join(certificate_pem(c) for c in self.chain),
            identity=identity,
            names=tuple(show_name(n) for n in names),
        )


def write_credential(
    credential: IssuedCredential, prefix: Path, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (0600) and ``PREFIX.pem`` (the certificate only).

    Without ``overwrite`` both files are created with O_EXCL, so an existing key is never
    replaced; with it, each is replaced atomically. Returns (key path, certificate path).
    """
    prefix = Path(prefix)
    key_path = prefix.with_name(prefix.name + ".key")
    cert_path = prefix.with_name(prefix.name + ".pem")
    prefix.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if overwrite:
        write_private(key_path, credential.key_pem, exist_ok=True)
        write_private(cert_path, credential.cert_pem, exist_ok=True, mode=0o644)
        return key_path, cert_path
    existing = [p for p in (key_path, cert_path) if p.exists() or p.is_symlink()]
    if existing:
        raise ConfigurationError(
            f"{', '.join(str(p) for p in existing)} already exists; refusing to overwrite"
        )
    write_private(key_path, credential.key_pem)
    try:
        write_private(cert_path, credential.cert_pem, mode=0o644)
    except OSError:
        key_path.unlink(missing_ok=True)
        raise
    return key_path, cert_path
