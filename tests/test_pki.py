"""The small CA (m2msec.pki) and ``m2msec ca``: profiles of TS-0003 10.1.1, file safety."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from m2msec.cli.ca import app
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.frameworks.certificate import CertificateCredential
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.pki.names import identities_in
from m2msec.tls.context import PeerKind


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def san(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca")


def test_init_writes_private_files(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", domain="in.provider.com", name="Test Root")
    d = tmp_path / "ca"
    assert mode(d) == 0o700
    assert mode(d / "ca.key") == 0o600
    assert (d / "ca.pem").read_bytes() == ca.cert_pem
    assert 'in_domain = "in.provider.com"' in (d / "ca.toml").read_text()
    root = ca.certificate
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert ku.value.digital_signature  # 10.1.1.1 applies to every certificate of the chain
    root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    nc = root.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and nc.value.permitted_subtrees == [x509.DNSName("in.provider.com")]
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert isinstance(root.signature_hash_algorithm, hashes.SHA256)
    assert root.subject.rfc4514_string() == "CN=Test Root"


def test_init_twice_refuses_and_keeps_the_key(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path / "ca")
    key = (tmp_path / "ca" / "ca.key").read_bytes()
    with pytest.raises(ConfigurationError, match="a CA already exists"):
        CertificateAuthority.init(tmp_path / "ca")
    assert (tmp_path / "ca" / "ca.key").read_bytes() == key


def test_load_round_trip(ca: CertificateAuthority) -> None:
    loaded = CertificateAuthority.load(ca.directory)
    assert loaded.certificate == ca.certificate
    assert (loaded.in_domain, loaded.sp_fqdn) == ("in.provider.com", "in.provider.com")
    assert loaded.permitted == ("in.provider.com",)
    with pytest.raises(ConfigurationError, match="no CA in"):
        CertificateAuthority.load(ca.directory.parent / "nothing")


def test_cse_certificate_profile(ca: CertificateAuthority) -> None:
    issued = ca.issue("/mn-cse-123456")
    cert = issued.certificate
    # 10.1.1.7: the public domain name of the CSE-ID (TS-0001 6.5.1.1) as a dNSName.
    assert san(cert) == [x509.DNSName("mn-cse-123456.in.provider.com")]
    assert issued.identity == "/mn-cse-123456"
    assert issued.names == ("DNS:mn-cse-123456.in.provider.com",)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(ca.certificate)
    # The bare and absolute forms of the same CSE-ID name it alike.
    for form in ("mn-cse-123456", "//in.provider.com/mn-cse-123456"):
        assert san(ca.issue(form).certificate) == san(cert)


def test_ae_certificate_profile(ca: CertificateAuthority) -> None:
    issued = ca.issue("/mn-cse-123456/Clight-AE1")
    # 10.1.1.5 / 8.1.2.5: the Absolute AE-ID as a URI.
    assert san(issued.certificate) == [
        x509.UniformResourceIdentifier("//in.provider.com/mn-cse-123456/Clight-AE1")
    ]
    assert issued.identity == "/mn-cse-123456/Clight-AE1"
    found = identities_in(issued.certificate, in_domain="in.provider.com")
    assert [(i.kind, i.entity_id) for i in found] == [(PeerKind.AE, "/mn-cse-123456/Clight-AE1")]
    s_stem = ca.issue("/Sweather")
    assert san(s_stem.certificate) == [x509.UniformResourceIdentifier("//in.provider.com/Sweather")]


def test_sp_fqdn_and_foreign_ids(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(
        tmp_path / "ca", domain="in.provider.com", sp_fqdn="provider.com"
    )
    cert = ca.issue("/mn-cse-1/Cae").certificate
    assert san(cert) == [x509.UniformResourceIdentifier("//provider.com/mn-cse-1/Cae")]
    with pytest.raises(ConfigurationError, match=r"belongs to the M2M-SP other\.com"):
        ca.issue("//other.com/mn-cse-1/Cae")


def test_issue_refuses_bad_ids(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigurationError, match="bare AE-ID-Stem"):
        ca.issue("Clight-AE1")
    with pytest.raises(IdentifierError):
        ca.issue("/mn cse")
    with pytest.raises(IdentifierError, match="single DNS label"):
        ca.issue("/mn.cse")
    with pytest.raises(IdentifierError):
        ca.issue_service("*.in.provider.com")


def test_service_certificate_and_name_constraints(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", extra_domains=["mef.example"])
    assert san(ca.issue_service("maf.in.provider.com").certificate) == [
        x509.DNSName("maf.in.provider.com")
    ]
    assert san(ca.issue_service("mef.example").certificate) == [x509.DNSName("mef.example")]
    with pytest.raises(ConfigurationError, match="outside this CA's name constraints"):
        ca.issue_service("maf.elsewhere.net")
    free = CertificateAuthority.init(tmp_path / "free", name_constraints=False)
    assert free.permitted is None
    free.issue_service("maf.elsewhere.net")
    with pytest.raises(x509.ExtensionNotFound):
        free.certificate.extensions.get_extension_for_class(x509.NameConstraints)


def test_validity_and_test_hook(ca: CertificateAuthority) -> None:
    cert = ca.issue("/mn-cse-1", days=10).certificate
    left = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=9) < left <= timedelta(days=10)
    # Never beyond the CA itself.
    long = ca.issue("/mn-cse-1", days=100000).certificate
    assert long.not_valid_after_utc == ca.certificate.not_valid_after_utc
    past = datetime(2020, 1, 1, tzinfo=UTC)
    expired = ca.issue("/mn-cse-1", not_before=past, not_after=past + timedelta(days=1))
    assert expired.certificate.not_valid_after_utc == past + timedelta(days=1)
    with pytest.raises(ConfigurationError, match="later than notBefore"):
        ca.issue("/mn-cse-1", not_before=past, not_after=past)


def test_write_credential_modes_and_no_overwrite(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue("/mn-cse-123456")
    key_path, cert_path = write_credential(issued, tmp_path / "out" / "mn")
    assert (key_path.name, cert_path.name) == ("mn.key", "mn.pem")
    assert mode(key_path) == 0o600
    assert cert_path.read_bytes() == issued.cert_pem  # the certificate, nothing else
    assert key_path.read_bytes() == issued.key_pem
    CertificateCredential.from_files(cert_path, key_path, ca.cert_path)
    again = ca.issue("/mn-cse-123456")
    with pytest.raises(ConfigurationError, match="already exists"):
        write_credential(again, tmp_path / "out" / "mn")
    assert key_path.read_bytes() == issued.key_pem
    write_credential(again, tmp_path / "out" / "mn", overwrite=True)
    assert key_path.read_bytes() == again.key_pem and mode(key_path) == 0o600
    assert "PRIVATE" not in repr(again)


# ----------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_init_issue(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    result = runner.invoke(app, ["init", "--dir", str(d), "--domain", "in.provider.com"])
    assert result.exit_code == 0, result.output
    assert "ca.pem" in result.output and "in.provider.com" in result.output
    assert mode(d / "ca.key") == 0o600

    prefix = tmp_path / "mn"
    result = runner.invoke(
        app, ["issue", "--dir", str(d), "--entity-id", "/mn-cse-123456", "--out", str(prefix)]
    )
    assert result.exit_code == 0, result.output
    assert "DNS:mn-cse-123456.in.provider.com" in result.output
    assert str(tmp_path / "mn.key") in result.output
    assert mode(tmp_path / "mn.key") == 0o600

    result = runner.invoke(
        app,
        ["issue", "--dir", str(d), "--entity-id", "/mn-cse-123456/Clight-AE1",
         "--out", str(tmp_path / "ae"), "--days", "30"],
    )
    assert result.exit_code == 0, result.output
    assert "URI://in.provider.com/mn-cse-123456/Clight-AE1" in result.output

    result = runner.invoke(
        app, ["issue", "--dir", str(d), "--service", "maf.in.provider.com", "--out",
              str(tmp_path / "maf")],
    )
    assert result.exit_code == 0, result.output


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    assert runner.invoke(app, ["init", "--dir", str(d)]).exit_code == 0
    result = runner.invoke(app, ["init", "--dir", str(d)])
    assert result.exit_code == 1
    assert "a CA already exists" in result.output and "Traceback" not in result.output

    result = runner.invoke(
        app, ["issue", "--dir", str(tmp_path / "none"), "--entity-id", "/x", "--out",
              str(tmp_path / "x")],
    )
    assert result.exit_code == 1 and "no CA in" in result.output

    result = runner.invoke(
        app, ["issue", "--dir", str(d), "--entity-id", "/bad id", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "invalid" in result.output

    args = ["issue", "--dir", str(d), "--entity-id", "/mn-cse-1", "--out", str(tmp_path / "x")]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "already exists" in result.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0

    result = runner.invoke(app, ["issue", "--dir", str(d), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "exactly one of" in result.output
    assert "Traceback" not in result.output


def test_cli_revoke_and_crl(tmp_path: Path) -> None:
    """`ca revoke --serial|--cert` and `ca crl` write a CRL signed by the CA (RFC 5280 5)."""
    from cryptography import x509

    d = tmp_path / "ca"
    result = runner.invoke(app, ["init", "--dir", str(d), "--domain", "in.provider.com"])
    assert result.exit_code == 0, result.output
    ca = CertificateAuthority.load(d)
    _, c1 = write_credential(ca.issue("/mn-cse-1"), tmp_path / "one")
    issued = ca.issue("/mn-cse-2")
    result = runner.invoke(app, ["revoke", "--dir", str(d), "--cert", str(c1)])
    assert result.exit_code == 0, result.output
    serial = format(issued.certificate.serial_number, "x")
    assert runner.invoke(app, ["revoke", "--dir", str(d), "--serial", serial]).exit_code == 0
    assert runner.invoke(app, ["revoke", "--dir", str(d), "--serial", "xyz"]).exit_code == 2
    other = CertificateAuthority.init(tmp_path / "other", domain="in.provider.com")
    _, foreign = write_credential(other.issue("/mn-cse-3"), tmp_path / "three")
    result = runner.invoke(app, ["revoke", "--dir", str(d), "--cert", str(foreign)])
    assert result.exit_code == 2 and "not issued by this CA" in result.output
    assert runner.invoke(app, ["crl", "--dir", str(d), "--days", "2"]).exit_code == 0
    crl = x509.load_pem_x509_crl((d / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    revoked = {r.serial_number for r in crl}
    assert revoked == {
        x509.load_pem_x509_certificate(c1.read_bytes()).serial_number,
        issued.certificate.serial_number,
    }
