"""Where m2msec keeps its state on disk.

The data directory is, in order of preference:

1. ``$M2MSEC_HOME`` if set and non-empty;
2. ``$XDG_DATA_HOME/m2msec`` if ``XDG_DATA_HOME`` is set to an absolute path (the XDG Base
   Directory specification says relative values are to be ignored);
3. ``~/.local/share/m2msec``.

The directory holds credentials (the psk-lookup-table of TS-0003 8.2.2.1 and its
key-encryption key), so it is created private (mode 0700).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEFAULT_STORE_NAME",
    "data_dir",
    "default_store_path",
    "ensure_private_dir",
]

DEFAULT_STORE_NAME = "m2msec.db"


def data_dir() -> Path:
    """The data directory (not created; see :func:`ensure_private_dir`)."""
    home = os.environ.get("M2MSEC_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "m2msec"
    return Path.home() / ".local" / "share" / "m2msec"


def default_store_path(*, create: bool = False) -> Path:
    """``<data dir>/m2msec.db``; with ``create``, make the data directory (0700) first."""
    directory = data_dir()
    if create:
        ensure_private_dir(directory)
    return directory / DEFAULT_STORE_NAME


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) if needed; a directory created here gets 0700.

    An existing directory is left as it is: it may be shared on purpose (the files in it
    that hold secrets are 0600 on their own).
    """
    # mkdir's mode is masked by the umask, which only removes bits: 0700 stays private.
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
