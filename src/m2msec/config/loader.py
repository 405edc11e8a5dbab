"""The one TOML loader of m2msec's servers (gateway, MAF, BSF).

Every server reads its settings the same way: a TOML file (optional), relative file paths
in it resolved against one base (today the file's folder; issue 11 moves it to the data
directory, so the rule lives only here), then command-line overrides merged with one
convention, the dotted ``section.key`` (``gateway.backend``, ``maf.fqdn``, ``bsf.fqdn``).
An override naming a key the server does not know is refused with that key named. The
server module then validates the merged document (``parse`` below).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from m2msec.errors import ConfigurationError

__all__ = ["Parse", "load", "merge_overrides", "read_toml", "resolve_paths"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Sections = Mapping[str, Collection[str]]
"""The tables a server knows and the keys of each."""


class Parse(Protocol[T_co]):
    """A server's validator (``parse_config``, ``parse_maf_config``, ``parse_bsf_config``):
    the merged document, the folder relative paths are read from, and where it came from."""

    def __call__(
        self, data: Mapping[str, Any], *, base_dir: Path | None = ..., source: str = ...
    ) -> T_co: ...


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML document at ``path``; a missing, unreadable or invalid file raises
    ConfigurationError naming the file."""
    file = Path(path).expanduser()
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigurationError(f"config file not found: {file}") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{file}: invalid TOML: {exc}") from None
    # One level of copies, so that callers may edit tables freely.
    return {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}


def resolve_paths(
    data: dict[str, Any], paths: Collection[tuple[str, str]], base: Path
) -> dict[str, Any]:
    """``data`` with each relative file path at ``(section, key)`` made absolute under
    ``base`` (in every table of an array of tables too); URLs (``postgresql://…``,
    ``sqlite:///…``) and absolute paths are kept."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, value in out.items():
        if isinstance(value, list):  # an array of tables, [[section]]
            out[section] = [dict(t) if isinstance(t, dict) else t for t in value]
    for section, key in paths:
        found = out.get(section)
        for table in found if isinstance(found, list) else [found]:
            if not isinstance(table, dict):
                continue
            value = table.get(key)
            if (
                isinstance(value, str)
                and value
                and "://" not in value
                and not Path(value).expanduser().is_absolute()
            ):
                table[key] = str(base / value)
    return out


def merge_overrides(
    data: Mapping[str, Any], overrides: Mapping[str, Any], sections: Sections
) -> dict[str, Any]:
    """``data`` with each ``{"section.key": value}`` of ``overrides`` set (None values are
    options not given, so skipped); an unknown ``section.key`` raises ConfigurationError."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    known = sorted(f"{s}.{k}" for s, keys in sections.items() for k in keys)
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, sep, key = dotted.partition(".")
        if not sep or key not in sections.get(section, ()):
            hint = difflib.get_close_matches(dotted, known, n=1)
            more = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigurationError(f"unknown override {dotted!r}{more}")
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigurationError(f"{section}: must be a table ([{section}])")
        table[key] = value
    return merged


def load(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None,
    *,
    sections: Sections,
    paths: Collection[tuple[str, str]],
    parse: Parse[T],
) -> T:
    """Read ``path`` (if given), resolve its relative ``paths`` against its folder, merge
    ``overrides`` and ``parse(data, base_dir=..., source=...)``. Paths given as overrides stay
    relative to the current directory (``base_dir``), as a shell user expects. Errors
    from a file are prefixed with its name."""
    data: dict[str, Any] = {}
    source = "<command line>"
    if path is not None:
        file = Path(path).expanduser()
        data = resolve_paths(read_toml(file), paths, file.resolve().parent)
        source = str(file)
    if overrides:
        data = merge_overrides(data, overrides, sections)
    try:
        return parse(data, base_dir=Path.cwd(), source=source)
    except ConfigurationError as exc:
        if path is not None:
            raise ConfigurationError(f"{source}: {exc}") from None
        raise
