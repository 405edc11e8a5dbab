"""Issue 9 item 4: store failures logged once per outage, rate-limited, no traceback."""

from __future__ import annotations

import logging

import pytest

from m2msec.errors import StoreError
from m2msec.store.outage import StoreOutage


def test_outage_logs_first_failure_summaries_and_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    counted: list[int] = []
    outage = StoreOutage(
        "MAF store /x/maf.db",
        logger=logging.getLogger("t.outage"),
        interval=10.0,
        clock=lambda: now[0],
        on_failure=lambda: counted.append(1),
    )
    with caplog.at_level(logging.DEBUG, logger="t.outage"):
        for _ in range(3000):  # 3,000 failures over 30 s
            outage.failed(StoreError("database or disk is full"))
            now[0] += 0.01
        outage.succeeded()
        outage.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert outage.errors == 3000 and len(counted) == 3000
    assert lines[0] == "MAF store /x/maf.db unavailable: database or disk is full"
    assert 1 + 2 <= len(lines) <= 1 + 3 + 1  # first, one per 10 s, recovered
    assert lines[-1] == "MAF store /x/maf.db recovered after 3000 failures"
    assert all(r.exc_info is None for r in caplog.records)
    assert not outage.down
