"""Configuration of the MEF server (TS-0003 8.3.2.1, seed 004; ``m2msec mef serve``):
:class:`MefConfig`, read from TOML by :func:`load_mef_config` (keys: see
:func:`parse_mef_config` and docs/mef.md section 7)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from m2msec.config.listeners import FrameworkName, ListenerSpec, parse_listen_url
from m2msec.config.loader import load
from m2msec.config.metrics import METRICS_KEYS, MetricsListen, parse_metrics
from m2msec.config.values import (
    CERTIFICATE_KEYS,
    SERVICE_KEYS,
    ServiceConfig,
    check_service_config,
    service_paths,
    typed_tables,
)
from m2msec.errors import ConfigurationError

__all__ = [
    "DEFAULT_ENROLEE_LISTEN",
    "DEFAULT_TARGET_LISTEN",
    "MefConfig",
    "load_mef_config",
    "parse_mef_config",
]

DEFAULT_ENROLEE_LISTEN: Final = ("tls://127.0.0.1:8446",)
DEFAULT_TARGET_LISTEN: Final = "tls://127.0.0.1:8447"

#: The bootstrap credentials an Enrolee listener takes (``?framework=``): TLS-PSK with
#: KpmID/Kpm (8.3.2.1) or certificates (8.3.2.2); PSK when not named.
_ENROLEE_FRAMEWORKS: Final = ("psk", "certificate")


@dataclass(frozen=True, slots=True, kw_only=True)
class MefConfig(ServiceConfig):
    """Everything ``m2msec mef serve`` needs (TOML: see :func:`parse_mef_config`).

    ``enrolee_listen`` lists the Enrolee listeners, ``tls://`` or ``dtls://HOST:PORT``, each
    with ``?framework=psk`` (the default) or ``?framework=certificate``; ``target_listen``
    None turns fetchCredentials off. ``cert``/``key``/``ca`` are the MEF's FQDN certificate
    (10.1.1.6) and the trust anchors of targets and certificate Enrolees; ``in_domain`` the
    IN public domain under which their certificates name CSE-IDs (default: the MEF FQDN
    without its first label), ``sp_fqdn`` the M2M-SP FQDN of SP-relative ids (default
    ``in_domain``). Durations are seconds.
    """

    enrolee_listen: tuple[str, ...] = DEFAULT_ENROLEE_LISTEN
    target_listen: str | None = DEFAULT_TARGET_LISTEN
    metrics: MetricsListen | None = None
    """``[metrics] listen``: the metrics listener (:mod:`m2msec.config.metrics`), off if None."""

    def __post_init__(self) -> None:
        durations = ("handshake_timeout", "idle_timeout", "request_head_timeout", "purge_interval")
        check_service_config(self, "MEF FQDN", durations)
        if not self.enrolee_listen:
            raise ConfigurationError("mef.enrolee_listen: give at least one Enrolee listener")
        specs = self.enrolee_listeners() + ([self.target_listener()] if self.target_listen else [])
        if any(s.framework == "certificate" for s in specs) or self.target_listen:
            missing = [n for n in ("cert", "key", "ca") if getattr(self, n) is None]
            if missing:
                raise ConfigurationError(
                    "the target listener and certificate Enrolees need the MEF's certificate: "
                    "give " + ", ".join(f"--{n}" for n in missing) + " ([certificates] in the "
                    'config file), or turn fetchCredentials off (target_listen = "")'
                )

    def enrolee_listeners(self) -> list[ListenerSpec]:
        """The Enrolee listeners, each with its framework ("psk" or "certificate")."""
        specs = []
        for i, url in enumerate(self.enrolee_listen):
            key = f"mef.enrolee_listen[{i}]"
            spec = parse_listen_url(url, key)
            if spec.scheme not in ("tls", "dtls"):
                raise ConfigurationError(f"{key}: {url!r}: tls:// or dtls://HOST:PORT only")
            framework: FrameworkName = spec.framework or "psk"
            if framework not in _ENROLEE_FRAMEWORKS:
                raise ConfigurationError(
                    f"{key}: {url!r}: an Enrolee bootstraps with framework=psk or certificate"
                )
            if spec.scheme == "dtls" and framework != "psk":
                raise ConfigurationError(f"{key}: {url!r}: dtls:// bootstraps with TLS-PSK only")
            specs.append(ListenerSpec(spec.url, spec.scheme, spec.host, spec.port, framework))
        return specs

    def target_listener(self) -> ListenerSpec:
        assert self.target_listen is not None
        spec = parse_listen_url(self.target_listen, "mef.target_listen")
        if spec.scheme != "tls" or spec.framework is not None:
            raise ConfigurationError(
                f"mef.target_listen: {self.target_listen!r}: tls://HOST:PORT only (mutual TLS)"
            )
        return spec


_KEYS: Final[dict[str, dict[str, type]]] = {
    "mef": {
        **SERVICE_KEYS,
        "enrolee_listen": list,
        "target_listen": str,
    },
    "certificates": dict(CERTIFICATE_KEYS),
}
_PATHS: Final = service_paths("mef")


def parse_mef_config(
    data: Mapping[str, Any], *, base_dir: Path | None = None, source: str = "<config>"
) -> MefConfig:
    """Validate a TOML document::

        [mef]
        fqdn = "mef.in.provider.com"                   # required: the MEF-FQDN of KeIDs
        enrolee_listen = ["tls://0.0.0.0:8446",        # bootstrap, TLS-PSK (KpmID/Kpm)
                          "tls://0.0.0.0:8448?framework=certificate",
                          "dtls://0.0.0.0:5686"]       # TLS-PSK over DTLS 1.2, CoAP
        target_listen = "tls://0.0.0.0:8447"           # fetchCredentials (mutual TLS); "" = off
        store = "mef.db"                               # or sqlite:/// or postgresql:// URL
        in_domain = "in.provider.com"                  # CSE public domain names

        [certificates]                                 # the MEF's FQDN certificate (10.1.1.6)
        cert = "mef.pem"
        key = "mef.key"
        ca = "ca.pem"                                  # authenticates targets, Enrolees
        crl = "crl.pem"                                # optional

    Relative paths are read from ``base_dir``. A single string is taken for
    ``enrolee_listen`` too (as ``--enrolee-listen`` gives it).
    """
    table = data.get("mef")
    if isinstance(table, Mapping) and isinstance(table.get("enrolee_listen"), str):
        data = {**data, "mef": {**table, "enrolee_listen": [table["enrolee_listen"]]}}
    data = dict(data)
    metrics = parse_metrics(data.pop("metrics", None))
    values = typed_tables(data, _KEYS, _PATHS, base_dir or Path.cwd())
    if not values.get("fqdn"):
        raise ConfigurationError("mef.fqdn is missing: the MEF's FQDN, e.g. mef.in.provider.com")
    if "enrolee_listen" in values:
        values["enrolee_listen"] = tuple(values["enrolee_listen"])
    if values.get("target_listen") == "":
        values["target_listen"] = None
    return MefConfig(source=source, metrics=metrics, **values)


def load_mef_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> MefConfig:
    """Read ``path`` (TOML) if given and apply ``overrides`` (``{"mef.fqdn": ...}``; None
    values ignored) through :func:`m2msec.config.loader.load`."""
    sections = {**_KEYS, "metrics": METRICS_KEYS}
    return load(path, overrides, sections=sections, paths=_PATHS, parse=parse_mef_config)
