"""DTLS-PSK handshakes per second and memory per idle association: ours against libcoap.

Targets, both on 127.0.0.1 with the same PSK (identity ``KPSA_ID``, key ``KPSA_TEXT``):

* ``ours``: :func:`m2msec.tls.aio_dtls.start_dtls_server` with the provisioned-PSK
  responder (TS-0003 8.2.2.1) over a SQLite psk-lookup-table, in its own process;
  stateless cookies, resumption cache on. Two such targets when uvloop is installed:
  ``ours`` on asyncio's own loop and ``ours-uv`` on uvloop (``asyncio.Runner`` with
  ``uvloop.new_event_loop``, as ``m2msec gateway serve`` runs), same run, same load.
* ``libcoap``: ``coap-server-openssl -k KEY`` (libcoap's example server on OpenSSL),
  DTLS on its secure port (``-p`` + 1).

One load generator for both: ``--clients`` processes, each running full DTLS 1.2
handshakes with our initiator (``DTLSEngine`` pumped over a blocking UDP socket, its own
retransmission timer): new socket (new source port), cookie exchange, PSK handshake,
close_notify. No resumption. Its CPU per handshake does not depend on the target.

Measurements:

* ``handshake``: full handshakes per second over ``--seconds`` (medians of ``--rounds``
  rounds, targets interleaved), with the target's CPU time per handshake;
* ``memory``: ``--idle`` associations opened and left idle, the target's resident memory
  (VmRSS) before and after, divided by their number;
* ``coap``: with ``--coap``, CoAP GET requests per second through the gateway's
  ``dtls://`` listener (one association per client process, each request waiting for its
  answer from an HTTP backend standing in for the CSE).

    python bench/bench_dtls.py                        # ~1.5 minutes
    python bench/bench_dtls.py --seconds 5 --rounds 3 --idle 2000 --loops uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_handshakes import cpu_seconds, log

from m2msec.frameworks.provisioned import PskInitiator, PskResponder
from m2msec.store import PskEntry, SqlitePskStore
from m2msec.tls.aio_dtls import DTLSAssociation, start_dtls_server
from m2msec.tls.dtls.engine import DTLSEngine
from m2msec.tls.engine import HandshakeComplete, HandshakeFailed
from m2msec.tls.profiles import Transport

HOST = "127.0.0.1"
SERVER_ID = "/mn-cse-123456"
KPSA_ID = "AE123456789012-Bench@in.provider.com"
KPSA_TEXT = "oneM2M-bench-Kpsa-0123456789ab"  # libcoap's -k takes the key as text
ENTITY = "Clight-AE2"
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_udp_port(pair: bool = False) -> int:
    """A UDP port free on 127.0.0.1 (with ``pair``, the next one is free too)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if not pair:
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:
            try:
                s2.bind((HOST, port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def initiator_profile() -> Any:
    return PskInitiator(KPSA_ID, KPSA_TEXT.encode(), SERVER_ID).profile(Transport.DTLS)


# -- our server ------------------------------------------------------------------------------
def run_ours(port: int, store_path: str, ready: MpEvent, stop: MpEvent, uvloop: bool) -> None:
    async def idle(assoc: DTLSAssociation) -> None:
        while await assoc.recv():
            pass

    async def main() -> None:
        store = SqlitePskStore(store_path)
        profile = PskResponder(store, local_id=SERVER_ID).profile(Transport.DTLS)
        handle = await start_dtls_server(
            profile, HOST, port, idle, max_peers=50000, idle_timeout=600
        )
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        handle.close()
        await handle.wait_closed()

    if uvloop:
        import uvloop as uv

        with asyncio.Runner(loop_factory=uv.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


# -- the load generator ----------------------------------------------------------------------
class Handshaker:
    """Blocking DTLS handshakes with our initiator over one UDP socket per handshake."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.profile = initiator_profile()

    def open(self, timeout: float = 10.0) -> tuple[socket.socket, DTLSEngine] | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((HOST, self.port))
        engine = DTLSEngine(self.profile, handshake_timeout=timeout)
        engine.start()
        while True:
            for datagram in engine.datagrams_to_send():
                sock.send(datagram)
            for event in engine.events():
                if isinstance(event, HandshakeComplete):
                    return sock, engine
                if isinstance(event, HandshakeFailed):
                    sock.close()
                    return None
            left = engine.timeout()
            sock.settimeout(max(0.001, left) if left is not None else timeout)
            try:
                engine.receive_datagram(sock.recv(65536))
            except TimeoutError:
                engine.handle_timeout()
            except ConnectionRefusedError:
                sock.close()
                return None

    @staticmethod
    def close(sock: socket.socket, engine: DTLSEngine) -> None:
        engine.close()
        with contextlib.suppress(OSError):
            for datagram in engine.datagrams_to_send():
                sock.send(datagram)
        sock.close()


def handshake_worker(port: int, seconds: float, start_at: float, out: Any) -> None:
    h = Handshaker(port)
    while time.time() < start_at:
        time.sleep(0.001)
    ok = failed = 0
    suite = ""
    deadline = start_at + seconds
    while time.time() < deadline:
        opened = h.open()
        if opened is None:
            failed += 1
            continue
        ok += 1
        ctx = opened[1].context
        suite = ctx.cipher_suite if ctx else suite
        h.close(*opened)
    out.put((ok, failed, suite))


def idle_worker(port: int, count: int, ready: Any, release: MpEvent) -> None:
    h = Handshaker(port)
    held = []
    failed = 0
    for _ in range(count):
        opened = h.open()
        if opened is None:
            failed += 1
        else:
            held.append(opened)
    ready.put((len(held), failed))
    release.wait(300)
    for sock, engine in held:
        h.close(sock, engine)


@dataclass
class Target:
    name: str
    port: int
    pid: int


@dataclass
class Rate:
    ops: float
    failed: int
    cpu_ms: float
    suite: str


def measure_handshakes(target: Target, clients: int, seconds: float) -> Rate:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 1.0  # workers start together, after their imports
    procs = [
        ctx.Process(target=handshake_worker, args=(target.port, seconds, start_at, out))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    while time.time() < start_at:
        time.sleep(0.001)
    cpu0 = cpu_seconds([target.pid])
    results = [out.get(timeout=seconds + 60) for _ in procs]
    cpu1 = cpu_seconds([target.pid])
    for p in procs:
        p.join(10)
    ok = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    suites = {r[2] for r in results if r[2]}
    return Rate(ok / seconds, failed, 1000 * (cpu1 - cpu0) / max(ok, 1), ",".join(sorted(suites)))


def measure_memory(target: Target, count: int) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    release = ctx.Event()
    time.sleep(0.5)
    before = rss_bytes(target.pid)
    proc = ctx.Process(target=idle_worker, args=(target.port, count, ready, release))
    proc.start()
    held, failed = ready.get(timeout=600)
    time.sleep(1.0)  # let the last handshakes settle
    after = rss_bytes(target.pid)
    release.set()
    proc.join(60)
    if failed:
        log(f"  {target.name}: {failed} of {count} idle associations failed")
    return (after - before) / max(held, 1), held


# -- CoAP through the gateway ----------------------------------------------------------------
def coap_available() -> bool:
    try:
        import m2msec.servers.coap_gateway  # noqa: F401
    except ImportError:
        return False
    return True


# -- main ------------------------------------------------------------------------------------
def wait_dtls(port: int, timeout: float = 10.0) -> None:
    h = Handshaker(port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        opened = h.open(timeout=1.0)
        if opened is not None:
            h.close(*opened)
            return
        time.sleep(0.1)
    raise RuntimeError(f"no DTLS server on {HOST}:{port}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="per handshake measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2, help="load generator processes")
    ap.add_argument("--idle", type=int, default=1000, help="idle associations for memory")
    ap.add_argument(
        "--loops",
        default="asyncio,uvloop",
        help="event loops to run our server on (comma-separated; uvloop when installed)",
    )
    ap.add_argument("--no-libcoap", action="store_true")
    args = ap.parse_args()
    if not 0 < args.seconds <= 60 or not 0 < args.rounds <= 10 or not 0 < args.idle <= 10000:
        ap.error("keep it bounded: seconds <= 60, rounds <= 10, idle <= 10000")

    tmp = Path(tempfile.mkdtemp(prefix="m2msec-bench-dtls-"))
    stop = mp.get_context("spawn").Event()
    procs: list[Any] = []
    coap: subprocess.Popen[bytes] | None = None
    try:
        store_path = str(tmp / "psk.db")
        store = SqlitePskStore(store_path)
        store.add_many([PskEntry(KPSA_ID, KPSA_TEXT.encode(), ENTITY)])
        store.close()

        targets: list[Target] = []
        ctx = mp.get_context("spawn")
        loops = [x.strip() for x in args.loops.split(",") if x.strip()]
        if "uvloop" in loops and importlib.util.find_spec("uvloop") is None:
            log("uvloop not installed: our server on asyncio's loop only")
            loops = [x for x in loops if x != "uvloop"] or ["asyncio"]
        for loop_name in loops:
            if loop_name not in ("asyncio", "uvloop"):
                ap.error(f"unknown event loop {loop_name!r}")
            ready = ctx.Event()
            port = free_udp_port()
            uv = loop_name == "uvloop"
            ours = ctx.Process(target=run_ours, args=(port, store_path, ready, stop, uv))
            ours.start()
            procs.append(ours)
            if not ready.wait(20):
                raise RuntimeError("our DTLS server did not start")
            assert ours.pid is not None
            targets.append(Target("ours-uv" if uv else "ours", port, ours.pid))

        if not args.no_libcoap:
            binary = shutil.which("coap-server-openssl")
            if binary is None:
                log("coap-server-openssl not found (Debian package libcoap3-bin): ours alone")
            else:
                base = free_udp_port(pair=True)
                coap = subprocess.Popen(
                    [binary, "-A", HOST, "-p", str(base), "-k", KPSA_TEXT, "-v", "0"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                targets.append(Target("libcoap", base + 1, coap.pid))
        for t in targets:
            wait_dtls(t.port)

        rates: dict[str, list[Rate]] = {t.name: [] for t in targets}
        for r in range(args.rounds):
            for t in targets:
                rate = measure_handshakes(t, args.clients, args.seconds)
                rates[t.name].append(rate)
                log(
                    f"round {r + 1} {t.name:8} {rate.ops:8.1f} handshakes/s "
                    f"{rate.cpu_ms:6.3f} ms CPU each, {rate.failed} failed ({rate.suite})"
                )
        memory: dict[str, tuple[float, int]] = {}
        for t in targets:
            memory[t.name] = measure_memory(t, args.idle)
            log(f"memory   {t.name:8} {memory[t.name][0] / 1024:8.1f} KiB per idle association")

        print()
        print(f"DTLS 1.2 PSK, {args.clients} client processes, medians of {args.rounds} rounds")
        print(f"{'target':10} {'hs/s':>9} {'CPU ms/hs':>10} {'failed':>7} {'KiB/idle':>9}  suite")
        med: dict[str, tuple[float, float]] = {}
        for t in targets:
            ops = statistics.median(x.ops for x in rates[t.name])
            cpu = statistics.median(x.cpu_ms for x in rates[t.name])
            med[t.name] = (ops, cpu)
            failed = sum(x.failed for x in rates[t.name])
            kib = memory[t.name][0] / 1024
            suite = rates[t.name][-1].suite
            print(f"{t.name:10} {ops:9.1f} {cpu:10.3f} {failed:7d} {kib:9.1f}  {suite}")
        if "libcoap" in med:
            ops_b, cpu_b = med["libcoap"]
            mem_b = memory["libcoap"][0]
            for a, (ops_a, cpu_a) in med.items():
                if a == "libcoap":
                    continue
                mem_a = memory[a][0]
                print()
                print(f"handshakes/s  {a} / libcoap: {ops_a / ops_b:.2f}x   (goal >= 1.0x)")
                print(f"CPU per hs    {a} / libcoap: {cpu_a / cpu_b:.2f}x   (lower is better)")
                if mem_b > 0:
                    print(f"memory/idle   {a} / libcoap: {mem_a / mem_b:.2f}x")
        print()
        for t in targets:
            if t.name != "libcoap":
                kib = memory[t.name][0] / 1024
                print(f"memory per idle association, {t.name}: {kib:.1f} KiB (goal < 20 KiB)")
        if not coap_available():
            print("CoAP requests/s through the gateway: no dtls:// listener in this tree")
        return 0
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        if coap is not None:
            coap.terminate()
            try:
                coap.wait(5)
            except subprocess.TimeoutExpired:
                coap.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
