"""The gateway's HTTP/1.1 client of the backend CSE (m2msec.servers.backend).

The peer is a real TCP server on 127.0.0.1 (asyncio + h11 to read requests) that answers
with raw octets chosen per test, so keep-alive, ``Connection: close``, chunked answers,
closes before the answer and silence can all be produced on purpose. It stands in for the
CSE (ACME is exercised through the gateway in test_gateway.py and the end-to-end tests,
and always answers ``Connection: close``). The last test runs the gateway itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.bindings.http_client import ClosedBeforeAnswer
from m2msec.errors import ConfigurationError
from m2msec.servers.backend import (
    BackendPool,
    BackendRequestError,
    BackendTimeout,
    BackendTooLarge,
    BackendUnreachable,
)
from m2msec.service.client import HttpClient
from m2msec.service.streams import PlainStream
from m2msec.store.base import PskEntry
from m2msec.store.sqlite import SqlitePskStore
from tests.helpers import read_h11_request
from tests.test_gateway import AE1, gw_config, light, running


@dataclass
class Seen:
    conn: int  # connection number, from 0
    index: int  # request number on that connection, from 0
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


def answer(
    body: bytes = b"{}", *, close: bool = False, extra: bytes = b"", status: bytes = b"200 OK"
) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nX-M2M-RSC: 2000\r\nContent-Length: %d\r\n" % len(body)
    if close:
        head += b"Connection: close\r\n"
    return head + extra + b"\r\n" + body


# What the server does with a request: octets to write (then keep reading), or CLOSE
# (close without answering), or HANG (never answer); ``close_after`` closes after writing.
CLOSE = "close"
HANG = "hang"
Action = bytes | str | tuple[bytes, str]
Behaviour = Callable[[Seen], Action]


@dataclass
class Backend:
    behaviour: Behaviour = lambda seen: answer()
    ssl_context: ssl.SSLContext | None = None
    delay: float = 0.0  # seconds before each answer
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    eofs: int = 0  # connections the client closed
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        index = 0
        try:
            while True:
                message = await read_h11_request(conn, reader)
                if message is None:
                    self.eofs += 1
                    return
                head, body = message
                seen = Seen(number, index, head.method.decode(), head.target.decode(),
                            list(head.headers.raw_items()), body)
                self.seen.append(seen)
                index += 1
                action = self.behaviour(seen)
                if action == CLOSE:
                    return
                if action == HANG:
                    await self.stop.wait()
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                after = None
                if isinstance(action, tuple):
                    action, after = action
                assert isinstance(action, bytes)
                writer.write(action)
                await writer.drain()
                if after == CLOSE:
                    return
                conn = h11.Connection(h11.SERVER)  # raw answers: h11 reads requests only
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            self.open_now -= 1
            writer.close()
            self.writers.discard(writer)
            self.tasks.discard(task)

    async def __aenter__(self) -> Backend:
        self.server = await asyncio.start_server(
            self.handle, "127.0.0.1", 0, ssl=self.ssl_context
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        self.stop.set()
        for writer in list(self.writers):
            writer.close()  # the handlers then read EOF and end by themselves
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)


@contextlib.asynccontextmanager
async def pool_for(backend: Backend, **kw: Any) -> AsyncIterator[BackendPool]:
    pool = BackendPool(backend.url, **kw)
    try:
        yield pool
    finally:
        await pool.aclose()


async def settle(condition: Callable[[], bool], limit: float = 2.0) -> None:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------- keep-alive


async def test_keep_alive_reuses_one_connection() -> None:
    async with Backend() as backend, pool_for(backend) as pool:
        for i in range(5):
            r = await pool.request("GET", f"/~/cse/{i}", [("X-M2M-Origin", "Cae")])
            assert (r.status, r.body) == (200, b"{}")
        assert backend.connections == 1 and pool.connections_opened == 1
        assert [s.index for s in backend.seen] == [0, 1, 2, 3, 4]
        assert pool.idle_connections == 1 and pool.retries == 0


async def test_connection_close_answers_get_one_request_connections() -> None:
    async with Backend(lambda s: (answer(close=True), CLOSE)) as backend, pool_for(
        backend
    ) as pool:
        for _ in range(4):
            r = await pool.request("GET", "/~/cse")
            assert r.status == 200
            assert (b"Connection", b"close") in r.headers
            assert pool.idle_connections == 0
        assert backend.connections == 4 and pool.retries == 0
        assert pool.open_connections == 0
        # The answer arrived before the close: no request was seen twice.
        assert [s.index for s in backend.seen] == [0, 0, 0, 0]


async def test_connection_close_announced_then_socket_kept_open() -> None:
    # Connection: close but the backend does not close: the client closes it itself.
    async with Backend(lambda s: answer(close=True)) as backend, pool_for(backend) as pool:
        await pool.request("GET", "/a")
        await pool.request("GET", "/b")
        assert backend.connections == 2
        await settle(lambda: backend.eofs == 2)
        assert backend.eofs == 2 and pool.open_connections == 0


async def test_headers_go_as_given_plus_host_and_length() -> None:
    async with Backend(lambda s: answer(extra=b"X-Backend-Case: Kept\r\n")) as backend:
        port = backend.url.rsplit(":", 1)[1]
        async with pool_for(backend) as pool:
            r = await pool.request(
                "POST", "/~/cse?rcn=1",
                [("X-M2M-Origin", "Cae"), ("Content-Type", "application/json;ty=4"),
                 ("X-Latin", "caf\xe9")],
                b'{"m2m:cin":{}}',
            )
            await pool.request("GET", "/~/cse")
            await pool.request("PUT", "/~/cse", [], b"")
    post, get, put = backend.seen
    assert post.method == "POST" and post.target == "/~/cse?rcn=1"
    assert post.headers == [
        (b"Host", f"127.0.0.1:{port}".encode()),
        (b"X-M2M-Origin", b"Cae"),
        (b"Content-Type", b"application/json;ty=4"),
        (b"X-Latin", b"caf\xe9"),
        (b"Content-Length", b"14"),
    ]
    assert post.body == b'{"m2m:cin":{}}'
    assert get.headers == [(b"Host", f"127.0.0.1:{port}".encode())]
    assert (b"Content-Length", b"0") in put.headers
    assert (b"X-Backend-Case", b"Kept") in r.headers  # original case, as received


async def test_url_prefix_is_kept() -> None:
    async with Backend() as backend:
        pool = BackendPool(backend.url + "/cse-base/")
        try:
            await pool.request("GET", "/~/x")
        finally:
            await pool.aclose()
    assert backend.seen[0].target == "/cse-base/~/x"


# ----------------------------------------------------------------------------- framing


async def test_chunked_answer_is_joined() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
    async with Backend(lambda s: chunked) as backend, pool_for(backend) as pool:
        r = await pool.request("GET", "/")
        assert r.body == b"hello world"
        r = await pool.request("GET", "/")  # and the connection stays usable
        assert r.body == b"hello world"
        assert backend.connections == 1


async def test_large_answers_are_read_whole() -> None:
    # Far above the client's read buffer: reading pauses and resumes on the way.
    big = bytes(range(256)) * 8192  # 2 MiB
    chunk = b"%x\r\n" % len(big) + big + b"\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n"
    backend = Backend(lambda s: answer(big) if s.target == "/length" else chunked)
    async with backend, pool_for(backend) as pool:
        for target in ("/length", "/chunked", "/length"):
            r = await pool.request("GET", target)
            assert r.body == big
        assert backend.connections == 1


async def test_http10_answer_read_until_close() -> None:
    async with Backend(lambda s: (b"HTTP/1.0 200 OK\r\nX-M2M-RSC: 2000\r\n\r\nuntil-close",
                                  CLOSE)) as backend, pool_for(backend) as pool:
        r = await pool.request("GET", "/")
        assert (r.status, r.body, r.http_version) == (200, b"until-close", b"1.0")
        assert pool.idle_connections == 0


async def test_interim_100_is_skipped() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    async with Backend(lambda s: interim + answer(b"x")) as backend, pool_for(backend) as pool:
        assert (await pool.request("GET", "/")).body == b"x"


async def test_body_limit() -> None:
    def big(seen: Seen) -> Action:
        if seen.target == "/announced":
            return answer(b"x" * 100)
        if seen.target == "/chunked":  # 3 x 32 octets, no length announced
            chunk = b"20\r\n" + b"y" * 32 + b"\r\n"
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            return head + chunk * 3 + b"0\r\n\r\n"
        return answer(b"x" * 64)

    async with Backend(big) as backend, pool_for(backend, max_body=64) as pool:
        with pytest.raises(BackendTooLarge):
            await pool.request("GET", "/announced")
        with pytest.raises(BackendTooLarge):
            await pool.request("GET", "/chunked")
        assert pool.open_connections == 0  # those connections were closed
        r = await pool.request("GET", "/exact")
        assert len(r.body) == 64


async def test_malformed_answer_is_unreachable() -> None:
    async with Backend(lambda s: b"garbage\r\n\r\n") as backend, pool_for(backend) as pool:
        with pytest.raises(BackendUnreachable, match="malformed"):
            await pool.request("GET", "/")
        assert pool.open_connections == 0


# ----------------------------------------------------------------------------- failures


async def test_refused_connection() -> None:
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening
        pool = BackendPool(f"http://127.0.0.1:{s.getsockname()[1]}")
        with pytest.raises(BackendUnreachable, match="refused"):
            await pool.request("GET", "/")
        assert pool.open_connections == 0
        await pool.aclose()


async def test_timeout_closes_the_connection() -> None:
    backend = Backend(lambda s: HANG if s.target == "/slow" else answer())
    async with backend, pool_for(backend, timeout=0.3) as pool:
            start = time.monotonic()
            with pytest.raises(BackendTimeout):
                await pool.request("GET", "/slow")
            assert 0.25 < time.monotonic() - start < 2.0
            assert pool.open_connections == 0
            # A late answer must never be taken for the next request's: new connection.
            r = await pool.request("GET", "/fast")
            assert r.status == 200 and backend.connections == 2


async def test_stale_pooled_connection_retried_once_for_idempotent_methods() -> None:
    # The second request of every connection is met with a close and no answer: the
    # race of a backend closing an idle keep-alive connection.
    def flaky(seen: Seen) -> Action:
        return CLOSE if seen.index == 1 else answer()

    async with Backend(flaky) as backend, pool_for(backend) as pool:
        await pool.request("GET", "/first")
        r = await pool.request("GET", "/second")  # stale, retried on a fresh connection
        assert r.status == 200 and pool.retries == 1
        assert [(s.conn, s.index, s.target) for s in backend.seen] == [
            (0, 0, "/first"), (0, 1, "/second"), (1, 0, "/second")]
        r = await pool.request("DELETE", "/third")  # idempotent as well
        assert r.status == 200 and pool.retries == 2

        # POST (CREATE) may have been acted on: not repeated.
        seen_before = len(backend.seen)
        with pytest.raises(BackendUnreachable, match="not idempotent"):
            await pool.request("POST", "/fourth", [], b"{}")
        assert len(backend.seen) == seen_before + 1 and pool.retries == 2
        assert backend.seen[-1].target == "/fourth"


async def test_the_one_client_repeats_only_idempotent_requests_on_a_stale_connection() -> None:
    # The pool's retry is the one client's (m2msec.service.client), usable without a pool.
    def flaky(seen: Seen) -> Action:
        return CLOSE if seen.index == 1 else answer()

    async with Backend(flaky) as backend:
        host, port = "127.0.0.1", int(backend.url.rsplit(":", 1)[1])

        async def connect() -> PlainStream:
            return PlainStream(*await asyncio.open_connection(host, port))

        head = [("Host", f"{host}:{port}")]
        client = HttpClient(connect=connect, retry_idempotent=True)
        try:
            await client.request("GET", "/first", head)
            r = await client.request("GET", "/second", head)
            assert r.status == 200 and client.retries == 1
            with pytest.raises(ClosedBeforeAnswer) as closed:  # a CREATE may have been acted on
                await client.request("POST", "/third", [*head, ("Content-Length", "0")])
            assert closed.value.reused and client.retries == 1
        finally:
            await client.aclose()
        plain = HttpClient(connect=connect)  # retry_idempotent off: the caller decides
        try:
            await plain.request("GET", "/fourth", head)
            with pytest.raises(ClosedBeforeAnswer):
                await plain.request("GET", "/fifth", head)
        finally:
            await plain.aclose()
    assert [s.target for s in backend.seen] == [
        "/first", "/second", "/second", "/third", "/fourth", "/fifth"]


async def test_answer_head_over_the_cap_is_too_large() -> None:
    # The one client's head cap (64 KiB here): 5000 at the gateway, like a large body.
    huge = answer(extra=b"X-Big: " + b"b" * (70 * 1024) + b"\r\n")
    async with Backend(lambda s: huge) as backend, pool_for(backend) as pool:
        with pytest.raises(BackendTooLarge, match="head"):
            await pool.request("GET", "/")
        assert pool.open_connections == 0


async def test_no_retry_on_a_fresh_connection() -> None:
    async with Backend(lambda s: CLOSE) as backend, pool_for(backend) as pool:
        with pytest.raises(BackendUnreachable, match="closed"):
            await pool.request("GET", "/")
        assert len(backend.seen) == 1 and pool.retries == 0


async def test_no_retry_after_part_of_the_answer() -> None:
    def partial(seen: Seen) -> Action:
        return answer() if seen.index == 0 else (b"HTTP/1.1 200 OK\r\nContent-Len", CLOSE)

    async with Backend(partial) as backend, pool_for(backend) as pool:
        await pool.request("GET", "/")
        with pytest.raises(BackendUnreachable, match="complete answer"):
            await pool.request("GET", "/")
        assert len(backend.seen) == 2 and pool.retries == 0


async def test_idle_connection_closed_by_backend_is_dropped() -> None:
    async with Backend(lambda s: (answer(), CLOSE)) as backend, pool_for(backend) as pool:
        # Answers without Connection: close, then closes: pooled, then seen closing.
        await pool.request("GET", "/")
        await settle(lambda: pool.idle_connections == 0)
        assert pool.idle_connections == 0 and pool.open_connections == 0
        await pool.request("POST", "/", [], b"{}")  # a fresh connection, no retry needed
        assert pool.retries == 0 and backend.connections == 2


# ----------------------------------------------------------------------------- pool bounds


async def test_max_connections_bounds_concurrency() -> None:
    async with Backend(delay=0.05) as backend, pool_for(
        backend, max_connections=2, max_idle=1
    ) as pool:
        results = await asyncio.gather(*(pool.request("GET", f"/{i}") for i in range(6)))
        assert all(r.status == 200 for r in results)
        assert backend.most_open == 2 and backend.connections == 2  # waiters reused them
        assert pool.open_connections == 1 and pool.idle_connections == 1  # max_idle


async def test_waiting_for_a_connection_counts_in_the_timeout() -> None:
    backend = Backend(lambda s: HANG if s.target == "/hold" else answer())
    async with backend, pool_for(backend, max_connections=1, timeout=1.0) as pool:
            holder = asyncio.create_task(pool.request("GET", "/hold"))
            await settle(lambda: len(backend.seen) == 1)
            pool.timeout = 0.2  # read when a request starts: shorter for the next one
            start = time.monotonic()
            with pytest.raises(BackendTimeout):  # no free connection in time
                await pool.request("GET", "/waiting")
            assert time.monotonic() - start < 0.6 and not holder.done()
            with pytest.raises(BackendTimeout):
                await holder
            assert pool.open_connections == 0 and len(backend.seen) == 1
            r = await pool.request("GET", "/after")
            assert r.status == 200


async def test_pool_accounting_under_mixed_load() -> None:
    # Keep-alive and Connection: close answers, stale connections and timeouts, with many
    # more requests than connections: every slot must come back.
    def mixed(seen: Seen) -> Action:
        n = len(seen.target)
        if seen.target.endswith("/hang"):
            return HANG
        if seen.index == 3:
            return CLOSE  # a stale connection for the fourth request on it
        return (answer(close=True), CLOSE) if n % 3 == 0 else answer()

    async with Backend(mixed) as backend, pool_for(
        backend, max_connections=5, max_idle=3, timeout=1.5
    ) as pool:
        # Three requests hold a connection each until their timeout; the rest share two.
        targets = [f"/{'x' * (i % 7)}" + ("/hang" if i % 50 == 49 else "") for i in range(150)]
        results = await asyncio.gather(
            *(pool.request("GET", t) for t in targets), return_exceptions=True
        )
        hung = [r for t, r in zip(targets, results, strict=True) if t.endswith("/hang")]
        ok = [r for t, r in zip(targets, results, strict=True) if not t.endswith("/hang")]
        assert all(isinstance(r, BackendTimeout) for r in hung) and len(hung) == 3
        errors = [r for r in ok if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        assert all(not isinstance(r, BaseException) and r.status == 200 for r in ok)
        assert backend.most_open <= 5 and pool.retries > 0
        assert pool.open_connections == pool.idle_connections <= 3
        r = await pool.request("GET", "/xx")
        assert r.status == 200


async def test_max_idle_and_idle_timeout() -> None:
    async with Backend(delay=0.02) as backend, pool_for(
        backend, max_idle=2, idle_timeout=0.3
    ) as p:
        await asyncio.gather(*(p.request("GET", f"/{i}") for i in range(5)))
        assert backend.connections == 5 and p.idle_connections == 2
        assert p.open_connections == p.idle_connections
        await settle(lambda: p.idle_connections == 0, limit=3.0)
        assert p.idle_connections == 0 and p.open_connections == 0
        await settle(lambda: backend.eofs == backend.connections)
        assert backend.eofs == backend.connections  # all closed by the client


async def test_request_http_cannot_carry_is_refused_before_sending() -> None:
    async with Backend() as backend, pool_for(backend) as pool:
        with pytest.raises(BackendRequestError):
            await pool.request("GET", "/", [("X-M2M-Origin", "C\u2603")])  # not Latin-1
        with pytest.raises(BackendRequestError):
            await pool.request("GET", "/", [("X-Bad", "a\r\nInjected: 1")])
        assert backend.connections == 0 and pool.open_connections == 0


async def test_bad_url_and_closed_pool() -> None:
    with pytest.raises(ConfigurationError):
        BackendPool("ftp://127.0.0.1/")
    pool = BackendPool("http://127.0.0.1:9")
    await pool.aclose()
    with pytest.raises(BackendUnreachable, match="closed"):
        await pool.request("GET", "/")


# ----------------------------------------------------------------------------- https


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backend.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "backend.pem", tmp / "backend.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


async def test_https_backend(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with Backend(ssl_context=server_ctx) as backend:
        async with pool_for(backend, ssl_context=trusting) as pool:
            for _ in range(3):
                r = await pool.request("GET", "/~/cse")
                assert r.status == 200
            assert backend.connections == 1  # kept alive over TLS too
        # The default context (system trust store) does not know this certificate.
        async with pool_for(backend) as pool:
            with pytest.raises(BackendUnreachable, match="TLS"):
                await pool.request("GET", "/~/cse")


# ----------------------------------------------------------------------------- gateway


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlitePskStore]:
    s = SqlitePskStore(tmp_path / "psk.db")
    s.add_many([PskEntry(AE1[0], bytes.fromhex(AE1[1]), AE1[2])])
    yield s
    s.close()


async def test_gateway_forwards_over_kept_alive_connections_and_maps_timeout(
    store: SqlitePskStore,
) -> None:
    backend = Backend(lambda s: HANG if s.target.endswith("/slow") else answer())
    async with backend:
        config = gw_config(backend.url, backend_timeout=0.5)
        async with running(config, store) as gw, light(gw, AE1) as ae1:
            for _ in range(3):
                r = await ae1.request("GET", "/~/mn-cse-123456/x", origin="Clight-AE1")
                assert r.rsc == 2000
            assert backend.connections == 1
            r = await ae1.request("GET", "/~/mn-cse-123456/slow", origin="Clight-AE1")
            assert (r.status, r.rsc) == (504, 4008)
            assert "did not answer in time" in r.json()["m2m:dbg"]
            r = await ae1.request("GET", "/~/mn-cse-123456/x", origin="Clight-AE1")
            assert r.rsc == 2000  # and the gateway keeps serving
            assert gw.stats.backend_errors == 1
            assert gw.backend is not None and gw.backend.retries == 0


async def test_gateway_answers_5000_for_a_backend_head_over_the_cap(store: SqlitePskStore) -> None:
    huge = answer(extra=b"X-Big: " + b"b" * (70 * 1024) + b"\r\n")
    backend = Backend(lambda s: huge if s.target.endswith("/huge") else answer())
    async with backend:
        config = gw_config(backend.url)
        async with running(config, store) as gw, light(gw, AE1) as ae1:
            r = await ae1.request("GET", "/~/mn-cse-123456/huge", origin="Clight-AE1")
            assert (r.status, r.rsc) == (500, 5000)
            assert "more than the gateway relays" in r.json()["m2m:dbg"]
            r = await ae1.request("GET", "/~/mn-cse-123456/x", origin="Clight-AE1")
            assert r.rsc == 2000


# ----------------------------------------------------------------------------- uvloop


@pytest.mark.parametrize(
    "scenario",
    [
        test_keep_alive_reuses_one_connection,
        test_connection_close_answers_get_one_request_connections,
        test_chunked_answer_is_joined,
        test_large_answers_are_read_whole,
        test_body_limit,
        test_timeout_closes_the_connection,
        test_stale_pooled_connection_retried_once_for_idempotent_methods,
        test_idle_connection_closed_by_backend_is_dropped,
        test_max_connections_bounds_concurrency,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_under_uvloop(scenario: Callable[[], Any]) -> None:
    """`m2msec gateway` runs on uvloop when installed: the same behaviour there."""
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
