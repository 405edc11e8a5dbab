"""The operator's SA administration API, sans-IO: requests to answers, no sockets.

Issue 12 item 3: an operator acts on the live Security Associations of a running
Responder (the gateway) without a restart - list them, show one, ask its Initiator to
re-key (seed 003 7.3.3, Update: the session is ended gracefully and the next handshake is
a new SA), remove one or every SA of a peer (seed 003 7.3.6, Remove: marked invalid, the
session ended at once). What the operation does to the SA is the :class:`SaAdmin`'s (the
gateway implements it, over its SA Management); this module only maps the admin HTTP
requests onto it and its results back, in the manner of h11: :func:`parse_request` turns
a request into an :class:`AdminCall` (or an :class:`AdminError`), :func:`answer` turns
the result into an :class:`~m2msec.bindings.messages.HttpResponse`, and
:func:`handle_request` does both around one awaited :class:`SaAdmin` call.

Both roles share the messages, as the MAF's wire module serves Entity A and the MAF: the
client builds its requests with :func:`call_target` and reads the answers with
:func:`read_list`, :func:`read_detail` and :func:`read_outcome` of
:mod:`m2msec.sa.admin_wire` (the values and their JSON, re-exported here).

The routes (JSON bodies, ``application/json``; docs/sa.md section 7)::

    GET    /sa[?peer=ID&state=S]   list (S: a SaState value, "live" (default) or "all")
    GET    /sa/<hex>               show one SA and its history
    POST   /sa/<hex>/update        Update: ask the Initiator to re-key
    DELETE /sa/<hex>               Remove one SA
    DELETE /sa?peer=ID             Remove every live SA of one peer
    POST   /reload                 re-read the configuration (issue 14; docs/operations.md):
                                   200 {"result": "reloaded", "message": ...} or 409
                                   {"result": "refused", "error": ...}, the old one in force

A malformed SA identifier, query or body is answered 400, an unknown path 404, a method a
path does not take 405 (with ``Allow``), each as ``{"error": "..."}``. A refused operation
(unknown SA, SA not live, ...) is answered with the status of its
:class:`RejectionReason` and ``{"result": "rejected", "reason": ..., "error": ...}``.

SA records travel as :func:`~m2msec.sa.admin_wire.record_to_json` writes them; they never
carry a key, only its one-way fingerprint.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from m2msec.bindings.messages import HttpResponse
from m2msec.sa.admin_wire import (
    MAX_SA_ID_OCTETS,
    AdminOutcome,
    AdminProtocolError,
    RejectionReason,
    SaDetail,
    SaHistoryEntry,
    SaJsonError,
    detail_from_json,
    detail_to_json,
    parse_sa_id,
    read_detail,
    read_list,
    read_outcome,
    record_from_json,
    record_to_json,
)
from m2msec.sa.records import SaId, SaRecord, SaState
from m2msec.service.lifecycle import ReloadOutcome

__all__ = [
    "MAX_SA_ID_OCTETS",
    "AdminCall",
    "AdminError",
    "AdminOperation",
    "AdminOutcome",
    "AdminProtocolError",
    "RejectionReason",
    "SaAdmin",
    "SaDetail",
    "SaHistoryEntry",
    "SaJsonError",
    "SaQuery",
    "answer",
    "call_target",
    "detail_from_json",
    "detail_to_json",
    "error_response",
    "handle_request",
    "parse_request",
    "parse_sa_id",
    "read_detail",
    "read_list",
    "read_outcome",
    "read_reload",
    "record_from_json",
    "record_to_json",
    "reload_answer",
    "sa_query",
]

#: The longest peer identifier accepted in a query (an AE-ID or CSE-ID is far shorter).
_MAX_PEER: Final = 1024
_JSON: Final = ("Content-Type", "application/json")


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class SaQuery:
    """Which SAs ``GET /sa`` lists: one peer's or all, in one state, the live ones or all.

    ``state`` set: only SAs in that state. Otherwise ``live_only`` (the default) keeps the
    SAs over which messages may still pass (:attr:`SaState.live`).
    """

    peer: str | None = None
    state: SaState | None = None
    live_only: bool = True

    def matches(self, record: SaRecord) -> bool:
        if self.peer is not None and record.peer_id != self.peer:
            return False
        if self.state is not None:
            return record.state is self.state
        return record.state.live or not self.live_only


class SaAdmin(Protocol):
    """The operations an operator may ask of a Responder's SA Management (module docstring).

    The gateway implements it over its live sessions and SA records; :class:`AdminClient`
    (``m2msec.servers.admin``) implements it over the admin socket, so that code written
    against one works against the other.
    """

    async def list(self, query: SaQuery) -> Sequence[SaRecord]:
        """The SA records ``query`` selects, oldest first."""
        ...

    async def show(self, sa_id: SaId) -> SaDetail | None:
        """One SA record and its history; None when there is no SA with this identifier."""
        ...

    async def update(self, sa_id: SaId) -> AdminOutcome:
        """Update (seed 003 7.3.3): end the session gracefully so that its Initiator
        re-keys; its next handshake is a new SA. The records: the SA as now marked."""
        ...

    async def remove(self, sa_id: SaId) -> AdminOutcome:
        """Remove (seed 003 7.3.6): mark the SA invalid and end its session at once."""
        ...

    async def remove_peer(self, peer_id: str) -> AdminOutcome:
        """Remove every live SA whose peer is ``peer_id`` (UNKNOWN_PEER when there is none)."""
        ...


# ----------------------------------------------------------------------------- requests


class AdminOperation(enum.StrEnum):
    LIST = "list"
    SHOW = "show"
    UPDATE = "update"
    REMOVE = "remove"
    REMOVE_PEER = "remove-peer"
    RELOAD = "reload"


@dataclass(frozen=True, slots=True)
class AdminCall:
    """One parsed admin request: the operation and its one argument."""

    operation: AdminOperation
    sa_id: SaId | None = None
    peer: str | None = None
    query: SaQuery | None = None


class AdminError(Exception):
    """A request this API does not take: ``status`` (400, 404, 405) and a safe message."""

    def __init__(self, status: int, message: str, *, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


def _query(text: str) -> dict[str, str]:
    if not text:
        return {}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeError):
        raise AdminError(400, "malformed query string") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise AdminError(400, f"query parameter {name!r} given more than once")
        out[name] = value
    return out


def sa_query(peer: str | None = None, state: str = "live") -> SaQuery:
    """The query of ``GET /sa?peer=...&state=...`` (and of ``m2msec sa list``).

    ``state``: a :class:`SaState` value, ``live`` (the SAs messages may pass over) or
    ``all``. ValueError with a message naming the choices for anything else.
    """
    if peer is not None and not 0 < len(peer) <= _MAX_PEER:
        raise ValueError("peer must be a non-empty identifier")
    if state == "live":
        return SaQuery(peer=peer)
    if state == "all":
        return SaQuery(peer=peer, live_only=False)
    try:
        return SaQuery(peer=peer, state=SaState(state), live_only=False)
    except ValueError:
        known = ", ".join(["live", "all", *(s.value for s in SaState)])
        raise ValueError(f"unknown state {state[:40]!r} (one of: {known})") from None


def _list_query(params: dict[str, str]) -> SaQuery:
    unknown = sorted(set(params) - {"peer", "state"})
    if unknown:
        raise AdminError(400, f"unknown query parameter {unknown[0][:40]!r} (peer, state)")
    try:
        return sa_query(params.get("peer"), params.get("state", "live"))
    except ValueError as exc:
        raise AdminError(400, str(exc)) from None


def parse_request(method: str, target: str, body: bytes = b"") -> AdminCall:
    """The call one request asks for; :class:`AdminError` (400/404/405) if it is not one."""
    method = method.upper()
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.fragment:
        raise AdminError(400, "the request target must be a path")
    path = parts.path
    if path == "/reload":
        if method != "POST":
            raise AdminError(405, f"{method} is not allowed on /reload", allow="POST")
        if parts.query or body.strip() not in (b"", b"{}"):
            raise AdminError(400, "a reload takes no parameters (an empty body or {})")
        return AdminCall(AdminOperation.RELOAD)
    segments = path.split("/")[1:] if path.startswith("/") else None
    if segments is None or not segments or segments[0] != "sa" or len(segments) > 3:
        raise AdminError(
            404, f"no such resource {path[:60]!r}: the admin API is under /sa and /reload"
        )
    params = _query(parts.query)
    if len(segments) == 1:  # /sa
        if method == "GET":
            _no_body(body)
            return AdminCall(AdminOperation.LIST, query=_list_query(params))
        if method == "DELETE":
            _no_body(body)
            unknown = sorted(set(params) - {"peer"})
            if unknown:
                raise AdminError(400, f"unknown query parameter {unknown[0][:40]!r} (peer)")
            peer = params.get("peer")
            if not peer or len(peer) > _MAX_PEER:
                raise AdminError(400, "DELETE /sa removes the SAs of one peer: give ?peer=ID")
            return AdminCall(AdminOperation.REMOVE_PEER, peer=peer)
        raise AdminError(405, f"{method} is not allowed on /sa", allow="GET, DELETE")
    try:
        sa_id = parse_sa_id(segments[1])
    except ValueError as exc:
        raise AdminError(400, str(exc)) from None
    if params:
        raise AdminError(400, f"{path[:60]!r} takes no query parameters")
    if len(segments) == 2:  # /sa/<hex>
        if method == "GET":
            _no_body(body)
            return AdminCall(AdminOperation.SHOW, sa_id=sa_id)
        if method == "DELETE":
            _no_body(body)
            return AdminCall(AdminOperation.REMOVE, sa_id=sa_id)
        raise AdminError(405, f"{method} is not allowed on an SA", allow="GET, DELETE")
    if segments[2] != "update":
        raise AdminError(404, f"no such resource {path[:60]!r} (an SA has only /update)")
    if method != "POST":
        raise AdminError(405, f"{method} is not allowed on /update", allow="POST")
    if body.strip() not in (b"", b"{}"):
        raise AdminError(400, "an update takes no parameters (an empty body or {})")
    return AdminCall(AdminOperation.UPDATE, sa_id=sa_id)


def _no_body(body: bytes) -> None:
    if body:
        raise AdminError(400, "this request takes no body")


def call_target(call: AdminCall) -> tuple[str, str]:
    """The method and target that ask for ``call`` (the client's side of :func:`parse_request`)."""
    op = call.operation
    if op is AdminOperation.RELOAD:
        return "POST", "/reload"
    if op is AdminOperation.LIST:
        query = call.query or SaQuery()
        params: list[tuple[str, str]] = []
        if query.peer is not None:
            params.append(("peer", query.peer))
        if query.state is not None:
            params.append(("state", query.state.value))
        elif not query.live_only:
            params.append(("state", "all"))
        return "GET", "/sa" + (f"?{urlencode(params, quote_via=quote)}" if params else "")
    if op is AdminOperation.REMOVE_PEER:
        if not call.peer:
            raise ValueError("remove-peer needs a peer")
        return "DELETE", "/sa?" + urlencode([("peer", call.peer)], quote_via=quote)
    if call.sa_id is None:
        raise ValueError(f"{op} needs an SA identifier")
    target = f"/sa/{call.sa_id.hex()}"
    if op is AdminOperation.SHOW:
        return "GET", target
    if op is AdminOperation.REMOVE:
        return "DELETE", target
    return "POST", target + "/update"


# ----------------------------------------------------------------------------- answers


def _json_response(
    status: int, doc: Mapping[str, Any], extra: tuple[tuple[str, str], ...] = ()
) -> HttpResponse:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return HttpResponse(status, (_JSON, ("Cache-Control", "no-store"), *extra), body)


def error_response(status: int, message: str, *, allow: str | None = None) -> HttpResponse:
    """A refused request: ``{"error": message}`` (with ``Allow`` for a 405)."""
    extra = (("Allow", allow),) if allow is not None else ()
    return _json_response(status, {"error": message}, extra)


Result = Sequence[SaRecord] | SaDetail | AdminOutcome | None


def answer(call: AdminCall, result: Result) -> HttpResponse:
    """The response to ``call`` given what the :class:`SaAdmin` returned for it."""
    op = call.operation
    if op is AdminOperation.LIST:
        if not isinstance(result, Sequence):
            raise TypeError("list answers a sequence of SA records")
        return _json_response(200, {"sas": [record_to_json(r) for r in result]})
    if op is AdminOperation.SHOW:
        if result is None:
            return _rejection(AdminOutcome.reject(RejectionReason.UNKNOWN_SA))
        if not isinstance(result, SaDetail):
            raise TypeError("show answers an SaDetail or None")
        return _json_response(200, detail_to_json(result))
    if not isinstance(result, AdminOutcome):
        raise TypeError(f"{op} answers an AdminOutcome")
    if not result.accepted:
        return _rejection(result)
    return _json_response(
        200,
        {
            "result": "accepted",
            "message": result.message,
            "sas": [record_to_json(r) for r in result.records],
        },
    )


def reload_answer(outcome: ReloadOutcome) -> HttpResponse:
    """``POST /reload`` answered: 200 reloaded, 409 refused (the old configuration stays)."""
    if outcome.applied:
        return _json_response(200, {"result": "reloaded", "message": outcome.message})
    return _json_response(409, {"result": "refused", "error": outcome.message})


def read_reload(status: int, body: bytes) -> ReloadOutcome:
    """The client's side of :func:`reload_answer`; AdminProtocolError for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeError):
        raise AdminProtocolError(status, "the reload answer is not JSON") from None
    if isinstance(doc, dict):
        if status == 200 and doc.get("result") == "reloaded":
            return ReloadOutcome(True, str(doc.get("message", "")))
        if status == 409 and doc.get("result") == "refused":
            return ReloadOutcome(False, str(doc.get("error", "")))
        if isinstance(doc.get("error"), str):
            return ReloadOutcome(False, f"{doc['error']} ({status})")
    raise AdminProtocolError(status, "not an answer to a reload")


def _rejection(outcome: AdminOutcome) -> HttpResponse:
    assert outcome.reason is not None
    doc = {"result": "rejected", "reason": outcome.reason.value, "error": outcome.message}
    return _json_response(outcome.reason.http_status, doc)


async def handle_request(
    admin: SaAdmin,
    method: str,
    target: str,
    body: bytes,
    reload: Callable[[], Awaitable[ReloadOutcome]] | None = None,
) -> HttpResponse:
    """One admin request answered: parsed, passed to ``admin`` (or to ``reload``, the
    server's :meth:`~m2msec.service.lifecycle.ServerLifecycle.reload`, for ``POST
    /reload``; None: 404), its result mapped back."""
    try:
        call = parse_request(method, target, body)
    except AdminError as exc:
        return error_response(exc.status, exc.message, allow=exc.allow)
    if call.operation is AdminOperation.RELOAD:
        if reload is None:
            return error_response(404, "this server does not reload through its admin socket")
        return reload_answer(await reload())
    result: Result
    if call.operation is AdminOperation.LIST:
        assert call.query is not None
        result = await admin.list(call.query)
    elif call.operation is AdminOperation.REMOVE_PEER:
        assert call.peer is not None
        result = await admin.remove_peer(call.peer)
    else:
        assert call.sa_id is not None
        if call.operation is AdminOperation.SHOW:
            result = await admin.show(call.sa_id)
        elif call.operation is AdminOperation.UPDATE:
            result = await admin.update(call.sa_id)
        else:
            result = await admin.remove(call.sa_id)
    return answer(call, result)
