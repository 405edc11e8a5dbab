"""CoAP options, Content-Formats and the message codec of the oneM2M CoAP binding.

**oneM2M options** (TS-0008 6.2.2.4, table 6.2.2.4.0-1): the parameters of a request or
response primitive that are neither the method, the Uri-Path nor the Uri-Query travel in
oneM2M options, whose numbers TS-0008 V3.7.0 changed for IANA registration (``CURRENT``,
as V3.9.0 and ACME use them). The numbers used before V3.7.0 (``LEGACY``: oneM2M-FR 256,
-RQI 257, -RQET 260, -RSET 261, -OET 262, -EC 264, -RSC 265, -GID 266) are known too.
Options whose legacy numbers we could not confirm (CTO, CTS, ATI, VSI, GTM, AUS, ASRI)
are known by their current numbers only. The RFC 7252 5.10 and RFC 7959 options the
binding reads are named here as well.

**Content formats** (TS-0008 6.2.2.2): the IANA numbers for text, XML, JSON and CBOR
(RFC 7252 12.3) and the oneM2M numbers of table 6.2.2.2-1
(``application/vnd.onem2m-res+json`` is 10001, and so on). TS-0008 warns they may
change; 10001 and 10002 collide with IANA's ``application/oscore`` and
``application/javascript``, and we follow TS-0008 as oneM2M devices do.

**Codec** (RFC 7252 3): messages are encoded and decoded by :class:`aiocoap.Message`
(no hand-written CoAP parsing); the helpers below read and add raw options on it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import BlockOption, OpaqueOption, UintOption

from m2msec.errors import M2MSecError

__all__ = [
    "CONTENT_FORMATS",
    "JSON_FORMAT",
    "ONEM2M_OPTIONS",
    "CoapBindingError",
    "CoapRequestError",
    "Numbering",
    "OneM2MOption",
    "content_format_for",
    "decode",
    "encode",
    "media_type_for",
]


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
BY_NAME = {o.name: o for o in ONEM2M_OPTIONS}
BY_NUMBER: dict[int, tuple[OneM2MOption, Numbering | None]] = {}
for _o in ONEM2M_OPTIONS:
    BY_NUMBER[_o.number] = (_o, None if _o.legacy == _o.number else Numbering.CURRENT)
    if _o.legacy is not None and _o.legacy != _o.number:
        BY_NUMBER[_o.legacy] = (_o, Numbering.LEGACY)

# RFC 7252 5.10 / RFC 7959 options the gateway understands (or may ignore) in a request.
URI_HOST, ETAG, OBSERVE, URI_PORT, URI_PATH = 3, 4, 6, 7, 11
CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT = 12, 14, 15, 17
BLOCK2, BLOCK1, SIZE2, PROXY_URI, PROXY_SCHEME, SIZE1 = 23, 27, 28, 35, 39, 60
IF_MATCH, IF_NONE_MATCH, NO_RESPONSE = 1, 5, 258
UNDERSTOOD = frozenset(
    {URI_HOST, URI_PORT, URI_PATH, CONTENT_FORMAT, URI_QUERY, ACCEPT}
    | {BLOCK2, BLOCK1, SIZE2, SIZE1}
)
BLOCK_OPTIONS = frozenset({BLOCK1, BLOCK2, SIZE1, SIZE2})


_STANDARD_OPTIONS = {int(o): str(o.name) for o in OptionNumber}  # registered, by aiocoap


def option_name(number: int) -> str:
    if number in BY_NUMBER:
        return f"oneM2M-{BY_NUMBER[number][0].name.upper()} ({number})"
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


def new_message(code: int, payload: bytes = b"") -> Message:
    return Message(code=Code(code), payload=payload)


def raw_options(message: Message) -> list[tuple[int, bytes]]:
    return [(int(o.number), bytes(o.encode())) for o in message.opt.option_list()]


def read_uint(value: bytes) -> int:
    return int.from_bytes(value, "big")


def add_uint(message: Message, number: int, value: int) -> None:
    message.opt.add_option(UintOption(number, value))


def add_opaque(message: Message, number: int, value: bytes) -> None:
    message.opt.add_option(OpaqueOption(number, value))


def set_block(message: Message, number: int, num: int, more: bool, szx: int) -> None:
    value = BlockOption.BlockwiseTuple(num, more, szx)
    if number == BLOCK2:
        message.opt.block2 = value
    else:
        message.opt.block1 = value


def get_block(message: Message, number: int) -> tuple[int, bool, int] | None:
    value = message.opt.block2 if number == BLOCK2 else message.opt.block1
    if value is None:
        return None
    return int(value.block_number), bool(value.more), int(value.size_exponent)

def copy_message(message: Message, payload: bytes, *, blocks: bool = True) -> Message:
    """A new message with ``message``'s code and options and ``payload``.

    ``blocks=False`` leaves out Block1, Block2, Size1 and Size2, which are set per block.
    """
    out = new_message(int(message.code), payload)
    for option in message.opt.option_list():
        if blocks or int(option.number) not in BLOCK_OPTIONS:
            out.opt.add_option(option)
    return out

