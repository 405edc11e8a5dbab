"""Credential stores: the psk-lookup-table of TS-0003 8.2.2.1 / TR-0038 7.1.2.

:func:`open_store` turns a path or URL from configuration into a :class:`PskStore`:

- ``None``: the default SQLite file, ``<data dir>/m2msec.db`` (see :mod:`m2msec.paths`);
- ``sqlite:///abs/path`` or a plain file path: one SQLite file;
- ``postgresql://user@host/db``: the ``m2msec_psk`` schema of a PostgreSQL database, which
  several gateways and the CLI may share (:mod:`m2msec.store.db`).
"""

from __future__ import annotations

import os
from typing import Any

from m2msec.paths import default_store_path
from m2msec.store.base import ProgressCallback, PskEntry, PskInfo, PskStore
from m2msec.store.psk import SealedPskStore, SqlitePskStore

__all__ = [
    "ProgressCallback",
    "PskEntry",
    "PskInfo",
    "PskStore",
    "SealedPskStore",
    "SqlitePskStore",
    "open_store",
]


def open_store(
    url_or_path: str | os.PathLike[str] | None = None, **options: Any
) -> SealedPskStore:
    """Open the credential store named by ``url_or_path``.

    ``options`` go to :class:`SealedPskStore` (``kek``, ``cache_size``, ``cache_ttl``,
    ``busy_timeout``).
    """
    if url_or_path is None:
        return SealedPskStore(default_store_path(create=True), **options)
    return SealedPskStore(url_or_path, **options)
