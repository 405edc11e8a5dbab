"""``m2msec ca``: a small CA for the Certificate-Based framework (TS-0003 8.2.2.2, 10.1.1).

``ca init`` creates an ECDSA P-256 root in a private directory; ``ca issue`` issues a
CSE-ID certificate (the CSE's public domain name ``<CSE-ID>.<IN public domain>`` as a
dNSName, 10.1.1.7), an AE-ID certificate (the Absolute AE-ID as a URI, 10.1.1.5) or, with
``--service``, an FQDN certificate for a MAF or MEF (10.1.1.6). Private keys are written
0600 and never replaced.

Exit status: 0 on success, 1 when the CA refuses (existing CA or files, missing CA), 2 for
malformed input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from m2msec.cli.common import (
    exactly_one,
    exit_on_errors,
    fail,
    key_value_table,
    option,
    stdout_console,
    sub_app,
)
from m2msec.errors import CertificateError, ConfigurationError, IdentifierError
from m2msec.pki.authority import CA_CERT, CA_KEY, CertificateAuthority, write_credential
from m2msec.pki.names import certificate_fingerprint

__all__ = ["app"]

app = sub_app(
    "ca", "A small CA issuing certificates that name CSE-IDs and AE-IDs (TS-0003 10.1.1)."
)

DirOption = Annotated[Path, option("--dir", metavar="DIR", help="The CA directory.")]


@contextmanager
def _errors() -> Iterator[None]:
    """Malformed ids exit 2; a refusing CA (existing files, no CA) or a failed write 1."""
    try:
        failure = (ConfigurationError, CertificateError)
        with exit_on_errors(usage=(IdentifierError,), failure=failure):
            yield
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        fail(f"cannot write{where}: {exc.strerror or exc}", 1)


def _created(title: str, ca: CertificateAuthority, details: list[tuple[str, str]]) -> None:
    """What a new CA's files are, its subject, ``details`` and its validity."""
    cert = ca.certificate
    rows = [
        ("certificate", str(ca.directory / CA_CERT)),
        ("private key", f"{ca.directory / CA_KEY} (0600)"),
        ("subject", cert.subject.rfc4514_string()),
        *details,
        ("valid until", cert.not_valid_after_utc.isoformat(timespec="seconds")),
    ]
    stdout_console().print(Text(title, style="bold green"))
    stdout_console().print(key_value_table(rows))


@app.command()
def init(
    directory: DirOption,
    domain: Annotated[
        str,
        typer.Option(
            "--domain", help="IN public domain: CSEs are named <CSE-ID>.<domain> (TS-0001 6.5.1.1)."
        ),
    ] = "in.provider.com",
    sp_fqdn: Annotated[
        str | None,
        option(
            "--sp-fqdn",
            help="M2M-SP FQDN of Absolute AE-IDs //<sp-fqdn>/... (default: the domain).",
        ),
    ] = None,
    name: Annotated[str | None, option("--name", help="Common name of the root.")] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Validity of the root.")] = 3650,
    extra_domain: Annotated[
        list[str] | None,
        option(
            "--extra-domain",
            help="Another DNS subtree the CA may name (MAF/MEF FQDNs); repeatable.",
        ),
    ] = None,
    no_name_constraints: Annotated[
        bool,
        typer.Option("--no-name-constraints", help="Leave the root unconstrained (8.1.2.2)."),
    ] = False,
    path_length: Annotated[
        int,
        typer.Option(
            "--path-length",
            min=0,
            help="Intermediate levels the root may sign (0: end entities only).",
        ),
    ] = 0,
) -> None:
    """Create a CA (ECDSA P-256 root) in DIR; an existing CA is never overwritten."""
    with _errors():
        ca = CertificateAuthority.init(
            directory,
            domain=domain,
            name=name,
            days=days,
            sp_fqdn=sp_fqdn,
            extra_domains=extra_domain or (),
            name_constraints=not no_name_constraints,
            path_length=path_length,
        )
    _created(
        "CA created",
        ca,
        [
            ("IN public domain", ca.in_domain),
            ("M2M-SP FQDN", ca.sp_fqdn),
            ("name constraints", ", ".join(ca.permitted) if ca.permitted else "none"),
        ],
    )


@app.command()
def issue(
    directory: DirOption,
    out: Annotated[
        Path, option("--out", metavar="PREFIX", help="Write PREFIX.key and PREFIX.pem.")
    ],
    entity_id: Annotated[
        str | None,
        option(
            "--entity-id",
            metavar="ID",
            help="CSE-ID (/mn-cse-123456) or AE-ID (/mn-cse-123456/Clight-AE1, /S...).",
        ),
    ] = None,
    service: Annotated[
        str | None,
        option("--service", metavar="FQDN", help="Issue an FQDN certificate for a MAF or MEF."),
    ] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 365,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing PREFIX.key and PREFIX.pem.")
    ] = False,
) -> None:
    """Issue a key and a certificate naming a oneM2M entity (TS-0003 10.1.1)."""
    exactly_one(entity_id=entity_id, service=service)
    with _errors():
        ca = CertificateAuthority.load(directory)
        if entity_id is not None:
            issued = ca.issue(entity_id, days=days)
        else:
            assert service is not None
            issued = ca.issue_service(service, days=days)
        key_path, cert_path = write_credential(issued, out, overwrite=overwrite)
    cert = issued.certificate
    stdout_console().print(Text(f"issued a certificate for {issued.identity}", style="bold green"))
    stdout_console().print(
        key_value_table(
            [
                ("identity", issued.identity),
                ("subjectAltName", ", ".join(issued.names)),
                ("certificate", str(cert_path)),
                ("private key", f"{key_path} (0600)"),
                ("CA certificate", str(ca.cert_path)),
                ("valid until", cert.not_valid_after_utc.isoformat(timespec="seconds")),
                ("sha-256", certificate_fingerprint(cert)),
            ]
        )
    )


@app.command()
def intermediate(
    directory: DirOption,
    out_dir: Annotated[
        Path, option("--out-dir", metavar="DIR", help="Directory of the new intermediate CA.")
    ],
    name: Annotated[str | None, option("--name", help="Common name.")] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, help="Validity (within the root's).")
    ] = 1825,
) -> None:
    """Create an intermediate CA in OUT-DIR, signed by the CA in DIR (8.1.2.2).

    Use OUT-DIR with `ca issue --dir`; what it issues carries the intermediate, and
    peers keep the root (DIR/ca.pem) as their trust anchor.
    """
    with _errors():
        ca = CertificateAuthority.load(directory).intermediate(out_dir, name=name, days=days)
    _created("intermediate CA created", ca, [("issuer", ca.certificate.issuer.rfc4514_string())])


@app.command()
def revoke(
    directory: DirOption,
    serial: Annotated[
        str | None, option("--serial", metavar="HEX", help="Serial number (hex) to revoke.")
    ] = None,
    cert: Annotated[
        Path | None, option("--cert", metavar="PEM", help="Certificate file to revoke.")
    ] = None,
) -> None:
    """Revoke a certificate this CA issued (RFC 5280 5); run `ca crl` to publish it."""
    exactly_one(serial=serial, cert=cert)
    with _errors():
        ca = CertificateAuthority.load(directory)
        if cert is not None:
            from cryptography import x509
            from cryptography.exceptions import InvalidSignature

            target = x509.load_pem_x509_certificate(cert.read_bytes())
            try:
                target.verify_directly_issued_by(ca.certificate)
            except (ValueError, TypeError, InvalidSignature):
                fail(f"{cert} was not issued by this CA", 2)
            number = target.serial_number
        else:
            assert serial is not None
            try:
                number = int(serial.removeprefix("0x").replace(":", ""), 16)
            except ValueError:
                fail(f"--serial {serial!r} is not a hexadecimal number", 2)
        ca.revoke(number)
    done = f"revoked serial {number:x}; run `m2msec ca crl` to publish"
    stdout_console().print(Text(done, style="bold"))


@app.command()
def crl(
    directory: DirOption,
    days: Annotated[int, typer.Option("--days", min=1, help="CRL validity (nextUpdate).")] = 7,
) -> None:
    """Write DIR/crl.pem, the CA's signed CRL of every revoked serial."""
    with _errors():
        ca = CertificateAuthority.load(directory)
        path = ca.write_crl(days=days)
    stdout_console().print(Text(f"wrote {path}", style="bold green"))
