"""DTLS 1.2 records and datagrams (RFC 6347 4.1, 4.2.1): pure parsers and builders.

A UDP datagram carries one or more whole records [4.1.1]; :func:`split_records` and
:func:`pack_datagrams` cut OpenSSL's output on record boundaries and pack it into
datagrams within the MTU. The rest reads an epoch-0 ClientHello far enough to find its
cookie, and writes the HelloVerifyRequest answering it [4.2.1], so that
:class:`~m2msec.tls.dtls.server.DTLSServer` can answer an unverified address without
OpenSSL. Nothing here keeps state or raises on garbage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

__all__ = [
    "RECORD_HEADER_LEN",
    "Address",
    "Clock",
    "client_hello_cookie",
    "format_address",
    "hello_verify_request",
    "is_client_hello",
    "is_hello_verify_request",
    "pack_datagrams",
    "record_seq",
    "split_records",
]

Address: TypeAlias = tuple[Any, ...]
"""A UDP peer address as asyncio reports it: ``(host, port)`` or ``(host, port, flow, scope)``."""

Clock: TypeAlias = Callable[[], float]


def format_address(addr: Any) -> str:
    """``host:port`` of a UDP address, for logs and errors."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


RECORD_HEADER_LEN = 13
_CT_HANDSHAKE = 22
_HT_CLIENT_HELLO = 1
_HT_HELLO_VERIFY_REQUEST = 3


def split_records(data: bytes) -> list[bytes]:
    """Split concatenated DTLS records (header: type, version, epoch, seq, 2-octet length)."""
    records: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < RECORD_HEADER_LEN:
            records.append(data[pos:])  # malformed tail: keep it whole rather than lose it
            break
        end = pos + RECORD_HEADER_LEN + int.from_bytes(data[pos + 11 : pos + 13], "big")
        records.append(data[pos:end])
        pos = end
    return records


def pack_datagrams(records: list[bytes], mtu: int) -> list[bytes]:
    """Pack records, in order and never split, into datagrams of at most ``mtu`` octets.

    A single record larger than ``mtu`` travels alone (the engine prevents that case).
    """
    out: list[bytes] = []
    current = bytearray()
    for record in records:
        if current and len(current) + len(record) > mtu:
            out.append(bytes(current))
            current.clear()
        current += record
    if current:
        out.append(bytes(current))
    return out


def is_client_hello(datagram: bytes) -> bool:
    """Whether ``datagram`` starts with an epoch-0 handshake record holding a ClientHello."""
    return (
        len(datagram) >= RECORD_HEADER_LEN + 12
        and datagram[0] == _CT_HANDSHAKE
        and datagram[1] == 0xFE  # DTLS major version (1's complement of 1)
        and datagram[3:5] == b"\0\0"
        and datagram[RECORD_HEADER_LEN] == _HT_CLIENT_HELLO
    )


def record_seq(record: bytes) -> int:
    """The 48-bit sequence number of the record at the start of ``record``."""
    return int.from_bytes(record[5:11], "big")


def is_hello_verify_request(datagram: bytes) -> bool:
    """Whether ``datagram`` starts with a HelloVerifyRequest (for tests and tracing)."""
    return (
        len(datagram) > RECORD_HEADER_LEN
        and datagram[0] == _CT_HANDSHAKE
        and datagram[RECORD_HEADER_LEN] == _HT_HELLO_VERIFY_REQUEST
    )


def client_hello_cookie(datagram: bytes) -> bytes | None:
    """The cookie of the unfragmented ClientHello starting ``datagram`` (``b""``: none).

    None when the datagram is not such a ClientHello, or is malformed: then OpenSSL's own
    parser decides. Pure parser, never raises.
    """
    if not is_client_hello(datagram):
        return None
    h = RECORD_HEADER_LEN
    record_len = int.from_bytes(datagram[11:13], "big")
    msg_len = int.from_bytes(datagram[h + 1 : h + 4], "big")
    frag_off = int.from_bytes(datagram[h + 6 : h + 9], "big")
    frag_len = int.from_bytes(datagram[h + 9 : h + 12], "big")
    if frag_off or frag_len != msg_len or record_len < 12 + frag_len:
        return None
    body = datagram[h + 12 : h + 12 + frag_len]
    if len(body) != frag_len or len(body) < 2 + 32 + 1 or body[0] != 0xFE:
        return None
    pos = 34
    if body[pos] > 32:
        return None
    pos += 1 + body[pos]
    if pos >= len(body):
        return None
    cookie = body[pos + 1 : pos + 1 + body[pos]]
    pos += 1 + body[pos]
    if len(cookie) != body[pos - len(cookie) - 1] or pos + 2 > len(body):
        return None
    suites = int.from_bytes(body[pos : pos + 2], "big")
    pos += 2 + suites
    if suites < 2 or suites % 2 or pos >= len(body) or pos + 1 + body[pos] > len(body):
        return None
    return bytes(cookie)


def hello_verify_request(client_hello: bytes, cookie: bytes) -> bytes:
    """The HelloVerifyRequest answering ``client_hello`` with ``cookie`` (RFC 6347 4.2.1).

    As OpenSSL's ``DTLSv1_listen`` writes it: DTLS 1.0 version numbers (RFC 6347 4.2.1
    recommends them for this message), message_seq 0, and the record sequence number of
    the ClientHello it answers.
    """
    body = b"\xfe\xff" + bytes([len(cookie)]) + cookie
    n = len(body).to_bytes(3, "big")
    message = bytes([_HT_HELLO_VERIFY_REQUEST]) + n + b"\0\0" + b"\0\0\0" + n + body
    header = bytes([_CT_HANDSHAKE]) + b"\xfe\xff\0\0" + client_hello[5:11]
    return header + len(message).to_bytes(2, "big") + message
