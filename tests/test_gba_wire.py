"""gba/wire.py: the Ub and Zn messages both ends use (tracker issue 10 item 2).

The BSF writes BootstrappingInfo with the codec Entity A reads it with; before, the BSF
wrote ``strftime`` seconds (dropping any fraction, reading a naive lifetime as local time)
and the device accepted only ``YYYY-MM-DDThh:mm:ssZ``, refusing valid xs:dateTime values
such as an offset or a fraction from another BSF.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from m2msec import m2mtime
from m2msec.gba.wire import (
    NafKey,
    WireError,
    ZnError,
    error_body,
    error_reason,
    format_bootstrapping_info,
    parse_bootstrapping_info,
)

BTID = "I1U8vpY3qJ0hiuZNrke/NQ==@bsf.in.provider.com"
WHEN = datetime(2030, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)


def _doc(lifetime: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<BootstrappingInfo xmlns="uri:3gpp-gba">'
        f"<btid>{BTID}</btid><lifetime>{lifetime}</lifetime></BootstrappingInfo>"
    ).encode()


def test_bsf_lifetime_reads_back_exactly_on_the_device() -> None:
    for when in (WHEN, WHEN.replace(microsecond=0), WHEN.astimezone(timezone(timedelta(hours=5)))):
        assert parse_bootstrapping_info(format_bootstrapping_info(BTID, when)) == (BTID, when)
    assert b"<lifetime>2030-01-02T03:04:05.250000Z</lifetime>" in format_bootstrapping_info(
        BTID, WHEN
    )
    assert b"<lifetime>2030-01-02T03:04:05Z</lifetime>" in format_bootstrapping_info(
        BTID, WHEN.replace(microsecond=0)
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-02T03:04:05Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02T03:04:05.25Z", WHEN),
        ("2030-01-02T05:04:05.25+02:00", WHEN),
        ("2030-01-01T22:04:05-05:00", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (" 2030-01-02T03:04:05Z\n", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_device_reads_any_zoned_xs_datetime(text: str, expected: datetime) -> None:
    btid, lifetime = parse_bootstrapping_info(_doc(text))
    assert btid == BTID and lifetime == expected and lifetime.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2030-01-02T03:04:05", "names no time zone"),
        ("20300102T030405", "is not an xs:dateTime"),
        ("2030-01-02T03:04:05.1234567Z", "is not an xs:dateTime"),
        ("2030-02-30T03:04:05Z", "not a valid date"),
        ("2030-01-02T03:04:05+15:00", "not a valid date"),
        ("", "is not an xs:dateTime"),
    ],
)
def test_unusable_lifetimes_are_refused(text: str, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        parse_bootstrapping_info(_doc(text))


def test_bsf_refuses_a_naive_lifetime() -> None:
    with pytest.raises(WireError, match="timezone-aware"):
        format_bootstrapping_info(BTID, datetime(2030, 1, 1))  # naive on purpose


def test_bootstrapping_info_refusals() -> None:
    with pytest.raises(WireError, match="DTD"):
        parse_bootstrapping_info(b'<!DOCTYPE x [<!ENTITY a "b">]><x/>')
    with pytest.raises(WireError, match="not well-formed"):
        parse_bootstrapping_info(b"<BootstrappingInfo")
    with pytest.raises(WireError, match="expected <BootstrappingInfo"):
        parse_bootstrapping_info(b"<BootstrappingInfo/>")
    with pytest.raises(WireError, match="no btid"):
        parse_bootstrapping_info(_doc("2030-01-02T03:04:05Z").replace(BTID.encode(), b" "))
    with pytest.raises(WireError, match="too large"):
        parse_bootstrapping_info(b" " * (16 * 1024 + 1))


def test_zn_answer_round_trip_keeps_microseconds() -> None:
    key = NafKey(bytes(range(32)), WHEN, "dev@ims", BTID, {"aeId": "Cdev"}, "GBA_U", WHEN)
    back = NafKey.from_json(key.to_json())
    assert back == key and back.expires == WHEN and back.bootstrap_time == WHEN
    assert "ks_naf" not in repr(key) and bytes(range(32)).hex() not in repr(key)


def test_zn_answer_with_a_zoned_time_is_refused() -> None:
    body = NafKey(bytes(32), WHEN, "dev@ims", BTID).to_json()
    zoned = body.replace(m2mtime.format_time(WHEN).encode(), b"20300102T030405Z")
    with pytest.raises(ZnError, match="time zone designator"):
        NafKey.from_json(zoned)


def test_zn_refusal_body_round_trip() -> None:
    assert error_reason(error_body("unknown B-TID 'x'")) == "unknown B-TID 'x'"
    assert error_reason(b"plain text") == "plain text"
    assert error_reason(b"") == "no reason given"
