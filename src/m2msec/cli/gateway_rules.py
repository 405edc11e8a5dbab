"""``m2msec gateway rule add|list|remove``: stored serviceSubscribedAppRules.

TS-0001 9.6.1.2.2 / TR-0038 7.1.2: a registration over a Credential-ID association is
allowed only by a rule whose ``applicableCredIDs`` (``--credential``) match the
Credential-ID and whose ``allowedAEs`` (``--allowed-ae``) match the AE-ID-Stem, and
``allowedApp-IDs`` (``--allowed-app-id``) the App-ID if given. The rules are kept in the
psk store's database, SQLite or PostgreSQL (:mod:`m2msec.store.app_rules`); a running
gateway on that store applies a change within its lookup cache lifetime, together with
its TOML rules (``rule list --config FILE`` shows both, as the gateway applies them).

Exit status: 0 on success, 1 for a store that cannot be opened or an unknown rule, 2 for
an invalid pattern or name (nothing is written).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from m2msec.app_rules import AppRule, app_rule
from m2msec.cli.common import (
    JsonOption,
    StoreOption,
    exit_on_errors,
    fail,
    print_listing,
    stdout_console,
    sub_app,
)
from m2msec.config.gateway import read_app_rules
from m2msec.errors import ConfigurationError, StoreError
from m2msec.store import open_store
from m2msec.store.app_rules import AppRuleStore, check_rule_name

__all__ = ["app"]

app = sub_app("rule", "Manage stored serviceSubscribedAppRules (TS-0001 9.6.1.2.2).")


@contextmanager
def _rules(store: str | None) -> Iterator[AppRuleStore]:
    with exit_on_errors(usage=(ConfigurationError,), failure=(StoreError,)):
        psk = open_store(store)  # runs the schema migrations
        try:
            rules = AppRuleStore(psk.database)
        finally:
            psk.close()
        try:
            yield rules
        finally:
            rules.close()


@app.command("add")
def add_command(
    credential: Annotated[
        list[str],
        typer.Option("--credential", metavar="PATTERN",
                     help="applicableCredIDs pattern, e.g. 12-*@in.provider.com (repeatable)."),
    ],
    allowed_ae: Annotated[
        list[str],
        typer.Option("--allowed-ae", metavar="PATTERN",
                     help="allowedAEs pattern, an AE-ID-Stem such as C* (repeatable)."),
    ],
    allowed_app_id: Annotated[
        list[str] | None,
        typer.Option("--allowed-app-id", metavar="PATTERN",
                     help="allowedApp-IDs pattern (repeatable; none: any App-ID)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for rule remove.")] = None,
    store: StoreOption = None,
) -> None:
    """Add a rule: CREDENTIAL patterns may register ALLOWED-AE stems."""
    try:
        # Validated before the store is opened: a bad pattern writes nothing.
        rule = app_rule(credential, allowed_ae, allowed_app_id or (), where="rule")
        check_rule_name(name)
    except ConfigurationError as exc:
        fail(str(exc), 2)
    with _rules(store) as rules:
        added = rules.add(rule, name)
    stdout_console().print(
        Text(f"added rule {added.id}" + (f" ({added.name})" if added.name else ""))
    )


@app.command("list")
def list_command(
    as_json: JsonOption = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", metavar="FILE", show_default=False,
            help="The gateway's TOML: list its [[gateway.app_rule]] too (source \"config\"), "
            "and use its [psk] store unless --store is given.",
        ),
    ] = None,
    store: StoreOption = None,
) -> None:
    """List the rules a gateway applies: the stored ones and, with --config, its TOML's."""
    configured: tuple[AppRule, ...] = ()
    if config is not None:
        with exit_on_errors(usage=(ConfigurationError,)):
            configured, config_store = read_app_rules(config)
        store = store or config_store
    with _rules(store) as rules:
        rows = rules.list()
    listed: list[tuple[str, str, str, AppRule]] = [
        ("config", f"[{number}]", "", r) for number, r in enumerate(configured)
    ]
    listed += [("store", str(r.id), r.name or "", r.rule) for r in rows]
    print_listing(
        listed,
        title="serviceSubscribedAppRules",
        columns=("source", "id", "name", "credentials", "allowed AEs", "allowed App-IDs"),
        cells=lambda row: (*row[:3], *_cells(row[3])),
        to_json=_rule_json,
        as_json=as_json,
        empty="no app rules" if config is not None else "no stored app rules",
    )


def _rule_json(row: tuple[str, str, str, AppRule]) -> dict[str, object]:
    source, rule_id, name, rule = row
    if source == "config":
        return {"source": "config", "id": None, "name": None, **rule.as_json()}
    return {"source": "store", "id": int(rule_id), "name": name or None, **rule.as_json()}


def _cells(rule: AppRule) -> tuple[Text, Text, Text]:
    return (
        Text(" ".join(rule.credentials)),
        Text(" ".join(rule.allowed_aes)),
        Text(" ".join(rule.allowed_app_ids) or "any"),
    )


@app.command("remove")
def remove_command(
    rule: Annotated[str, typer.Argument(metavar="NAME|ID", help="The rule's name or id.")],
    store: StoreOption = None,
) -> None:
    """Remove a stored rule by name or id."""
    with _rules(store) as rules:
        removed = rules.remove(rule)
    if not removed:
        fail(f"no stored app rule {rule!r}", 1)
    stdout_console().print(Text(f"removed rule {rule}"))
