"""Faults at the MEF (TS-0003 8.3.2.1, seed 004), through the shipped server:
``python -m m2msec.cli mef serve`` as a real process, our Enrolee library
(:mod:`m2msec.frameworks.mef`) as the Enrolees and our target client as the Enrolment
Target, as tests/test_maf_crash.py does for the MAF.

* SIGKILL under 12 concurrent enrolments, several times: every Ke whose Enrolment Exchange
  was answered 2001 survives the restart, and fetchCredentials by its target afterwards
  answers the Kpsa or Km the Enrolee derived from its own export; the store passes its
  integrity check and every stored Ke unseals. On SQLite and on PostgreSQL (tests/pg.py).
* An expired Ke is refused (4004), also after a restart.
* An Enrolee-ID that fails the ``ids`` rules is refused at ``add-enrolee`` (exit 2) and
  that KpmID cannot bootstrap.
* Random bytes and a truncated ClientHello on the Enrolee and target listeners (and random
  datagrams on the DTLS one) leave the server serving the next Enrolee.
* No Kpm, Ke, Km or Kpsa in the server's output (stderr, at debug level) or in the
  ``m2msec mef keys`` / ``audit`` listings.

A MEF slow or down for a target is tests/test_mef_targets.py's
(``test_mef_down_or_slow_fails_in_bounded_time``), not repeated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from m2msec.frameworks.mef import Enrolee, EnrolmentError, EnrolmentResult, KpmCredential
from m2msec.mef.records import EnrolmentTarget
from m2msec.mef.store import MefStore
from m2msec.store.seal import KEK_ENV
from m2msec.tls.profiles import Transport
from tests.interop import HOST, Program, free_port, free_udp_port, spawn, wait_listening
from tests.pg import pg_server, pg_url
from tests.test_mef_server import (
    KEK,
    KPM,
    KPM_ID,
    MAF,
    MAF_FQDN,
    MAF_KPM_ID,
    MEF_FQDN,
    Pki,
    fetch,
    make_pki,
    seed_store,
    target,
)

__all__ = ["pg_server", "pg_url"]

ROUNDS = 3
WORKERS = 12
CLI = [sys.executable, "-m", "m2msec.cli"]

def _jsonl(text: str) -> list[Any]:
    """The rows of a ``--json`` listing: one JSON object per line (JSON lines)."""
    return [json.loads(line) for line in text.splitlines()]



@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("mef-faults-pki"))


@dataclass
class Mef:
    """``m2msec mef serve`` on free loopback ports; the output of every run kept."""

    pki: Pki
    directory: Path
    store: str  # a SQLite file or a postgresql:// URL
    enrolee_port: int = field(default_factory=free_port)
    target_port: int = field(default_factory=free_port)
    dtls_port: int = field(default_factory=free_udp_port)
    outputs: list[str] = field(default_factory=list)

    def write_config(self) -> Path:
        config = self.directory / "mef.toml"
        config.write_text(
            f"""[mef]
fqdn = "{MEF_FQDN}"
store = "{self.store}"
enrolee_listen = ["tls://{HOST}:{self.enrolee_port}", "dtls://{HOST}:{self.dtls_port}"]
target_listen = "tls://{HOST}:{self.target_port}"
handshake_timeout = 3.0
purge_interval = 1.0

[certificates]
cert = "{self.pki.mef_cert}"
key = "{self.pki.mef_key}"
ca = "{self.pki.ca.cert_path}"
"""
        )
        return config

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Program]:
        argv = [*CLI, "mef", "serve", "--config", str(self.write_config()), "--log-level", "debug"]
        async with spawn(argv) as server:
            try:
                await wait_listening(self.enrolee_port, server, timeout=30)
                await wait_listening(self.target_port, server, timeout=10)
                yield server
            finally:
                await server.stop()
                self.outputs.append(server.output)

    def enrolee(self, kpm_id: str = KPM_ID, transport: Transport = Transport.TLS) -> Enrolee:
        port = self.dtls_port if transport is Transport.DTLS else self.enrolee_port
        credential = KpmCredential(kpm_id, KPM)
        return Enrolee(HOST, port, MEF_FQDN, credential, transport=transport, timeout=5)

    def admin(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """An ``m2msec mef`` store command as its own process."""
        return subprocess.run(
            [*CLI, "mef", *args, "--store", self.store],
            input=stdin, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip


@pytest.fixture(params=["sqlite"])
def mef(
    request: pytest.FixtureRequest, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Mef:
    """The seeded MEF on SQLite (its KEK file beside it, as the process reads it) or,
    parametrized ``postgresql``, on tests/pg.py's server with the KEK in ``$M2MSEC_KEK``."""
    if request.param == "postgresql":
        store: str = request.getfixturevalue("pg_url")
        monkeypatch.setenv(KEK_ENV, KEK.hex())  # inherited by the server and the commands
        seed_store(store, kek=KEK).close()
    else:
        store = str(tmp_path / "mef.db")
        seed_store(store, kek=None).close()
    return Mef(pki, tmp_path, store)


async def fetched(mef: Mef, got: EnrolmentResult) -> tuple[int | None, bytes]:
    """fetchCredentials by the Enrolee's target, as that target (mutual TLS): RSC, credential."""
    who, suid = (MAF_FQDN, 21) if got.target == MAF else ("/in-cse", 22)
    client = await target(mef.target_port, mef.pki.creds[who])
    try:
        answer = await fetch(client, str(got.ke_id), suid, who)
    finally:
        await client.close()
    if answer.rsc != 2000:
        return answer.rsc, b""
    return answer.rsc, bytes.fromhex(answer.json()["fetchCredentials"]["credential"])


def assert_no_key_in(text: str, results: list[EnrolmentResult]) -> None:
    lowered = text.lower()
    assert KPM.hex() not in lowered
    for got in results:
        assert got.ke.hex() not in lowered, got.ke_id
        assert got.credential.hex() not in lowered, got.ke_id


async def load(mef: Mef, kpm_id: str, acked: list[EnrolmentResult], stop: asyncio.Event) -> None:
    """Enrol until ``stop``; keep the enrolments answered 2001 (``enrol`` returned)."""
    enrolee = mef.enrolee(kpm_id)
    while not stop.is_set():
        try:
            acked.append(await enrolee.enrol())
        except Exception:  # the MEF died mid-exchange (or was not up yet): nothing acked
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("mef", ["sqlite", "postgresql"], indirect=True)
async def test_sigkill_under_concurrent_enrolments_loses_no_acknowledged_ke(mef: Mef) -> None:
    rng = random.Random(os.getpid())
    acked: list[EnrolmentResult] = []
    for _ in range(ROUNDS):
        before = len(acked)
        stop = asyncio.Event()
        async with mef.running() as server:
            workers = [
                asyncio.create_task(load(mef, KPM_ID if n % 2 else MAF_KPM_ID, acked, stop))
                for n in range(WORKERS)
            ]
            try:
                for _ in range(3000):  # kill once enrolments flow, at a random moment
                    if len(acked) - before >= 10:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                server.proc.send_signal(signal.SIGKILL)
                await server.proc.wait()
            finally:
                stop.set()
                await asyncio.gather(*workers, return_exceptions=True)
            assert server.proc.returncode == -signal.SIGKILL
        assert len(acked) - before >= 10, "no enrolment reached the MEF before the kill"
    assert {got.target for got in acked} == {MAF, EnrolmentTarget.enrolee_b("/in-cse")}

    # Restarted: each acknowledged Ke is there and gives its target the Enrolee's credential.
    async with mef.running():
        for got in acked:
            assert await fetched(mef, got) == (2000, got.credential), got.ke_id
        after = await mef.enrolee().enrol()  # and it still enrols
        assert await fetched(mef, after) == (2000, after.credential)

    if not mef.store.startswith("postgresql:"):
        with sqlite3.connect(mef.store) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with MefStore(mef.store) as store:  # every stored Ke unseals
        stored = {str(e.ke_id): e for _, e in store.list_enrolments(limit=100_000)}
    assert len(stored) >= len(acked) + 1  # some may be committed, never answered
    for got in [*acked, after]:
        assert stored[str(got.ke_id)].ke == got.ke
    listing = mef.admin("keys", "--json", "--limit", "100000")
    assert listing.returncode == 0, listing.stderr
    listed = {row["keID"] for row in _jsonl(listing.stdout)}
    assert {str(got.ke_id) for got in acked} <= listed
    audit = mef.admin("audit", "--json", "--limit", "100000")
    assert audit.returncode == 0, audit.stderr
    assert_no_key_in(listing.stdout + audit.stdout + "".join(mef.outputs), [*acked, after])


async def test_expired_ke_is_refused_also_after_a_restart(mef: Mef) -> None:
    added = mef.admin(
        "add-enrolee", KPM_ID, "--key", "-", "--enrolee-id", "/mn-cse-123456/Cdevice-1",
        "--enrolee-b", "/in-cse", "--lifetime", "1s", "--replace", stdin=KPM.hex() + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    async with mef.running():
        short = await mef.enrolee().enrol()
        live = await mef.enrolee(MAF_KPM_ID).enrol()  # 1 day
        await asyncio.sleep(max(0.0, (short.expires - short.created).total_seconds()) + 1.1)
        assert await fetched(mef, short) == (4004, b"")
        assert await fetched(mef, live) == (2000, live.credential)
    async with mef.running():
        assert await fetched(mef, short) == (4004, b"")
        assert await fetched(mef, live) == (2000, live.credential)
    assert_no_key_in("".join(mef.outputs), [short, live])


BAD_ENROLEE_IDS = ("b a d", "/mn-cse-1/", "/mn-cse-1/Cbad id", "Cdev\u00e9", "/", "//sp", "../Cx")


async def test_an_enrolee_id_outside_the_ids_rules_is_refused_at_add_enrolee(mef: Mef) -> None:
    kpm_id = "device-9@mef.in.provider.com"
    for enrolee_id in BAD_ENROLEE_IDS:
        added = mef.admin(
            "add-enrolee", kpm_id, "--key", "-", "--enrolee-id", enrolee_id,
            "--enrolee-b", "/in-cse", stdin=KPM.hex() + "\n",
        )  # fmt: skip
        assert added.returncode == 2, (enrolee_id, added.stderr)
        assert "invalid" in added.stderr and KPM.hex() not in added.stderr + added.stdout
    listed = mef.admin("list-enrolees", "--json")
    assert listed.returncode == 0 and "device-9" not in listed.stdout
    async with mef.running():  # not configured: its bootstrap handshake fails
        with pytest.raises(EnrolmentError, match="bootstrap handshake"):
            await mef.enrolee(kpm_id).enrol()
        got = await mef.enrolee().enrol()  # and the configured Enrolee is served
        assert await fetched(mef, got) == (2000, got.credential)


def truncated_client_hello() -> bytes:
    """The first half of a real TLS ClientHello (Python's ssl, through a memory BIO)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=MEF_FQDN)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16 and len(hello) > 100
    return hello[: len(hello) // 2]


async def send_garbage(port: int, data: bytes, *, linger: bool) -> None:
    """Write ``data`` to the listener; with ``linger``, wait for the server to hang up
    (an alert or a close, within its handshake timeout)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        if linger:
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_garbage_on_the_listeners_leaves_the_next_enrolee_served(mef: Mef) -> None:
    rng = random.Random(os.getpid())
    hello = truncated_client_hello()
    async with mef.running() as server:
        for port in (mef.enrolee_port, mef.target_port):
            blobs = [rng.randbytes(n) for n in (1, 5, 300, 20000)]
            blobs += [hello, b"\x16\x03\x01\xff\xff"]  # a record header claiming 64 KiB
            await asyncio.gather(
                *(send_garbage(port, blob, linger=n % 2 == 0) for n, blob in enumerate(blobs))
            )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # the DTLS listener
            for n in (1, 13, 200, 1400):
                udp.sendto(rng.randbytes(n), (HOST, mef.dtls_port))
        got = await mef.enrolee().enrol()
        assert await fetched(mef, got) == (2000, got.credential)
        dtls = await mef.enrolee(transport=Transport.DTLS).enrol()
        assert await fetched(mef, dtls) == (2000, dtls.credential)
        assert server.running
    refused = re.search(r"'handshakes_failed': (\d+)", mef.outputs[-1])
    assert refused is not None and int(refused[1]) >= 12, mef.outputs[-1]  # + the port probes
    assert_no_key_in("".join(mef.outputs), [got, dtls])
