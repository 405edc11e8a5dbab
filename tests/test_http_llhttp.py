"""The HTTP layer on llhttp (issue 13 item 1): what moving off h11 must not lose, and the
forwarder's raw path. Sans-IO, no sockets, except the Deadline tests (an event loop)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from m2msec.bindings.http import (
    NEED_DATA,
    BadRequest,
    HttpRequest,
    HttpServerConnection,
    PeerClosed,
    RequestReceived,
)
from m2msec.bindings.http_client import (
    HeaderLines,
    HttpClientConnection,
    InvalidRequest,
    prepare_request,
)
from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.servers.forwarding import forwarded_headers
from m2msec.service.deadline import Deadline
from m2msec.tls.context import PeerKind
from tests.test_gateway import assoc
from tests.test_http_binding import parse_responses, req

OK = HttpResponse(200, (("X-M2M-RSC", "2000"),), b"{}")


def received(conn: HttpServerConnection) -> HttpRequest:
    ev = conn.next_event()
    assert isinstance(ev, RequestReceived), ev
    assert isinstance(ev.request, HttpRequest)
    return ev.request


# ----------------------------------------------------------------------------- server


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nX-M2M-Origin: C\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two
    ],
)
def test_http11_needs_exactly_one_host(head: bytes) -> None:
    conn = HttpServerConnection()
    conn.receive_data(head + req())
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.close and "Host" in ev.reason
    conn.send_response(ev.response)
    assert conn.closed and isinstance(conn.next_event(), PeerClosed)


def test_http10_without_host_is_served_then_closed() -> None:
    conn = HttpServerConnection()
    conn.receive_data(b"GET /~/cse HTTP/1.0\r\nX-M2M-Origin: C\r\n\r\n")
    assert received(conn).http_version == "1.0"
    conn.send_response(OK)
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in out
    assert conn.closed


def test_octets_after_connection_close_are_never_read() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req(extra="Connection: close\r\n") + req(ri="smuggled"))
    assert received(conn).request_id == "r1"
    conn.send_response(OK)
    assert conn.closed and isinstance(conn.next_event(), PeerClosed)
    (resp, _), = parse_responses(conn.data_to_send())
    assert resp.status_code == 200


def test_a_pipelined_100_continue_waits_for_the_answer_before_it() -> None:
    conn = HttpServerConnection()
    second = req("POST", ty=4, body=b"{}", extra="Expect: 100-continue\r\n")
    conn.receive_data(req(ri="first") + second[:-2])
    assert received(conn).request_id == "first"
    assert conn.data_to_send() == b""  # no 100 before the first answer
    conn.send_response(OK)
    assert conn.next_event() is NEED_DATA
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    conn.receive_data(second[-2:])
    assert received(conn).body == b"{}"


def test_upgrade_is_declined_and_the_next_request_read() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req(extra="Connection: Upgrade\r\nUpgrade: h2c\r\n") + req(ri="r2"))
    assert received(conn).request_id == "r1"
    conn.send_response(OK)
    assert received(conn).request_id == "r2"


def test_upgrade_with_a_body_is_refused_and_closed() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req("POST", body=b"{}", extra="Connection: Upgrade\r\nUpgrade: h2c\r\n"))
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.close and ev.response.status == 400


def test_eof_inside_a_request_is_400_and_close() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req("POST", body=b"0123456789")[:-5])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.close


def test_a_trickled_oversize_head_is_431_before_it_ends() -> None:
    conn = HttpServerConnection(max_header=1024)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: gw\r\nX-Long: ")
    for _ in range(20):  # one header value, never ended: llhttp reports nothing yet
        conn.receive_data(b"v" * 100)
        ev = conn.next_event()
        if ev is not NEED_DATA:
            break
    assert isinstance(ev, BadRequest) and ev.response.status == 431


def test_raw_headers_keep_the_senders_case_and_values_lose_trailing_space() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req(extra="X-Custom-Thing:   spaced value \t\r\n"))
    request = received(conn)
    assert (b"X-Custom-Thing", b"spaced value") in request.raw_headers
    assert ("x-custom-thing", "spaced value") in request.headers
    assert request.raw_current
    copy = dataclasses.replace(request, headers=request.headers[:-1])
    assert not copy.raw_current  # new headers: the raw lines no longer describe them


def test_a_response_header_http_cannot_carry_drops_the_connection() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req())
    received(conn)
    conn.send_response(HttpResponse(200, (("X-Bad", "a\r\nSet-Cookie: x"),), b""))
    assert conn.data_to_send() == b"" and conn.closed


# ----------------------------------------------------------------------------- client


def test_head_answer_announcing_a_body_is_complete_and_reusable() -> None:
    http = HttpClientConnection()
    http.send_request("HEAD", "/", [("Host", "x")])
    answer = http.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert answer is not None and answer.body == b"" and http.reusable
    http.send_request("GET", "/", [("Host", "x")])
    answer = http.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert answer is not None and answer.body == b"ok"


def test_octets_after_the_answer_make_the_connection_unusable() -> None:
    http = HttpClientConnection()
    http.send_request("GET", "/", [("Host", "x")])
    answer = http.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200")
    assert answer is not None and answer.body == b"ok"
    assert not http.reusable


def test_http10_keep_alive_answer_is_reusable_and_plain_http10_is_not() -> None:
    http = HttpClientConnection()
    http.send_request("GET", "/", [("Host", "x")])
    ka = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    assert http.receive_data(ka) is not None and http.reusable
    http.send_request("GET", "/", [("Host", "x")])
    assert http.receive_data(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n") is not None
    assert not http.reusable


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([("Host", "x"), ("X-Bad", "a\r\nInjected: 1")], b""),
        ([("Host", "x"), ("X-Bad", " leading")], b""),
        ([("Host", "x"), ("Bad Name", "v")], b""),
        ([("X-M2M-Origin", "C")], b""),  # no Host
        ([("Host", "x")], b"a body without Content-Length"),
        ([("Host", "x"), ("Content-Length", "3")], b"four"),
    ],
)
def test_requests_http11_cannot_carry_are_refused(
    headers: list[tuple[str, str]], body: bytes
) -> None:
    with pytest.raises(InvalidRequest):
        prepare_request("POST", "/", headers, body)


def test_prepared_request_is_the_wire_form() -> None:
    prepared = prepare_request("POST", "/~/c", [("Host", "x"), ("Content-Length", "2")], b"{}")
    assert prepared.head == b"POST /~/c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"


# ----------------------------------------------------------------------------- forwarding


def test_raw_path_gives_the_full_paths_headers_with_the_senders_case() -> None:
    conn = HttpServerConnection()
    conn.receive_data(
        req(
            extra="Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n"
            "X-M2MSec-Peer-ID: /mn-cse-123456/Cadmin\r\nAccept: application/json\r\n"
        )
    )
    request = received(conn)
    a = assoc("Clight-AE1", PeerKind.AE)
    raw = forwarded_headers(request, a, "Clight-AE1")
    assert isinstance(raw, HeaderLines)
    plain = OneM2MRequest(**{f.name: getattr(request, f.name) for f in
                             dataclasses.fields(OneM2MRequest)})
    full = forwarded_headers(plain, a, "Clight-AE1")
    assert not isinstance(full, HeaderLines)
    assert [(k.lower(), v) for k, v in raw] == [(k.lower(), v) for k, v in full]
    assert b"Accept: application/json\r\n" in raw.wire  # as sent, not lower-cased
    assert b"X-Secret" not in raw.wire and b"Keep-Alive" not in raw.wire
    assert raw.wire.count(b"X-M2MSec-Peer-ID: ") == 1
    assert b"X-M2MSec-Peer-ID: /mn-cse-123456/Clight-AE1\r\n" in raw.wire
    assert raw.wire.lower().count(b"x-m2m-origin: ") == 1


def test_raw_path_is_left_when_an_added_value_cannot_be_carried() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req())
    request = received(conn)
    got = forwarded_headers(request, assoc("Clight-AE1", PeerKind.AE), "C\r\nX-Evil: 1")
    assert not isinstance(got, HeaderLines)  # the pool's checks then refuse it


# ----------------------------------------------------------------------------- Deadline


async def test_deadline_expires_as_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with Deadline(loop, loop.time() + 0.05):
            await asyncio.sleep(5)


async def test_deadline_not_reached_leaves_the_task_alone() -> None:
    loop = asyncio.get_running_loop()
    async with Deadline(loop, loop.time() + 0.05) as deadline:
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # past the deadline: no late cancellation arrives
    assert not deadline.expired


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()

    async def body() -> None:
        async with Deadline(loop, loop.time() + 5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_deadline_already_past_expires_at_once() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with Deadline(loop, loop.time() - 1):
            await asyncio.sleep(1)
