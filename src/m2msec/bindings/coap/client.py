"""oneM2M CoAP-binding client over an established DTLS association (Entity A).

The CoAP counterpart of :mod:`m2msec.service.onem2m_client`: every request travels inside the
DTLS security association the framework established (TS-0003 10.2.1; TS-0008 7: the
answer comes back in the same session and epoch). Messages are built and read by
:mod:`m2msec.bindings.coap.mapping` (aiocoap's codec), with the transmission parameters
and block sizing of :mod:`m2msec.bindings.coap.messages`; this module only sends, retransmits and
waits (RFC 7252 4.2: Confirmable requests, ACK_TIMEOUT with random factor, doubling,
MAX_RETRANSMIT), accepts piggybacked and separate answers, and runs block-wise transfers
both ways (RFC 7959: a request body too large for one record goes in Block1 blocks, a
large answer is fetched block by block with Block2).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from m2msec.bindings.coap.mapping import (
    CoapOneM2MResponse,
    onem2m_request_message,
    parse_response,
)
from m2msec.bindings.coap.messages import (
    ACK_RANDOM_FACTOR,
    ACK_TIMEOUT,
    MAX_RETRANSMIT,
    block_szx,
    empty_message,
    encoded_size,
)
from m2msec.bindings.coap.options import (
    BLOCK1,
    JSON_FORMAT,
    CoapBindingError,
    Numbering,
    copy_message,
    decode,
    encode,
)
from m2msec.tls.aio_dtls import DTLSAssociation

__all__ = ["CoapClient"]

_request_ids = itertools.count(1)
#: Largest block-wise answer the client joins (a CSE answer this large is a mistake).
DEFAULT_MAX_ANSWER = 16 * 1024 * 1024


class CoapClient:
    """Sends oneM2M requests as CoAP over one DTLS association, one at a time.

    ``numbering`` picks the oneM2M option numbers (TS-0008 V3.7.0+ by default, or the
    earlier ones for older CSEs); ``parameters=False`` sends plain CoAP requests without
    oneM2M options (generic CoAP servers); ``confirmable=False`` sends NON requests.
    """

    def __init__(
        self,
        assoc: DTLSAssociation,
        *,
        rvi: str | None = "3",
        numbering: Numbering = Numbering.CURRENT,
        parameters: bool = True,
        confirmable: bool = True,
        ack_timeout: float = ACK_TIMEOUT,
        max_retransmit: int = MAX_RETRANSMIT,
        max_answer: int = DEFAULT_MAX_ANSWER,
    ) -> None:
        self.assoc = assoc
        self.rvi = rvi
        self.numbering = numbering
        self.parameters = parameters
        self.confirmable = confirmable
        self.ack_timeout = ack_timeout
        self.max_retransmit = max_retransmit
        self.max_answer = max_answer
        self._rng = random.Random()
        self._next_mid = self._rng.randrange(0x10000)
        self._lock = asyncio.Lock()
        self._acked: set[int] = set()  # MIDs of separate CON answers we acknowledged
        self.separate_answers = 0
        """Answers that came separately, after an empty ACK (RFC 7252 5.2.2)."""
        self.retransmissions = 0

    async def request(
        self,
        method: str,
        target: str,
        *,
        origin: str | None,
        content: Any = None,
        ty: int | None = None,
        payload: bytes | None = None,
        content_format: int | None = None,
        accept: int | None = JSON_FORMAT,
        request_id: str | None = None,
        extra: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> CoapOneM2MResponse:
        """Send one oneM2M request (``target`` is the To in HTTP form, ``/~/cse/cb``).

        ``content`` is sent as JSON; ``payload`` sends bytes as they are. Raises
        :class:`TimeoutError` when no answer comes in ``timeout`` seconds,
        :class:`ConnectionError` when the association closes, and
        :class:`~m2msec.bindings.coap.options.CoapBindingError` when the peer resets the request.
        """
        body = payload if payload is not None else b""
        if content is not None:
            body = json.dumps(content).encode()
        message = onem2m_request_message(
            method,
            target,
            origin=origin,
            request_id=request_id or f"m2msec-coap-{next(_request_ids)}",
            rvi=self.rvi,
            ty=ty,
            payload=body,
            content_format=content_format,
            accept=accept if self.parameters else None,
            numbering=self.numbering,
            extra=extra,
            parameters=self.parameters,
        )
        async with self._lock:
            return await asyncio.wait_for(self._run(message, body), timeout)

    async def close(self) -> None:
        self.assoc.close()

    # -- block-wise ----------------------------------------------------------------------
    async def _run(self, message: Message, body: bytes) -> CoapOneM2MResponse:
        token = os.urandom(4)
        if self._fits(message):
            reply = await self._exchange(message, token)
        else:
            reply = await self._send_block1(message, body, token)
        return await self._fetch_block2(message, reply, token)

    async def _send_block1(self, message: Message, body: bytes, token: bytes) -> Message:
        szx = self._szx(message, len(body))
        size = 16 << szx
        num = 0
        while True:
            part = body[num * size : (num + 1) * size]
            more = (num + 1) * size < len(body)
            block = copy_message(message, part, blocks=False)
            block.opt.block1 = BlockOption.BlockwiseTuple(num, more, szx)
            if num == 0:
                block.opt.size1 = len(body)
            reply = await self._exchange(block, token)
            if not more or int(reply.code) != Code.CONTINUE:
                return reply
            answered = reply.opt.block1
            if answered is not None and int(answered.size_exponent) < szx:
                # RFC 7959 2.3: the server asked for smaller blocks; renumber and go on.
                done = (num + 1) * size
                szx = int(answered.size_exponent)
                size = 16 << szx
                num = done // size
                continue
            num += 1

    async def _fetch_block2(
        self, request: Message, reply: Message, token: bytes
    ) -> CoapOneM2MResponse:
        block2 = reply.opt.block2
        if block2 is None:
            return parse_response(reply)
        first = reply
        etag = bytes(reply.opt.etag or b"")
        data = bytearray(reply.payload)
        while block2 is not None and block2.more:
            if len(data) > self.max_answer:
                raise CoapBindingError(f"answer larger than {self.max_answer} octets")
            szx = int(block2.size_exponent)
            follow = copy_message(request, b"", blocks=False)
            follow.opt.block2 = BlockOption.BlockwiseTuple(len(data) >> (4 + szx), False, szx)
            reply = await self._exchange(follow, token)
            if int(reply.code) >= 128:
                return parse_response(reply)
            if bytes(reply.opt.etag or b"") != etag:
                raise CoapBindingError("the answer changed during the block-wise transfer")
            block2 = reply.opt.block2
            data += reply.payload
        return parse_response(first, bytes(data))

    # ``message`` is a whole request here, without block options yet.
    def _fits(self, message: Message) -> bool:
        return encoded_size(message, bytes(message.payload)) <= self.assoc.max_payload

    def _szx(self, message: Message, total: int) -> int:
        szx = block_szx(message, BLOCK1, total, self.assoc.max_payload)
        if szx is None:
            raise CoapBindingError("request options leave no room for a payload block")
        return szx

    # -- one exchange --------------------------------------------------------------------
    def _mid(self) -> int:
        mid = self._next_mid
        self._next_mid = (mid + 1) & 0xFFFF
        return mid

    def _send_empty(self, mtype: Type, mid: int) -> None:
        self.assoc.send(empty_message(mtype, mid))

    async def _exchange(self, message: Message, token: bytes) -> Message:
        """Send ``message`` and return the answer with ``token`` (piggybacked or separate)."""
        mid = self._mid()
        message.mid = mid
        message.token = token
        message.mtype = Type.CON if self.confirmable else Type.NON
        data = encode(message)
        self.assoc.send(data)
        loop = asyncio.get_running_loop()
        wait = self.ack_timeout * self._rng.uniform(1.0, ACK_RANDOM_FACTOR)
        due = loop.time() + wait
        left = self.max_retransmit if self.confirmable else 0
        acknowledged = not self.confirmable
        while True:
            try:
                if acknowledged:
                    raw = await self.assoc.recv()
                else:
                    raw = await asyncio.wait_for(self.assoc.recv(), max(0.0, due - loop.time()))
            except TimeoutError:
                if left == 0:
                    raise TimeoutError("no CoAP acknowledgement from the peer") from None
                left -= 1
                wait *= 2
                due = loop.time() + wait
                self.retransmissions += 1
                self.assoc.send(data)
                continue
            if not raw:
                raise ConnectionError("the security association closed before the answer")
            try:
                reply = decode(raw)
            except CoapBindingError:
                continue
            mtype, code = reply.mtype, int(reply.code)
            if mtype == Type.ACK and reply.mid == mid:
                if code == Code.EMPTY:
                    if not acknowledged:
                        self.separate_answers += 1  # the answer follows (RFC 7252 5.2.2)
                    acknowledged = True
                    continue
                if bytes(reply.token) == token:
                    return reply
                continue
            if mtype == Type.RST and reply.mid == mid:
                raise CoapBindingError("the peer reset the request (4.xx at the message layer)")
            if mtype in (Type.CON, Type.NON) and code >= 64 and bytes(reply.token) == token:
                if mtype == Type.CON:
                    self._send_empty(Type.ACK, int(reply.mid))
                    self._acked.add(int(reply.mid))
                return reply
            if mtype == Type.CON:
                # A retransmitted answer we already took, or something unexpected.
                kind = Type.ACK if int(reply.mid) in self._acked else Type.RST
                self._send_empty(kind, int(reply.mid))
