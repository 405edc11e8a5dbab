"""Secret values on the command line: one reader for every option that takes a key.

Every secret option (``--psk``, ``--km``, ``--k``, ``--opc``, ``--kpm``, ``--key`` of
``psk add`` ...) takes ``-`` (standard input; a hidden prompt on a terminal), ``@FILE`` or
its ``--*-file FILE`` twin (mode checked: a file others can read gets a warning); a literal
value still works where allowed but warns that other users can see it (``ps``, shell
history). docs/cli.md has the table of every option and its forms. Errors never echo the
value.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from pathlib import Path
from typing import Any

from rich.text import Text

from m2msec.cli.common import fail, option, stderr_console

__all__ = [
    "KEY_METAVAR",
    "read_key",
    "secret_file_option",
    "secret_option",
    "secret_text",
    "warn",
]

# Every option that takes a secret value (a Kpsa, Km, Kpm, K, OPc, OP) is read through
# secret_text, in one of these forms (docs/cli.md "Secret options"):
#   -          one line of standard input; on a terminal a prompt without echo (getpass)
#   @FILE      the file's text, and --NAME-file FILE the same: a warning unless it is 0600
#   a literal  still works, with a warning: it is visible to other users (ps, shell history)
# Option names that hold a key file in PEM (--key of serve/connect/enrol) are not secret
# values: their FILE is opened by the TLS layer.

KEY_METAVAR = "HEX|-|@FILE"


def secret_option(name: str, what: str, *, literal: bool = True) -> Any:
    """The ``typer.Option`` of a secret value ``name`` (e.g. ``--psk``) holding ``what``;
    its help lists the forms :func:`secret_text` reads."""
    forms = "'-' reads standard input (a hidden prompt on a terminal), @FILE a file"
    tail = "" if literal else "; a literal value is refused"
    return option(name, metavar=KEY_METAVAR if literal else "-|@FILE",
                  help=f"{what}: {forms} (or {name}-file FILE){tail}.")  # fmt: skip


def secret_file_option(name: str, what: str) -> Any:
    """The ``--NAME-file FILE`` twin of :func:`secret_option`."""
    return option(name, metavar="FILE", help=f"A file holding {what} (mode 0600 expected).")


def warn(message: str) -> None:
    """One yellow ``warning:`` line on stderr."""
    stderr_console().print(Text(f"warning: {message}", style="yellow"))


def _secret_file(path: Path, option_name: str) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        fail(f"{option_name}: cannot read {path}: {reason}", 2)
    if os.name == "posix" and mode & 0o077:
        warn(f"{path} ({option_name}) is readable by others (mode {mode:04o}); chmod 600 it")
    return text.strip()


def secret_text(
    value: str | None,
    option_name: str,
    *,
    file: Path | None = None,
    prompt: str | None = None,
    literal: bool = True,
) -> str | None:
    """The text of the secret option ``option_name`` given as ``value`` (the forms above)
    or as its ``--*-file`` twin ``file``; None when neither was given. Exit 2 when both
    are given, the file cannot be read, or (``literal=False``) a literal value is given.
    Never echoes the value: messages name the option and the file only."""
    if value is not None and file is not None:
        fail(f"give {option_name} or {option_name}-file, not both", 2)
    if file is not None:
        return _secret_file(file, f"{option_name}-file")
    if value is None:
        return None
    if value == "-":
        if sys.stdin.isatty():
            return getpass.getpass(f"{prompt or option_name}: ").strip()
        return sys.stdin.readline().strip()
    if value.startswith("@"):
        return _secret_file(Path(value[1:]), option_name)
    if not literal:
        fail(f"give {option_name} - (standard input), {option_name} @FILE or "
             f"{option_name}-file FILE: a key on the command line shows in ps", 2)  # fmt: skip
    warn(
        f"{option_name} on the command line is visible to other users (ps, shell history); "
        f"use {option_name} -, {option_name} @FILE or {option_name}-file FILE"
    )
    return value.strip()


def read_key(value: str | None, what: str = "key", *, file: Path | None = None) -> bytes:
    """A hex key of 1 to 64 octets from the secret option ``what`` (e.g. ``--psk``) in any
    of :func:`secret_text`'s forms; errors never echo it."""
    text = secret_text(value, what, file=file) or ""
    try:
        key = bytes.fromhex("".join(text.split()))
    except ValueError:
        fail(f"{what} must be hexadecimal")
    if not 0 < len(key) <= 64:
        fail(f"{what} must be 1 to 64 octets, got {len(key)}")
    return key


