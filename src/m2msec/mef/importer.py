"""Bootstrap Instruction Configuration from the operator (TS-0003 8.3.2.1, seed 004).

What ``m2msec mef add-enrolee`` and ``m2msec mef import`` share: :func:`parse_lifetime`
(the Enrolment Expiry given to Ke, 10.7), :func:`make_enrolee` (the checks of one Enrolee:
KpmID, Kpm, Enrolee-ID by the ``ids`` rules, exactly one Enrolment Target, an AE as
Enrolee B with its NAF FQDN, docs/readings.md A-27) and :func:`load_enrolee_csv`::

    kpm_id,kpm,enrolee_id,maf_id,enrolee_b,naf_fqdn,lifetime
    device-0001,00112233445566778899aabbccddeeff,/mn-cse-1/Cdevice-1,,/mn-cse-1,,30d
    device-0002,8899aabbccddeeff0011223344556677,Cdevice-2,maf.provider.com,,,

``kpm_id``, ``kpm`` (hexadecimal), ``enrolee_id`` and one of ``maf_id`` / ``enrolee_b`` are
required; ``lifetime`` defaults to :data:`DEFAULT_LIFETIME`. Every row is checked before
anything is returned, all problems reported together (:class:`EnroleeImportError`, line
numbers, never a key), so that a file is imported whole or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Final

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import derivation_identity
from m2msec.mef.records import Bootstrap, Enrolee, EnrolmentTarget, check_kpm_id
from m2msec.store.importer import ImportProblems, csv_rows, parse_hex_key

__all__ = [
    "COLUMNS",
    "DEFAULT_LIFETIME",
    "MAX_LIFETIME",
    "EnroleeImportError",
    "load_enrolee_csv",
    "make_enrolee",
    "parse_kpm_hex",
    "parse_lifetime",
]

COLUMNS: Final = ("kpm_id", "kpm", "enrolee_id", "maf_id", "enrolee_b", "naf_fqdn", "lifetime")
_REQUIRED: Final = ("kpm_id", "kpm", "enrolee_id")
DEFAULT_LIFETIME: Final = timedelta(days=30)
#: Our bound: an expiry must stay a date the stores and the wire can write.
MAX_LIFETIME: Final = timedelta(days=3650)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_LIFETIME: Final = re.compile(r"([0-9]{1,10})([smhdw]?)")


class EnroleeImportError(ImportProblems):
    """An Enrolee CSV file has invalid rows."""


def parse_lifetime(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` or ``3600`` (seconds), ``2w``: whole seconds,
    positive, at most :data:`MAX_LIFETIME`."""
    match = _LIFETIME.fullmatch(text.strip().lower())
    if match is None:
        raise ConfigurationError(
            f"lifetime {text.strip()[:40]!r} is not a number with s, m, h, d or w (e.g. 30d)"
        )
    lifetime = timedelta(seconds=int(match[1]) * _UNITS[match[2] or "s"])
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise ConfigurationError(f"lifetime must be 1s to {MAX_LIFETIME.days}d")
    return lifetime


def parse_kpm_hex(text: str) -> bytes:
    """A Kpm in hexadecimal (whitespace ignored); errors never echo the value."""
    return parse_hex_key(text, "the Kpm")


def make_enrolee(
    *,
    enrolee_id: str,
    lifetime: timedelta,
    kpm_id: str | None = None,
    kpm: bytes | None = None,
    cert_identity: str | None = None,
    maf_id: str | None = None,
    enrolee_b: str | None = None,
    naf_fqdn: str | None = None,
) -> Enrolee:
    """One Enrolee: a KpmID with its Kpm (8.3.2.1) or a certificate identity (8.3.2.2,
    taken in canonical form), and exactly one of a MAF-ID or an Enrolee B-ID."""
    if (maf_id is None) == (enrolee_b is None):
        raise ConfigurationError("give exactly one Enrolment Target: a MAF-ID or an Enrolee B")
    if naf_fqdn is not None and enrolee_b is None:
        raise ConfigurationError("a NAF FQDN belongs to an Enrolee B target, not to a MAF")
    target = (
        EnrolmentTarget.maf(maf_id)
        if maf_id is not None
        else EnrolmentTarget.enrolee_b(str(enrolee_b), naf_fqdn)
    )
    if cert_identity is not None:
        if kpm_id is not None or kpm is not None:
            raise ConfigurationError("a certificate Enrolee has no KpmID or Kpm")
        canonical = derivation_identity(cert_identity, enrolee_b=True)
        return Enrolee(Bootstrap.CERTIFICATE, canonical, enrolee_id, target, lifetime)
    if kpm_id is None or kpm is None:
        raise ConfigurationError("a PSK Enrolee needs its KpmID and Kpm")
    return Enrolee(Bootstrap.PSK, check_kpm_id(kpm_id), enrolee_id, target, lifetime, kpm)


def load_enrolee_csv(path: str | Path) -> list[Enrolee]:
    """Read and check every row of an Enrolee CSV file (module docstring)."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # spreadsheets like to write a BOM
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{path}: not UTF-8 (at octet {exc.start})") from None
    problems: list[str] = []
    enrolees: list[Enrolee] = []
    seen: dict[str, str] = {}
    rows = csv_rows(text, source, COLUMNS, _REQUIRED, problems, error=EnroleeImportError)
    for where, row in rows:
        try:
            enrolee = _row_enrolee(row)
        except (IdentifierError, ConfigurationError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        if enrolee.bootstrap_id in seen:
            problems.append(
                f"{where}: KpmID {enrolee.bootstrap_id!r} already given at "
                f"{seen[enrolee.bootstrap_id]}"
            )
            continue
        seen[enrolee.bootstrap_id] = where
        enrolees.append(enrolee)
    if problems:
        raise EnroleeImportError(source, problems)
    return enrolees


def _row_enrolee(row: Mapping[str, str]) -> Enrolee:
    cell = {name: (row.get(name) or "").strip() or None for name in COLUMNS}
    for name in _REQUIRED:
        if cell[name] is None:
            raise ConfigurationError(f"{name} is missing")
    lifetime = cell["lifetime"]
    return make_enrolee(
        kpm_id=cell["kpm_id"],
        kpm=parse_kpm_hex(str(cell["kpm"])),
        enrolee_id=str(cell["enrolee_id"]),
        maf_id=cell["maf_id"],
        enrolee_b=cell["enrolee_b"],
        naf_fqdn=cell["naf_fqdn"],
        lifetime=DEFAULT_LIFETIME if lifetime is None else parse_lifetime(lifetime),
    )
