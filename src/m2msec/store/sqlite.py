"""The psk-lookup-table's former module name; see :mod:`m2msec.store.psk`."""

from m2msec.store.db import from_epoch, to_epoch
from m2msec.store.psk import (
    MAX_ENTITY_ID_OCTETS,
    MAX_KPSA_ID_OCTETS,
    MAX_KPSA_OCTETS,
    SCHEMA_VERSION,
    SealedPskStore,
    SqlitePskStore,
    row_aad,
)

__all__ = [
    "MAX_ENTITY_ID_OCTETS",
    "MAX_KPSA_ID_OCTETS",
    "MAX_KPSA_OCTETS",
    "SCHEMA_VERSION",
    "SealedPskStore",
    "SqlitePskStore",
    "from_epoch",
    "row_aad",
    "to_epoch",
]
