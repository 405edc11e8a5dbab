"""HTTP Digest AKA (RFC 3310, AKAv1-MD5) over RFC 2617 Digest, sans-IO.

Used on Ub (TS 33.220 4.5.2, TS 24.109 clause 5): the BSF challenges with::

    WWW-Authenticate: Digest realm="bsf.example.com", nonce="<base64(RAND||AUTN||data)>",
                      algorithm=AKAv1-MD5, qop="auth-int", opaque="..."

and the device answers with an ``Authorization: Digest ...`` whose ``response`` is the
RFC 2617 computation with the password taken to be RES, the raw RES octets (RFC 3310 3.2:
AKAv1 uses RES directly as the password; AKAv2 would derive one). With ``qop=auth-int``::

    HA1      = MD5(username ":" realm ":" RES)
    HA2      = MD5(method ":" digest-uri ":" MD5(entity-body))     (auth: no body part)
    response = MD5(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2) (lower-case hex)

(without qop, RFC 2069 style: ``MD5(HA1 ":" nonce ":" HA2)``). ``rspauth`` of
``Authentication-Info`` is the same with an empty method (RFC 2617 3.2.3). On a
synchronisation failure the device sends ``auts="<base64(AUTS)>"`` and computes
``response`` with an empty password (RFC 3310 3.4). The nonce is
``base64(RAND || AUTN || server data)`` (RFC 3310 3.2), :func:`make_nonce` /
:func:`split_nonce`.

Parsing (:func:`parse_challenge`, :func:`parse_authorization`) follows RFC 7235's
``auth-param`` grammar: ``token BWS "=" BWS ( token / quoted-string )`` separated by
commas, with quoted-pair escapes (``\\"``) inside quoted strings, commas inside quotes
kept, empty list elements skipped. It refuses, with a :class:`DigestError` naming the
problem: another scheme, a parameter given twice, a missing required parameter, an
unterminated quoted string, control characters (CR/LF: header injection), a header over
:data:`MAX_HEADER_LENGTH` characters, more than :data:`MAX_PARAMS` parameters, a
malformed ``nc`` or ``qop``. Unknown parameters are ignored (RFC 2617 3.2.2).
Formatting quotes and escapes values and refuses CR/LF.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Final

from m2msec.errors import M2MSecError

__all__ = [
    "AKAV1_MD5",
    "MAX_HEADER_LENGTH",
    "MAX_PARAMS",
    "MAX_VALUE_LENGTH",
    "AuthenticationInfo",
    "Authorization",
    "Challenge",
    "DigestError",
    "compute_response",
    "compute_rspauth",
    "make_nonce",
    "parse_authentication_info",
    "parse_authorization",
    "parse_challenge",
    "response_matches",
    "split_nonce",
]

AKAV1_MD5: Final = "AKAv1-MD5"
MAX_HEADER_LENGTH: Final = 8192
MAX_PARAMS: Final = 32
MAX_VALUE_LENGTH: Final = 4096
_ALGORITHMS: Final = {"akav1-md5": AKAV1_MD5, "md5": "MD5"}
_QOPS: Final = ("auth", "auth-int")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NC: Final = re.compile(r"[0-9A-Fa-f]{8}")
_HEX32: Final = re.compile(r"[0-9a-fA-F]{32}")
_OWS: Final = " \t"


class DigestError(M2MSecError, ValueError):
    """A Digest header is malformed or lacks something needed; the message says what."""


# ----------------------------------------------------------------------------- parsing


def _parse(value: str, what: str) -> dict[str, str]:
    """``Digest p1=v1, p2="v2"`` -> {"p1": "v1", "p2": "v2"} (names in lower case)."""
    if not isinstance(value, str):
        raise DigestError(f"{what}: not text")
    if len(value) > MAX_HEADER_LENGTH:
        raise DigestError(f"{what}: longer than {MAX_HEADER_LENGTH} characters")
    text = value.strip(_OWS)
    m = _TOKEN.match(text)
    if m is None:
        raise DigestError(f"{what}: no authentication scheme")
    scheme = m.group(0)
    if scheme.lower() != "digest":
        raise DigestError(f"{what}: scheme {scheme[:32]!r} is not Digest")
    pos = m.end()
    n = len(text)
    if pos < n and text[pos] not in _OWS:
        raise DigestError(f"{what}: expected a space after 'Digest'")
    params: dict[str, str] = {}
    while True:
        # Skip OWS and empty list elements (RFC 7230 7: "a, , b" is allowed).
        while pos < n and (text[pos] in _OWS or text[pos] == ","):
            pos += 1
        if pos >= n:
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise DigestError(
                f"{what}: expected a parameter name at position {pos}, found {text[pos]!r}"
            )
        name = m.group(0).lower()
        pos = m.end()
        while pos < n and text[pos] in _OWS:
            pos += 1
        if pos >= n or text[pos] != "=":
            raise DigestError(f"{what}: parameter {name!r} has no '=' and value")
        pos += 1
        while pos < n and text[pos] in _OWS:
            pos += 1
        if pos < n and text[pos] == '"':
            pos, val = _quoted(text, pos, name, what)
        else:
            m = _TOKEN.match(text, pos)
            if m is None:
                found = repr(text[pos]) if pos < n else "the end"
                raise DigestError(
                    f"{what}: parameter {name!r} needs a token or a quoted string, found {found}"
                )
            val = m.group(0)
            pos = m.end()
        if len(val) > MAX_VALUE_LENGTH:
            raise DigestError(f"{what}: value of {name!r} longer than {MAX_VALUE_LENGTH}")
        if name in params:
            raise DigestError(f"{what}: parameter {name!r} appears more than once")
        params[name] = val
        if len(params) > MAX_PARAMS:
            raise DigestError(f"{what}: more than {MAX_PARAMS} parameters")
        while pos < n and text[pos] in _OWS:
            pos += 1
        if pos < n and text[pos] != ",":
            raise DigestError(f"{what}: expected ',' after parameter {name!r}, found {text[pos]!r}")
    return params


def _quoted(text: str, pos: int, name: str, what: str) -> tuple[int, str]:
    """Read a quoted-string starting at ``text[pos] == '"'``; return (end, value)."""
    out: list[str] = []
    pos += 1
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == '"':
            return pos + 1, "".join(out)
        if c == "\\":
            pos += 1
            if pos >= n:
                break
            c = text[pos]
        if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F:
            raise DigestError(f"{what}: control character in the value of {name!r}")
        out.append(c)
        pos += 1
    raise DigestError(f"{what}: unterminated quoted string in the value of {name!r}")


def _algorithm(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    known = _ALGORITHMS.get(value.lower())
    if known is None:
        raise DigestError(f"{what}: algorithm {value[:40]!r} is not supported (AKAv1-MD5)")
    return known


def _check_text(value: str, name: str) -> str:
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise DigestError(f"{name}: control characters (CR, LF, ...) are not allowed")
    return value


def _quote(value: str, name: str) -> str:
    _check_text(value, name)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _required(params: dict[str, str], names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if n not in params]
    if missing:
        raise DigestError(f"{what}: missing parameter(s) {', '.join(missing)}")


# ----------------------------------------------------------------------------- challenge


@dataclass(frozen=True, slots=True)
class Challenge:
    """A ``WWW-Authenticate: Digest`` challenge (RFC 2617 3.2.1, RFC 3310 3.1)."""

    realm: str
    nonce: str
    algorithm: str = AKAV1_MD5
    qop: tuple[str, ...] = ("auth-int",)
    opaque: str | None = None
    stale: bool = False

    def header_value(self) -> str:
        parts = [f"realm={_quote(self.realm, 'realm')}", f"nonce={_quote(self.nonce, 'nonce')}"]
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop), 'qop')}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque, 'opaque')}")
        if self.stale:
            parts.append("stale=TRUE")
        return "Digest " + ", ".join(parts)


def parse_challenge(value: str) -> Challenge:
    """Parse a ``WWW-Authenticate`` value; raises :class:`DigestError`."""
    what = "WWW-Authenticate"
    p = _parse(value, what)
    _required(p, ("realm", "nonce"), what)
    algorithm = _algorithm(p.get("algorithm"), what) or "MD5"
    qop: tuple[str, ...] = ()
    if "qop" in p:
        qop = tuple(q.strip().lower() for q in p["qop"].split(",") if q.strip())
        if not qop:
            raise DigestError(f"{what}: qop is empty")
    stale = p.get("stale", "false").lower() == "true"
    return Challenge(p["realm"], p["nonce"], algorithm, qop, p.get("opaque"), stale)


# ----------------------------------------------------------------------------- authorization


@dataclass(frozen=True, slots=True)
class Authorization:
    """An ``Authorization: Digest`` answer (RFC 2617 3.2.2, RFC 3310 3.2/3.4).

    ``auts`` is the base64 text of AUTS on a synchronisation failure. ``nonce`` and
    ``response`` are empty in TS 24.109's first request, which only names the user.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str = field(repr=False)
    algorithm: str | None = AKAV1_MD5
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    auts: str | None = None

    def header_value(self) -> str:
        parts = [
            f"username={_quote(self.username, 'username')}",
            f"realm={_quote(self.realm, 'realm')}",
            f"nonce={_quote(self.nonce, 'nonce')}",
            f"uri={_quote(self.uri, 'uri')}",
            f"response={_quote(self.response, 'response')}",
        ]
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
            parts.append(f"nc={self.nc}")
            parts.append(f"cnonce={_quote(self.cnonce or '', 'cnonce')}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque, 'opaque')}")
        if self.auts is not None:
            parts.append(f"auts={_quote(self.auts, 'auts')}")
        return "Digest " + ", ".join(parts)

    def digest(self, password: bytes, method: str, body: bytes = b"") -> str:
        """The request-digest over these fields (RFC 2617 3.2.2.1) with ``password`` as raw
        octets (RES, or empty for AUTS and MAC-failure reports, RFC 3310 3.2/3.4): what the
        device sends as ``response`` and the BSF expects."""
        return compute_response(
            password=password,
            username=self.username,
            realm=self.realm,
            method=method,
            uri=self.uri,
            nonce=self.nonce,
            qop=self.qop,
            nc=self.nc,
            cnonce=self.cnonce,
            body=body,
        )

    def rspauth(self, password: bytes, body: bytes) -> str:
        """``rspauth`` of the answer to this Authorization, ``body`` that answer's entity-body
        (:func:`compute_rspauth`): the BSF sends it, the device checks it."""
        return self.digest(password, "", body)

    def auts_bytes(self) -> bytes | None:
        """AUTS decoded from base64, or None; :class:`DigestError` when malformed."""
        if self.auts is None:
            return None
        try:
            return base64.b64decode(self.auts, validate=True)
        except (binascii.Error, ValueError):
            raise DigestError("Authorization: auts is not base64") from None


def parse_authorization(value: str) -> Authorization:
    """Parse an ``Authorization`` value; raises :class:`DigestError`."""
    what = "Authorization"
    p = _parse(value, what)
    _required(p, ("username", "realm", "nonce", "uri", "response"), what)
    if not p["username"]:
        raise DigestError(f"{what}: username (the IMPI) is empty")
    algorithm = _algorithm(p.get("algorithm"), what)
    qop = p.get("qop")
    nc = cnonce = None
    if qop is not None:
        qop = qop.lower()
        if qop not in _QOPS:
            raise DigestError(f"{what}: qop {qop[:20]!r} is not auth or auth-int")
        _required(p, ("nc", "cnonce"), f"{what} with qop")
        nc, cnonce = p["nc"], p["cnonce"]
        if not _NC.fullmatch(nc):
            raise DigestError(f"{what}: nc must be 8 hexadecimal digits")
        if not cnonce:
            raise DigestError(f"{what}: cnonce is empty")
    response = p["response"]
    if response and not _HEX32.fullmatch(response):
        raise DigestError(f"{what}: response must be 32 hexadecimal digits")
    return Authorization(
        username=p["username"],
        realm=p["realm"],
        nonce=p["nonce"],
        uri=p["uri"],
        response=response.lower(),
        algorithm=algorithm,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        opaque=p.get("opaque"),
        auts=p.get("auts"),
    )


@dataclass(frozen=True, slots=True)
class AuthenticationInfo:
    """``Authentication-Info`` (RFC 2617 3.2.3): rspauth and the echoed qop/nc/cnonce."""

    rspauth: str
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None

    def header_value(self) -> str:
        parts = [f"rspauth={_quote(self.rspauth, 'rspauth')}"]
        if self.qop is not None:
            cnonce = _quote(self.cnonce or "", "cnonce")
            parts += [f"qop={self.qop}", f"nc={self.nc}", f"cnonce={cnonce}"]
        return ", ".join(parts)


def parse_authentication_info(value: str) -> AuthenticationInfo:
    """Parse ``Authentication-Info`` (no scheme word); raises :class:`DigestError`."""
    p = _parse("Digest " + value, "Authentication-Info")
    _required(p, ("rspauth",), "Authentication-Info")
    return AuthenticationInfo(p["rspauth"].lower(), p.get("qop"), p.get("nc"), p.get("cnonce"))


# ----------------------------------------------------------------------------- computing


def _h(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _enc(text: str) -> bytes:
    return text.encode("utf-8")


def compute_response(
    *,
    password: bytes,
    username: str,
    realm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = "auth-int",
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The RFC 2617 ``request-digest`` with ``password`` as raw octets (RES, RFC 3310).

    ``method`` is empty for ``rspauth`` (:func:`compute_rspauth`). AKAv1-MD5 computes as
    MD5 (RFC 3310 3.2: only the password differs).
    """
    if qop is not None and qop not in _QOPS:
        raise DigestError(f"qop {qop!r} is not auth or auth-int")
    if qop is not None and (nc is None or cnonce is None):
        raise DigestError("qop needs nc and cnonce")
    ha1 = _h(_enc(username) + b":" + _enc(realm) + b":" + bytes(password))
    a2 = _enc(method) + b":" + _enc(uri)
    if qop == "auth-int":
        a2 += b":" + _h(body).encode("ascii")
    ha2 = _h(a2)
    if qop is None:
        return _h(f"{ha1}:{nonce}:{ha2}".encode())
    return _h(_enc(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))


def compute_rspauth(
    *,
    password: bytes,
    username: str,
    realm: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str | None,
    cnonce: str | None,
    body: bytes = b"",
) -> str:
    """``rspauth`` of Authentication-Info: the response with an empty method; ``body`` is
    the response's entity-body for auth-int (RFC 2617 3.2.3)."""
    return compute_response(
        password=password,
        username=username,
        realm=realm,
        method="",
        uri=uri,
        nonce=nonce,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        body=body,
    )


def response_matches(expected: str, received: str) -> bool:
    """Constant-time comparison of two hex digests (case-insensitive)."""
    return hmac.compare_digest(expected.lower().encode(), received.lower().encode())


# ----------------------------------------------------------------------------- nonce


def make_nonce(rand: bytes, autn: bytes, server_data: bytes = b"") -> str:
    """``base64(RAND || AUTN || server data)`` (RFC 3310 3.2)."""
    if len(rand) != 16 or len(autn) != 16:
        raise ValueError("RAND and AUTN are 16 octets each")
    return base64.b64encode(bytes(rand) + bytes(autn) + bytes(server_data)).decode("ascii")


def split_nonce(nonce: str) -> tuple[bytes, bytes, bytes]:
    """(RAND, AUTN, server data) of an AKA nonce; :class:`DigestError` when malformed."""
    try:
        raw = base64.b64decode(nonce, validate=True)
    except (binascii.Error, ValueError):
        raise DigestError("nonce is not base64") from None
    if len(raw) < 32:
        raise DigestError("nonce is too short for RAND || AUTN (32 octets)")
    return raw[:16], raw[16:32], raw[32:]
