"""TOML configuration of the CSE security gateway (``m2msec gateway serve``).

Example (every key shown; ``listen``, ``backend`` and ``cse_id`` are required)::

    [gateway]
    listen = ["tls://127.0.0.1:8443", "http://127.0.0.1:8081"]
    backend = "http://127.0.0.1:8080"     # the oneM2M CSE behind the gateway
    cse_id = "/mn-cse-123456"             # its CSE-ID, registrar of AE-ID stems (A-14)
    in_domain = "in.provider.com"         # IN public domain (TS-0001 6.5.1.1)
    handshake_timeout = 10.0              # seconds
    max_handshakes = 1024                 # handshakes in progress per listener
    first_flight_timeout = 2.0            # seconds from accept to a whole ClientHello
    source_share = 0.25                   # of max_handshakes one source address may hold
    max_associations_per_credential = 64  # live associations of one key; more are refused
    request_head_timeout = 10.0           # seconds from a head's first byte to its end: 408
    max_body = 1048576                    # octets
    tls13 = true                          # offer TLS 1.3 beside 1.2 (docs/readings.md A-03)
    require_sni = false                   # strict SNI (docs/readings.md A-11)
    backend_timeout = 10.0                # seconds, per forwarded request
    idle_timeout = 120.0                  # seconds a keep-alive connection may idle
    coap_response_options = true          # oneM2M-RSC/-RQI/... in CoAP answers (see below)
    resumption = true                     # session resumption on tls:// and dtls:// (below)
    cse_originators = "ts-0004"           # or "strict": CSE From must lie under its CSE-ID

    [psk]                                 # provisioned PSK, TS-0003 8.2.2.1
    store = "sqlite:///var/lib/m2msec/m2msec.db"   # or a path, or postgresql://user@host/db

    [certificates]                        # certificates, TS-0003 8.2.2.2
    cert = "gateway.pem"                  # relative paths: from the config file's folder
    key = "gateway.key"
    ca = "ca.pem"
    allowed = ["Clight-AE1"]              # optional IdA list (docs/readings.md A-30)
    crl = "crl.pem"                       # optional CRL file, reloaded when it changes

    [gba]                                 # the gateway as NAF, seed 000 8.2.3.2 (legacy)
    zn = "tls://127.0.0.1:8444"           # the BSF's Zn listener (mutual TLS)
    bsf_fqdn = "bsf.operator.example"     # its certificate's name; default: zn's host
    naf_fqdn = "mn-cse-123456.in.provider.com"  # default: <cse_id>.<in_domain>
    cert = "gateway.pem"                  # our Zn certificate (naming naf_fqdn), key, CA;
    key = "gateway.key"                   #   default: those of [certificates]
    ca = "ca.pem"
    require_uicc = false                  # GBA_U only: hint 3GPP-bootstrapping-uicc (A-08)

    [maf]                                 # the gateway as Entity B of TS-0003 8.2.2.3
    addresses = { "maf.provider.com" = "127.0.0.1:8445" }  # MAF-FQDN -> retrieval listener
    cert = "gateway.pem"                  # our Key Retrieval certificate (naming cse_id),
    key = "gateway.key"                   #   key and CA; default: those of [certificates]
    ca = "ca.pem"
    cache_size = 1024                     # Kc kept until their expirationTime (LRU)
    timeout = 5.0                         # seconds per Key Retrieval (8.8.2.8)

Listener URLs: ``tls://HOST:PORT`` terminates TLS with the configured framework and
forwards; ``dtls://HOST:PORT`` (UDP, CoAP's 5684 by convention) terminates DTLS 1.2 with
the same framework, psk-lookup-table and CA and forwards CoAP requests (TS-0008) the same
way; ``http://HOST:PORT`` is plain and answers every request 4107
SECURITY_ASSOCIATION_REQUIRED itself. When both ``[psk]`` and ``[certificates]`` are
configured, each ``tls://`` or ``dtls://`` listener names its framework: ``?framework=psk`` or
``?framework=certificate`` (one listener per framework; a PeerBinding does not carry its
framework, so one OpenSSL context cannot yet report which of the two a session used).
With neither section, the provisioned-PSK framework uses the default store.
``coap_response_options = false`` leaves the oneM2M response parameters out of CoAP
answers: TS-0008 V3.7.0 made those options critical, and generic CoAP clients (libcoap's
``coap-client``) reject answers with critical options they do not know (RFC 7252 5.4.1).
``?framework=maf`` (with ``[maf]``) and ``?framework=gba`` (with ``[gba]``) are offered on
``tls://`` and ``dtls://`` listeners: Entity B's Key Retrieval (or Zn request) runs while
the handshake waits, over DTLS too. GBA over DTLS-PSK is our extension (the seed names
TLS-PSK; docs/conformance.md). ``resumption = true`` (the default) lets devices resume
their (D)TLS 1.2 sessions (TLS 1.3: tickets) after the framework re-validates the identity
binding (:mod:`m2msec.tls.sessions`); ``false`` turns it off on both transports.

Errors are :class:`~m2msec.errors.ConfigurationError` naming the key, e.g.
``gateway.listen[1]: ...`` or ``unknown key 'gateway.lisen' (did you mean 'listen'?)``.
Command-line values override file values (:func:`load_config`'s ``overrides``).
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from m2msec.app_rules import AppRule, app_rule
from m2msec.config.loader import load
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import CseId, check_fqdn
from m2msec.service.limits import DEFAULT_IDLE_TIMEOUT, DEFAULT_REQUEST_HEAD_TIMEOUT

__all__ = [
    "DEFAULT_BACKEND_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HANDSHAKES",
    "CertificateConfig",
    "FrameworkName",
    "GatewayConfig",
    "GbaConfig",
    "ListenerSpec",
    "MafRetrievalConfig",
    "PskConfig",
    "app_rule",
    "load_config",
    "parse_config",
    "parse_listen_url",
]

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_HANDSHAKES = 1024
DEFAULT_FIRST_FLIGHT_TIMEOUT = 2.0
DEFAULT_SOURCE_SHARE = 0.25
DEFAULT_MAX_ASSOCIATIONS_PER_CREDENTIAL = 64
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_BACKEND_TIMEOUT = 10.0

FrameworkName = Literal["psk", "certificate", "gba", "maf"]
_FRAMEWORKS: tuple[FrameworkName, ...] = ("psk", "certificate", "gba", "maf")


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One ``listen`` URL: ``tls://`` or ``dtls://HOST:PORT[?framework=...]``, ``http://``."""

    url: str
    scheme: Literal["tls", "dtls", "http"]
    host: str
    port: int
    framework: FrameworkName | None = None

    @property
    def secure(self) -> bool:
        return self.scheme in ("tls", "dtls")


@dataclass(frozen=True, slots=True)
class PskConfig:
    """``[psk]``: the psk-lookup-table. ``store`` None means the default store."""

    store: str | None = None


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    """``[certificates]``: our certificate, key and trust anchors, and optional IdA list."""

    cert: Path
    key: Path
    ca: Path
    allowed: tuple[str, ...] | None = None
    #: CRL file (PEM/DER) checked for every client certificate; missing/expired refuses all.
    crl: Path | None = None


@dataclass(frozen=True, slots=True)
class GbaConfig:
    """``[gba]``: the gateway as NAF (seed 000 8.2.3.2): its FQDN, the BSF's Zn address and
    name, our Zn certificate credential, and whether only GBA_U is accepted (A-08)."""

    bsf_host: str
    bsf_port: int
    bsf_fqdn: str
    naf_fqdn: str
    cert: Path
    key: Path
    ca: Path
    require_uicc: bool = False


@dataclass(frozen=True, slots=True)
class MafRetrievalConfig:
    """``[maf]``: the gateway as Entity B of the MAF-based framework (TS-0003 8.2.2.3).

    ``addresses`` maps each MAF-FQDN a KcId may name to (FQDN, host, port) of that MAF's
    Key Retrieval listener (8.8.2.8); KcIds of other MAFs are refused without a network
    call. ``cert``/``key``/``ca`` authenticate us to the MAF (mutual TLS, our CSE-ID
    certificate); retrieved Kc are cached (``cache_size`` entries) until they expire.
    """

    addresses: tuple[tuple[str, str, int], ...]
    cert: Path
    key: Path
    ca: Path
    cache_size: int = 1024
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole gateway configuration, validated."""

    listen: tuple[ListenerSpec, ...]
    backend: str
    cse_id: CseId
    in_domain: str | None = None
    psk: PskConfig | None = None
    certificates: CertificateConfig | None = None
    gba: GbaConfig | None = None
    maf: MafRetrievalConfig | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    first_flight_timeout: float = DEFAULT_FIRST_FLIGHT_TIMEOUT
    source_share: float = DEFAULT_SOURCE_SHARE
    max_associations_per_credential: int = DEFAULT_MAX_ASSOCIATIONS_PER_CREDENTIAL
    request_head_timeout: float = DEFAULT_REQUEST_HEAD_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    tls13: bool = True
    require_sni: bool = False
    backend_timeout: float = DEFAULT_BACKEND_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    coap_response_options: bool = True
    resumption: bool = True
    cse_originators: str = "ts-0004"
    app_rules: tuple[AppRule, ...] = ()
    source: str = "<defaults>"

    @property
    def frameworks(self) -> tuple[FrameworkName, ...]:
        names: list[FrameworkName] = []
        if self.psk is not None:
            names.append("psk")
        if self.certificates is not None:
            names.append("certificate")
        if self.gba is not None:
            names.append("gba")
        if self.maf is not None:
            names.append("maf")
        return tuple(names)


# ----------------------------------------------------------------------------- schema

_SECTIONS: dict[str, frozenset[str]] = {
    "gateway": frozenset(
        {
            "listen",
            "backend",
            "cse_id",
            "in_domain",
            "handshake_timeout",
            "max_handshakes",
            "first_flight_timeout",
            "source_share",
            "max_associations_per_credential",
            "request_head_timeout",
            "max_body",
            "tls13",
            "require_sni",
            "backend_timeout",
            "idle_timeout",
            "coap_response_options",
            "resumption",
            "cse_originators",
            "app_rule",
        }
    ),
    "psk": frozenset({"store"}),
    "certificates": frozenset({"cert", "key", "ca", "allowed", "crl"}),
    "gba": frozenset({"zn", "bsf_fqdn", "naf_fqdn", "cert", "key", "ca", "require_uicc"}),
    "maf": frozenset({"addresses", "cert", "key", "ca", "cache_size", "timeout"}),
}


def _unknown(key: str, known: frozenset[str] | set[str], where: str) -> ConfigurationError:
    hint = difflib.get_close_matches(key, sorted(known), n=1)
    dotted = f"{where}.{key}" if where else key
    more = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(sorted(known))})"
    return ConfigurationError(f"unknown key '{dotted}'{more}")


def _err(key: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{key}: {message}")


def parse_listen_url(url: str, key: str = "gateway.listen") -> ListenerSpec:
    """Parse one listener URL (see the module docstring)."""
    if not isinstance(url, str) or not url:
        raise _err(key, "a listener is a URL string such as 'tls://127.0.0.1:8443'")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _err(key, f"{url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("tls", "dtls", "http"):
        raise _err(
            key,
            f"{url!r}: scheme must be tls:// (secured, forwarded), dtls:// (CoAP over "
            "DTLS, forwarded) or http:// (plain, answers 4107); got "
            + (f"{scheme}://" if scheme else "none"),
        )
    host = parts.hostname
    if not host:
        raise _err(key, f"{url!r}: no host; write e.g. {scheme}://127.0.0.1:8443")
    if port is None:
        raise _err(key, f"{url!r}: no port; write e.g. {scheme}://{host}:8443")
    if parts.path not in ("", "/") or parts.fragment or parts.username or parts.password:
        raise _err(key, f"{url!r}: only scheme://host:port[?framework=...] is allowed")
    framework: FrameworkName | None = None
    if parts.query:
        try:
            query = parse_qs(parts.query, strict_parsing=True)
        except ValueError:
            raise _err(key, f"{url!r}: malformed query") from None
        unknown = set(query) - {"framework"}
        if unknown:
            raise _err(key, f"{url!r}: unknown parameter {sorted(unknown)[0]!r}")
        value = query["framework"][-1].lower()
        if scheme not in ("tls", "dtls"):
            raise _err(key, f"{url!r}: framework= applies to tls:// and dtls:// listeners only")
        if value in ("certificates", "cert"):
            value = "certificate"
        if value not in _FRAMEWORKS:
            raise _err(key, f"{url!r}: framework must be one of {', '.join(_FRAMEWORKS)}")
        framework = next(f for f in _FRAMEWORKS if f == value)
    if ":" in host:  # IPv6 literal: check it, so a typo fails here and not at bind time
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _err(key, f"{url!r}: {host!r} is not an IPv6 address") from None
    return ListenerSpec(
        url=url,
        scheme="tls" if scheme == "tls" else "dtls" if scheme == "dtls" else "http",
        host=unquote(host),
        port=port,
        framework=framework,
    )


def _backend(url: object, key: str = "gateway.backend") -> str:
    if not isinstance(url, str) or not url:
        raise _err(key, "the backend is the CSE's URL, e.g. 'http://127.0.0.1:8080'")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _err(key, f"{url!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _err(key, f"{url!r}: the backend must be an http:// or https:// URL")
    if not parts.hostname:
        raise _err(key, f"{url!r}: no host")
    if parts.query or parts.fragment:
        raise _err(key, f"{url!r}: no query or fragment allowed")
    del port
    return url.rstrip("/")


def _number(value: object, key: str, *, integer: bool = False) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise _err(key, f"must be {kind}, got {value!r}")
    assert isinstance(value, int | float)
    if value <= 0:
        raise _err(key, f"must be greater than 0, got {value!r}")
    return value


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise _err(key, f"must be true or false, got {value!r}")
    return value


def _path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise _err(key, "must be a file path")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise _err(key, f"no such file: {path}")
    return path


def _store(value: object, key: str, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise _err(key, "must be a path or a URL such as 'sqlite:///var/lib/m2msec.db'")
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme.lower() == "sqlite":
            file = Path(unquote(parts.path))
            if not file.is_file():
                raise _err(key, f"no such store: {file} (create it with 'm2msec psk add')")
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise _err(key, f"no such store: {path} (create it with 'm2msec psk add')")
    return str(path)


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise _err(name, f"must be a table ([{name}])")
    for key in section:
        if key not in _SECTIONS[name]:
            raise _unknown(key, _SECTIONS[name], name)
    return dict(section)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _gba(
    section: Mapping[str, Any],
    base: Path,
    cse_id: CseId,
    in_domain: str | None,
    certificates: CertificateConfig | None,
) -> GbaConfig:
    """Validate ``[gba]`` (module docstring)."""
    zn = section.get("zn")
    if not isinstance(zn, str) or not zn:
        raise _err("gba.zn", "missing: the BSF's Zn listener, e.g. 'tls://127.0.0.1:8444'")
    try:
        parts = urlsplit(zn)
        port = parts.port
    except ValueError as exc:
        raise _err("gba.zn", f"{zn!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() != "tls" or not parts.hostname or port is None:
        raise _err("gba.zn", f"{zn!r}: write tls://HOST:PORT (Zn runs over mutual TLS)")
    bsf_fqdn = section.get("bsf_fqdn", parts.hostname)
    naf_fqdn = section.get("naf_fqdn")
    try:
        if not isinstance(bsf_fqdn, str) or _is_ip(bsf_fqdn):
            raise IdentifierError("must be a host name, the one in the BSF's certificate")
        bsf_fqdn = check_fqdn(bsf_fqdn, "BSF FQDN")
    except IdentifierError as exc:
        raise _err("gba.bsf_fqdn", f"{exc} (an IP address in zn needs bsf_fqdn)") from None
    try:
        if naf_fqdn is None:
            if in_domain is None:
                raise IdentifierError("give naf_fqdn, or gateway.in_domain for the default")
            naf_fqdn = cse_id.public_domain_name(in_domain)
        elif not isinstance(naf_fqdn, str):
            raise IdentifierError("must be a host name")
        naf_fqdn = check_fqdn(naf_fqdn, "NAF FQDN")
    except IdentifierError as exc:
        raise _err("gba.naf_fqdn", str(exc)) from None
    files: dict[str, Path] = {}
    for name in ("cert", "key", "ca"):
        if name in section:
            files[name] = _path(section[name], f"gba.{name}", base)
        elif certificates is not None:
            files[name] = getattr(certificates, name)
        else:
            raise _err(f"gba.{name}", "missing: Zn needs our certificate (or a [certificates])")
    return GbaConfig(
        bsf_host=parts.hostname,
        bsf_port=port,
        bsf_fqdn=bsf_fqdn.lower(),
        naf_fqdn=naf_fqdn.lower(),
        cert=files["cert"],
        key=files["key"],
        ca=files["ca"],
        require_uicc=_bool(section.get("require_uicc", False), "gba.require_uicc"),
    )


def _maf(
    section: Mapping[str, Any],
    base: Path,
    in_domain: str | None,
    certificates: CertificateConfig | None,
) -> MafRetrievalConfig:
    """Validate ``[maf]`` (module docstring)."""
    raw = section.get("addresses")
    if not isinstance(raw, dict) or not raw:
        raise _err(
            "maf.addresses",
            "missing: the MAFs by FQDN, e.g. { \"maf.provider.com\" = \"127.0.0.1:8445\" }",
        )
    addresses: dict[str, tuple[str, str, int]] = {}
    for fqdn, value in raw.items():
        key = f"maf.addresses.{fqdn}"
        try:
            check_fqdn(fqdn, "MAF FQDN")
        except IdentifierError as exc:
            raise _err(key, str(exc)) from None
        if fqdn.lower() in addresses:
            raise _err(key, "repeats a MAF FQDN (FQDNs compare case-insensitively)")
        host: str | None = None
        port: int | None = None
        if isinstance(value, str):
            try:
                parts = urlsplit("//" + value)
                host, port = parts.hostname, parts.port
            except ValueError:
                host = None
        if not host or not port:
            raise _err(key, f"{value!r}: write 'HOST:PORT' of the MAF's retrieval listener")
        addresses[fqdn.lower()] = (fqdn.lower(), host, port)
    files: dict[str, Path] = {}
    for name in ("cert", "key", "ca"):
        if name in section:
            files[name] = _path(section[name], f"maf.{name}", base)
        elif certificates is not None:
            files[name] = getattr(certificates, name)
        else:
            raise _err(
                f"maf.{name}", "missing: Key Retrieval needs our certificate (or [certificates])"
            )
    if in_domain is None:
        raise _err(
            "gateway.in_domain",
            "needed with [maf]: our certificate names <CSE-ID>.<in_domain> to the MAF",
        )
    return MafRetrievalConfig(
        addresses=tuple(addresses.values()),
        cert=files["cert"],
        key=files["key"],
        ca=files["ca"],
        cache_size=int(_number(section.get("cache_size", 1024), "maf.cache_size", integer=True)),
        timeout=float(_number(section.get("timeout", 5.0), "maf.timeout")),
    )


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    source: str = "<config>",
) -> GatewayConfig:
    """Validate a parsed TOML document (or the same shape built by the CLI)."""
    base = base_dir or Path.cwd()
    for key in data:
        if key not in _SECTIONS:
            raise _unknown(key, set(_SECTIONS), "")
    gw = _table(data, "gateway")
    psk_section = _table(data, "psk") if "psk" in data else None
    cert_section = _table(data, "certificates") if "certificates" in data else None
    gba_section = _table(data, "gba") if "gba" in data else None
    maf_section = _table(data, "maf") if "maf" in data else None

    listen_raw = gw.get("listen")
    if isinstance(listen_raw, str):
        listen_raw = [listen_raw]
    if not isinstance(listen_raw, list) or not listen_raw:
        raise _err("gateway.listen", "give at least one listener, e.g. ['tls://127.0.0.1:8443']")
    listen = tuple(
        parse_listen_url(u, f"gateway.listen[{i}]") for i, u in enumerate(listen_raw)
    )
    if "backend" not in gw:
        raise _err("gateway.backend", "missing: the oneM2M CSE's URL, e.g. 'http://127.0.0.1:8080'")
    backend = _backend(gw["backend"])

    cse_text = gw.get("cse_id")
    if cse_text is None:
        raise _err(
            "gateway.cse_id",
            "missing: the CSE-ID of the CSE behind the gateway, e.g. '/mn-cse-123456' "
            "(AE-ID stems are read under it)",
        )
    if not isinstance(cse_text, str):
        raise _err("gateway.cse_id", "must be a CSE-ID string such as '/mn-cse-123456'")
    try:
        cse_id = CseId.parse(cse_text)
    except IdentifierError as exc:
        raise _err("gateway.cse_id", str(exc)) from None

    in_domain = gw.get("in_domain")
    if in_domain is not None:
        if not isinstance(in_domain, str):
            raise _err("gateway.in_domain", "must be a domain name such as 'in.provider.com'")
        try:
            check_fqdn(in_domain, "IN public domain")
        except IdentifierError as exc:
            raise _err("gateway.in_domain", str(exc)) from None

    certificates: CertificateConfig | None = None
    if cert_section is not None:
        missing = [k for k in ("cert", "key", "ca") if k not in cert_section]
        if missing:
            raise _err(f"certificates.{missing[0]}", "missing (cert, key and ca are all needed)")
        allowed_raw = cert_section.get("allowed")
        allowed: tuple[str, ...] | None = None
        if allowed_raw is not None:
            if not isinstance(allowed_raw, list) or not all(
                isinstance(a, str) for a in allowed_raw
            ):
                raise _err("certificates.allowed", "must be a list of AE-IDs and CSE-IDs")
            allowed = tuple(allowed_raw)
        certificates = CertificateConfig(
            cert=_path(cert_section["cert"], "certificates.cert", base),
            key=_path(cert_section["key"], "certificates.key", base),
            ca=_path(cert_section["ca"], "certificates.ca", base),
            allowed=allowed,
            crl=(
                _path(cert_section["crl"], "certificates.crl", base)
                if "crl" in cert_section
                else None
            ),
        )
        if in_domain is None:
            raise _err(
                "gateway.in_domain",
                "needed with [certificates]: CSE-ID certificates name <CSE-ID>.<in_domain>",
            )

    psk: PskConfig | None = None
    if psk_section is not None:
        store = psk_section.get("store")
        psk = PskConfig(None if store is None else _store(store, "psk.store", base))
    elif certificates is None and gba_section is None and maf_section is None:
        psk = PskConfig(None)  # the default store of the data directory
    gba = None
    if gba_section is not None:
        gba = _gba(gba_section, base, cse_id, in_domain, certificates)
    maf = None if maf_section is None else _maf(maf_section, base, in_domain, certificates)

    for i, spec in enumerate(listen):
        if not spec.secure:
            continue
        where = f"gateway.listen[{i}]"
        if spec.framework is None and psk is not None and certificates is not None:
            raise _err(
                where,
                f"{spec.url!r}: both [psk] and [certificates] are configured; add "
                "?framework=psk or ?framework=certificate (one listener per framework)",
            )
        if spec.framework is None and gba is not None and (psk or certificates):
            raise _err(
                where,
                f"{spec.url!r}: [gba] and another framework are configured; add "
                "?framework=gba or another framework (one listener per framework)",
            )
        if spec.framework is None and maf is not None and (psk or certificates or gba):
            raise _err(
                where,
                f"{spec.url!r}: [maf] and another framework are configured; add "
                "?framework=maf or another framework (one listener per framework)",
            )
        if spec.framework == "maf" and maf is None:
            raise _err(where, f"{spec.url!r}: framework=maf needs [maf]")
        if spec.framework == "gba" and gba is None:
            raise _err(where, f"{spec.url!r}: framework=gba needs [gba]")
        if spec.framework == "psk" and psk is None:
            raise _err(where, f"{spec.url!r} asks for framework=psk but there is no [psk]")
        if spec.framework == "certificate" and certificates is None:
            raise _err(
                where, f"{spec.url!r} asks for framework=certificate but there is no [certificates]"
            )
    seen: dict[tuple[bool, str, int], str] = {}
    for i, spec in enumerate(listen):
        address = (spec.scheme == "dtls", spec.host, spec.port)  # UDP and TCP ports differ
        if spec.port and address in seen:
            raise _err(f"gateway.listen[{i}]", f"{spec.url!r} repeats {seen[address]!r}")
        seen[address] = spec.url

    def num(key: str, default: float) -> float:
        return float(_number(gw.get(key, default), f"gateway.{key}"))

    def integer(key: str, default: int) -> int:
        return int(_number(gw.get(key, default), f"gateway.{key}", integer=True))

    if num("source_share", DEFAULT_SOURCE_SHARE) > 1:
        raise _err("gateway.source_share", "is a fraction of max_handshakes, at most 1")
    return GatewayConfig(
        listen=listen,
        backend=backend,
        cse_id=cse_id,
        in_domain=in_domain,
        psk=psk,
        certificates=certificates,
        gba=gba,
        maf=maf,
        handshake_timeout=num("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT),
        max_handshakes=integer("max_handshakes", DEFAULT_MAX_HANDSHAKES),
        first_flight_timeout=num("first_flight_timeout", DEFAULT_FIRST_FLIGHT_TIMEOUT),
        source_share=num("source_share", DEFAULT_SOURCE_SHARE),
        max_associations_per_credential=integer(
            "max_associations_per_credential", DEFAULT_MAX_ASSOCIATIONS_PER_CREDENTIAL
        ),
        request_head_timeout=num("request_head_timeout", DEFAULT_REQUEST_HEAD_TIMEOUT),
        max_body=integer("max_body", DEFAULT_MAX_BODY),
        tls13=_bool(gw.get("tls13", True), "gateway.tls13"),
        require_sni=_bool(gw.get("require_sni", False), "gateway.require_sni"),
        backend_timeout=num("backend_timeout", DEFAULT_BACKEND_TIMEOUT),
        idle_timeout=num("idle_timeout", DEFAULT_IDLE_TIMEOUT),
        coap_response_options=_bool(
            gw.get("coap_response_options", True), "gateway.coap_response_options"
        ),
        resumption=_bool(gw.get("resumption", True), "gateway.resumption"),
        cse_originators=_cse_originators(gw.get("cse_originators", "ts-0004")),
        app_rules=_app_rules(gw.get("app_rule", [])),
        source=source,
    )


CSE_ORIGINATORS = ("ts-0004", "strict")
"""``[gateway] cse_originators``: TS-0004 7.3.2.1's CSE rules, or From under the CSE-ID."""


def _cse_originators(value: Any) -> str:
    if value not in CSE_ORIGINATORS:
        raise _err("gateway.cse_originators", f"{value!r}: write \"ts-0004\" or \"strict\"")
    return str(value)


def _app_rules(raw: Any) -> tuple[AppRule, ...]:
    """``[[gateway.app_rule]]`` tables: credentials, allowed_aes, allowed_app_ids."""
    if not isinstance(raw, list):
        raise _err("gateway.app_rule", "must be a list of tables ([[gateway.app_rule]])")
    rules = []
    for i, table in enumerate(raw):
        where = f"gateway.app_rule[{i}]"
        if not isinstance(table, dict):
            raise _err(where, "must be a table")
        unknown = set(table) - {"credentials", "allowed_aes", "allowed_app_ids"}
        if unknown:
            raise _err(where, f"unknown keys {sorted(unknown)}")
        for key in ("credentials", "allowed_aes", "allowed_app_ids"):
            if not isinstance(table.get(key, []), list):
                raise _err(f"{where}.{key}", "must be a list of non-empty strings")
        rules.append(
            app_rule(
                table.get("credentials", []),
                table.get("allowed_aes", []),
                table.get("allowed_app_ids", []),
                where=where,
            )
        )
    return tuple(rules)


_PATHS = frozenset(
    {(t, k) for t in ("certificates", "gba", "maf") for k in ("cert", "key", "ca", "crl")}
    | {("psk", "store")}
)


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> GatewayConfig:
    """Read ``path`` (TOML) if given, apply ``overrides`` (``{"gateway.backend": ...}``,
    None values ignored) and validate (:func:`m2msec.config.loader.load`)."""
    return load(
        path,
        overrides,
        sections=_SECTIONS,
        paths=_PATHS,
        parse=lambda data, base, source: parse_config(data, base_dir=base, source=source),
    )
