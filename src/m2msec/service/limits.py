"""The limits one HTTP connection runs under, server or client role, in one place.

The servers (gateway, MAF, BSF) build one :class:`HttpLimits` from their configuration
(``[gateway]`` ``max_body`` / ``request_head_timeout`` / ``idle_timeout``, the MAF's and the
BSF's own ``idle_timeout`` / ``max_body``); the clients take one with a body cap. A request
head must be complete within ``request_head_timeout`` of its first byte (a slow-loris head is
answered 408 and closed), a keep-alive connection may idle ``idle_timeout`` between requests.

The CoAP client's limits sit beside them: :class:`CoapLimits` (RFC 7252 4.8 transmission
parameters and the largest block-wise answer it joins, RFC 7959).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from m2msec.bindings.coap.messages import ACK_TIMEOUT, MAX_RETRANSMIT
from m2msec.bindings.http import DEFAULT_MAX_BODY, DEFAULT_MAX_HEADER

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_ANSWER",
    "DEFAULT_REQUEST_HEAD_TIMEOUT",
    "CoapLimits",
    "HttpLimits",
]

#: Seconds from a request head's first byte to its end (else 408 and close).
DEFAULT_REQUEST_HEAD_TIMEOUT = 10.0
#: Seconds a keep-alive connection may idle between requests.
DEFAULT_IDLE_TIMEOUT = 120.0
#: Largest block-wise answer the CoAP client joins (a CSE answer this large is a mistake).
DEFAULT_MAX_ANSWER = 16 * 1024 * 1024


class _ServerConfig(Protocol):
    @property
    def max_body(self) -> int: ...

    @property
    def request_head_timeout(self) -> float: ...

    @property
    def idle_timeout(self) -> float: ...


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Header and body caps, head deadline, idle timeout and requests per connection."""

    max_header: int = DEFAULT_MAX_HEADER
    max_body: int = DEFAULT_MAX_BODY
    request_head_timeout: float = DEFAULT_REQUEST_HEAD_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_requests: int | None = None  # per connection; None: unbounded

    def __post_init__(self) -> None:
        if self.max_header <= 0 or self.max_body < 0:
            raise ValueError("size limits must be positive")
        if self.request_head_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError("max_requests must be >= 1")

    @classmethod
    def of(cls, config: _ServerConfig) -> HttpLimits:
        """The limits a server configuration sets (``[gateway]``, the MAF's)."""
        return cls(
            max_body=config.max_body,
            request_head_timeout=config.request_head_timeout,
            idle_timeout=config.idle_timeout,
        )


@dataclass(frozen=True, slots=True)
class CoapLimits:
    """The CoAP client's retransmission parameters (RFC 7252 4.8) and answer cap."""

    ack_timeout: float = ACK_TIMEOUT
    max_retransmit: int = MAX_RETRANSMIT
    max_answer: int = DEFAULT_MAX_ANSWER

    def __post_init__(self) -> None:
        if self.ack_timeout <= 0 or self.max_retransmit < 0 or self.max_answer < 0:
            raise ValueError("CoAP limits must be positive")
