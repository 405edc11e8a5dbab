"""serviceSubscribedAppRule checks of AE registration (TS-0001 9.6.1.2.2, TR-0038 7.1.2).

A registration over a Credential-ID association (``12-<KpsaId>``, ``11-<KmId>``, a GBA
B-TID without USS identity) is allowed only by a rule whose ``applicableCredIDs`` match
the Credential-ID and whose ``allowedAEs`` match the AE-ID-Stem (and, if given, whose
``allowedApp-IDs`` match the App-ID). Wildcards are TS-0001's: ``*`` anywhere in an
element matches any run of characters (``C*``, ``S*``, ``C123*X``, ``*``). No rule for
the credential: 4128 SERVICE_SUBSCRIPTION_NOT_ESTABLISHED; rules, none allowing: 4126
APP_RULE_VALIDATION_FAILED. The rules come from the gateway's TOML
(``[[gateway.app_rule]]``) and the psk store (:mod:`m2msec.store.app_rules`, ``m2msec
gateway rule``), both validated by :func:`app_rule`; ``<serviceSubscribedAppRule>``
resources of the CSE are not read. No I/O here: the config loader, the store and the
gateway share this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from m2msec.errors import ConfigurationError

__all__ = [
    "APP_RULE_VALIDATION_FAILED",
    "SERVICE_SUBSCRIPTION_NOT_ESTABLISHED",
    "AppRule",
    "app_rule",
    "check_app_rules",
    "wildcard_match",
]

APP_RULE_VALIDATION_FAILED = 4126
SERVICE_SUBSCRIPTION_NOT_ESTABLISHED = 4128


@dataclass(frozen=True, slots=True)
class AppRule:
    """One serviceSubscribedAppRule (TS-0001 9.6.1.2.2): checked by :func:`check_app_rules`."""

    credentials: tuple[str, ...]
    allowed_aes: tuple[str, ...]
    allowed_app_ids: tuple[str, ...] = ()

    def as_json(self) -> dict[str, list[str]]:
        """The rule as ``[[gateway.app_rule]]`` spells it (and ``rule list --json`` prints it)."""
        return {
            "credentials": list(self.credentials),
            "allowed_aes": list(self.allowed_aes),
            "allowed_app_ids": list(self.allowed_app_ids),
        }


def app_rule(
    credentials: Sequence[Any],
    allowed_aes: Sequence[Any],
    allowed_app_ids: Sequence[Any] = (),
    *,
    where: str = "app_rule",
) -> AppRule:
    """A validated :class:`AppRule`: the one check of TOML and ``m2msec gateway rule add``.

    Each pattern is a non-empty string without whitespace or control characters (no oneM2M
    identifier holds them, so such a pattern could never match); ``*`` is TS-0001's
    wildcard. ``credentials`` and ``allowed_aes`` must not be empty.
    """
    lists: dict[str, tuple[str, ...]] = {}
    for key, value in (
        ("credentials", credentials),
        ("allowed_aes", allowed_aes),
        ("allowed_app_ids", allowed_app_ids),
    ):
        for v in value:
            if not isinstance(v, str) or not v:
                raise ConfigurationError(f"{where}.{key}: must be a list of non-empty strings")
            if any(c.isspace() or not c.isprintable() for c in v):
                raise ConfigurationError(
                    f"{where}.{key}: pattern {v!r} holds whitespace or a control character"
                )
        lists[key] = tuple(value)
    if not lists["credentials"] or not lists["allowed_aes"]:
        raise ConfigurationError(f"{where}: needs credentials and allowed_aes")
    return AppRule(lists["credentials"], lists["allowed_aes"], lists["allowed_app_ids"])


@lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if p == "*" else re.escape(p) for p in re.split(r"(\*)", pattern))
    )


def wildcard_match(patterns: Iterable[str], value: str) -> bool:
    """Whether ``value`` matches one of ``patterns`` (TS-0001's ``*`` wildcard)."""
    return any(_pattern(p).fullmatch(value) is not None for p in patterns)


def check_app_rules(
    rules: Sequence[AppRule], credential_id: str, ae_stem: str, app_id: str | None
) -> int | None:
    """None if a rule allows the registration, else the RSC to refuse it with."""
    applicable = [r for r in rules if wildcard_match(r.credentials, credential_id)]
    if not applicable:
        return SERVICE_SUBSCRIPTION_NOT_ESTABLISHED
    for rule in applicable:
        if not wildcard_match(rule.allowed_aes, ae_stem):
            continue
        if rule.allowed_app_ids and (
            app_id is None or not wildcard_match(rule.allowed_app_ids, app_id)
        ):
            continue
        return None
    return APP_RULE_VALIDATION_FAILED
