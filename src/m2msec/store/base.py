"""Credential store interface: the psk-lookup-table of TS-0003 8.2.2.1 / TR-0038 7.1.2.

Entity B (the responder) looks up Kpsa and the bound entity identity by KpsaId during
the (D)TLS-PSK handshake. Lookups happen inside OpenSSL's PSK callback, so they are
synchronous and must be fast (O(1) with a cache).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol


@dataclass(frozen=True, slots=True)
class PskEntry:
    """One row of the psk-lookup-table: KpsaId -> (entity id, Kpsa, expiry).

    ``entity_id`` is the AE-ID or CSE-ID bound to the key; it may be None, in which
    case the association is bound to the Credential-ID ``12-<KpsaId>`` (docs/readings.md A-13).
    The key never appears in ``repr``.
    """

    kpsa_id: str
    kpsa: bytes = field(repr=False)
    entity_id: str | None = None
    expires_at: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return (now or datetime.now(UTC)) >= self.expires_at


@dataclass(frozen=True, slots=True)
class PskInfo:
    """A row as listed to operators: everything but the key."""

    kpsa_id: str
    entity_id: str | None
    expires_at: datetime | None
    key_length: int


ProgressCallback = Callable[[int], None]

_FRAMEWORKS: Final = frozenset({"psk", "maf", "gba", "cert"})


def credential_key(framework: str, key_id: str) -> str:
    """The identity registry's name of a credential, ``<framework>:<key id>``
    (:mod:`m2msec.store.registry`); here so that the psk store can name its own rows."""
    if framework not in _FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}")
    if not key_id:
        raise ValueError("empty key id")
    return f"{framework}:{key_id}"


class PskStore(Protocol):
    """Persistent psk-lookup-table."""

    def get(self, kpsa_id: str) -> PskEntry | None:
        """The row for ``kpsa_id`` (octet-exact match, docs/readings.md A-05), or None."""
        ...

    def add(self, entry: PskEntry, *, replace: bool = False) -> None:
        """Insert a row; raise DuplicateCredentialError unless ``replace``."""
        ...

    def add_many(
        self,
        entries: Iterable[PskEntry],
        *,
        replace: bool = False,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Insert many rows in one transaction; return how many were written."""
        ...

    def remove(self, kpsa_id: str) -> bool:
        """Delete a row; return False if there was none."""
        ...

    def list(self, *, after: str | None = None, limit: int | None = None) -> Iterator[PskInfo]:
        """Rows ordered by KpsaId, without keys: those after KpsaId ``after``, at most
        ``limit`` (keyset paging, bounded memory at any size)."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...
