"""What the HSS holds for a subscriber and what the BSF keeps after a Ub run (TS 33.220
4.2.3, 4.4.2, 4.5.2), as records without storage (the store is :mod:`m2msec.gba.subscribers`).

* A subscriber (:class:`Subscriber`) is the HSS's entry for an IMPI (:func:`check_impi`,
  TS 23.003 13.3): the AKA credential (K, OPc), SQN_HE (the last SQN issued, TS 33.102
  Annex C), the AMF of its vectors, whether its credential is on a UICC (GBA_U,
  docs/readings.md A-08) and its GBA User Security Settings.
* GUSS (:class:`Guss`; TS 33.220 4.2.3, our reduced form, stored as JSON): the NAFs the
  subscriber may use, by FQDN, each with its application-specific user security settings
  (USS) as a JSON object that the BSF hands to that NAF over Zn (for example
  ``{"aeId": "/mn-cse/Cdev"}``, which the NAF binds as the peer identity), or ``any_naf``
  to allow every NAF with an empty USS. A NAF not allowed is refused the key (4.4.6, "the
  BSF ... shall check whether the NAF is authorised").
* A bootstrapping session (:class:`BootstrapSession`, TS 33.220 4.5.2) is the BSF's state
  after a successful Ub run: B-TID, IMPI, RAND, Ks and the key lifetime.

Secrets (K, OPc, Ks) stay out of ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal

from m2msec.errors import IdentifierError, StoreError
from m2msec.gba.aka import SubscriberKeys
from m2msec.ids import check_fqdn

__all__ = [
    "MAX_GUSS_OCTETS",
    "MAX_IMPI_OCTETS",
    "BootstrapSession",
    "GbaType",
    "Guss",
    "Subscriber",
    "check_impi",
]

MAX_IMPI_OCTETS: Final = 255
MAX_GUSS_OCTETS: Final = 64 * 1024
GbaType = Literal["GBA_ME", "GBA_U"]


def check_impi(impi: str) -> str:
    """An IMPI (an NAI, TS 23.003 13.3): 1-255 UTF-8 octets, no spaces, quotes or controls."""
    if not isinstance(impi, str) or not impi:
        raise IdentifierError("IMPI is empty")
    try:
        n = len(impi.encode("utf-8"))
    except UnicodeEncodeError:
        raise IdentifierError("IMPI is not valid Unicode text") from None
    if n > MAX_IMPI_OCTETS:
        raise IdentifierError(f"IMPI is longer than {MAX_IMPI_OCTETS} octets")
    bad = [c for c in impi if c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\']
    if bad:
        raise IdentifierError(f"IMPI {impi[:64]!r} contains {bad[0]!r}")
    return impi


@dataclass(frozen=True, slots=True)
class Guss:
    """GBA User Security Settings (reduced form, module docstring).

    ``nafs`` maps allowed NAF FQDNs (lower case) to their USS (a JSON object).
    """

    nafs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    any_naf: bool = False

    @classmethod
    def allowing(
        cls, nafs: Iterable[str] | Mapping[str, Mapping[str, Any]] = (), *, any_naf: bool = False
    ) -> Guss:
        """Build (and check) a GUSS from FQDNs, or from FQDN -> USS."""
        items: Iterable[tuple[str, Mapping[str, Any]]] = (
            nafs.items() if isinstance(nafs, Mapping) else ((n, {}) for n in nafs)
        )
        out: dict[str, Mapping[str, Any]] = {}
        for fqdn, uss in items:
            key = check_fqdn(str(fqdn).rstrip("."), "NAF FQDN in GUSS").lower()
            if not isinstance(uss, Mapping):
                raise IdentifierError(f"the USS of NAF {key} must be a JSON object")
            out[key] = MappingProxyType(dict(uss))
        return cls(MappingProxyType(out), any_naf)

    def uss_for(self, naf_fqdn: str) -> dict[str, Any] | None:
        """The USS for ``naf_fqdn`` (case-insensitive), ``{}`` under ``any_naf``, or None
        when this NAF is not allowed."""
        uss = self.nafs.get(naf_fqdn.lower().rstrip("."))
        if uss is not None:
            return dict(uss)
        return {} if self.any_naf else None

    def to_json(self) -> str:
        doc = {"anyNaf": self.any_naf, "nafs": {k: dict(v) for k, v in self.nafs.items()}}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Guss:
        if len(text) > MAX_GUSS_OCTETS:
            raise StoreError(f"GUSS larger than {MAX_GUSS_OCTETS} octets")
        try:
            doc = json.loads(text)
            nafs = doc["nafs"]
            any_naf = doc.get("anyNaf", False)
            if not isinstance(nafs, dict) or not isinstance(any_naf, bool):
                raise TypeError
            return cls.allowing(nafs, any_naf=any_naf)
        except (ValueError, KeyError, TypeError, IdentifierError) as exc:
            raise StoreError(f"stored GUSS is not valid: {exc}") from None


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One subscriber of the HSS simulator; K and OPc stay out of repr."""

    impi: str
    k: bytes = field(repr=False)
    opc: bytes = field(repr=False)
    sqn: int
    amf: bytes
    guss: Guss
    uicc: bool
    created_at: datetime

    @property
    def gba_type(self) -> GbaType:
        """GBA_U for a UICC-based credential, else GBA_ME (docs/readings.md A-08)."""
        return "GBA_U" if self.uicc else "GBA_ME"

    def keys(self) -> SubscriberKeys:
        return SubscriberKeys(self.impi, self.k, self.opc, self.amf)


@dataclass(frozen=True, slots=True)
class BootstrapSession:
    """A bootstrapping session of the BSF (TS 33.220 4.5.2); Ks stays out of repr."""

    btid: str
    impi: str
    rand: bytes
    ks: bytes = field(repr=False)
    created_at: datetime
    expires_at: datetime
    gba_type: GbaType = "GBA_ME"

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires_at
