"""Key and credential identifiers of TS-0003: small frozen values, no I/O.

* KpsaID ``Issuer_Relative_KpsaID@Issuer-FQDN``: TS-0003 10.5.
* KmID ``MAF_RELATIVE_KmID@MAF-FQDN``: TS-0003 10.6.
* KeID ``hexBinary(RelativeKeID)@MEF-FQDN``: TS-0003 10.3.4.
* MAF Key Identifier ``hexBinary(KcID)@MAF-FQDN`` (:class:`KcId`): TS-0003 10.3.5.
* Credential-ID ``typeID '-' value``: TS-0003 10.4, type IDs from table 12.3.2.1-1.

Each names a key, and each but the Credential-ID travels as a psk_identity, so it is at
most 128 octets (RFC 4279 5.3). Comparison (docs/readings.md A-05): KpsaID compares
octet-exact; KmID's relative part and every FQDN part compare case-insensitively;
hexBinary is emitted in lower case and accepted in either case. Identifiers derived from
GBA (docs/readings.md A-25: KmID = KpsaID = B-TID) may be built with ``verbatim=True``,
which skips the 10.5/10.6/10.4 character check (any visible ASCII is then allowed) but
keeps the length and FQDN checks. The entity identifiers these keys are bound to (CSE-ID,
AE-ID) and the FQDN syntax are :mod:`m2msec.ids`.

A malformed identifier raises :class:`~m2msec.errors.IdentifierError` built by
:func:`m2msec.ids.id_error`, so no message carries key material.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Self

from m2msec.ids import check_fqdn, id_error

__all__ = [
    "MAX_CREDENTIAL_ID_LENGTH",
    "MAX_PSK_IDENTITY_LENGTH",
    "CredIdType",
    "CredentialId",
    "KcId",
    "KeId",
    "KmId",
    "KpsaId",
]

#: RFC 4279 clause 5.3: a PSK identity is at most 128 octets (KpsaID, KmID, KcId, KeId).
MAX_PSK_IDENTITY_LENGTH = 128
#: Longest Credential-ID we accept (our bound; TS-0003 10.4 sets none).
MAX_CREDENTIAL_ID_LENGTH = 512

_KEY_RELATIVE = re.compile(r"[A-Za-z0-9._-]+")  # TS-0003 10.5, 10.6
_CRED_VALUE = re.compile(r"[A-Za-z0-9._@-]+")  # TS-0003 10.4
_VISIBLE = re.compile(r"[\x21-\x7e]+")  # verbatim (GBA) ids: visible ASCII
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_TYPE_ID = re.compile(r"[1-9][0-9]{0,3}")

_KEY_TEXT = "letters, digits, '.', '_', '-'"


# --------------------------------------------------------------------------- key identifiers


def _check_key_relative(kind: str, text: str, relative: str, verbatim: bool) -> None:
    if not relative:
        raise id_error(kind, text, "relative part before '@' is empty")
    if verbatim:
        if not _VISIBLE.fullmatch(relative):
            raise id_error(kind, text, "relative part may contain only visible ASCII")
    elif not _KEY_RELATIVE.fullmatch(relative):
        raise id_error(kind, text, f"relative part may contain only {_KEY_TEXT}")


def _split_at(kind: str, text: str) -> tuple[str, str]:
    relative, sep, fqdn = text.rpartition("@")
    if not sep:
        raise id_error(kind, text, "missing '@' before the FQDN")
    return relative, fqdn


def _check_psk_length(kind: str, text: str) -> None:
    if len(text.encode("utf-8")) > MAX_PSK_IDENTITY_LENGTH:
        raise id_error(kind, text, f"longer than {MAX_PSK_IDENTITY_LENGTH} octets (RFC 4279)")


class _RelativeAtFqdn:
    """``relative@FQDN`` identifiers (KpsaID, KmID): one check and one parser for both."""

    relative: str
    verbatim: bool
    _KIND: ClassVar[str]

    def _check(self, fqdn: str) -> str:
        """Check the relative part, ``fqdn`` and the length; the text back."""
        text = str(self)
        _check_key_relative(self._KIND, text, self.relative, self.verbatim)
        check_fqdn(fqdn, self._KIND)
        _check_psk_length(self._KIND, text)
        return text

    @classmethod
    def parse(cls, text: str, *, verbatim: bool = False) -> Self:
        """Parse; ``verbatim`` skips the character check for GBA B-TIDs (A-25)."""
        relative, fqdn = _split_at(cls._KIND, text)
        # The dataclass subclasses take (relative, FQDN, verbatim).
        return cls(relative, fqdn, verbatim)  # type: ignore[call-arg]


@dataclass(frozen=True)
class KpsaId(_RelativeAtFqdn):
    """KpsaID = ``Issuer_Relative_KpsaID@Issuer-FQDN`` (TS-0003 10.5).

    Compared octet-exact, FQDN included (docs/readings.md A-05): it is the psk_identity.
    """

    relative: str
    issuer_fqdn: str
    verbatim: bool = field(default=False, compare=False)

    _KIND: ClassVar[str] = "KpsaID"

    def __post_init__(self) -> None:
        self._check(self.issuer_fqdn)

    def __str__(self) -> str:
        return f"{self.relative}@{self.issuer_fqdn}"


@dataclass(frozen=True)
class KmId(_RelativeAtFqdn):
    """KmID = ``MAF_RELATIVE_KmID@MAF-FQDN`` (TS-0003 10.6).

    Both parts compare case-insensitively (the relative part per 10.6, the FQDN per
    A-05); ``str()`` keeps the original text, :attr:`canonical` is the lower-case key.
    """

    relative: str = field(compare=False)
    maf_fqdn: str = field(compare=False)
    verbatim: bool = field(default=False, compare=False)
    canonical: str = field(init=False, repr=False)

    _KIND: ClassVar[str] = "KmID"

    def __post_init__(self) -> None:
        object.__setattr__(self, "canonical", self._check(self.maf_fqdn).lower())

    def __str__(self) -> str:
        return f"{self.relative}@{self.maf_fqdn}"


@dataclass(frozen=True, repr=False)
class _HexKeyId:
    """``hexBinary(relative)@FQDN``; equality on the octets and the lower-cased FQDN."""

    relative_bytes: bytes
    fqdn: str = field(compare=False)
    _fqdn_key: str = field(init=False, repr=False)

    _KIND: ClassVar[str] = "key identifier"

    def __post_init__(self) -> None:
        text = str(self)
        if not self.relative_bytes:
            raise id_error(self._KIND, text, "relative key ID is empty")
        check_fqdn(self.fqdn, self._KIND)
        _check_psk_length(self._KIND, text)
        object.__setattr__(self, "_fqdn_key", self.fqdn.lower())

    @classmethod
    def from_relative(cls, relative: bytes, fqdn: str) -> Self:
        """Build from the exported relative ID (TS-0003 10.3.1) and the function's FQDN."""
        return cls(bytes(relative), fqdn)

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse; the hexBinary part may be in either letter case (A-05)."""
        hex_part, fqdn = _split_at(cls._KIND, text)
        if not hex_part:
            raise id_error(cls._KIND, text, "relative key ID before '@' is empty")
        if not _HEX.fullmatch(hex_part):
            raise id_error(cls._KIND, text, "relative key ID is not an even number of hex digits")
        return cls(bytes.fromhex(hex_part), fqdn)

    @property
    def relative_hex(self) -> str:
        """``hexBinary`` of the relative ID, lower case."""
        return self.relative_bytes.hex()

    def __str__(self) -> str:
        return f"{self.relative_hex}@{self.fqdn}"

    def __repr__(self) -> str:
        # The identifier as sent on the wire, not its octets (issue 9).
        return f"{type(self).__name__}({str(self)!r})"


@dataclass(frozen=True, repr=False)
class KcId(_HexKeyId):
    """MAF Key Identifier ``hexBinary(KcID)@MAF-FQDN`` (TS-0003 10.3.5), the psk_identity
    Entity A sends to Entity B; B finds the MAF from :attr:`maf_fqdn`."""

    _KIND: ClassVar[str] = "MAF Key Identifier"

    @property
    def maf_fqdn(self) -> str:
        return self.fqdn


@dataclass(frozen=True, repr=False)
class KeId(_HexKeyId):
    """KeID = ``hexBinary(RelativeKeID)@MEF-FQDN`` (TS-0003 10.3.4).

    A GBA KeID is a B-TID (NOTES, MEF) and is not a :class:`KeId`.
    """

    _KIND: ClassVar[str] = "KeID"

    @property
    def mef_fqdn(self) -> str:
        return self.fqdn


# --------------------------------------------------------------------------- Credential-ID


class CredIdType(IntEnum):
    """``sec:credIDTypeID`` (TS-0003 table 12.3.2.1-1)."""

    KPM_ID = 10
    KM_ID = 11
    SAEF_KEY = 12  # KpsaID or KcID
    ESPRIM_KEY = 13
    ESDATA_ENCRYPTION_KEY = 14
    ESDATA_KEY_WRAP_KEY = 15
    ESDATA_HMAC_KEY = 16
    TLS_RAW_PUBLIC_KEY = 30
    TLS_DEVICE_CERT = 31
    TLS_CSE_ID_CERT = 32
    TLS_AE_ID_CERT = 33
    TLS_NODE_ID_CERT = 34
    ESDATA_KM_RAW_PUBLIC_KEY = 41
    ESDATA_KM_DEVICE_CERT = 42
    ESDATA_KM_CSE_ID_CERT = 43
    ESDATA_KM_AE_ID_CERT = 44
    ESDATA_KM_NODE_ID_CERT = 45
    ESDATA_SIG_RAW_PUBLIC_KEY = 51
    ESDATA_SIG_DEVICE_CERT = 52
    ESDATA_SIG_CSE_ID_CERT = 53
    ESDATA_SIG_AE_ID_CERT = 54
    ESDATA_SIG_NODE_ID_CERT = 55


@dataclass(frozen=True)
class CredentialId:
    """Credential-ID = ``typeID '-' value`` (TS-0003 10.4), compared exactly.

    ``verbatim`` (docs/readings.md A-25) skips the value character check, for GBA-derived ids.
    """

    type_id: CredIdType
    value: str
    verbatim: bool = field(default=False, compare=False)

    _KIND: ClassVar[str] = "Credential-ID"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "type_id", CredIdType(self.type_id))
        except ValueError:
            raise id_error(
                self._KIND, f"{self.type_id}-{self.value}", "unknown typeID (table 12.3.2.1-1)"
            ) from None
        text = str(self)
        if not self.value:
            raise id_error(self._KIND, text, "value part is empty")
        if len(text) > MAX_CREDENTIAL_ID_LENGTH:
            raise id_error(self._KIND, text, f"longer than {MAX_CREDENTIAL_ID_LENGTH} characters")
        if self.verbatim:
            if not _VISIBLE.fullmatch(self.value):
                raise id_error(self._KIND, text, "value may contain only visible ASCII")
        elif not _CRED_VALUE.fullmatch(self.value):
            raise id_error(
                self._KIND, text, "value may contain only letters, digits, '.', '_', '-', '@'"
            )

    @classmethod
    def parse(cls, text: str, *, verbatim: bool = False) -> Self:
        head, sep, value = text.partition("-")
        if not sep:
            raise id_error(cls._KIND, text, "missing '-' after the typeID")
        if not _TYPE_ID.fullmatch(head):
            raise id_error(cls._KIND, text, "typeID is not a positive decimal integer")
        try:
            type_id = CredIdType(int(head))
        except ValueError:
            raise id_error(cls._KIND, text, "unknown typeID (table 12.3.2.1-1)") from None
        return cls(type_id, value, verbatim)

    @classmethod
    def for_kpsa_id(cls, kpsa_id: KpsaId | str) -> Self:
        """``12-<KpsaID>``; verbatim when the KpsaID is (GBA, A-25)."""
        kpsa = kpsa_id if isinstance(kpsa_id, KpsaId) else KpsaId.parse(kpsa_id)
        return cls(CredIdType.SAEF_KEY, str(kpsa), kpsa.verbatim)

    @classmethod
    def for_km_id(cls, km_id: KmId | str) -> Self:
        """``11-<KmID>``; verbatim when the KmID is (GBA, A-25)."""
        km = km_id if isinstance(km_id, KmId) else KmId.parse(km_id)
        return cls(CredIdType.KM_ID, str(km), km.verbatim)

    @classmethod
    def for_kc_id(cls, kc_id: KcId | str) -> Self:
        """``12-<MAF Key Identifier>``."""
        kc = kc_id if isinstance(kc_id, KcId) else KcId.parse(kc_id)
        return cls(CredIdType.SAEF_KEY, str(kc))

    def __str__(self) -> str:
        return f"{int(self.type_id)}-{self.value}"
