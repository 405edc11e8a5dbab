"""Where m2msec keeps its state on disk.

The data directory is, in order of preference:

1. ``$M2MSEC_HOME`` if set and non-empty;
2. ``$XDG_DATA_HOME/m2msec`` if ``XDG_DATA_HOME`` is set to an absolute path (the XDG Base
   Directory specification says relative values are to be ignored);
3. ``~/.local/share/m2msec``.

The directory holds credentials (the psk-lookup-table of TS-0003 8.2.2.1 and its
key-encryption key), so it is created private (mode 0700).

Every file that holds a secret (a key-encryption key, a CA or end-entity private key, the
GBA device's Ks, a store's database file) is written by :func:`write_private`: private from
its first byte, and there whole or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

__all__ = [
    "ADMIN_SOCKET_NAME",
    "DEFAULT_STORE_NAME",
    "PRIVATE_FILE_MODE",
    "data_dir",
    "default_admin_socket",
    "default_store_path",
    "ensure_private_dir",
    "state_path",
    "write_private",
]

DEFAULT_STORE_NAME = "m2msec.db"
#: The gateway's SA admin socket in the data directory (docs/sa.md section 7).
ADMIN_SOCKET_NAME = "admin.sock"
PRIVATE_FILE_MODE = 0o600
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def data_dir() -> Path:
    """The data directory (not created; see :func:`ensure_private_dir`)."""
    home = os.environ.get("M2MSEC_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "m2msec"
    return Path.home() / ".local" / "share" / "m2msec"


def state_path(name: str, *, create: bool = False) -> Path:
    """``<data dir>/<name>``; with ``create``, make the data directory (0700) first."""
    directory = data_dir()
    if create:
        ensure_private_dir(directory)
    return directory / name


def default_store_path(*, create: bool = False) -> Path:
    """``<data dir>/m2msec.db``; with ``create``, make the data directory (0700) first."""
    return state_path(DEFAULT_STORE_NAME, create=create)


def default_admin_socket() -> Path:
    """``<data dir>/admin.sock``: where the gateway's SA admin socket is, unless configured
    otherwise, and where ``m2msec sa`` looks for it (the one place for this default)."""
    return state_path(ADMIN_SOCKET_NAME)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) if needed; a directory created here gets 0700.

    An existing directory is left as it is: it may be shared on purpose (the files in it
    that hold secrets are 0600 on their own).
    """
    # mkdir's mode is masked by the umask, which only removes bits: 0700 stays private.
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def write_private(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    exist_ok: bool = False,
    mode: int = PRIVATE_FILE_MODE,
) -> None:
    """Write ``data`` to ``path``: the whole of it or nothing, ``mode`` from the first byte.

    The data goes to a temporary file in the same directory, created with O_CREAT|O_EXCL
    and mode 0600 (the umask can only remove bits) and then set to exactly ``mode``
    (0644 for a certificate written beside its key), flushed and fsynced. With
    ``exist_ok`` it then replaces ``path`` (os.replace: a reader sees the old file or the
    new one); without, it is hard-linked into place, which refuses an existing file (or
    link) with FileExistsError, so that of two processes creating the same file one loses.
    A failed or killed write leaves the old file as it was and no partial file (only a
    killed one may leave a ``.<name>.*.tmp``). The directory is fsynced where the
    platform allows, so the new entry survives a power cut.
    """
    target = Path(path)
    tmp = _write_temp(target, data, mode)
    try:
        if exist_ok:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target, data, mode)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(target.parent)


def _write_temp(target: Path, data: bytes, mode: int) -> Path:
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            _write_new(tmp, data, mode)
        except FileExistsError:
            continue  # a leftover of a killed write happens to have this name: draw again
        return tmp


def _link_new(tmp: Path, target: Path, data: bytes, mode: int) -> None:
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise _refused(target) from None
    except OSError:
        # No hard links on this file system: create in place, still exclusively (only a
        # write killed halfway can leave a partial file here).
        try:
            _write_new(target, data, mode)
        except FileExistsError:
            raise _refused(target) from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (O_EXCL, 0600), set ``mode``, write, flush, fsync; removed on failure."""
    fd = os.open(path, _CREATE_NEW, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            # fchmod, unlike the creation mode, is not masked by the umask.
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _refused(target: Path) -> FileExistsError:
    # errno and filename set: callers name the file from ``exc.filename``.
    return FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", str(target))


def _fsync_dir(directory: Path) -> None:
    # Makes the new directory entry durable; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
