"""The gateway learns the CSE-ID of the CSE behind it (tracker issue 14 item 6).

Without ``[gateway] cse_id`` / ``--cse-id`` (:mod:`m2msec.config.gateway`), the gateway
asks its backend when it starts: a RETRIEVE of the CSEBase (TS-0004 7.4.2, the
``<CSEBase>`` resource of TS-0001 9.6.3) over the gateway's own backend pool, to the
target ``/-`` (TS-0001 9.3.1: ``-`` stands for the CSEBase's resource name in a
CSE-relative address, so no name is needed), as the originator ``cse_base_origin``
(default ``CAdmin``, ACME's admin), and reads the ``csi`` attribute (the CSE-ID, TS-0001
table 9.6.3.3-1). A backend that does not answer yet (no connection, a timeout, an HTTP
5xx or an RSC 5xxx) is asked again with a bounded exponential back-off until
``cse_base_timeout``; an answer that refuses (4xxx) or holds no valid ``csi`` ends at
once. Either way :class:`CseBaseError` says what happened and what to configure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from m2msec.errors import IdentifierError, M2MSecError
from m2msec.ids import CseId
from m2msec.servers.backend import BackendError, BackendPool, BackendResponse

__all__ = ["CSE_BASE_TARGET", "CseBaseError", "retrieve_cse_id"]

log = logging.getLogger(__name__)

CSE_BASE_TARGET = "/-"
"""The CSEBase, whatever its resource name (TS-0001 9.3.1)."""
FIRST_DELAY = 0.25
MAX_DELAY = 4.0
_ADVICE = "give --cse-id or [gateway] cse_id"


class CseBaseError(M2MSecError):
    """The backend's CSEBase gave no CSE-ID (never answered, refused, or no ``csi``)."""


def _rsc(answer: BackendResponse) -> int | None:
    for name, value in answer.headers:
        if name.lower() == b"x-m2m-rsc" and value.strip().isdigit():
            return int(value)
    return None


def _csi(answer: BackendResponse, url: str) -> CseId:
    """The ``csi`` of a CSEBase answer (``m2m:cb``), JSON serialization."""
    try:
        document = json.loads(answer.body)
        csi = document["m2m:cb"]["csi"]
    except (ValueError, KeyError, TypeError):
        raise CseBaseError(
            f"the backend {url} answered the CSEBase RETRIEVE without a csi (an m2m:cb JSON "
            f"body was expected); {_ADVICE}"
        ) from None
    if not isinstance(csi, str):
        raise CseBaseError(f"the backend {url} answered a csi that is not a string; {_ADVICE}")
    try:
        return CseId.parse(csi)
    except IdentifierError as exc:
        raise CseBaseError(f"the backend {url} answered csi {csi!r}: {exc}; {_ADVICE}") from None


async def retrieve_cse_id(
    backend: BackendPool,
    *,
    origin: str,
    timeout: float,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> CseId:
    """The CSE-ID of the backend's CSEBase (module docstring); CseBaseError when there is
    none within ``timeout`` seconds (the last error named)."""
    deadline = time.monotonic() + timeout
    delay = first_delay
    attempt = 0
    while True:
        attempt += 1
        headers = [
            ("X-M2M-Origin", origin),
            ("X-M2M-RI", f"m2msec-cse-base-{attempt}"),
            ("X-M2M-RVI", "3"),
            ("Accept", "application/json"),
        ]
        try:
            answer = await backend.request("GET", CSE_BASE_TARGET, headers)
        except BackendError as exc:
            why = f"no answer ({exc})"
        else:
            rsc = _rsc(answer)
            if rsc == 2000 and answer.status == 200:
                return _csi(answer, backend.url)
            if answer.status < 500 and (rsc is None or rsc < 5000):
                body = answer.body[:200].decode("utf-8", "replace")
                raise CseBaseError(
                    f"the backend {backend.url} refused the CSEBase RETRIEVE (HTTP "
                    f"{answer.status}, RSC {rsc}: {body}) as {origin!r}; {_ADVICE}, or set "
                    "[gateway] cse_base_origin to an originator it allows"
                )
            why = f"HTTP {answer.status}, RSC {rsc}"
        left = deadline - time.monotonic()
        if left <= 0:
            raise CseBaseError(
                f"the backend {backend.url} gave no CSE-ID within {timeout:g} s "
                f"({attempt} RETRIEVEs of {CSE_BASE_TARGET}; last: {why}); {_ADVICE}"
            )
        wait = min(delay, left)
        log.warning(
            "CSE-ID: the backend %s has not answered the CSEBase RETRIEVE (%s); again in %.2g s",
            backend.url,
            why,
            wait,
        )
        await sleep(wait)
        delay = min(delay * 2, max_delay)
