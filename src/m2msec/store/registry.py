"""Identity registry: which credential owns an AE-ID or CSE-ID (TS-0003 7.1.2, TR-0038 7.1.2).

TS-0003 7.1.2 makes the Registrar CSE bind an AE-ID to the security association whose
credential registered it; TS-0001 9.6.1.2.2 lets only the credential that owns an AE-ID
re-register it. The gateway decides this itself from one table, ``identity_owner``, in
the psk-lookup-table's database (schema version 2 of :mod:`m2msec.store.psk`).

A *credential key* is ``<framework>:<key id>``:

- ``psk:<KpsaId>`` - a psk-lookup-table row (TS-0003 8.2.2.1);
- ``maf:<KmId>`` - a MAF-provisioned key (TS-0003 8.8), the KmId that names Km's owner;
- ``gba:<IMPI>`` - a GBA association (TS-0003 8.3), the subscriber behind the B-TID;
- ``cert:<SHA-256 of the DER certificate, hex>`` - a certificate association (8.4).

Owners come from two kinds of source. *Implicit*: a psk row's entity id (and, recorded by
the gateway when such an association is established, a MAF IdA or a GBA USS identity) -
an association authenticated as X with a bound identity owns that identity. *Recorded*:
the ``aei`` the CSE assigned at a 2001 registration of a Credential-ID association.
:meth:`IdentityRegistry.owner_of` is a ``Callable[[str], str | None]`` over normalised
entity ids (:func:`m2msec.ids.normalise_originator`), the form the gateway's rules use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator

from m2msec.store.base import credential_key
from m2msec.store.db import Database
from m2msec.store.side_table import SideTable

__all__ = ["IdentityRegistry", "credential_key"]

class IdentityRegistry(SideTable):
    """The ``identity_owner`` table beside a psk-lookup-table.

    ``target`` is the psk store's :attr:`~m2msec.store.psk.SealedPskStore.database` (or its
    path or URL); the psk store must have opened it first: it owns the schema migrations.
    ``psk_forms`` maps a normalised entity id to the spellings a psk row's ``entity_id`` may
    hold for it (an AE-ID-Stem, the SP-relative form); by default only the id itself.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Database,
        *,
        psk_forms: Callable[[str], Iterable[str]] | None = None,
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            target, table="identity_owner", what="the identity registry", busy_timeout=busy_timeout
        )
        self._psk_forms = psk_forms or (lambda entity_id: (entity_id,))
        p = self._db.p
        self._owner = f"SELECT credential FROM identity_owner WHERE entity_id = {p}"
        self._by_psk = (
            f"SELECT kpsa_id FROM psk WHERE entity_id = {p} ORDER BY kpsa_id LIMIT 1"
        )
        self._recorded = (
            f"SELECT entity_id FROM identity_owner WHERE credential = {p} "
            "ORDER BY recorded_at DESC, entity_id LIMIT 1"
        )
        self._insert = (
            "INSERT INTO identity_owner (entity_id, credential, source, recorded_at) "
            f"VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (entity_id) DO NOTHING"
        )
        self._delete = f"DELETE FROM identity_owner WHERE entity_id = {p}"

    def owner_of(self, entity_id: str) -> str | None:
        """The credential key that owns ``entity_id`` (normalised), or None if nobody does.

        A recorded owner wins over a psk row's entity id: it is the later, explicit fact.
        """
        try:
            with self._lock:
                conn = self._conn
                row = conn.execute(self._owner, (entity_id,)).fetchone()
                if row is not None:
                    return str(row[0])
                for form in dict.fromkeys(self._psk_forms(entity_id)):
                    row = conn.execute(self._by_psk, (form,)).fetchone()
                    if row is not None:
                        return credential_key("psk", str(row[0]))
        except self._db.errors as exc:
            raise self._fail("read", exc) from None
        return None

    def recorded_for(self, credential: str) -> str | None:
        """The entity id recorded for ``credential`` (its registered AE-ID), if any."""
        try:
            with self._lock:
                row = self._conn.execute(self._recorded, (credential,)).fetchone()
        except self._db.errors as exc:
            raise self._fail("read", exc) from None
        return None if row is None else str(row[0])

    def record(self, entity_id: str, credential: str, *, source: str = "registration") -> bool:
        """Record ``credential`` as the owner of ``entity_id``; False if another owns it.

        Idempotent for the same owner. Never moves an identity from one owner to another:
        that is :meth:`forget` first, an operator's decision.
        """
        try:
            with self._lock:
                conn = self._conn
                # One statement, atomic in both dialects: the first owner stays.
                conn.execute(self._insert, (entity_id, credential, source, int(time.time())))
                row = conn.execute(self._owner, (entity_id,)).fetchone()
        except self._db.errors as exc:
            raise self._fail("write", exc) from None
        return row is not None and str(row[0]) == credential

    def forget(self, entity_id: str) -> bool:
        """Drop the recorded owner of ``entity_id``; True if there was one."""
        try:
            with self._lock:
                cur = self._conn.execute(self._delete, (entity_id,))
        except self._db.errors as exc:
            raise self._fail("write", exc) from None
        return bool(cur.rowcount > 0)

    def list(self) -> Iterator[tuple[str, str, str]]:
        """Recorded ``(entity_id, credential, source)`` rows, by entity id."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT entity_id, credential, source FROM identity_owner ORDER BY entity_id"
            ).fetchall()
        for entity_id, credential, source in rows:
            yield str(entity_id), str(credential), str(source)

