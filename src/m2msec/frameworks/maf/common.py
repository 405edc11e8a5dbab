"""What Entity A and Entity B share as MAF Clients (TS-0003 8.2.2.3, 8.8.2).

* the records the procedures return: :class:`MafClientRegistration` (8.8.2.3, table
  8.8.2.3-2), :class:`IssuedKc` (Key Registration, 8.8.2.7) and :class:`RetrievedKc`
  (Key Retrieval, 8.8.2.8, docs/readings.md A-17), both a :class:`Kc` (10.3.1, 10.3.5);
* the errors: :class:`MafError` and :class:`KeyRetrievalError`;
* reading the MAF's answers: their Response Status Code and JSON body (:func:`expect`,
  :func:`member`), their ``m2m:dbg`` text, and the timestamps and labels of
  :mod:`m2msec.maf.wire`, whose ``WireError`` becomes a :class:`MafError` here;
* :func:`maf_profile`, the start of every role's TLS profile: the PSK suites of 10.2.2
  (10.2.1 over DTLS).

Keys never appear in ``repr`` or error messages; key identifiers do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from m2msec.errors import M2MSecError
from m2msec.frameworks.provisioned import psk_profile
from m2msec.keyids import KcId
from m2msec.maf import wire
from m2msec.service.onem2m_client import OneM2MResponse
from m2msec.tls.context import Framework
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = [
    "SUID_MAF_SAEF",
    "Clock",
    "IssuedKc",
    "Kc",
    "KeyRetrievalError",
    "MafClientRegistration",
    "MafError",
    "RetrievedKc",
    "expect",
    "format_time",
    "labels_of",
    "maf_profile",
    "member",
    "parse_time",
    "printable",
    "utc_now",
]

#: m2m:suid 32: a key distributed by a MAF for the MAF-based SAEF (TS-0004 6.3.4.2.39).
SUID_MAF_SAEF = 32

_DBG_LIMIT = 200
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock of every role: the current time in UTC."""
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- errors


class MafError(M2MSecError):
    """A MAF procedure failed. ``rsc`` is the MAF's Response Status Code when it answered.

    Messages name identifiers, never keys.
    """

    def __init__(self, reason: str, rsc: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rsc = rsc


class KeyRetrievalError(MafError):
    """Entity B could not obtain the Kc of a KcId (8.8.2.8): unknown, expired, refused..."""


# ----------------------------------------------------------------------------- wire format


def format_time(when: datetime) -> str:
    """A oneM2M timestamp (TS-0004 6.3.3) in UTC, written as the MAF writes it
    (:mod:`m2msec.maf.wire`); a naive datetime raises ``WireError`` on both ends."""
    return wire.format_time(when)


def parse_time(text: object, what: str = "expirationTime") -> datetime:
    """Read a oneM2M timestamp as UTC, as the MAF reads it (:mod:`m2msec.maf.wire`): a zone
    designator (``Z``, ``+02:00``) or padding is refused."""
    try:
        return wire.parse_time(text, what)
    except wire.WireError as exc:
        raise MafError(str(exc)) from None


def labels_of(value: object) -> tuple[str, ...]:
    """The ``labels`` of an answer (none: empty), as the MAF writes them."""
    try:
        return wire.parse_labels(value) or ()
    except wire.WireError as exc:
        raise MafError(str(exc)) from None


def printable(data: bytes | str, limit: int = 128) -> str:
    """At most ``limit`` characters of peer-supplied text, safe to put in a message."""
    text = data if isinstance(data, str) else data[:limit].decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _debug_info(response: OneM2MResponse) -> str:
    """The MAF's ``m2m:dbg`` text (the contract makes it safe to show), shortened."""
    try:
        doc = response.json()
    except (ValueError, UnicodeDecodeError):
        return ""
    dbg = doc.get("m2m:dbg") if isinstance(doc, dict) else None
    return printable(dbg, _DBG_LIMIT) if isinstance(dbg, str) else ""


def expect(
    response: OneM2MResponse,
    want: int,
    what: str,
    maf: str,
    *,
    peer: str = "MAF",
    error: type[MafError] = MafError,
    status: str | None = None,
) -> dict[str, Any]:
    """The JSON object of an answer with RSC ``want`` (no body: empty); else ``error``
    naming the RSC, the binding's ``status`` (default ``HTTP <status>``) and the
    ``m2m:dbg`` of the ``peer`` (the MAF, or the MEF) ``maf``."""
    if response.rsc != want:
        dbg = _debug_info(response)
        detail = f": {dbg}" if dbg else ""
        raise error(
            f"{what} refused by the {peer} {maf}: RSC {response.rsc} "
            f"({status or f'HTTP {response.status}'}){detail}",
            response.rsc,
        )
    if not response.body:
        return {}
    try:
        doc = response.json()
    except (ValueError, UnicodeDecodeError):
        raise error(f"{what}: the {peer} {maf} answered with malformed JSON") from None
    if not isinstance(doc, dict):
        raise error(f"{what}: the {peer} {maf} answered with malformed JSON")
    return doc


def member(doc: dict[str, Any], name: str, what: str, maf: str) -> dict[str, Any]:
    """The object ``name`` of an answer (``mafKeyReg``, ``mafKey``...), which must be there."""
    inner = doc.get(name)
    if not isinstance(inner, dict):
        raise MafError(f"{what}: the MAF {maf} answered without {name}")
    return inner


# ----------------------------------------------------------------------------- TLS profile


def maf_profile(
    transport: Transport, *, server_side: bool, tls13: bool, local_id: str | None
) -> TLSProfile:
    """The start of a MAF Client's profile (towards the MAF or the other Entity): the 10.2.2
    PSK suites (CCM_8 first over DTLS, 10.2.1); each role adds its callables."""
    return psk_profile(
        transport, server_side=server_side, tls13=tls13, local_id=local_id, framework=Framework.MAF
    )


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Kc:
    """A Kc with its Key Identifier (10.3.5) and the end of its Kc Lifetime."""

    kc_id: KcId
    kc: bytes = field(repr=False)
    expires: datetime

    def expired(self, now: datetime | None = None, margin: float = 0.0) -> bool:
        """True once fewer than ``margin`` seconds of the Kc Lifetime remain."""
        return (now or utc_now()) + timedelta(seconds=margin) >= self.expires


@dataclass(frozen=True, slots=True)
class IssuedKc(Kc):
    """A Kc registered at the MAF by Entity A (8.8.2.7): what both ends store."""

    target_id: str
    source_client_id: str | None = None
    admin_fqdn: str | None = None
    suid: int = SUID_MAF_SAEF
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetrievedKc(Kc):
    """A Kc as Entity B received it from the MAF (8.8.2.8, docs/readings.md A-17)."""

    km_id: str
    """Source MAF Client ID: the KmID the MAF authenticated Entity A with."""
    entity_id: str | None = None
    """Entity A's CSE-ID or AE-ID, when the MAF is configured with one."""
    suid: int = SUID_MAF_SAEF
    admin_fqdn: str | None = None
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MafClientRegistration:
    """A MAF Client Registration record (8.8.2.3, table 8.8.2.3-2)."""

    reg_id: str
    expires: datetime | None
    client_id: str | None = None
    admin_fqdn: str | None = None
    labels: tuple[str, ...] = ()
