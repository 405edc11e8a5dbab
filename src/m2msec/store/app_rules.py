"""Stored serviceSubscribedAppRules (TS-0001 9.6.1.2.2, TR-0038 7.1.2).

The rules ``m2msec gateway rule add|list|remove`` manage live in the ``app_rule`` table
of the psk-lookup-table's SQLite file (schema version 3 of :mod:`m2msec.store.sqlite`),
beside the identity registry. The gateway applies them together with the TOML's
``[[gateway.app_rule]]``; :meth:`AppRuleStore.rules` re-reads the table at most once per
``cache_ttl`` (the psk lookup cache's lifetime), so a rule added or removed while the
gateway runs takes effect within that time, without a restart. Patterns are validated by
:func:`m2msec.app_rules.app_rule`, the TOML loader's check. All SQL of the table is here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from m2msec.app_rules import AppRule, app_rule
from m2msec.errors import ConfigurationError, StoreError

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
        return {
            "id": self.id,
            "name": self.name,
            "credentials": list(self.rule.credentials),
            "allowed_aes": list(self.rule.allowed_aes),
            "allowed_app_ids": list(self.rule.allowed_app_ids),
        }


class AppRuleStore:
    """The ``app_rule`` table of a psk-lookup-table SQLite file.

    The psk store (:class:`~m2msec.store.sqlite.SqlitePskStore`) must have opened ``path``
    first: it owns the schema migrations.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, cache_ttl: float = 2.0, busy_timeout: float = 5.0
    ) -> None:
        self._path = Path(path).expanduser()
        self._cache_ttl = cache_ttl
        self._cached: tuple[AppRule, ...] = ()
        self._read_at = -float("inf")
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                os.fspath(self._path),
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn.execute("PRAGMA trusted_schema = OFF")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("SELECT 1 FROM app_rule LIMIT 0")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the app rules in {self._path}: {exc}") from None

    def add(self, rule: AppRule, name: str | None = None) -> StoredAppRule:
        """Store ``rule`` (validated again here); a taken or all-digit name is refused."""
        rule = app_rule(rule.credentials, rule.allowed_aes, rule.allowed_app_ids)
        check_rule_name(name)
        try:
            with self._lock:
                cur = self._conn.execute(
                    "INSERT INTO app_rule (name, credentials, allowed_aes, allowed_app_ids, "
                    "created_at) VALUES (?, ?, ?, ?, ?)",
                    (
                        name,
                        json.dumps(rule.credentials),
                        json.dumps(rule.allowed_aes),
                        json.dumps(rule.allowed_app_ids),
                        int(time.time()),
                    ),
                )
                self._read_at = -float("inf")
        except sqlite3.IntegrityError:
            raise ConfigurationError(f"a rule named {name!r} exists already") from None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the app rules in {self._path}: {exc}") from None
        assert cur.lastrowid is not None
        return StoredAppRule(cur.lastrowid, name, rule)

    def list(self) -> list[StoredAppRule]:
        """All stored rules, by id."""
        try:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT id, name, credentials, allowed_aes, allowed_app_ids FROM app_rule "
                    "ORDER BY id"
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the app rules in {self._path}: {exc}") from None
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
        column = "id" if name_or_id.isdigit() else "name"
        try:
            with self._lock:
                cur = self._conn.execute(
                    f"DELETE FROM app_rule WHERE {column} = ?",  # noqa: S608 - fixed names
                    (int(name_or_id) if column == "id" else name_or_id,),
                )
                self._read_at = -float("inf")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the app rules in {self._path}: {exc}") from None
        return cur.rowcount > 0

    def rules(self) -> tuple[AppRule, ...]:
        """The stored rules, re-read at most once per ``cache_ttl`` seconds."""
        now = time.monotonic()
        if now - self._read_at >= self._cache_ttl:
            self._cached = tuple(r.rule for r in self.list())
            self._read_at = now
        return self._cached

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AppRuleStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
