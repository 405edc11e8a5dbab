"""TS 33.220 Annex B KDF, NAF_Id (Annex H), Ks and B-TID.

No published GBA KDF test vector was found (TS 33.220 carries none; searches of public
GBA implementations found none either), so the KDF is checked against an independent
computation of clause B.2 written here with struct and a list of fields, and the NAF_Id
and Ua protocol identifiers against octets typed from Annex H.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2msec.crypto import gba
from m2msec.errors import IdentifierError

KS = bytes(range(32))
RAND = bytes.fromhex("23553cbe9637a89d218ae64dae47bf35")
IMPI = "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"


def independent_kdf(key: bytes, fc: int, params: list[bytes]) -> bytes:
    """B.2: S = FC || P0 || L0 || ... ; HMAC-SHA-256. Written without m2msec."""
    s = bytearray(struct.pack(">B", fc))
    for p in params:
        s.extend(p)
        s.extend(struct.pack(">H", len(p)))
    return hmac.digest(key, bytes(s), "sha256")


def test_ua_protocol_ids_are_the_annex_h_octets() -> None:
    assert bytes.fromhex("0100000002") == gba.UA_HTTP_DIGEST
    # TLS_PSK_WITH_AES_128_CBC_SHA256 = 0x00AE (NOTES.md): 01 00 01 00 AE.
    assert gba.ua_protocol_id_tls_psk(0x00AE) == b"\x01\x00\x01\x00\xae"
    assert gba.ua_protocol_id_tls_psk(gba.SUITE_IDS["PSK-AES128-CCM8"]) == b"\x01\x00\x01\xc0\xa8"
    assert gba.SUITE_IDS == {
        "PSK-AES128-CBC-SHA256": 0x00AE,
        "PSK-AES128-GCM-SHA256": 0x00A8,
        "PSK-AES128-CCM8": 0xC0A8,
    }
    with pytest.raises(ValueError):
        gba.ua_protocol_id_tls_psk(0x10000)


def test_naf_id_is_fqdn_then_ua_id() -> None:
    naf = gba.naf_id("mn-cse-123456.in.provider.com", gba.ua_protocol_id_tls_psk(0xAE))
    assert naf == b"mn-cse-123456.in.provider.com" + b"\x01\x00\x01\x00\xae"
    # DNS names carry no case; a trailing dot is the same name.
    assert gba.naf_id("MN-CSE-123456.In.Provider.COM.", gba.ua_protocol_id_tls_psk(0xAE)) == naf
    assert gba.parse_naf_id(naf) == ("mn-cse-123456.in.provider.com", b"\x01\x00\x01\x00\xae")


@pytest.mark.parametrize(
    "value",
    [
        b"\x01\x00\x00\x00\x02",
        b"naf..example" + gba.UA_HTTP_DIGEST,
        b"\xff\xfe" + bytes(5),
        b"NAF.example" + gba.UA_HTTP_DIGEST,
    ],
)
def test_parse_naf_id_refuses_malformed(value: bytes) -> None:
    with pytest.raises(IdentifierError):
        gba.parse_naf_id(value)


def test_naf_id_refuses_a_bad_fqdn_or_ua_length() -> None:
    with pytest.raises(IdentifierError):
        gba.naf_id("bad_name!", gba.UA_HTTP_DIGEST)
    with pytest.raises(ValueError):
        gba.naf_id("naf.example.com", b"\x01\x00")


def test_ks_is_ck_then_ik() -> None:
    ck, ik = bytes(16), bytes([1]) * 16
    assert gba.ks_from(ck, ik) == ck + ik
    with pytest.raises(ValueError):
        gba.ks_from(bytes(15), ik)


def test_ks_ext_and_int_naf_match_the_independent_kdf() -> None:
    naf = gba.naf_id("naf.example.com", gba.ua_protocol_id_tls_psk(0xAE))
    expected_me = independent_kdf(KS, 0x01, [b"gba-me", RAND, IMPI.encode(), naf])
    expected_u = independent_kdf(KS, 0x01, [b"gba-u", RAND, IMPI.encode(), naf])
    assert gba.ks_ext_naf(KS, RAND, IMPI, naf) == expected_me
    assert gba.ks_int_naf(KS, RAND, IMPI, naf) == expected_u
    assert expected_me != expected_u
    assert len(expected_me) == gba.KS_NAF_LENGTH


def test_the_key_depends_on_every_input() -> None:
    naf = gba.naf_id("naf.example.com", gba.ua_protocol_id_tls_psk(0xAE))
    base = gba.ks_ext_naf(KS, RAND, IMPI, naf)
    other_suite = gba.naf_id("naf.example.com", gba.ua_protocol_id_tls_psk(0xA8))
    variants = [
        gba.ks_ext_naf(bytes(32), RAND, IMPI, naf),
        gba.ks_ext_naf(KS, bytes(16), IMPI, naf),
        gba.ks_ext_naf(KS, RAND, IMPI + "x", naf),
        gba.ks_ext_naf(KS, RAND, IMPI, other_suite),  # docs/readings.md A-09
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_length_fields_prevent_ambiguous_concatenations() -> None:
    # Moving an octet from one parameter to the next must change S (the Li fields).
    assert gba.kdf(KS, 1, b"ab", b"c") != gba.kdf(KS, 1, b"a", b"bc")


def test_kdf_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        gba.kdf(KS, 256, b"x")
    with pytest.raises(ValueError):
        gba.kdf(KS, 1, bytes(65536))
    with pytest.raises(TypeError):
        gba.kdf(KS, 1, "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        gba.ks_ext_naf(bytes(16), RAND, IMPI, b"naf.example" + gba.UA_HTTP_DIGEST)


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(min_size=1, max_size=64),
    fc=st.integers(0, 255),
    params=st.lists(st.binary(max_size=300), max_size=5),
)
def test_kdf_matches_the_independent_computation(key: bytes, fc: int, params: list[bytes]) -> None:
    assert gba.kdf(key, fc, *params) == independent_kdf(key, fc, params)


def test_btid_is_base64_rand_at_bsf_domain() -> None:
    value = gba.btid(RAND, "BSF.Example.com")
    assert value == base64.b64encode(RAND).decode() + "@bsf.example.com"
    assert value == "I1U8vpY3qJ0hiuZNrke/NQ==@bsf.example.com"
    assert gba.parse_btid(value) == (RAND, "bsf.example.com")


@pytest.mark.parametrize(
    "value",
    [
        "nobody",
        "@bsf.example.com",
        "!!!@bsf.example.com",
        "YWJj@bsf.example.com",
        "I1U8vpY3qJ0hiuZNrke/NQ==@bad domain",
    ],
)
def test_parse_btid_refuses_malformed(value: str) -> None:
    with pytest.raises(IdentifierError):
        gba.parse_btid(value)


def test_hmac_sha256_is_the_prf() -> None:
    # FC only, no parameters: S is one octet.
    assert gba.kdf(b"k", 0x01) == hmac.new(b"k", b"\x01", hashlib.sha256).digest()
