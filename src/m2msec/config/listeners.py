"""The gateway's listener and backend URLs (``[gateway] listen``, ``backend``).

Listener URLs: ``tls://HOST:PORT`` terminates TLS with the configured framework and
forwards; ``dtls://HOST:PORT`` (UDP, CoAP's 5684 by convention) terminates DTLS 1.2 with
the same framework, psk-lookup-table and CA and forwards CoAP requests (TS-0008) the same
way; ``http://HOST:PORT`` is plain and answers every request 4107
SECURITY_ASSOCIATION_REQUIRED itself. When both ``[psk]`` and ``[certificates]`` are
configured, each ``tls://`` or ``dtls://`` listener names its framework: ``?framework=psk`` or
``?framework=certificate`` (one listener per framework; a PeerBinding does not carry its
framework, so one OpenSSL context cannot yet report which of the two a session used).

``egress://HOST:PORT?upstream=https://PEER:PORT`` (the gateway only, ``egress=True``) is
the other direction: plain HTTP from the CSE behind the gateway, relayed to the upstream
peer over a security association the gateway establishes as Entity A
(:mod:`m2msec.config.egress`, docs/gateway.md "Egress").

The backend is the CSE's ``http://`` or ``https://`` URL (TS-0009 binding).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from m2msec.config.values import invalid, is_ip
from m2msec.errors import IdentifierError
from m2msec.ids import check_fqdn

__all__ = [
    "FRAMEWORKS",
    "FrameworkName",
    "ListenerSpec",
    "parse_backend_url",
    "parse_listen_url",
    "parse_service_url",
    "split_url",
]

FrameworkName = Literal["psk", "certificate", "gba", "maf", "mef"]
FRAMEWORKS: tuple[FrameworkName, ...] = ("psk", "certificate", "gba", "maf", "mef")


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One ``listen`` URL: ``tls://`` or ``dtls://HOST:PORT[?framework=...]``, ``http://``,
    or ``egress://HOST:PORT?upstream=URL`` (``upstream`` set for those only)."""

    url: str
    scheme: Literal["tls", "dtls", "http", "egress"]
    host: str
    port: int
    framework: FrameworkName | None = None
    upstream: str | None = None

    @property
    def secure(self) -> bool:
        return self.scheme in ("tls", "dtls")


def split_url(value: object, key: str, missing: str) -> tuple[str, SplitResult, int | None]:
    """``value`` as a URL string, its parts and port; ``missing`` says what was expected."""
    if not isinstance(value, str) or not value:
        raise invalid(key, missing)
    try:
        parts = urlsplit(value)
        return value, parts, parts.port
    except ValueError as exc:
        raise invalid(key, f"{value!r} is not a valid URL: {exc}") from None


def parse_listen_url(
    url: str, key: str = "gateway.listen", *, egress: bool = False
) -> ListenerSpec:
    """Parse one listener URL (module docstring); ``egress://`` only with ``egress``."""
    url, parts, port = split_url(
        url, key, "a listener is a URL string such as 'tls://127.0.0.1:8443'"
    )
    scheme = parts.scheme.lower()
    if egress and scheme == "egress":
        return _egress_listener(url, parts, port, key)
    if scheme not in ("tls", "dtls", "http"):
        raise invalid(
            key,
            f"{url!r}: scheme must be tls:// (secured, forwarded), dtls:// (CoAP over "
            "DTLS, forwarded) or http:// (plain, answers 4107); got "
            + (f"{scheme}://" if scheme else "none"),
        )
    host = parts.hostname
    if not host:
        raise invalid(key, f"{url!r}: no host; write e.g. {scheme}://127.0.0.1:8443")
    if port is None:
        raise invalid(key, f"{url!r}: no port; write e.g. {scheme}://{host}:8443")
    if parts.path not in ("", "/") or parts.fragment or parts.username or parts.password:
        raise invalid(key, f"{url!r}: only scheme://host:port[?framework=...] is allowed")
    framework: FrameworkName | None = None
    if parts.query:
        try:
            query = parse_qs(parts.query, strict_parsing=True)
        except ValueError:
            raise invalid(key, f"{url!r}: malformed query") from None
        unknown = set(query) - {"framework"}
        if unknown:
            raise invalid(key, f"{url!r}: unknown parameter {sorted(unknown)[0]!r}")
        value = query["framework"][-1].lower()
        if scheme not in ("tls", "dtls"):
            raise invalid(key, f"{url!r}: framework= applies to tls:// and dtls:// listeners only")
        if value in ("certificates", "cert"):
            value = "certificate"
        if value not in FRAMEWORKS:
            raise invalid(key, f"{url!r}: framework must be one of {', '.join(FRAMEWORKS)}")
        framework = next(f for f in FRAMEWORKS if f == value)
    if ":" in host:  # IPv6 literal: check it, so a typo fails here and not at bind time
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise invalid(key, f"{url!r}: {host!r} is not an IPv6 address") from None
    return ListenerSpec(
        url=url,
        scheme="tls" if scheme == "tls" else "dtls" if scheme == "dtls" else "http",
        host=unquote(host),
        port=port,
        framework=framework,
    )


def _egress_listener(url: str, parts: SplitResult, port: int | None, key: str) -> ListenerSpec:
    host = parts.hostname
    if not host or port is None:
        raise invalid(key, f"{url!r}: write egress://127.0.0.1:PORT?upstream=https://PEER:PORT")
    if parts.path not in ("", "/") or parts.fragment or parts.username or parts.password:
        raise invalid(key, f"{url!r}: only egress://host:port?upstream=URL is allowed")
    upstream = None
    if parts.query:
        try:
            query = parse_qs(parts.query, strict_parsing=True)
        except ValueError:
            raise invalid(key, f"{url!r}: malformed query") from None
        unknown = set(query) - {"upstream"}
        if unknown:
            raise invalid(key, f"{url!r}: unknown parameter {sorted(unknown)[0]!r}")
        upstream = query["upstream"][-1]
    return ListenerSpec(url, "egress", unquote(host), port, upstream=upstream)


def parse_service_url(
    url: object, key: str, fqdn: object, fqdn_key: str, what: str
) -> tuple[str, int, str]:
    """A function reached over mutual TLS (the BSF's Zn, the MEF's target listener):
    ``tls://HOST:PORT`` at ``key`` and the FQDN its certificate names (10.1.1.6) at
    ``fqdn_key``, by default the URL's host. (host, port, FQDN in lower case)."""
    text, parts, port = split_url(url, key, f"missing: the {what}, e.g. 'tls://127.0.0.1:8444'")
    if parts.scheme.lower() != "tls" or not parts.hostname or port is None:
        raise invalid(key, f"{text!r}: write tls://HOST:PORT (it runs over mutual TLS)")
    name = parts.hostname if fqdn is None else fqdn
    try:
        if not isinstance(name, str) or is_ip(name):
            raise IdentifierError("must be a host name, the one in its certificate")
        name = check_fqdn(name, "FQDN")
    except IdentifierError as exc:
        raise invalid(fqdn_key, f"{exc} (an IP address in {key} needs {fqdn_key})") from None
    return parts.hostname, port, name.lower()


def parse_backend_url(url: object, key: str = "gateway.backend") -> str:
    url, parts, _ = split_url(
        url, key, "the backend is the CSE's URL, e.g. 'http://127.0.0.1:8080'"
    )
    if parts.scheme.lower() not in ("http", "https"):
        raise invalid(key, f"{url!r}: the backend must be an http:// or https:// URL")
    if not parts.hostname:
        raise invalid(key, f"{url!r}: no host")
    if parts.query or parts.fragment:
        raise invalid(key, f"{url!r}: no query or fragment allowed")
    return url.rstrip("/")
