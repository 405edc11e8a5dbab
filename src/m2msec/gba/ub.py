"""Entity A's Ub client: GBA bootstrapping over HTTP Digest AKA (TS 33.220 4.5.2, TS 24.109).

:func:`bootstrap` runs the exchange of TS 24.109 clause 5 against the BSF, over plain
TCP (HTTP/1.1 on the one client; the Ub request-URI is the BSF URL's path, ``/`` by default)::

    GET /  Authorization: Digest username="<IMPI>", realm="<BSF host>", nonce="",
                                 uri="/", response=""
    <- 401 WWW-Authenticate: Digest realm=..., nonce=base64(RAND||AUTN||data),
                                    algorithm=AKAv1-MD5, qop="auth-int"
       the USIM checks AUTN and computes RES, CK, IK
    GET /  Authorization: Digest ..., qop=auth-int, nc=00000001, cnonce=...,
                                 response=<RFC 2617 digest with password RES>
    <- 200 Authentication-Info: rspauth=...   (checked: the BSF knew XRES)
       <BootstrappingInfo xmlns="uri:3gpp-gba"><btid>..</btid>
                          <lifetime>YYYY-MM-DDThh:mm:ssZ</lifetime></BootstrappingInfo>

The document and its xs:dateTime are read by :mod:`m2msec.gba.wire`, the module the BSF
writes them with.

Ks = CK || IK (TS 33.220 4.5.2) stays with the caller in :class:`Bootstrap`, with the
B-TID and the key lifetime from the BSF.

Failures, each a :class:`UbError` with a clear reason: the BSF refuses (403 unknown IMPI,
wrong RES...), the challenge is malformed, the network fails authentication (MAC-A does
not verify: the client tells the BSF with an empty-password response and no ``auts``,
mirroring RFC 3310's empty-password convention, then gives up), the B-TID does not carry
our RAND, or ``rspauth`` does not verify. A synchronisation failure (SQN out of range)
sends ``auts`` with an empty-password response (RFC 3310 3.4) and answers the fresh
challenge the BSF then sends, once; a second synchronisation failure gives up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Final, TypeVar
from urllib.parse import urlsplit

from m2msec.bindings.http_client import ResponseTooLarge
from m2msec.crypto.gba import ks_ext_naf, ks_from, ks_int_naf
from m2msec.errors import M2MSecError
from m2msec.gba.aka import AkaError, MacFailure, SyncFailure, Usim
from m2msec.gba.digest import (
    AKAV1_MD5,
    Authorization,
    Challenge,
    DigestError,
    parse_authentication_info,
    parse_challenge,
    response_matches,
    split_nonce,
)
from m2msec.gba.wire import (
    BSF_MEDIA_TYPE,
    MAX_BOOTSTRAPPING_INFO_OCTETS,
    WireError,
    parse_bootstrapping_info,
)
from m2msec.service.client import HttpClient
from m2msec.service.limits import HttpLimits
from m2msec.service.streams import PlainStream, Stream

__all__ = ["USER_AGENT", "Bootstrap", "UbError", "bootstrap"]

_H = TypeVar("_H")

#: TS 24.109 5.2.1: the product token "3gpp-gba" in User-Agent announces GBA support.
USER_AGENT: Final = "m2msec 3gpp-gba"
MAX_RESPONSE_OCTETS: Final = MAX_BOOTSTRAPPING_INFO_OCTETS


class UbError(M2MSecError):
    """Bootstrapping failed; ``status`` is the BSF's HTTP status when it answered one."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """The outcome of bootstrapping (TS 33.220 4.5.2): B-TID, RAND, Ks and its lifetime."""

    btid: str
    rand: bytes
    ks: bytes = field(repr=False)
    impi: str
    expires: datetime

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires

    def ks_ext_naf(self, naf_id: bytes) -> bytes:
        """Ks_ext_NAF for ``naf_id`` (GBA_ME's Ks_NAF)."""
        return ks_ext_naf(self.ks, self.rand, self.impi, naf_id)

    def ks_int_naf(self, naf_id: bytes) -> bytes:
        """Ks_int_NAF for ``naf_id`` (GBA_U)."""
        return ks_int_naf(self.ks, self.rand, self.impi, naf_id)


# ----------------------------------------------------------------------------- HTTP


@dataclass(slots=True)
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        if len(values) > 1:
            raise UbError(f"the BSF sent {name} more than once", self.status)
        return values[0] if values else None


class _Http:
    """The Ub HTTP/1.1 connection (the service layer's client) that reconnects when the
    server closes."""

    def __init__(self, host: str, port: int, host_header: str, timeout: float) -> None:
        self.host = host
        self.port = port
        self.host_header = host_header
        self.timeout = timeout
        self._client = HttpClient(
            connect=self._connect, limits=HttpLimits(max_body=MAX_RESPONSE_OCTETS)
        )

    async def _connect(self) -> Stream:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise UbError(f"cannot reach the BSF at {self.host}:{self.port}: {exc}") from None
        return PlainStream(reader, writer)

    async def request(self, target: str, authorization: str) -> _Answer:
        headers = [
            ("Host", self.host_header),
            ("User-Agent", USER_AGENT),
            ("Authorization", authorization),
            ("Accept", f"{BSF_MEDIA_TYPE}, application/xml"),
        ]
        try:
            answer = await asyncio.wait_for(
                self._client.request("GET", target, headers), self.timeout
            )
        except TimeoutError:
            await self.close()
            raise UbError("the BSF did not answer in time") from None
        except ResponseTooLarge:
            raise UbError("the BSF's answer is too large") from None
        except OSError as exc:  # includes ConnectionError
            await self.close()
            raise UbError(f"Ub connection to the BSF failed: {exc}") from None
        headers_in = [(k.lower(), v) for k, v in answer.headers]
        return _Answer(answer.status, headers_in, answer.body)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.aclose(), 2.0)


# ----------------------------------------------------------------------------- bootstrap


def _refusal(answer: _Answer, what: str) -> UbError:
    text = answer.body[:200].decode("utf-8", "replace").strip()
    detail = f": {text}" if text else ""
    return UbError(f"{what}: the BSF answered {answer.status}{detail}", answer.status)


def _parsed(answer: _Answer, name: str, parse: Callable[[str], _H], what: str) -> _H:
    """The Digest header ``name`` of ``answer``, parsed; :class:`UbError` if absent or bad."""
    value = answer.header(name)
    if value is None:
        raise UbError(f"the BSF's {answer.status} carries no {what}", answer.status)
    try:
        return parse(value)
    except DigestError as exc:
        raise UbError(f"malformed {what} from the BSF: {exc}", answer.status) from None


def _challenge(answer: _Answer) -> Challenge:
    if answer.status != 401:
        raise _refusal(answer, "bootstrapping refused")
    challenge = _parsed(answer, "www-authenticate", parse_challenge, "WWW-Authenticate challenge")
    if challenge.algorithm != AKAV1_MD5:
        raise UbError(f"the BSF asks for algorithm {challenge.algorithm}, not AKAv1-MD5", 401)
    return challenge


def _qop(challenge: Challenge) -> str | None:
    if "auth-int" in challenge.qop:
        return "auth-int"
    if "auth" in challenge.qop:
        return "auth"
    if challenge.qop:
        raise UbError(f"the BSF offers no usable qop ({', '.join(challenge.qop)})", 401)
    return None


def _answer_header(
    challenge: Challenge, impi: str, uri: str, password: bytes, *, auts: bytes | None = None
) -> Authorization:
    qop = _qop(challenge)
    auth = Authorization(
        username=impi,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response="",
        algorithm=AKAV1_MD5,
        qop=qop,
        nc="00000001" if qop else None,
        cnonce=os.urandom(12).hex() if qop else None,
        opaque=challenge.opaque,
        auts=None if auts is None else base64.b64encode(auts).decode("ascii"),
    )
    return replace(auth, response=auth.digest(password, "GET"))


async def bootstrap(bsf_url: str, usim: Usim, impi: str, *, timeout: float = 10.0) -> Bootstrap:
    """Bootstrap with the BSF at ``bsf_url`` (``http://HOST:PORT[/path]``) as ``impi``.

    Raises :class:`UbError` (module docstring); the USIM's SQN state advances only when it
    accepts a challenge.
    """
    parts = urlsplit(bsf_url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise UbError(f"the BSF URL must be http://HOST:PORT[/path], not {bsf_url!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise UbError(f"the BSF URL {bsf_url!r} has an invalid port") from None
    uri = parts.path or "/"
    host = parts.hostname
    host_header = parts.netloc.rpartition("@")[2]
    http = _Http(host, port, host_header, timeout)
    try:
        return await _run(http, usim, impi, uri, realm=host)
    finally:
        await http.close()


async def _run(http: _Http, usim: Usim, impi: str, uri: str, *, realm: str) -> Bootstrap:
    first = Authorization(
        username=impi, realm=realm, nonce="", uri=uri, response="", algorithm=None
    )
    try:
        header = first.header_value()
    except DigestError as exc:
        raise UbError(f"cannot send IMPI {impi[:64]!r}: {exc}") from None
    answer = await http.request(uri, header)
    resynced = False
    while True:
        challenge = _challenge(answer)
        try:
            rand, autn, _ = split_nonce(challenge.nonce)
        except DigestError as exc:
            raise UbError(f"the BSF's nonce is not an AKA nonce: {exc}", 401) from None
        try:
            result = usim.authenticate(rand, autn)
        except MacFailure:
            notify = _answer_header(challenge, impi, uri, b"")
            with contextlib.suppress(UbError):
                await http.request(uri, notify.header_value())
            raise UbError(
                "network authentication failed: AUTN's MAC-A does not verify (this BSF does "
                "not hold our subscriber key)"
            ) from None
        except SyncFailure as exc:
            if resynced:
                raise UbError(
                    "synchronisation failure again after resynchronising: giving up"
                ) from None
            resynced = True
            auth = _answer_header(challenge, impi, uri, b"", auts=exc.auts)
            answer = await http.request(uri, auth.header_value())
            continue
        except AkaError as exc:
            raise UbError(f"the USIM refused the challenge: {exc}") from None
        auth = _answer_header(challenge, impi, uri, result.res)
        answer = await http.request(uri, auth.header_value())
        if answer.status != 200:
            raise _refusal(answer, "authentication failed")
        _check_rspauth(answer, auth, result.res)
        try:
            btid, lifetime = parse_bootstrapping_info(answer.body)
        except WireError as exc:
            raise UbError(str(exc)) from None
        expected = base64.b64encode(rand).decode("ascii") + "@"
        if not btid.startswith(expected):
            raise UbError("the B-TID from the BSF does not carry our RAND (TS 33.220 4.5.2)")
        return Bootstrap(btid, rand, ks_from(result.ck, result.ik), impi, lifetime)


def _check_rspauth(answer: _Answer, auth: Authorization, res: bytes) -> None:
    info = _parsed(
        answer, "authentication-info", parse_authentication_info, "Authentication-Info (rspauth)"
    )
    if not response_matches(auth.rspauth(res, answer.body), info.rspauth):
        raise UbError("rspauth from the BSF does not verify: the BSF did not know XRES", 200)
