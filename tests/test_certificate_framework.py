"""Certificate-Based SAEF (TS-0003 8.2.2.2): two engines pumped in memory, plus interop."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

from m2msec.errors import CertificateError, ConfigurationError
from m2msec.frameworks.certificate import (
    CertificateCredential,
    CertificateInitiator,
    CertificateResponder,
)
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.pki.names import identities_in, public_key_identifier
from m2msec.tls.context import Framework, PeerKind, SecurityContext
from m2msec.tls.engine import (
    DataReceived,
    Event,
    HandshakeComplete,
    HandshakeFailed,
    TLSEngine,
)
from m2msec.tls.profiles import (
    CERT_SUITES_TLS,
    CertificatePolicy,
    TLSProfile,
    Transport,
    new_context,
)
from tests import helpers
from tests.helpers import credential
from tests.interop import HOST, free_port, require

DOMAIN = "in.provider.com"
MN = "/mn-cse-123456"
AE = "/mn-cse-123456/Clight-AE1"
IN = "/in-cse"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("pki") / "ca", domain=DOMAIN)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("pki") / "other", domain=DOMAIN)


@pytest.fixture(scope="module")
def creds(ca: CertificateAuthority) -> dict[str, CertificateCredential]:
    return {eid: credential(ca, ca.issue(eid)) for eid in (MN, AE, IN, "/mn-cse-999")}


def pump(a: TLSEngine, b: TLSEngine) -> tuple[list[Event], list[Event]]:
    return helpers.pump(a, b, rounds=30)  # a certificate handshake takes more flights


def handshake(
    client: TLSProfile, server: TLSProfile
) -> tuple[TLSEngine, TLSEngine, list[Event], list[Event]]:
    c, s = TLSEngine(client), TLSEngine(server)
    c.start()
    ec_, es = pump(c, s)
    return c, s, ec_, es


def completed(events: list[Event]) -> SecurityContext:
    return next(e.context for e in events if isinstance(e, HandshakeComplete))


def failure(events: list[Event]) -> str:
    return next(e.reason for e in events if isinstance(e, HandshakeFailed))


# ----------------------------------------------------------------------------- success


@pytest.mark.parametrize("tls13", [True, False])
def test_ae_to_mn_cse_mutual_auth(creds: dict[str, CertificateCredential], tls13: bool) -> None:
    responder = CertificateResponder(creds[MN], in_domain=DOMAIN)
    initiator = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN)
    c, s, ec_, es = handshake(initiator.profile(tls13=tls13), responder.profile(tls13=tls13))
    sctx, cctx = completed(es), completed(ec_)
    # Entity B binds the AE-ID read from the certificate, in SP-relative form.
    assert (sctx.peer_id, sctx.peer_kind) == (AE, PeerKind.AE)
    assert sctx.local_id == MN
    # Entity A binds IdB.
    assert (cctx.peer_id, cctx.peer_kind) == (MN, PeerKind.CSE)
    assert cctx.local_id == AE
    assert sctx.framework is Framework.CERTIFICATE
    assert sctx.protocol == ("TLSv1.3" if tls13 else "TLSv1.2")
    # SNI defaults to the CSE public domain name (docs/readings.md ).
    assert sctx.server_name == "mn-cse-123456.in.provider.com"
    assert sctx.key_id == creds[AE].fingerprint and cctx.key_id == creds[MN].fingerprint
    assert sctx.valid_until == creds[AE].certificate.not_valid_after_utc
    assert sctx.sa_id == cctx.sa_id
    c.send(b"hello IN")
    _, es = pump(c, s)
    assert DataReceived(b"hello IN") in es


@pytest.mark.parametrize("tls13", [True, False])
def test_mn_cse_to_in_cse_mutual_auth(
    creds: dict[str, CertificateCredential], tls13: bool
) -> None:
    responder = CertificateResponder(creds[IN], in_domain=DOMAIN, allowed={MN})
    initiator = CertificateInitiator(creds[MN], IN, in_domain=DOMAIN)
    _, _, ec_, es = handshake(initiator.profile(tls13=tls13), responder.profile(tls13=tls13))
    sctx, cctx = completed(es), completed(ec_)
    assert (sctx.peer_id, sctx.peer_kind, sctx.local_id) == (MN, PeerKind.CSE, IN)
    assert (cctx.peer_id, cctx.peer_kind, cctx.local_id) == (IN, PeerKind.CSE, MN)
    assert sctx.server_name == "in-cse.in.provider.com"


@pytest.mark.parametrize(
    "suite",
    ["ECDHE-ECDSA-AES128-CCM8", "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"],
)
def test_each_certificate_suite(creds: dict[str, CertificateCredential], suite: str) -> None:
    responder = CertificateResponder(creds[IN], in_domain=DOMAIN)
    initiator = CertificateInitiator(creds[MN], IN, in_domain=DOMAIN)
    _, _, ec_, es = handshake(
        initiator.profile(tls13=False), responder.profile(tls13=False, suites=(suite,))
    )
    assert completed(es).cipher_suite == suite
    assert completed(es).peer_id == MN and completed(ec_).peer_id == IN


def test_dtls_ccm8(creds: dict[str, CertificateCredential]) -> None:
    responder = CertificateResponder(creds[MN], in_domain=DOMAIN)
    initiator = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN)
    _, _, ec_, es = handshake(
        initiator.profile(Transport.DTLS), responder.profile(Transport.DTLS)
    )
    sctx = completed(es)
    assert sctx.protocol == "DTLSv1.2" and sctx.cipher_suite == "ECDHE-ECDSA-AES128-CCM8"
    assert sctx.peer_id == AE and completed(ec_).peer_id == MN


def test_idb_given_in_absolute_form_and_other_case(
    creds: dict[str, CertificateCredential],
) -> None:
    # FQDN parts compare case-insensitively (docs/readings.md A-05); the binding is SP-relative.
    initiator = CertificateInitiator(creds[AE], "//IN.Provider.com/mn-cse-123456", in_domain=DOMAIN)
    responder = CertificateResponder(creds[MN], in_domain=DOMAIN)
    _, _, ec_, _ = handshake(initiator.profile(), responder.profile())
    assert completed(ec_).peer_id == MN


def test_allowed_accepts_stem_under_local_cse(creds: dict[str, CertificateCredential]) -> None:
    responder = CertificateResponder(creds[MN], in_domain=DOMAIN, allowed={"Clight-AE1"})
    initiator = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN)
    _, _, _, es = handshake(initiator.profile(), responder.profile())
    assert completed(es).peer_id == AE


def test_ae_as_entity_b_for_sa2(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential]
) -> None:
    # 8.2.1: a request-reachable AE is the server of SA2; IdB is then an AE-ID (URI match).
    responder = CertificateResponder(creds[AE], in_domain=DOMAIN)
    initiator = CertificateInitiator(creds[MN], AE, in_domain=DOMAIN)
    assert initiator.server_name is None
    _, _, ec_, es = handshake(initiator.profile(), responder.profile())
    assert (completed(ec_).peer_id, completed(ec_).peer_kind) == (AE, PeerKind.AE)
    assert completed(es).peer_id == MN


def test_s_stem_ae(ca: CertificateAuthority, creds: dict[str, CertificateCredential]) -> None:
    ae = credential(ca, ca.issue("/Sweather-app"))
    assert ae.identities(in_domain=DOMAIN)[0].entity_id == "/Sweather-app"
    responder = CertificateResponder(creds[MN], in_domain=DOMAIN)
    _, _, _, es = handshake(
        CertificateInitiator(ae, MN, in_domain=DOMAIN).profile(), responder.profile()
    )
    assert completed(es).peer_id == "/Sweather-app"


def test_service_fqdn_certificate(
    tmp_path: Path, creds: dict[str, CertificateCredential]
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=DOMAIN, extra_domains=["maf.example"])
    maf = credential(ca, ca.issue_service("maf.example"))
    mn = credential(ca, ca.issue(MN))
    # Entity B towards the MAF (client), the MAF as server.
    responder = CertificateResponder(maf, in_domain=DOMAIN, local_id="maf.example")
    initiator = CertificateInitiator.for_service(mn, "maf.example", in_domain=DOMAIN)
    _, _, ec_, es = handshake(initiator.profile(), responder.profile())
    assert (completed(ec_).peer_id, completed(ec_).peer_kind) == ("maf.example", PeerKind.SERVICE)
    assert completed(es).peer_id == MN
    assert completed(es).server_name == "maf.example"
    # And a MAF as a client is known only when listed as a service.
    responder = CertificateResponder(mn, in_domain=DOMAIN, services=["MAF.example"])
    initiator = CertificateInitiator(maf, MN, in_domain=DOMAIN)
    _, _, _, es = handshake(initiator.profile(), responder.profile())
    assert (completed(es).peer_id, completed(es).peer_kind) == ("maf.example", PeerKind.SERVICE)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("tls13", [True, False])
def test_server_names_another_cse(creds: dict[str, CertificateCredential], tls13: bool) -> None:
    server = CertificateResponder(creds["/mn-cse-999"], in_domain=DOMAIN).profile(tls13=tls13)
    client = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN).profile(tls13=tls13)
    c, s, ec_, es = handshake(client, server)
    reason = failure(ec_)
    assert "certificate names /mn-cse-999 but /mn-cse-123456 was expected" in reason
    assert c.context is None and s.context is None
    assert any(isinstance(e, HandshakeFailed) for e in es)


@pytest.mark.parametrize("tls13", [True, False])
def test_expired_server_certificate(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential], tls13: bool
) -> None:
    past = datetime.now(UTC) - timedelta(days=30)
    expired = credential(ca, ca.issue(MN, not_before=past, not_after=past + timedelta(days=1)))
    server = CertificateResponder(expired, in_domain=DOMAIN).profile(tls13=tls13)
    client = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN).profile(tls13=tls13)
    _, s, ec_, _ = handshake(client, server)
    assert "certificate verify failed at depth 0: certificate has expired" in failure(ec_)
    assert s.context is None


@pytest.mark.parametrize("tls13", [True, False])
def test_expired_client_certificate(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential], tls13: bool
) -> None:
    past = datetime.now(UTC) - timedelta(days=30)
    expired = credential(ca, ca.issue(AE, not_before=past, not_after=past + timedelta(days=1)))
    server = CertificateResponder(creds[MN], in_domain=DOMAIN).profile(tls13=tls13)
    client = CertificateInitiator(expired, MN, in_domain=DOMAIN).profile(tls13=tls13)
    _, s, _, es = handshake(client, server)
    assert "certificate verify failed at depth 0: certificate has expired" in failure(es)
    assert s.context is None


@pytest.mark.parametrize("foreign_side", ["server", "client"])
def test_certificate_from_another_root(
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    creds: dict[str, CertificateCredential],
    foreign_side: str,
) -> None:
    # The foreign side's certificate chains to a root its peer does not trust.
    if foreign_side == "server":
        issued = other_ca.issue(MN)
        server_cred = credential(ca, issued)
        server = CertificateResponder(server_cred, in_domain=DOMAIN).profile(tls13=False)
        client = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN).profile(tls13=False)
        c, s, ec_, _ = handshake(client, server)
        reason = failure(ec_)
    else:
        issued = other_ca.issue(AE)
        client_cred = credential(ca, issued)
        server = CertificateResponder(creds[MN], in_domain=DOMAIN).profile(tls13=False)
        client = CertificateInitiator(client_cred, MN, in_domain=DOMAIN).profile(tls13=False)
        c, s, _, es = handshake(client, server)
        reason = failure(es)
    assert "certificate verify failed at depth 0: unable to get local issuer certificate" in reason
    assert c.context is None and s.context is None


@pytest.mark.parametrize("tls13", [True, False])
def test_client_without_certificate(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential], tls13: bool
) -> None:
    # A client that trusts the CA and checks IdB, but presents no certificate.
    initiator = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN)
    ctx = new_context(Transport.TLS, server_side=False, suites=CERT_SUITES_TLS, tls13=tls13)
    store = ctx.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(ca.certificate))
    bare = TLSProfile(
        framework=Framework.CERTIFICATE,
        transport=Transport.TLS,
        server_side=False,
        ssl_context=ctx,
        certificate_policy=CertificatePolicy(bind=initiator.bind),
        server_name=initiator.server_name,
    )
    server = CertificateResponder(creds[MN], in_domain=DOMAIN).profile(tls13=tls13)
    _, s, _, es = handshake(bare, server)
    assert "peer did not return a certificate" in failure(es)
    assert s.context is None


@pytest.mark.parametrize("tls13", [True, False])
def test_ida_not_allowed(creds: dict[str, CertificateCredential], tls13: bool) -> None:
    server = CertificateResponder(
        creds[IN], in_domain=DOMAIN, allowed={"/mn-cse-777", "/mn-cse-123456/Cother"}
    ).profile(tls13=tls13)
    client = CertificateInitiator(creds[MN], IN, in_domain=DOMAIN).profile(tls13=tls13)
    c, s, ec_, es = handshake(client, server)
    assert "certificate names /mn-cse-123456, which is not an allowed entity" in failure(es)
    assert s.context is None
    # In TLS 1.3 the client finishes before the server checks its certificate: it sees the
    # handshake complete, then the server's alert.
    assert isinstance(ec_[-1], HandshakeFailed)
    assert (c.context is not None) is tls13


def _custom_cert(
    ca: CertificateAuthority,
    names: Sequence[x509.GeneralName],
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
) -> tuple[bytes, bytes]:
    """A leaf signed by ``ca`` outside the CA's own rules (for refusal tests)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test leaf")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.certificate.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    cert = builder.sign(ca._key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_client_certificate_without_onem2m_identity(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential]
) -> None:
    cert_pem, key_pem = _custom_cert(ca, [x509.DNSName("printer.in.provider.com.example")])
    client_cred = CertificateCredential(cert_pem, key_pem, ca.cert_pem)
    server = CertificateResponder(creds[MN], in_domain=DOMAIN).profile(tls13=False)
    client = CertificateInitiator(client_cred, MN, in_domain=DOMAIN).profile(tls13=False)
    _, _, _, es = handshake(client, server)
    assert "certificate has no oneM2M identity" in failure(es)


def test_server_certificate_without_san(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential]
) -> None:
    # A leaf with a subject name but no subjectAltName at all.
    cert_pem, key_pem = _custom_cert(ca, [])
    server = CertificateResponder(
        CertificateCredential(cert_pem, key_pem, ca.cert_pem), in_domain=DOMAIN
    ).profile(tls13=False)
    client = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN).profile(tls13=False)
    _, _, ec_, _ = handshake(client, server)
    assert "certificate has no oneM2M identity" in failure(ec_)


def test_wildcard_refused(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential]
) -> None:
    cert = x509.load_pem_x509_certificate(
        _custom_cert(ca, [x509.DNSName("*.in.provider.com")])[0]
    )
    with pytest.raises(CertificateError, match="wildcard"):
        identities_in(cert, in_domain=DOMAIN)
    initiator = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN)
    der = cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(CertificateError, match="wildcard"):
        initiator.bind(der)


def test_weak_peer_key_and_hash_refused(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential]
) -> None:
    initiator = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN)
    responder = CertificateResponder(creds[MN], in_domain=DOMAIN)
    name = [x509.DNSName("mn-cse-123456.in.provider.com")]
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem, _ = _custom_cert(ca, name, key=weak)
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    with pytest.raises(CertificateError, match="key too weak: RSA-1024"):
        initiator.bind(der)
    pem, _ = _custom_cert(ca, [x509.UniformResourceIdentifier("//in.provider.com" + AE)],
                          key=ec.generate_private_key(ec.SECP192R1()))
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    with pytest.raises(CertificateError, match="too weak or unsupported"):
        responder.bind(der)


@pytest.mark.interop
def test_sha1_signed_peer_certificate_refused(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential], tmp_path: Path
) -> None:
    # cryptography no longer signs with SHA-1; the openssl CLI still does.
    openssl = require("openssl")
    key_path, _ = write_credential(ca.issue(MN), tmp_path / "mn")
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=DNS:mn-cse-123456.in.provider.com\n")
    csr = subprocess.run(
        [openssl, "req", "-new", "-key", str(key_path), "-subj", "/CN=sha1"],
        capture_output=True, check=True,
    ).stdout
    pem = subprocess.run(
        [openssl, "x509", "-req", "-sha1", "-days", "1", "-CA", str(ca.cert_path),
         "-CAkey", str(ca.directory / "ca.key"), "-set_serial", "7", "-extfile", str(ext)],
        input=csr, capture_output=True, check=True,
    ).stdout
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    initiator = CertificateInitiator(creds[AE], MN, in_domain=DOMAIN)
    with pytest.raises(CertificateError, match="SHA1: too weak"):
        initiator.bind(der)


def test_ae_uri_must_match_exactly(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential]
) -> None:
    initiator = CertificateInitiator(creds[MN], AE, in_domain=DOMAIN)

    def der_for(uri: str) -> bytes:
        pem, _ = _custom_cert(ca, [x509.UniformResourceIdentifier(uri)])
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)

    assert initiator.bind(der_for("//In.Provider.COM/mn-cse-123456/Clight-AE1")).peer_id == AE
    for other in (
        "//in.provider.com/mn-cse-123456/clight-ae1",  # the AE-ID part is case-sensitive
        "https://in.provider.com/mn-cse-123456/Clight-AE1",  # not the Absolute AE-ID
        "//in.provider.com/mn-cse-123456/Clight-AE1/x",
        "//other.com/mn-cse-123456/Clight-AE1",
    ):
        with pytest.raises(CertificateError, match="was expected"):
            initiator.bind(der_for(other))


def test_several_identities_need_allowed(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential]
) -> None:
    names: list[x509.GeneralName] = [
        x509.DNSName("mn-cse-1.in.provider.com"),
        x509.DNSName("mn-cse-2.in.provider.com"),
    ]
    pem, _ = _custom_cert(ca, names)
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    with pytest.raises(CertificateError, match="several oneM2M identities"):
        CertificateResponder(creds[IN], in_domain=DOMAIN).bind(der)
    chosen = CertificateResponder(creds[IN], in_domain=DOMAIN, allowed={"/mn-cse-2"}).bind(der)
    assert chosen.peer_id == "/mn-cse-2"


def test_cse_binding_is_case_insensitive_against_allowed(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential]
) -> None:
    pem, _ = _custom_cert(ca, [x509.DNSName("MN-CSE-123456.IN.PROVIDER.COM")])
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    responder = CertificateResponder(creds[IN], in_domain=DOMAIN, allowed={MN})
    assert responder.bind(der).peer_id == MN


# ----------------------------------------------------------------------------- credentials


def test_credential_from_files_and_errors(ca: CertificateAuthority, tmp_path: Path) -> None:
    key_path, cert_path = write_credential(ca.issue(MN), tmp_path / "mn")
    c = CertificateCredential.from_files(cert_path, key_path, ca.cert_path)
    assert c.identities(in_domain=DOMAIN)[0].entity_id == MN
    assert public_key_identifier(c.certificate).startswith("ni:///sha-256;")
    assert "PRIVATE" not in repr(c)
    with pytest.raises(ConfigurationError, match="does not exist"):
        CertificateCredential.from_files(tmp_path / "nope.pem", key_path, ca.cert_path)
    other_key, _ = write_credential(ca.issue(AE), tmp_path / "ae")
    with pytest.raises(CertificateError, match="private key does not match the certificate"):
        CertificateCredential.from_files(cert_path, other_key, ca.cert_path)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem, key_pem = _custom_cert(ca, [x509.DNSName("x.in.provider.com")], key=weak)
    with pytest.raises(CertificateError, match="key too weak"):
        CertificateCredential(pem, key_pem, ca.cert_pem)
    with pytest.raises(CertificateError, match="not a CA certificate"):
        CertificateCredential(cert_path.read_bytes(), key_path.read_bytes(), cert_path.read_bytes())
    with pytest.raises(CertificateError, match="no PEM certificate"):
        CertificateCredential(b"junk", key_path.read_bytes(), ca.cert_pem)


def test_local_id_must_match_own_certificate(creds: dict[str, CertificateCredential]) -> None:
    with pytest.raises(CertificateError, match="own certificate names /mn-cse-123456 but"):
        CertificateResponder(creds[MN], in_domain=DOMAIN, local_id="/mn-cse-999")
    with pytest.raises(ConfigurationError, match="not a certificate suite"):
        CertificateResponder(creds[MN], in_domain=DOMAIN).profile(suites=("AES128-SHA",))


# ----------------------------------------------------------------------------- interop


class EngineServer:
    """A blocking one-connection TCP server around a TLSEngine (for openssl s_client)."""

    def __init__(self, profile: TLSProfile) -> None:
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen(1)
        self.listener.settimeout(20)
        self.port: int = self.listener.getsockname()[1]
        self.engine = TLSEngine(profile)
        self.events: list[Event] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(20)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                self.engine.receive_data(data)
                events = self.engine.events()
                self.events += events
                answered = False
                for e in events:
                    if isinstance(e, DataReceived):
                        # Answer once, then close: s_client -quiet waits for the server.
                        self.engine.send(b"echo:" + e.data)
                        self.engine.close()
                        answered = True
                out = self.engine.data_to_send()
                if out:
                    conn.sendall(out)
                if not data or self.engine.failed or answered:
                    return

    def close(self) -> None:
        self.thread.join(20)
        self.listener.close()


@pytest.fixture
def openssl() -> str:
    return require("openssl")


@pytest.mark.interop
@pytest.mark.parametrize("tls13", [True, False])
def test_openssl_s_client_against_our_responder(
    ca: CertificateAuthority,
    creds: dict[str, CertificateCredential],
    openssl: str,
    tmp_path: Path,
    tls13: bool,
) -> None:
    key_path, cert_path = write_credential(ca.issue(AE), tmp_path / "ae")
    server = EngineServer(CertificateResponder(creds[MN], in_domain=DOMAIN).profile())
    version = ["-tls1_3"] if tls13 else ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"]
    try:
        proc = subprocess.run(
            [
                openssl, "s_client", "-connect", f"{HOST}:{server.port}",
                "-servername", "mn-cse-123456.in.provider.com",
                "-cert", str(cert_path), "-key", str(key_path), "-CAfile", str(ca.cert_path),
                "-verify_return_error", "-verify_hostname", "mn-cse-123456.in.provider.com",
                "-quiet", *version,
            ],
            input=b"ping\n",
            capture_output=True,
            timeout=30,
        )
    finally:
        server.close()
    ctx = completed(server.events)
    assert (ctx.peer_id, ctx.peer_kind) == (AE, PeerKind.AE)
    if tls13:
        assert ctx.protocol == "TLSv1.3"
    else:
        assert ctx.cipher_suite == "ECDHE-ECDSA-AES128-SHA256"
    assert ctx.server_name == "mn-cse-123456.in.provider.com"
    assert DataReceived(b"ping\n") in server.events
    assert b"echo:ping" in proc.stdout, proc.stderr.decode(errors="replace")


@pytest.mark.interop
@pytest.mark.parametrize(
    ("case", "alert"),
    [
        ("not_allowed", "bad certificate"),
        ("wildcard", "bad certificate"),
        ("untrusted", "unknown ca"),
        ("expired", "certificate expired"),
    ],
)
def test_certificate_refusal_alerts_seen_by_openssl_s_client(
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    creds: dict[str, CertificateCredential],
    openssl: str,
    tmp_path: Path,
    case: str,
    alert: str,
) -> None:
    """Each refusal ends with the alert that names it, never internal_error (issue 9 item 7)."""
    allowed = {"/mn-cse-123456/Cother"} if case == "not_allowed" else None
    if case == "wildcard":
        cert_pem, key_pem = _custom_cert(ca, [x509.DNSName("*.in.provider.com")])
        cert_path, key_path = tmp_path / "wild.pem", tmp_path / "wild.key"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
    else:
        past = datetime.now(UTC) - timedelta(days=30)
        issued = {
            "untrusted": lambda: other_ca.issue(AE),
            "expired": lambda: ca.issue(AE, not_before=past, not_after=past + timedelta(days=1)),
        }.get(case, lambda: ca.issue(AE))()
        key_path, cert_path = write_credential(issued, tmp_path / "ae")
    server = EngineServer(
        CertificateResponder(creds[MN], in_domain=DOMAIN, allowed=allowed).profile(tls13=False)
    )
    try:
        proc = subprocess.run(
            [
                openssl, "s_client", "-connect", f"{HOST}:{server.port}",
                "-cert", str(cert_path), "-key", str(key_path), "-CAfile", str(ca.cert_path),
                "-tls1_2", "-quiet",
            ],
            input=b"ping\n",
            capture_output=True,
            timeout=30,
        )
    finally:
        server.close()
    reason = failure(server.events)
    if case == "not_allowed":
        assert "not an allowed entity" in reason
    err = proc.stderr.decode(errors="replace")
    assert f"alert {alert}" in err, err
    assert "internal error" not in err
    assert b"echo:" not in proc.stdout


@pytest.mark.interop
@pytest.mark.parametrize("tls13", [True, False])
def test_our_initiator_against_openssl_s_server(
    ca: CertificateAuthority, creds: dict[str, CertificateCredential], openssl: str,
    tmp_path: Path, tls13: bool,
) -> None:
    key_path, cert_path = write_credential(ca.issue(IN), tmp_path / "in")
    port = free_port()
    proc = subprocess.Popen(
        [
            openssl, "s_server", "-accept", f"{HOST}:{port}",
            "-cert", str(cert_path), "-key", str(key_path), "-CAfile", str(ca.cert_path),
            "-Verify", "2", "-verify_return_error", "-naccept", "1", "-rev",
            "-tls1_3" if tls13 else "-tls1_2",
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        sock = _connect(port, proc.poll)
        engine = TLSEngine(CertificateInitiator(creds[MN], IN, in_domain=DOMAIN).profile())
        events = _drive(sock, engine, b"Hello")
        sock.close()
    finally:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    ctx = completed(events)
    assert (ctx.peer_id, ctx.peer_kind) == (IN, PeerKind.CSE)
    assert ctx.protocol == ("TLSv1.3" if tls13 else "TLSv1.2")
    # s_server -rev answers each line reversed.
    assert any(isinstance(e, DataReceived) and b"olleH" in e.data for e in events), err
    assert b"verify return:1" in err or b"verify return:1" in out


def _connect(port: int, poll: Callable[[], int | None]) -> socket.socket:
    deadline = datetime.now(UTC) + timedelta(seconds=15)
    while True:
        try:
            return socket.create_connection((HOST, port), timeout=5)
        except ConnectionRefusedError:
            if poll() is not None or datetime.now(UTC) > deadline:
                raise
            threading.Event().wait(0.05)


def _drive(sock: socket.socket, engine: TLSEngine, message: bytes) -> list[Event]:
    """Run the handshake, send ``message + newline``, and wait for an answer."""
    events: list[Event] = []
    engine.start()
    sent = False
    sock.settimeout(10)
    for _ in range(100):
        out = engine.data_to_send()
        if out:
            sock.sendall(out)
        if engine.handshake_done and not sent:
            engine.send(message + b"\n")
            sock.sendall(engine.data_to_send())
            sent = True
        if any(isinstance(e, DataReceived) for e in events) or engine.failed:
            break
        data = sock.recv(65536)
        engine.receive_data(data)
        events += engine.events()
        if not data:
            break
    return events


def _s_client(openssl: str, port: int, key: Path, cert: Path, ca_path: Path) -> str:
    proc = subprocess.run(
        [
            openssl, "s_client", "-connect", f"{HOST}:{port}", "-cert", str(cert),
            "-key", str(key), "-CAfile", str(ca_path), "-tls1_2", "-quiet",
        ],
        input=b"ping\n", capture_output=True, timeout=30,
    )
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


@pytest.mark.interop
def test_revoked_client_refused_after_crl_reload_without_restart(
    openssl: str, tmp_path: Path
) -> None:
    """`m2msec ca revoke` + `ca crl`; the same listener reloads the CRL (issue 9 item 7)."""
    from typer.testing import CliRunner

    from m2msec.cli.ca import app

    runner = CliRunner()
    d = tmp_path / "ca"
    assert runner.invoke(app, ["init", "--dir", str(d), "--domain", DOMAIN]).exit_code == 0
    ca = CertificateAuthority.load(d)
    k1, c1 = write_credential(ca.issue(AE), tmp_path / "ae1")
    k2, c2 = write_credential(ca.issue("/mn-cse-123456/Cother"), tmp_path / "ae2")
    result = runner.invoke(app, ["crl", "--dir", str(d)])
    assert result.exit_code == 0, result.output
    responder = CertificateResponder(
        credential(ca, ca.issue(MN)), in_domain=DOMAIN, crl=ca.crl_path
    )
    profile = responder.profile(tls13=False)

    def attempt(key: Path, cert: Path) -> tuple[str, list[Event]]:
        server = EngineServer(profile)
        try:
            out = _s_client(openssl, server.port, key, cert, ca.cert_path)
        finally:
            server.close()
        return out, server.events

    out, _ = attempt(k1, c1)
    assert "echo:ping" in out, out
    result = runner.invoke(app, ["revoke", "--dir", str(d), "--cert", str(c1)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["crl", "--dir", str(d)]).exit_code == 0
    out, events = attempt(k1, c1)
    assert "alert certificate revoked" in out, out
    assert "is revoked" in failure(events)
    out, _ = attempt(k2, c2)
    assert "echo:ping" in out, out
    # No CRL: fail closed, with the reason in the log.
    ca.crl_path.unlink()
    out, events = attempt(k2, c2)
    assert "echo:" not in out
    assert "unreadable" in failure(events)


@pytest.mark.interop
def test_intermediate_ca_chains_verify_with_openssl(openssl: str, tmp_path: Path) -> None:
    """`ca init --path-length 1` + `ca intermediate`: both ends' certificates come from the
    intermediate, each side trusts only the root, and openssl s_client completes the
    mutual handshake with our responder (issue 9 item 7)."""
    from typer.testing import CliRunner

    from m2msec.cli.ca import app

    runner = CliRunner()
    root, sub = tmp_path / "root", tmp_path / "sub"
    flat = tmp_path / "flat"
    assert runner.invoke(app, ["init", "--dir", str(flat), "--domain", DOMAIN]).exit_code == 0
    refused = runner.invoke(app, ["intermediate", "--dir", str(flat), "--out-dir", str(sub)])
    assert refused.exit_code == 1 and "--path-length" in refused.output, refused.output
    assert not (sub / "ca.key").exists()

    result = runner.invoke(
        app, ["init", "--dir", str(root), "--domain", DOMAIN, "--path-length", "1"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["intermediate", "--dir", str(root), "--out-dir", str(sub)])
    assert result.exit_code == 0, result.output
    for eid, prefix in ((MN, "mn"), (AE, "ae")):
        result = runner.invoke(
            app, ["issue", "--dir", str(sub), "--entity-id", eid, "--out", str(tmp_path / prefix)]
        )
        assert result.exit_code == 0, result.output

    root_pem = (root / "ca.pem").read_bytes()
    # An intermediate under a pathLen 1 root may itself sign end entities only.
    nested = runner.invoke(
        app, ["intermediate", "--dir", str(sub), "--out-dir", str(tmp_path / "x")]
    )
    assert nested.exit_code == 1 and "path length 0" in nested.output, nested.output

    verify = subprocess.run(
        [openssl, "verify", "-CAfile", str(root / "ca.pem"), "-untrusted",
         str(sub / "chain.pem"), str(tmp_path / "ae.pem")],
        capture_output=True, text=True, timeout=30,
    )
    assert verify.returncode == 0 and ": OK" in verify.stdout, verify.stdout + verify.stderr

    mn = CertificateCredential(
        (tmp_path / "mn.pem").read_bytes(), (tmp_path / "mn.key").read_bytes(), root_pem
    )
    assert len(mn.chain) == 1  # the intermediate travels with the certificate
    server = EngineServer(CertificateResponder(mn, in_domain=DOMAIN).profile(tls13=False))
    try:
        proc = subprocess.run(
            [
                openssl, "s_client", "-connect", f"{HOST}:{server.port}",
                "-cert", str(tmp_path / "ae.pem"), "-cert_chain", str(sub / "chain.pem"),
                "-key", str(tmp_path / "ae.key"), "-CAfile", str(root / "ca.pem"),
                "-verify_return_error", "-tls1_2", "-quiet",
            ],
            input=b"ping\n", capture_output=True, timeout=30,
        )
    finally:
        server.close()
    ctx = completed(server.events)
    assert (ctx.peer_id, ctx.peer_kind) == (AE, PeerKind.AE)
    assert b"echo:ping" in proc.stdout, proc.stderr.decode(errors="replace")
