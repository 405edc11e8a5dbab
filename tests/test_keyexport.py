"""TS-0003 10.3.1 key export split and 10.3.2/10.3.3 derivations."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from m2msec.crypto.keyexport import (
    EXPORT_LENGTH,
    LABEL_BOOTSTRAP,
    LABEL_CONNECTION,
    LABEL_ES_CERT_KE,
    ExportedKey,
    derive_km,
    derive_kpsa,
    encode_identifier,
    split_export,
)

KE = bytes(range(32))


def reference_hmac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA-256 computed by `cryptography`, independent of our code."""
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(message)
    return mac.finalize()


def test_labels_are_the_clause_10_3_1_octets() -> None:
    assert LABEL_BOOTSTRAP == b"EXPORTER-oneM2M-Bootstrap"
    assert LABEL_CONNECTION == b"EXPORTER-oneM2M-Connection"
    assert LABEL_ES_CERT_KE == b"EXPORTER-oneM2M-ESCertKE"
    assert EXPORT_LENGTH == 48


def test_split_id_is_first_16_octets_key_last_32() -> None:
    output = bytes(range(48))
    relative_id, key = split_export(output)
    assert relative_id == bytes(range(16))
    assert key == bytes(range(16, 48))
    assert relative_id + key == output


def test_split_accepts_bytearray() -> None:
    relative_id, key = split_export(bytearray(b"\x01" * 16 + b"\x02" * 32))
    assert (relative_id, key) == (b"\x01" * 16, b"\x02" * 32)
    assert type(relative_id) is bytes and type(key) is bytes


@pytest.mark.parametrize("length", [0, 16, 32, 47, 49, 64])
def test_split_rejects_other_lengths(length: int) -> None:
    with pytest.raises(ValueError, match="48 octets"):
        split_export(b"\x00" * length)


def test_exported_key_from_export_and_repr_hides_key() -> None:
    secret = bytes.fromhex("ab" * 32)
    exported = ExportedKey.from_export(b"\x11" * 16 + secret)
    assert exported.relative_id == b"\x11" * 16
    assert exported.key == secret
    assert "ab" * 4 not in repr(exported)
    assert "key=" not in repr(exported)
    assert "relative_id" in repr(exported)


def test_exported_key_checks_lengths() -> None:
    with pytest.raises(ValueError):
        ExportedKey(b"\x00" * 15, b"\x00" * 32)
    with pytest.raises(ValueError):
        ExportedKey(b"\x00" * 16, b"\x00" * 31)


def test_derive_km_known_answer_from_cryptography() -> None:
    label = b"oneM2M Enrolment Key to Master Credential derivation"
    expected = reference_hmac(KE, label + b"maf.provider.com")
    assert derive_km(KE, "maf.provider.com") == expected


def test_derive_kpsa_known_answer_from_cryptography() -> None:
    label = b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"
    expected = reference_hmac(KE, label + b"/mn-cse-123456")
    assert derive_kpsa(KE, "/mn-cse-123456") == expected


def test_derivations_match_openssl_cli_vectors() -> None:
    # `printf '%s' "<label><id>" | openssl mac -digest SHA256 -macopt hexkey:0001..1f HMAC`
    # (OpenSSL 3.0.19), with Ke = 00 01 .. 1f.
    assert derive_km(KE, "maf.provider.com") == bytes.fromhex(
        "609100f06a9327a828b53751c1aa0544c62d5a6276dda743d095fff54516bbfd"
    )
    assert derive_kpsa(KE, "/mn-cse-123456") == bytes.fromhex(
        "b25c6ce922be674ada22d1a596a54eb37866cf6691b48accc599a0736ef9dc92"
    )


def test_km_and_kpsa_differ_for_the_same_identifier() -> None:
    assert derive_km(KE, "x.example") != derive_kpsa(KE, "x.example")
    assert len(derive_km(KE, "x.example")) == 32


def test_identifier_is_nfkc_normalised_then_utf8() -> None:
    # U+FB01 (fi ligature) and fullwidth letters fold under NFKC.
    assert encode_identifier("ma\ufb01.example") == b"mafi.example"
    assert derive_km(KE, "\uff4d\uff41\uff46.example") == derive_km(KE, "maf.example")
    # Non-ASCII that survives NFKC is UTF-8 encoded.
    label = b"oneM2M Enrolment Key to Master Credential derivation"
    assert derive_km(KE, "caf\u00e9") == reference_hmac(KE, label + "café".encode())
    # NFD input equals NFC input after NFKC.
    assert derive_km(KE, "cafe\u0301") == derive_km(KE, "caf\u00e9")


def test_derivations_reject_empty_inputs() -> None:
    with pytest.raises(ValueError, match="Ke"):
        derive_km(b"", "maf.example")
    with pytest.raises(ValueError, match="empty"):
        derive_kpsa(KE, "")
