"""Re-validating the MAF's and the MEF's keys of live SAs (issue 12 item 3).

A MAF or MEF de-registration must end the live SAs over the removed key, not only future
handshakes. :class:`RemoteRevalidation` is the gateway's part of it: at most once per
``[sa] revalidate_interval`` per key id it asks the function again for the key of each
live MAF-framework SA (Key Retrieval, TS-0003 8.8.2.8) and each SA over a MEF-issued Kpsa
(fetchCredentials or MEF Key Retrieval, 8.3.5.2.8), through the framework's one
:class:`~m2msec.frameworks.remote_keys.KeyFetcher` (coalesced with the handshakes'
fetches), ``concurrency`` at a time. A definite refusal (4004, 4103) or another key value
for the same id makes a Remove reason (:data:`CREDENTIAL_REMOVED_AT`,
:data:`CREDENTIAL_CHANGED_AT`); an unreachable function leaves live SAs alone and is
logged once per outage. :meth:`m2msec.servers.gateway_sa.GatewaySa.revalidate_remote`
performs the removals.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from m2msec.frameworks.remote_keys import KeyFetcher, Revalidation, Verdict
from m2msec.sa.records import SaId
from m2msec.tls.context import SecurityContext

__all__ = [
    "CREDENTIAL_CHANGED_AT",
    "CREDENTIAL_REMOVED_AT",
    "UNREACHABLE_LOG_EVERY",
    "KeySource",
    "RemoteRevalidation",
]

log = logging.getLogger("m2msec.servers.gateway_sa")

#: ... when the MAF or the MEF (``{}``) refuses the key of a live SA (de-registered,
#: client removed, Enrolee removed, expired), or names another key value by its id.
CREDENTIAL_REMOVED_AT: Final = "administrative reasons: credential removed at the {}"
CREDENTIAL_CHANGED_AT: Final = "administrative reasons: credential changed at the {}"
#: An unreachable MAF/MEF is logged once, then at most once per this many seconds.
UNREACHABLE_LOG_EVERY: Final = 600.0
#: Which function ("MAF", "MEF") issued a live SA's key, and its fetcher; None: no remote key.
KeySource = Callable[[SecurityContext], "tuple[str, KeyFetcher[Any, Any]] | None"]


class RemoteRevalidation:
    """The state of the re-validation passes (module docstring): the key ids asked for and
    when, the outages logged, the pass running."""

    def __init__(self, interval: float, concurrency: int = 8) -> None:
        #: Which function issued a live SA's key, and its fetcher (set by the gateway).
        self.key_source: KeySource | None = None
        self.interval = interval
        self.concurrency = concurrency
        self.task: asyncio.Task[int] | None = None
        self._checked: dict[tuple[str, str], float] = {}  # (function, key id) -> when
        self._unreachable: dict[str, float] = {}  # function -> when its outage was logged

    async def due_removals(
        self, live: Iterable[tuple[SaId, SecurityContext | None]]
    ) -> list[tuple[SaId, str, str, str]]:
        """One pass over the live SAs (module docstring): each key id due (not asked for
        within ``interval``; a key id first seen counts from then) is asked for again.
        Returns ``(sa_id, key id, Remove reason, what the function said)`` for the SAs of a
        refused or changed key. Never raises for a function's outage."""
        source = self.key_source
        if source is None:
            return []
        now = time.monotonic()
        due: dict[tuple[str, str], tuple[KeyFetcher[Any, Any], list[tuple[SaId, str | None]]]]
        due = {}
        seen: set[tuple[str, str]] = set()
        for sa_id, ctx in live:
            if ctx is None or not ctx.key_id:
                continue
            found = source(ctx)
            if found is None:
                continue
            name, fetcher = found
            key = (name, ctx.key_id)
            seen.add(key)
            if now - self._checked.setdefault(key, now) < self.interval:
                continue
            due.setdefault(key, (fetcher, []))[1].append((sa_id, ctx.key_fingerprint))
        for key in [k for k in self._checked if k not in seen]:
            del self._checked[key]  # bounded: only the key ids of live SAs
        if not due:
            return []
        limit = asyncio.Semaphore(self.concurrency)

        async def ask(key: tuple[str, str], fetcher: KeyFetcher[Any, Any]) -> Revalidation:
            async with limit:
                return await fetcher.revalidate(key[1])

        keys = list(due)
        answers = await asyncio.gather(*(ask(k, due[k][0]) for k in keys), return_exceptions=True)
        ended: list[tuple[SaId, str, str, str]] = []
        outages: dict[str, tuple[int, str]] = {}
        for key, answer in zip(keys, answers, strict=True):
            self._checked[key] = time.monotonic()
            name, key_id = key
            if isinstance(answer, BaseException):
                if isinstance(answer, asyncio.CancelledError):
                    raise answer
                answer = Revalidation(Verdict.UNREACHABLE, f"{type(answer).__name__}")
            if answer.verdict is Verdict.UNREACHABLE:
                count, _ = outages.get(name, (0, ""))
                outages[name] = (count + 1, answer.reason)
                continue
            for sa_id, fingerprint in due[key][1]:
                reason = self._reason(name, answer, fingerprint)
                if reason is not None:
                    ended.append((sa_id, key_id, reason, answer.reason or "another key value"))
        self._log_outages(outages, {k[0] for k in keys})
        return ended

    @staticmethod
    def _reason(name: str, answer: Revalidation, fingerprint: str | None) -> str | None:
        """The Remove reason for one SA given its function's answer; None: it stays."""
        if answer.verdict is Verdict.REVOKED:
            return CREDENTIAL_REMOVED_AT.format(name)
        fresh = answer.fingerprint
        if fingerprint is None or fresh is None:
            return None
        if not hmac.compare_digest(fresh, fingerprint):  # the id now names another key
            return CREDENTIAL_CHANGED_AT.format(name)
        return None

    def _log_outages(self, outages: dict[str, tuple[int, str]], asked: set[str]) -> None:
        """One warning when a function stops answering, at most one per
        :data:`UNREACHABLE_LOG_EVERY` while it stays so, one line when it is back."""
        now = time.monotonic()
        for name in asked:
            if name in outages:
                count, why = outages[name]
                since = self._unreachable.get(name)
                if since is None or now - since >= UNREACHABLE_LOG_EVERY:
                    self._unreachable[name] = now
                    log.warning(
                        "cannot re-validate %d live SA key(s) at the %s: %s; the SAs are kept",
                        count, name, why,
                    )  # fmt: skip
            elif self._unreachable.pop(name, None) is not None:
                log.info("the %s answers re-validations again", name)

