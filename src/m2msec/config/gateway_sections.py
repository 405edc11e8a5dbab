"""The gateway's ``[certificates]``, ``[gba]``, ``[maf]``, ``[mef]`` and ``[sa]`` sections.

``[certificates]`` is our certificate, key and trust anchors (TS-0003 8.2.2.2), with an
optional IdA list and CRL; parsing it stays in :mod:`m2msec.config.gateway`.
``[gba]`` makes the gateway a NAF (seed 000 8.2.3.2): the BSF's Zn listener and names, our
Zn certificate; ``[maf]`` makes it Entity B of the MAF-based framework (TS-0003 8.2.2.3):
the Key Retrieval listener (8.8.2.8) of each MAF by FQDN; ``[mef]`` makes it an Enrolee B
of seed 004 (TS-0003 8.3.2.1): the MEF's target listener for fetchCredentials, or for
MEF Key Retrieval (V3.18 8.3.5.2.8) with ``retrieval = "key-retrieval"``. Each takes
our certificate, key and CA from ``[certificates]`` unless given. ``[sa]`` is where the
gateway, the Responder of seed 003, keeps its SA records and serves the operator's admin
API (docs/sa.md). The keys are shown in :mod:`m2msec.config.gateway`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from m2msec.config.listeners import parse_service_url
from m2msec.config.values import boolean, file_path, invalid, number, target_retrieval
from m2msec.errors import CertificateError, ConfigurationError, IdentifierError
from m2msec.ids import CseId, check_fqdn
from m2msec.mef.wire import TargetRetrieval
from m2msec.pki.names import in_domain_of

__all__ = [
    "CertificateConfig",
    "GbaConfig",
    "MafRetrievalConfig",
    "MefTargetConfig",
    "SaConfig",
    "certificate_in_domain",
    "parse_gba",
    "parse_maf",
    "parse_mef",
    "parse_sa",
]

#: ``[sa] retention`` by default: 90 days, in seconds (the SA record store's default).
DEFAULT_SA_RETENTION = 90 * 86400.0
#: Seconds between two re-validations of a live MAF or MEF SA's key at its function.
DEFAULT_REVALIDATE_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class SaConfig:
    """``[sa]``: the SA records of the gateway as Responder and its admin socket.

    ``store`` None is ``sa.db`` in the data directory; a path, ``sqlite:///...`` or
    ``postgresql://...`` otherwise. ``retention`` (seconds) is how long ended SAs and the
    history are kept; 0 keeps everything. ``admin_socket`` None is
    :func:`m2msec.paths.default_admin_socket`, ``""`` turns the admin API off.
    ``instance`` names this gateway in a store it shares (default ``<host>:<data dir>``):
    a gateway starting closes the records its own previous run left live.
    ``revalidate_interval`` (seconds, > 0) is how often the sweep asks the MAF (Key
    Retrieval) or the MEF again for the key of each live MAF / MEF SA (docs/sa.md).
    """

    store: str | None = None
    retention: float = DEFAULT_SA_RETENTION
    admin_socket: str | None = None
    instance: str | None = None
    revalidate_interval: float = DEFAULT_REVALIDATE_INTERVAL


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
    name, our Zn certificate credential, and whether only GBA_U is accepted
    (docs/readings.md A-08)."""

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
class MefTargetConfig:
    """``[mef]``: the gateway as Enrolee B (seed 004, TS-0003 8.3.2.1).

    ``fqdn`` is the MEF-FQDN its KeIDs name (10.3.4) and its certificate names (10.1.1.6);
    ``host``/``port`` its target listener, where fetchCredentials runs over mutual TLS
    with ``cert``/``key``/``ca`` (our CSE-ID certificate). KeIDs of other MEFs are refused
    without a network call; fetched Kpsa are cached (``cache_size``) until they expire;
    each fetch takes at most ``timeout`` seconds (the handshake waiting on it fails then).
    ``retrieval`` is the procedure asked: the seed's fetchCredentials (the default) or
    V3.18's MEF Key Retrieval (8.3.5.2.8); the MEF answers both alike (docs/mef.md 3b).
    """

    fqdn: str
    host: str
    port: int
    cert: Path
    key: Path
    ca: Path
    cache_size: int = 1024
    timeout: float = 5.0
    retrieval: TargetRetrieval = TargetRetrieval.FETCH_CREDENTIALS


def parse_gba(
    section: Mapping[str, Any],
    base: Path,
    cse_id: CseId,
    in_domain: str | None,
    certificates: CertificateConfig | None,
) -> GbaConfig:
    """Validate ``[gba]`` (module docstring)."""
    bsf_host, bsf_port, bsf_fqdn = parse_service_url(
        section.get("zn"), "gba.zn", section.get("bsf_fqdn"), "gba.bsf_fqdn", "BSF's Zn listener"
    )
    naf_fqdn = section.get("naf_fqdn")
    try:
        if naf_fqdn is None:
            if in_domain is None:
                raise IdentifierError("give naf_fqdn, or gateway.in_domain for the default")
            naf_fqdn = cse_id.public_domain_name(in_domain)
        elif not isinstance(naf_fqdn, str):
            raise IdentifierError("must be a host name")
        naf_fqdn = check_fqdn(naf_fqdn, "NAF FQDN")
    except IdentifierError as exc:
        raise invalid("gba.naf_fqdn", str(exc)) from None
    files = _credential_files(
        section, "gba", base, certificates, "Zn needs our certificate (or a [certificates])"
    )
    return GbaConfig(
        bsf_host=bsf_host,
        bsf_port=bsf_port,
        bsf_fqdn=bsf_fqdn,
        naf_fqdn=naf_fqdn.lower(),
        cert=files["cert"],
        key=files["key"],
        ca=files["ca"],
        require_uicc=boolean(section.get("require_uicc", False), "gba.require_uicc"),
    )


def parse_maf(
    section: Mapping[str, Any],
    base: Path,
    in_domain: str | None,
    certificates: CertificateConfig | None,
) -> MafRetrievalConfig:
    """Validate ``[maf]`` (module docstring)."""
    raw = section.get("addresses")
    if not isinstance(raw, dict) or not raw:
        raise invalid(
            "maf.addresses",
            'missing: the MAFs by FQDN, e.g. { "maf.provider.com" = "127.0.0.1:8445" }',
        )
    addresses: dict[str, tuple[str, str, int]] = {}
    for fqdn, value in raw.items():
        key = f"maf.addresses.{fqdn}"
        try:
            check_fqdn(fqdn, "MAF FQDN")
        except IdentifierError as exc:
            raise invalid(key, str(exc)) from None
        if fqdn.lower() in addresses:
            raise invalid(key, "repeats a MAF FQDN (FQDNs compare case-insensitively)")
        host: str | None = None
        port: int | None = None
        if isinstance(value, str):
            try:
                parts = urlsplit("//" + value)
                host, port = parts.hostname, parts.port
            except ValueError:
                host = None
        if not host or not port:
            raise invalid(key, f"{value!r}: write 'HOST:PORT' of the MAF's retrieval listener")
        addresses[fqdn.lower()] = (fqdn.lower(), host, port)
    client = _fetch_client(section, "maf", base, in_domain, certificates, "Key Retrieval", "MAF")
    return MafRetrievalConfig(addresses=tuple(addresses.values()), **client)


def parse_mef(
    section: Mapping[str, Any],
    base: Path,
    in_domain: str | None,
    certificates: CertificateConfig | None,
) -> MefTargetConfig:
    """Validate ``[mef]`` (module docstring)."""
    host, port, fqdn = parse_service_url(
        section.get("url"), "mef.url", section.get("fqdn"), "mef.fqdn", "MEF's target listener"
    )
    client = _fetch_client(section, "mef", base, in_domain, certificates, "fetchCredentials", "MEF")
    retrieval = target_retrieval(section.get("retrieval"), "mef.retrieval")
    return MefTargetConfig(fqdn=fqdn, host=host, port=port, retrieval=retrieval, **client)


def _fetch_client(
    section: Mapping[str, Any],
    name: str,
    base: Path,
    in_domain: str | None,
    certificates: CertificateConfig | None,
    procedure: str,
    peer: str,
) -> dict[str, Any]:
    """What ``[maf]`` and ``[mef]`` share: our certificate for the mutual TLS (its CSE-ID
    under ``in_domain``), the cache size and the timeout of each request."""
    why = f"{procedure} needs our certificate (or [certificates])"
    files = _credential_files(section, name, base, certificates, why)
    if in_domain is None:
        raise invalid(
            "gateway.in_domain",
            f"needed with [{name}]: our certificate names <CSE-ID>.<in_domain> to the {peer}",
        )
    return {
        **files,
        "cache_size": int(
            number(section.get("cache_size", 1024), f"{name}.cache_size", integer=True)
        ),
        "timeout": float(number(section.get("timeout", 5.0), f"{name}.timeout")),
    }


def _credential_files(
    section: Mapping[str, Any],
    name: str,
    base: Path,
    certificates: CertificateConfig | None,
    why: str,
) -> dict[str, Path]:
    """``cert``, ``key`` and ``ca`` of a section, each defaulting to ``[certificates]``'."""
    files: dict[str, Path] = {}
    for item in ("cert", "key", "ca"):
        if item in section:
            files[item] = file_path(section[item], f"{name}.{item}", base)
        elif certificates is not None:
            files[item] = getattr(certificates, item)
        else:
            raise invalid(f"{name}.{item}", f"missing: {why}")
    return files


def parse_sa(section: Mapping[str, Any]) -> SaConfig:
    """Validate ``[sa]`` (:class:`SaConfig`); relative paths were made absolute already."""

    def text(key: str, *, empty: bool = False) -> str | None:
        value = section.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or (not value and not empty):
            what = "a path or '' (no admin socket)" if empty else "a non-empty string"
            raise invalid(f"sa.{key}", f"must be {what}")
        return value

    retention = float(number(section.get("retention", DEFAULT_SA_RETENTION), "sa.retention"))
    if retention < 0:
        raise invalid("sa.retention", "seconds to keep ended SAs and history (0: keep all)")
    interval = float(
        number(
            section.get("revalidate_interval", DEFAULT_REVALIDATE_INTERVAL),
            "sa.revalidate_interval",
        )
    )
    if not interval > 0:
        raise invalid("sa.revalidate_interval", "seconds between re-validations (> 0)")
    return SaConfig(
        store=text("store"),
        retention=retention,
        admin_socket=text("admin_socket", empty=True),
        instance=text("instance"),
        revalidate_interval=interval,
    )


def certificate_in_domain(data: Mapping[str, Any], base: Path, cse_id: CseId | None) -> str | None:
    """The IN public domain the gateway's own certificate names (``[certificates]``, else
    ``[maf]``, ``[mef]`` or ``[gba]`` ``cert``): :func:`m2msec.pki.names.in_domain_of`
    (TS-0003 10.1.1.7); None when no section names a certificate. The default of
    ``[gateway] in_domain`` (:mod:`m2msec.config.gateway`)."""
    for section in ("certificates", "maf", "mef", "gba"):
        table = data.get(section)
        if not isinstance(table, dict) or not {"cert", "key"} <= set(table):
            continue
        try:
            path = file_path(table["cert"], f"{section}.cert", base)
        except ConfigurationError:
            continue  # the section's own checks name the error
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise invalid(
                "gateway.in_domain",
                f"not given, and {section}.cert ({path}) holds no PEM certificate to read it "
                f"from ({exc})",
            ) from None
        try:
            return in_domain_of(cert, cse_id)
        except CertificateError as exc:
            raise invalid(
                "gateway.in_domain", f"not given, and {section}.cert ({path}): {exc}"
            ) from None
    return None
