"""Helpers for tests that run programs we did not write (openssl, gnutls, stunnel).

Rules these helpers enforce:

* A missing program is a test **failure** with a clear message, never a skip: ``.ci/run``
  (``scripts/test``) installs the Debian packages, so a missing binary means a broken setup.
* Nothing waits without a bound: every read, wait and exit has a timeout, and a process
  that outlives its test is killed (in ``finally``, and again at interpreter exit).
* Only loopback: ports are picked by binding ``127.0.0.1:0``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from m2msec.store.base import PskEntry
from m2msec.store.sqlite import SqlitePskStore
from m2msec.tls.aio import TLSServer

HOST = "127.0.0.1"

#: The TR-0038 7.1.2 example row: KpsaID, Kpsa (8 octets, weak on purpose), bound AE-ID.
TR0038_KPSA_ID = "AE123456789012-Light@in.provider.com"
TR0038_KPSA_HEX = "1a2b3c4d5e6f7a8b"
TR0038_AE_ID = "Clight-AE1"
#: A second row with a longer key: stunnel refuses keys under 16 octets and reads them as
#: the text after the colon in its PSKsecrets file, so this key is printable ASCII.
STRONG_KPSA_ID = "AE123456789012-Lamp@in.provider.com"
STRONG_KPSA_TEXT = "oneM2M-Kpsa-stunnel-0123456789"
STRONG_KPSA_HEX = STRONG_KPSA_TEXT.encode().hex()
STRONG_AE_ID = "Clight-AE2"

SERVER_ID = "/mn-cse-123456"
SNI = "mn-cse-123456.in.provider.com"
EXPORT_LABEL = "EXPORTER-oneM2M-Connection"
EXPORT_LEN = 48

#: program -> Debian package that provides it (what scripts/test installs).
PACKAGES = {
    "openssl": "openssl",
    "gnutls-cli": "gnutls-bin",
    "gnutls-serv": "gnutls-bin",
    "stunnel": "stunnel4",
    "stunnel4": "stunnel4",
    "coap-client-openssl": "libcoap3-bin",
    "coap-client-gnutls": "libcoap3-bin",
    "coap-server-openssl": "libcoap3-bin",
    "coap-server-gnutls": "libcoap3-bin",
}

DEFAULT_TIMEOUT = 10.0

_live: set[subprocess.Popen[bytes] | asyncio.subprocess.Process] = set()


def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(ProcessLookupError, OSError, RuntimeError):
            if proc.returncode is None:
                proc.kill()


atexit.register(_kill_leftovers)


def require(program: str) -> str:
    """The path of ``program``; fails the test (does not skip) when it is missing."""
    path = shutil.which(program)
    if path is None:
        package = PACKAGES.get(program, "?")
        pytest.fail(
            f"interop program {program!r} is not installed (Debian package {package!r}); "
            "scripts/test (.ci/run) installs it. Interop tests fail rather than skip.",
            pytrace=False,
        )
    return path


def psk_s_client(
    port: int,
    *extra: str,
    identity: str = TR0038_KPSA_ID,
    key_hex: str = TR0038_KPSA_HEX,
    host: str = HOST,
) -> list[str]:
    """``openssl s_client`` offering one PSK (TR-0038's row by default) to ``host:port``;
    ``extra`` adds protocol, cipher and session options."""
    return [
        require("openssl"), "s_client", "-connect", f"{host}:{port}",
        "-psk_identity", identity, "-psk", key_hex, *extra,
    ]  # fmt: skip


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def free_udp_port() -> int:
    """A UDP port that was free on 127.0.0.1 a moment ago (DTLS, CoAP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def tr0038_store(path: Path) -> SqlitePskStore:
    """A fresh SQLite psk-lookup-table holding the TR-0038 row and a 16-octet row."""
    store = SqlitePskStore(path)
    store.add_many(
        [
            PskEntry(TR0038_KPSA_ID, bytes.fromhex(TR0038_KPSA_HEX), TR0038_AE_ID),
            PskEntry(STRONG_KPSA_ID, bytes.fromhex(STRONG_KPSA_HEX), STRONG_AE_ID),
        ]
    )
    return store


@dataclass(frozen=True)
class Completed:
    argv: Sequence[str]
    returncode: int
    output: str  # stdout and stderr, interleaved

    def describe(self) -> str:
        return f"$ {' '.join(self.argv)}\n(exit {self.returncode})\n{self.output}"


class Program:
    """A running external program: output collected in the background, input on demand.

    Use through :func:`spawn`, which kills it on the way out whatever happens.
    """

    def __init__(self, argv: Sequence[str], proc: asyncio.subprocess.Process) -> None:
        self.argv = list(argv)
        self.proc = proc
        self._out = bytearray()
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self._out += chunk
            self._changed.set()
        self._changed.set()

    @property
    def output(self) -> str:
        return self._out.decode("utf-8", "replace")

    @property
    def running(self) -> bool:
        return self.proc.returncode is None and not self._reader.done()

    def describe(self) -> str:
        return f"$ {' '.join(self.argv)}\n(exit {self.proc.returncode})\n{self.output}"

    async def expect(self, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> re.Match[str]:
        """Wait until the output matches ``pattern`` (a regex); fail with the output if not.

        Output arrives in arbitrary chunks: end a pattern with ``\\n`` when it captures
        something, or it may match half a line.
        """
        rx = re.compile(pattern, re.MULTILINE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            m = rx.search(self.output)
            if m:
                return m
            if self._reader.done():
                pytest.fail(f"{self.argv[0]} ended before printing /{pattern}/:\n{self.describe()}")
            self._changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                pytest.fail(f"no /{pattern}/ from {self.argv[0]} in {timeout}s:\n{self.describe()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    async def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for exit (and the rest of the output); fail if it does not come."""
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
            await asyncio.wait_for(self._reader, timeout)
        except TimeoutError:
            await self.stop()
            pytest.fail(f"{self.argv[0]} did not exit within {timeout}s:\n{self.describe()}")
        return rc

    async def stop(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the process."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await asyncio.wait_for(self.proc.wait(), grace)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._reader, grace)
        self.close_stdin()
        _live.discard(self.proc)


@contextlib.asynccontextmanager
async def spawn(argv: Sequence[str], *, line_buffered: bool = False) -> AsyncIterator[Program]:
    """Start ``argv`` (stdin a pipe, stderr merged into stdout) and stop it on exit.

    ``line_buffered`` runs it under ``stdbuf -oL`` for programs that buffer stdout on a
    pipe (gnutls-serv), so their output can be awaited while they run.
    """
    require(argv[0])
    full = list(argv)
    if line_buffered and shutil.which("stdbuf"):
        full = ["stdbuf", "-oL", *full]
    proc = await asyncio.create_subprocess_exec(
        *full,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "LC_ALL": "C"},
    )
    _live.add(proc)
    program = Program(argv, proc)
    try:
        yield program
    finally:
        await program.stop()


async def run(
    argv: Sequence[str], *, stdin: bytes = b"", timeout: float = DEFAULT_TIMEOUT
) -> Completed:
    """Run ``argv`` to completion with ``stdin``; fail the test if it exceeds ``timeout``."""
    async with spawn(argv) as program:
        if stdin:
            program.write(stdin)
        program.close_stdin()
        rc = await program.wait(timeout)
        return Completed(argv, rc, program.output)


async def wait_listening(port: int, program: Program | None = None, timeout: float = 5.0) -> None:
    """Poll until something accepts TCP connections on 127.0.0.1:``port``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
        except (OSError, TimeoutError):
            if program is not None and not program.running:
                pytest.fail(f"{program.argv[0]} exited before listening:\n{program.describe()}")
            if loop.time() > deadline:
                detail = program.describe() if program else ""
                pytest.fail(f"nothing listening on {HOST}:{port} after {timeout}s\n{detail}")
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def wait_until(
    predicate: Callable[[], bool], what: Callable[[], str] | str, timeout: float = 10.0
) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` (text, or a callable giving it)
    after ``timeout`` seconds, so that no wait in a test is unbounded or silent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"after {timeout}s: {what() if callable(what) else what}")
        await asyncio.sleep(0.02)


@dataclass
class ServerUnderTest:
    """One of our TLS servers on loopback and the refusal reasons its on_failure reported."""

    server: TLSServer
    refusals: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    async def wait_refusals(self, n: int, timeout: float = 10.0) -> None:
        await wait_until(
            lambda: len(self.refusals) >= n,
            lambda: f"expected {n} refusals, the server reported {self.refusals}",
            timeout,
        )


def keying_material(output: str) -> str:
    """The lower-case hex of the last 'Keying material:'/'Key material:' line printed."""
    found = re.findall(r"Key(?:ing)? material:\s*([0-9A-Fa-f]+)", output)
    if not found:
        pytest.fail(f"no keying material in the output:\n{output}")
    return found[-1].lower()
