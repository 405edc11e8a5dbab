"""Stored serviceSubscribedAppRules (TS-0001 9.6.1.2.2, TR-0038 7.1.2).

The rules ``m2msec gateway rule add|list|remove`` manage live in the ``app_rule`` table
of the psk-lookup-table's database (schema version 3 of :mod:`m2msec.store.psk`; SQLite or
PostgreSQL, :mod:`m2msec.store.db`), beside the identity registry. The gateway applies
them together with the TOML's ``[[gateway.app_rule]]``; :meth:`AppRuleStore.rules`
re-reads the table at most once per ``cache_ttl`` (the psk lookup cache's lifetime), so a
rule added or removed while the gateway runs takes effect within that time, without a
restart. Patterns are validated by :func:`m2msec.app_rules.app_rule`, the TOML loader's
check. All SQL of the table is here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from m2msec.app_rules import AppRule, app_rule
from m2msec.errors import ConfigurationError
from m2msec.store.db import Database
from m2msec.store.side_table import SideTable

__all__ = ["AppRuleStore", "StoredAppRule", "check_rule_name"]


def check_rule_name(name: str | None) -> None:
    """A rule name is printable, without whitespace, and not all digits (those are ids)."""
    if name is not None and (
        not name or name.isdigit() or any(c.isspace() or not c.isprintable() for c in name)
    ):
        raise ConfigurationError(
            f"rule name {name!r} must be non-empty, without whitespace and not a number"
        )


@dataclass(frozen=True, slots=True)
class StoredAppRule:
    """One row of ``app_rule``: its id, optional name and the rule."""

    id: int
    name: str | None
    rule: AppRule

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, **self.rule.as_json()}


class AppRuleStore(SideTable):
    """The ``app_rule`` table beside a psk-lookup-table.

    ``target`` is the psk store's :attr:`~m2msec.store.psk.SealedPskStore.database` (or its
    path or URL); the psk store must have opened it first: it owns the schema migrations.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Database,
        *,
        cache_ttl: float = 2.0,
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(target, table="app_rule", what="the app rules", busy_timeout=busy_timeout)
        self._cache_ttl = cache_ttl
        self._cached: tuple[AppRule, ...] = ()
        self._read_at = -float("inf")
        p = self._db.p
        self._insert = (
            "INSERT INTO app_rule (name, credentials, allowed_aes, allowed_app_ids, "
            f"created_at) VALUES ({p}, {p}, {p}, {p}, {p}) RETURNING id"
        )
        self._delete = {
            column: f"DELETE FROM app_rule WHERE {column} = {p}"
            for column in ("id", "name")
        }

    def add(self, rule: AppRule, name: str | None = None) -> StoredAppRule:
        """Store ``rule`` (validated again here); a taken or all-digit name is refused."""
        rule = app_rule(rule.credentials, rule.allowed_aes, rule.allowed_app_ids)
        check_rule_name(name)
        try:
            with self._lock:
                row = self._conn.execute(
                    self._insert,
                    (
                        name,
                        json.dumps(rule.credentials),
                        json.dumps(rule.allowed_aes),
                        json.dumps(rule.allowed_app_ids),
                        int(time.time()),
                    ),
                ).fetchone()
                self._read_at = -float("inf")
        except self._db.integrity_errors:
            raise ConfigurationError(f"a rule named {name!r} exists already") from None
        except self._db.errors as exc:
            raise self._fail("write", exc) from None
        assert row is not None
        return StoredAppRule(int(row[0]), name, rule)

    def list(self) -> list[StoredAppRule]:
        """All stored rules, by id."""
        try:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT id, name, credentials, allowed_aes, allowed_app_ids FROM app_rule "
                    "ORDER BY id"
                ).fetchall()
        except self._db.errors as exc:
            raise self._fail("read", exc) from None
        return [
            StoredAppRule(
                int(i),
                None if n is None else str(n),
                AppRule(tuple(json.loads(c)), tuple(json.loads(a)), tuple(json.loads(p))),
            )
            for i, n, c, a, p in rows
        ]

    def remove(self, name_or_id: str) -> bool:
        """Drop the rule with that name, or (all digits) that id; True if there was one."""
        by_id = name_or_id.isdigit()
        try:
            with self._lock:
                cur = self._conn.execute(
                    self._delete["id" if by_id else "name"],
                    (int(name_or_id) if by_id else name_or_id,),
                )
                self._read_at = -float("inf")
        except self._db.errors as exc:
            raise self._fail("write", exc) from None
        return bool(cur.rowcount > 0)

    def rules(self) -> tuple[AppRule, ...]:
        """The stored rules, re-read at most once per ``cache_ttl`` seconds."""
        now = time.monotonic()
        if now - self._read_at >= self._cache_ttl:
            self._cached = tuple(r.rule for r in self.list())
            self._read_at = now
        return self._cached
