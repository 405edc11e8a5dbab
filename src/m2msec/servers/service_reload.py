"""Reloading a service's FQDN certificate (issue 14 item 2): the MAF, the BSF and the MEF.

The service certificate (TS-0003 10.1.1.6; the MAF's Key Retrieval listener, the MEF's
target and certificate Enrolee listeners, the BSF's Zn listener) is the one thing these
servers put in force on a reload (``SIGHUP``,
:meth:`m2msec.service.lifecycle.ServerLifecycle.reload`): ``cert``, ``key``, ``ca`` and
``crl``. :func:`reload_service_certificates` builds every new profile first and swaps
them into the listeners only when all are built, so a broken certificate, a key that
does not match it or an unreadable CA leaves the old ones in force; every other setting
(listen addresses, the store, the FQDN, lifetimes, limits) was opened with and needs a
restart, refused by name (:func:`restart_only_keys`). Live associations keep their
sessions; the next handshake uses the new certificate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from OpenSSL import SSL

from m2msec.errors import ConfigurationError
from m2msec.service.lifecycle import refuse_restart_only
from m2msec.tls.aio import TLSServer
from m2msec.tls.engine import openssl_reason
from m2msec.tls.profiles import TLSProfile

__all__ = ["RELOADABLE", "reload_service_certificates", "restart_only_keys"]

#: The configuration attributes a reload puts in force: the service certificate.
RELOADABLE = frozenset({"cert", "key", "ca", "crl"})
#: Attributes that are not settings (where the configuration was read from).
_NOT_SETTINGS = frozenset({"source"})


def restart_only_keys(config: Any, section: str) -> Mapping[str, str]:
    """Every setting of the dataclass ``config`` but :data:`RELOADABLE` -> its TOML name
    (``section.name``; ``metrics.listen`` for the metrics address)."""
    return {
        f.name: "metrics.listen" if f.name == "metrics" else f"{section}.{f.name}"
        for f in dataclasses.fields(config)
        if f.name not in RELOADABLE | _NOT_SETTINGS
    }


async def reload_service_certificates(
    old: Any,
    new: Any,
    section: str,
    listeners: Sequence[tuple[TLSServer, Callable[[], Awaitable[TLSProfile]]]],
) -> str:
    """Put ``new``'s service certificate in force on ``listeners`` (each with the builder
    of its new profile), or raise ConfigurationError with nothing changed (module
    docstring); the sentence of what changed."""
    refuse_restart_only(old, new, restart_only_keys(new, section))
    try:
        profiles = [await build() for _server, build in listeners]
    except SSL.Error as exc:
        raise ConfigurationError(f"a TLS context cannot be built: {openssl_reason(exc)}") from None
    for (server, _build), profile in zip(listeners, profiles, strict=True):
        server.profile = profile  # the next accept uses it; live connections keep theirs
    return (
        f"{new.source}: new handshakes use the new service certificate on "
        f"{len(profiles)} listener(s); live associations continue"
    )
