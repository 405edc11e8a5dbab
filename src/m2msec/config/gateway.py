"""TOML configuration of the CSE security gateway (``m2msec gateway serve``).

Example (every key shown; ``listen`` and ``backend`` are required)::

    [gateway]
    listen = ["tls://127.0.0.1:8443", "http://127.0.0.1:8081"]
    backend = "http://127.0.0.1:8080"     # the oneM2M CSE behind the gateway
    cse_id = "/mn-cse-123456"             # its CSE-ID, registrar of AE-ID stems (A-14);
                                          #   default: the csi of the backend's CSEBase
    in_domain = "in.provider.com"         # IN public domain (TS-0001 6.5.1.1); default:
                                          #   the one our own certificate names (below)
    cse_base_origin = "CAdmin"            # From of that CSEBase RETRIEVE (ACME's admin)
    cse_base_timeout = 30.0               # seconds to get it, with back-off; then exit 1
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
    session_cache_size = 10000            # sessions each (D)TLS listener's cache holds
    session_lifetime = 3600.0             # seconds a session may be resumed
    cse_originators = "ts-0004"           # or "strict": CSE From must lie under its CSE-ID
    drain_timeout = 10.0                  # seconds requests in progress get at SIGTERM

    [metrics]                             # off by default (m2msec.config.metrics)
    listen = "http://127.0.0.1:9464"      # /metrics, /healthz, /readyz

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

    [mef]                                 # the gateway as Enrolee B of seed 004 (8.3.2.1)
    url = "tls://127.0.0.1:8447"          # the MEF's target listener (mutual TLS)
    fqdn = "mef.provider.com"             # the MEF-FQDN of its KeIDs; default: url's host
    cert = "gateway.pem"                  # our fetchCredentials certificate (naming cse_id),
    key = "gateway.key"                   #   key and CA; default: those of [certificates]
    ca = "ca.pem"
    cache_size = 1024                     # Kpsa kept until their lifetime ends (LRU)
    timeout = 5.0                         # seconds per fetchCredentials; then the handshake fails
    retrieval = "fetch-credentials"       # or "key-retrieval": MEF Key Retrieval (8.3.5.2.8)

    [sa]                                  # SA records and the admin API (seed 003, docs/sa.md)
    store = "sa.db"                       # default: sa.db in the data directory; or a path,
                                          #   sqlite:///... or postgresql://user@host/db
    retention = 7776000.0                 # seconds ended SAs and history are kept (90 days)
    admin_socket = "/run/m2msec/admin.sock"  # default: admin.sock in the data directory;
                                          #   "" turns the admin API off
    instance = "gw-1"                     # this gateway in a shared store (default host:dir)
    revalidate_interval = 60.0            # seconds: live MAF/MEF SAs' keys asked for again

Without ``cse_id`` the gateway learns the CSE-ID when it starts: it RETRIEVEs the CSEBase
of the backend (target ``/-``, TS-0001 9.3.1's placeholder for the CSEBase's name) through
its backend pool as ``cse_base_origin`` and reads its ``csi``
(:mod:`m2msec.servers.cse_base`); until then ``cse_id`` is :data:`PENDING_CSE_ID` and
``cse_id_source`` ``"pending"``, and :meth:`GatewayConfig.with_cse_id` validates the
document again with the learned value (so defaults derived from it, such as ``[gba]
naf_fqdn``, follow it). Without ``in_domain``, the IN public domain is read from the
gateway's own certificate (``[certificates] cert``, else the ``cert`` of ``[maf]``,
``[mef]`` or ``[gba]``): the dNSName ``<CSE-ID>.<IN public domain>`` of its subjectAltName
(TS-0003 10.1.1.7, :func:`m2msec.pki.names.in_domain_of`; the CN is not read).

Listener URLs (``tls://``, ``dtls://``, ``http://``, ``?framework=``) are read by
:mod:`m2msec.config.listeners`, ``[gba]``, ``[maf]`` and ``[mef]`` by
:mod:`m2msec.config.gateway_sections`, the egress listeners (``egress://`` in ``listen``,
``[[egress]]`` tables: the CSE's way out over an SA the gateway establishes) by
:mod:`m2msec.config.egress`; with ``[[egress]]`` tables, ``listen`` may be empty.
With neither section, the provisioned-PSK framework uses the default store.
``coap_response_options = false`` leaves the oneM2M response parameters out of CoAP
answers: TS-0008 V3.7.0 made those options critical, and generic CoAP clients (libcoap's
``coap-client``) reject answers with critical options they do not know (RFC 7252 5.4.1).
``?framework=maf`` (with ``[maf]``) and ``?framework=gba`` (with ``[gba]``) are offered on
``tls://`` and ``dtls://`` listeners: Entity B's Key Retrieval (or Zn request) runs while
the handshake waits, over DTLS too; so does ``?framework=mef`` (with ``[mef]``), where a
KeID is resolved by fetchCredentials at the MEF and the association bound to the
Enrolee-ID it returns, as a psk-lookup-table row binds it. GBA over DTLS-PSK is our
extension (the seed names TLS-PSK; docs/conformance.md). ``resumption = true`` (the
default) lets devices resume their (D)TLS 1.2 sessions (TLS 1.3: tickets) after the
framework re-validates the identity binding (:mod:`m2msec.tls.sessions`); ``false`` turns
it off on both transports. ``session_cache_size`` (sessions, default 10,000) and
``session_lifetime`` (seconds, default 3,600) size each listener profile's
:class:`~m2msec.tls.sessions.ServerSessionCache` (issue 14: "the TLS session caches ...
get settings and metrics"); a reload builds new caches with the new values.

Errors are :class:`~m2msec.errors.ConfigurationError` naming the key, e.g.
``gateway.listen[1]: ...`` or ``unknown key 'gateway.lisen' (did you mean 'listen'?)``.
Command-line values override file values (:func:`load_config`'s ``overrides``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from m2msec.app_rules import AppRule, app_rule
from m2msec.bindings.http import DEFAULT_MAX_BODY  # the binding's request body cap
from m2msec.config.egress import EGRESS_KEYS, EgressConfig, parse_egress
from m2msec.config.gateway_sections import (
    CertificateConfig,
    GbaConfig,
    MafRetrievalConfig,
    MefTargetConfig,
    SaConfig,
    certificate_in_domain,
    parse_gba,
    parse_maf,
    parse_mef,
    parse_sa,
)
from m2msec.config.listeners import (
    FrameworkName,
    ListenerSpec,
    parse_backend_url,
    parse_listen_url,
)
from m2msec.config.loader import load, read_toml, resolve_paths
from m2msec.config.metrics import METRICS_KEYS, MetricsListen, parse_metrics
from m2msec.config.values import boolean, file_path, invalid, number, unknown_key
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import CseId, check_fqdn
from m2msec.service.lifecycle import DRAIN_TIMEOUT
from m2msec.service.limits import DEFAULT_IDLE_TIMEOUT, DEFAULT_REQUEST_HEAD_TIMEOUT
from m2msec.tls.sessions import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_LIFETIME

__all__ = [
    "DEFAULT_BACKEND_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HANDSHAKES",
    "PENDING_CSE_ID",
    "GatewayConfig",
    "PskConfig",
    "app_rule",
    "load_config",
    "parse_config",
]

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_HANDSHAKES = 1024
DEFAULT_FIRST_FLIGHT_TIMEOUT = 2.0
DEFAULT_SOURCE_SHARE = 0.25
DEFAULT_MAX_ASSOCIATIONS_PER_CREDENTIAL = 64
DEFAULT_BACKEND_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class PskConfig:
    """``[psk]``: the psk-lookup-table. ``store`` None means the default store."""

    store: str | None = None


PENDING_CSE_ID: Final = CseId("m2msec-cse-id-pending")
"""``cse_id`` of a configuration without one, until the gateway learns the real one."""
DEFAULT_CSE_BASE_ORIGIN: Final = "CAdmin"
"""From of the CSEBase RETRIEVE: ACME's admin originator (``cse_base_origin``)."""
DEFAULT_CSE_BASE_TIMEOUT: Final = 30.0


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
    mef: MefTargetConfig | None = None
    sa: SaConfig = field(default_factory=SaConfig)
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
    session_cache_size: int = DEFAULT_MAX_SESSIONS
    session_lifetime: float = DEFAULT_SESSION_LIFETIME
    cse_originators: str = "ts-0004"
    drain_timeout: float = DRAIN_TIMEOUT
    app_rules: tuple[AppRule, ...] = ()
    egress: tuple[EgressConfig, ...] = ()
    metrics: MetricsListen | None = None
    source: str = "<defaults>"
    #: "config" (given), "pending" (:data:`PENDING_CSE_ID` until the gateway RETRIEVEs its
    #: backend's CSEBase) or "backend" (learned so, :meth:`with_cse_id`).
    cse_id_source: str = "config"
    #: "config" (given or none) or "certificate" (read from our own certificate).
    in_domain_source: str = "config"
    cse_base_origin: str = DEFAULT_CSE_BASE_ORIGIN
    cse_base_timeout: float = DEFAULT_CSE_BASE_TIMEOUT
    #: The validated document and the folder of its relative paths, for :meth:`with_cse_id`.
    document: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    base_dir: Path | None = field(default=None, repr=False, compare=False)

    def with_cse_id(self, cse_id: CseId) -> GatewayConfig:
        """This configuration with the CSE-ID learned from the backend: the document
        validated again with it (``cse_id_source`` becomes "backend")."""
        if self.document is None:
            return replace(self, cse_id=cse_id, cse_id_source="backend")
        gw = dict(self.document.get("gateway", {}))
        gw["cse_id"] = str(cse_id)
        try:
            learned = parse_config(
                {**self.document, "gateway": gw}, base_dir=self.base_dir, source=self.source
            )
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"{self.source}: with the CSE-ID {cse_id} of the backend's CSEBase: {exc}"
            ) from None
        return replace(learned, cse_id_source="backend")

    def egress_for(self, spec: ListenerSpec) -> EgressConfig:
        """The settings of the egress listener ``spec`` (one of ``listen``)."""
        return next(e for e in self.egress if e.listener is spec)

    @property
    def frameworks(self) -> tuple[FrameworkName, ...]:
        sections: tuple[tuple[FrameworkName, object], ...] = (
            ("psk", self.psk),
            ("certificate", self.certificates),
            ("gba", self.gba),
            ("maf", self.maf),
            ("mef", self.mef),
        )
        return tuple(name for name, section in sections if section is not None)


# ----------------------------------------------------------------------------- schema

_SECTIONS: dict[str, frozenset[str]] = {
    "gateway": frozenset(
        {
            "listen",
            "backend",
            "cse_id",
            "in_domain",
            "cse_base_origin",
            "cse_base_timeout",
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
            "session_cache_size",
            "session_lifetime",
            "cse_originators",
            "drain_timeout",
            "app_rule",
        }
    ),
    "psk": frozenset({"store"}),
    "certificates": frozenset({"cert", "key", "ca", "allowed", "crl"}),
    "gba": frozenset({"zn", "bsf_fqdn", "naf_fqdn", "cert", "key", "ca", "require_uicc"}),
    "maf": frozenset({"addresses", "cert", "key", "ca", "cache_size", "timeout"}),
    "mef": frozenset({"url", "fqdn", "cert", "key", "ca", "cache_size", "timeout", "retrieval"}),
    "egress": EGRESS_KEYS,  # [[egress]]: an array of tables, read by config.egress
    "metrics": frozenset(METRICS_KEYS),
    "sa": frozenset({"store", "retention", "admin_socket", "instance", "revalidate_interval"}),
}


def _store(value: object, key: str, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(key, "must be a path or a URL such as 'sqlite:///var/lib/m2msec.db'")
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme.lower() == "sqlite":
            file = Path(unquote(parts.path))
            if not file.is_file():
                raise invalid(key, f"no such store: {file} (create it with 'm2msec psk add')")
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise invalid(key, f"no such store: {path} (create it with 'm2msec psk add')")
    return str(path)


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise invalid(name, f"must be a table ([{name}])")
    for key in section:
        if key not in _SECTIONS[name]:
            raise unknown_key(key, _SECTIONS[name], name)
    return dict(section)


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
            raise unknown_key(key, set(_SECTIONS), "")
    egress_tables = data.get("egress", [])
    gw = _table(data, "gateway")
    psk_section = _table(data, "psk") if "psk" in data else None
    cert_section = _table(data, "certificates") if "certificates" in data else None
    gba_section = _table(data, "gba") if "gba" in data else None
    maf_section = _table(data, "maf") if "maf" in data else None
    mef_section = _table(data, "mef") if "mef" in data else None
    sa = parse_sa(_table(data, "sa"))

    listen_raw = gw.get("listen", [] if egress_tables else None)
    if isinstance(listen_raw, str):
        listen_raw = [listen_raw]
    if not isinstance(listen_raw, list) or not (listen_raw or egress_tables):
        raise invalid("gateway.listen", "give at least one listener, e.g. ['tls://127.0.0.1:8443']")
    listen = tuple(
        parse_listen_url(u, f"gateway.listen[{i}]", egress=True) for i, u in enumerate(listen_raw)
    )
    if "backend" not in gw:
        raise invalid(
            "gateway.backend", "missing: the oneM2M CSE's URL, e.g. 'http://127.0.0.1:8080'"
        )
    backend = parse_backend_url(gw["backend"])

    cse_text = gw.get("cse_id")
    cse_id_source = "config"
    if cse_text is None:  # learned from the backend's CSEBase at start (module docstring)
        cse_text, cse_id_source = PENDING_CSE_ID.sp_relative(), "pending"
    if not isinstance(cse_text, str):
        raise invalid("gateway.cse_id", "must be a CSE-ID string such as '/mn-cse-123456'")
    try:
        cse_id = CseId.parse(cse_text)
    except IdentifierError as exc:
        raise invalid("gateway.cse_id", str(exc)) from None

    in_domain = gw.get("in_domain")
    in_domain_source = "config"
    if in_domain is None:
        pending = cse_id_source == "pending"
        in_domain = certificate_in_domain(data, base, None if pending else cse_id)
        in_domain_source = "config" if in_domain is None else "certificate"
    if in_domain is not None:
        if not isinstance(in_domain, str):
            raise invalid("gateway.in_domain", "must be a domain name such as 'in.provider.com'")
        try:
            check_fqdn(in_domain, "IN public domain")
        except IdentifierError as exc:
            raise invalid("gateway.in_domain", str(exc)) from None

    egress = parse_egress(egress_tables, listen, base=base, cse_id=cse_id, in_domain=in_domain)
    listen += tuple(e.listener for e in egress if not any(e.listener is s for s in listen))

    certificates: CertificateConfig | None = None
    if cert_section is not None:
        missing = [k for k in ("cert", "key", "ca") if k not in cert_section]
        if missing:
            raise invalid(f"certificates.{missing[0]}", "missing (cert, key and ca are all needed)")
        allowed_raw = cert_section.get("allowed")
        allowed: tuple[str, ...] | None = None
        if allowed_raw is not None:
            if not isinstance(allowed_raw, list) or not all(
                isinstance(a, str) for a in allowed_raw
            ):
                raise invalid("certificates.allowed", "must be a list of AE-IDs and CSE-IDs")
            allowed = tuple(allowed_raw)
        certificates = CertificateConfig(
            cert=file_path(cert_section["cert"], "certificates.cert", base),
            key=file_path(cert_section["key"], "certificates.key", base),
            ca=file_path(cert_section["ca"], "certificates.ca", base),
            allowed=allowed,
            crl=(
                file_path(cert_section["crl"], "certificates.crl", base)
                if "crl" in cert_section
                else None
            ),
        )
        if in_domain is None:
            raise invalid(
                "gateway.in_domain",
                "needed with [certificates]: CSE-ID certificates name <CSE-ID>.<in_domain>",
            )

    psk: PskConfig | None = None
    if psk_section is not None:
        store = psk_section.get("store")
        psk = PskConfig(None if store is None else _store(store, "psk.store", base))
    elif certificates is None and gba_section is None and maf_section is None and (
        mef_section is None
    ):
        psk = PskConfig(None)  # the default store of the data directory
    gba = None
    if gba_section is not None:
        gba = parse_gba(gba_section, base, cse_id, in_domain, certificates)
    maf = None if maf_section is None else parse_maf(maf_section, base, in_domain, certificates)
    mef = None if mef_section is None else parse_mef(mef_section, base, in_domain, certificates)

    # The frameworks configured, by the name a listener's ?framework= gives, and the table
    # that configures each.
    configured = {
        name: table
        for name, table, value in (
            ("psk", "psk", psk),
            ("certificate", "certificates", certificates),
            ("gba", "gba", gba),
            ("maf", "maf", maf),
            ("mef", "mef", mef),
        )
        if value is not None
    }
    for i, spec in enumerate(listen):
        if not spec.secure:
            continue
        where = f"gateway.listen[{i}]"
        if spec.framework is None and len(configured) > 1:
            tables = " and ".join(f"[{t}]" for t in configured.values())
            choices = " or ".join(f"?framework={n}" for n in configured)
            raise invalid(
                where,
                f"{spec.url!r}: {tables} are configured; add {choices} "
                "(one listener per framework)",
            )
        if spec.framework is not None and spec.framework not in configured:
            table = {"certificate": "certificates"}.get(spec.framework, spec.framework)
            raise invalid(where, f"{spec.url!r}: framework={spec.framework} needs [{table}]")
    seen: dict[tuple[bool, str, int], str] = {}
    for i, spec in enumerate(listen):
        address = (spec.scheme == "dtls", spec.host, spec.port)  # UDP and TCP ports differ
        if spec.port and address in seen:
            where = f"gateway.listen[{i}]" if i < len(listen_raw) else "egress"
            raise invalid(where, f"{spec.url!r} repeats {seen[address]!r}")
        seen[address] = spec.url

    def num(key: str, default: float) -> float:
        return float(number(gw.get(key, default), f"gateway.{key}"))

    def integer(key: str, default: int) -> int:
        return int(number(gw.get(key, default), f"gateway.{key}", integer=True))

    if num("source_share", DEFAULT_SOURCE_SHARE) > 1:
        raise invalid("gateway.source_share", "is a fraction of max_handshakes, at most 1")
    return GatewayConfig(
        listen=listen,
        backend=backend,
        cse_id=cse_id,
        in_domain=in_domain,
        psk=psk,
        certificates=certificates,
        gba=gba,
        maf=maf,
        mef=mef,
        sa=sa,
        handshake_timeout=num("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT),
        max_handshakes=integer("max_handshakes", DEFAULT_MAX_HANDSHAKES),
        first_flight_timeout=num("first_flight_timeout", DEFAULT_FIRST_FLIGHT_TIMEOUT),
        source_share=num("source_share", DEFAULT_SOURCE_SHARE),
        max_associations_per_credential=integer(
            "max_associations_per_credential", DEFAULT_MAX_ASSOCIATIONS_PER_CREDENTIAL
        ),
        request_head_timeout=num("request_head_timeout", DEFAULT_REQUEST_HEAD_TIMEOUT),
        max_body=integer("max_body", DEFAULT_MAX_BODY),
        tls13=boolean(gw.get("tls13", True), "gateway.tls13"),
        require_sni=boolean(gw.get("require_sni", False), "gateway.require_sni"),
        backend_timeout=num("backend_timeout", DEFAULT_BACKEND_TIMEOUT),
        idle_timeout=num("idle_timeout", DEFAULT_IDLE_TIMEOUT),
        coap_response_options=boolean(
            gw.get("coap_response_options", True), "gateway.coap_response_options"
        ),
        resumption=boolean(gw.get("resumption", True), "gateway.resumption"),
        session_cache_size=integer("session_cache_size", DEFAULT_MAX_SESSIONS),
        session_lifetime=num("session_lifetime", DEFAULT_SESSION_LIFETIME),
        cse_originators=_cse_originators(gw.get("cse_originators", "ts-0004")),
        drain_timeout=num("drain_timeout", DRAIN_TIMEOUT),
        app_rules=_app_rules(gw.get("app_rule", [])),
        egress=egress,
        metrics=parse_metrics(data.get("metrics")),
        source=source,
        cse_id_source=cse_id_source,
        in_domain_source=in_domain_source,
        cse_base_origin=_origin(gw.get("cse_base_origin", DEFAULT_CSE_BASE_ORIGIN)),
        cse_base_timeout=num("cse_base_timeout", DEFAULT_CSE_BASE_TIMEOUT),
        document=data,
        base_dir=base,
    )


def _origin(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in " \r\n"):
        raise invalid("gateway.cse_base_origin", "must be an originator such as 'CAdmin'")
    return value


CSE_ORIGINATORS = ("ts-0004", "strict")
"""``[gateway] cse_originators``: TS-0004 7.3.2.1's CSE rules, or From under the CSE-ID."""


def _cse_originators(value: Any) -> str:
    if value not in CSE_ORIGINATORS:
        raise invalid("gateway.cse_originators", f'{value!r}: write "ts-0004" or "strict"')
    return str(value)


def _app_rules(raw: Any) -> tuple[AppRule, ...]:
    """``[[gateway.app_rule]]`` tables: credentials, allowed_aes, allowed_app_ids."""
    if not isinstance(raw, list):
        raise invalid("gateway.app_rule", "must be a list of tables ([[gateway.app_rule]])")
    rules = []
    for i, table in enumerate(raw):
        where = f"gateway.app_rule[{i}]"
        if not isinstance(table, dict):
            raise invalid(where, "must be a table")
        unknown = set(table) - {"credentials", "allowed_aes", "allowed_app_ids"}
        if unknown:
            raise invalid(where, f"unknown keys {sorted(unknown)}")
        for key in ("credentials", "allowed_aes", "allowed_app_ids"):
            if not isinstance(table.get(key, []), list):
                raise invalid(f"{where}.{key}", "must be a list of non-empty strings")
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
    {(t, k) for t in ("certificates", "gba", "maf", "mef") for k in ("cert", "key", "ca", "crl")}
    | {("psk", "store"), ("egress", "credentials"), ("sa", "store"), ("sa", "admin_socket")}
)


def read_app_rules(path: str | Path) -> tuple[tuple[AppRule, ...], str | None]:
    """The ``[[gateway.app_rule]]`` rules and the ``[psk] store`` of the gateway config at
    ``path``, validated as :func:`load_config` validates them, without the rest of the file
    (whose ``cse_id`` may come from the command line): ``m2msec gateway rule list --config``."""
    file = Path(path).expanduser()
    data = resolve_paths(read_toml(file), _PATHS, file.resolve().parent)
    try:
        gw, psk = data.get("gateway", {}), data.get("psk", {})
        if not isinstance(gw, dict) or not isinstance(psk, dict):
            raise invalid("gateway", "[gateway] and [psk] must be tables")
        store = psk.get("store")
        return (
            _app_rules(gw.get("app_rule", [])),
            None if store is None else _store(store, "psk.store", Path.cwd()),
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"{file}: {exc}") from None


def read_admin_socket(path: str | Path) -> str | None:
    """The ``[sa] admin_socket`` of the gateway config at ``path`` (its relative path made
    absolute as :func:`load_config` does), without validating the rest of the file: the
    running gateway's socket stays findable while the file holds the broken configuration
    that ``m2msec gateway reload`` is about to report. None: not set there."""
    file = Path(path).expanduser()
    data = resolve_paths(read_toml(file), _PATHS, file.resolve().parent)
    sa = data.get("sa", {})
    value = sa.get("admin_socket") if isinstance(sa, dict) else None
    return value if isinstance(value, str) else None


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> GatewayConfig:
    """Read ``path`` (TOML) if given, apply ``overrides`` (``{"gateway.backend": ...}``,
    None values ignored) and validate (:func:`m2msec.config.loader.load`)."""
    return load(path, overrides, sections=_SECTIONS, paths=_PATHS, parse=parse_config)
