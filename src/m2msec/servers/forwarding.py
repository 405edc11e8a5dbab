"""What the gateway changes in the headers it relays between a peer and the backend CSE.

Forwarded requests lose any incoming ``X-M2MSec-*`` header and gain the association's
identity: ``X-M2MSec-Peer-ID`` (the bound identity, normalised; for an AE its Absolute
AE-ID when the CSE-ID carries the M2M-SP's FQDN), ``X-M2MSec-Peer-Kind``,
``X-M2MSec-Framework``, ``X-M2MSec-Key-ID`` (KpsaId or certificate fingerprint, never a
key), ``X-M2MSec-SA-ID`` and, for Credential-ID bound peers, ``X-M2MSec-Credential-ID``.
Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded either way. The egress
(:mod:`m2msec.servers.egress`) relays the CSE's own requests upstream with
:func:`relayed_headers`: hop-by-hop and ``X-M2MSec-*`` removed, nothing added (the upstream
peer learns who we are from the security association).
"""

from __future__ import annotations

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
) -> list[tuple[str, str]]:
    """The request headers for the backend: hop-by-hop and ``X-M2MSec-*`` removed, From set,
    the association's identity added."""
    dropped = set(_HOP_BY_HOP) | _connection_tokens(request.headers)
    headers = [
        (name, value)
        for name, value in request.headers
        if name not in dropped and not name.startswith(_OURS) and name != "x-m2m-origin"
    ]
    if origin is not None:
        headers.append(("X-M2M-Origin", origin))
    ctx = assoc.context
    headers.append(("X-M2MSec-Peer-ID", assoc.absolute_id))
    headers.append(("X-M2MSec-Peer-Kind", assoc.kind.value))
    headers.append(("X-M2MSec-Framework", ctx.framework.value))
    if ctx.key_id:
        headers.append(("X-M2MSec-Key-ID", ctx.key_id))
    headers.append(("X-M2MSec-SA-ID", ctx.sa_id))
    if assoc.credential_id:
        headers.append(("X-M2MSec-Credential-ID", assoc.credential_id))
    return headers


def relayed_headers(request: OneM2MRequest) -> list[tuple[str, str]]:
    """The request headers as they go on: hop-by-hop fields and ``X-M2MSec-*`` removed."""
    dropped = set(_HOP_BY_HOP) | _connection_tokens(request.headers)
    return [
        (name, value)
        for name, value in request.headers
        if name not in dropped and not name.startswith(_OURS)
    ]


def response_headers(raw: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """The backend's response headers minus hop-by-hop fields (h11 reframes the body)."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    lowered = tuple((k.lower(), v) for k, v in headers)
    dropped = set(_HOP_BY_HOP) | _connection_tokens(lowered)
    return tuple((k, v) for k, v in headers if k.lower() not in dropped)


def _connection_tokens(headers: tuple[tuple[str, str], ...]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens
