"""Credential stores: the psk-lookup-table of TS-0003 8.2.2.1 / TR-0038 7.1.2.

:func:`open_store` turns a path or URL from configuration into a :class:`PskStore`:

- ``None``: the default SQLite file, ``<data dir>/m2msec.db`` (see :mod:`m2msec.paths`);
- ``sqlite:///abs/path`` or a plain file path: :class:`SqlitePskStore`;
- ``postgresql://...``: reserved for shared deployments, not available yet.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from m2msec.errors import ConfigurationError
from m2msec.paths import default_store_path
from m2msec.store.base import ProgressCallback, PskEntry, PskInfo, PskStore
from m2msec.store.sqlite import SqlitePskStore

__all__ = [
    "ProgressCallback",
    "PskEntry",
    "PskInfo",
    "PskStore",
    "SqlitePskStore",
    "open_store",
]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def open_store(url_or_path: str | os.PathLike[str] | None = None, **options: Any) -> PskStore:
    """Open the credential store named by ``url_or_path``.

    ``options`` go to the store's constructor (for SQLite: ``kek``, ``cache_size``,
    ``cache_ttl``, ``busy_timeout``).
    """
    if url_or_path is None:
        return SqlitePskStore(default_store_path(create=True), **options)
    text = os.fspath(url_or_path)
    if not _URL.match(text):
        return SqlitePskStore(text, **options)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise ConfigurationError(
                "a SQLite store URL has the form sqlite:///absolute/path/to/file.db"
            )
        return SqlitePskStore(unquote(parts.path), **options)
    if scheme in ("postgresql", "postgres"):
        raise ConfigurationError("PostgreSQL store not available in this version")
    raise ConfigurationError(f"unsupported store URL scheme {scheme!r}")
