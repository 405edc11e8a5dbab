"""The one codec for oneM2M time values on the wire (TS-0004 clause 6.3.3, m2m:timestamp).

TS-0004 6.3.3 gives timestamps in ISO 8601 basic format ``YYYYMMDDThhmmss`` with an
optional fraction ``,ffffff``, in UTC and without a zone designator. :func:`format_time`
writes exactly that (the fraction only when the value has one) and refuses naive datetimes
(their zone is a guess); :func:`parse_time` reads it and refuses a value that carries a zone
(``Z``, ``+02:00``): a peer that sends one does not follow 6.3.3, and reading it would let
two ends disagree on an expiry. ``.`` is accepted as the decimal sign beside ``,`` (ISO 8601
allows both); more than six fraction digits are refused (microseconds is what we keep).

Used by the MAF client (frameworks/maf/), the MAF server (maf/protocol.py) and Zn
(gba/wire.py).

3GPP's XML documents carry times as ``xs:dateTime`` instead: the ``lifetime`` of Ub's
BootstrappingInfo (TS 24.109 Annex C) and Entity A's saved GBA state.
:func:`format_xs_datetime` writes ``YYYY-MM-DDThh:mm:ss[.ffffff]Z`` (UTC, fraction only when
there is one; naive datetimes refused); :func:`parse_xs_datetime` reads any xs:dateTime that
states its zone (``Z`` or ``+hh:mm``/``-hh:mm``, converted to UTC) with up to six fraction
digits, and refuses one without a zone (XML Schema leaves its instant undetermined).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

__all__ = [
    "M2MTimeError",
    "format_time",
    "format_xs_datetime",
    "parse_time",
    "parse_xs_datetime",
]

_TIME: Final = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(?:[.,](\d{1,6}))?")
_ZONED: Final = re.compile(r"\d{8}T\d{6}(?:[.,]\d+)?(?:Z|[+-]\d{2}(?::?\d{2})?)")
_XS_DATETIME: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2})?"
)


class M2MTimeError(ValueError):
    """A time value not in the form its codec reads (TS-0004 6.3.3 basic UTC format, or an
    xs:dateTime with a zone); the message is safe to show."""


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise M2MTimeError("time values must be formatted from timezone-aware datetimes")
    return value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """``YYYYMMDDThhmmss[,ffffff]`` in UTC; naive datetimes are refused."""
    v = _aware_utc(value)
    # Formatted by hand: strftime costs ten times as much, on every Key Registration.
    text = f"{v.year:04d}{v.month:02d}{v.day:02d}T{v.hour:02d}{v.minute:02d}{v.second:02d}"
    return f"{text},{v.microsecond:06d}" if v.microsecond else text


def format_xs_datetime(value: datetime) -> str:
    """``YYYY-MM-DDThh:mm:ss[.ffffff]Z`` (xs:dateTime in UTC); naive datetimes are refused."""
    v = _aware_utc(value)
    text = (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    )
    return f"{text}.{v.microsecond:06d}Z" if v.microsecond else f"{text}Z"


def parse_xs_datetime(text: object, what: str = "dateTime") -> datetime:
    """A UTC-aware datetime from an xs:dateTime that names its zone (module docstring)."""
    if not isinstance(text, str):
        raise M2MTimeError(f"{what} must be an xs:dateTime string YYYY-MM-DDThh:mm:ssZ")
    m = _XS_DATETIME.fullmatch(text.strip())
    if m is None:
        raise M2MTimeError(f"{what} {text[:40]!r} is not an xs:dateTime YYYY-MM-DDThh:mm:ss[.f]Z")
    zone = m.group(8)
    if zone is None:
        raise M2MTimeError(
            f"{what} {text[:40]!r} names no time zone: write Z (UTC) or an offset +hh:mm"
        )
    try:
        tz = UTC if zone == "Z" else _offset(zone)
    except ValueError:
        raise M2MTimeError(f"{what} {text[:40]!r} is not a valid date and time") from None
    return _datetime(m, tz, what, text).astimezone(UTC)


def _offset(zone: str) -> timezone:
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 14 or minutes > 59 or (hours == 14 and minutes):
        raise ValueError(zone)  # XML Schema: -14:00 to +14:00
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if zone[0] == "-" else delta)


def parse_time(text: object, what: str = "time") -> datetime:
    """A UTC-aware datetime from ``YYYYMMDDThhmmss[,ffffff]``; zones and other forms refused."""
    if not isinstance(text, str):
        raise M2MTimeError(f"{what} must be a timestamp string YYYYMMDDThhmmss")
    m = _TIME.fullmatch(text)
    if m is None:
        if _ZONED.fullmatch(text):
            raise M2MTimeError(
                f"{what} {text[:40]!r} carries a time zone designator: oneM2M times are "
                "UTC without one (TS-0004 6.3.3, YYYYMMDDThhmmss[,ffffff])"
            )
        raise M2MTimeError(f"{what} {text[:40]!r} is not a timestamp YYYYMMDDThhmmss[,ffffff]")
    return _datetime(m, UTC, what, text)


def _datetime(m: re.Match[str], tz: timezone, what: str, text: str) -> datetime:
    """The datetime of a match whose groups 1-7 are year..second and the fraction digits."""
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    micro = int((m.group(7) or "0").ljust(6, "0"))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        raise M2MTimeError(f"{what} {text[:40]!r} is not a valid date and time") from None
