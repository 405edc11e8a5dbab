"""The one oneM2M time codec (TS-0004 6.3.3): basic format, UTC, no zone designator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from m2msec import m2mtime
from m2msec.frameworks import maf as client
from m2msec.gba import wire as gba_wire

WHEN = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_round_trip_with_and_without_fraction() -> None:
    assert m2mtime.format_time(WHEN) == "20300102T030405,123456"
    assert m2mtime.parse_time("20300102T030405,123456") == WHEN
    whole = WHEN.replace(microsecond=0)
    assert m2mtime.format_time(whole) == "20300102T030405"
    assert m2mtime.parse_time(m2mtime.format_time(whole)) == whole
    # An aware value in another zone is written in UTC, without a designator.
    east = WHEN.astimezone(timezone(timedelta(hours=2)))
    assert m2mtime.format_time(east) == "20300102T030405,123456"
    assert m2mtime.parse_time("20300102T030405").tzinfo is UTC


def test_naive_datetimes_are_not_formatted() -> None:
    with pytest.raises(m2mtime.M2MTimeError, match="timezone-aware"):
        m2mtime.format_time(datetime(2030, 1, 1))  # naive on purpose


@pytest.mark.parametrize(
    "zoned", ["20300101T000000+02:00", "20300101T000000Z", "20300101T000000,5-0100"]
)
def test_zones_are_refused_with_a_clear_message(zoned: str) -> None:
    with pytest.raises(m2mtime.M2MTimeError, match="time zone designator"):
        m2mtime.parse_time(zoned)
    # Both MAF ends and Zn use the codec.
    with pytest.raises(client.MafError, match="time zone designator"):
        client.parse_time(zoned)
    answer = gba_wire.NafKey(bytes(32), WHEN, "i@ims", "b@bsf").to_json()
    answer = answer.replace(m2mtime.format_time(WHEN).encode(), zoned.encode())
    with pytest.raises(gba_wire.ZnError, match="time zone designator"):
        gba_wire.NafKey.from_json(answer)


@pytest.mark.parametrize(
    "bad", ["2030-01-01T00:00:00", "20300101T000000,1234567", "20301301T000000", "", 5]
)
def test_other_forms_are_refused(bad: object) -> None:
    with pytest.raises(m2mtime.M2MTimeError):
        m2mtime.parse_time(bad)


def test_xs_datetime_round_trip() -> None:
    assert m2mtime.format_xs_datetime(WHEN) == "2030-01-02T03:04:05.123456Z"
    assert m2mtime.parse_xs_datetime("2030-01-02T03:04:05.123456Z") == WHEN
    whole = WHEN.replace(microsecond=0)
    assert m2mtime.format_xs_datetime(whole) == "2030-01-02T03:04:05Z"
    east = WHEN.astimezone(timezone(timedelta(hours=2)))
    assert m2mtime.format_xs_datetime(east) == "2030-01-02T03:04:05.123456Z"
    assert m2mtime.parse_xs_datetime("2030-01-02T05:04:05.123456+02:00") == WHEN
    with pytest.raises(m2mtime.M2MTimeError, match="timezone-aware"):
        m2mtime.format_xs_datetime(datetime(2030, 1, 1))  # naive on purpose
    with pytest.raises(m2mtime.M2MTimeError, match="names no time zone"):
        m2mtime.parse_xs_datetime("2030-01-02T03:04:05")
