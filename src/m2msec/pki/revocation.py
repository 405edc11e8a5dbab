"""Checking certificates against a CA's revocation list (TS-0003 8.1.2.2; RFC 5280 5).

Entity B of the certificate framework (8.2.2.2) checks each peer's certificate against
the CRL its CA publishes (:meth:`m2msec.pki.authority.CertificateAuthority.write_crl`
writes it, ``m2msec ca revoke`` fills it). Verification only; issuing stays with the CA.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from m2msec.errors import CertificateError, CertificateRevoked

__all__ = ["RevocationList"]


class RevocationList:
    """A CRL file (RFC 5280 5) that a certificate listener checks each peer against.

    The file (PEM or DER) is read again whenever its mtime, size or inode changes, so a
    new CRL takes effect without a restart. It must be signed by one of ``issuers``; a
    missing, unreadable, badly signed or expired CRL (nextUpdate passed) refuses every
    peer with a clear reason rather than accepting unchecked ones (fail closed).
    """

    def __init__(self, path: Path | str, issuers: Iterable[x509.Certificate]) -> None:
        self.path = Path(path)
        self.issuers = tuple(issuers)
        self._stamp: tuple[int, int, int] | None = None
        self._crl: x509.CertificateRevocationList | None = None

    def current(self) -> x509.CertificateRevocationList:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise CertificateError(f"CRL {self.path} unreadable: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp or self._crl is None:
            data = self.path.read_bytes()
            try:
                crl = (
                    x509.load_pem_x509_crl(data)
                    if data.lstrip().startswith(b"-----")
                    else x509.load_der_x509_crl(data)
                )
            except ValueError:
                raise CertificateError(f"CRL {self.path} is not a CRL") from None
            if not any(
                ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
                for ca in self.issuers
            ):
                raise CertificateError(f"CRL {self.path} is not signed by a trusted CA")
            self._crl, self._stamp = crl, stamp
        assert self._crl is not None
        next_update = self._crl.next_update_utc
        if next_update is not None and next_update < datetime.now(UTC):
            raise CertificateError(f"CRL {self.path} expired at {next_update.isoformat()}")
        return self._crl

    def check(self, cert: x509.Certificate) -> None:
        """Raise :class:`CertificateRevoked` if ``cert`` is on the CRL."""
        crl = self.current()
        if crl.issuer == cert.issuer and crl.get_revoked_certificate_by_serial_number(
            cert.serial_number
        ) is not None:
            raise CertificateRevoked(f"certificate serial {cert.serial_number:x} is revoked")
