"""Run a real oneM2M CSE (ACME, ``acmecse`` on PyPI) on loopback for tests.

What ACME needs, learnt the hard way:

* It reads its configuration from ``acme.ini`` in its base directory (``--config`` drops
  any folder part), so each instance gets a directory of its own.
* No HTTP request before it prints "CSE started": its HTTP server listens before every
  plugin has registered its routes, and a request in between makes Flask refuse the
  later routes; ACME then stops with exit status 0 and nothing on the console (the
  reason is only in its log file). We also turn the web UI off (one plugin less).
* A port already in use also ends it with status 0 and no message (after ~2 s); we pick
  a free port and retry with another when it exits early.
* An MN-CSE needs ``--no-remote-cse``, or it keeps trying to register with an IN-CSE.
* Start-up takes about 2 s on an idle machine, 4-6 s on a busy one, so test modules
  share one instance (:func:`acme_fixture`); stopping (SIGTERM) takes ~20 ms.
* An ``<AE>`` needs ``api`` (starting with ``N`` or ``R``), ``rr`` and ``srv``
  (``["3"]``); ``rn`` is optional. The originator of an AE CREATE must start with ``C``
  or ``S`` (others get 4126/4107); ``C``, ``S`` or an empty one get an AE-ID assigned
  (``C`` + random). ``Clight-AE1`` is registered with ``aei`` ``Clight-AE1``, and
  ``/<cseID>/Clight-AE1`` is accepted as the same originator afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from m2msec.acme import ADMIN, STARTED_MARK, acme_command, acme_ini, free_port


@dataclass
class AcmeCse:
    """A running ACME CSE: where it is and a few request helpers (plain HTTP)."""

    port: int
    cse_id: str
    cse_name: str
    directory: Path
    startup_seconds: float
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """SP-relative address of the CSEBase, ``/~/<cseID>/<cseName>``."""
        return f"/~/{self.cse_id}/{self.cse_name}"

    def request(
        self,
        method: str,
        path: str,
        *,
        origin: str = ADMIN,
        content: Any = None,
        ty: int | None = None,
    ) -> httpx.Response:
        headers = {
            "X-M2M-Origin": origin,
            "X-M2M-RI": uuid.uuid4().hex[:12],
            "X-M2M-RVI": "3",
            "Accept": "application/json",
        }
        body = None
        if content is not None:
            body = json.dumps(content).encode()
            headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
        return httpx.request(method, self.url + path, headers=headers, content=body, timeout=10)

    def retrieve(self, path: str, origin: str = ADMIN) -> httpx.Response:
        return self.request("GET", path, origin=origin)

    def log_tail(self, lines: int = 30) -> str:
        log = self.directory / "acme.out"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _write_ini(
    directory: Path,
    *,
    cse_type: str,
    cse_id: str,
    cse_name: str,
    port: int,
    allowed_csr: tuple[str, ...] = (),
) -> None:
    text = acme_ini(
        cse_type=cse_type, cse_id=cse_id, cse_name=cse_name, port=port, allowed_csr=allowed_csr
    )
    (directory / "acme.ini").write_text(text)


def _ready(port: int, cse_id: str, cse_name: str) -> bool:
    try:
        r = httpx.get(
            f"http://127.0.0.1:{port}/~/{cse_id}/{cse_name}",
            headers={"X-M2M-Origin": ADMIN, "X-M2M-RI": "ready", "X-M2M-RVI": "3"},
            timeout=1.0,
        )
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.headers.get("x-m2m-rsc") == "2000"


def _output(directory: Path) -> bytes:
    try:
        return (directory / "acme.out").read_bytes()
    except OSError:
        return b""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def running_acme(
    directory: Path,
    *,
    cse_type: str = "MN",
    cse_id: str = "mn-cse-123456",
    cse_name: str = "home-gw",
    timeout: float = 30.0,
    attempts: int = 3,
    allowed_csr: tuple[str, ...] = (),
) -> Iterator[AcmeCse]:
    """Start ACME in ``directory`` on a free loopback port; stop it on exit.
    ``allowed_csr``: the CSE-IDs that may register here (an IN-CSE's MN-CSEs)."""
    if importlib.util.find_spec("acmecse") is None:
        # Like the other interop helpers: a missing program is a broken setup, not a skip.
        pytest.fail("ACME is not installed: pip install -e '.[test]' (package acmecse)")
    directory.mkdir(parents=True, exist_ok=True)
    last = ""
    for _ in range(attempts):
        port = free_port()
        _write_ini(
            directory,
            cse_type=cse_type,
            cse_id=cse_id,
            cse_name=cse_name,
            port=port,
            allowed_csr=allowed_csr,
        )
        out = (directory / "acme.out").open("wb")
        started = time.monotonic()
        process = subprocess.Popen(
            acme_command(directory, port),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        cse = AcmeCse(port, cse_id, cse_name, directory, 0.0, process)
        try:
            while time.monotonic() - started < timeout:
                if process.poll() is not None:
                    break  # most likely the port was taken meanwhile: try another
                # No HTTP request before ACME says it started: one that arrives while its
                # plugins still register routes makes Flask refuse them, and ACME exits.
                if STARTED_MARK in _output(directory) and _ready(port, cse_id, cse_name):
                    cse.startup_seconds = time.monotonic() - started
                    break
                time.sleep(0.05)
            if cse.startup_seconds:
                try:
                    yield cse
                finally:
                    _stop(process)
                return
            took = time.monotonic() - started
            last = f"exit status {process.poll()} after {took:.1f} s; output:\n{cse.log_tail()}"
        finally:
            _stop(process)
    raise RuntimeError(f"ACME did not start in {attempts} attempts:\n{last}")


def acme_fixture(scope: Any = "module", **options: Any) -> Callable[..., Iterator[AcmeCse]]:
    """A pytest fixture (default: one ACME per test module) built with ``options``."""

    @pytest.fixture(scope=scope)
    def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeCse]:
        with running_acme(tmp_path_factory.mktemp("acme"), **options) as cse:
            yield cse

    return acme


def ae_content(rn: str, api: str = "Nlight") -> dict[str, Any]:
    """An ``m2m:ae`` ACME accepts (api starting with N/R, rr, srv)."""
    return {"m2m:ae": {"rn": rn, "api": api, "rr": True, "srv": ["3"]}}
