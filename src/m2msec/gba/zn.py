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

Times are UTC in oneM2M's basic ISO 8601 form. ``gbaU=1`` asks for Ks_int_NAF (the
client's identity had the "-uicc" prefix, docs/readings.md A-08); ``gbaU=0`` for Ks_ext_NAF.
Refusals carry ``{"error": "<reason>"}``: 400 malformed request, 403 the NAF FQDN in
``nafId`` is not the FQDN the NAF's certificate authenticates, the subscriber's GUSS does
not allow this NAF, or ``gbaU=1`` for a subscriber without a UICC; 404 unknown or expired
B-TID; 405 another method or path.

:class:`ZnClient` is the NAF side (keeps a few TLS connections alive and reuses them);
the BSF side is :mod:`m2msec.servers.bsf`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote, urlsplit

from m2msec import m2mtime
from m2msec.bindings.http_client import ResponseTooLarge
from m2msec.crypto.gba import KS_NAF_LENGTH, parse_naf_id
from m2msec.errors import HandshakeError, IdentifierError, M2MSecError
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.service.client import HttpClient
from m2msec.service.limits import HttpLimits
from m2msec.tls.aio import TLSConnection, connect
from m2msec.tls.profiles import TLSProfile

__all__ = [
    "ZN_PATH",
    "NafKey",
    "ZnClient",
    "ZnError",
    "ZnRequest",
    "error_body",
    "format_time",
    "parse_time",
]

log = logging.getLogger(__name__)

ZN_PATH: Final = "/zn/bootstrap/"
MAX_BTID_LENGTH: Final = 512
MAX_NAF_ID_OCTETS: Final = 260  # FQDN (253) || Ua protocol id (5)
MAX_ANSWER_OCTETS: Final = 64 * 1024


class ZnError(M2MSecError):
    """A Zn request was refused or failed. ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Zn {status}: {reason}" if status else f"Zn: {reason}")
        self.status = status
        self.reason = reason


def format_time(value: datetime) -> str:
    """``YYYYMMDDThhmmss[,ffffff]`` in UTC (TS-0004 6.3.3, :mod:`m2msec.m2mtime`)."""
    return m2mtime.format_time(value)


def parse_time(text: str) -> datetime:
    """A oneM2M timestamp as UTC; raises ``ValueError`` (a zone designator is refused)."""
    return m2mtime.parse_time(text)


@dataclass(frozen=True, slots=True)
class ZnRequest:
    """A NAF's request for the key of ``btid`` bound to ``naf_id``."""

    btid: str
    naf_id: bytes
    gba_u: bool = False

    @property
    def naf_fqdn(self) -> str:
        return parse_naf_id(self.naf_id)[0]

    def target(self) -> str:
        return (
            f"{ZN_PATH}{quote(self.btid, safe='')}"
            f"?nafId={self.naf_id.hex()}&gbaU={1 if self.gba_u else 0}"
        )

    @classmethod
    def from_target(cls, target: str) -> ZnRequest:
        """Parse a request-target; :class:`ZnError` 400 (or 405 for another path)."""
        parts = urlsplit(target)
        if not parts.path.startswith(ZN_PATH):
            raise ZnError(405, f"no Zn resource at {parts.path[:80]!r} (GET {ZN_PATH}<B-TID>)")
        raw = parts.path[len(ZN_PATH) :]
        if not raw or "/" in raw:
            raise ZnError(400, "the path must be /zn/bootstrap/<percent-encoded B-TID>")
        try:
            btid = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise ZnError(400, "the B-TID is not UTF-8") from None
        if not btid or len(btid) > MAX_BTID_LENGTH:
            raise ZnError(400, f"the B-TID must be 1 to {MAX_BTID_LENGTH} characters")
        try:
            query = parse_qs(parts.query, strict_parsing=True, max_num_fields=4)
        except ValueError:
            raise ZnError(400, "malformed query (nafId=<hex>&gbaU=0|1 expected)") from None
        unknown = set(query) - {"nafId", "gbaU"}
        if unknown:
            raise ZnError(400, f"unknown query parameter {sorted(unknown)[0][:40]!r}")
        if any(len(v) != 1 for v in query.values()):
            raise ZnError(400, "each query parameter may appear only once")
        if "nafId" not in query:
            raise ZnError(400, "nafId is missing")
        text = query["nafId"][0]
        if len(text) > 2 * MAX_NAF_ID_OCTETS:
            raise ZnError(400, "nafId is too long")
        try:
            naf_id = bytes.fromhex(text)
        except ValueError:
            raise ZnError(400, "nafId is not hexadecimal") from None
        try:
            parse_naf_id(naf_id)
        except IdentifierError as exc:
            raise ZnError(400, f"nafId: {exc}") from None
        flag = query.get("gbaU", ["0"])[0]
        if flag not in ("0", "1"):
            raise ZnError(400, "gbaU must be 0 or 1")
        return cls(btid, naf_id, flag == "1")


@dataclass(frozen=True, slots=True)
class NafKey:
    """What the BSF hands a NAF (TS 33.220 4.5.3): Ks_NAF (never in repr) and its context."""

    ks_naf: bytes = field(repr=False)
    expires: datetime
    impi: str
    btid: str
    uss: dict[str, Any] = field(default_factory=dict)
    gba_type: str = "GBA_ME"
    bootstrap_time: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "btid": self.btid,
            "impi": self.impi,
            "ksNAF": self.ks_naf.hex(),
            "expires": format_time(self.expires),
            "gbaType": self.gba_type,
            "uss": self.uss,
        }
        if self.bootstrap_time is not None:
            doc["bootstrapTime"] = format_time(self.bootstrap_time)
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: bytes) -> NafKey:
        """Parse a 200 answer; :class:`ZnError` (status 0) when malformed."""
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            ks = bytes.fromhex(_str(doc, "ksNAF"))
            if len(ks) != KS_NAF_LENGTH:
                raise ValueError(f"ksNAF must be {KS_NAF_LENGTH} octets")
            uss = doc.get("uss", {})
            if not isinstance(uss, dict):
                raise TypeError("uss must be a JSON object")
            gba_type = doc.get("gbaType", "GBA_ME")
            if gba_type not in ("GBA_ME", "GBA_U"):
                raise ValueError("gbaType must be GBA_ME or GBA_U")
            boot = doc.get("bootstrapTime")
            return cls(
                ks_naf=ks,
                expires=parse_time(_str(doc, "expires")),
                impi=_str(doc, "impi"),
                btid=_str(doc, "btid"),
                uss=uss,
                gba_type=gba_type,
                bootstrap_time=None if boot is None else parse_time(boot),
            )
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise ZnError(0, f"malformed answer from the BSF: {exc}") from None


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def error_body(reason: str) -> bytes:
    return json.dumps({"error": reason}).encode()


# ----------------------------------------------------------------------------- client


class _Channel:
    """One HTTP/1.1 keep-alive channel over a TLS connection to the BSF."""

    def __init__(self, conn: TLSConnection) -> None:
        self.conn = conn
        self.http = HttpClient(conn, limits=HttpLimits(max_body=MAX_ANSWER_OCTETS))

    async def get(self, target: str, host: str, timeout: float) -> tuple[int, bytes]:
        headers = [("Host", host), ("Accept", "application/json"), ("User-Agent", "m2msec")]
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

    ``credential`` is the NAF's certificate (its dNSName is the NAF FQDN the BSF will
    accept in NAF_Id: a CSE-ID certificate's public domain name or a service
    certificate), ``bsf_fqdn`` the FQDN the BSF's certificate must name (and the SNI).
    ``in_domain`` is only used to read our own certificate (default: ``bsf_fqdn``).
    Up to ``max_connections`` TLS connections are kept and reused.
    """

    def __init__(
        self,
        credential: CertificateCredential,
        bsf_host: str,
        bsf_port: int,
        bsf_fqdn: str,
        *,
        in_domain: str | None = None,
        timeout: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        initiator = CertificateInitiator.for_service(
            credential, bsf_fqdn, in_domain=in_domain or bsf_fqdn
        )
        self._profile: TLSProfile = initiator.profile()
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
            raise ZnError(status, _reason(body))
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


def _reason(body: bytes) -> str:
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])[:300]
    except (ValueError, UnicodeDecodeError):
        pass
    return body[:200].decode("utf-8", "replace") or "no reason given"
