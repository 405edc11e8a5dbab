"""The peer patterns of the initiator's credentials table (:mod:`m2msec.config.credentials`;
TR-0038 7.1.2): an entry's key, what it matches and how specifically.

A key is a URL pattern ``SCHEME://HOST[:PORT][/*]`` (``https``/``coaps`` that scheme only,
``tls``/``dtls`` its transport; ``HOST`` exact, ``*.domain`` or ``*``; ``PORT`` a number,
``*``, or absent for the scheme's default), the peer's IdB (CSE-ID or AE-ID), or ``*``.
:meth:`PeerPattern.rank` orders the matches as the table's module docstring says; two
patterns with the same :attr:`PeerPattern.identity` name the same peers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import CseId, check_fqdn, parse_entity_id

__all__ = ["DEFAULT_PORTS", "PeerPattern", "peer_key"]

#: The default port of each URL scheme a pattern may name.
DEFAULT_PORTS: Final = {"https": 443, "tls": 443, "coaps": 5684, "dtls": 5684}


@dataclass(frozen=True, slots=True)
class PeerPattern:
    """An entry's key: a URL pattern, a peer identity (IdB) or ``*`` (module docstring)."""

    text: str
    #: The schemes it matches (empty for an IdB entry; every one for ``*``).
    schemes: frozenset[str] = frozenset()
    #: 0 it names the URL's scheme, 1 its transport, 2 any.
    scheme_rank: Literal[0, 1, 2] = 0
    #: The exact host (lower case), or None for a wildcard.
    host: str | None = None
    #: ``*.home.arpa`` -> ``.home.arpa``; "" for ``*``; None for an exact host.
    suffix: str | None = None
    #: None: any port.
    port: int | None = None
    #: The IdB of an entry keyed by it, as :func:`peer_key` compares it.
    entity: tuple[str, ...] | None = None

    @property
    def identity(self) -> tuple[object, ...]:
        """What two patterns share when they name the same peers."""
        return (self.schemes, self.host, self.suffix, self.port, self.entity)

    @classmethod
    def parse(cls, text: str) -> PeerPattern:
        """Parse an entry key; ConfigurationError says what is wrong with it."""
        if text == "*":
            return cls(text, frozenset(DEFAULT_PORTS), 2, suffix="")
        if "://" not in text:
            if not text.startswith(("/", "C", "S")):
                raise ConfigurationError(
                    "write a URL pattern (https://HOST:PORT, coaps://HOST:PORT/*, "
                    "tls://*.domain:*), '*', or the peer's CSE-ID or AE-ID (/mn-cse-123456)"
                )
            try:
                return cls(text, entity=peer_key(text))
            except IdentifierError as exc:
                raise ConfigurationError(str(exc)) from None
        scheme, _, rest = text.partition("://")
        scheme = scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ConfigurationError(f"scheme {scheme}:// is not one of https, coaps, tls, dtls")
        netloc, slash, path = rest.partition("/")
        if slash and path not in ("", "*"):
            raise ConfigurationError(
                "a credential belongs to a peer, not to a resource: no path, or /*"
            )
        host, port = _host_port(netloc, scheme)
        schemes = frozenset({scheme}) if scheme in ("https", "coaps") else frozenset(
            {scheme, "https" if scheme == "tls" else "coaps"}
        )  # fmt: skip
        rank: Literal[0, 1] = 0 if scheme in ("https", "coaps") else 1
        if host == "*":
            return cls(text, schemes, rank, suffix="", port=port)
        if host.startswith("*."):
            try:
                check_fqdn(host[2:], "host wildcard")
            except IdentifierError as exc:
                raise ConfigurationError(str(exc)) from None
            return cls(text, schemes, rank, suffix=host[1:], port=port)
        if "*" in host:
            raise ConfigurationError("a host wildcard is '*' or '*.domain'")
        return cls(text, schemes, rank, host=host, port=port)

    def rank(
        self, scheme: str, host: str, port: int, entity: tuple[str, ...] | None
    ) -> tuple[int, int, int, int] | None:
        """How specifically this pattern matches the peer (lower is more specific), or
        None when it does not match."""
        if self.entity is not None:
            return (1, 0, 0, 0) if entity is not None and entity == self.entity else None
        if scheme not in self.schemes or (self.port is not None and self.port != port):
            return None
        any_port = int(self.port is None)
        if self.host is not None:
            if self.host != host:
                return None
            return (2 if any_port else 0, 0, 0, self.scheme_rank)
        assert self.suffix is not None
        if self.suffix == "":
            return (4, any_port, int(self.text == "*"), self.scheme_rank)
        if not host.endswith(self.suffix):
            return None
        return (3, -len(self.suffix), any_port, self.scheme_rank)


def peer_key(id_b: str) -> tuple[str, ...]:
    """What IdBs compare by: the CSE-ID, or the AE-ID-Stem with its registrar, case
    as given; an M2M-SP FQDN of the absolute form is left out (a table serves one SP), so
    ``/mn-cse-1`` and ``//in.provider.com/mn-cse-1`` are the same peer. IdentifierError
    for what is not a CSE-ID or AE-ID."""
    entity = parse_entity_id(id_b)
    if isinstance(entity, CseId):
        return ("cse", entity.relative)
    return ("ae", entity.stem, entity.cse or "")


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None]:
    """Host (lower case, IPv6 without brackets) and port (None: any) of a pattern."""
    if "@" in netloc:
        raise ConfigurationError("no user information in a peer pattern")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ConfigurationError("unclosed '[' in an IPv6 address")
        host, rest = netloc[1:end], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigurationError("expected ':PORT' after the IPv6 address")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = netloc.partition(":")
        port_text = port_text_ if colon else None
    if not host:
        raise ConfigurationError("no host (write * for any host)")
    if port_text is None:
        return host.lower(), DEFAULT_PORTS[scheme]
    if port_text == "*":
        return host.lower(), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"port {port_text!r} is not 1-65535 or *")
    return host.lower(), int(port_text)
