"""The server side of the CoAP message layer (RFC 7252 4, 5.2; RFC 7959; TS-0008 6.3, 6.5).

Sans-IO: :class:`CoapServerSession` is one peer's server side, datagrams in and out.
Confirmable requests are answered piggybacked on the ACK when the answer is ready in time,
otherwise with an empty ACK and a separate Confirmable response that is retransmitted with
exponential back-off (ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4, RFC 7252 4.2, 4.8) until
acknowledged. Non-confirmable requests get Non-confirmable responses. Duplicates (same
Message ID within EXCHANGE_LIFETIME, 4.5) are answered from a bounded cache and never
processed twice. An empty CON (a CoAP ping) gets a Reset; a message that does not parse
gets a Reset when it is Confirmable (its Message ID is readable) and is dropped otherwise.

**Block-wise transfer** (RFC 7959; TS-0008 5.2.3, 6.5): answers larger than one DTLS
record are sent in Block2 blocks (the largest power of two from 16 to 1024 that fits the
record with the response's options), with Size2 and an ETag; the whole answer is kept for
the follow-up block requests (one transfer per peer, up to ``max_body`` octets, dropped
after ``BLOCK_LIFETIME`` seconds). Requests may arrive in Block1 blocks, in order, up to
``max_body`` octets (more is 4.13 with Size1; a gap is 4.08). Observe (RFC 7641) is not
supported: the option is ignored, as an elective option may be.

The transmission parameters and the block sizing here are shared with the client side,
:mod:`m2msec.bindings.coap.exchange`.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from m2msec.bindings.coap.mapping import error_message
from m2msec.bindings.coap.options import (
    BLOCK1,
    BLOCK2,
    BLOCK_OPTIONS,
    CoapBindingError,
    copy_message,
    decode,
    encode,
    get_block,
    new_message,
    raw_options,
    set_block,
)
from m2msec.bindings.messages import RSC

__all__ = [
    "ACK_RANDOM_FACTOR",
    "ACK_TIMEOUT",
    "BLOCK_LIFETIME",
    "COAPS_PORT",
    "EXCHANGE_LIFETIME",
    "MAX_RETRANSMIT",
    "CoapServerSession",
    "Exchange",
]

COAPS_PORT = 5684

# RFC 7252 4.8 transmission parameters (defaults).
ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
#: RFC 7252 4.8.2: how long a Message ID of a CON (resp. NON) must be remembered.
EXCHANGE_LIFETIME = 247.0
NON_LIFETIME = 145.0
#: How long the rest of a block-wise answer (or a partial Block1 request) is kept.
BLOCK_LIFETIME = 60.0
#: Message IDs remembered per peer for deduplication (oldest forgotten first).
DEDUP_ENTRIES = 32
#: Octets of remembered answers per peer; beyond it the oldest are forgotten first.
DEDUP_BYTES = 16 * 1024
#: Block-wise answers kept per peer (a client with NSTART=1 runs one at a time).
BLOCK_TRANSFERS = 1

#: The longest token (RFC 7252 3), assumed when sizing a message before it has one.
TOKEN_MAX = 8
_RNG = random.Random()  # Message IDs need not be secret (tokens would; DTLS covers them)
MIN_SZX, MAX_SZX = 0, 6  # 16 .. 1024 octets (BERT, szx 7, is for CoAP over TCP only)


def empty_message(mtype: Type, mid: int) -> bytes:
    """An empty ACK, RST or CON (a ping) with Message ID ``mid`` (RFC 7252 4.1)."""
    message = new_message(Code.EMPTY)
    message.mtype = mtype
    message.mid = mid
    return encode(message)


def encoded_size(message: Message, payload: bytes) -> int:
    """Octets ``message`` takes with ``payload`` once it has a type, a MID and any token."""
    probe = copy_message(message, payload)
    probe.mtype, probe.mid, probe.token = Type.ACK, 0, b"\0" * TOKEN_MAX
    return len(encode(probe))


def block_szx(
    template: Message, number: int, total: int, limit: int, *, wanted: int = MAX_SZX
) -> int | None:
    """The largest block size exponent, at most ``wanted``, whose blocks of a ``total``-octet
    body fit one ``limit``-octet message with ``template``'s options (RFC 7959 2.2).

    ``number`` is Block1 (a request, with Size1) or Block2 (an answer, with Size2 and a
    4-octet ETag). None when the options leave no room for a 16-octet block.
    """
    probe = copy_message(template, b"")
    set_block(probe, number, 0xFFFFF, True, MAX_SZX)
    if number == BLOCK2:
        probe.opt.etag = b"\0" * 4
        probe.opt.size2 = max(total, 1)
    else:
        probe.opt.size1 = max(total, 1)
    room = limit - encoded_size(probe, b"") - 1  # payload marker
    for szx in range(min(wanted, MAX_SZX), MIN_SZX - 1, -1):
        if 16 << szx <= room:
            return szx
    return None


# ----------------------------------------------------------------------------- message layer


@dataclass(slots=True, eq=False)
class Exchange:
    """One request the application has to answer (:meth:`CoapServerSession.respond`).

    ``message`` is the request (with the whole payload once Block1 blocks are joined).
    """

    message: Message
    mid: int
    token: bytes
    confirmable: bool
    key: bytes
    block1: tuple[int, bool, int] | None = None
    block2: tuple[int, bool, int] | None = None
    acknowledged: bool = False
    answered: bool = False


@dataclass(slots=True)
class _Seen:
    expires: float
    reply: bytes | None = None
    exchange: Exchange | None = None


@dataclass(slots=True)
class _Outgoing:
    data: bytes
    due: float
    timeout: float
    left: int


@dataclass(slots=True)
class _Blocks:
    """A block-wise answer in progress (Block2) or a request being joined (Block1)."""

    expires: float
    data: bytearray | bytes
    template: Message | None = None
    szx: int = MAX_SZX
    next_num: int = 0
    etag: bytes = b""


class CoapServerSession:
    """The server side of the CoAP message layer for one peer (RFC 7252 4, RFC 7959).

    ``receive(datagram)`` returns ``(replies, exchange)``: datagrams to send now and, when
    a complete new request arrived, the :class:`Exchange` to answer. Answer it with
    :meth:`respond`; call :meth:`acknowledge` first if the answer will take a while (the
    request then gets an empty ACK and the answer goes as a separate CON). Run
    :meth:`on_timer` at :meth:`next_timer` for retransmissions.

    ``max_message`` is the largest CoAP message one datagram carries (for DTLS, the
    association's ``max_payload``); ``max_body`` bounds joined Block1 requests and the
    answers kept for Block2; ``parameters`` is as for :func:`response_to_coap` (for the
    few answers the session makes itself).
    """

    def __init__(
        self,
        *,
        max_message: int,
        max_body: int = 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        dedup_entries: int = DEDUP_ENTRIES,
        parameters: bool = True,
    ) -> None:
        if max_message < 64:
            raise ValueError("max_message is too small for CoAP")
        self.max_message = max_message
        self.max_body = max_body
        self.parameters = parameters
        self._clock = clock
        self._rng = rng or _RNG
        self._dedup_entries = dedup_entries
        self._next_mid = self._rng.randrange(0x10000)
        self._seen: OrderedDict[int, _Seen] = OrderedDict()
        self._seen_bytes = 0
        self._outgoing: dict[int, _Outgoing] = {}
        self._block2: OrderedDict[bytes, _Blocks] = OrderedDict()
        self._block1: OrderedDict[bytes, _Blocks] = OrderedDict()
        self.bad_messages = 0
        """Datagrams that were not CoAP (or not valid CoAP) and were dropped or reset."""

    # -- input ---------------------------------------------------------------------------
    def receive(self, data: bytes) -> tuple[list[bytes], Exchange | None]:
        now = self._clock()
        self._expire(now)
        try:
            message = decode(data)
        except CoapBindingError:
            self.bad_messages += 1
            return self._reject_unparsable(data), None
        mtype = message.mtype
        code = int(message.code)
        mid = int(message.mid)
        if mtype in (Type.ACK, Type.RST):
            # An answer to one of our separate CON responses (or noise: ignored).
            self._outgoing.pop(mid, None)
            return [], None
        if code == Code.EMPTY:
            # A CoAP ping (RFC 7252 4.3) gets a Reset; an empty NON is a format error.
            if mtype == Type.CON:
                return [empty_message(Type.RST, mid)], None
            self.bad_messages += 1
            return [], None
        if not 1 <= code < 32:
            # A response or a reserved class where a request was expected: reject.
            self.bad_messages += 1
            return ([empty_message(Type.RST, mid)] if mtype == Type.CON else []), None
        confirmable = mtype == Type.CON
        seen = self._seen.get(mid)
        if seen is not None:
            return self._duplicate(seen, confirmable), None
        entry = _Seen(now + (EXCHANGE_LIFETIME if confirmable else NON_LIFETIME))
        self._remember(mid, entry)
        return self._request(message, mid, confirmable, entry, now)

    def _reject_unparsable(self, data: bytes) -> list[bytes]:
        # RFC 7252 4.2/4.3: reject a CON we cannot parse with a Reset, if its MID is readable.
        if len(data) >= 4 and data[0] >> 6 == 1 and (data[0] >> 4) & 3 == 0:  # v1, CON
            return [empty_message(Type.RST, int.from_bytes(data[2:4], "big"))]
        return []

    def _duplicate(self, seen: _Seen, confirmable: bool) -> list[bytes]:
        if not confirmable:
            return []
        if seen.reply is not None:
            return [seen.reply]
        ex = seen.exchange
        if ex is not None and ex.confirmable and not ex.answered:
            # Still working on it: acknowledge now so the client stops retransmitting.
            ack = self.acknowledge(ex)
            return [ack] if ack else []
        return []

    def _request(
        self, message: Message, mid: int, confirmable: bool, entry: _Seen, now: float
    ) -> tuple[list[bytes], Exchange | None]:
        token = bytes(message.token)
        key = _request_key(message)
        try:
            block1 = get_block(message, BLOCK1)
            block2 = get_block(message, BLOCK2)
        except Exception:  # a Block option that aiocoap cannot read
            exchange = Exchange(message, mid, token, confirmable, key)
            entry.exchange = exchange
            reply = error_message(Code.BAD_OPTION, "malformed Block option")
            return self.respond(exchange, reply), None
        exchange = Exchange(message, mid, token, confirmable, key, block1, block2)
        entry.exchange = exchange
        if block1 is not None:
            joined = self._join_block1(exchange, block1, now)
            if joined is not None:
                return joined, None
        if block2 is not None and block2[0] > 0:
            transfer = self._block2.get(key)
            if transfer is not None:
                transfer.expires = now + BLOCK_LIFETIME
                return self._send_block(exchange, transfer, block2[0], block2[2]), None
            if int(message.code) != Code.GET:
                reply = error_message(
                    Code.REQUEST_ENTITY_INCOMPLETE,
                    "that block-wise answer is no longer held; ask again from block 0",
                )
                return self.respond(exchange, reply), None
            # A GET may simply be asked again: the application answers, we cut the block.
        return [], exchange

    def _join_block1(
        self, exchange: Exchange, block1: tuple[int, bool, int], now: float
    ) -> list[bytes] | None:
        num, more, szx = block1
        size = 16 << szx
        payload = bytes(exchange.message.payload)
        if szx > MAX_SZX:
            return self.respond(exchange, error_message(Code.BAD_OPTION, "BERT is not supported"))
        if num == 0:
            announced = exchange.message.opt.size1
            if announced is not None and int(announced) > self.max_body:
                return self._too_large(exchange)
            self._block1.pop(exchange.key, None)
            partial = _Blocks(now + BLOCK_LIFETIME, bytearray(), szx=szx)
            self._block1[exchange.key] = partial
            while len(self._block1) > BLOCK_TRANSFERS:
                self._block1.popitem(last=False)
        partial_or_none = self._block1.get(exchange.key)
        if (
            partial_or_none is None
            or num != partial_or_none.next_num
            or (more and len(payload) != size)
        ):
            self._block1.pop(exchange.key, None)
            reply = error_message(
                Code.REQUEST_ENTITY_INCOMPLETE, "Block1 blocks missing or out of order"
            )
            return self.respond(exchange, reply)
        partial = partial_or_none
        assert isinstance(partial.data, bytearray)
        partial.data += payload
        partial.next_num += 1
        partial.expires = now + BLOCK_LIFETIME
        if len(partial.data) > self.max_body:
            self._block1.pop(exchange.key, None)
            return self._too_large(exchange)
        if more:
            reply = new_message(Code.CONTINUE)
            set_block(reply, BLOCK1, num, True, szx)
            return self.respond(exchange, reply)
        del self._block1[exchange.key]
        exchange.message.payload = bytes(partial.data)
        return None  # complete: the application answers it

    def _too_large(self, exchange: Exchange) -> list[bytes]:
        reply = error_message(
            Code.REQUEST_ENTITY_TOO_LARGE,
            f"request larger than {self.max_body} octets",
            rsc=RSC.BAD_REQUEST,
            parameters=self.parameters,
        )
        reply.opt.size1 = self.max_body
        return self.respond(exchange, reply)

    # -- output --------------------------------------------------------------------------
    def acknowledge(self, exchange: Exchange) -> bytes | None:
        """An empty ACK for a CON request whose answer will come separately (RFC 7252 5.2.2)."""
        if not exchange.confirmable or exchange.acknowledged or exchange.answered:
            return None
        exchange.acknowledged = True
        ack = empty_message(Type.ACK, exchange.mid)
        seen = self._seen.get(exchange.mid)
        if seen is not None:
            self._keep(seen, ack)
        return ack

    def respond(self, exchange: Exchange, reply: Message) -> list[bytes]:
        """The datagrams answering ``exchange`` with ``reply`` (type, MID, token are set here).

        An answer that does not fit one message is sent block-wise (Block2).
        """
        if exchange.answered:
            return []
        payload = bytes(reply.payload)
        if exchange.block1 is not None and reply.opt.block1 is None and int(reply.code) >= 64:
            num, _, szx = exchange.block1
            set_block(reply, BLOCK1, num, False, szx)
        wanted = exchange.block2 if 64 <= int(reply.code) < 96 else None  # 2.xx only
        whole = encoded_size(reply, payload) <= self.max_message and (
            wanted is None or (wanted[0] == 0 and len(payload) <= 16 << wanted[2])
        )
        if whole or not payload:
            return self._send(exchange, reply)
        if len(payload) > self.max_body:
            return self._send(
                exchange,
                error_message(
                    Code.INTERNAL_SERVER_ERROR,
                    f"the answer is larger than the {self.max_body} octets relayed over CoAP",
                    rsc=RSC.INTERNAL_SERVER_ERROR,
                    parameters=self.parameters,
                ),
            )
        template = reply
        template.payload = b""
        fitting = block_szx(
            template,
            BLOCK2,
            len(payload),
            self.max_message,
            wanted=wanted[2] if wanted else MAX_SZX,
        )
        if fitting is None:
            return self._send(
                exchange,
                error_message(Code.INTERNAL_SERVER_ERROR, "answer options exceed one datagram"),
            )
        szx = fitting
        etag = hashlib.sha256(payload).digest()[:4]
        transfer = _Blocks(self._clock() + BLOCK_LIFETIME, payload, template, szx, 0, etag)
        self._block2[exchange.key] = transfer
        while len(self._block2) > BLOCK_TRANSFERS:
            self._block2.popitem(last=False)
        num = wanted[0] if wanted else 0
        return self._send_block(exchange, transfer, num, wanted[2] if wanted else szx)

    def _send_block(self, exchange: Exchange, transfer: _Blocks, num: int, szx: int) -> list[bytes]:
        assert transfer.template is not None
        if szx > transfer.szx:  # RFC 7959 2.4: we picked smaller blocks; renumber
            num <<= szx - transfer.szx
            szx = transfer.szx
        size = 16 << szx
        data = bytes(transfer.data)
        start = num * size
        if start >= len(data) and not (num == 0 and not data):
            reply = error_message(Code.BAD_OPTION, f"block {num} is beyond the answer")
            return self._send(exchange, reply)
        part = data[start : start + size]
        more = start + size < len(data)
        reply = copy_message(transfer.template, part)
        set_block(reply, BLOCK2, num, more, szx)
        reply.opt.etag = transfer.etag
        if num == 0:
            reply.opt.size2 = len(data)
        if not more:
            self._block2.pop(exchange.key, None)
        return self._send(exchange, reply)

    def _send(self, exchange: Exchange, reply: Message) -> list[bytes]:
        exchange.answered = True
        reply.token = exchange.token
        if exchange.confirmable and not exchange.acknowledged:
            reply.mtype = Type.ACK
            reply.mid = exchange.mid
            data = encode(reply)
            seen = self._seen.get(exchange.mid)
            if seen is not None:
                self._keep(seen, data)
            return [data]
        reply.mid = self._mid()
        if exchange.confirmable:  # separate response after an empty ACK: CON, retransmitted
            reply.mtype = Type.CON
            data = encode(reply)
            timeout = ACK_TIMEOUT * self._rng.uniform(1.0, ACK_RANDOM_FACTOR)
            self._outgoing[reply.mid] = _Outgoing(
                data, self._clock() + timeout, timeout, MAX_RETRANSMIT
            )
            return [data]
        reply.mtype = Type.NON
        return [encode(reply)]

    # -- timers --------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """When :meth:`on_timer` is next due (this session's clock), or None.

        Due for a retransmission, or to forget remembered answers and block-wise state
        that expired (so an idle peer holds no more than it must).
        """
        due = [o.due for o in self._outgoing.values()]
        if self._seen:
            due.append(next(iter(self._seen.values())).expires)
        due += [b.expires for b in self._block1.values()]
        due += [b.expires for b in self._block2.values()]
        return min(due) if due else None

    def on_timer(self, now: float | None = None) -> list[bytes]:
        """Retransmit separate CON responses not acknowledged in time; forget expired state."""
        now = self._clock() if now is None else now
        self._expire(now)
        out: list[bytes] = []
        for mid, pending in list(self._outgoing.items()):
            if pending.due > now:
                continue
            if pending.left == 0:
                del self._outgoing[mid]  # RFC 7252 4.2: give up after MAX_RETRANSMIT
                continue
            pending.left -= 1
            pending.timeout *= 2
            pending.due = now + pending.timeout
            out.append(pending.data)
        return out

    @property
    def unacknowledged(self) -> int:
        """Separate CON responses still waiting for their ACK."""
        return len(self._outgoing)

    # -- internals -----------------------------------------------------------------------
    def _mid(self) -> int:
        mid = self._next_mid
        self._next_mid = (mid + 1) & 0xFFFF
        return mid

    def _remember(self, mid: int, entry: _Seen) -> None:
        self._seen[mid] = entry
        while len(self._seen) > self._dedup_entries:
            self._forget_oldest()

    def _keep(self, seen: _Seen, reply: bytes) -> None:
        self._seen_bytes += len(reply) - len(seen.reply or b"")
        seen.reply = reply
        while self._seen_bytes > DEDUP_BYTES and len(self._seen) > 1:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, entry = self._seen.popitem(last=False)
        self._seen_bytes -= len(entry.reply or b"")

    def _expire(self, now: float) -> None:
        while self._seen:
            entry = next(iter(self._seen.values()))
            if entry.expires > now:
                break
            self._forget_oldest()
        for table in (self._block1, self._block2):
            for key in [k for k, v in table.items() if v.expires <= now]:
                del table[key]

def _request_key(message: Message) -> bytes:
    """What identifies "the same request" across blocks: method and options, less the
    block options (RFC 7959 2.4/2.5: the token may change from block to block)."""
    h = hashlib.sha256(bytes([int(message.code) & 0xFF]))
    for number, value in raw_options(message):
        if number in BLOCK_OPTIONS:
            continue
        h.update(number.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value)
    return h.digest()[:16]
