"""HTTP Digest AKA (RFC 3310 over RFC 2617): computation and robust header parsing."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2msec.gba import digest
from m2msec.gba.digest import (
    Authorization,
    Challenge,
    DigestError,
    compute_response,
    compute_rspauth,
    make_nonce,
    parse_authentication_info,
    parse_authorization,
    parse_challenge,
    split_nonce,
)

RAND = bytes.fromhex("23553cbe9637a89d218ae64dae47bf35")
AUTN = bytes.fromhex("55f328b43577b9b94a9ffac354dfafb3")
RES = bytes.fromhex("a54211d5e3ba50bf")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------- computing


def test_authorization_computes_what_both_ends_compare() -> None:
    # The device's response and the BSF's rspauth come from one Authorization's fields.
    auth = Authorization(
        "dev@ims", "bsf.example", make_nonce(RAND, AUTN), "/", "", qop="auth-int", nc="00000001",
        cnonce="0a4f113b",
    )  # fmt: skip
    fields = {k: getattr(auth, k) for k in ("username", "realm", "uri", "nonce", "qop", "nc")}
    assert auth.digest(RES, "GET", b"x") == compute_response(
        password=RES, method="GET", cnonce="0a4f113b", body=b"x", **fields
    )
    assert auth.rspauth(RES, b"<doc/>") == compute_rspauth(
        password=RES, cnonce="0a4f113b", body=b"<doc/>", **fields
    )


def test_rfc2617_section_3_5_example() -> None:
    # The published example of RFC 2617 3.5 (qop=auth, password "Circle Of Life").
    assert (
        compute_response(
            password=b"Circle Of Life",
            username="Mufasa",
            realm="testrealm@host.com",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def test_akav1_auth_int_uses_raw_res_and_the_body_hash() -> None:
    nonce = make_nonce(RAND, AUTN, b"srv")
    body = b"<xml/>"
    # Independent computation: HA1 over the raw RES octets (RFC 3310 3.2), auth-int HA2.
    ha1 = md5(b"user@example.com:bsf.example.com:" + RES)
    ha2 = md5(b"POST:/:" + md5(body).encode())
    expected = md5(f"{ha1}:{nonce}:00000002:abc:auth-int:{ha2}".encode())
    fields = dict(
        username="user@example.com",
        realm="bsf.example.com",
        method="POST",
        uri="/",
        nonce=nonce,
        qop="auth-int",
        nc="00000002",
        cnonce="abc",
    )
    got = compute_response(password=RES, body=body, **fields)
    assert got == expected
    # Not the hex text of RES: the raw octets are the password.
    assert compute_response(password=RES.hex().encode(), body=body, **fields) != got


def test_auth_int_depends_on_the_body_and_auth_does_not() -> None:
    common = dict(
        password=RES, username="u", realm="r", method="GET", uri="/", nonce="n", nc="00000001",
        cnonce="c",
    )  # fmt: skip

    def response(qop: str, body: bytes) -> str:
        return compute_response(qop=qop, body=body, **common)  # type: ignore[arg-type]

    assert response("auth-int", b"a") != response("auth-int", b"b")
    assert response("auth", b"a") == response("auth", b"b")


def test_no_qop_is_rfc2069_style() -> None:
    ha1 = md5(b"u:r:" + RES)
    ha2 = md5(b"GET:/")
    assert compute_response(
        password=RES, username="u", realm="r", method="GET", uri="/", nonce="n", qop=None
    ) == md5(f"{ha1}:n:{ha2}".encode())


def test_rspauth_is_the_response_with_an_empty_method() -> None:
    ha1 = md5(b"u:r:" + RES)
    ha2 = md5(b":/:" + md5(b"body").encode())
    expected = md5(f"{ha1}:n:00000001:c:auth-int:{ha2}".encode())
    assert (
        compute_rspauth(
            password=RES,
            username="u",
            realm="r",
            uri="/",
            nonce="n",
            qop="auth-int",
            nc="00000001",
            cnonce="c",
            body=b"body",
        )
        == expected
    )


def test_compute_refuses_inconsistent_qop() -> None:
    with pytest.raises(DigestError):
        compute_response(
            password=b"",
            username="u",
            realm="r",
            method="GET",
            uri="/",
            nonce="n",
            qop="auth-conf",
            nc="00000001",
            cnonce="c",
        )
    with pytest.raises(DigestError):
        compute_response(
            password=b"", username="u", realm="r", method="GET", uri="/", nonce="n", qop="auth"
        )


# ----------------------------------------------------------------------------- nonce


def test_nonce_round_trip() -> None:
    nonce = make_nonce(RAND, AUTN, b"\x00server")
    assert split_nonce(nonce) == (RAND, AUTN, b"\x00server")
    assert split_nonce(make_nonce(RAND, AUTN)) == (RAND, AUTN, b"")


@pytest.mark.parametrize("nonce", ["", "not base64!", "YWJj", "====", "a" * 41])
def test_split_nonce_refuses_malformed(nonce: str) -> None:
    with pytest.raises(DigestError):
        split_nonce(nonce)


# ----------------------------------------------------------------------------- challenge


def test_challenge_format_and_parse() -> None:
    ch = Challenge(realm="bsf.example.com", nonce=make_nonce(RAND, AUTN))
    value = ch.header_value()
    assert value.startswith("Digest ")
    assert 'qop="auth-int"' in value and "algorithm=AKAv1-MD5" in value
    assert parse_challenge(value) == ch


def test_challenge_from_another_implementation() -> None:
    text = (
        'Digest realm="bsf.home1.net",nonce="CjPk9mRqNuT25eRkajM09uTl9nM09uTl9nMz5OX25PZz==",'
        ' algorithm=AKAv1-MD5 , qop="auth-int,auth", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    ch = parse_challenge(text)
    assert ch.realm == "bsf.home1.net"
    assert ch.qop == ("auth-int", "auth")
    assert ch.algorithm == "AKAv1-MD5"
    assert ch.opaque == "5ccc069c403ebaf9f0171e9517f40e41"


def test_challenge_needs_realm_and_nonce() -> None:
    with pytest.raises(DigestError, match=r"missing parameter.*nonce"):
        parse_challenge('Digest realm="x"')


# ----------------------------------------------------------------------------- authorization

GOOD = (
    'Digest username="user@example.com", realm="bsf.example.com", nonce="abc=", uri="/", '
    'response="6629fae49393a05397450978507c4ef1", algorithm=AKAv1-MD5, qop=auth-int, '
    'nc=00000001, cnonce="0a4f113b"'
)


def test_parse_authorization() -> None:
    auth = parse_authorization(GOOD)
    assert auth.username == "user@example.com"
    assert auth.qop == "auth-int"
    assert auth.nc == "00000001"
    assert auth.algorithm == "AKAv1-MD5"
    assert auth.auts is None


def test_first_request_with_empty_nonce_and_response() -> None:
    auth = parse_authorization(
        'Digest username="user@example.com", realm="bsf.example.com", nonce="", uri="/", '
        'response=""'
    )
    assert auth.nonce == "" and auth.response == "" and auth.qop is None


def test_quoted_string_escapes_and_commas_inside_quotes() -> None:
    auth = parse_authorization(
        r'Digest username="a\"b,c\\d", realm="r, with comma", nonce="n", uri="/x,y", '
        'response=""'
    )
    assert auth.username == 'a"b,c\\d'
    assert auth.realm == "r, with comma"
    assert auth.uri == "/x,y"


def test_case_insensitive_names_scheme_and_extra_commas() -> None:
    auth = parse_authorization(
        'digest  USERNAME="u",, Realm="r" ,nonce="n",uri="/",RESPONSE="",  unknown=token,'
    )
    assert (auth.username, auth.realm, auth.nonce) == ("u", "r", "n")


def test_auts_is_carried_and_decoded() -> None:
    auth = parse_authorization(GOOD + ', auts="AAECAwQFBgcICQoLDA0="')
    assert auth.auts_bytes() == bytes(range(14))
    bad = parse_authorization(GOOD + ', auts="@@@"')
    with pytest.raises(DigestError, match="auts is not base64"):
        bad.auts_bytes()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no authentication scheme"),
        ("Basic dXNlcjpwYXNz", "not Digest"),
        ("Digestusername=x", "not Digest"),
        (
            'Digest username="u", username="v", realm="r", nonce="", uri="/", response=""',
            "appears more than once",
        ),
        ('Digest realm="r", nonce="", uri="/", response=""', "missing parameter.*username"),
        ('Digest username="u", realm="r", nonce="", uri="/"', "missing parameter.*response"),
        ('Digest username="u, realm="r", nonce="", uri="/", response=""', "expected ','"),
        ('Digest username="u", realm="r", nonce="", uri="/", response="', "unterminated"),
        (
            'Digest username="u\r\nX-Evil: 1", realm="r", nonce="", uri="/", response=""',
            "control character",
        ),
        ('Digest username="u" realm="r"', "expected ','"),
        ("Digest username", "has no '='"),
        ("Digest username=", "needs a token or a quoted string"),
        ('Digest username=="u"', "needs a token"),
        ('Digest username="", realm="r", nonce="", uri="/", response=""', "username.*empty"),
        (GOOD.replace("qop=auth-int", "qop=auth-conf"), "qop"),
        (GOOD.replace("nc=00000001", "nc=1"), "nc must be 8"),
        (GOOD.replace(', cnonce="0a4f113b"', ""), "missing parameter.*cnonce"),
        (GOOD.replace("AKAv1-MD5", "AKAv2-MD5"), "algorithm.*not supported"),
        (GOOD.replace("6629fae49393a05397450978507c4ef1", "xyz"), "32 hexadecimal"),
        ("Digest " + "a" * 9000 + "=b", "longer than"),
        ("Digest " + ", ".join(f"p{i}=v" for i in range(40)), "more than 32 parameters"),
    ],
)
def test_malformed_authorization_is_refused_with_a_clear_reason(value: str, message: str) -> None:
    with pytest.raises(DigestError, match=message):
        parse_authorization(value)


def test_digest_error_is_a_value_error_and_m2msec_error() -> None:
    from m2msec.errors import M2MSecError

    with pytest.raises(ValueError):
        parse_authorization("Basic x")
    assert issubclass(DigestError, M2MSecError)


def test_formatting_refuses_header_injection() -> None:
    auth = Authorization(username="u\nX: y", realm="r", nonce="", uri="/", response="")
    with pytest.raises(DigestError, match="control characters"):
        auth.header_value()


_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    username=_text.filter(bool),
    realm=_text,
    uri=_text,
    cnonce=_text.filter(bool),
    auts=st.none() | st.binary(min_size=14, max_size=14),
)
def test_authorization_round_trip(
    username: str, realm: str, uri: str, cnonce: str, auts: bytes | None
) -> None:
    import base64

    auth = Authorization(
        username=username,
        realm=realm,
        nonce=make_nonce(RAND, AUTN),
        uri=uri,
        response="0123456789abcdef0123456789abcdef",
        qop="auth-int",
        nc="0000000a",
        cnonce=cnonce,
        auts=None if auts is None else base64.b64encode(auts).decode(),
    )
    parsed = parse_authorization(auth.header_value())
    assert parsed == auth
    assert parsed.auts_bytes() == auts


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parser_never_fails_with_anything_but_digest_error(value: str) -> None:
    with contextlib.suppress(DigestError):
        parse_authorization(value)
    with contextlib.suppress(DigestError):
        parse_challenge(value)


def test_authentication_info_round_trip() -> None:
    info = digest.AuthenticationInfo(
        "0123456789abcdef0123456789abcdef", "auth-int", "00000001", "c,x"
    )
    assert parse_authentication_info(info.header_value()) == info
