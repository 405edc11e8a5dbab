"""A per-request deadline for the hot paths, cheaper than ``asyncio.timeout`` (issue 13).

:class:`Deadline` is ``asyncio.timeout_at`` for a caller that already holds its event loop:
``async with Deadline(loop, when):`` cancels the task at ``when`` and turns that
cancellation into ``TimeoutError`` on the way out, and, like ``asyncio.timeout``, leaves a
cancellation that came from elsewhere alone (``Task.uncancel`` keeps the count). It exists
because ``asyncio.timeout`` and ``asyncio.wait_for`` look the running loop up (each
``get_running_loop`` is a ``getpid()`` system call in CPython 3.11), and ``wait_for`` makes a
task per call: on a machine where system calls are dear (a VM), the gateway spent about a
sixth of its time in ``getpid`` for the two deadlines of each forwarded request (the server
loop's read, the backend request).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Deadline"]


class Deadline:
    """``async with Deadline(loop, when):`` - ``TimeoutError`` if the body runs past ``when``.

    ``when`` is on ``loop.time()``'s clock; ``None`` means no deadline.
    """

    __slots__ = ("_expired", "_handle", "_loop", "_task", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float | None) -> None:
        self._loop = loop
        self._when = when
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.Handle | None = None
        self._expired = False

    @property
    def expired(self) -> bool:
        return self._expired

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        if self._when is not None:
            if self._when <= self._loop.time():
                self._handle = self._loop.call_soon(self._expire)
            else:
                self._handle = self._loop.call_at(self._when, self._expire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired:
            assert self._task is not None
            # Ours to take back; a cancellation from elsewhere stays counted (as asyncio's).
            if self._task.uncancel() == 0 and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def _expire(self) -> None:
        self._handle = None
        task = self._task
        if task is not None and not task.done() and not self._expired:
            self._expired = True
            task.cancel()
