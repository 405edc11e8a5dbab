"""Group commit: concurrent requests share one durable store transaction.

A durable commit costs an fsync (about 2 ms here), whatever it holds; a server that commits
each request alone is capped at a few hundred requests a second however fast its
handshakes are. :class:`GroupCommit` queues the items of concurrent requests; whenever no
commit is running, everything queued (up to ``max_batch``) becomes the next batch, which
``commit`` writes in one transaction in the committer's one worker thread, while the loop
goes on serving (and queueing the next batch). Each submitter gets its own item's result
only after the batch is committed, so nothing is acknowledged before it is durable.

Used by the MEF's Enrolment Exchange (:mod:`m2msec.servers.mef_session`); the MAF's journal
(:mod:`m2msec.servers.maf_journal`) does the same with savepoints and an audit file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Commit concurrently submitted items in batches (module docstring).

    ``commit(items)`` runs in a worker thread and returns one result per item, in order;
    if it raises, every item of that batch gets the exception. :meth:`submit` returns its
    item's result once the batch is committed.
    """

    def __init__(
        self,
        commit: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_batch: int = 512,
        name: str = "group-commit",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._commit = commit
        self.max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running = False
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        #: Transactions committed, and the items in them (how much grouping happened).
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait until its batch is committed; its result."""
        if self._closed:
            raise RuntimeError("the committer is closed")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._idle.clear()
        self._next()
        return await future

    def _next(self) -> None:
        if self._running:
            return
        if not self._queue:
            self._idle.set()
            return
        batch = self._queue[: self.max_batch]
        del self._queue[: self.max_batch]
        self._running = True
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, self._commit, [item for item, _ in batch])
        work.add_done_callback(lambda done: self._finished(batch, done))

    def _finished(
        self, batch: list[tuple[T, asyncio.Future[R]]], work: asyncio.Future[Sequence[R]]
    ) -> None:
        self._running = False
        self.batches += 1
        self.items += len(batch)
        try:
            results = list(work.result())
            if len(results) != len(batch):
                raise RuntimeError(f"commit gave {len(results)} results for {len(batch)} items")
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a submitter that gave up: its item is committed
                    future.set_result(result)
        self._next()

    async def close(self, grace: float = 5.0) -> None:
        """Refuse new items, let the queued ones commit (at most ``grace`` seconds), stop."""
        self._closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        self._executor.shutdown(wait=False, cancel_futures=True)
