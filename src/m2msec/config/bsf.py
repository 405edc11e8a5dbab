"""Configuration of the BSF (3GPP TS 33.220 4.2.1, TS-0003 8.3; ``m2msec bsf serve``):
:class:`BsfConfig`, read from TOML by :func:`load_bsf_config` (keys: see
:mod:`m2msec.servers.bsf`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from m2msec.config.loader import load
from m2msec.config.metrics import METRICS_KEYS, MetricsListen, parse_metrics
from m2msec.config.values import file_path
from m2msec.errors import (
    ConfigurationError,
    IdentifierError,
)
from m2msec.gba.aka import DEFAULT_IND_BITS
from m2msec.ids import check_fqdn
from m2msec.service.limits import DEFAULT_REQUEST_HEAD_TIMEOUT

DEFAULT_KS_LIFETIME: Final = 3600.0
DEFAULT_CHALLENGE_TIMEOUT: Final = 60.0
DEFAULT_MAX_PENDING: Final = 10_000

_SECONDS: Final = (
    "ks_lifetime",
    "challenge_timeout",
    "handshake_timeout",
    "idle_timeout",
    "request_head_timeout",
)
"""The durations (seconds, all > 0), checked in :class:`BsfConfig` and read as floats."""


@dataclass(frozen=True, slots=True)
class BsfConfig:
    """The BSF's configuration (module docstring); ``listen``/``zn_listen`` are
    ``(host, port)`` pairs (port 0: any free port)."""

    fqdn: str
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 8090),)
    zn_listen: tuple[tuple[str, int], ...] = ()
    store: Path | str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    ks_lifetime: float = DEFAULT_KS_LIFETIME
    challenge_timeout: float = DEFAULT_CHALLENGE_TIMEOUT
    max_pending: int = DEFAULT_MAX_PENDING
    max_pending_per_impi: int = 2
    ub_rate: float = 10.0
    ub_burst: int = 50
    ind_bits: int = DEFAULT_IND_BITS
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    request_head_timeout: float = DEFAULT_REQUEST_HEAD_TIMEOUT
    max_handshakes: int = 1024
    metrics: MetricsListen | None = None
    source: str = "<defaults>"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "fqdn", check_fqdn(self.fqdn, "BSF FQDN").lower())
        except IdentifierError as exc:
            raise ConfigurationError(f"bsf.fqdn: {exc}") from None
        if self.zn_listen and None in (self.cert, self.key, self.ca):
            raise ConfigurationError(
                "bsf.zn_listen needs cert, key and ca (Zn is mutually authenticated TLS)"
            )
        for name in _SECONDS:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"bsf.{name} must be greater than 0")
        if self.max_pending < 1 or self.max_handshakes < 1:
            raise ConfigurationError("bsf.max_pending and bsf.max_handshakes must be >= 1")
        if self.max_pending_per_impi < 1 or self.ub_burst < 1 or self.ub_rate <= 0:
            raise ConfigurationError(
                "bsf.max_pending_per_impi and bsf.ub_burst must be >= 1, bsf.ub_rate > 0"
            )
        if not 0 <= self.ind_bits <= 16:
            raise ConfigurationError("bsf.ind_bits must be 0 to 16")
        if not self.listen and not self.zn_listen:
            raise ConfigurationError("bsf.listen: give at least one Ub or Zn listener")


_KEYS: Final = frozenset(
    {
        "fqdn",
        "listen",
        "zn_listen",
        "store",
        "cert",
        "key",
        "ca",
        "ks_lifetime",
        "challenge_timeout",
        "max_pending",
        "max_pending_per_impi",
        "ub_rate",
        "ub_burst",
        "ind_bits",
        "handshake_timeout",
        "idle_timeout",
        "request_head_timeout",
        "max_handshakes",
    }
)


def _listen(value: object, key: str, scheme: str) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigurationError(f"{key}: a list of {scheme}://HOST:PORT URLs")
    out = []
    for i, url in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(url, str):
            raise ConfigurationError(f"{where}: must be a {scheme}://HOST:PORT URL")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"{where}: {url!r} is not a valid URL: {exc}") from None
        if parts.scheme.lower() != scheme:
            raise ConfigurationError(f"{where}: {url!r} must start with {scheme}://")
        if not parts.hostname or port is None:
            raise ConfigurationError(f"{where}: {url!r} needs a host and a port")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ConfigurationError(f"{where}: only {scheme}://HOST:PORT is allowed")
        if ":" in parts.hostname:
            try:
                ipaddress.IPv6Address(parts.hostname)
            except ValueError:
                raise ConfigurationError(f"{where}: {parts.hostname!r} is not IPv6") from None
        out.append((parts.hostname, port))
    return tuple(out)


def _positive(value: object, key: str, *, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        raise ConfigurationError(f"{key}: must be {'an integer' if integer else 'a number'}")
    assert isinstance(value, int | float)
    if value < 0 or (value == 0 and key != "bsf.ind_bits"):
        raise ConfigurationError(f"{key}: must be greater than 0")
    return value


def parse_bsf_config(
    data: Mapping[str, Any], *, base_dir: Path | None = None, source: str = "<config>"
) -> BsfConfig:
    """Validate a parsed TOML document (``{"bsf": {...}}``)."""
    import difflib

    base = base_dir or Path.cwd()
    unknown_sections = set(data) - {"bsf", "metrics"}
    if unknown_sections:
        raise ConfigurationError(
            f"unknown section [{sorted(unknown_sections)[0]}] (only [bsf] and [metrics])"
        )
    section = data.get("bsf", {})
    if not isinstance(section, dict):
        raise ConfigurationError("bsf: must be a table ([bsf])")
    for name in section:
        if name not in _KEYS:
            hint = difflib.get_close_matches(name, sorted(_KEYS), n=1)
            more = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigurationError(f"unknown key 'bsf.{name}'{more}")
    fqdn = section.get("fqdn")
    if not isinstance(fqdn, str) or not fqdn:
        raise ConfigurationError(
            "bsf.fqdn: missing: the BSF's FQDN (realm and B-TID domain), e.g. 'bsf.in.provider.com'"
        )
    kwargs: dict[str, Any] = {"fqdn": fqdn, "source": source}
    kwargs["metrics"] = parse_metrics(data.get("metrics"))
    if "listen" in section:
        kwargs["listen"] = _listen(section["listen"], "bsf.listen", "http")
    if "zn_listen" in section:
        kwargs["zn_listen"] = _listen(section["zn_listen"], "bsf.zn_listen", "tls")
    store = section.get("store")
    if store is not None:
        if not isinstance(store, str) or not store:
            raise ConfigurationError("bsf.store: must be a file path or a store URL")
        if "://" in store:
            kwargs["store"] = store  # sqlite:///abs or postgresql://, m2msec.store.db
        else:
            path = Path(store).expanduser()
            kwargs["store"] = path if path.is_absolute() else base / path
    for name in ("cert", "key", "ca"):
        if name in section:
            kwargs[name] = file_path(section[name], f"bsf.{name}", base)
    for name in (*_SECONDS, "ub_rate"):
        if name in section:
            kwargs[name] = float(_positive(section[name], f"bsf.{name}"))
    for name in ("max_pending", "max_pending_per_impi", "ub_burst", "ind_bits", "max_handshakes"):
        if name in section:
            kwargs[name] = int(_positive(section[name], f"bsf.{name}", integer=True))
    return BsfConfig(**kwargs)


def load_bsf_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> BsfConfig:
    """Read ``path`` (TOML) if given, apply ``overrides`` (``{"bsf.fqdn": ...}``, None
    values ignored) and validate, through :func:`m2msec.config.loader.load`."""
    paths = [("bsf", name) for name in ("store", "cert", "key", "ca")]
    sections = {"bsf": _KEYS, "metrics": METRICS_KEYS}
    return load(path, overrides, sections=sections, paths=paths, parse=parse_bsf_config)
