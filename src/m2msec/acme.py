"""Run the ACME oneM2M CSE (``acmecse`` on PyPI) on loopback, for the demo and tests.

ACME is a real oneM2M CSE we did not write: the gateway forwards to it, so the demo
and the end-to-end tests exercise a genuine CSE rather than a mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from m2msec.errors import ConfigurationError

#: ACME prints this once every binding has registered its routes. A request that
#: arrives earlier can make ACME exit, so nobody asks anything before it appears.
STARTED_MARK = b"CSE started"
#: ACME logs this once its <remoteCSE> exists at the registrar and the registrar's local.
REGISTERED_MARK = b"Registered to registrar CSE"
ADMIN = "CAdmin"


@dataclass(frozen=True, slots=True)
class Registrar:
    """The registrar CSE an MN-CSE registers with (ACME's ``[cse.registrar]``, TS-0001
    10.1.1.2.1 CSE registration: a <remoteCSE> CREATE at the registrar).

    ``address`` is where ACME sends every request for the registrar, its registration
    included: in the demo an m2msec gateway's ``egress://`` listener (docs/gateway.md
    section 11). ``check_interval``: seconds between ACME's registration checks (its
    first runs at start)."""

    address: str
    cse_id: str  # SP-relative, "/id-in"
    resource_name: str  # the registrar's CSEBase name, "cse-in"
    check_interval: float = 5.0


def acme_ini(
    *,
    cse_type: str,
    cse_id: str,
    cse_name: str,
    port: int,
    allowed_csr: tuple[str, ...] = (),
    registrar: Registrar | None = None,
    log_level: str | None = None,
) -> str:
    """The smallest ``acme.ini`` for a headless, in-memory CSE on loopback; with
    ``registrar``, an MN-CSE that registers there (give ``cse_type="MN"``); with
    ``log_level``, ACME logs to ``logs/cse.log`` in its base directory (headless, it
    logs nothing to the console)."""
    text = (
        "[basic.config]\n"
        f"cseType={cse_type}\n"
        f"cseID={cse_id}\n"
        f"cseName={cse_name}\n"
        f"adminID={ADMIN}\n"
        "networkInterface=127.0.0.1\n"
        "cseHost=127.0.0.1\n"
        f"httpPort={port}\n"
        "databaseType=memory\n"
        "\n[textui]\nstartWithTUI=false\n"
        "\n[webui]\nenable=false\n"
    )
    if log_level is not None:
        text += f"\n[logging]\nenableFileLogging=true\nlevel={log_level}\n"
    if allowed_csr or registrar is not None:
        text += "\n[cse.registration]\n"
    if allowed_csr:
        # CSEs that may register here (CREATE <remoteCSE>), by SP-relative CSE-ID.
        text += f"allowedCSROriginators={','.join(allowed_csr)}\n"
    if registrar is not None:
        text += (
            f"checkInterval={registrar.check_interval:g}\n"
            "\n[cse.registrar]\n"
            f"address={registrar.address}\n"
            f"cseID={registrar.cse_id}\n"
            f"resourceName={registrar.resource_name}\n"
            f"INCSEcseID={registrar.cse_id}\n"
        )
    return text


def acme_command(directory: Path, port: int, *, remote_cse: bool = False) -> list[str]:
    """The command line; run it with cwd = ``directory`` holding ``acme.ini``.

    ACME ignores the directory part of --config and keeps its runtime data in the base
    directory, so both point at ``directory``. Without ``remote_cse`` ACME neither
    registers anywhere nor checks its registrees (``--no-remote-cse``).
    """
    return [
        sys.executable, "-m", "acmecse",
        "--config", "acme.ini",
        "--base-directory", str(directory),
        "--headless",
        "--db-type", "memory",
        "--http-port", str(port),
        "--network-interface", "127.0.0.1",
        "--remote-cse" if remote_cse else "--no-remote-cse",
        "--no-statistics",
    ]  # fmt: skip


async def plain_request(
    url: str,
    method: str,
    *,
    origin: str,
    ty: int | None = None,
    content: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One oneM2M request over plain loopback HTTP (TS-0004 6.4 headers), as a CSE's
    operator or the CSE behind a gateway's egress sends it: (X-M2M-RSC, JSON body)."""
    headers = {
        "X-M2M-Origin": origin,
        "X-M2M-RI": f"plain-{time.monotonic_ns()}",
        "X-M2M-RVI": "3",
        "Accept": "application/json",
    }
    body = None
    if content is not None:
        body = json.dumps(content).encode()
        headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        r = await client.request(method, url, headers=headers, content=body)
    try:
        data = r.json() if r.content else {}
    except ValueError:
        data = {}
    rsc = r.headers.get("x-m2m-rsc", "0")
    return int(rsc) if rsc.isdigit() else 0, data if isinstance(data, dict) else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class AcmeCSE:
    """One ACME CSE process with an in-memory database, bound to 127.0.0.1.

    ``cse_id`` is the bare CSE-ID (``mn-cse-123456``); the CSEBase is reachable at
    ``/~/<cse_id>/<cse_name>``. Without ``registrar`` ACME is started as an IN-CSE: it
    then needs no registrar, and the security gateway in front of it plays the node's
    role. With one it is an MN-CSE that registers there itself (:class:`Registrar`; the
    demo's step 5 points it at the home gateway's egress).
    """

    def __init__(
        self,
        workdir: Path,
        cse_id: str,
        cse_name: str,
        port: int | None = None,
        *,
        allowed_csr: tuple[str, ...] = (),
        registrar: Registrar | None = None,
    ) -> None:
        if importlib.util.find_spec("acmecse") is None:
            raise ConfigurationError(
                "the ACME CSE is not installed: pip install 'm2msec[demo]' (or acmecse)"
            )
        self.workdir = workdir
        self.cse_id = cse_id
        self.cse_name = cse_name
        self.port = port or free_port()
        self.allowed_csr = allowed_csr
        self.registrar = registrar
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_path(self) -> str:
        return f"/~/{self.cse_id}/{self.cse_name}"

    async def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start ACME and wait until its CSEBase answers; retry on a fresh port.

        ACME exits quietly when its port is taken, so a port race costs one attempt.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
            if await self._start_once(timeout):
                return
        raise ConfigurationError(
            f"ACME CSE {self.cse_id} did not start; see {self.workdir / 'acme.log'}"
        )

    async def _start_once(self, timeout: float) -> bool:
        (self.workdir / "acme.ini").write_text(
            acme_ini(
                cse_type="IN" if self.registrar is None else "MN",
                cse_id=self.cse_id,
                cse_name=self.cse_name,
                port=self.port,
                allowed_csr=self.allowed_csr,
                registrar=self.registrar,
                log_level="info",
            )
        )
        log_path = self.workdir / "acme.log"
        with open(log_path, "wb") as log:
            self._proc = proc = await asyncio.create_subprocess_exec(
                *acme_command(self.workdir, self.port, remote_cse=self.registrar is not None),
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.returncode is None:
            if STARTED_MARK in log_path.read_bytes():
                break
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
            while time.monotonic() < deadline and proc.returncode is None:
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(
                        self.url + self.base_path,
                        headers={"X-M2M-Origin": ADMIN, "X-M2M-RI": "up", "X-M2M-RVI": "3"},
                    )
                    if r.status_code == 200:
                        return True
                await asyncio.sleep(0.3)
        await self.stop()
        return False

    @property
    def log_path(self) -> Path:
        """ACME's console output (start-up, crashes)."""
        return self.workdir / "acme.log"

    def logs(self) -> str:
        """ACME's own log (``[logging]`` to files, level info): what it did and why."""
        return "".join(
            p.read_text(errors="replace") for p in sorted((self.workdir / "logs").glob("*.log*"))
        )

    async def registered(self, timeout: float = 30.0) -> bool:
        """Wait until ACME says it registered at its registrar (True), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.returncode is not None:
                return False
            if REGISTERED_MARK.decode() in self.logs():
                return True
            await asyncio.sleep(0.2)
        return False

    async def console(
        self,
        method: str,
        path: str,
        *,
        origin: str = ADMIN,
        ty: int | None = None,
        content: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One request on ACME's own loopback HTTP port, as its operator does (by default
        as its admin originator): (X-M2M-RSC, JSON body). Never through a gateway."""
        return await plain_request(self.url + path, method, origin=origin, ty=ty, content=content)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()

    async def __aenter__(self) -> AcmeCSE:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
