"""The Zn reference point between a NAF and the BSF (TS 33.220 4.4.3, 4.5.3): our mapping.

TS 29.109 carries Zn over Diameter. We carry the same exchange as one HTTP request over
mutually authenticated TLS with certificates from ``m2msec ca`` (TS 33.220 4.4.3 asks
for a mutually authenticated, confidential Zn; the BSF authenticates the NAF's FQDN by
its certificate):

request (NAF -> BSF; TS 29.109's Bootstrapping-Info-Request: B-TID, NAF_Id, GBA_U
awareness)::

    GET /zn/bootstrap/<B-TID, percent-encoded>?nafId=<NAF_Id in hex>&gbaU=0|1

answer 200 (Bootstrapping-Info-Answer: key, lifetime, IMPI, USS, key type)::

    {"btid": "...", "impi": "...", "ksNAF": "<hex>", "expires": "YYYYMMDDTHHMMSS",
     "bootstrapTime": "YYYYMMDDTHHMMSS", "gbaType": "GBA_ME" | "GBA_U", "uss": {...}}

Times are UTC in oneM2M's basic ISO 8601 form (TS-0004 6.3.3). The messages themselves
are written and read by :mod:`m2msec.gba.wire`, which both ends use. ``gbaU=1`` asks for
Ks_int_NAF (the client's identity had the "-uicc" prefix, docs/readings.md A-08);
``gbaU=0`` for Ks_ext_NAF.
Refusals carry ``{"error": "<reason>"}``: 400 malformed request, 403 the NAF FQDN in
``nafId`` is not the FQDN the NAF's certificate authenticates, the subscriber's GUSS does
not allow this NAF, or ``gbaU=1`` for a subscriber without a UICC; 404 unknown or expired
B-TID; 405 another method or path.

:class:`ZnClient` is the NAF side (keeps a few TLS connections alive and reuses them);
the BSF side answers in :mod:`m2msec.gba.service` behind the listeners of
:mod:`m2msec.servers.bsf`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from m2msec.bindings.http_client import ResponseTooLarge
from m2msec.errors import ConfigurationError, HandshakeError
from m2msec.gba.wire import ZN_MEDIA_TYPE, NafKey, ZnError, ZnRequest, error_reason
from m2msec.service.client import HttpClient
from m2msec.service.limits import HttpLimits
from m2msec.tls.aio import TLSConnection, connect
from m2msec.tls.context import Framework
from m2msec.tls.profiles import TLSProfile

__all__ = ["ZnClient"]

log = logging.getLogger(__name__)

MAX_ANSWER_OCTETS: Final = 64 * 1024


# ----------------------------------------------------------------------------- client


class _Channel:
    """One HTTP/1.1 keep-alive channel over a TLS connection to the BSF."""

    def __init__(self, conn: TLSConnection) -> None:
        self.conn = conn
        self.http = HttpClient(conn, limits=HttpLimits(max_body=MAX_ANSWER_OCTETS))

    async def get(self, target: str, host: str, timeout: float) -> tuple[int, bytes]:
        headers = [("Host", host), ("Accept", ZN_MEDIA_TYPE), ("User-Agent", "m2msec")]
        try:
            answer = await asyncio.wait_for(self.http.request("GET", target, headers), timeout)
        except ResponseTooLarge:
            raise ZnError(0, "answer from the BSF is too large") from None
        return answer.status, answer.body

    @property
    def reusable(self) -> bool:
        return self.http.reusable


class ZnClient:
    """The NAF side of Zn: fetch Ks_NAF for a B-TID from the BSF over mutual TLS.

    ``profile`` is the client profile of the certificate framework towards the BSF
    (:func:`m2msec.frameworks.gba.zn_profile`): the NAF's certificate, whose dNSName is
    the NAF FQDN the BSF will accept in NAF_Id (a CSE-ID certificate's public domain name
    or a service certificate), and the check that the BSF's certificate names
    ``bsf_fqdn`` (also the SNI). Up to ``max_connections`` TLS connections are kept and
    reused.
    """

    def __init__(
        self,
        profile: TLSProfile,
        bsf_host: str,
        bsf_port: int,
        bsf_fqdn: str,
        *,
        timeout: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        # TS 33.220 4.4.3: Zn is mutually authenticated; refuse anything else early.
        if (
            profile.server_side
            or profile.framework is not Framework.CERTIFICATE
            or profile.certificate_policy is None
        ):
            raise ConfigurationError("the Zn client needs a certificate client profile")
        self._profile = profile
        self.bsf_host = bsf_host
        self.bsf_port = bsf_port
        self.bsf_fqdn = bsf_fqdn
        self.timeout = timeout
        self._idle: list[_Channel] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    def __repr__(self) -> str:
        return f"ZnClient({self.bsf_fqdn!r} at {self.bsf_host}:{self.bsf_port})"

    async def fetch(self, btid: str, naf_id: bytes, gba_u: bool = False) -> NafKey:
        """Ks_(ext|int)_NAF for ``btid`` and ``naf_id``; raises :class:`ZnError` (with the
        BSF's status and reason, or status 0 when the BSF cannot be reached)."""
        if self._closed:
            raise ZnError(0, "the Zn client is closed")
        target = ZnRequest(btid, bytes(naf_id), gba_u).target()
        async with self._slots:
            status, body = await self._exchange(target)
        if status != 200:
            raise ZnError(status, error_reason(body))
        key = NafKey.from_json(body)
        if key.btid != btid:
            raise ZnError(0, "the BSF answered for another B-TID")
        return key

    async def _exchange(self, target: str) -> tuple[int, bytes]:
        # A kept connection may have been closed by the BSF meanwhile: retry once on a
        # fresh one (the request is a GET, safe to repeat).
        for attempt in (0, 1):
            channel = self._idle.pop() if self._idle and attempt == 0 else None
            fresh = channel is None
            if channel is None:
                channel = await self._open()
            try:
                status, body = await channel.get(target, self.bsf_fqdn, self.timeout)
            except (ConnectionError, OSError) as exc:
                await _close(channel)
                if fresh:
                    raise ZnError(0, f"the BSF connection failed: {exc}") from None
                continue
            except TimeoutError:
                await _close(channel)
                raise ZnError(0, "the BSF did not answer in time") from None
            except ZnError:
                await _close(channel)
                raise
            if channel.reusable and not self._closed:
                self._idle.append(channel)
            else:
                await _close(channel)
            return status, body
        raise ZnError(0, "the BSF connection failed")  # pragma: no cover

    async def _open(self) -> _Channel:
        try:
            conn = await connect(
                self.bsf_host,
                self.bsf_port,
                self._profile,
                server_name=self.bsf_fqdn,
                timeout=self.timeout,
            )
        except HandshakeError as exc:
            raise ZnError(0, f"cannot establish Zn TLS with {self.bsf_fqdn}: {exc}") from None
        return _Channel(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for channel in idle:
            await _close(channel)

    async def __aenter__(self) -> ZnClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _close(channel: _Channel) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(channel.conn.close(), 2.0)
