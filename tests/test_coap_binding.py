"""The oneM2M CoAP binding (TS-0008) and the CoAP message layer (RFC 7252, RFC 7959), sans-IO.

No network: requests are built with aiocoap's codec, fed to the mapping functions and to
:class:`CoapServerSession` with a fake clock, and the datagrams it returns are decoded.
"""

from __future__ import annotations

import json

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption, OpaqueOption, UintOption
from hypothesis import given, settings
from hypothesis import strategies as st

from m2msec.bindings.coap.mapping import (
    coap_code_for,
    coap_code_text,
    error_message,
    onem2m_request_message,
    parse_response,
    peek,
    request_from_coap,
    response_to_coap,
    uri_path_for,
)
from m2msec.bindings.coap.messages import CoapServerSession
from m2msec.bindings.coap.options import (
    ONEM2M_OPTIONS,
    CoapRequestError,
    Numbering,
    content_format_for,
    decode,
    encode,
)
from m2msec.bindings.messages import HttpResponse, Operation

CB = "/~/mn-cse-123456/home-gw"


def opts(message: Message) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for o in message.opt.option_list():
        out.setdefault(int(o.number), []).append(bytes(o.encode()))
    return out


def request(
    code: Code = Code.GET,
    path: tuple[str, ...] = ("~", "mn-cse-123456", "home-gw"),
    *,
    options: list[tuple[int, bytes]] | None = None,
    uint_options: list[tuple[int, int]] | None = None,
    payload: bytes = b"",
    content_format: int | None = None,
    mtype: Type = Type.CON,
    mid: int = 0x1234,
    token: bytes = b"\x01\x02",
) -> Message:
    m = Message(code=code, payload=payload)
    m.mtype, m.mid, m.token = mtype, mid, token
    m.opt.uri_path = path
    for number, value in options or []:
        m.opt.add_option(OpaqueOption(number, value))
    for number, ivalue in uint_options or []:
        m.opt.add_option(UintOption(number, ivalue))
    if content_format is not None:
        m.opt.content_format = content_format
    return m


# ----------------------------------------------------------------------------- option table


def test_current_option_numbers_are_critical_and_unsafe() -> None:
    # TS-0008 table 6.2.2.4.0-1 marks every oneM2M option C and U; RFC 7252 5.4.6 encodes
    # that in the number's two low bits. The pre-V3.7.0 numbers (256, 257...) did not.
    for option in ONEM2M_OPTIONS:
        assert option.number & 0b11 == 0b11, option
    names = {o.name: o.number for o in ONEM2M_OPTIONS}
    assert (names["fr"], names["rqi"], names["ty"], names["rsc"], names["rvi"]) == (
        279,
        283,
        267,
        307,
        271,
    )
    legacy = {o.name: o.legacy for o in ONEM2M_OPTIONS}
    assert (legacy["fr"], legacy["rqi"], legacy["rsc"], legacy["ty"]) == (256, 257, 265, 267)


# ----------------------------------------------------------------------------- requests


def test_retrieve_maps_to_get_with_onem2m_headers() -> None:
    m = request(options=[(279, b"Clight-AE1"), (283, b"rq-1"), (271, b"3")])
    mapped = request_from_coap(decode(encode(m)))
    r = mapped.request
    assert (r.method, r.target, r.operation) == ("GET", CB, Operation.RETRIEVE)
    assert (r.origin, r.request_id, r.release_version) == ("Clight-AE1", "rq-1", "3")
    assert r.header("x-m2m-origin") == "Clight-AE1" and r.header("x-m2m-ri") == "rq-1"
    assert r.header("accept") == "application/json"
    assert mapped.numbering is Numbering.CURRENT


def test_create_carries_ty_in_content_type() -> None:
    m = request(
        Code.POST,
        options=[(279, b"Clight-AE1"), (283, b"r")],
        uint_options=[(267, 4)],
        payload=b'{"m2m:cin":{"con":"on"}}',
        content_format=50,
    )
    r = request_from_coap(decode(encode(m))).request
    assert r.operation is Operation.CREATE and r.resource_type == 4
    assert r.content_type == "application/json;ty=4" == r.header("content-type")
    assert r.body == b'{"m2m:cin":{"con":"on"}}'


def test_post_without_ty_is_notify_and_onem2m_media_types_map() -> None:
    m = request(Code.POST, options=[(279, b"Cx")], payload=b"{}", content_format=10003)
    r = request_from_coap(m).request
    assert r.operation is Operation.NOTIFY
    assert r.content_type == "application/vnd.onem2m-ntfy+json"
    assert r.header("accept") == "application/vnd.onem2m-ntfy+json"


def test_payload_without_content_format_is_read_as_json() -> None:
    m = request(Code.POST, options=[(279, b"Cx")], uint_options=[(267, 2)], payload=b"{}")
    assert request_from_coap(m).request.content_type == "application/json;ty=2"


def test_legacy_numbers_are_understood_and_remembered() -> None:
    m = request(
        Code.POST,
        options=[(256, b"Clight-AE1"), (257, b"old-1")],
        uint_options=[(267, 3)],
        payload=b"{}",
        content_format=50,
    )
    mapped = request_from_coap(m)
    assert mapped.numbering is Numbering.LEGACY
    assert (mapped.request.origin, mapped.request.request_id) == ("Clight-AE1", "old-1")
    answer = response_to_coap(
        HttpResponse(201, (("X-M2M-RSC", "2001"), ("X-M2M-RI", "old-1"))),
        numbering=mapped.numbering,
    )
    got = opts(answer)
    assert got[265] == [(2001).to_bytes(2, "big")] and got[257] == [b"old-1"]
    assert 307 not in got and 283 not in got


def test_query_is_escaped_into_the_target() -> None:
    m = request(options=[(279, b"Cx")])
    m.opt.uri_query = ("rcn=4", "lbl=a b&c")
    assert request_from_coap(m).request.target == CB + "?rcn=4&lbl=a%20b%26c"


def test_path_segments_are_percent_encoded() -> None:
    m = request(path=("~", "cse", "a/b", "x y"), options=[(279, b"Cx")])
    assert request_from_coap(m).request.target == "/~/cse/a%2Fb/x%20y"
    assert uri_path_for("/~/cse/a%2Fb/x%20y") == ("~", "cse", "a/b", "x y")


@pytest.mark.parametrize(
    ("message", "code", "rsc"),
    [
        (request(options=[(279, b"Ca"), (279, b"Cb")]), Code.BAD_REQUEST, 4000),
        (request(options=[(279, b"Ca"), (256, b"Cb")]), Code.BAD_REQUEST, 4000),
        (request(options=[(279, b"Ca"), (257, b"r")]), Code.BAD_REQUEST, 4000),  # mixed tables
        (request(options=[(279, b"C" * 256)]), Code.BAD_OPTION, 4000),
        (request(options=[(279, b"Cae\r\nX-M2MSec-Peer-ID: x")]), Code.BAD_REQUEST, 4000),
        (request(options=[(279, b"\xff\xfe")]), Code.BAD_REQUEST, 4000),
        (request(path=("~", "..", "x"), options=[(279, b"Ca")]), Code.BAD_REQUEST, 4000),
        (request(options=[(1, b"etag")]), Code.BAD_OPTION, 4000),  # If-Match
        (request(options=[(2051, b"x")]), Code.BAD_OPTION, 4000),  # unknown, critical
        (request(options=[(35, b"coap://elsewhere/")]), Code.PROXYING_NOT_SUPPORTED, None),
        (request(Code.FETCH), Code.METHOD_NOT_ALLOWED, 4005),
        (
            request(Code.POST, payload=b"x", content_format=9999),
            Code.UNSUPPORTED_CONTENT_FORMAT,
            4015,
        ),
    ],
)
def test_refusals(message: Message, code: Code, rsc: int | None) -> None:
    with pytest.raises(CoapRequestError) as info:
        request_from_coap(decode(encode(message)))
    assert (info.value.code, info.value.rsc) == (code, rsc)
    assert "\r" not in info.value.reason


def test_refused_request_still_yields_its_request_id_and_numbering() -> None:
    m = request(options=[(256, b"Ca"), (257, b"old-rq"), (2051, b"?")])
    with pytest.raises(CoapRequestError):
        request_from_coap(m)
    assert peek(m) == ("old-rq", Numbering.LEGACY)
    assert peek(request(options=[(283, b"\xff")])) == (None, Numbering.CURRENT)


def test_unknown_accept_is_not_acceptable_and_elective_options_are_ignored() -> None:
    m = request(options=[(279, b"Cx"), (2048, b"elective"), (6, b"")])  # and Observe
    assert request_from_coap(m).request.origin == "Cx"
    m.opt.accept = 4242
    with pytest.raises(CoapRequestError) as info:
        request_from_coap(m)
    assert (info.value.code, info.value.rsc) == (Code.NOT_ACCEPTABLE, 5207)


def test_request_body_limit() -> None:
    m = request(Code.POST, options=[(279, b"Cx")], payload=b"x" * 100, content_format=50)
    with pytest.raises(CoapRequestError) as info:
        request_from_coap(m, max_body=99)
    assert info.value.code == Code.REQUEST_ENTITY_TOO_LARGE


@settings(max_examples=60, deadline=None)
@given(
    origin=st.from_regex(r"[A-Za-z0-9_\-/]{1,60}", fullmatch=True),
    rqi=st.from_regex(r"[A-Za-z0-9_\-.]{1,40}", fullmatch=True),
    segments=st.lists(
        st.text(min_size=1, max_size=12).filter(lambda s: s.isprintable() and s not in (".", "..")),
        min_size=1,
        max_size=5,
    ),
    ty=st.one_of(st.none(), st.integers(0, 65535)),
    legacy=st.booleans(),
)
def test_client_message_round_trips_through_the_mapping(
    origin: str, rqi: str, segments: list[str], ty: int | None, legacy: bool
) -> None:
    from urllib.parse import quote

    target = "/~/" + "/".join(quote(s, safe="") for s in segments)
    numbering = Numbering.LEGACY if legacy else Numbering.CURRENT
    m = onem2m_request_message(
        "POST" if ty is not None else "GET",
        target,
        origin=origin,
        request_id=rqi,
        ty=ty,
        payload=b"{}" if ty is not None else b"",
        numbering=numbering,
    )
    m.mtype, m.mid, m.token = Type.CON, 1, b"t"
    mapped = request_from_coap(decode(encode(m)))
    assert mapped.request.origin == origin and mapped.request.request_id == rqi
    assert mapped.request.resource_type == ty
    assert uri_path_for(mapped.request.target) == ("~", *segments)
    # An option table is only recognisable when a number differs between the tables.
    assert mapped.numbering is numbering


# ----------------------------------------------------------------------------- responses


@pytest.mark.parametrize(
    ("rsc", "operation", "code"),
    [
        (2000, Operation.RETRIEVE, Code.CONTENT),
        (2000, Operation.NOTIFY, Code.CHANGED),
        (2001, Operation.CREATE, Code.CREATED),
        (2002, Operation.DELETE, Code.DELETED),
        (2004, Operation.UPDATE, Code.CHANGED),
        (4000, None, Code.BAD_REQUEST),
        (4001, None, Code.NOT_IMPLEMENTED),
        (4004, None, Code.NOT_FOUND),
        (4008, None, Code.GATEWAY_TIMEOUT),
        (4015, None, Code.UNSUPPORTED_CONTENT_FORMAT),
        (4103, None, Code.FORBIDDEN),
        (4106, None, Code.FORBIDDEN),
        (4107, None, Code.FORBIDDEN),
        (5103, None, Code.NOT_FOUND),
        (5207, None, Code.NOT_ACCEPTABLE),
        (4199, None, Code.BAD_REQUEST),  # not in the table: by class
        (6999, None, Code.INTERNAL_SERVER_ERROR),
    ],
)
def test_rsc_to_coap_code_follows_ts_0008_table(
    rsc: int, operation: Operation | None, code: Code
) -> None:
    assert coap_code_for(rsc, operation) == code


def test_created_answer_maps_location_format_and_rsc() -> None:
    body = json.dumps({"m2m:cnt": {"rn": "state"}}).encode()
    http = HttpResponse(
        201,
        (
            ("X-M2M-RSC", "2001"),
            ("X-M2M-RI", "rq-9"),
            ("X-M2M-RVI", "3"),
            ("Content-Type", "application/json"),
            ("Content-Location", "/~/mn-cse-123456/home-gw/light1/state"),
            ("Server", "ACME"),
        ),
        body,
    )
    m = response_to_coap(http, operation=Operation.CREATE)
    m.mtype, m.mid = Type.ACK, 1
    m = decode(encode(m))
    assert m.code == Code.CREATED and bytes(m.payload) == body
    assert int(m.opt.content_format) == 50 and m.opt.max_age == 0
    assert tuple(m.opt.location_path) == ("~", "mn-cse-123456", "home-gw", "light1", "state")
    got = opts(m)
    assert got[307] == [(2001).to_bytes(2, "big")] and got[283] == [b"rq-9"] and got[271] == [b"3"]
    parsed = parse_response(m)
    assert (parsed.rsc, parsed.request_id, parsed.code_text) == (2001, "rq-9", "2.01 Created")


def test_forbidden_carries_4103_and_notify_ok_has_no_payload() -> None:
    refused = HttpResponse(403, (("X-M2M-RSC", "4103"),), b'{"m2m:dbg":"no"}')
    m = response_to_coap(refused, operation=Operation.RETRIEVE)
    assert m.code == Code.FORBIDDEN and parse_response(m).rsc == 4103
    ok = HttpResponse(200, (("X-M2M-RSC", "2000"),), b'{"ignored":1}')
    m = response_to_coap(ok, operation=Operation.NOTIFY)
    assert m.code == Code.CHANGED and bytes(m.payload) == b""


def test_answers_without_rsc_map_by_http_status() -> None:
    assert response_to_coap(HttpResponse(502)).code == Code.BAD_GATEWAY
    assert response_to_coap(HttpResponse(200, (), b"x")).code == Code.CONTENT


def test_rsc_sent_as_decimal_string_is_read_too() -> None:
    m = Message(code=Code.FORBIDDEN)
    m.opt.add_option(OpaqueOption(307, b"4103"))  # as some CSEs send it
    assert parse_response(m).rsc == 4103
    assert coap_code_text(int(Code.FORBIDDEN)) == "4.03 Forbidden"
    assert content_format_for("application/json; charset=utf-8") == 50


def test_error_message_forms() -> None:
    m = error_message(Code.FORBIDDEN, "no", rsc=4103, request_id="r1")
    assert json.loads(bytes(m.payload)) == {"m2m:dbg": "no"} and parse_response(m).rsc == 4103
    diag = error_message(Code.BAD_OPTION, "unrecognised critical option")
    assert diag.opt.content_format is None and bytes(diag.payload).startswith(b"unrecognised")


# ----------------------------------------------------------------------------- message layer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session(clock: Clock | None = None, **kw: int) -> CoapServerSession:
    return CoapServerSession(max_message=kw.pop("max_message", 1152), clock=clock or Clock(), **kw)


def answer(payload: bytes = b'{"m2m:cb":{}}') -> Message:
    return response_to_coap(
        HttpResponse(200, (("X-M2M-RSC", "2000"), ("Content-Type", "application/json")), payload),
        operation=Operation.RETRIEVE,
    )


def get(mid: int = 1, token: bytes = b"tk", mtype: Type = Type.CON, **kw: object) -> bytes:
    return encode(request(options=[(279, b"Cx")], mid=mid, token=token, mtype=mtype, **kw))  # type: ignore[arg-type]


def test_confirmable_request_is_answered_piggybacked_and_deduplicated() -> None:
    s = session()
    out, ex = s.receive(get(mid=7, token=b"ab"))
    assert out == [] and ex is not None and ex.confirmable
    (reply,) = s.respond(ex, answer())
    m = decode(reply)
    assert (m.mtype, m.mid, bytes(m.token), m.code) == (Type.ACK, 7, b"ab", Code.CONTENT)
    again, ex2 = s.receive(get(mid=7, token=b"ab"))  # a retransmission: same ACK, no new work
    assert again == [reply] and ex2 is None


def test_slow_answer_goes_separately_and_is_retransmitted_until_acked() -> None:
    clock = Clock()
    s = session(clock)
    _, ex = s.receive(get(mid=9))
    assert ex is not None
    # The client retransmits while we wait for the CSE: it gets an empty ACK.
    (ack,) = s.receive(get(mid=9))[0]
    m = decode(ack)
    assert (m.mtype, m.mid, m.code) == (Type.ACK, 9, Code.EMPTY)
    (sep,) = s.respond(ex, answer())
    m = decode(sep)
    assert m.mtype == Type.CON and m.mid != 9 and bytes(m.token) == b"tk"
    assert s.next_timer() is not None and 1002.0 <= s.next_timer() <= 1003.0  # type: ignore[operator]
    resent = []
    for _ in range(6):
        clock.now = s.next_timer() or clock.now
        resent += s.on_timer()
    assert resent == [sep] * 4 and s.unacknowledged == 0  # MAX_RETRANSMIT, then give up
    clock.now += 300
    assert s.on_timer() == [] and s.next_timer() is None  # remembered answers expired too
    # Acknowledged early, nothing more is sent.
    _, ex = s.receive(get(mid=10))
    assert ex is not None and s.acknowledge(ex) is not None
    (sep,) = s.respond(ex, answer())
    ack_back = Message(code=Code.EMPTY)
    ack_back.mtype, ack_back.mid = Type.ACK, decode(sep).mid
    assert s.receive(encode(ack_back)) == ([], None)
    assert s.unacknowledged == 0


def test_non_request_gets_non_answer_and_duplicates_are_dropped() -> None:
    s = session()
    _, ex = s.receive(get(mid=3, mtype=Type.NON))
    assert ex is not None and not ex.confirmable
    (reply,) = s.respond(ex, answer())
    assert decode(reply).mtype == Type.NON
    assert s.receive(get(mid=3, mtype=Type.NON)) == ([], None)


def test_ping_gets_reset_and_garbage_is_counted() -> None:
    s = session()
    ping = Message(code=Code.EMPTY)
    ping.mtype, ping.mid = Type.CON, 77
    (rst,) = s.receive(encode(ping))[0]
    assert (decode(rst).mtype, decode(rst).mid) == (Type.RST, 77)
    # A CON header we can read in front of garbage: reset with its MID.
    out, ex = s.receive(bytes([0x40, 0x01, 0x12, 0x34, 0xF1, 0x00]))  # option delta 15
    assert ex is None and [(decode(d).mtype, decode(d).mid) for d in out] == [(Type.RST, 0x1234)]
    assert s.receive(b"\xff\x00garbage") == ([], None)
    assert s.bad_messages == 2
    # A response where a request belongs: reset.
    bogus = Message(code=Code.CONTENT)
    bogus.mtype, bogus.mid = Type.CON, 5
    assert decode(s.receive(encode(bogus))[0][0]).mtype == Type.RST


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_datagrams_never_raise(data: bytes) -> None:
    s = session()
    out, ex = s.receive(data)
    for d in out:
        assert decode(d).code == Code.EMPTY  # only Resets (or ACKs), never made-up answers
    if ex is not None:  # it happened to be a well-formed request: it can be answered
        s.respond(ex, answer())


def test_large_answer_is_sent_blockwise_from_one_backend_answer() -> None:
    s = session(max_message=600)
    body = json.dumps({"m2m:cb": {"lbl": ["x" * 40] * 120}}).encode()
    assert len(body) > 5000
    _, ex = s.receive(get(mid=1))
    assert ex is not None
    (first,) = s.respond(ex, answer(body))
    m = decode(first)
    assert len(first) <= 600
    num, more, szx = m.opt.block2
    assert (num, more) == (0, True) and m.opt.size2 == len(body) and m.opt.etag
    data = bytearray(m.payload)
    mid = 2
    while more:
        follow = request(options=[(279, b"Cx")], mid=mid, token=bytes([mid]))
        follow.opt.block2 = BlockOption.BlockwiseTuple(num + 1, False, szx)
        out, ex = s.receive(encode(follow))
        assert ex is None, "served from the held answer, not asked again"
        (reply,) = out
        assert len(reply) <= 600
        m = decode(reply)
        num, more, _ = m.opt.block2
        assert bytes(m.opt.etag) == bytes(decode(first).opt.etag)
        data += m.payload
        mid += 1
    assert bytes(data) == body
    # Once the last block went out, a GET for a later block is simply asked again.
    follow = request(options=[(279, b"Cx")], mid=mid)
    follow.opt.block2 = BlockOption.BlockwiseTuple(1, False, szx)
    assert s.receive(encode(follow))[1] is not None


def test_early_block2_negotiation_and_non_get_without_held_answer() -> None:
    s = session()
    m = request(options=[(279, b"Cx")], mid=1)
    m.opt.block2 = BlockOption.BlockwiseTuple(0, False, 2)  # 64-octet blocks, please
    _, ex = s.receive(encode(m))
    assert ex is not None
    reply = decode(s.respond(ex, answer(b"y" * 200))[0])
    assert tuple(reply.opt.block2) == (0, True, 2) and len(reply.payload) == 64
    post = request(Code.POST, options=[(279, b"Cx")], mid=2, payload=b"{}", content_format=50)
    post.opt.block2 = BlockOption.BlockwiseTuple(3, False, 6)
    (out,) = s.receive(encode(post))[0]
    assert decode(out).code == Code.REQUEST_ENTITY_INCOMPLETE


def test_block1_request_is_joined_before_dispatch() -> None:
    s = session()
    body = bytes(range(256)) * 10  # 2560 octets in 1024-octet blocks
    for num in range(3):
        part = body[num * 1024 : (num + 1) * 1024]
        m = request(
            Code.POST,
            options=[(279, b"Cx")],
            uint_options=[(267, 4)],
            mid=100 + num,
            token=b"b1",
            payload=part,
            content_format=50,
        )
        m.opt.block1 = BlockOption.BlockwiseTuple(num, num < 2, 6)
        out, ex = s.receive(encode(m))
        if num < 2:
            (cont,) = out
            c = decode(cont)
            assert c.code == Code.CONTINUE and tuple(c.opt.block1) == (num, True, 6)
            assert ex is None
    assert ex is not None and bytes(ex.message.payload) == body
    assert request_from_coap(ex.message).request.body == body
    reply = decode(s.respond(ex, answer())[0])
    assert tuple(reply.opt.block1) == (2, False, 6)


def test_block1_gaps_and_oversize_are_refused() -> None:
    s = session(max_body=1500)
    m = request(Code.POST, options=[(279, b"Cx")], mid=1, payload=b"a" * 1024, content_format=50)
    m.opt.block1 = BlockOption.BlockwiseTuple(1, True, 6)  # block 1 before block 0
    assert decode(s.receive(encode(m))[0][0]).code == Code.REQUEST_ENTITY_INCOMPLETE
    m = request(Code.POST, options=[(279, b"Cx")], mid=2, payload=b"a" * 1024, content_format=50)
    m.opt.block1 = BlockOption.BlockwiseTuple(0, True, 6)
    m.opt.size1 = 4096
    refused = decode(s.receive(encode(m))[0][0])
    assert refused.code == Code.REQUEST_ENTITY_TOO_LARGE and refused.opt.size1 == 1500


def test_answer_beyond_max_body_is_refused() -> None:
    s = session(max_body=2000)
    _, ex = s.receive(get())
    assert ex is not None
    reply = decode(s.respond(ex, answer(b"z" * 5000))[0])
    assert reply.code == Code.INTERNAL_SERVER_ERROR and parse_response(reply).rsc == 5000


def test_remembered_answers_are_bounded_in_octets() -> None:
    s = session()
    for mid in range(1, 21):
        _, ex = s.receive(get(mid=mid))
        assert ex is not None
        (reply,) = s.respond(ex, answer(b"r" * 1000))
        assert len(reply) > 1000
    # About 16 KiB are kept: the latest answers are still resent, the oldest forgotten.
    assert s.receive(get(mid=20))[1] is None
    assert s.receive(get(mid=1))[1] is not None
