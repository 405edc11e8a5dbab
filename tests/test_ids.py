"""oneM2M identifiers: TS-0001 table 7.2-1, TS-0003 10.3.4, 10.3.5, 10.4, 10.5, 10.6."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2msec.errors import IdentifierError
from m2msec.ids import (
    AeId,
    CseId,
    check_fqdn,
    normalise_originator,
    originator_within,
    parse_entity_id,
)
from m2msec.keyids import CredentialId, CredIdType, KcId, KeId, KmId, KpsaId

MN = CseId.parse("mn-cse-123456")

# --------------------------------------------------------------------------- FQDN


@pytest.mark.parametrize("name", ["in.provider.com", "localhost", "xn--bcher-kva.example", "a1.b2"])
def test_fqdn_valid(name: str) -> None:
    assert check_fqdn(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("-in.provider.com", "label"),
        ("in-.provider.com", "label"),
        ("in.-provider-.com", "label"),
        ("in..provider.com", "label"),
        ("in.provider.com.", "label"),
        ("in_provider.com", "label"),
        ("in provider.com", "label"),
        ("prövider.com", "label"),
        ("a" * 64 + ".com", "label"),
        (".".join(["a" * 63] * 4), "253"),
    ],
)
def test_fqdn_invalid(name: str, reason: str) -> None:
    with pytest.raises(IdentifierError, match=reason):
        check_fqdn(name)


def test_fqdn_label_of_63_and_total_of_253_accepted() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert check_fqdn(name) == name


# --------------------------------------------------------------------------- CSE-ID


def test_cse_id_forms() -> None:
    bare = CseId.parse("mn-cse-123456")
    rel = CseId.parse("/mn-cse-123456")
    absolute = CseId.parse("//in.provider.com/mn-cse-123456")
    assert bare == rel
    assert bare.relative == "mn-cse-123456" and bare.sp_fqdn is None
    assert str(bare) == "/mn-cse-123456" == bare.sp_relative()
    assert absolute.sp_fqdn == "in.provider.com"
    assert str(absolute) == "//in.provider.com/mn-cse-123456"
    assert absolute.sp_relative() == "/mn-cse-123456"
    assert absolute != rel


def test_cse_id_fqdn_case_insensitive_id_case_sensitive() -> None:
    assert CseId.parse("//IN.Provider.com/mn") == CseId.parse("//in.provider.com/mn")
    assert hash(CseId.parse("//IN.Provider.com/mn")) == hash(CseId.parse("//in.provider.com/mn"))
    assert str(CseId.parse("//IN.Provider.com/mn")) == "//IN.Provider.com/mn"
    assert CseId.parse("/MN") != CseId.parse("/mn")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/",
        "//in.provider.com",
        "//in.provider.com/",
        "//bad_fqdn/mn",
        "/mn/cse",
        "/mn cse",
        "/mn%20",
        "/mn?x",
        "/" + "a" * 256,
        "/..",
        ".",
        "/mn-cse\n",
        "/mn\u00e9",
    ],
)
def test_cse_id_invalid(text: str) -> None:
    with pytest.raises(IdentifierError, match="CSE-ID"):
        CseId.parse(text)


def test_cse_id_max_length_and_unreserved() -> None:
    assert CseId.parse("/" + "a" * 255).relative == "a" * 255
    assert CseId.parse("/a.b_c~d-e").relative == "a.b_c~d-e"


def test_public_domain_name() -> None:
    assert MN.public_domain_name("in.provider.com") == "mn-cse-123456.in.provider.com"
    with pytest.raises(IdentifierError, match="DNS label"):
        CseId.parse("/mn_cse").public_domain_name("in.provider.com")
    with pytest.raises(IdentifierError, match="DNS label"):
        CseId.parse("/mn.cse").public_domain_name("in.provider.com")
    with pytest.raises(IdentifierError, match="IN public domain"):
        MN.public_domain_name("in..provider.com")


# --------------------------------------------------------------------------- AE-ID


def test_tr0038_c_stem_under_mn_cse() -> None:
    stem = AeId.parse("Clight-AE1", registrar=MN)
    rel = AeId.parse("/mn-cse-123456/Clight-AE1")
    assert stem.stem == "Clight-AE1"
    assert stem.registrar == MN
    assert stem.sp_relative() == "/mn-cse-123456/Clight-AE1"
    assert str(stem) == "Clight-AE1"  # stored as given (docs/readings.md A-14)
    assert stem == rel and hash(stem) == hash(rel)
    assert str(rel) == "/mn-cse-123456/Clight-AE1"


def test_bare_c_stem_without_registrar() -> None:
    ae = AeId.parse("Clight-AE1")
    assert ae.registrar is None
    assert str(ae) == "Clight-AE1"
    with pytest.raises(IdentifierError, match="registrar"):
        ae.sp_relative()
    assert ae != AeId.parse("Clight-AE1", registrar=MN)


def test_s_stem_forms() -> None:
    stem = AeId.parse("Sa3e3f3ab", registrar=MN)
    rel = AeId.parse("/Sa3e3f3ab")
    assert stem.registrar is None
    assert stem == rel
    assert stem.sp_relative() == "/Sa3e3f3ab"
    absolute = AeId.parse("//m2m.things.com/S98821")
    assert absolute.sp_fqdn == "m2m.things.com"
    assert absolute.sp_relative() == "/S98821"
    assert str(absolute) == "//m2m.things.com/S98821"


def test_absolute_c_stem() -> None:
    ae = AeId.parse("//m2m.prov.com/CSE3219/C9886")
    assert ae.registrar == CseId.parse("//m2m.prov.com/CSE3219")
    assert ae.sp_relative() == "/CSE3219/C9886"
    assert str(ae) == "//m2m.prov.com/CSE3219/C9886"
    assert ae == AeId.parse("//M2M.PROV.COM/CSE3219/C9886")
    assert ae != AeId.parse("/CSE3219/C9886")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Xlight", "start with 'C' or 'S'"),
        ("light", "start with 'C' or 'S'"),
        ("/Clight", "registrar"),
        ("/mn/Slight", "S-stem"),
        ("/mn/light", "start with 'C' or 'S'"),
        ("/mn/Clight/x", "too many"),
        ("//m2m.prov.com", "absolute form"),
        ("//m2m.prov.com/Cx", "registrar"),
        ("//bad..fqdn/S1", "label"),
        ("/mn/C light", "may contain only"),
        ("/m n/Clight", "may contain only"),
        ("C" + "x" * 255, "longer than 255"),
        ("/mn//Clight", "too many"),
        ("//", "absolute form"),
    ],
)
def test_ae_id_invalid(text: str, reason: str) -> None:
    with pytest.raises(IdentifierError, match=reason) as info:
        AeId.parse(text)
    assert "AE-ID" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["Clight-AE1", "/mn-cse-123456/Clight-AE1", "/Sx", "//p.example/S1", "//p.example/c/C1"],
)
def test_ae_id_round_trip(text: str) -> None:
    ae = AeId.parse(text, registrar=MN)
    assert str(ae) == text
    assert AeId.parse(str(ae), registrar=MN) == ae


# --------------------------------------------------------------------------- entity IDs


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("mn-cse-123456", CseId),
        ("/mn-cse-123456", CseId),
        ("//in.provider.com/mn-cse-123456", CseId),
        ("/CSE090112", CseId),  # TS-0001 example CSE-ID starting with 'C'
        ("/C3219", CseId),
        ("Clight-AE1", AeId),
        ("Sabc", AeId),
        ("/Sabc", AeId),
        ("//m2m.things.com/S98821", AeId),
        ("/mn-cse-123456/Clight-AE1", AeId),
        ("//m2m.prov.com/CSE3219/C9886", AeId),
    ],
)
def test_parse_entity_id_decides_by_form(text: str, kind: type) -> None:
    assert isinstance(parse_entity_id(text, MN), kind)


@pytest.mark.parametrize("text", ["", "/", "/a/b", "/a/Cb/c", "//x.com", "bad id"])
def test_parse_entity_id_invalid(text: str) -> None:
    with pytest.raises(IdentifierError):
        parse_entity_id(text)


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("Clight-AE1", "/mn-cse-123456/Clight-AE1"),
        ("/mn-cse-123456/Clight-AE1", "/mn-cse-123456/Clight-AE1"),
        ("//in.provider.com/mn-cse-123456/Clight-AE1", "/mn-cse-123456/Clight-AE1"),
        ("//IN.PROVIDER.COM/mn-cse-123456/Clight-AE1", "/mn-cse-123456/Clight-AE1"),
        ("//other.com/mn-cse-123456/Clight-AE1", "//other.com/mn-cse-123456/Clight-AE1"),
        ("Sabc", "/Sabc"),
        ("/Sabc", "/Sabc"),
        ("//in.provider.com/Sabc", "/Sabc"),
        ("mn-cse-123456", "/mn-cse-123456"),
        ("/in-cse", "/in-cse"),
        ("//in.provider.com/in-cse", "/in-cse"),
        ("//other.com/in-cse", "//other.com/in-cse"),
    ],
)
def test_normalise_originator(origin: str, expected: str) -> None:
    assert normalise_originator(origin, MN, sp_fqdn="in.provider.com") == expected


def test_normalise_originator_stem_equals_sp_relative() -> None:
    a = normalise_originator("Clight-AE1", MN)
    b = normalise_originator("/mn-cse-123456/Clight-AE1", MN)
    assert a == b == "/mn-cse-123456/Clight-AE1"


def test_normalise_originator_defaults_to_registrar_sp_and_keeps_unknown_absolute() -> None:
    reg = CseId.parse("//in.provider.com/mn-cse-123456")
    assert normalise_originator("//in.provider.com/Sabc", reg) == "/Sabc"
    assert normalise_originator("Clight-AE1", reg) == "/mn-cse-123456/Clight-AE1"
    assert normalise_originator("//in.provider.com/Sabc", MN) == "//in.provider.com/Sabc"


def test_normalise_originator_rejects_garbage() -> None:
    with pytest.raises(IdentifierError):
        normalise_originator("", MN)
    with pytest.raises(IdentifierError):
        normalise_originator("/mn-cse-123456/Clight AE1", MN)


def test_originator_within() -> None:
    assert originator_within("/mn-cse-123456", MN)
    assert originator_within("/mn-cse-123456/Clight-AE1", MN)
    assert not originator_within("/mn-cse-1234567", MN)
    assert not originator_within("/mn-cse-1234567/Cx", MN)
    assert not originator_within("/Sabc", MN)
    assert not originator_within("//in.provider.com/mn-cse-123456", MN)
    absolute = CseId.parse("//in.provider.com/mn-cse-123456")
    assert originator_within("//IN.provider.com/mn-cse-123456/Cx", absolute)
    assert originator_within("/mn-cse-123456/Cx", absolute)
    assert not originator_within("//other.com/mn-cse-123456/Cx", absolute)


# --------------------------------------------------------------------------- KpsaID / KmID


def test_tr0038_kpsa_id() -> None:
    kpsa = KpsaId.parse("AE123456789012-Light@in.provider.com")
    assert kpsa.relative == "AE123456789012-Light"
    assert kpsa.issuer_fqdn == "in.provider.com"
    assert str(kpsa) == "AE123456789012-Light@in.provider.com"


def test_kpsa_id_compares_octet_exact() -> None:
    a = KpsaId.parse("AE123456789012-Light@in.provider.com")
    assert a == KpsaId.parse("AE123456789012-Light@in.provider.com")
    assert a != KpsaId.parse("ae123456789012-light@in.provider.com")
    assert a != KpsaId.parse("AE123456789012-Light@IN.provider.com")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "missing '@'"),
        ("AE123-Light", "missing '@'"),
        ("@in.provider.com", "empty"),
        ("AE123-Light@", "empty"),
        ("AE 123@in.provider.com", "may contain only"),
        ("AE~123@in.provider.com", "may contain only"),
        ("AE/123@in.provider.com", "may contain only"),
        ("a@b@in.provider.com", "may contain only"),
        ("AE\u00e9@in.provider.com", "may contain only"),
        ("AE123@-in.provider.com", "label"),
        ("AE123@in-.provider.com", "label"),
        ("AE123@in..provider.com", "label"),
        ("AE123@in_provider.com", "label"),
        ("a" * 100 + "@" + "b" * 30 + ".com", "128 octets"),
    ],
)
def test_kpsa_id_invalid(text: str, reason: str) -> None:
    with pytest.raises(IdentifierError, match=reason) as info:
        KpsaId.parse(text)
    assert "KpsaID" in str(info.value)


def test_kpsa_id_length_boundary() -> None:
    fqdn = "p.example"  # 9 chars; 118 + 1 + 9 = 128
    assert len(str(KpsaId.parse("a" * 118 + "@" + fqdn))) == 128
    with pytest.raises(IdentifierError, match="128"):
        KpsaId.parse("a" * 119 + "@" + fqdn)


def test_kpsa_id_verbatim_for_gba_btid() -> None:
    btid = "I3NhbXBsZSBSQU5EIQ==+/x@bsf.operator.com"
    with pytest.raises(IdentifierError):
        KpsaId.parse(btid)
    kpsa = KpsaId.parse(btid, verbatim=True)
    assert str(kpsa) == btid
    assert kpsa.verbatim
    with pytest.raises(IdentifierError, match="visible ASCII"):
        KpsaId.parse("a b@bsf.operator.com", verbatim=True)
    with pytest.raises(IdentifierError, match="label"):
        KpsaId.parse("abc==@bsf..com", verbatim=True)


def test_km_id_case_insensitive() -> None:
    a = KmId.parse("Km-0001@maf.provider.com")
    b = KmId.parse("KM-0001@MAF.Provider.COM")
    assert a == b and hash(a) == hash(b)
    assert str(b) == "KM-0001@MAF.Provider.COM"
    assert a.canonical == "km-0001@maf.provider.com"
    assert a != KmId.parse("Km-0002@maf.provider.com")
    assert len({a, b}) == 1


@pytest.mark.parametrize(
    "text", ["", "km", "km@", "@maf.example", "k m@maf.example", "km@maf..example", "km@-maf"]
)
def test_km_id_invalid(text: str) -> None:
    with pytest.raises(IdentifierError, match="KmID"):
        KmId.parse(text)


# --------------------------------------------------------------------------- KcId / KeId


def test_kc_id_from_relative_emits_lower_hex() -> None:
    kcid = bytes(range(0xA0, 0xB0))
    kc = KcId.from_relative(kcid, "maf.provider.com")
    assert str(kc) == "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf@maf.provider.com"
    assert kc.relative_bytes == kcid
    assert kc.maf_fqdn == "maf.provider.com"
    assert KcId.parse(str(kc)) == kc


def test_kc_id_accepts_either_case() -> None:
    upper = KcId.parse("A0A1A2A3A4A5A6A7A8A9AAABACADAEAF@MAF.provider.com")
    lower = KcId.parse("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf@maf.provider.com")
    assert upper == lower and hash(upper) == hash(lower)
    assert str(upper) == "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf@MAF.provider.com"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a0a1", "missing '@'"),
        ("@maf.example", "empty"),
        ("a0a@maf.example", "hex"),
        ("g0@maf.example", "hex"),
        ("0x00@maf.example", "hex"),
        ("a0 a1@maf.example", "hex"),
        ("a0@maf_example", "label"),
        ("a0@", "empty"),
        ("00" * 60 + "@maf.example", "128"),
    ],
)
def test_kc_id_invalid(text: str, reason: str) -> None:
    with pytest.raises(IdentifierError, match=reason):
        KcId.parse(text)


def test_ke_id_and_kc_id_are_distinct_types() -> None:
    ke = KeId.parse("00112233445566778899aabbccddeeff@mef.provider.com")
    kc = KcId.parse("00112233445566778899aabbccddeeff@mef.provider.com")
    assert ke.mef_fqdn == "mef.provider.com"
    both: list[object] = [ke, kc]
    assert both[0] != both[1]
    with pytest.raises(IdentifierError, match="KeID"):
        KeId.parse("xyz@mef.provider.com")
    with pytest.raises(IdentifierError):
        KeId.from_relative(b"", "mef.provider.com")


# --------------------------------------------------------------------------- Credential-ID


def test_credential_id_for_kpsa_id() -> None:
    kpsa = KpsaId.parse("AE123456789012-Light@in.provider.com")
    cred = CredentialId.for_kpsa_id(kpsa)
    assert str(cred) == "12-AE123456789012-Light@in.provider.com"
    assert cred.type_id is CredIdType.SAEF_KEY
    assert cred.value == "AE123456789012-Light@in.provider.com"
    assert CredentialId.for_kpsa_id(str(kpsa)) == cred
    assert CredentialId.parse(str(cred)) == cred


def test_credential_id_for_km_and_kc() -> None:
    assert str(CredentialId.for_km_id(KmId.parse("Km1@maf.example"))) == "11-Km1@maf.example"
    kc = KcId.from_relative(b"\x01" * 16, "maf.example")
    assert str(CredentialId.for_kc_id(kc)) == "12-" + "01" * 16 + "@maf.example"


def test_credential_id_spec_example() -> None:
    cred = CredentialId.parse("10-thiskey@mymef.com")
    assert cred.type_id is CredIdType.KPM_ID
    assert cred.value == "thiskey@mymef.com"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "missing '-'"),
        ("12", "missing '-'"),
        ("12-", "empty"),
        ("-abc", "typeID"),
        ("x-abc", "typeID"),
        ("012-abc", "typeID"),
        ("+12-abc", "typeID"),
        ("17-abc", "unknown typeID"),
        ("99-abc", "unknown typeID"),
        ("12-a b", "may contain only"),
        ("12-a/b", "may contain only"),
        ("12-a+b=", "may contain only"),
        ("12-" + "a" * 510, "longer than 512"),
    ],
)
def test_credential_id_invalid(text: str, reason: str) -> None:
    with pytest.raises(IdentifierError, match=reason) as info:
        CredentialId.parse(text)
    assert "Credential-ID" in str(info.value)


def test_credential_id_verbatim_for_gba() -> None:
    btid = "I3NhbXBsZSBSQU5EIQ==@bsf.operator.com"
    cred = CredentialId.for_kpsa_id(KpsaId.parse(btid, verbatim=True))
    assert str(cred) == "12-" + btid
    assert cred.verbatim
    assert CredentialId.parse("12-" + btid, verbatim=True) == cred
    with pytest.raises(IdentifierError):
        CredentialId.parse("12-" + btid)
    with pytest.raises(IdentifierError, match="visible ASCII"):
        CredentialId.parse("12-a\tb", verbatim=True)


def test_credential_id_accepts_every_table_type() -> None:
    for member in CredIdType:
        assert CredentialId.parse(f"{int(member)}-v").type_id is member


def test_identifier_error_is_value_error_and_message_is_bounded() -> None:
    with pytest.raises(ValueError) as info:
        KpsaId.parse("x" * 5000)
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------- properties

_REL = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
    min_size=1,
    max_size=60,
)
_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)
_FQDN = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


@given(_REL, _FQDN)
def test_kpsa_id_round_trip(relative: str, fqdn: str) -> None:
    text = f"{relative}@{fqdn}"
    if len(text) > 128:
        with pytest.raises(IdentifierError):
            KpsaId.parse(text)
        return
    kpsa = KpsaId.parse(text)
    assert str(kpsa) == text
    assert KpsaId.parse(str(kpsa)) == kpsa
    assert CredentialId.parse(str(CredentialId.for_kpsa_id(kpsa))).value == text


@given(st.binary(min_size=1, max_size=32), _FQDN)
def test_kc_id_round_trip(relative: bytes, fqdn: str) -> None:
    if 2 * len(relative) + 1 + len(fqdn) > 128:
        with pytest.raises(IdentifierError, match="128"):
            KcId.from_relative(relative, fqdn)
        return
    kc = KcId.from_relative(relative, fqdn)
    assert kc.relative_bytes == relative
    assert KcId.parse(str(kc)) == kc
    assert KcId.parse(str(kc).upper()) == kc


def test_naming_rules_live_in_ids() -> None:
    # TS-0003 10.1.1.5 / 10.1.1.7: a CSE-ID is named by its public domain name, an
    # AE-ID by its Absolute AE-ID (issue 10: pki.py no longer reaches into frameworks/).
    from m2msec.ids import PeerKind, entity_kind, subject_alt_name

    cse = CseId.parse("/mn-cse-1")
    ae = AeId.parse("/mn-cse-1/Cdevice")
    assert subject_alt_name(cse, in_domain="m2m.example") == ("DNS", "mn-cse-1.m2m.example")
    assert subject_alt_name(ae, in_domain="m2m.example", sp_fqdn="sp.example") == (
        "URI",
        "//sp.example/mn-cse-1/Cdevice",
    )
    assert entity_kind("/mn-cse-1") is PeerKind.CSE
    assert entity_kind("Cdevice") is PeerKind.AE
