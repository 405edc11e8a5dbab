"""The gateway's ``[certificates]``, ``[gba]`` and ``[maf]`` sections (their values).

``[certificates]`` is our certificate, key and trust anchors (TS-0003 8.2.2.2), with an
optional IdA list and CRL; parsing it stays in :mod:`m2msec.config.gateway`.
``[gba]`` makes the gateway a NAF (seed 000 8.2.3.2): the BSF's Zn listener and names, our
Zn certificate; ``[maf]`` makes it Entity B of the MAF-based framework (TS-0003 8.2.2.3):
the Key Retrieval listener (8.8.2.8) of each MAF by FQDN. Both take our certificate, key and
CA from ``[certificates]`` unless given. The keys are shown in :mod:`m2msec.config.gateway`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from m2msec.config.listeners import split_url
from m2msec.config.values import boolean, file_path, invalid, is_ip, number
from m2msec.errors import IdentifierError
from m2msec.ids import CseId, check_fqdn

__all__ = ["CertificateConfig", "GbaConfig", "MafRetrievalConfig", "parse_gba", "parse_maf"]


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


def parse_gba(
    section: Mapping[str, Any],
    base: Path,
    cse_id: CseId,
    in_domain: str | None,
    certificates: CertificateConfig | None,
) -> GbaConfig:
    """Validate ``[gba]`` (module docstring)."""
    zn, parts, port = split_url(
        section.get("zn"), "gba.zn", "missing: the BSF's Zn listener, e.g. 'tls://127.0.0.1:8444'"
    )
    if parts.scheme.lower() != "tls" or not parts.hostname or port is None:
        raise invalid("gba.zn", f"{zn!r}: write tls://HOST:PORT (Zn runs over mutual TLS)")
    bsf_fqdn = section.get("bsf_fqdn", parts.hostname)
    naf_fqdn = section.get("naf_fqdn")
    try:
        if not isinstance(bsf_fqdn, str) or is_ip(bsf_fqdn):
            raise IdentifierError("must be a host name, the one in the BSF's certificate")
        bsf_fqdn = check_fqdn(bsf_fqdn, "BSF FQDN")
    except IdentifierError as exc:
        raise invalid("gba.bsf_fqdn", f"{exc} (an IP address in zn needs bsf_fqdn)") from None
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
        bsf_host=parts.hostname,
        bsf_port=port,
        bsf_fqdn=bsf_fqdn.lower(),
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
    why = "Key Retrieval needs our certificate (or [certificates])"
    files = _credential_files(section, "maf", base, certificates, why)
    if in_domain is None:
        raise invalid(
            "gateway.in_domain",
            "needed with [maf]: our certificate names <CSE-ID>.<in_domain> to the MAF",
        )
    return MafRetrievalConfig(
        addresses=tuple(addresses.values()),
        cert=files["cert"],
        key=files["key"],
        ca=files["ca"],
        cache_size=int(number(section.get("cache_size", 1024), "maf.cache_size", integer=True)),
        timeout=float(number(section.get("timeout", 5.0), "maf.timeout")),
    )


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
