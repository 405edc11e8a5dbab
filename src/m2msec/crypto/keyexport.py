"""TLS key export (TS-0003 10.3.1) and the derivations of 10.3.2 and 10.3.3.

Key export (RFC 5705) runs on an established (D)TLS session with one of the labels below,
length 48 and no context value (none is given by the specification; in TLS 1.2 "no
context" differs from an empty one). The 48 octets split into a 16-octet relative key ID
(the "16 most significant bytes") and a 32-octet key (the "32 least significant bytes").
We read the output as a big-endian number, so ID = output[0:16] and key = output[16:48]
(NOTES, docs/readings.md A-04):

* ``EXPORTER-oneM2M-Bootstrap``: Ke and RelativeKeID (Enrolee <-> MEF, 8.3.1.2);
* ``EXPORTER-oneM2M-Connection``: Kc and KcID (Entity A <-> MAF, 8.8.2.7);
* ``EXPORTER-oneM2M-ESCertKE``: pairwiseE2EKey and its ID (8.7.2.2).

Derivations, HMAC-SHA-256 (RFC 2104) keyed with Ke; identifiers are NFKC-normalised and
then encoded in UTF-8 (RFC 3629):

* 10.3.2: ``Km   = HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Master Credential derivation"
  || MAF-ID)``;
* 10.3.3: ``Kpsa = HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Provisioned Secure Connection
  Key derivation" || Enrolee-B-ID)``.

Running the export itself (pyOpenSSL's ``Connection.export_keying_material(label, 48)``)
belongs to the TLS layer; this module only holds the constants and the pure arithmetic.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass, field
from typing import Final, Self

__all__ = [
    "EXPORT_LENGTH",
    "KEY_LENGTH",
    "KM_DERIVATION_LABEL",
    "KPSA_DERIVATION_LABEL",
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

LABEL_BOOTSTRAP: Final = b"EXPORTER-oneM2M-Bootstrap"
LABEL_CONNECTION: Final = b"EXPORTER-oneM2M-Connection"
LABEL_ES_CERT_KE: Final = b"EXPORTER-oneM2M-ESCertKE"
EXPORT_LENGTH: Final = 48
RELATIVE_ID_LENGTH: Final = 16
KEY_LENGTH: Final = 32

KM_DERIVATION_LABEL: Final = b"oneM2M Enrolment Key to Master Credential derivation"
KPSA_DERIVATION_LABEL: Final = (
    b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"
)


def split_export(output: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """Split 48 exported octets into (relative_id, key) = (output[0:16], output[16:48])."""
    data = bytes(output)
    if len(data) != EXPORT_LENGTH:
        raise ValueError(
            f"exported keying material must be {EXPORT_LENGTH} octets, got {len(data)}"
        )
    return data[:RELATIVE_ID_LENGTH], data[RELATIVE_ID_LENGTH:]


@dataclass(frozen=True)
class ExportedKey:
    """A key and its relative ID from TLS key export; the key never appears in ``repr``."""

    relative_id: bytes
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.relative_id) != RELATIVE_ID_LENGTH:
            raise ValueError(f"relative key ID must be {RELATIVE_ID_LENGTH} octets")
        if len(self.key) != KEY_LENGTH:
            raise ValueError(f"exported key must be {KEY_LENGTH} octets")

    @classmethod
    def from_export(cls, output: bytes) -> Self:
        """Build from the 48 octets of ``export_keying_material(label, 48)``."""
        relative_id, key = split_export(output)
        return cls(relative_id, key)


def encode_identifier(identifier: str) -> bytes:
    """NFKC-normalise, then UTF-8-encode an identifier (TS-0003 10.3.2, 10.3.3)."""
    if not identifier:
        raise ValueError("identifier for key derivation is empty")
    return unicodedata.normalize("NFKC", identifier).encode("utf-8")


def _derive(ke: bytes, label: bytes, identifier: str) -> bytes:
    if not ke:
        raise ValueError("Enrolment Key (Ke) is empty")
    return hmac.new(ke, label + encode_identifier(identifier), hashlib.sha256).digest()


def derive_km(ke: bytes, maf_id: str) -> bytes:
    """Master Credential Km from Enrolment Key Ke and the MAF-ID (TS-0003 10.3.2)."""
    return _derive(ke, KM_DERIVATION_LABEL, maf_id)


def derive_kpsa(ke: bytes, enrolee_b_id: str) -> bytes:
    """Kpsa from Ke and Enrolee B's CSE-ID or AE-ID (TS-0003 10.3.3)."""
    return _derive(ke, KPSA_DERIVATION_LABEL, enrolee_b_id)
