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

The result is an :class:`~m2msec.frameworks.mef.result.EnrolmentResult` (Ke = Ks), kept in
the Enrolee store as a PSK enrolment is (:func:`enrol_gba_or_reuse`), so that
``m2msec connect --psk-identity <B-TID>`` finds its Kpsa.
"""

from __future__ import annotations

from typing import Final

from m2msec.crypto.gba import ks_ext_naf, ks_int_naf, naf_id, ua_protocol_id_tls_psk
from m2msec.errors import ConfigurationError
from m2msec.frameworks.gba import assume_utc
from m2msec.frameworks.gba_device import GbaDevice
from m2msec.frameworks.mef.result import EnrolmentResult
from m2msec.frameworks.mef.store import EnroleeStore
from m2msec.gba.ub import Bootstrap
from m2msec.ids import CseId, parse_entity_id
from m2msec.mef.records import EnrolmentTarget

__all__ = [
    "ENROLMENT_UA_SUITE",
    "bootstrap_id",
    "enrol_gba",
    "enrol_gba_or_reuse",
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


def bootstrap_id(device: GbaDevice) -> str:
    """The bootstrap credential of a GBA Enrolee in the Enrolee store: ``gba:<IMPI>``."""
    return f"gba:{device.impi}"


async def enrol_gba(
    device: GbaDevice,
    target: EnrolmentTarget,
    *,
    in_domain: str | None = None,
    enrolee_id: str = "",
    fresh: bool = False,
) -> EnrolmentResult:
    """Bootstrap with the MEF's BSF, or reuse a valid Ks (seed 004 8.3.3.1), and derive the
    target's Km or Kpsa: KeID = B-TID, Ke = Ks, the Enrolment Expiry = Ks's; ``in_domain``
    (for a CSE's public domain name) defaults to the B-TID's domain without its first
    label. ``fresh`` bootstraps again even if Ks is still valid; ``enrolee_id`` is our
    configured one."""
    target_naf_fqdn(target, in_domain or "in.invalid")  # refuse an unusable target first
    boot = await device.ensure_bootstrap(force=fresh)
    # As for a PSK bootstrap, the IN domain defaults to the MEF's FQDN without its first label.
    naf_fqdn = target_naf_fqdn(target, in_domain or boot.btid.rpartition("@")[2].partition(".")[2])
    key = gba_credential(boot, naf_fqdn, uicc=device.uicc)
    expires = assume_utc(boot.expires)
    return EnrolmentResult(
        boot.btid, target, enrolee_id, expires, bootstrap_id(device), boot.ks, key
    )


async def enrol_gba_or_reuse(
    device: GbaDevice,
    target: EnrolmentTarget,
    store: EnroleeStore,
    *,
    in_domain: str | None = None,
    enrolee_id: str = "",
    fresh: bool = False,
) -> tuple[EnrolmentResult, bool]:
    """:func:`enrol_gba`, kept in the Enrolee store; (result, reused) where ``reused`` says
    the B-TID was stored already (the same valid Ks), so nothing new was written."""
    result = await enrol_gba(
        device, target, in_domain=in_domain, enrolee_id=enrolee_id, fresh=fresh
    )
    known = store.get(result.ke_id)
    if known is not None and known.target == target:
        return known, True
    if known is None:
        store.save(result)
        return result, False
    raise ConfigurationError(
        f"B-TID {result.ke_id} is stored for {known.target}: run m2msec enrol --gba --renew"
    )
