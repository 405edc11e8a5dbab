"""service.group_commit: concurrent submitters share batches; results, failures and close.

The committer's ``commit`` here is a plain function recording its batches (the store it
stands for is exercised through the MEF in test_mef_server.py and test_mef_faults.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from m2msec.service.group_commit import GroupCommit


async def test_items_queued_during_a_commit_share_the_next_one() -> None:
    started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def commit(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            started.set()
            release.wait(5)  # the first commit is slow: the rest queue behind it
        return [item * 10 for item in items]

    committer: GroupCommit[int, int] = GroupCommit(commit)
    first = asyncio.create_task(committer.submit(0))
    await asyncio.to_thread(started.wait, 5)
    rest = [asyncio.create_task(committer.submit(n)) for n in range(1, 21)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in rest)  # nothing answered before its commit
    release.set()
    assert await first == 0
    assert [await task for task in rest] == [n * 10 for n in range(1, 21)]
    assert batches == [[0], list(range(1, 21))]
    assert (committer.batches, committer.items) == (2, 21)
    await committer.close()


async def test_a_failed_commit_fails_its_batch_only() -> None:
    calls = 0

    def commit(items: Sequence[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        return list(items)

    committer: GroupCommit[str, str] = GroupCommit(commit)
    with pytest.raises(OSError, match="disk full"):
        await committer.submit("a")
    assert await committer.submit("b") == "b"  # the next batch commits
    await committer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await committer.submit("c")


async def test_batches_are_bounded() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def commit(items: Sequence[int]) -> list[None]:
        sizes.append(len(items))
        gate.wait(5)
        return [None] * len(items)

    committer: GroupCommit[int, None] = GroupCommit(commit, max_batch=4)
    tasks = [asyncio.create_task(committer.submit(n)) for n in range(10)]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(*tasks)
    assert sizes == [1, 4, 4, 1]  # the first starts at once; the rest queue behind it
    await committer.close()
