"""oneM2M entity identifiers and how they are named: small frozen values, no I/O.

Formats and where they come from:

* CSE-ID and AE-ID: TS-0001 table 7.2-1 (SP-relative, absolute, AE-ID-Stem); the CSE
  public domain name ``<CSE-ID>.<IN public domain>``: TS-0001 6.5.1.1.
* FQDNs (:func:`check_fqdn`): RFC 1035/1123 host syntax, compared case-insensitively
  (docs/readings.md A-05).

The identifiers of keys and credentials (KpsaID, KmID, KcId, KeID, Credential-ID, TS-0003
10.3-10.6) are :mod:`m2msec.keyids`, which builds on the FQDN check and the error shape
here.

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

The HMAC input of the Enrolment Key derivations (TS-0003 10.3.2, 10.3.3) has one canonical
text, made by :func:`derivation_identity` on both ends (Enrolee and MEF): NFKC, then the
lower-case FQDN of a MAF-ID, or the SP-relative CSE-ID / AE-ID of an Enrolee B.

Every malformed identifier raises :class:`~m2msec.errors.IdentifierError`; messages name
the identifier kind, the text (shortened) and the reason, never key material.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Literal, Self, TypeAlias

from m2msec.errors import IdentifierError

__all__ = [
    "MAX_FQDN_LENGTH",
    "MAX_ID_SEGMENT_LENGTH",
    "AeId",
    "CseId",
    "EntityId",
    "PeerKind",
    "absolute_ae_id",
    "check_fqdn",
    "derivation_identity",
    "entity_kind",
    "id_error",
    "normalise_originator",
    "originator_within",
    "parse_entity_id",
    "subject_alt_name",
]

#: Longest CSE-ID or AE-ID-Stem we accept (our bound; TS-0001 sets none).
MAX_ID_SEGMENT_LENGTH = 255
#: RFC 1035: a domain name is at most 253 characters in text form.
MAX_FQDN_LENGTH = 253

_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")  # RFC 3986 2.3
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

_UNRESERVED_TEXT = "letters, digits, '-', '.', '_', '~'"


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def id_error(kind: str, text: str, why: str) -> IdentifierError:
    """The one shape of an identifier error: kind, the text (shortened), the reason."""
    return IdentifierError(f"invalid {kind} {_show(text)}: {why}")


def check_fqdn(fqdn: str, kind: str = "FQDN") -> str:
    """Return ``fqdn`` if it is a DNS name (RFC 1035/1123 host syntax), else raise.

    Labels are 1-63 letters, digits or hyphens, neither starting nor ending with a
    hyphen; the whole name is at most 253 characters, with no trailing dot.
    """
    if not fqdn:
        raise id_error(kind, fqdn, "FQDN is empty")
    if len(fqdn) > MAX_FQDN_LENGTH:
        raise id_error(kind, fqdn, f"FQDN is longer than {MAX_FQDN_LENGTH} characters")
    for label in fqdn.split("."):
        if not _LABEL.fullmatch(label):
            raise id_error(
                kind,
                fqdn,
                f"FQDN label {_show(label)} is not 1-63 letters, digits or hyphens "
                "that neither start nor end with a hyphen",
            )
    return fqdn


def _check_segment(kind: str, text: str, segment: str, what: str) -> None:
    """An SP-relative CSE-ID or an AE-ID-Stem: RFC 3986 unreserved characters."""
    if not segment:
        raise id_error(kind, text, f"{what} is empty")
    if len(segment) > MAX_ID_SEGMENT_LENGTH:
        raise id_error(kind, text, f"{what} is longer than {MAX_ID_SEGMENT_LENGTH} characters")
    if not _UNRESERVED.fullmatch(segment):
        raise id_error(kind, text, f"{what} may contain only {_UNRESERVED_TEXT}")
    if segment in (".", ".."):
        raise id_error(kind, text, f"{what} must not be a dot segment")


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
                raise id_error(cls._KIND, text, "absolute form is //{FQDN}/{CSE-ID}")
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
            raise id_error(
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
            raise id_error(self._KIND, text, "AE-ID-Stem must start with 'C' or 'S'")
        if self.stem[0] == "S" and self.cse is not None:
            raise id_error(self._KIND, text, "an S-stem AE-ID has no registrar CSE-ID segment")
        if self.cse is not None:
            _check_segment(self._KIND, text, self.cse, "registrar CSE-ID")
        elif self.stem[0] == "C" and not self.as_stem:
            raise id_error(self._KIND, text, "a C-stem AE-ID needs its registrar: /{CSE-ID}/{stem}")
        if self.sp_fqdn is not None:
            if self.as_stem:
                raise id_error(self._KIND, text, "a bare AE-ID-Stem carries no SP FQDN")
            check_fqdn(self.sp_fqdn, self._KIND)
        object.__setattr__(self, "_sp_key", _lower(self.sp_fqdn))

    @classmethod
    def parse(cls, text: str, registrar: CseId | None = None) -> Self:
        """Parse a stem, ``/{cse}/{C-stem}``, ``/{S-stem}`` or their ``//{FQDN}`` forms.

        ``registrar`` (the Registrar CSE) gives a bare C-stem its context; only its bare
        id is used. It is ignored for every other form.
        """
        if not text:
            raise id_error(cls._KIND, text, "AE-ID is empty")
        fqdn: str | None = None
        if text.startswith("//"):
            fqdn, sep, body = text[2:].partition("/")
            if not sep:
                raise id_error(cls._KIND, text, "absolute form is //{FQDN}/{SP-relative AE-ID}")
        elif text.startswith("/"):
            body = text[1:]
        else:
            cse = registrar.relative if registrar is not None and text[0] == "C" else None
            return cls(text, cse, as_stem=True)
        segments = body.split("/")
        if len(segments) == 1:
            if segments[0].startswith("C"):
                raise id_error(
                    cls._KIND, text, "a C-stem AE-ID needs its registrar: /{CSE-ID}/{stem}"
                )
            return cls(segments[0], None, fqdn)
        if len(segments) == 2:
            if segments[1].startswith("S"):
                raise id_error(
                    cls._KIND, text, "an S-stem AE-ID is /{stem}, with no CSE-ID segment"
                )
            return cls(segments[1], segments[0], fqdn)
        raise id_error(cls._KIND, text, "too many '/' segments for an AE-ID")

    @property
    def registrar(self) -> CseId | None:
        """The registrar CSE of a C-stem AE, if known; None for S-stems."""
        return None if self.cse is None else CseId(self.cse, self.sp_fqdn)

    def sp_relative(self) -> str:
        """The SP-relative AE-ID: ``/{cse}/{C-stem}`` or ``/{S-stem}``."""
        if self.stem[0] == "S":
            return f"/{self.stem}"
        if self.cse is None:
            raise id_error(self._KIND, self.stem, "bare C-stem: the registrar CSE-ID is unknown")
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


def derivation_identity(identity: str, *, enrolee_b: bool) -> str:
    """The one canonical text of an identity as Enrolment Key HMAC input (TS-0003 10.3.2, 10.3.3).

    Both clauses encode the identity in UTF-8 after NFKC; they leave its spelling open, so
    both ends derive from this one form (docs/mef.md): NFKC first (full-width U+FF0F is
    ``/``), then for a MAF-ID (``enrolee_b`` False) the FQDN in lower case (FQDNs compare
    case-insensitively, docs/readings.md A-05), for an Enrolee B-ID its SP-relative CSE-ID
    ``/mn-cse-123456`` or SP-relative AE-ID (``/mn-cse-123456/Clight-AE1``, ``/Sapp``); an
    absolute id loses its SP part, a bare C-stem (registrar unknown) is refused.
    """
    text = unicodedata.normalize("NFKC", identity)
    if not enrolee_b:
        return check_fqdn(text, "MAF-ID").lower()
    return parse_entity_id(text).sp_relative()
