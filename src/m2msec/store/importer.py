"""Read a provisioned psk-lookup-table (TS-0003 8.2.2.1, TR-0038 7.1.2) from CSV or TOML.

CSV: a header line naming the columns, then one row per key::

    kpsa_id,kpsa,entity_id,expires_at
    AE123456789012-Light@in.provider.com,1a2b3c4d5e6f7a8b,Clight-AE1,2030-01-01T00:00:00Z

TOML: an array of tables with the same keys::

    [[psk]]
    kpsa_id = "AE123456789012-Light@in.provider.com"
    kpsa = "1a2b3c4d5e6f7a8b"
    entity_id = "Clight-AE1"
    expires_at = 2030-01-01T00:00:00Z   # a TOML date-time or an ISO 8601 string

``kpsa_id`` and ``kpsa`` (hexadecimal, 1 to 64 octets) are required; ``entity_id`` (an AE-ID
or CSE-ID) and ``expires_at`` (ISO 8601; without a UTC offset it is UTC, as oneM2M
timestamps are) are optional. Every row is checked before anything is returned, and all
problems are reported together in one :class:`PskImportError` naming line numbers (CSV) or
table numbers (TOML), so a file is imported whole or not at all. Keys shorter than 16 octets
are accepted and counted (TR-0038 uses 8-octet keys; stunnel refuses them). Error messages
never contain key material.
"""

from __future__ import annotations

import csv
import io
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import parse_entity_id
from m2msec.keyids import KpsaId
from m2msec.store.base import PskEntry
from m2msec.store.sqlite import MAX_KPSA_OCTETS

__all__ = [
    "COLUMNS",
    "RECOMMENDED_MIN_KPSA_OCTETS",
    "ImportProblems",
    "ImportResult",
    "PskImportError",
    "csv_rows",
    "load_psk_file",
    "parse_entity",
    "parse_expiry",
    "parse_hex_key",
    "parse_kpsa_hex",
    "parse_kpsa_id",
    "parse_psk_csv",
    "parse_psk_toml",
]

COLUMNS: Final = ("kpsa_id", "kpsa", "entity_id", "expires_at")
_REQUIRED: Final = frozenset({"kpsa_id", "kpsa"})
RECOMMENDED_MIN_KPSA_OCTETS: Final = 16
_MAX_PROBLEMS_SHOWN: Final = 50

Format = Literal["csv", "toml"]
_T = TypeVar("_T")


class ImportProblems(ConfigurationError):
    """A table file (a psk table, the MEF's Enrolees) has invalid rows; ``problems`` lists
    every one, and nothing was imported."""

    def __init__(self, source: str, problems: list[str]) -> None:
        shown = problems[:_MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        lines = [f"{source}: {len(problems)} problem(s), nothing imported:"]
        lines += [f"  {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))
        self.source = source
        self.problems = problems


class PskImportError(ImportProblems):
    """A psk table file has invalid rows."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The validated rows of one file, in file order."""

    source: str
    entries: list[PskEntry] = field(repr=False)
    short_keys: int = 0
    """How many keys are shorter than :data:`RECOMMENDED_MIN_KPSA_OCTETS`."""


# -- single values (shared with the CLI) -------------------------------------------------------


def parse_kpsa_id(text: str) -> str:
    """Check a KpsaID (TS-0003 10.5); return it unchanged (it is matched octet-exact)."""
    text = text.strip()
    KpsaId.parse(text)
    return text


def parse_hex_key(text: str, what: str) -> bytes:
    """Decode a hexadecimal key, whitespace ignored; errors name ``what``, never the value."""
    try:
        return bytes.fromhex("".join(text.split()))
    except ValueError:
        raise ConfigurationError(f"{what} is not hexadecimal (two digits per octet)") from None


def parse_kpsa_hex(text: str) -> bytes:
    """Decode a hexadecimal Kpsa of 1 to 64 octets; errors never echo the value."""
    key = parse_hex_key(text, "kpsa")
    if not 1 <= len(key) <= MAX_KPSA_OCTETS:
        raise ConfigurationError(f"kpsa must be 1 to {MAX_KPSA_OCTETS} octets, not {len(key)}")
    return key


def parse_entity(text: str) -> str:
    """Check an entity id (AE-ID, AE-ID-Stem or CSE-ID, TS-0001 7.2); return it unchanged."""
    text = text.strip()
    parse_entity_id(text)
    return text


def parse_expiry(value: str | datetime) -> datetime:
    """An ISO 8601 date-time (or a TOML date-time); no UTC offset means UTC."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigurationError(
                f"expires_at {value.strip()!r} is not an ISO 8601 date-time"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# -- files ------------------------------------------------------------------------------------


def load_psk_file(path: str | Path, *, fmt: Format | None = None) -> ImportResult:
    """Read and validate a CSV or TOML psk table; the format follows the file suffix."""
    path = Path(path)
    if fmt is None:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            fmt = "csv"
        elif suffix == ".toml":
            fmt = "toml"
        else:
            raise ConfigurationError(f"{path}: cannot tell the format; name it .csv or .toml")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # spreadsheets like to write a BOM
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{path}: not UTF-8 (at octet {exc.start})") from None
    if fmt == "csv":
        return parse_psk_csv(text, source=str(path))
    return parse_psk_toml(text, source=str(path))


def parse_psk_csv(text: str, *, source: str = "<csv>") -> ImportResult:
    problems: list[str] = []
    rows = csv_rows(text, source, COLUMNS, _REQUIRED, problems, error=PskImportError)
    return _validate(source, rows, problems)


def csv_rows(
    text: str,
    source: str,
    columns: Iterable[str],
    required: Iterable[str],
    problems: list[str],
    *,
    error: type[ImportProblems] = ImportProblems,
) -> Iterable[tuple[str, dict[str, str]]]:
    """The rows of a CSV table whose header names some of ``columns`` (all of
    ``required``), each as (``"line N"``, {column: cell}). A bad header raises ``error`` at
    once; a bad row is appended to ``problems`` (the caller raises after checking the rest).
    A row with the wrong number of cells is reported, never split: a key might otherwise
    land in a reported field."""
    known = tuple(columns)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise error(source, ["the file is empty (a header line is needed)"]) from None
    except csv.Error as exc:
        raise error(source, [f"line 1: {exc}"]) from None
    names = [h.strip().lower() for h in header]
    bad: list[str] = []
    unknown = [n for n in names if n not in known]
    if unknown:
        bad.append(f"line 1: unknown column(s) {', '.join(map(repr, unknown))}")
    missing = set(required) - set(names)
    if missing:
        bad.append(f"line 1: missing column(s) {', '.join(sorted(missing))}")
    if len(set(names)) != len(names):
        bad.append("line 1: a column is named twice")
    if bad:
        raise error(source, bad)

    def rows() -> Iterable[tuple[str, dict[str, str]]]:
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                problems.append(f"line {reader.line_num}: {exc}")
                return
            if not any(c.strip() for c in cells):
                continue  # blank line
            where = f"line {reader.line_num}"
            if len(cells) != len(names):
                problems.append(f"{where}: {len(cells)} fields, the header has {len(names)}")
                continue
            yield where, dict(zip(names, cells, strict=True))

    return rows()


def parse_psk_toml(text: str, *, source: str = "<toml>") -> ImportResult:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PskImportError(source, [str(exc)]) from None
    problems: list[str] = []
    extra = [k for k in doc if k != "psk"]
    if extra:
        problems.append(f"unknown top-level key(s) {', '.join(map(repr, extra))}")
    tables = doc.get("psk", [])
    if not isinstance(tables, list):
        raise PskImportError(source, [*problems, "'psk' must be an array of tables ([[psk]])"])

    def rows() -> Iterable[tuple[str, Mapping[str, object]]]:
        for index, table in enumerate(tables, start=1):
            where = f"[[psk]] #{index}"
            if not isinstance(table, dict):
                problems.append(f"{where}: not a table")
                continue
            yield where, table

    return _validate(source, rows(), problems)


def _validate(
    source: str,
    rows: Iterable[tuple[str, Mapping[str, object]]],
    problems: list[str],
) -> ImportResult:
    entries: list[PskEntry] = []
    seen: dict[str, str] = {}
    short = 0
    for where, row in rows:
        row_problems: list[str] = []
        unknown = [k for k in row if k not in COLUMNS]
        if unknown:
            row_problems.append(f"unknown key(s) {', '.join(map(repr, unknown))}")

        kpsa_id = _field(row, "kpsa_id", parse_kpsa_id, row_problems, required=True)
        kpsa = _field(row, "kpsa", parse_kpsa_hex, row_problems, required=True)
        entity_id = _field(row, "entity_id", parse_entity, row_problems, required=False)
        expires_at = _field(row, "expires_at", parse_expiry, row_problems, required=False)

        if kpsa_id is not None:
            if kpsa_id in seen:
                row_problems.append(f"KpsaId {kpsa_id!r} already given at {seen[kpsa_id]}")
            else:
                seen[kpsa_id] = where
        if row_problems:
            problems.extend(f"{where}: {p}" for p in row_problems)
            continue
        assert kpsa_id is not None and kpsa is not None  # required fields, checked above
        if len(kpsa) < RECOMMENDED_MIN_KPSA_OCTETS:
            short += 1
        entries.append(PskEntry(kpsa_id, kpsa, entity_id, expires_at))
    if problems:
        raise PskImportError(source, problems)
    return ImportResult(source, entries, short)


def _field(
    row: Mapping[str, object],
    name: str,
    parse: Callable[[Any], _T],
    problems: list[str],
    *,
    required: bool,
) -> _T | None:
    """Parse one field; record a problem (naming the field, never a key) and give None."""
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            problems.append(f"{name} is missing")
        return None
    if not isinstance(value, str) and not (name == "expires_at" and isinstance(value, datetime)):
        kind = "a date-time" if name == "expires_at" else "a string"
        problems.append(f"{name} must be {kind}, not a TOML {type(value).__name__}")
        return None
    try:
        return parse(value)
    except (IdentifierError, ConfigurationError) as exc:
        problems.append(str(exc))
        return None
