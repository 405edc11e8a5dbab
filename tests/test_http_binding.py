"""The sans-IO oneM2M HTTP binding: bytes in, requests and responses out, no sockets."""

from __future__ import annotations

import json

import h11
import pytest

from m2msec.bindings.http import (
    NEED_DATA,
    BadRequest,
    HttpServerConnection,
    PeerClosed,
    RequestReceived,
)
from m2msec.bindings.messages import (
    RSC,
    HttpResponse,
    Operation,
    error_response,
    http_status_for,
    media_type_and_ty,
)


def req(
    method: str = "GET",
    target: str = "/~/mn-cse-123456/home-gw",
    *,
    origin: str | None = "Clight-AE1",
    ri: str = "r1",
    ty: int | None = None,
    body: bytes = b"",
    extra: str = "",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gw"]
    if origin is not None:
        lines.append(f"X-M2M-Origin: {origin}")
    lines += [f"X-M2M-RI: {ri}", "X-M2M-RVI: 3"]
    if ty is not None or body:
        lines.append("Content-Type: application/json" + (f";ty={ty}" if ty is not None else ""))
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n" + extra + "\r\n"
    return head.encode() + body


def parse_responses(data: bytes) -> list[tuple[h11.Response, bytes]]:
    client = h11.Connection(h11.CLIENT)
    # The client side must have sent requests for h11 to read responses: fake them.
    out: list[tuple[h11.Response, bytes]] = []
    client.receive_data(data)
    while True:
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "gw")]))
        client.send(h11.EndOfMessage())
        head: h11.Response | None = None
        body = b""
        while True:
            ev = client.next_event()
            if isinstance(ev, h11.Response):
                head = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                return out
        assert head is not None
        out.append((head, body))
        if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
            return out
        client.start_next_cycle()


def headers_of(resp: h11.Response) -> dict[str, str]:
    return {k.decode().lower(): v.decode() for k, v in resp.headers}


def test_request_parameters_are_parsed() -> None:
    conn = HttpServerConnection()
    body = json.dumps({"m2m:ae": {"api": "Nlight", "rr": True, "srv": ["3"]}}).encode()
    conn.receive_data(req("POST", ty=2, body=body, origin="C"))
    ev = conn.next_event()
    assert isinstance(ev, RequestReceived)
    r = ev.request
    assert (r.method, r.target, r.origin, r.request_id, r.release_version) == (
        "POST",
        "/~/mn-cse-123456/home-gw",
        "C",
        "r1",
        "3",
    )
    assert r.resource_type == 2 and r.operation is Operation.CREATE
    assert r.body == body
    assert r.header("X-M2M-ORIGIN") == "C"


def test_operations_map_from_methods() -> None:
    conn = HttpServerConnection()
    for method, op in [("GET", Operation.RETRIEVE), ("PUT", Operation.UPDATE),
                       ("DELETE", Operation.DELETE), ("POST", Operation.NOTIFY)]:
        conn.receive_data(req(method, body=b"{}" if method in ("PUT", "POST") else b""))
        ev = conn.next_event()
        assert isinstance(ev, RequestReceived)
        assert ev.request.operation is op
        conn.send_response(HttpResponse(200))
        conn.data_to_send()


def test_needs_data_until_the_request_is_complete() -> None:
    conn = HttpServerConnection()
    data = req("POST", ty=4, body=b'{"m2m:cin":{"con":"on"}}')
    for i in range(len(data) - 1):
        conn.receive_data(data[i : i + 1])
        assert conn.next_event() is NEED_DATA
    conn.receive_data(data[-1:])
    ev = conn.next_event()
    assert isinstance(ev, RequestReceived) and ev.request.resource_type == 4


def test_pipelined_requests_are_answered_in_order() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req(ri="a") + req(ri="b") + req("DELETE", ri="c"))
    seen = []
    for _ in range(3):
        ev = conn.next_event()
        assert isinstance(ev, RequestReceived)
        seen.append(ev.request.request_id)
        with pytest.raises(RuntimeError):
            conn.next_event()  # the current request must be answered first
        conn.send_response(error_response(RSC.NOT_FOUND, "x", request_id=ev.request.request_id))
    assert seen == ["a", "b", "c"]
    assert conn.next_event() is NEED_DATA
    responses = parse_responses(conn.data_to_send())
    assert [headers_of(r)["x-m2m-ri"] for r, _ in responses] == ["a", "b", "c"]
    assert all(r.status_code == 404 for r, _ in responses)
    assert not conn.closed


def test_keep_alive_then_peer_closes() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req())
    assert isinstance(conn.next_event(), RequestReceived)
    conn.send_response(HttpResponse(200, (("X-M2M-RSC", "2000"),), b"{}"))
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), PeerClosed)
    assert conn.closed


def test_garbage_is_answered_400_and_closes() -> None:
    conn = HttpServerConnection()
    conn.receive_data(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.close
    conn.send_response(ev.response, close=True)
    (resp, body), = parse_responses(conn.data_to_send())
    assert resp.status_code == 400
    assert headers_of(resp)["x-m2m-rsc"] == "4000"
    assert "m2m:dbg" in json.loads(body)
    assert conn.closed
    assert isinstance(conn.next_event(), PeerClosed)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversize_header_is_431(chunked: bool) -> None:
    conn = HttpServerConnection(max_header=1024)
    data = req(extra="X-Filler: " + "a" * 2000 + "\r\n")
    if chunked:
        for i in range(0, len(data), 100):
            conn.receive_data(data[i : i + 100])
            ev = conn.next_event()
            if ev is not NEED_DATA:
                break
    else:
        conn.receive_data(data)
        ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.close
    assert ev.response.status == 431 and ev.response.rsc == 4000
    conn.send_response(ev.response, close=True)
    assert conn.data_to_send().startswith(b"HTTP/1.1 431 ")
    assert conn.closed


def test_oversize_body_announced_is_413_before_reading_it() -> None:
    conn = HttpServerConnection(max_body=100)
    head = req("POST", ty=4, body=b"x" * 1000)[:-1000]
    conn.receive_data(head)
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.close
    assert ev.response.status == 413 and ev.response.rsc == RSC.BAD_REQUEST
    conn.send_response(ev.response)
    (resp, _), = parse_responses(conn.data_to_send())
    assert resp.status_code == 413
    assert headers_of(resp)["x-m2m-ri"] == "r1"
    assert headers_of(resp)["connection"] == "close"
    assert conn.closed


def test_oversize_chunked_body_is_413() -> None:
    conn = HttpServerConnection(max_body=100)
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: gw\r\nX-M2M-Origin: C\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"80\r\n" + b"x" * 0x80 + b"\r\n")
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.response.status == 413


def test_repeated_origin_is_refused_and_connection_kept() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req(extra="X-M2M-Origin: Clight-AE2\r\n") + req(ri="next"))
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and not ev.close
    assert ev.response.status == 400 and "x-m2m-origin" in ev.reason
    conn.send_response(ev.response)
    ev = conn.next_event()
    assert isinstance(ev, RequestReceived) and ev.request.request_id == "next"


def test_absolute_target_and_bad_ty_are_refused() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req(target="http://evil.example/x") + req("POST", ty=None, body=b"{}",
                      extra="") .replace(b"application/json", b"application/json;ty=two"))
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and "origin-form" in ev.reason
    conn.send_response(ev.response)
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and "ty" in ev.reason and not ev.close


def test_expect_100_continue() -> None:
    conn = HttpServerConnection()
    data = req("POST", ty=4, body=b"{}", extra="Expect: 100-continue\r\n")
    conn.receive_data(data[:-2])
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().startswith(b"HTTP/1.1 100 ")
    conn.receive_data(data[-2:])
    assert isinstance(conn.next_event(), RequestReceived)


def test_error_response_shape() -> None:
    r = error_response(RSC.SECURITY_ASSOCIATION_REQUIRED, "TLS needed", request_id="42",
                       release_version="3")
    assert r.status == 403
    hdr = dict(r.headers)
    assert hdr["X-M2M-RSC"] == "4107" and hdr["X-M2M-RI"] == "42" and hdr["X-M2M-RVI"] == "3"
    assert hdr["Content-Type"] == "application/json"
    assert json.loads(r.body) == {"m2m:dbg": "TLS needed"}


@pytest.mark.parametrize(
    ("rsc", "status"),
    [(2000, 200), (2001, 201), (2002, 200), (2004, 200), (4000, 400), (4004, 404),
     (4103, 403), (4107, 403), (4008, 504), (5000, 500), (5103, 404), (4199, 400), (6010, 500)],
)
def test_rsc_to_http_status(rsc: int, status: int) -> None:
    assert http_status_for(rsc) == status


def test_content_type_ty() -> None:
    assert media_type_and_ty("application/json;ty=2") == ("application/json", 2)
    assert media_type_and_ty("Application/JSON; charset=utf-8; ty=23") == ("application/json", 23)
    assert media_type_and_ty("application/json") == ("application/json", None)
    assert media_type_and_ty(None) == (None, None)
    with pytest.raises(ValueError):
        media_type_and_ty("application/json;ty=-1")


def test_head_response_has_no_body() -> None:
    conn = HttpServerConnection()
    conn.receive_data(req("HEAD"))
    ev = conn.next_event()
    assert isinstance(ev, RequestReceived) and ev.request.operation is None
    conn.send_response(error_response(RSC.BAD_REQUEST, "no HEAD in oneM2M"))
    out = conn.data_to_send()
    assert out.endswith(b"\r\n\r\n")
    assert not conn.closed


def test_content_length_with_transfer_encoding_is_400_and_closes() -> None:
    conn = HttpServerConnection()
    conn.receive_data(
        req("POST", extra="Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n" + req()
    )
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.close
    conn.send_response(ev.response)
    (resp, _), = parse_responses(conn.data_to_send())
    assert resp.status_code == 400
    assert headers_of(resp)["x-m2m-rsc"] == "4000"
    assert headers_of(resp)["connection"] == "close"
    assert conn.closed
    assert isinstance(conn.next_event(), PeerClosed)  # the pipelined request is never read


@pytest.mark.parametrize("name", ["X_M2M_Origin", "x-m2m_ri", "X_M2MSec_Kind"])
def test_underscore_lookalike_headers_are_refused(name: str) -> None:
    conn = HttpServerConnection()
    conn.receive_data(req(extra=f"{name}: CAdmin\r\n") + req(ri="r2"))
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and not ev.close
    assert name.lower() in ev.reason
    conn.send_response(ev.response)
    (resp, _), = parse_responses(conn.data_to_send())
    assert resp.status_code == 400 and headers_of(resp)["x-m2m-rsc"] == "4000"
    nxt = conn.next_event()
    assert isinstance(nxt, RequestReceived) and nxt.request.request_id == "r2"


def test_request_line_without_version_is_400_at_once() -> None:
    conn = HttpServerConnection()
    conn.receive_data(b"GET /~/mn-cse-123456")
    assert conn.next_event() is NEED_DATA  # the line is not complete yet
    conn.receive_data(b"\r\n")
    ev = conn.next_event()
    assert isinstance(ev, BadRequest) and ev.close
    conn.send_response(ev.response)
    (resp, _), = parse_responses(conn.data_to_send())
    assert resp.status_code == 400 and headers_of(resp)["x-m2m-rsc"] == "4000"
    assert conn.closed
