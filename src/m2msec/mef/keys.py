"""Enrolment Key Generation and the keys derived from Ke (TS-0003 10.3.1-10.3.4, seed 004).

After the bootstrap handshake (PSK with KpmID/Kpm, 8.3.2.1, or certificates, 8.3.2.2:
seed 004 NOTE 2, the same generation) both the Enrolee and the MEF export 48 octets with
``EXPORTER-oneM2M-Bootstrap`` and no context (10.3.1). The split is the one of every
oneM2M export, :func:`m2msec.crypto.keyexport.split_export`: RelativeKeID = octets 0-15,
Ke = octets 16-47 (docs/readings.md A-04). KeID = hexBinary(RelativeKeID)@MEF-FQDN
(10.3.4, :class:`m2msec.keyids.KeId`).

From Ke the MEF derives the credential of the Enrolment Target, when the target fetches
it, and the Enrolee derives the same one locally (seed 004):

- a MAF target gets Km = HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Master Credential
  derivation" || MAF-ID) (10.3.2);
- an Enrolee B gets Kpsa = HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Provisioned Secure
  Connection Key derivation" || Enrolee-B-ID) (10.3.3).

The identity is hashed in its one canonical text, :func:`m2msec.ids.derivation_identity`,
then NFKC/UTF-8-encoded by :mod:`m2msec.crypto.keyexport`. V3.18's fetchCredentials step
cites 10.3.7 (usage-constrained keys with SUID and FQDN) instead; we follow the seed and do
not mix the two (docs/mef.md). Keys never appear in ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from m2msec.crypto.keyexport import LABEL_BOOTSTRAP, ExportedKey, derive_km, derive_kpsa
from m2msec.ids import derivation_identity
from m2msec.keyids import KeId

__all__ = ["LABEL_BOOTSTRAP", "EnrolmentKey", "derive_for_target"]


@dataclass(frozen=True, slots=True)
class EnrolmentKey:
    """Ke and its KeID (TS-0003 10.3.1, 10.3.4); ``ke`` is never in ``repr``."""

    ke_id: KeId
    ke: bytes = field(repr=False)

    @classmethod
    def from_export(cls, exported: bytes, mef_fqdn: str) -> Self:
        """From the 48 octets of ``export_keying_material(LABEL_BOOTSTRAP, 48)``."""
        key = ExportedKey.from_export(bytes(exported))
        return cls(KeId.from_relative(key.relative_id, mef_fqdn), key.key)


def derive_for_target(ke: bytes, target_id: str, *, enrolee_b: bool) -> bytes:
    """Km for a MAF-ID (10.3.2) or, with ``enrolee_b``, Kpsa for an Enrolee B-ID (10.3.3)."""
    identity = derivation_identity(target_id, enrolee_b=enrolee_b)
    return derive_kpsa(ke, identity) if enrolee_b else derive_km(ke, identity)
