"""Checks of single configuration values, shared by the gateway's sections.

Each raises :class:`~m2msec.errors.ConfigurationError` naming the dotted key
(``gateway.listen[1]: ...``, ``unknown key 'gateway.lisen' (did you mean 'listen'?)``).
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import check_fqdn
from m2msec.mef.wire import TargetRetrieval
from m2msec.service.limits import DEFAULT_REQUEST_HEAD_TIMEOUT

__all__ = [
    "CERTIFICATE_KEYS",
    "SERVICE_KEYS",
    "ServiceConfig",
    "boolean",
    "check_service_config",
    "file_path",
    "invalid",
    "is_ip",
    "number",
    "service_paths",
    "target_retrieval",
    "typed_tables",
    "unknown_key",
]


def unknown_key(key: str, known: frozenset[str] | set[str], where: str) -> ConfigurationError:
    hint = difflib.get_close_matches(key, sorted(known), n=1)
    dotted = f"{where}.{key}" if where else key
    more = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(sorted(known))})"
    return ConfigurationError(f"unknown key '{dotted}'{more}")


def invalid(key: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{key}: {message}")


def target_retrieval(value: object, key: str) -> TargetRetrieval:
    """How an Enrolment Target asks the MEF (the gateway's ``mef.retrieval``, the MAF's
    ``maf.mef_retrieval``): "fetch-credentials" (also when absent) or "key-retrieval"."""
    if value is None:
        return TargetRetrieval.FETCH_CREDENTIALS
    try:
        return TargetRetrieval(value if isinstance(value, str) else "")
    except ValueError:
        names = " or ".join(repr(r.value) for r in TargetRetrieval)
        raise invalid(key, f"must be {names}, got {value!r}") from None


def number(value: object, key: str, *, integer: bool = False) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise invalid(key, f"must be {kind}, got {value!r}")
    assert isinstance(value, int | float)
    if value <= 0:
        raise invalid(key, f"must be greater than 0, got {value!r}")
    return value


def boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(key, f"must be true or false, got {value!r}")
    return value


def file_path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise invalid(key, "must be a file path")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise invalid(key, f"no such file: {path}")
    return path


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def typed_tables(
    data: Mapping[str, Any],
    kinds: Mapping[str, Mapping[str, type]],
    paths: Collection[tuple[str, str]],
    base: Path,
) -> dict[str, Any]:
    """The keys of a document of flat tables (``[maf]``/``[mef]`` and ``[certificates]``)
    as one ``{key: value}``: unknown tables and keys refused, each value of its ``kinds``
    type (``float`` takes integers, ``int`` refuses booleans; ``list`` is a list of
    strings), None values skipped, relative file ``paths`` read under ``base``."""
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in kinds:
            known = ", ".join(kinds)
            raise ConfigurationError(f"unknown section [{section}] (known: {known})")
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"[{section}] must be a table")
        for key, value in table.items():
            table_kinds = kinds[section]
            if key not in table_kinds:
                raise ConfigurationError(
                    f"unknown key '{section}.{key}' (known: {', '.join(sorted(table_kinds))})"
                )
            if value is None:
                continue
            kind = table_kinds[key]
            if kind is float:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            elif kind is list:
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            else:
                ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if not ok:
                raise ConfigurationError(f"{section}.{key} must be {kind.__name__}, not {value!r}")
            if (
                (section, key) in paths
                and isinstance(value, str)
                and value
                and "://" not in value
                and not Path(value).expanduser().is_absolute()
            ):
                value = str(base / Path(value).expanduser())
            values[key] = value
    return values


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The settings every TLS service named by its FQDN shares (the MAF's, the MEF's
    configuration): its FQDN and store, its FQDN certificate (10.1.1.6) with key, trust
    anchors and an optional CRL (reloaded on change), the domains of its peers' names, and
    the limits of its listeners. Durations are seconds.

    ``in_domain`` is the IN public domain of CSE certificates, by default the FQDN without
    its first label; ``sp_fqdn`` the M2M-SP FQDN of SP-relative ids, by default that domain.
    """

    fqdn: str
    store: str | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    ca: str | Path | None = None
    crl: str | Path | None = None
    in_domain: str | None = None
    sp_fqdn: str | None = None
    tls13: bool = True
    handshake_timeout: float = 10.0
    max_handshakes: int = 1024
    idle_timeout: float = 120.0
    request_head_timeout: float = DEFAULT_REQUEST_HEAD_TIMEOUT
    max_body: int = 64 * 1024
    purge_interval: float = 3600.0
    source: str = "<arguments>"

    @property
    def effective_in_domain(self) -> str:
        return self.in_domain or self.fqdn.split(".", 1)[1]

    @property
    def effective_sp_fqdn(self) -> str:
        return self.sp_fqdn or self.effective_in_domain


def check_service_config(config: Any, what: str, durations: Iterable[str]) -> None:
    """The checks the MAF's and the MEF's configurations share: ``fqdn`` (``what``, two
    labels at least), ``in_domain`` and ``sp_fqdn`` FQDNs when given, each of ``durations``
    above 0, ``max_handshakes`` >= 1 and ``max_body`` >= 1024."""
    try:
        check_fqdn(config.fqdn, what)
        for name in ("in_domain", "sp_fqdn"):
            value = getattr(config, name)
            if value is not None:
                check_fqdn(value, name)
    except IdentifierError as exc:
        raise ConfigurationError(str(exc)) from None
    if "." not in config.fqdn:
        raise ConfigurationError(f"{what} {config.fqdn!r} needs at least two labels")
    for name in durations:
        if not getattr(config, name) > 0:
            raise ConfigurationError(f"{name} must be greater than 0")
    if config.max_handshakes < 1 or config.max_body < 1024:
        raise ConfigurationError("max_handshakes must be >= 1 and max_body >= 1024")


#: The keys a TLS service's own table takes (the MAF's ``[maf]``, the MEF's ``[mef]``), with
#: their types for :func:`typed_tables`; each service adds its listeners and its own keys.
SERVICE_KEYS: Final[Mapping[str, type]] = {
    "fqdn": str,
    "store": str,
    "in_domain": str,
    "sp_fqdn": str,
    "tls13": bool,
    "handshake_timeout": float,
    "max_handshakes": int,
    "idle_timeout": float,
    "request_head_timeout": float,
    "max_body": int,
    "purge_interval": float,
}
#: Their ``[certificates]`` table: the service's FQDN certificate, its key, the CA, a CRL.
CERTIFICATE_KEYS: Final[Mapping[str, type]] = {"cert": str, "key": str, "ca": str, "crl": str}


def service_paths(section: str, *files: str) -> frozenset[tuple[str, str]]:
    """The file keys of a service's configuration, read relative to its file: its
    ``store`` and ``files`` in ``[section]``, and every key of ``[certificates]``."""
    return frozenset(
        {(section, "store"), *((section, f) for f in files)}
        | {("certificates", key) for key in CERTIFICATE_KEYS}
    )

