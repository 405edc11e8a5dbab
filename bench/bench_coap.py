"""CoAP requests per second through the gateway's dtls:// listener (issue 3, part 8).

Targets, all on 127.0.0.1:

* ``gateway-coap``: our :class:`m2msec.servers.gateway.Gateway` with a ``dtls://``
  listener (provisioned PSK, PSK-AES128-CCM8). Each oneM2M RETRIEVE arrives as CoAP
  GET with the TS-0008 options, passes the originator rules, and is forwarded over HTTP
  to a minimal keep-alive backend (``bench_gateway``'s, in its own process).
* ``gateway-http``: the same gateway process, a ``tls://`` listener, the same request as
  HTTP/1.1 over TLS 1.2 PSK: what the CoAP path costs compared with the HTTP path.
* ``libcoap``: ``coap-server-openssl -k KEY`` answering a plain CoAP GET of ``/`` from
  the same DTLS-PSK client: a CoAP server written in C that forwards nothing, so the
  ratio against it is an upper bound on what a forwarding gateway can reach.

One load generator for all three: ``--clients`` processes, each one association (our
initiator, the same PSK), one request at a time, each waiting for its answer.

    python bench/bench_coap.py --seconds 4 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dtls import free_udp_port, wait_dtls
from bench_gateway import ENTITY as HTTP_BENCH_ENTITY
from bench_gateway import request_bytes, run_backend
from bench_handshakes import cpu_seconds, free_port, log, wait_port

from m2msec.frameworks.provisioned import PskInitiator
from m2msec.service.coap_client import CoapClient
from m2msec.store import PskEntry, SqlitePskStore
from m2msec.tls.aio import connect
from m2msec.tls.aio_dtls import dtls_connect
from m2msec.tls.profiles import Transport

HOST = "127.0.0.1"
CSE_ID = "/mn-cse-123456"
KPSA_ID = "AE123456789012-Bench@in.provider.com"
KPSA_TEXT = "oneM2M-bench-Kpsa-0123456789ab"  # libcoap's -k takes the key as text
ENTITY = "Clight-AE2"
TARGET = "/~/mn-cse-123456/mn-cse"


def http_request(ri: str) -> bytes:
    """bench_gateway's RETRIEVE, from the entity our psk row binds."""
    return request_bytes(ri).replace(
        f"X-M2M-Origin: {HTTP_BENCH_ENTITY}".encode(), f"X-M2M-Origin: {ENTITY}".encode()
    )


@dataclass
class Target:
    name: str
    port: int
    pid: int
    kind: str  # "coap", "http" or "plain-coap"


@dataclass
class Rate:
    ops: float
    cpu_ms: float
    errors: int


# -- the gateway process -------------------------------------------------------------------
def run_gateway(
    dtls_port: int, tls_port: int, backend: int, store_path: str, ready: MpEvent, stop: MpEvent
) -> None:
    from m2msec.config import GatewayConfig, PskConfig, parse_listen_url
    from m2msec.ids import CseId
    from m2msec.servers.gateway import Gateway

    async def main() -> None:
        store = SqlitePskStore(store_path)
        config = GatewayConfig(
            listen=(
                parse_listen_url(f"dtls://{HOST}:{dtls_port}"),
                parse_listen_url(f"tls://{HOST}:{tls_port}"),
            ),
            backend=f"http://{HOST}:{backend}",
            cse_id=CseId.parse("mn-cse-123456"),
            psk=PskConfig(),
        )
        gw = Gateway(config, store=store)
        await gw.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await gw.close()
        store.close()

    asyncio.run(main())


# -- the load generator --------------------------------------------------------------------
def worker(target: Target, seconds: float, start_at: float, out: Any) -> None:
    async def main() -> tuple[int, int]:
        profile = PskInitiator(KPSA_ID, KPSA_TEXT.encode(), CSE_ID).profile(
            Transport.TLS if target.kind == "http" else Transport.DTLS, tls13=False
        )
        ok = errors = 0
        if target.kind == "http":
            conn = await connect(HOST, target.port, profile)
            await asyncio.sleep(max(0.0, start_at - time.time()))
            deadline = start_at + seconds
            buf = b""
            while time.time() < deadline:
                await conn.send(http_request(f"b{ok}"))
                while True:  # read to the end of the answer (Content-Length)
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0:
                        head = buf[:end].lower()
                        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                        if len(buf) >= end + 4 + length:
                            if b" 200 " in buf[:16]:
                                ok += 1
                            else:
                                errors += 1
                            buf = buf[end + 4 + length :]
                            break
                    data = await conn.recv()
                    if not data:
                        return ok, errors + 1
                    buf += data
            await conn.close()
            return ok, errors
        assoc = await dtls_connect(profile, HOST, target.port)
        client = CoapClient(assoc, parameters=target.kind == "coap")
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = start_at + seconds
        while time.time() < deadline:
            path = TARGET if target.kind == "coap" else "/"
            origin = ENTITY if target.kind == "coap" else None
            try:
                answer = await client.request("GET", path, origin=origin, timeout=5)
            except (TimeoutError, ConnectionError):
                errors += 1
                continue
            if answer.code >> 5 == 2:  # 2.xx
                ok += 1
            else:
                errors += 1
        await client.close()
        return ok, errors

    out.put(asyncio.run(main()))


def measure(target: Target, clients: int, seconds: float) -> Rate:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 2.0  # spawn and handshakes happen before the clock starts
    procs = [
        ctx.Process(target=worker, args=(target, seconds, start_at, out)) for _ in range(clients)
    ]
    for p in procs:
        p.start()
    while time.time() < start_at:
        time.sleep(0.005)
    cpu0 = cpu_seconds([target.pid])
    results = [out.get(timeout=seconds + 60) for _ in procs]
    cpu1 = cpu_seconds([target.pid])
    for p in procs:
        p.join(10)
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return Rate(ok / seconds, 1000 * (cpu1 - cpu0) / max(ok, 1), errors)


@contextlib.contextmanager
def processes(tmp: Path, libcoap: bool) -> Iterator[list[Target]]:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs: list[Any] = []
    coap: subprocess.Popen[bytes] | None = None
    try:
        store_path = str(tmp / "psk.db")
        store = SqlitePskStore(store_path)
        store.add_many([PskEntry(KPSA_ID, KPSA_TEXT.encode(), ENTITY)])
        store.close()
        backend_port = free_port()
        backend_ready = ctx.Event()
        backend = ctx.Process(target=run_backend, args=(backend_port, backend_ready), daemon=True)
        backend.start()
        procs.append(backend)
        if not backend_ready.wait(20):
            raise RuntimeError("the backend did not start")
        dtls_port, tls_port = free_udp_port(), free_port()
        ready = ctx.Event()
        gw = ctx.Process(
            target=run_gateway,
            args=(dtls_port, tls_port, backend_port, store_path, ready, stop),
        )
        gw.start()
        procs.append(gw)
        if not ready.wait(30):
            raise RuntimeError("the gateway did not start")
        assert gw.pid is not None
        targets = [
            Target("gateway-coap", dtls_port, gw.pid, "coap"),
            Target("gateway-http", tls_port, gw.pid, "http"),
        ]
        wait_port(tls_port)
        if libcoap:
            binary = shutil.which("coap-server-openssl")
            if binary is None:
                log("coap-server-openssl not found (Debian package libcoap3-bin)")
            else:
                base = free_udp_port(pair=True)
                coap = subprocess.Popen(
                    [binary, "-A", HOST, "-p", str(base), "-k", KPSA_TEXT, "-v", "0"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                targets.append(Target("libcoap", base + 1, coap.pid, "plain-coap"))
        for t in targets:
            if t.kind != "http":
                wait_dtls(t.port)
        yield targets
    finally:
        stop.set()
        for p in procs:
            if p is procs[0]:
                p.terminate()
            p.join(10)
            if p.is_alive():
                p.kill()
        if coap is not None:
            coap.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                coap.wait(5)
            if coap.poll() is None:
                coap.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--no-libcoap", action="store_true")
    args = ap.parse_args()
    if not 0 < args.seconds <= 60 or not 0 < args.rounds <= 10 or not 0 < args.clients <= 64:
        ap.error("keep it bounded: seconds <= 60, rounds <= 10, clients <= 64")
    tmp = Path(tempfile.mkdtemp(prefix="m2msec-bench-coap-"))
    try:
        with processes(tmp, not args.no_libcoap) as targets:
            rates: dict[str, list[Rate]] = {t.name: [] for t in targets}
            for r in range(args.rounds):
                for t in targets:
                    rate = measure(t, args.clients, args.seconds)
                    rates[t.name].append(rate)
                    log(
                        f"round {r + 1} {t.name:13} {rate.ops:8.1f} req/s "
                        f"{rate.cpu_ms:6.3f} ms CPU each, {rate.errors} errors"
                    )
        print()
        print(f"{args.clients} clients, one request at a time each, medians of {args.rounds}")
        print(f"{'target':14} {'req/s':>9} {'CPU ms/req':>11} {'errors':>7}")
        med: dict[str, float] = {}
        for name, rs in rates.items():
            med[name] = statistics.median(x.ops for x in rs)
            cpu = statistics.median(x.cpu_ms for x in rs)
            print(f"{name:14} {med[name]:9.1f} {cpu:11.3f} {sum(x.errors for x in rs):7d}")
        print()
        coap = med["gateway-coap"]
        http = med["gateway-http"]
        if http > 0:
            print(f"CoAP/DTLS through the gateway / HTTP/TLS through it: {coap / http:.2f}x")
        if med.get("libcoap"):
            ratio = coap / med["libcoap"]
            print(f"CoAP through the gateway / libcoap answering directly: {ratio:.2f}x")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
