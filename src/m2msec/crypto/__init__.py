"""Cryptographic helpers of m2msec (TS-0003 clause 10.3): key export and derivations."""

from m2msec.crypto.keyexport import (
    EXPORT_LENGTH,
    KEY_LENGTH,
    LABEL_BOOTSTRAP,
    LABEL_CONNECTION,
    LABEL_ES_CERT_KE,
    RELATIVE_ID_LENGTH,
    ExportedKey,
    derive_km,
    derive_kpsa,
    encode_identifier,
    split_export,
)

__all__ = [
    "EXPORT_LENGTH",
    "KEY_LENGTH",
    "LABEL_BOOTSTRAP",
    "LABEL_CONNECTION",
    "LABEL_ES_CERT_KE",
    "RELATIVE_ID_LENGTH",
    "ExportedKey",
    "derive_km",
    "derive_kpsa",
    "encode_identifier",
    "split_export",
]
