"""Sans-IO oneM2M CoAP binding (TS-0008) on aiocoap's message codec.

TS-0003 10.2.1 secures the CoAP binding with DTLS 1.2; this module is the CoAP side. It
never touches a socket: CoAP messages are bytes in and bytes out, encoded and decoded by
:class:`aiocoap.Message` (no hand-written CoAP parsing), and the asyncio plumbing lives in
:mod:`m2msec.servers.coap_gateway` (server) and :mod:`m2msec.bindings.coap.client`
(Entity A).

**Request primitive -> CoAP request** (TS-0008 6.2). The Operation is the method (table
6.2.1-1: CREATE and NOTIFY are POST, told apart by the presence of the Resource Type);
To is the Uri-Path (6.2.2.3: a first segment ``~`` makes it SP-relative, ``_`` absolute);
filter criteria and the other short-name parameters travel in Uri-Query; the remaining
parameters are the oneM2M options of table 6.2.2.4.0-1, whose numbers TS-0008 V3.7.0
changed for IANA registration (``CURRENT`` below, as V3.9.0 and ACME use them). The
numbers used before V3.7.0 (``LEGACY``: oneM2M-FR 256, -RQI 257, -RQET 260, -RSET 261,
-OET 262, -EC 264, -RSC 265, -GID 266) are accepted too, and a response uses the numbering
its request used. Options whose legacy numbers we could not confirm (CTO, CTS, ATI, VSI,
GTM, AUS, ASRI) are known by their current numbers only.

**Content formats** (6.2.2.2): the IANA numbers for text, XML, JSON and CBOR and the
oneM2M numbers of table 6.2.2.2-1 (``application/vnd.onem2m-res+json`` is 10001, and so
on). TS-0008 warns they may change; 10001 and 10002 collide with IANA's
``application/oscore`` and ``application/javascript``, and we follow TS-0008 as oneM2M
devices do. A payload without Content-Format is read as JSON.

**Response primitive -> CoAP response** (6.2.4): the Response Status Code picks the CoAP
code by table 6.2.4-1 (2000 is 2.05 Content for RETRIEVE and 2.04 Changed with an empty
payload for NOTIFY) and always travels in the oneM2M-RSC option too, since several RSCs
share one CoAP code (4103, 4106 and 4107 are all 4.03). A created resource's address
becomes Location-Path options. Max-Age is 0 on every response (6.4: caching off, so the
CSE sees every request).

**Message layer** (RFC 7252 4, 5.2; TS-0008 6.3): :class:`CoapServerSession` is one
peer's server side. Confirmable requests are answered piggybacked on the ACK when the
answer is ready in time, otherwise with an empty ACK and a separate Confirmable response
that is retransmitted with exponential back-off (ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4) until
acknowledged. Non-confirmable requests get Non-confirmable responses. Duplicates (same
Message ID within EXCHANGE_LIFETIME) are answered from a bounded cache and never
processed twice. An empty CON (a CoAP ping) gets a Reset; a message that does not parse
gets a Reset when it is Confirmable (its Message ID is readable) and is dropped otherwise.

**Block-wise transfer** (RFC 7959; TS-0008 5.2.3, 6.5): answers larger than one DTLS
record are sent in Block2 blocks (the largest power of two from 16 to 1024 that fits the
record with the response's options), with Size2 and an ETag; the whole answer is kept for
the follow-up block requests (one transfer per peer, up to ``max_body`` octets, dropped
after ``BLOCK_LIFETIME`` seconds). Requests may arrive in Block1 blocks, in order, up to
``max_body`` octets (more is 4.13 with Size1; a gap is 4.08). Observe (RFC 7641) is not
supported: the option is ignored, as an elective option may be.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption, OpaqueOption, UintOption

from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest, Operation
from m2msec.errors import M2MSecError

__all__ = [
    "ACK_RANDOM_FACTOR",
    "ACK_TIMEOUT",
    "BLOCK_LIFETIME",
    "COAPS_PORT",
    "CONTENT_FORMATS",
    "EXCHANGE_LIFETIME",
    "JSON_FORMAT",
    "MAX_RETRANSMIT",
    "ONEM2M_OPTIONS",
    "CoapBindingError",
    "CoapOneM2MResponse",
    "CoapRequestError",
    "CoapServerSession",
    "Exchange",
    "MappedRequest",
    "Numbering",
    "OneM2MOption",
    "coap_code_for",
    "coap_code_text",
    "content_format_for",
    "decode",
    "encode",
    "error_message",
    "media_type_for",
    "onem2m_request_message",
    "parse_response",
    "peek",
    "request_from_coap",
    "response_to_coap",
    "uri_path_for",
]

COAPS_PORT = 5684

# RFC 7252 4.8 transmission parameters (defaults).
ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
#: RFC 7252 4.8.2: how long a Message ID of a CON (resp. NON) must be remembered.
EXCHANGE_LIFETIME = 247.0
NON_LIFETIME = 145.0
#: How long the rest of a block-wise answer (or a partial Block1 request) is kept.
BLOCK_LIFETIME = 60.0
#: Message IDs remembered per peer for deduplication (oldest forgotten first).
DEDUP_ENTRIES = 32
#: Octets of remembered answers per peer; beyond it the oldest are forgotten first.
DEDUP_BYTES = 16 * 1024
#: Block-wise answers kept per peer (a client with NSTART=1 runs one at a time).
BLOCK_TRANSFERS = 1

_TOKEN_MAX = 8
_RNG = random.Random()  # Message IDs need not be secret (tokens would; DTLS covers them)
_MIN_SZX, _MAX_SZX = 0, 6  # 16 .. 1024 octets (BERT, szx 7, is for CoAP over TCP only)


class CoapBindingError(M2MSecError, ValueError):
    """A CoAP message could not be mapped (reason safe to show)."""


class CoapRequestError(CoapBindingError):
    """A request refused by the binding: answer it with ``code`` (and ``rsc`` if given)."""

    def __init__(self, code: int, reason: str, rsc: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.rsc = rsc


# ----------------------------------------------------------------------------- options


class Numbering(enum.Enum):
    """Which table of oneM2M option numbers a message uses (module docstring)."""

    CURRENT = "current"  # TS-0008 V3.7.0 and later (IANA registration)
    LEGACY = "legacy"  # before TS-0008 V3.7.0


@dataclass(frozen=True, slots=True)
class OneM2MOption:
    """One row of TS-0008 table 6.2.2.4.0-1 and the HTTP header carrying the same parameter."""

    name: str
    number: int
    legacy: int | None
    uint: bool
    max_length: int
    header: str | None


# The HTTP headers are those of the HTTP binding (TS-0009), as ACME reads them.
ONEM2M_OPTIONS: tuple[OneM2MOption, ...] = (
    OneM2MOption("fr", 279, 256, False, 255, "X-M2M-Origin"),
    OneM2MOption("rqi", 283, 257, False, 255, "X-M2M-RI"),
    OneM2MOption("ot", 259, 259, False, 255, "X-M2M-OT"),
    OneM2MOption("rqet", 291, 260, False, 255, "X-M2M-RET"),
    OneM2MOption("rset", 295, 261, False, 255, "X-M2M-RST"),
    OneM2MOption("oet", 299, 262, False, 255, "X-M2M-OET"),
    OneM2MOption("rturi", 263, 263, False, 255, "X-M2M-RTU"),
    OneM2MOption("ec", 303, 264, True, 4, "X-M2M-EC"),
    OneM2MOption("rsc", 307, 265, True, 4, "X-M2M-RSC"),
    OneM2MOption("gid", 311, 266, False, 255, "X-M2M-GID"),
    OneM2MOption("ty", 267, 267, True, 4, None),  # the ty parameter of Content-Type
    OneM2MOption("cto", 319, None, True, 4, "X-M2M-CTO"),
    OneM2MOption("cts", 323, None, True, 4, "X-M2M-CTS"),
    OneM2MOption("ati", 327, None, False, 255, "X-M2M-ATI"),
    OneM2MOption("rvi", 271, 271, False, 255, "X-M2M-RVI"),
    OneM2MOption("vsi", 331, None, False, 255, "X-M2M-VSI"),
    OneM2MOption("gtm", 335, None, False, 512, "X-M2M-GTM"),
    OneM2MOption("aus", 339, None, False, 255, "X-M2M-AUS"),
    OneM2MOption("asri", 275, None, False, 255, "X-M2M-ASRI"),
)
_BY_NAME = {o.name: o for o in ONEM2M_OPTIONS}
_BY_NUMBER: dict[int, tuple[OneM2MOption, Numbering | None]] = {}
for _o in ONEM2M_OPTIONS:
    _BY_NUMBER[_o.number] = (_o, None if _o.legacy == _o.number else Numbering.CURRENT)
    if _o.legacy is not None and _o.legacy != _o.number:
        _BY_NUMBER[_o.legacy] = (_o, Numbering.LEGACY)

# Parameters of a response primitive worth relaying (request-only ones are not).
_RESPONSE_PARAMS = ("rsc", "rqi", "rvi", "ot", "rset", "ec", "cto", "cts", "ati", "vsi")

# RFC 7252 5.10 / RFC 7959 options the gateway understands (or may ignore) in a request.
_URI_HOST, _ETAG, _OBSERVE, _URI_PORT, _URI_PATH = 3, 4, 6, 7, 11
_CONTENT_FORMAT, _MAX_AGE, _URI_QUERY, _ACCEPT = 12, 14, 15, 17
_BLOCK2, _BLOCK1, _SIZE2, _PROXY_URI, _PROXY_SCHEME, _SIZE1 = 23, 27, 28, 35, 39, 60
_IF_MATCH, _IF_NONE_MATCH, _NO_RESPONSE = 1, 5, 258
_UNDERSTOOD = frozenset(
    {_URI_HOST, _URI_PORT, _URI_PATH, _CONTENT_FORMAT, _URI_QUERY, _ACCEPT}
    | {_BLOCK2, _BLOCK1, _SIZE2, _SIZE1}
)
_BLOCK_OPTIONS = frozenset({_BLOCK1, _BLOCK2, _SIZE1, _SIZE2})


_STANDARD_OPTIONS = {int(o): str(o.name) for o in OptionNumber}  # registered, by aiocoap


def _option_name(number: int) -> str:
    if number in _BY_NUMBER:
        return f"oneM2M-{_BY_NUMBER[number][0].name.upper()} ({number})"
    name = _STANDARD_OPTIONS.get(number)
    return f"{name} ({number})" if name is not None else str(number)


# ----------------------------------------------------------------------------- formats

#: CoAP Content-Format -> media type: RFC 7252 12.3 and TS-0008 table 6.2.2.2-1.
CONTENT_FORMATS: dict[int, str] = {
    0: "text/plain;charset=utf-8",
    41: "application/xml",
    42: "application/octet-stream",
    50: "application/json",
    60: "application/cbor",
    10001: "application/vnd.onem2m-res+json",
    10002: "application/vnd.onem2m-ntfy+xml",
    10003: "application/vnd.onem2m-ntfy+json",
    10006: "application/vnd.onem2m-preq+xml",
    10007: "application/vnd.onem2m-preq+json",
    10008: "application/vnd.onem2m-prsp+xml",
    10009: "application/vnd.onem2m-prsp+json",
    10010: "application/vnd.onem2m-res+cbor",
    10011: "application/vnd.onem2m-ntfy+cbor",
    10012: "application/vnd.onem2m-preq+cbor",
    10013: "application/vnd.onem2m-prsp+cbor",
    10014: "application/vnd.onem2m-res+xml",
}
_FORMAT_OF = {media.split(";")[0]: number for number, media in CONTENT_FORMATS.items()}
_FORMAT_OF["text/plain"] = 0
JSON_FORMAT = 50


def media_type_for(content_format: int) -> str | None:
    """The media type of a CoAP Content-Format number, or None if we do not know it."""
    return CONTENT_FORMATS.get(content_format)


def content_format_for(content_type: str | None) -> int | None:
    """The CoAP Content-Format of an HTTP Content-Type (parameters ignored), or None."""
    if not content_type:
        return None
    media = content_type.split(";")[0].strip().lower()
    return _FORMAT_OF.get(media)


# ----------------------------------------------------------------------------- codes

# TS-0008 table 6.2.4-1 (V3.9.0): Response Status Code -> CoAP response code.
_C = Code
_RSC_TO_COAP: dict[int, int] = {
    1001: _C.CREATED,
    1002: _C.CHANGED,
    2001: _C.CREATED,
    2002: _C.DELETED,
    2004: _C.CHANGED,
    4000: _C.BAD_REQUEST,
    4001: _C.NOT_IMPLEMENTED,
    4004: _C.NOT_FOUND,
    4005: _C.METHOD_NOT_ALLOWED,
    4008: _C.GATEWAY_TIMEOUT,
    4015: _C.UNSUPPORTED_CONTENT_FORMAT,
    **{rsc: _C.FORBIDDEN for rsc in (4101, 4103, 4105, 4106, 4107, 4108, 4109, 4111)},
    **{rsc: _C.FORBIDDEN for rsc in (4112, 4113, 4114, 4115, 4116, 4117, 4126, 4127, 4128)},
    **{rsc: _C.BAD_REQUEST for rsc in (4102, 4104, 4110, 4123, 4124, 4143)},
    **{rsc: _C.NOT_FOUND for rsc in (4118, 4119, 4121)},
    4120: _C.BAD_OPTION,
    4122: _C.BAD_OPTION,
    4125: _C.NOT_IMPLEMENTED,
    5000: _C.INTERNAL_SERVER_ERROR,
    5001: _C.NOT_IMPLEMENTED,
    5103: _C.NOT_FOUND,
    5105: _C.FORBIDDEN,
    5106: _C.BAD_REQUEST,
    5107: _C.NOT_FOUND,
    5203: _C.FORBIDDEN,
    5204: _C.INTERNAL_SERVER_ERROR,
    5205: _C.FORBIDDEN,
    5206: _C.NOT_IMPLEMENTED,
    5207: _C.NOT_ACCEPTABLE,
    5208: _C.FORBIDDEN,
    **{rsc: _C.INTERNAL_SERVER_ERROR for rsc in (5209, 5210, 5211, 5212, 5216, 5217, 5221)},
    **{rsc: _C.FORBIDDEN for rsc in (5214, 5215, 5218, 5222)},
    **{rsc: _C.BAD_REQUEST for rsc in (5219, 5220)},
    6003: _C.NOT_FOUND,
    6005: _C.NOT_FOUND,
    **{rsc: _C.BAD_REQUEST for rsc in (6010, 6022, 6023, 6024, 6028, 6029)},
    **{rsc: _C.INTERNAL_SERVER_ERROR for rsc in (6020, 6021, 6025, 6026)},
    6030: _C.GATEWAY_TIMEOUT,
    6031: _C.GATEWAY_TIMEOUT,
}

# For answers without a Response Status Code (a backend that is not a oneM2M CSE).
_HTTP_TO_COAP: dict[int, int] = {
    201: _C.CREATED,
    400: _C.BAD_REQUEST,
    401: _C.UNAUTHORIZED,
    403: _C.FORBIDDEN,
    404: _C.NOT_FOUND,
    405: _C.METHOD_NOT_ALLOWED,
    406: _C.NOT_ACCEPTABLE,
    409: _C.CONFLICT,
    412: _C.PRECONDITION_FAILED,
    413: _C.REQUEST_ENTITY_TOO_LARGE,
    415: _C.UNSUPPORTED_CONTENT_FORMAT,
    500: _C.INTERNAL_SERVER_ERROR,
    501: _C.NOT_IMPLEMENTED,
    502: _C.BAD_GATEWAY,
    503: _C.SERVICE_UNAVAILABLE,
    504: _C.GATEWAY_TIMEOUT,
}


def coap_code_for(rsc: int, operation: Operation | None = None) -> int:
    """The CoAP response code carrying ``rsc`` (TS-0008 table 6.2.4-1).

    2000 OK is 2.05 Content, except for NOTIFY (2.04 Changed). A code the table does not
    list maps by its class (2xxx 2.05, 4xxx 4.00, 5xxx and 6xxx 5.00).
    """
    if rsc == RSC.OK:
        return int(_C.CHANGED if operation is Operation.NOTIFY else _C.CONTENT)
    if rsc in _RSC_TO_COAP:
        return int(_RSC_TO_COAP[rsc])
    by_class = {1: _C.CHANGED, 2: _C.CONTENT, 4: _C.BAD_REQUEST}
    return int(by_class.get(rsc // 1000, _C.INTERNAL_SERVER_ERROR))


def coap_code_text(code: int) -> str:
    """``4.03 Forbidden`` for 131."""
    dotted = f"{code >> 5}.{code & 0x1F:02d}"
    try:
        name = Code(code).name.replace("_", " ").title()
    except ValueError:
        return dotted
    return f"{dotted} {name}"


# ----------------------------------------------------------------------------- codec


def decode(data: bytes) -> Message:
    """Decode one CoAP message (aiocoap's codec); raises :class:`CoapBindingError`."""
    try:
        return Message.decode(data)
    except Exception as exc:  # aiocoap raises several types on garbage (incl. UnicodeError)
        raise CoapBindingError(f"not a CoAP message: {type(exc).__name__}") from None


def encode(message: Message) -> bytes:
    data: bytes = message.encode()
    return data


def _new_message(code: int, payload: bytes = b"") -> Message:
    return Message(code=Code(code), payload=payload)


def _raw_options(message: Message) -> list[tuple[int, bytes]]:
    return [(int(o.number), bytes(o.encode())) for o in message.opt.option_list()]


def _uint(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _add_uint(message: Message, number: int, value: int) -> None:
    message.opt.add_option(UintOption(number, value))


def _add_opaque(message: Message, number: int, value: bytes) -> None:
    message.opt.add_option(OpaqueOption(number, value))


def _set_block(message: Message, number: int, num: int, more: bool, szx: int) -> None:
    value = BlockOption.BlockwiseTuple(num, more, szx)
    if number == _BLOCK2:
        message.opt.block2 = value
    else:
        message.opt.block1 = value


def _block(message: Message, number: int) -> tuple[int, bool, int] | None:
    value = message.opt.block2 if number == _BLOCK2 else message.opt.block1
    if value is None:
        return None
    return int(value.block_number), bool(value.more), int(value.size_exponent)


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class MappedRequest:
    """A CoAP request read as a oneM2M request primitive in HTTP-binding form.

    ``request`` is what the gateway's pipeline checks and forwards; ``numbering`` says
    which option numbers the device used, so the response can use the same.
    """

    request: OneM2MRequest
    numbering: Numbering
    accept: int | None = None


_METHODS = {int(Code.GET): "GET", int(Code.POST): "POST", int(Code.PUT): "PUT"}
_METHODS[int(Code.DELETE)] = "DELETE"
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_QUERY_SAFE = "!$'()*+,;=:@/?-._~"


def _text(value: bytes, what: str) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise CoapRequestError(Code.BAD_REQUEST, f"{what} is not UTF-8", RSC.BAD_REQUEST) from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise CoapRequestError(
            Code.BAD_REQUEST, f"{what} holds control characters", RSC.BAD_REQUEST
        )
    return text


def request_from_coap(message: Message, *, max_body: int | None = None) -> MappedRequest:
    """Map a CoAP request (TS-0008 6.2) to a oneM2M request in HTTP-binding form.

    Raises :class:`CoapRequestError` with the CoAP code (and RSC) to answer: 4.02 for an
    unrecognised critical option or an option too long (RFC 7252 5.4.1, 5.4.3), 4.05 for
    a method without a oneM2M operation, 4.15 for an unknown Content-Format, 4.06 for an
    unknown Accept, 5.05 for proxy requests, 4.00 for the rest.
    """
    code = int(message.code)
    method = _METHODS.get(code)
    if method is None:
        raise CoapRequestError(
            Code.METHOD_NOT_ALLOWED,
            f"CoAP method {coap_code_text(code)} maps to no oneM2M operation",
            RSC.OPERATION_NOT_ALLOWED,
        )
    params: dict[str, bytes] = {}
    numbering: Numbering | None = None
    path: list[bytes] = []
    query: list[bytes] = []
    seen: set[int] = set()
    content_format: int | None = None
    accept: int | None = None
    for number, value in _raw_options(message):
        if number in _BY_NUMBER:
            option, table = _BY_NUMBER[number]
            if len(value) > option.max_length:
                raise CoapRequestError(
                    Code.BAD_OPTION,
                    f"option {_option_name(number)} longer than {option.max_length} octets",
                    RSC.BAD_REQUEST,
                )
            if option.name in params:
                raise CoapRequestError(
                    Code.BAD_REQUEST,
                    f"oneM2M-{option.name.upper()} must appear at most once",
                    RSC.BAD_REQUEST,
                )
            params[option.name] = value
            if table is not None:
                if numbering is not None and numbering is not table:
                    raise CoapRequestError(
                        Code.BAD_REQUEST,
                        "oneM2M options of TS-0008 V3.7.0 and of earlier versions are mixed",
                        RSC.BAD_REQUEST,
                    )
                numbering = table
            continue
        if number in (_PROXY_URI, _PROXY_SCHEME):
            raise CoapRequestError(
                Code.PROXYING_NOT_SUPPORTED, "the gateway is not a forward proxy"
            )
        if number == _URI_PATH:
            path.append(value)
        elif number == _URI_QUERY:
            query.append(value)
        elif number in (_CONTENT_FORMAT, _ACCEPT):
            if number in seen:
                raise CoapRequestError(
                    Code.BAD_REQUEST, f"option {_option_name(number)} repeated", RSC.BAD_REQUEST
                )
            if number == _CONTENT_FORMAT:
                content_format = _uint(value)
            else:
                accept = _uint(value)
        elif number not in _UNDERSTOOD and number & 1:
            # RFC 7252 5.4.1: an unrecognised critical option is 4.02 (If-Match and
            # If-None-Match included: conditional requests are not relayed).
            raise CoapRequestError(
                Code.BAD_OPTION,
                f"unrecognised critical option {_option_name(number)}",
                RSC.BAD_REQUEST,
            )
        seen.add(number)

    segments = [_text(p, "Uri-Path") for p in path]
    if any(seg in (".", "..") for seg in segments):
        # RFC 7252 6.4 removes dot-segments before making Uri-Path options: these are forged.
        raise CoapRequestError(
            Code.BAD_REQUEST, "Uri-Path segments '.' and '..' are not allowed", RSC.BAD_REQUEST
        )
    target = "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in segments)
    if query:
        target += "?" + "&".join(quote(_text(q, "Uri-Query"), safe=_QUERY_SAFE) for q in query)

    headers: list[tuple[str, str]] = []
    values: dict[str, str] = {}
    for name, raw in params.items():
        option = _BY_NAME[name]
        if option.uint:
            values[name] = str(_uint(raw))
        else:
            values[name] = _text(raw, f"oneM2M-{name.upper()}")
        if option.header is not None and name != "rsc":
            headers.append((option.header.lower(), values[name]))

    ty: int | None = int(values["ty"]) if "ty" in values else None
    body = bytes(message.payload)
    if max_body is not None and len(body) > max_body:
        raise CoapRequestError(
            Code.REQUEST_ENTITY_TOO_LARGE,
            f"request payload larger than {max_body} octets",
            RSC.BAD_REQUEST,
        )
    content_type: str | None = None
    if content_format is not None:
        media = media_type_for(content_format)
        if media is None:
            raise CoapRequestError(
                Code.UNSUPPORTED_CONTENT_FORMAT,
                f"unknown Content-Format {content_format}",
                RSC.UNSUPPORTED_MEDIA_TYPE,
            )
        content_type = media
    elif body or ty is not None:
        content_type = "application/json"  # the oneM2M default serialization
    if content_type is not None:
        if ty is not None:
            content_type += f";ty={ty}"
        headers.append(("content-type", content_type))
    if accept is not None:
        media = media_type_for(accept)
        if media is None:
            raise CoapRequestError(
                Code.NOT_ACCEPTABLE,
                f"unknown Accept {accept}",
                5207,  # NOT_ACCEPTABLE
            )
        headers.append(("accept", media))
    elif content_format is not None:
        headers.append(("accept", CONTENT_FORMATS[content_format]))
    else:
        headers.append(("accept", "application/json"))

    request = OneM2MRequest(
        method=method,
        target=target,
        headers=tuple(headers),
        body=body,
        origin=values.get("fr"),
        request_id=values.get("rqi"),
        release_version=values.get("rvi"),
        content_type=content_type,
        resource_type=ty,
    )
    return MappedRequest(request, numbering or Numbering.CURRENT, accept)


def peek(message: Message) -> tuple[str | None, Numbering]:
    """The Request Identifier and option numbering of a request, as far as readable.

    For answers to requests that :func:`request_from_coap` refused.
    """
    request_id: str | None = None
    numbering = Numbering.CURRENT
    for number, value in _raw_options(message):
        if number in _BY_NUMBER:
            option, table = _BY_NUMBER[number]
            if table is Numbering.LEGACY:
                numbering = table
            if option.name == "rqi" and request_id is None:
                with contextlib.suppress(CoapRequestError):
                    request_id = _text(value, "oneM2M-RQI")
    return request_id, numbering


def _option_number(name: str, numbering: Numbering) -> int:
    option = _BY_NAME[name]
    if numbering is Numbering.LEGACY and option.legacy is not None:
        return option.legacy
    return option.number


def _add_param(message: Message, name: str, value: str, numbering: Numbering) -> None:
    option = _BY_NAME[name]
    number = _option_number(name, numbering)
    if option.uint:
        if not value.strip().isdigit():
            return  # not representable; the parameter is dropped rather than mangled
        _add_uint(message, number, int(value.strip()))
    else:
        _add_opaque(message, number, value.encode("utf-8"))


def _location_path(location: str) -> tuple[str, ...]:
    path = urlsplit(location).path if "://" in location else location.split("?")[0]
    return tuple(unquote(s) for s in path.strip("/").split("/") if s)


def response_to_coap(
    response: HttpResponse,
    *,
    operation: Operation | None = None,
    numbering: Numbering = Numbering.CURRENT,
    parameters: bool = True,
) -> Message:
    """Map an HTTP-binding oneM2M answer (from the backend or the gateway) to CoAP.

    ``parameters=False`` leaves out the oneM2M options (RSC, RQI, ...), for generic CoAP
    clients that reject unknown critical options. Type, Message ID and token are left to
    :class:`CoapServerSession`.
    """
    headers = {k.lower(): v for k, v in response.headers}
    rsc = response.rsc
    if rsc is not None:
        code = coap_code_for(rsc, operation)
    elif 200 <= response.status < 300:
        code = int(Code.CREATED if response.status == 201 else Code.CONTENT)
    else:
        code = int(_HTTP_TO_COAP.get(response.status, Code.BAD_GATEWAY))
    body = response.body
    if rsc == RSC.OK and operation is Operation.NOTIFY:
        body = b""  # TS-0008 table 6.2.4-1: empty payload for a NOTIFY's 2.04
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if body and encoding not in ("", "identity"):
        return error_message(
            Code.BAD_GATEWAY,
            "the CSE answered with a content coding CoAP cannot carry",
            rsc=RSC.INTERNAL_SERVER_ERROR,
            numbering=numbering,
            parameters=parameters,
        )
    message = _new_message(code, body)
    message.opt.max_age = 0  # TS-0008 6.4: no caching
    if body:
        fmt = content_format_for(headers.get("content-type"))
        if fmt is not None:  # an unknown media type goes without Content-Format
            message.opt.content_format = fmt
    location = headers.get("content-location") or headers.get("location")
    if location and code == Code.CREATED:
        message.opt.location_path = _location_path(location)
    for name in _RESPONSE_PARAMS if parameters else ():
        option = _BY_NAME[name]
        assert option.header is not None
        value = headers.get(option.header.lower())
        if (
            value is not None
            and (not option.uint or value.strip().isdigit())
            and len(value.encode()) <= option.max_length
        ):
            _add_param(message, name, value, numbering)
    return message


def error_message(
    code: int,
    reason: str,
    *,
    rsc: int | None = None,
    numbering: Numbering = Numbering.CURRENT,
    request_id: str | None = None,
    parameters: bool = True,
) -> Message:
    """An answer made by the gateway itself: ``code``, oneM2M-RSC if given, and the reason.

    With an RSC the payload is ``{"m2m:dbg": reason}`` as JSON (as over HTTP); without one
    it is a diagnostic payload (RFC 7252 5.5.2: UTF-8 text, no Content-Format).
    ``parameters=False`` leaves the oneM2M options out (see :func:`response_to_coap`).
    """
    if rsc is not None:
        message = _new_message(code, json.dumps({"m2m:dbg": reason}).encode())
        message.opt.content_format = JSON_FORMAT
        if parameters:
            _add_uint(message, _option_number("rsc", numbering), int(rsc))
        if parameters and request_id is not None and len(request_id.encode()) <= 255:
            _add_opaque(message, _option_number("rqi", numbering), request_id.encode())
    else:
        message = _new_message(code, reason.encode("utf-8")[:256])
    message.opt.max_age = 0
    return message


# ----------------------------------------------------------------------------- client side


def uri_path_for(target: str) -> tuple[str, ...]:
    """Uri-Path segments for a oneM2M To in HTTP form (TS-0008 6.2.2.3).

    ``/~/mn-cse/cb/ae`` (SP-relative) -> ``~, mn-cse, cb, ae``; ``/_/sp.com/cse/cb``
    (absolute) -> ``_, sp.com, cse, cb``; ``cb/ae`` or ``/cb/ae`` -> ``cb, ae``.
    Segments are percent-decoded.
    """
    path = target.split("?", 1)[0]
    if path.startswith("//"):  # absolute, as in the primitive
        path = "/_/" + path[2:]
    return tuple(unquote(s) for s in path.strip("/").split("/") if s)


def onem2m_request_message(
    method: str,
    target: str,
    *,
    origin: str | None,
    request_id: str,
    rvi: str | None = "3",
    ty: int | None = None,
    payload: bytes = b"",
    content_format: int | None = None,
    accept: int | None = JSON_FORMAT,
    numbering: Numbering = Numbering.CURRENT,
    extra: dict[str, str] | None = None,
    parameters: bool = True,
) -> Message:
    """A CoAP request for a oneM2M request primitive (TS-0008 6.2), without type/MID/token.

    ``target`` is the To in HTTP form (``/~/cse/cb?rcn=4``); its query becomes Uri-Query.
    ``extra`` adds other oneM2M parameters by short name (``{"rqet": "..."}``).
    ``parameters=False`` sends a plain CoAP request without oneM2M options (for generic
    CoAP servers, which refuse unknown critical options with 4.02).
    """
    codes = {"GET": Code.GET, "POST": Code.POST, "PUT": Code.PUT, "DELETE": Code.DELETE}
    if method.upper() not in codes:
        raise CoapBindingError(f"method {method!r} has no oneM2M operation in CoAP")
    message = _new_message(codes[method.upper()], payload)
    message.opt.uri_path = uri_path_for(target)
    if "?" in target:
        message.opt.uri_query = tuple(unquote(q) for q in target.split("?", 1)[1].split("&") if q)
    if payload or content_format is not None:
        message.opt.content_format = JSON_FORMAT if content_format is None else content_format
    if accept is not None:
        message.opt.accept = accept
    params: dict[str, str] = {"rqi": request_id}
    if origin is not None:
        params["fr"] = origin
    if rvi is not None:
        params["rvi"] = rvi
    if ty is not None:
        params["ty"] = str(ty)
    for name, value in (extra or {}).items():
        if name not in _BY_NAME or name == "rsc":
            raise CoapBindingError(f"unknown oneM2M request parameter {name!r}")
        params[name] = value
    for name, value in params.items() if parameters else ():
        _add_param(message, name, value, numbering)
    return message


@dataclass(slots=True)
class CoapOneM2MResponse:
    """A oneM2M response received over CoAP."""

    code: int
    rsc: int | None
    params: dict[str, str]
    content_format: int | None
    location: tuple[str, ...]
    payload: bytes = field(repr=False)

    @property
    def code_text(self) -> str:
        return coap_code_text(self.code)

    @property
    def request_id(self) -> str | None:
        return self.params.get("rqi")

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None


def _rsc_value(raw: bytes) -> int:
    # TS-0008 says uint; some CSEs have sent the decimal digits as a string.
    if len(raw) >= 4 and raw.isdigit():
        return int(raw)
    return _uint(raw)


def parse_response(message: Message, payload: bytes | None = None) -> CoapOneM2MResponse:
    """Read a CoAP response as a oneM2M response (either option numbering).

    ``payload`` replaces the message's (a reassembled block-wise answer).
    """
    params: dict[str, str] = {}
    rsc: int | None = None
    for number, value in _raw_options(message):
        if number not in _BY_NUMBER:
            continue
        option, _ = _BY_NUMBER[number]
        if option.name == "rsc":
            rsc = _rsc_value(value)
            params["rsc"] = str(rsc)
        elif option.uint:
            params[option.name] = str(_uint(value))
        else:
            params[option.name] = value.decode("utf-8", "replace")
    fmt = message.opt.content_format
    return CoapOneM2MResponse(
        code=int(message.code),
        rsc=rsc,
        params=params,
        content_format=None if fmt is None else int(fmt),
        location=tuple(message.opt.location_path),
        payload=bytes(message.payload) if payload is None else payload,
    )


# ----------------------------------------------------------------------------- message layer


@dataclass(slots=True, eq=False)
class Exchange:
    """One request the application has to answer (:meth:`CoapServerSession.respond`).

    ``message`` is the request (with the whole payload once Block1 blocks are joined).
    """

    message: Message
    mid: int
    token: bytes
    confirmable: bool
    key: bytes
    block1: tuple[int, bool, int] | None = None
    block2: tuple[int, bool, int] | None = None
    acknowledged: bool = False
    answered: bool = False


@dataclass(slots=True)
class _Seen:
    expires: float
    reply: bytes | None = None
    exchange: Exchange | None = None


@dataclass(slots=True)
class _Outgoing:
    data: bytes
    due: float
    timeout: float
    left: int


@dataclass(slots=True)
class _Blocks:
    """A block-wise answer in progress (Block2) or a request being joined (Block1)."""

    expires: float
    data: bytearray | bytes
    template: Message | None = None
    szx: int = _MAX_SZX
    next_num: int = 0
    etag: bytes = b""


class CoapServerSession:
    """The server side of the CoAP message layer for one peer (RFC 7252 4, RFC 7959).

    ``receive(datagram)`` returns ``(replies, exchange)``: datagrams to send now and, when
    a complete new request arrived, the :class:`Exchange` to answer. Answer it with
    :meth:`respond`; call :meth:`acknowledge` first if the answer will take a while (the
    request then gets an empty ACK and the answer goes as a separate CON). Run
    :meth:`on_timer` at :meth:`next_timer` for retransmissions.

    ``max_message`` is the largest CoAP message one datagram carries (for DTLS, the
    association's ``max_payload``); ``max_body`` bounds joined Block1 requests and the
    answers kept for Block2; ``parameters`` is as for :func:`response_to_coap` (for the
    few answers the session makes itself).
    """

    def __init__(
        self,
        *,
        max_message: int,
        max_body: int = 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        dedup_entries: int = DEDUP_ENTRIES,
        parameters: bool = True,
    ) -> None:
        if max_message < 64:
            raise ValueError("max_message is too small for CoAP")
        self.max_message = max_message
        self.max_body = max_body
        self.parameters = parameters
        self._clock = clock
        self._rng = rng or _RNG
        self._dedup_entries = dedup_entries
        self._next_mid = self._rng.randrange(0x10000)
        self._seen: OrderedDict[int, _Seen] = OrderedDict()
        self._seen_bytes = 0
        self._outgoing: dict[int, _Outgoing] = {}
        self._block2: OrderedDict[bytes, _Blocks] = OrderedDict()
        self._block1: OrderedDict[bytes, _Blocks] = OrderedDict()
        self.bad_messages = 0
        """Datagrams that were not CoAP (or not valid CoAP) and were dropped or reset."""

    # -- input ---------------------------------------------------------------------------
    def receive(self, data: bytes) -> tuple[list[bytes], Exchange | None]:
        now = self._clock()
        self._expire(now)
        try:
            message = decode(data)
        except CoapBindingError:
            self.bad_messages += 1
            return self._reject_unparsable(data), None
        mtype = message.mtype
        code = int(message.code)
        mid = int(message.mid)
        if mtype in (Type.ACK, Type.RST):
            # An answer to one of our separate CON responses (or noise: ignored).
            self._outgoing.pop(mid, None)
            return [], None
        if code == Code.EMPTY:
            # A CoAP ping (RFC 7252 4.3) gets a Reset; an empty NON is a format error.
            if mtype == Type.CON:
                return [self._empty(Type.RST, mid)], None
            self.bad_messages += 1
            return [], None
        if not 1 <= code < 32:
            # A response or a reserved class where a request was expected: reject.
            self.bad_messages += 1
            return ([self._empty(Type.RST, mid)] if mtype == Type.CON else []), None
        confirmable = mtype == Type.CON
        seen = self._seen.get(mid)
        if seen is not None:
            return self._duplicate(seen, confirmable), None
        entry = _Seen(now + (EXCHANGE_LIFETIME if confirmable else NON_LIFETIME))
        self._remember(mid, entry)
        return self._request(message, mid, confirmable, entry, now)

    def _reject_unparsable(self, data: bytes) -> list[bytes]:
        # RFC 7252 4.2/4.3: reject a CON we cannot parse with a Reset, if its MID is readable.
        if len(data) >= 4 and data[0] >> 6 == 1 and (data[0] >> 4) & 3 == 0:  # v1, CON
            return [self._empty(Type.RST, int.from_bytes(data[2:4], "big"))]
        return []

    def _duplicate(self, seen: _Seen, confirmable: bool) -> list[bytes]:
        if not confirmable:
            return []
        if seen.reply is not None:
            return [seen.reply]
        ex = seen.exchange
        if ex is not None and ex.confirmable and not ex.answered:
            # Still working on it: acknowledge now so the client stops retransmitting.
            ack = self.acknowledge(ex)
            return [ack] if ack else []
        return []

    def _request(
        self, message: Message, mid: int, confirmable: bool, entry: _Seen, now: float
    ) -> tuple[list[bytes], Exchange | None]:
        token = bytes(message.token)
        key = _request_key(message)
        try:
            block1 = _block(message, _BLOCK1)
            block2 = _block(message, _BLOCK2)
        except Exception:  # a Block option that aiocoap cannot read
            exchange = Exchange(message, mid, token, confirmable, key)
            entry.exchange = exchange
            reply = error_message(Code.BAD_OPTION, "malformed Block option")
            return self.respond(exchange, reply), None
        exchange = Exchange(message, mid, token, confirmable, key, block1, block2)
        entry.exchange = exchange
        if block1 is not None:
            joined = self._join_block1(exchange, block1, now)
            if joined is not None:
                return joined, None
        if block2 is not None and block2[0] > 0:
            transfer = self._block2.get(key)
            if transfer is not None:
                transfer.expires = now + BLOCK_LIFETIME
                return self._send_block(exchange, transfer, block2[0], block2[2]), None
            if int(message.code) != Code.GET:
                reply = error_message(
                    Code.REQUEST_ENTITY_INCOMPLETE,
                    "that block-wise answer is no longer held; ask again from block 0",
                )
                return self.respond(exchange, reply), None
            # A GET may simply be asked again: the application answers, we cut the block.
        return [], exchange

    def _join_block1(
        self, exchange: Exchange, block1: tuple[int, bool, int], now: float
    ) -> list[bytes] | None:
        num, more, szx = block1
        size = 16 << szx
        payload = bytes(exchange.message.payload)
        if szx > _MAX_SZX:
            return self.respond(exchange, error_message(Code.BAD_OPTION, "BERT is not supported"))
        if num == 0:
            announced = exchange.message.opt.size1
            if announced is not None and int(announced) > self.max_body:
                return self._too_large(exchange)
            self._block1.pop(exchange.key, None)
            partial = _Blocks(now + BLOCK_LIFETIME, bytearray(), szx=szx)
            self._block1[exchange.key] = partial
            while len(self._block1) > BLOCK_TRANSFERS:
                self._block1.popitem(last=False)
        partial_or_none = self._block1.get(exchange.key)
        if (
            partial_or_none is None
            or num != partial_or_none.next_num
            or (more and len(payload) != size)
        ):
            self._block1.pop(exchange.key, None)
            reply = error_message(
                Code.REQUEST_ENTITY_INCOMPLETE, "Block1 blocks missing or out of order"
            )
            return self.respond(exchange, reply)
        partial = partial_or_none
        assert isinstance(partial.data, bytearray)
        partial.data += payload
        partial.next_num += 1
        partial.expires = now + BLOCK_LIFETIME
        if len(partial.data) > self.max_body:
            self._block1.pop(exchange.key, None)
            return self._too_large(exchange)
        if more:
            reply = _new_message(Code.CONTINUE)
            _set_block(reply, _BLOCK1, num, True, szx)
            return self.respond(exchange, reply)
        del self._block1[exchange.key]
        exchange.message.payload = bytes(partial.data)
        return None  # complete: the application answers it

    def _too_large(self, exchange: Exchange) -> list[bytes]:
        reply = error_message(
            Code.REQUEST_ENTITY_TOO_LARGE,
            f"request larger than {self.max_body} octets",
            rsc=RSC.BAD_REQUEST,
            parameters=self.parameters,
        )
        reply.opt.size1 = self.max_body
        return self.respond(exchange, reply)

    # -- output --------------------------------------------------------------------------
    def acknowledge(self, exchange: Exchange) -> bytes | None:
        """An empty ACK for a CON request whose answer will come separately (RFC 7252 5.2.2)."""
        if not exchange.confirmable or exchange.acknowledged or exchange.answered:
            return None
        exchange.acknowledged = True
        ack = self._empty(Type.ACK, exchange.mid)
        seen = self._seen.get(exchange.mid)
        if seen is not None:
            self._keep(seen, ack)
        return ack

    def respond(self, exchange: Exchange, reply: Message) -> list[bytes]:
        """The datagrams answering ``exchange`` with ``reply`` (type, MID, token are set here).

        An answer that does not fit one message is sent block-wise (Block2).
        """
        if exchange.answered:
            return []
        payload = bytes(reply.payload)
        if exchange.block1 is not None and reply.opt.block1 is None and int(reply.code) >= 64:
            num, _, szx = exchange.block1
            _set_block(reply, _BLOCK1, num, False, szx)
        wanted = exchange.block2 if 64 <= int(reply.code) < 96 else None  # 2.xx only
        whole = self._fits(reply, payload) and (
            wanted is None or (wanted[0] == 0 and len(payload) <= 16 << wanted[2])
        )
        if whole or not payload:
            return self._send(exchange, reply)
        if len(payload) > self.max_body:
            return self._send(
                exchange,
                error_message(
                    Code.INTERNAL_SERVER_ERROR,
                    f"the answer is larger than the {self.max_body} octets relayed over CoAP",
                    rsc=RSC.INTERNAL_SERVER_ERROR,
                    parameters=self.parameters,
                ),
            )
        template = reply
        template.payload = b""
        fitting = self._block_szx(template, wanted[2] if wanted else _MAX_SZX, len(payload))
        if fitting is None:
            return self._send(
                exchange,
                error_message(Code.INTERNAL_SERVER_ERROR, "answer options exceed one datagram"),
            )
        szx = fitting
        etag = hashlib.sha256(payload).digest()[:4]
        transfer = _Blocks(self._clock() + BLOCK_LIFETIME, payload, template, szx, 0, etag)
        self._block2[exchange.key] = transfer
        while len(self._block2) > BLOCK_TRANSFERS:
            self._block2.popitem(last=False)
        num = wanted[0] if wanted else 0
        return self._send_block(exchange, transfer, num, wanted[2] if wanted else szx)

    def _send_block(self, exchange: Exchange, transfer: _Blocks, num: int, szx: int) -> list[bytes]:
        assert transfer.template is not None
        if szx > transfer.szx:  # RFC 7959 2.4: we picked smaller blocks; renumber
            num <<= szx - transfer.szx
            szx = transfer.szx
        size = 16 << szx
        data = bytes(transfer.data)
        start = num * size
        if start >= len(data) and not (num == 0 and not data):
            reply = error_message(Code.BAD_OPTION, f"block {num} is beyond the answer")
            return self._send(exchange, reply)
        part = data[start : start + size]
        more = start + size < len(data)
        reply = _copy(transfer.template, part)
        _set_block(reply, _BLOCK2, num, more, szx)
        reply.opt.etag = transfer.etag
        if num == 0:
            reply.opt.size2 = len(data)
        if not more:
            self._block2.pop(exchange.key, None)
        return self._send(exchange, reply)

    def _send(self, exchange: Exchange, reply: Message) -> list[bytes]:
        exchange.answered = True
        reply.token = exchange.token
        if exchange.confirmable and not exchange.acknowledged:
            reply.mtype = Type.ACK
            reply.mid = exchange.mid
            data = encode(reply)
            seen = self._seen.get(exchange.mid)
            if seen is not None:
                self._keep(seen, data)
            return [data]
        reply.mid = self._mid()
        if exchange.confirmable:  # separate response after an empty ACK: CON, retransmitted
            reply.mtype = Type.CON
            data = encode(reply)
            timeout = ACK_TIMEOUT * self._rng.uniform(1.0, ACK_RANDOM_FACTOR)
            self._outgoing[reply.mid] = _Outgoing(
                data, self._clock() + timeout, timeout, MAX_RETRANSMIT
            )
            return [data]
        reply.mtype = Type.NON
        return [encode(reply)]

    def _fits(self, reply: Message, payload: bytes) -> bool:
        probe = _copy(reply, payload)
        probe.mtype, probe.mid, probe.token = Type.ACK, 0, b"\0" * _TOKEN_MAX
        return len(encode(probe)) <= self.max_message

    def _block_szx(self, template: Message, wanted: int, total: int) -> int | None:
        probe = _copy(template, b"")
        probe.mtype, probe.mid, probe.token = Type.ACK, 0, b"\0" * _TOKEN_MAX
        _set_block(probe, _BLOCK2, 0xFFFFF, True, _MAX_SZX)
        probe.opt.etag = b"\0" * 4
        probe.opt.size2 = max(total, 1)
        room = self.max_message - len(encode(probe)) - 1  # payload marker
        for szx in range(min(wanted, _MAX_SZX), _MIN_SZX - 1, -1):
            if 16 << szx <= room:
                return szx
        return None

    # -- timers --------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """When :meth:`on_timer` is next due (this session's clock), or None.

        Due for a retransmission, or to forget remembered answers and block-wise state
        that expired (so an idle peer holds no more than it must).
        """
        due = [o.due for o in self._outgoing.values()]
        if self._seen:
            due.append(next(iter(self._seen.values())).expires)
        due += [b.expires for b in self._block1.values()]
        due += [b.expires for b in self._block2.values()]
        return min(due) if due else None

    def on_timer(self, now: float | None = None) -> list[bytes]:
        """Retransmit separate CON responses not acknowledged in time; forget expired state."""
        now = self._clock() if now is None else now
        self._expire(now)
        out: list[bytes] = []
        for mid, pending in list(self._outgoing.items()):
            if pending.due > now:
                continue
            if pending.left == 0:
                del self._outgoing[mid]  # RFC 7252 4.2: give up after MAX_RETRANSMIT
                continue
            pending.left -= 1
            pending.timeout *= 2
            pending.due = now + pending.timeout
            out.append(pending.data)
        return out

    @property
    def unacknowledged(self) -> int:
        """Separate CON responses still waiting for their ACK."""
        return len(self._outgoing)

    # -- internals -----------------------------------------------------------------------
    def _mid(self) -> int:
        mid = self._next_mid
        self._next_mid = (mid + 1) & 0xFFFF
        return mid

    def _empty(self, mtype: Type, mid: int) -> bytes:
        message = _new_message(Code.EMPTY)
        message.mtype = mtype
        message.mid = mid
        return encode(message)

    def _remember(self, mid: int, entry: _Seen) -> None:
        self._seen[mid] = entry
        while len(self._seen) > self._dedup_entries:
            self._forget_oldest()

    def _keep(self, seen: _Seen, reply: bytes) -> None:
        self._seen_bytes += len(reply) - len(seen.reply or b"")
        seen.reply = reply
        while self._seen_bytes > DEDUP_BYTES and len(self._seen) > 1:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, entry = self._seen.popitem(last=False)
        self._seen_bytes -= len(entry.reply or b"")

    def _expire(self, now: float) -> None:
        while self._seen:
            entry = next(iter(self._seen.values()))
            if entry.expires > now:
                break
            self._forget_oldest()
        for table in (self._block1, self._block2):
            for key in [k for k, v in table.items() if v.expires <= now]:
                del table[key]


def _copy(message: Message, payload: bytes) -> Message:
    out = _new_message(int(message.code), payload)
    for option in message.opt.option_list():
        out.opt.add_option(option)
    return out


def _request_key(message: Message) -> bytes:
    """What identifies "the same request" across blocks: method and options, less the
    block options (RFC 7959 2.4/2.5: the token may change from block to block)."""
    h = hashlib.sha256(bytes([int(message.code) & 0xFF]))
    for number, value in _raw_options(message):
        if number in _BLOCK_OPTIONS:
            continue
        h.update(number.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value)
    return h.digest()[:16]
