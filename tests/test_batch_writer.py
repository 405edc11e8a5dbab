"""store.batch_writer: the bounded background writer under the SA records.

The commit here is a plain function (the store it stands for is exercised in
tests/test_sa_store.py): order kept across failed and retried batches, batch size bound,
periodic work under a steady stream, flush, and a close that gives up on a dead store
without starting another commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from m2msec.store.batch_writer import BatchWriter


def test_order_is_kept_across_failed_batches() -> None:
    written: list[int] = []
    failures = 3

    def commit(items: Sequence[int]) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("disk full")
        written.extend(items)

    w: BatchWriter[int] = BatchWriter(commit, label="test", retry_min=0.01, retry_max=0.02)
    for n in range(100):
        w.put(n)
    assert w.flush(10)
    assert written == list(range(100))
    assert w.outage.errors == 3 and not w.outage.down
    assert w.close() == 0


def test_batches_are_bounded_and_linger_gathers() -> None:
    sizes: list[int] = []
    w: BatchWriter[int] = BatchWriter(
        lambda items: sizes.append(len(items)), label="test", max_batch=8, linger=0.2
    )
    for n in range(20):
        w.put(n)
    assert w.flush(10)
    assert sum(sizes) == 20 and max(sizes) <= 8 and len(sizes) <= 4
    w.close()


def test_periodic_work_runs_under_a_steady_stream() -> None:
    runs = 0
    stop = threading.Event()

    def periodic() -> None:
        nonlocal runs
        runs += 1

    w: BatchWriter[int] = BatchWriter(
        lambda items: time.sleep(0.001), label="test", periodic=periodic, period=0.05
    )

    def feed() -> None:
        while not stop.is_set():
            w.put(1)
            time.sleep(0.0005)

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(0.5)
    stop.set()
    feeder.join()
    w.close()
    assert runs >= 3


def test_close_on_a_dead_store_starts_no_new_commit() -> None:
    attempts = 0

    def commit(items: Sequence[int]) -> None:
        nonlocal attempts
        attempts += 1
        raise OSError("no route to host")

    w: BatchWriter[int] = BatchWriter(
        commit, label="test", max_batch=5, retry_min=0.01, retry_max=0.01
    )
    for n in range(20):
        w.put(n)
    started = time.monotonic()
    assert w.close(timeout=0.3) == 20
    assert time.monotonic() - started < 2
    seen = attempts
    time.sleep(0.1)
    assert attempts == seen  # the thread stopped
    w.put(99)
    assert w.refused == 1


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        BatchWriter(lambda items: None, label="test", max_queue=0, start=False)
    with pytest.raises(ValueError):
        BatchWriter(lambda items: None, label="test", retry_min=2, retry_max=1, start=False)
