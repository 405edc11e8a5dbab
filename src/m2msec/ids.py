"""oneM2M identifiers used by the security frameworks: small frozen values, no I/O.

Formats and where they come from:

* CSE-ID and AE-ID: TS-0001 table 7.2-1 (SP-relative, absolute, AE-ID-Stem); the CSE
  public domain name ``<CSE-ID>.<IN public domain>``: TS-0001 6.5.1.1.
* Credential-ID ``typeID '-' value``: TS-0003 10.4, type IDs from table 12.3.2.1-1.
* KpsaID ``Issuer_Relative_KpsaID@Issuer-FQDN``: TS-0003 10.5.
* KmID ``MAF_RELATIVE_KmID@MAF-FQDN``: TS-0003 10.6.
* KeID ``hexBinary(RelativeKeID)@MEF-FQDN``: TS-0003 10.3.4.
* MAF Key Identifier ``hexBinary(KcID)@MAF-FQDN`` (:class:`KcId`): TS-0003 10.3.5.

Comparison (docs/readings.md A-05): KpsaID compares octet-exact; KmID's relative part and every
other FQDN part compare case-insensitively; hexBinary is emitted in lower case and
accepted in either case. Identifiers derived from GBA (docs/readings.md A-25: KmID = KpsaID =
B-TID) may be built with ``verbatim=True``, which skips the 10.5/10.6/10.4 character
check (any visible ASCII is then allowed) but keeps the length and FQDN checks.

Entity-ID disambiguation (:func:`parse_entity_id`): a bare text starting with 'C' or 'S'
is an AE-ID-Stem (TS-0001 reserves these initial letters for stems); ``/a/b`` is a
C-stem SP-relative AE-ID; a single segment ``/x`` is an S-stem AE-ID when ``x`` starts
with 'S' and a CSE-ID otherwise (TS-0001's own examples ``/CSE090112`` and ``/C3219`` are
CSE-IDs, and a C-stem never stands alone after a slash). ``/S...`` stays ambiguous with a
CSE-ID starting with 'S'; both normalise to the same string, so originator checks do not
depend on the choice. Use :meth:`CseId.parse` to force a CSE-ID.

Naming rules (:func:`entity_kind`, :func:`absolute_ae_id`, :func:`subject_alt_name`):
which kind of peer an identifier names, and how a certificate names it in its
subjectAltName (TS-0003 10.1.1.5, 10.1.1.7) — a CSE-ID as its public domain name
(dNSName), an AE-ID as its Absolute AE-ID (URI).

Every malformed identifier raises :class:`~m2msec.errors.IdentifierError`; messages name
the identifier kind, the text (shortened) and the reason, never key material.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import ClassVar, Literal, Self, TypeAlias

from m2msec.errors import IdentifierError

__all__ = [
    "MAX_CREDENTIAL_ID_LENGTH",
    "MAX_FQDN_LENGTH",
    "MAX_ID_SEGMENT_LENGTH",
    "MAX_PSK_IDENTITY_LENGTH",
    "AeId",
    "CredIdType",
    "CredentialId",
    "CseId",
    "EntityId",
    "KcId",
    "KeId",
    "KmId",
    "KpsaId",
    "check_fqdn",
    "normalise_originator",
    "originator_within",
    "parse_entity_id",
]

#: Longest CSE-ID or AE-ID-Stem we accept (our bound; TS-0001 sets none).
MAX_ID_SEGMENT_LENGTH = 255
#: RFC 4279 clause 5.3: a PSK identity is at most 128 octets (KpsaID, KmID, KcId, KeId).
MAX_PSK_IDENTITY_LENGTH = 128
#: RFC 1035: a domain name is at most 253 characters in text form.
MAX_FQDN_LENGTH = 253
#: Longest Credential-ID we accept (our bound; TS-0003 10.4 sets none).
MAX_CREDENTIAL_ID_LENGTH = 512

_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")  # RFC 3986 2.3
_KEY_RELATIVE = re.compile(r"[A-Za-z0-9._-]+")  # TS-0003 10.5, 10.6
_CRED_VALUE = re.compile(r"[A-Za-z0-9._@-]+")  # TS-0003 10.4
_VISIBLE = re.compile(r"[\x21-\x7e]+")  # verbatim (GBA) ids: visible ASCII
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_TYPE_ID = re.compile(r"[1-9][0-9]{0,3}")

_UNRESERVED_TEXT = "letters, digits, '-', '.', '_', '~'"
_KEY_TEXT = "letters, digits, '.', '_', '-'"


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _error(kind: str, text: str, why: str) -> IdentifierError:
    return IdentifierError(f"invalid {kind} {_show(text)}: {why}")


def check_fqdn(fqdn: str, kind: str = "FQDN") -> str:
    """Return ``fqdn`` if it is a DNS name (RFC 1035/1123 host syntax), else raise.

    Labels are 1-63 letters, digits or hyphens, neither starting nor ending with a
    hyphen; the whole name is at most 253 characters, with no trailing dot.
    """
    if not fqdn:
        raise _error(kind, fqdn, "FQDN is empty")
    if len(fqdn) > MAX_FQDN_LENGTH:
        raise _error(kind, fqdn, f"FQDN is longer than {MAX_FQDN_LENGTH} characters")
    for label in fqdn.split("."):
        if not _LABEL.fullmatch(label):
            raise _error(
                kind,
                fqdn,
                f"FQDN label {_show(label)} is not 1-63 letters, digits or hyphens "
                "that neither start nor end with a hyphen",
            )
    return fqdn


def _check_segment(kind: str, text: str, segment: str, what: str) -> None:
    """An SP-relative CSE-ID or an AE-ID-Stem: RFC 3986 unreserved characters."""
    if not segment:
        raise _error(kind, text, f"{what} is empty")
    if len(segment) > MAX_ID_SEGMENT_LENGTH:
        raise _error(kind, text, f"{what} is longer than {MAX_ID_SEGMENT_LENGTH} characters")
    if not _UNRESERVED.fullmatch(segment):
        raise _error(kind, text, f"{what} may contain only {_UNRESERVED_TEXT}")
    if segment in (".", ".."):
        raise _error(kind, text, f"{what} must not be a dot segment")


def _lower(fqdn: str | None) -> str | None:
    return None if fqdn is None else fqdn.lower()


# --------------------------------------------------------------------------- CSE-ID / AE-ID


@dataclass(frozen=True)
class CseId:
    """A CSE-ID (TS-0001 table 7.2-1): SP-relative ``/{id}`` or absolute ``//{FQDN}/{id}``.

    ``relative`` is the bare id (``mn-cse-123456``); ``sp_fqdn`` the M2M-SP FQDN of the
    absolute form, or None. The id compares case-sensitively, the FQDN case-insensitively.
    """

    relative: str
    sp_fqdn: str | None = field(default=None, compare=False)
    _sp_key: str | None = field(init=False, repr=False)

    _KIND: ClassVar[str] = "CSE-ID"

    def __post_init__(self) -> None:
        if self.sp_fqdn is not None:
            check_fqdn(self.sp_fqdn, self._KIND)
        _check_segment(self._KIND, str(self), self.relative, "CSE-ID")
        object.__setattr__(self, "_sp_key", _lower(self.sp_fqdn))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse ``/{id}``, ``//{FQDN}/{id}`` or a bare ``{id}`` (taken as SP-relative)."""
        if text.startswith("//"):
            fqdn, sep, rest = text[2:].partition("/")
            if not sep:
                raise _error(cls._KIND, text, "absolute form is //{FQDN}/{CSE-ID}")
            _check_segment(cls._KIND, text, rest, "CSE-ID")
            return cls(rest, fqdn)
        rest = text[1:] if text.startswith("/") else text
        _check_segment(cls._KIND, text, rest, "CSE-ID")
        return cls(rest)

    def sp_relative(self) -> str:
        """The SP-relative form ``/{id}``."""
        return f"/{self.relative}"

    def public_domain_name(self, in_domain: str) -> str:
        """``<CSE-ID>.<IN public domain>`` (TS-0001 6.5.1.1), e.g. the SNI for this CSE.

        The CSE-ID must be usable as one DNS label (letters, digits, inner hyphens).
        """
        check_fqdn(in_domain, "IN public domain")
        if not _LABEL.fullmatch(self.relative):
            raise _error(
                self._KIND,
                str(self),
                "cannot form a public domain name: the CSE-ID is not a single DNS label",
            )
        return check_fqdn(f"{self.relative}.{in_domain}", "CSE public domain name")

    def __str__(self) -> str:
        if self.sp_fqdn is None:
            return self.sp_relative()
        return f"//{self.sp_fqdn}/{self.relative}"


@dataclass(frozen=True)
class AeId:
    """An AE-ID (TS-0001 table 7.2-1).

    ``stem`` is the AE-ID-Stem ('C...' assigned by the registrar CSE, 'S...' by the
    M2M-SP). ``cse`` is the bare SP-relative id of the registrar, known for C-stems only
    (the registrar is not part of an S-stem AE-ID). ``sp_fqdn`` is set for the absolute
    form. ``as_stem`` records that the text was a bare stem so that ``str()`` gives it back
    (docs/readings.md A-14: store as given); it does not take part in equality, so ``Clight-AE1``
    under ``mn-cse-123456`` equals ``/mn-cse-123456/Clight-AE1``.
    """

    stem: str
    cse: str | None = None
    sp_fqdn: str | None = field(default=None, compare=False)
    as_stem: bool = field(default=False, compare=False)
    _sp_key: str | None = field(init=False, repr=False)

    _KIND: ClassVar[str] = "AE-ID"

    def __post_init__(self) -> None:
        text = self._display()
        _check_segment(self._KIND, text, self.stem, "AE-ID-Stem")
        if self.stem[0] not in "CS":
            raise _error(self._KIND, text, "AE-ID-Stem must start with 'C' or 'S'")
        if self.stem[0] == "S" and self.cse is not None:
            raise _error(self._KIND, text, "an S-stem AE-ID has no registrar CSE-ID segment")
        if self.cse is not None:
            _check_segment(self._KIND, text, self.cse, "registrar CSE-ID")
        elif self.stem[0] == "C" and not self.as_stem:
            raise _error(self._KIND, text, "a C-stem AE-ID needs its registrar: /{CSE-ID}/{stem}")
        if self.sp_fqdn is not None:
            if self.as_stem:
                raise _error(self._KIND, text, "a bare AE-ID-Stem carries no SP FQDN")
            check_fqdn(self.sp_fqdn, self._KIND)
        object.__setattr__(self, "_sp_key", _lower(self.sp_fqdn))

    @classmethod
    def parse(cls, text: str, registrar: CseId | None = None) -> Self:
        """Parse a stem, ``/{cse}/{C-stem}``, ``/{S-stem}`` or their ``//{FQDN}`` forms.

        ``registrar`` (the Registrar CSE) gives a bare C-stem its context; only its bare
        id is used. It is ignored for every other form.
        """
        if not text:
            raise _error(cls._KIND, text, "AE-ID is empty")
        fqdn: str | None = None
        if text.startswith("//"):
            fqdn, sep, body = text[2:].partition("/")
            if not sep:
                raise _error(cls._KIND, text, "absolute form is //{FQDN}/{SP-relative AE-ID}")
        elif text.startswith("/"):
            body = text[1:]
        else:
            cse = registrar.relative if registrar is not None and text[0] == "C" else None
            return cls(text, cse, as_stem=True)
        segments = body.split("/")
        if len(segments) == 1:
            if segments[0].startswith("C"):
                raise _error(
                    cls._KIND, text, "a C-stem AE-ID needs its registrar: /{CSE-ID}/{stem}"
                )
            return cls(segments[0], None, fqdn)
        if len(segments) == 2:
            if segments[1].startswith("S"):
                raise _error(cls._KIND, text, "an S-stem AE-ID is /{stem}, with no CSE-ID segment")
            return cls(segments[1], segments[0], fqdn)
        raise _error(cls._KIND, text, "too many '/' segments for an AE-ID")

    @property
    def registrar(self) -> CseId | None:
        """The registrar CSE of a C-stem AE, if known; None for S-stems."""
        return None if self.cse is None else CseId(self.cse, self.sp_fqdn)

    def sp_relative(self) -> str:
        """The SP-relative AE-ID: ``/{cse}/{C-stem}`` or ``/{S-stem}``."""
        if self.stem[0] == "S":
            return f"/{self.stem}"
        if self.cse is None:
            raise _error(self._KIND, self.stem, "bare C-stem: the registrar CSE-ID is unknown")
        return f"/{self.cse}/{self.stem}"

    def _display(self) -> str:
        if self.as_stem or (self.stem[:1] == "C" and self.cse is None):
            return self.stem
        rel = f"/{self.stem}" if self.cse is None else f"/{self.cse}/{self.stem}"
        return rel if self.sp_fqdn is None else f"//{self.sp_fqdn}{rel}"

    def __str__(self) -> str:
        return self._display()


EntityId: TypeAlias = CseId | AeId


def parse_entity_id(text: str, registrar: CseId | None = None) -> CseId | AeId:
    """Parse an AE-ID or CSE-ID, deciding by form (see the module docstring)."""
    if not text:
        raise IdentifierError("invalid entity ID '': it is empty")
    if text.startswith("//"):
        _fqdn, _sep, body = text[2:].partition("/")
    elif text.startswith("/"):
        body = text[1:]
    else:
        return AeId.parse(text, registrar) if text[0] in "CS" else CseId.parse(text)
    if "/" in body or body.startswith("S"):
        return AeId.parse(text, registrar)
    return CseId.parse(text)


class PeerKind(StrEnum):
    """What kind of identifier a peer was bound to."""

    AE = "ae"
    CSE = "cse"
    CREDENTIAL = "credential"  # a Credential-ID (TS-0003 10.4), resolved later
    SERVICE = "service"  # a MAF/MEF/BSF FQDN


def entity_kind(entity_id: str) -> PeerKind:
    """Whether a configured entity identity names an AE or a CSE."""
    return PeerKind.AE if isinstance(parse_entity_id(entity_id), AeId) else PeerKind.CSE


def absolute_ae_id(ae: AeId, sp_fqdn: str) -> str:
    """The Absolute AE-ID ``{M2M-SP-ID}{SP-relative AE-ID}`` (TS-0001 table 7.2-1).

    An AE-ID already in absolute form keeps its own FQDN.
    """
    return f"//{ae.sp_fqdn or sp_fqdn}{ae.sp_relative()}"


def subject_alt_name(
    entity: EntityId, *, in_domain: str, sp_fqdn: str | None = None
) -> tuple[Literal["DNS", "URI"], str]:
    """The subjectAltName entry that names ``entity`` (TS-0003 10.1.1.5, 10.1.1.7).

    A CSE-ID gets its public domain name as a dNSName, an AE-ID its Absolute AE-ID as a
    URI. ``sp_fqdn`` (the M2M-SP FQDN of Absolute AE-IDs) defaults to ``in_domain``.
    """
    if isinstance(entity, CseId):
        return "DNS", entity.public_domain_name(in_domain)
    return "URI", absolute_ae_id(entity, sp_fqdn or in_domain)


def normalise_originator(origin: str, registrar: CseId, sp_fqdn: str | None = None) -> str:
    """The form of an X-M2M-Origin to compare with an authenticated identity (A-14).

    AE-ID-Stems and SP-relative or absolute AE-IDs become the SP-relative AE-ID (a bare
    C-stem is placed under ``registrar``); CSE-IDs become ``/{id}``. An absolute id stays
    absolute unless its FQDN equals ``sp_fqdn`` (default: ``registrar.sp_fqdn``), compared
    case-insensitively.
    """
    local = sp_fqdn if sp_fqdn is not None else registrar.sp_fqdn
    entity = parse_entity_id(origin, CseId(registrar.relative))
    if entity.sp_fqdn is not None and (local is None or entity.sp_fqdn.lower() != local.lower()):
        return str(entity)
    return entity.sp_relative()


def originator_within(origin_norm: str, cse: CseId) -> bool:
    """True if a normalised originator is ``cse`` itself or lies under it (``/cse/...``).

    S-stem AE-IDs never lie under a CSE: their SP-relative form has no CSE segment. An
    absolute originator matches only an absolute ``cse`` with the same FQDN.
    """
    if origin_norm.startswith("//"):
        if cse.sp_fqdn is None:
            return False
        fqdn, sep, rest = origin_norm[2:].partition("/")
        if not sep or fqdn.lower() != cse.sp_fqdn.lower():
            return False
        origin_norm = "/" + rest
    base = cse.sp_relative()
    return origin_norm == base or origin_norm.startswith(base + "/")


# --------------------------------------------------------------------------- key identifiers


def _check_key_relative(kind: str, text: str, relative: str, verbatim: bool) -> None:
    if not relative:
        raise _error(kind, text, "relative part before '@' is empty")
    if verbatim:
        if not _VISIBLE.fullmatch(relative):
            raise _error(kind, text, "relative part may contain only visible ASCII")
    elif not _KEY_RELATIVE.fullmatch(relative):
        raise _error(kind, text, f"relative part may contain only {_KEY_TEXT}")


def _split_at(kind: str, text: str) -> tuple[str, str]:
    relative, sep, fqdn = text.rpartition("@")
    if not sep:
        raise _error(kind, text, "missing '@' before the FQDN")
    return relative, fqdn


def _check_psk_length(kind: str, text: str) -> None:
    if len(text.encode("utf-8")) > MAX_PSK_IDENTITY_LENGTH:
        raise _error(kind, text, f"longer than {MAX_PSK_IDENTITY_LENGTH} octets (RFC 4279)")


@dataclass(frozen=True)
class KpsaId:
    """KpsaID = ``Issuer_Relative_KpsaID@Issuer-FQDN`` (TS-0003 10.5).

    Compared octet-exact, FQDN included (docs/readings.md A-05): it is the psk_identity.
    """

    relative: str
    issuer_fqdn: str
    verbatim: bool = field(default=False, compare=False)

    _KIND: ClassVar[str] = "KpsaID"

    def __post_init__(self) -> None:
        text = str(self)
        _check_key_relative(self._KIND, text, self.relative, self.verbatim)
        check_fqdn(self.issuer_fqdn, self._KIND)
        _check_psk_length(self._KIND, text)

    @classmethod
    def parse(cls, text: str, *, verbatim: bool = False) -> Self:
        """Parse; ``verbatim`` skips the character check for GBA B-TIDs (A-25)."""
        relative, fqdn = _split_at(cls._KIND, text)
        return cls(relative, fqdn, verbatim)

    def __str__(self) -> str:
        return f"{self.relative}@{self.issuer_fqdn}"


@dataclass(frozen=True)
class KmId:
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
        text = str(self)
        _check_key_relative(self._KIND, text, self.relative, self.verbatim)
        check_fqdn(self.maf_fqdn, self._KIND)
        _check_psk_length(self._KIND, text)
        object.__setattr__(self, "canonical", text.lower())

    @classmethod
    def parse(cls, text: str, *, verbatim: bool = False) -> Self:
        """Parse; ``verbatim`` skips the character check for GBA B-TIDs (A-25)."""
        relative, fqdn = _split_at(cls._KIND, text)
        return cls(relative, fqdn, verbatim)

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
            raise _error(self._KIND, text, "relative key ID is empty")
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
            raise _error(cls._KIND, text, "relative key ID before '@' is empty")
        if not _HEX.fullmatch(hex_part):
            raise _error(cls._KIND, text, "relative key ID is not an even number of hex digits")
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
            raise _error(
                self._KIND, f"{self.type_id}-{self.value}", "unknown typeID (table 12.3.2.1-1)"
            ) from None
        text = str(self)
        if not self.value:
            raise _error(self._KIND, text, "value part is empty")
        if len(text) > MAX_CREDENTIAL_ID_LENGTH:
            raise _error(self._KIND, text, f"longer than {MAX_CREDENTIAL_ID_LENGTH} characters")
        if self.verbatim:
            if not _VISIBLE.fullmatch(self.value):
                raise _error(self._KIND, text, "value may contain only visible ASCII")
        elif not _CRED_VALUE.fullmatch(self.value):
            raise _error(
                self._KIND, text, "value may contain only letters, digits, '.', '_', '-', '@'"
            )

    @classmethod
    def parse(cls, text: str, *, verbatim: bool = False) -> Self:
        head, sep, value = text.partition("-")
        if not sep:
            raise _error(cls._KIND, text, "missing '-' after the typeID")
        if not _TYPE_ID.fullmatch(head):
            raise _error(cls._KIND, text, "typeID is not a positive decimal integer")
        try:
            type_id = CredIdType(int(head))
        except ValueError:
            raise _error(cls._KIND, text, "unknown typeID (table 12.3.2.1-1)") from None
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
