"""The oneM2M CoAP-binding client: the asyncio driver over one DTLS association (Entity A).

The CoAP counterpart of :mod:`m2msec.service.onem2m_client`: every request travels inside
the DTLS security association the framework established (TS-0003 10.2.1; TS-0008 7: the
answer comes back in the same session and epoch). Messages are built and read by
:mod:`m2msec.bindings.coap.mapping`; what each datagram means, and the blocks of a
block-wise transfer both ways (RFC 7959), are decided sans-IO by
:mod:`m2msec.bindings.coap.exchange`. This module only sends, retransmits and waits
(RFC 7252 4.2: Confirmable requests, ACK_TIMEOUT with random factor, doubling,
MAX_RETRANSMIT), under the :class:`~m2msec.service.limits.CoapLimits`, one request at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from typing import Any

from aiocoap import Message

from m2msec.bindings.coap.exchange import (
    Block1Sender,
    Block2Receiver,
    ClientMessageLayer,
    fits,
)
from m2msec.bindings.coap.mapping import CoapOneM2MResponse, onem2m_request_message
from m2msec.bindings.coap.options import JSON_FORMAT, Numbering
from m2msec.service.limits import CoapLimits
from m2msec.tls.aio_dtls import DTLSAssociation

__all__ = ["CoapClient"]

_request_ids = itertools.count(1)


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
        limits: CoapLimits | None = None,
    ) -> None:
        self.assoc = assoc
        self.rvi = rvi
        self.numbering = numbering
        self.parameters = parameters
        self.limits = limits or CoapLimits()
        self._layer = ClientMessageLayer(confirmable=confirmable)
        self._lock = asyncio.Lock()
        self.separate_answers = 0
        """Answers that came separately, after an empty ACK (RFC 7252 5.2.2)."""
        self.retransmissions = 0

    @property
    def confirmable(self) -> bool:
        return self._layer.confirmable

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

    async def _run(self, message: Message, body: bytes) -> CoapOneM2MResponse:
        token = os.urandom(4)
        if fits(message, self.assoc.max_payload):
            reply = await self._exchange(message, token)
        else:
            blocks = Block1Sender(message, body, self.assoc.max_payload)
            reply = await self._exchange(blocks.block(), token)
            while not blocks.answered(reply):
                reply = await self._exchange(blocks.block(), token)
        answer = Block2Receiver(message, reply, self.limits.max_answer)
        while (follow := answer.next_request()) is not None:
            answer.add(await self._exchange(follow, token))
        return answer.response()

    async def _exchange(self, message: Message, token: bytes) -> Message:
        """Send ``message`` and return the answer with ``token`` (piggybacked or separate)."""
        mid, data = self._layer.request(message, token)
        self.assoc.send(data)
        loop = asyncio.get_running_loop()
        wait = self._layer.first_wait(self.limits.ack_timeout)
        due = loop.time() + wait
        left = self.limits.max_retransmit if self.confirmable else 0
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
            got = self._layer.receive(raw, mid, token)
            if got.reply is not None:
                self.assoc.send(got.reply)
            if got.acknowledged:
                if not acknowledged:
                    self.separate_answers += 1  # the answer follows (RFC 7252 5.2.2)
                acknowledged = True
            elif got.answer is not None:
                return got.answer
