"""The oneM2M <-> CoAP mapping (TS-0008 6.2): request and response primitives as CoAP messages.

Sans-IO and stateless: :func:`request_from_coap` reads a CoAP request as a oneM2M request
in HTTP-binding form (what the gateway's pipeline checks and forwards), and
:func:`response_to_coap` turns the HTTP-binding answer into the CoAP response; the client
side builds requests with :func:`onem2m_request_message` and reads answers with
:func:`parse_response`. Options and the codec are in :mod:`m2msec.bindings.coap.options`.

**Request primitive -> CoAP request** (TS-0008 6.2). The Operation is the method (table
6.2.1-1: CREATE and NOTIFY are POST, told apart by the presence of the Resource Type);
To is the Uri-Path (6.2.2.3: a first segment ``~`` makes it SP-relative, ``_`` absolute);
filter criteria and the other short-name parameters travel in Uri-Query; the remaining
parameters are the oneM2M options of table 6.2.2.4.0-1, in either numbering; a response
uses the numbering its request used. A payload without Content-Format (6.2.2.2) is read
as JSON.

**Response primitive -> CoAP response** (6.2.4): the Response Status Code picks the CoAP
code by table 6.2.4-1 (2000 is 2.05 Content for RETRIEVE and 2.04 Changed with an empty
payload for NOTIFY) and always travels in the oneM2M-RSC option too, since several RSCs
share one CoAP code (4103, 4106 and 4107 are all 4.03). A created resource's address
becomes Location-Path options. Max-Age is 0 on every response (6.4: caching off, so the
CSE sees every request).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiocoap import Message
from aiocoap.numbers.codes import Code

from m2msec.bindings.coap.options import (
    ACCEPT,
    BY_NAME,
    BY_NUMBER,
    CONTENT_FORMAT,
    CONTENT_FORMATS,
    JSON_FORMAT,
    PROXY_SCHEME,
    PROXY_URI,
    UNDERSTOOD,
    URI_PATH,
    URI_QUERY,
    CoapBindingError,
    CoapRequestError,
    Numbering,
    add_opaque,
    add_uint,
    content_format_for,
    media_type_for,
    new_message,
    option_name,
    raw_options,
    read_uint,
)
from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest, Operation

__all__ = [
    "CoapOneM2MResponse",
    "MappedRequest",
    "coap_code_for",
    "coap_code_text",
    "error_message",
    "onem2m_request_message",
    "parse_response",
    "peek",
    "request_from_coap",
    "response_to_coap",
    "uri_path_for",
]

# Parameters of a response primitive worth relaying (request-only ones are not).
_RESPONSE_PARAMS = ("rsc", "rqi", "rvi", "ot", "rset", "ec", "cto", "cts", "ati", "vsi")


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
    for number, value in raw_options(message):
        if number in BY_NUMBER:
            option, table = BY_NUMBER[number]
            if len(value) > option.max_length:
                raise CoapRequestError(
                    Code.BAD_OPTION,
                    f"option {option_name(number)} longer than {option.max_length} octets",
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
        if number in (PROXY_URI, PROXY_SCHEME):
            raise CoapRequestError(
                Code.PROXYING_NOT_SUPPORTED, "the gateway is not a forward proxy"
            )
        if number == URI_PATH:
            path.append(value)
        elif number == URI_QUERY:
            query.append(value)
        elif number in (CONTENT_FORMAT, ACCEPT):
            if number in seen:
                raise CoapRequestError(
                    Code.BAD_REQUEST, f"option {option_name(number)} repeated", RSC.BAD_REQUEST
                )
            if number == CONTENT_FORMAT:
                content_format = read_uint(value)
            else:
                accept = read_uint(value)
        elif number not in UNDERSTOOD and number & 1:
            # RFC 7252 5.4.1: an unrecognised critical option is 4.02 (If-Match and
            # If-None-Match included: conditional requests are not relayed).
            raise CoapRequestError(
                Code.BAD_OPTION,
                f"unrecognised critical option {option_name(number)}",
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
        option = BY_NAME[name]
        if option.uint:
            values[name] = str(read_uint(raw))
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
    for number, value in raw_options(message):
        if number in BY_NUMBER:
            option, table = BY_NUMBER[number]
            if table is Numbering.LEGACY:
                numbering = table
            if option.name == "rqi" and request_id is None:
                with contextlib.suppress(CoapRequestError):
                    request_id = _text(value, "oneM2M-RQI")
    return request_id, numbering


def _option_number(name: str, numbering: Numbering) -> int:
    option = BY_NAME[name]
    if numbering is Numbering.LEGACY and option.legacy is not None:
        return option.legacy
    return option.number


def _add_param(message: Message, name: str, value: str, numbering: Numbering) -> None:
    option = BY_NAME[name]
    number = _option_number(name, numbering)
    if option.uint:
        if not value.strip().isdigit():
            return  # not representable; the parameter is dropped rather than mangled
        add_uint(message, number, int(value.strip()))
    else:
        add_opaque(message, number, value.encode("utf-8"))


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
    :class:`~m2msec.bindings.coap.messages.CoapServerSession`.
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
    message = new_message(code, body)
    message.opt.max_age = 0  # TS-0008 6.4: no caching
    if body:
        fmt = content_format_for(headers.get("content-type"))
        if fmt is not None:  # an unknown media type goes without Content-Format
            message.opt.content_format = fmt
    location = headers.get("content-location") or headers.get("location")
    if location and code == Code.CREATED:
        message.opt.location_path = _location_path(location)
    for name in _RESPONSE_PARAMS if parameters else ():
        option = BY_NAME[name]
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
        message = new_message(code, json.dumps({"m2m:dbg": reason}).encode())
        message.opt.content_format = JSON_FORMAT
        if parameters:
            add_uint(message, _option_number("rsc", numbering), int(rsc))
        if parameters and request_id is not None and len(request_id.encode()) <= 255:
            add_opaque(message, _option_number("rqi", numbering), request_id.encode())
    else:
        message = new_message(code, reason.encode("utf-8")[:256])
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
    message = new_message(codes[method.upper()], payload)
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
        if name not in BY_NAME or name == "rsc":
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
    return read_uint(raw)


def parse_response(message: Message, payload: bytes | None = None) -> CoapOneM2MResponse:
    """Read a CoAP response as a oneM2M response (either option numbering).

    ``payload`` replaces the message's (a reassembled block-wise answer).
    """
    params: dict[str, str] = {}
    rsc: int | None = None
    for number, value in raw_options(message):
        if number not in BY_NUMBER:
            continue
        option, _ = BY_NUMBER[number]
        if option.name == "rsc":
            rsc = _rsc_value(value)
            params["rsc"] = str(rsc)
        elif option.uint:
            params[option.name] = str(read_uint(value))
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
