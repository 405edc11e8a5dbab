"""Configuration of the MAF server (TS-0003 8.8.2; ``m2msec maf serve``): :class:`MafConfig`,
read from TOML by :func:`load_maf_config` (keys: see :mod:`m2msec.servers.maf`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from m2msec.config.listeners import ListenerSpec, parse_listen_url, parse_service_url
from m2msec.config.loader import load
from m2msec.config.metrics import METRICS_KEYS, MetricsListen, parse_metrics
from m2msec.config.values import (
    CERTIFICATE_KEYS,
    SERVICE_KEYS,
    ServiceConfig,
    check_service_config,
    service_paths,
    target_retrieval,
    typed_tables,
)
from m2msec.errors import (
    ConfigurationError,
    IdentifierError,
)
from m2msec.maf import protocol as p
from m2msec.mef.wire import TargetRetrieval

DEFAULT_LISTEN: Final = "tls://127.0.0.1:8444"
DEFAULT_RETRIEVAL_LISTEN: Final = "tls://127.0.0.1:8445"


@dataclass(frozen=True, slots=True, kw_only=True)
class MafConfig(ServiceConfig):
    """Everything ``m2msec maf serve`` needs (TOML: see :func:`parse_maf_config`).

    ``retrieval_listen`` None disables Key Retrieval (and the need for ``cert``/``key``/
    ``ca``). ``in_domain`` is the IN public domain under which Entity B certificates name
    CSE-IDs (default: the MAF FQDN without its first label); ``sp_fqdn`` the M2M-SP FQDN
    under which SP-relative ids are read (default ``in_domain``). Lifetimes are seconds.
    ``audit_log`` defaults to ``audit.log`` beside the store. ``mef`` is the target
    listener (``tls://HOST:PORT``) of a MEF whose KeIDs the MAF Handshake accepts as KmIDs
    (seed 004, TS-0003 8.3.2.1: the MAF as Enrolment Target fetches Km, SUID 21, with its
    FQDN certificate); ``mef_fqdn`` is that MEF's FQDN (default: the URL's host) and
    ``mef_timeout`` bounds each fetch (the waiting handshake then fails); ``mef_retrieval``
    is the procedure asked, the seed's fetchCredentials (default, "fetch-credentials") or
    V3.18's MEF Key Retrieval ("key-retrieval", 8.3.5.2.8). ``mef_zn`` is the
    Zn listener (``tls://HOST:PORT``) of the MEF's BSF (the GBA bootstrap, seed 004 8.3.3.1):
    its B-TIDs are accepted as KmIDs, Km = Ks_NAF for the MAF's FQDN fetched over Zn;
    ``mef_bsf_fqdn`` is that BSF's FQDN (default: the URL's host).
    """

    listen: str = DEFAULT_LISTEN
    retrieval_listen: str | None = DEFAULT_RETRIEVAL_LISTEN
    key_lifetime: float = p.DEFAULT_KEY_LIFETIME.total_seconds()
    registration_lifetime: float = p.DEFAULT_REGISTRATION_LIFETIME.total_seconds()
    audit_log: str | None = None
    durability: str | None = None
    """"normal", "full", or None: "normal" for SQLite, "full" for PostgreSQL."""
    retention: float = 7 * 86400.0
    audit_retention: float = 400 * 86400.0
    mef: str | None = None
    mef_fqdn: str | None = None
    mef_timeout: float = 5.0
    mef_retrieval: TargetRetrieval = TargetRetrieval.FETCH_CREDENTIALS
    mef_zn: str | None = None
    mef_bsf_fqdn: str | None = None
    metrics: MetricsListen | None = None
    """``[metrics] listen``: the metrics listener (:mod:`m2msec.config.metrics`), off if None."""

    def __post_init__(self) -> None:
        check_service_config(
            self,
            "MAF FQDN",
            (
                "key_lifetime",
                "registration_lifetime",
                "handshake_timeout",
                "idle_timeout",
                "request_head_timeout",
                "purge_interval",
                "mef_timeout",
            ),
        )
        if self.retention < 0 or self.audit_retention < 0:
            raise ConfigurationError("retention and audit_retention must be >= 0")
        if self.durability not in (None, "full", "normal"):
            raise ConfigurationError("durability must be 'full' or 'normal'")
        retrieval = target_retrieval(self.mef_retrieval, "maf.mef_retrieval")
        object.__setattr__(self, "mef_retrieval", retrieval)
        if self.mef is not None or self.mef_fqdn is not None:
            self.mef_target()  # ConfigurationError now rather than at start
        if self.mef_zn is not None or self.mef_bsf_fqdn is not None:
            self.mef_zn_target()

    def mef_target(self) -> tuple[str, int, str] | None:
        """(host, port, MEF-FQDN) of ``mef``, or None without one."""
        return _peer(self.mef, "mef", self.mef_fqdn, "mef_fqdn", "MEF's target listener")

    def mef_zn_target(self) -> tuple[str, int, str] | None:
        """(host, port, BSF FQDN) of ``mef_zn``, or None without one."""
        return _peer(self.mef_zn, "mef_zn", self.mef_bsf_fqdn, "mef_bsf_fqdn", "BSF's Zn listener")

    @property
    def effective_durability(self) -> str:
        if self.durability is not None:
            return self.durability
        store = (self.store or "").lower()
        return "full" if store.startswith(("postgresql:", "postgres:")) else "normal"

    def policy(self) -> p.MafPolicy:
        try:
            return p.MafPolicy(
                fqdn=self.fqdn,
                sp_fqdn=self.effective_sp_fqdn,
                key_lifetime=timedelta(seconds=self.key_lifetime),
                registration_lifetime=timedelta(seconds=self.registration_lifetime),
            )
        except IdentifierError as exc:
            raise ConfigurationError(f"MAF FQDN: {exc}") from None

    def listener(self, which: str) -> ListenerSpec:
        url = self.listen if which == "listen" else self.retrieval_listen
        assert url is not None
        spec = parse_listen_url(url, f"maf.{which}")
        if spec.scheme != "tls" or spec.framework is not None:
            raise ConfigurationError(
                f"maf.{which}: {url!r}: the MAF listens on tls://HOST:PORT only"
            )
        return spec


def _peer(
    url: str | None, url_key: str, fqdn: str | None, fqdn_key: str, what: str
) -> tuple[str, int, str] | None:
    """(host, port, FQDN) of the peer at ``url`` (named ``fqdn``, default its host), or None."""
    if url is None:
        if fqdn is not None:
            raise ConfigurationError(f"maf.{fqdn_key}: give maf.{url_key}, the {what}")
        return None
    return parse_service_url(url, f"maf.{url_key}", fqdn, f"maf.{fqdn_key}", what)


_KEYS: Final[dict[str, dict[str, type]]] = {
    "maf": {
        **SERVICE_KEYS,
        "listen": str,
        "retrieval_listen": str,
        "key_lifetime": float,
        "registration_lifetime": float,
        "audit_log": str,
        "audit_retention": float,
        "durability": str,
        "retention": float,
        "mef": str,
        "mef_fqdn": str,
        "mef_timeout": float,
        "mef_retrieval": str,
        "mef_zn": str,
        "mef_bsf_fqdn": str,
    },
    "certificates": dict(CERTIFICATE_KEYS),
}
_PATHS: Final = service_paths("maf", "audit_log")


def parse_maf_config(
    data: Mapping[str, Any], *, base_dir: Path | None = None, source: str = "<config>"
) -> MafConfig:
    """Validate a TOML document::

        [maf]
        fqdn = "maf.in.provider.com"                 # required
        listen = "tls://0.0.0.0:8444"                # MAF Handshake (TLS-PSK, KmId/Km)
        retrieval_listen = "tls://0.0.0.0:8445"      # Key Retrieval (mutual TLS); "" = off
        store = "maf.db"                             # or sqlite:///abs/path
        in_domain = "in.provider.com"                # CSE public domain names of Entity Bs
        key_lifetime = 86400                         # longest Kc lifetime granted (s)
        registration_lifetime = 2592000              # longest client registration (s)
        audit_log = "audit.log"                      # default: beside the store
        mef = "tls://127.0.0.1:8447"                 # a MEF's target listener: its KeIDs
        mef_fqdn = "mef.in.provider.com"             #   are KmIDs here (Km fetched, SUID 21)
        mef_retrieval = "fetch-credentials"          #   or "key-retrieval" (8.3.5.2.8)
        mef_zn = "tls://127.0.0.1:8081"              # the MEF's BSF (Zn): its B-TIDs are
        mef_bsf_fqdn = "mef.in.provider.com"         #   KmIDs here (Km = Ks_NAF over Zn)

        [certificates]                               # the MAF's FQDN certificate (10.1.1.6)
        cert = "maf.pem"
        key = "maf.key"
        ca = "ca.pem"
        crl = "crl.pem"                              # optional; reloaded when it changes

    Relative paths are read from ``base_dir``.
    """
    data = dict(data)
    metrics = parse_metrics(data.pop("metrics", None))
    values = typed_tables(data, _KEYS, _PATHS, base_dir or Path.cwd())
    if not values.get("fqdn"):
        raise ConfigurationError("maf.fqdn is missing: the MAF's FQDN, e.g. maf.in.provider.com")
    if values.get("retrieval_listen") == "":
        values["retrieval_listen"] = None
    for name in ("mef", "mef_zn"):
        if values.get(name) == "":
            values[name] = None
    return MafConfig(source=source, metrics=metrics, **values)


def load_maf_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> MafConfig:
    """Read ``path`` (TOML) if given and apply ``overrides`` (``{"maf.fqdn": ...}``; None
    values ignored) through :func:`m2msec.config.loader.load`."""
    sections = {**_KEYS, "metrics": METRICS_KEYS}
    return load(path, overrides, sections=sections, paths=_PATHS, parse=parse_maf_config)
