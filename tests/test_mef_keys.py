"""MEF Enrolment Key Generation and derivations (TS-0003 10.3.1-10.3.4, seed 004)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from m2msec.errors import IdentifierError
from m2msec.ids import derivation_identity
from m2msec.keyids import KeId
from m2msec.mef.keys import LABEL_BOOTSTRAP, EnrolmentKey, derive_for_target

# What a TLS export with EXPORTER-oneM2M-Bootstrap could give: 48 octets.
EXPORT = bytes(range(48))
KE = bytes(range(16, 48))
KM_LABEL = b"oneM2M Enrolment Key to Master Credential derivation"
KPSA_LABEL = b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"


def test_export_splits_into_relative_ke_id_and_ke() -> None:
    assert LABEL_BOOTSTRAP == b"EXPORTER-oneM2M-Bootstrap"
    key = EnrolmentKey.from_export(EXPORT, "mef.example.com")
    assert key.ke == KE
    assert key.ke_id == KeId(bytes(range(16)), "mef.example.com")
    assert str(key.ke_id) == "000102030405060708090a0b0c0d0e0f@mef.example.com"


def test_export_of_another_length_is_refused() -> None:
    with pytest.raises(ValueError, match="48 octets"):
        EnrolmentKey.from_export(EXPORT[:32], "mef.example.com")


def test_ke_is_never_in_repr() -> None:
    text = repr(EnrolmentKey.from_export(EXPORT, "mef.example.com"))
    assert KE.hex() not in text and KE.hex()[:8] not in text
    assert "000102030405060708090a0b0c0d0e0f@mef.example.com" in text


def test_kpsa_for_a_cse_enrolee_b_hand_computed() -> None:
    message = KPSA_LABEL + b"/mn-cse-123456"
    expected = hmac.new(KE, message, hashlib.sha256).digest()
    kpsa = derive_for_target(KE, "/mn-cse-123456", enrolee_b=True)
    assert kpsa == expected
    assert kpsa.hex() == "042549b9c2b4bf40201d2ed59ee606c0ec1820ded524c3426ae62a425d5389d4"


def test_km_for_a_maf_hand_computed() -> None:
    expected = hmac.new(KE, KM_LABEL + b"maf.provider.com", hashlib.sha256).digest()
    km = derive_for_target(KE, "maf.provider.com", enrolee_b=False)
    assert km == expected
    assert km.hex() == "e94a287f96bda832b2119fcda5b45713f1c707dd09ca4a7f6ab3d5e2035da05c"


def test_kpsa_for_an_ae_enrolee_b() -> None:
    kpsa = derive_for_target(KE, "/mn-cse-123456/Clight-AE1", enrolee_b=True)
    assert kpsa.hex() == "e6714edcb81bc4243999323bde21d326fecdcbf11176dbb26d9fe3c8102c4da7"


@pytest.mark.parametrize(
    "given",
    [
        "/mn-cse-123456",
        "mn-cse-123456",  # a bare CSE-ID is SP-relative
        "//in.provider.com/mn-cse-123456",  # the SP part is not hashed
        "\uff0fmn-cse-123456",  # full-width solidus, NFKC
        "/\uff4dn-cse-123456",  # full-width m, NFKC
    ],
)
def test_one_canonical_form_of_a_cse_id(given: str) -> None:
    assert derivation_identity(given, enrolee_b=True) == "/mn-cse-123456"
    assert derive_for_target(KE, given, enrolee_b=True) == derive_for_target(
        KE, "/mn-cse-123456", enrolee_b=True
    )


def test_one_canonical_form_of_an_ae_id() -> None:
    assert derivation_identity("/mn-cse-1/Clight-AE1", enrolee_b=True) == "/mn-cse-1/Clight-AE1"
    assert derivation_identity("//sp.example/Sapp", enrolee_b=True) == "/Sapp"
    assert derivation_identity("Sapp", enrolee_b=True) == "/Sapp"
    with pytest.raises(IdentifierError, match="registrar"):
        derivation_identity("Clight-AE1", enrolee_b=True)  # its CSE is unknown


def test_maf_id_is_a_lower_case_fqdn() -> None:
    assert derivation_identity("MAF.Provider.com", enrolee_b=False) == "maf.provider.com"
    assert derivation_identity("\uff4daf.provider.com", enrolee_b=False) == "maf.provider.com"
    with pytest.raises(IdentifierError, match="MAF-ID"):
        derivation_identity("/mn-cse-1", enrolee_b=False)
