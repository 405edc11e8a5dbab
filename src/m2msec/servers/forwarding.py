"""What the gateway changes in the headers it relays between a peer and the backend CSE.

Forwarded requests lose any incoming ``X-M2MSec-*`` header and gain the association's
identity: ``X-M2MSec-Peer-ID`` (the bound identity, normalised; for an AE its Absolute
AE-ID when the CSE-ID carries the M2M-SP's FQDN), ``X-M2MSec-Peer-Kind``,
``X-M2MSec-Framework``, ``X-M2MSec-Key-ID`` (KpsaId or certificate fingerprint, never a
key), ``X-M2MSec-SA-ID`` and, for Credential-ID bound peers, ``X-M2MSec-Credential-ID``.
``X-M2M-Origin`` is replaced by the From the rules decided. Hop-by-hop headers
(RFC 9110 7.6.1, and those a ``Connection`` header names) are not forwarded either way.

Two ways to the same headers (issue 13 item 1, "rewrite only the headers the rules touch"):

* **raw path** - when the request came through the HTTP binding
  (:class:`~m2msec.bindings.http.HttpRequest` whose ``raw_headers`` still describe its
  ``headers``: ``raw_current``, nobody replaced them since llhttp parsed them), the lines are
  passed on as the octets that arrived, original case, one ``b"".join``, minus the lines
  dropped above; only the lines this module adds are written, and they are checked as one
  block (:func:`~m2msec.bindings.http.valid_header_block`). The result is a
  :class:`~m2msec.bindings.http_client.HeaderLines`, which the backend pool sends without
  encoding or checking the lines again. This is safe because llhttp has already refused
  every header line HTTP/1.1 cannot carry (token names, no CR/LF/NUL/controls in values,
  no obs-fold), and the pool still writes the request line, ``Host`` and
  ``Content-Length`` itself.
* **full path** - any other request (one the CoAP binding mapped, one built in code or
  whose headers were replaced): a list of ``(name, value)`` pairs that the backend pool
  encodes and checks as HTTP/1.1 (:func:`~m2msec.bindings.http_client.prepare_request`).

Both give the same names and values in the same order; only the case of passed-on names
differs (the raw path keeps the sender's case).

The egress (:mod:`m2msec.servers.egress`) relays the CSE's own requests upstream with
:func:`relayed_headers`: hop-by-hop and ``X-M2MSec-*`` removed, nothing added (the upstream
peer learns who we are from the security association).
"""

from __future__ import annotations

from collections.abc import Sequence

from m2msec.bindings.http import HttpRequest, valid_header_block
from m2msec.bindings.http_client import HeaderLines
from m2msec.bindings.messages import OneM2MRequest
from m2msec.servers.association import Association

__all__ = ["forwarded_headers", "relayed_headers", "response_headers"]

# RFC 9110 7.6.1 hop-by-hop fields, plus framing and Host, which the next hop sets.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "expect",  # 100-continue was answered here; the backend gets the whole body
    }
)
_OURS = "x-m2msec-"


def forwarded_headers(
    request: OneM2MRequest, assoc: Association, origin: str | None
) -> Sequence[tuple[str, str]]:
    """The request headers for the backend: hop-by-hop and ``X-M2MSec-*`` removed, From set,
    the association's identity added (a :class:`HeaderLines` on the raw path)."""
    added = _identity(assoc, origin)
    if isinstance(request, HttpRequest) and request.raw_current:
        wire = _raw_lines(request, added)
        if wire is not None:
            return HeaderLines(wire)
    dropped = _HOP_BY_HOP | _connection_tokens(request.headers)
    headers = [
        (name, value)
        for name, value in request.headers
        if name not in dropped and not name.startswith(_OURS) and name != "x-m2m-origin"
    ]
    headers += added
    return headers


def relayed_headers(request: OneM2MRequest) -> list[tuple[str, str]]:
    """The request headers as they go on: hop-by-hop fields and ``X-M2MSec-*`` removed."""
    dropped = set(_HOP_BY_HOP) | _connection_tokens(request.headers)
    return [
        (name, value)
        for name, value in request.headers
        if name not in dropped and not name.startswith(_OURS)
    ]


def _identity(assoc: Association, origin: str | None) -> list[tuple[str, str]]:
    added = []
    if origin is not None:
        added.append(("X-M2M-Origin", origin))
    ctx = assoc.context
    added.append(("X-M2MSec-Peer-ID", assoc.absolute_id))
    added.append(("X-M2MSec-Peer-Kind", assoc.kind.value))
    added.append(("X-M2MSec-Framework", ctx.framework.value))
    if ctx.key_id:
        added.append(("X-M2MSec-Key-ID", ctx.key_id))
    added.append(("X-M2MSec-SA-ID", ctx.sa_id))
    if assoc.credential_id:
        added.append(("X-M2MSec-Credential-ID", assoc.credential_id))
    return added


def _raw_lines(request: HttpRequest, added: list[tuple[str, str]]) -> bytes | None:
    """The raw path's header lines, or None when the full path must be taken."""
    try:
        tail = b"".join(
            b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in added
        )
    except UnicodeError:
        return None  # the full path refuses it with its own error
    if not valid_header_block(tail, len(added)):
        return None
    dropped = _HOP_BY_HOP | _connection_tokens(request.headers)
    lines = []
    for (name, _), (raw_name, raw_value) in zip(request.headers, request.raw_headers, strict=True):
        if name in dropped or name.startswith(_OURS) or name == "x-m2m-origin":
            continue
        lines.append(b"%s: %s\r\n" % (raw_name, raw_value))
    lines.append(tail)
    return b"".join(lines)


def response_headers(raw: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """The backend's response headers minus hop-by-hop fields (the binding reframes the body)."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    lowered = tuple((k.lower(), v) for k, v in headers)
    dropped = _HOP_BY_HOP | _connection_tokens(lowered)
    pairs = zip(headers, lowered, strict=True)
    return tuple((k, v) for (k, v), (low, _) in pairs if low not in dropped)


def _connection_tokens(headers: Sequence[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens
