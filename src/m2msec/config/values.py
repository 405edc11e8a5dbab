"""Checks of single configuration values, shared by the gateway's sections.

Each raises :class:`~m2msec.errors.ConfigurationError` naming the dotted key
(``gateway.listen[1]: ...``, ``unknown key 'gateway.lisen' (did you mean 'listen'?)``).
"""

from __future__ import annotations

import difflib
import ipaddress
from pathlib import Path

from m2msec.errors import ConfigurationError

__all__ = ["boolean", "file_path", "invalid", "is_ip", "number", "unknown_key"]


def unknown_key(key: str, known: frozenset[str] | set[str], where: str) -> ConfigurationError:
    hint = difflib.get_close_matches(key, sorted(known), n=1)
    dotted = f"{where}.{key}" if where else key
    more = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(sorted(known))})"
    return ConfigurationError(f"unknown key '{dotted}'{more}")


def invalid(key: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{key}: {message}")


def number(value: object, key: str, *, integer: bool = False) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise invalid(key, f"must be {kind}, got {value!r}")
    assert isinstance(value, int | float)
    if value <= 0:
        raise invalid(key, f"must be greater than 0, got {value!r}")
    return value


def boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(key, f"must be true or false, got {value!r}")
    return value


def file_path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise invalid(key, "must be a file path")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise invalid(key, f"no such file: {path}")
    return path


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
