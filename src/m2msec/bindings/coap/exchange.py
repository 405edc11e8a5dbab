"""Entity A's side of the CoAP message layer, sans-IO (RFC 7252 4.2, 5.2; RFC 7959 2.3-2.5).

What the client decides without waiting, for the oneM2M CoAP binding (TS-0008 6.3, 6.5)
over a DTLS association (TS-0003 10.2.1): the Message IDs and types of its requests, what a
datagram from the peer means for the request in flight (:class:`ClientMessageLayer`:
piggybacked or separate answer, empty ACK, reset, a retransmitted answer to acknowledge
again), the Block1 blocks of a request body too large for one record
(:class:`Block1Sender`) and the Block2 requests that fetch a large answer
(:class:`Block2Receiver`). Bytes in, bytes out; the asyncio driver that waits and
retransmits is :mod:`m2msec.service.coap_client`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from m2msec.bindings.coap.mapping import CoapOneM2MResponse, parse_response
from m2msec.bindings.coap.messages import (
    ACK_RANDOM_FACTOR,
    block_szx,
    empty_message,
    encoded_size,
)
from m2msec.bindings.coap.options import BLOCK1, CoapBindingError, copy_message, decode, encode

__all__ = ["Block1Sender", "Block2Receiver", "ClientMessageLayer", "Received", "fits"]


def fits(message: Message, max_payload: int) -> bool:
    """Whether the whole request ``message`` (no block options yet) fits one record."""
    return encoded_size(message, bytes(message.payload)) <= max_payload


@dataclass(frozen=True, slots=True)
class Received:
    """What one datagram from the peer means for the request in flight."""

    answer: Message | None = None
    """The answer (piggybacked on the ACK, or separate)."""
    acknowledged: bool = False
    """An empty ACK: stop retransmitting, the answer follows separately (RFC 7252 5.2.2)."""
    reply: bytes | None = None
    """An empty ACK or RST to send back (RFC 7252 4.2, 4.3)."""


class ClientMessageLayer:
    """Message IDs, types and reply matching of one client's requests (RFC 7252 4, 5.3.2).

    ``confirmable=False`` sends NON requests. Remembers the separate CON answers it
    acknowledged, so their retransmissions are acknowledged again rather than reset.
    """

    def __init__(self, *, confirmable: bool = True, rng: random.Random | None = None) -> None:
        self.confirmable = confirmable
        self._rng = rng or random.Random()  # Message IDs need not be secret (RFC 7252 4.4)
        self._next_mid = self._rng.randrange(0x10000)
        self._acked: set[int] = set()

    def first_wait(self, ack_timeout: float) -> float:
        """The initial retransmission timeout: ACK_TIMEOUT times a random factor (4.2)."""
        return ack_timeout * self._rng.uniform(1.0, ACK_RANDOM_FACTOR)

    def request(self, message: Message, token: bytes) -> tuple[int, bytes]:
        """Give ``message`` the next Message ID, ``token`` and type; its MID and datagram."""
        mid = self._next_mid
        self._next_mid = (mid + 1) & 0xFFFF
        message.mid = mid
        message.token = token
        message.mtype = Type.CON if self.confirmable else Type.NON
        return mid, encode(message)

    def receive(self, raw: bytes, mid: int, token: bytes) -> Received:
        """Match a datagram against the request with ``mid`` and ``token``.

        Raises :class:`CoapBindingError` when the peer reset the request. A datagram that
        does not parse, or belongs to nothing, is ignored (RFC 7252 4.2 rejects it silently
        or with a Reset).
        """
        try:
            reply = decode(raw)
        except CoapBindingError:
            return Received()
        mtype, code, rmid = reply.mtype, int(reply.code), int(reply.mid)
        if mtype == Type.ACK and rmid == mid:
            if code == Code.EMPTY:
                return Received(acknowledged=True)
            return Received(answer=reply) if bytes(reply.token) == token else Received()
        if mtype == Type.RST and rmid == mid:
            raise CoapBindingError("the peer reset the request (4.xx at the message layer)")
        if mtype in (Type.CON, Type.NON) and code >= 64 and bytes(reply.token) == token:
            if mtype != Type.CON:
                return Received(answer=reply)
            self._acked.add(rmid)
            return Received(answer=reply, reply=empty_message(Type.ACK, rmid))
        if mtype == Type.CON:
            # A retransmitted answer we already took, or something unexpected.
            kind = Type.ACK if rmid in self._acked else Type.RST
            return Received(reply=empty_message(kind, rmid))
        return Received()


class Block1Sender:
    """A request body too large for one record, sent in Block1 blocks (RFC 7959 2.3).

    :meth:`block` is the block to send now; :meth:`answered` takes its answer and says
    whether it is the final one. A server asking for smaller blocks is followed.
    """

    def __init__(self, message: Message, body: bytes, max_payload: int) -> None:
        szx = block_szx(message, BLOCK1, len(body), max_payload)
        if szx is None:
            raise CoapBindingError("request options leave no room for a payload block")
        self._message = message
        self._body = body
        self._szx = szx
        self._num = 0

    @property
    def _more(self) -> bool:
        return (self._num + 1) * (16 << self._szx) < len(self._body)

    def block(self) -> Message:
        size = 16 << self._szx
        part = self._body[self._num * size : (self._num + 1) * size]
        block = copy_message(self._message, part, blocks=False)
        block.opt.block1 = BlockOption.BlockwiseTuple(self._num, self._more, self._szx)
        if self._num == 0:
            block.opt.size1 = len(self._body)
        return block

    def answered(self, reply: Message) -> bool:
        """True when ``reply`` is the request's answer; otherwise move to the next block."""
        if not self._more or int(reply.code) != Code.CONTINUE:
            return True
        answered = reply.opt.block1
        if answered is not None and int(answered.size_exponent) < self._szx:
            # RFC 7959 2.3: the server asked for smaller blocks; renumber and go on.
            done = (self._num + 1) * (16 << self._szx)
            self._szx = int(answered.size_exponent)
            self._num = done // (16 << self._szx)
        else:
            self._num += 1
        return False


class Block2Receiver:
    """An answer fetched block by block with Block2 (RFC 7959 2.4), up to ``max_answer``.

    :meth:`next_request` is the follow-up request to send (None when the answer is
    whole), :meth:`add` takes its answer, :meth:`response` is the joined answer.
    """

    def __init__(self, request: Message, first: Message, max_answer: int) -> None:
        self._request = request
        self._first = first
        self._max_answer = max_answer
        self._etag = bytes(first.opt.etag or b"")
        self._data = bytearray(first.payload)
        self._block2 = first.opt.block2
        self._error: Message | None = None

    def next_request(self) -> Message | None:
        block2 = self._block2
        if self._error is not None or block2 is None or not block2.more:
            return None
        if len(self._data) > self._max_answer:
            raise CoapBindingError(f"answer larger than {self._max_answer} octets")
        szx = int(block2.size_exponent)
        follow = copy_message(self._request, b"", blocks=False)
        follow.opt.block2 = BlockOption.BlockwiseTuple(len(self._data) >> (4 + szx), False, szx)
        return follow

    def add(self, reply: Message) -> None:
        if int(reply.code) >= 128:
            self._error = reply  # an error answer ends the transfer; it is the answer
            return
        if bytes(reply.opt.etag or b"") != self._etag:
            raise CoapBindingError("the answer changed during the block-wise transfer")
        self._block2 = reply.opt.block2
        self._data += reply.payload

    def response(self) -> CoapOneM2MResponse:
        if self._error is not None:
            return parse_response(self._error)
        if self._first.opt.block2 is None:
            return parse_response(self._first)
        return parse_response(self._first, bytes(self._data))
