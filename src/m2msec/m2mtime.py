"""The one codec for oneM2M time values on the wire (TS-0004 clause 6.3.3, m2m:timestamp).

TS-0004 6.3.3 gives timestamps in ISO 8601 basic format ``YYYYMMDDThhmmss`` with an
optional fraction ``,ffffff``, in UTC and without a zone designator. :func:`format_time`
writes exactly that (the fraction only when the value has one) and refuses naive datetimes
(their zone is a guess); :func:`parse_time` reads it and refuses a value that carries a zone
(``Z``, ``+02:00``): a peer that sends one does not follow 6.3.3, and reading it would let
two ends disagree on an expiry. ``.`` is accepted as the decimal sign beside ``,`` (ISO 8601
allows both); more than six fraction digits are refused (microseconds is what we keep).

Used by the MAF client (frameworks/maf.py), the MAF server (maf/protocol.py) and Zn
(gba/zn.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

__all__ = ["M2MTimeError", "format_time", "parse_time"]

_TIME: Final = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(?:[.,](\d{1,6}))?")
_ZONED: Final = re.compile(r"\d{8}T\d{6}(?:[.,]\d+)?(?:Z|[+-]\d{2}(?::?\d{2})?)")


class M2MTimeError(ValueError):
    """A time value that is not TS-0004 6.3.3's basic UTC format; the message is safe to show."""


def format_time(value: datetime) -> str:
    """``YYYYMMDDThhmmss[,ffffff]`` in UTC; naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise M2MTimeError("oneM2M time values must be formatted from timezone-aware datetimes")
    v = value.astimezone(UTC)
    # Formatted by hand: strftime costs ten times as much, on every Key Registration.
    text = f"{v.year:04d}{v.month:02d}{v.day:02d}T{v.hour:02d}{v.minute:02d}{v.second:02d}"
    return f"{text},{v.microsecond:06d}" if v.microsecond else text


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
    year, month, day, hour, minute, second, frac = m.groups()
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((frac or "0").ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError:
        raise M2MTimeError(f"{what} {text[:40]!r} is not a valid date and time") from None
