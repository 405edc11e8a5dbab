"""GBA-based bootstrap with the MEF as BSF (seed 004 8.3.3.1 = TS-0003 V3.18 8.3.2.3).

The Enrolee bootstraps over Ub with the MEF's BSF (:class:`~m2msec.frameworks.gba_device.
GbaDevice`, :mod:`m2msec.gba.ub`): Ke = Ks and KeID = the B-TID. It then holds the NAF key
of its Enrolment Target as the credential, and so does the target, playing the NAF, over Zn
(:meth:`m2msec.frameworks.gba.GbaResponder.naf_key`), gated by the subscriber's GUSS:

* Km (a MAF) or Kpsa (an Enrolee B) = Ks_NAF (GBA_ME, = Ks_ext_NAF), or Ks_int_NAF with
  GBA_U (the application in the UICC);
* the NAF FQDN (V3.18 8.3.2.3) is the MAF-ID for a MAF, the public domain name of the
  CSE-ID (TS-0001 6.5.1.1) for a CSE as Enrolee B, the configured NAF FQDN of an AE
  (docs/readings.md A-27);
* the Ua protocol id in NAF_Id is shared-key TLS with TLS_PSK_WITH_AES_128_CBC_SHA256,
  ``01 00 01 00 AE``, whichever 10.2.2 suite the handshake then picks: the key exists
  before the handshake (docs/readings.md A-31);
* KmID = KpsaID = KeID = the B-TID, verbatim (docs/readings.md A-25).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from m2msec.crypto.gba import ks_ext_naf, ks_int_naf, naf_id, ua_protocol_id_tls_psk
from m2msec.errors import ConfigurationError
from m2msec.frameworks.gba import assume_utc
from m2msec.frameworks.gba_device import GbaDevice
from m2msec.gba.ub import Bootstrap
from m2msec.ids import CseId, parse_entity_id
from m2msec.mef.records import EnrolmentTarget

__all__ = [
    "ENROLMENT_UA_SUITE",
    "GbaEnrolment",
    "enrol_gba",
    "enrolment_naf_id",
    "gba_credential",
    "target_naf_fqdn",
]

#: TLS_PSK_WITH_AES_128_CBC_SHA256, the suite whose Ua protocol id NAF_Id carries (A-31).
ENROLMENT_UA_SUITE: Final = 0x00AE


def enrolment_naf_id(naf_fqdn: str) -> bytes:
    """NAF_Id of a seed 004 GBA credential: NAF FQDN || 01 00 01 00 AE (A-31)."""
    return naf_id(naf_fqdn, ua_protocol_id_tls_psk(ENROLMENT_UA_SUITE))


def target_naf_fqdn(target: EnrolmentTarget, in_domain: str | None = None) -> str:
    """The NAF FQDN of an Enrolment Target (V3.18 8.3.2.3, module docstring)."""
    if not target.is_enrolee_b:
        return target.canonical
    if target.naf_fqdn is not None:
        return target.naf_fqdn.lower()
    entity = parse_entity_id(target.canonical)
    if not isinstance(entity, CseId):
        raise ConfigurationError(
            f"Enrolee B {target.target_id!r} is an AE: give its NAF FQDN (docs/readings.md A-27)"
        )
    if in_domain is None:
        raise ConfigurationError(
            f"the NAF FQDN of {target.target_id!r} is its public domain name: give the IN domain"
        )
    return entity.public_domain_name(in_domain)


def gba_credential(bootstrap: Bootstrap, naf_fqdn: str, *, uicc: bool = False) -> bytes:
    """Km or Kpsa: Ks_int_NAF with ``uicc`` (GBA_U), else Ks_ext_NAF (= Ks_NAF, GBA_ME)."""
    derive = ks_int_naf if uicc else ks_ext_naf
    return derive(bootstrap.ks, bootstrap.rand, bootstrap.impi, enrolment_naf_id(naf_fqdn))


@dataclass(frozen=True, slots=True)
class GbaEnrolment:
    """A GBA enrolment: KeID = B-TID, the target and its NAF FQDN, the Ks lifetime, Km or
    Kpsa (never in ``repr``)."""

    ke_id: str
    target: EnrolmentTarget
    naf_fqdn: str
    expires: datetime
    uicc: bool
    credential: bytes = field(repr=False)

    @property
    def key_name(self) -> str:
        return self.target.key_name


async def enrol_gba(
    device: GbaDevice,
    target: EnrolmentTarget,
    *,
    in_domain: str | None = None,
    fresh: bool = False,
) -> GbaEnrolment:
    """Bootstrap with the MEF's BSF (or reuse a valid Ks, seed 004 8.3.3.1) and derive the
    target's Km or Kpsa. ``fresh`` bootstraps again even if Ks is still valid."""
    naf_fqdn = target_naf_fqdn(target, in_domain)
    boot = await device.ensure_bootstrap(force=fresh)
    key = gba_credential(boot, naf_fqdn, uicc=device.uicc)
    return GbaEnrolment(boot.btid, target, naf_fqdn, assume_utc(boot.expires), device.uicc, key)
