"""oneM2M requests per second through the CSE security gateway, against stunnel.

Targets, all on 127.0.0.1, each fronting the same plain HTTP/1.1 backend (its own process):

* ``gateway``: our :class:`m2msec.servers.gateway.Gateway` (one ``tls://`` listener,
  provisioned-PSK framework over a SQLite psk-lookup-table), in its own process. It parses
  each oneM2M request, applies the originator rules and forwards it over its pool of
  persistent HTTP/1.1 connections to the backend (:mod:`m2msec.servers.backend`, on the
  one HTTP client of :mod:`m2msec.service.client`).
* ``stunnel``: stunnel as a TLS-PSK server (``PSKsecrets``, ``ciphers =
  PSK-AES128-CBC-SHA256``, TLS 1.2 only), ``connect`` to the backend: bytes relayed, no
  HTTP parsing.

The backend answers every request ``200`` with ``X-M2M-RSC: 2000`` and a small JSON body,
keep-alive (asyncio protocol, minimal parser). With ``--backend-close`` it answers
``Connection: close`` and closes after each answer, as ACME does: the gateway then opens
one backend connection per request (stunnel is left out: it would close the client's
connection along with the backend's).

One load generator for both: ``--workers`` processes, each one persistent TLS 1.2
PSK-AES128-CBC-SHA256 association (identity ``AE123456789012-Light@in.provider.com``,
a 30-octet printable key, our PskInitiator + TLSEngine over a blocking socket), then
oneM2M RETRIEVEs (``GET /~/mn-cse-123456/mn-cse``, ``X-M2M-Origin: Clight-AE1``), one at
a time, each read to the end of its HTTP response (Content-Length).

Reported: requests/s, errors, the target's CPU (cores, and ms per request; our gateway
process or stunnel, the backend not included), latency, and ratios ours/stunnel.

    python bench/bench_gateway.py --seconds 5 --rounds 3
    python bench/bench_gateway.py --seconds 3 --rounds 1 --no-stunnel --profile /tmp/gw.prof
    python bench/bench_gateway.py --seconds 3 --rounds 2 --backend-close
    python bench/bench_gateway.py --seconds 3 --rounds 2 --uvloop
    python bench/bench_gateway.py --seconds 3 --rounds 3 --uvloop --fresh   # waking devices
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_handshakes import (
    HOST,
    SNI,
    Target,
    cpu_seconds,
    free_port,
    handshake,
    log,
    machine_busy,
    platform_line,
    print_profile,
)
from bench_handshakes import stunnel as handshakes_stunnel

from m2msec.frameworks.provisioned import PskInitiator
from m2msec.store import PskEntry, SqlitePskStore

CSE_ID = "/mn-cse-123456"
KPSA_ID = "AE123456789012-Light@in.provider.com"
# stunnel reads the key as the text after the colon and wants at least 16 octets.
KPSA_TEXT = "oneM2M-bench-Kpsa-0123456789ab"
ENTITY = "Clight-AE1"
BODY = b'{"m2m:cb":{"rn":"mn-cse","ri":"mn-cse-123456","csi":"/mn-cse-123456","cst":2}}'


def request_bytes(ri: str) -> bytes:
    return (
        "GET /~/mn-cse-123456/mn-cse HTTP/1.1\r\n"
        f"Host: {SNI}\r\n"
        "Accept: application/json\r\n"
        f"X-M2M-Origin: {ENTITY}\r\n"
        f"X-M2M-RI: {ri}\r\n"
        "X-M2M-RVI: 3\r\n"
        "Content-Length: 0\r\n"
        "Connection: keep-alive\r\n"
        "\r\n"
    ).encode()


# -- the backend -------------------------------------------------------------------------


class _Backend(asyncio.Protocol):
    """Keep-alive HTTP/1.1: header block, Content-Length body, one fixed 200 answer."""

    close_each = False  # answer Connection: close and close (ACME's way)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buf[:end].lower()
            length = 0
            ri = b"-"
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-m2m-ri":
                    ri = value.strip()
            if len(self.buf) < end + 4 + length:
                break
            self.buf = self.buf[end + 4 + length:]
            out.append(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-M2M-RSC: 2000\r\n"
                b"X-M2M-RI: " + ri + b"\r\nX-M2M-RVI: 3\r\n"
                b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
                + (b"Connection: close\r\n" if self.close_each else b"") + b"\r\n" + BODY
            )
            if self.close_each:
                break
        if out:
            self.transport.write(b"".join(out))
            if self.close_each:
                self.transport.close()


def run_backend(port: int, ready: MpEvent, close_each: bool = False) -> None:
    _Backend.close_each = close_each

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Backend, HOST, port, backlog=4096)
        ready.set()
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())


# -- our gateway -------------------------------------------------------------------------


def run_gateway(port: int, backend: int, store_path: str, ready: MpEvent, stop: MpEvent,
                profile_to: str | None, use_uvloop: bool = False) -> None:
    from m2msec.config import GatewayConfig, PskConfig, parse_listen_url
    from m2msec.ids import CseId
    from m2msec.servers.gateway import Gateway

    async def main() -> None:
        store = SqlitePskStore(store_path)
        config = GatewayConfig(
            listen=(parse_listen_url(f"tls://{HOST}:{port}"),),
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

    prof = cProfile.Profile() if profile_to else None
    if prof:
        prof.enable()
    if use_uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())
    if prof and profile_to:
        prof.disable()
        prof.dump_stats(f"{profile_to}.{os.getpid()}")


@contextlib.contextmanager
def gateway(backend: int, store_path: str, profile_to: str | None,
            use_uvloop: bool = False) -> Iterator[Target]:
    ctx = mp.get_context("spawn")
    port = free_port()
    stop, ready = ctx.Event(), ctx.Event()
    p = ctx.Process(target=run_gateway,
                    args=(port, backend, store_path, ready, stop, profile_to, use_uvloop),
                    daemon=True)
    p.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the gateway did not start")
        yield Target("gateway", port, [p.pid or 0], stop.set)
    finally:
        stop.set()
        p.join(15)
        if p.is_alive():
            p.kill()
            p.join(5)


@contextlib.contextmanager
def stunnel(tmp: Path, backend: int) -> Iterator[Target]:
    """bench_handshakes' stunnel, TLS 1.2 only, with this bench's identity and key."""
    with handshakes_stunnel(tmp, backend, False, identity=KPSA_ID, key_text=KPSA_TEXT) as target:
        yield target


# -- the load generator ------------------------------------------------------------------


def read_response(sock: Any, engine: Any, buf: bytearray) -> bytes:
    """One HTTP response (head + Content-Length body) from the association; the rest of
    what was read stays in ``buf``. Returns the head."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(buf) >= end + 4 + length:
                del buf[:end + 4 + length]
                return head
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed")
        engine.receive_data(data)
        out = engine.data_to_send()
        if out:
            sock.sendall(out)
        for event in engine.events():
            buf += getattr(event, "data", b"")


def fresh_worker(index: int, port: int, start: float, seconds: float, results: Any) -> None:
    """``--fresh``: a waking device - new TCP connection, full TLS-PSK handshake (no
    resumption), one RETRIEVE read to its end, close_notify, close; repeated."""
    import socket

    profile = PskInitiator(KPSA_ID, KPSA_TEXT.encode(), CSE_ID, server_name=SNI).profile(
        tls13=False
    )
    ops = errors = 0
    first_error = ""
    lat: list[float] = []
    time.sleep(max(0.0, start - time.time()))
    cpu0 = time.process_time()
    deadline = time.monotonic() + seconds
    n = 0
    while (t0 := time.monotonic()) < deadline:
        n += 1
        try:
            with socket.create_connection((HOST, port), 5) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                engine = handshake(sock, profile)
                engine.send(request_bytes(f"fresh-{index}-{n:09d}"))
                sock.sendall(engine.data_to_send())
                head = read_response(sock, engine, bytearray())
                engine.close()
                sock.sendall(engine.data_to_send())
        except (OSError, RuntimeError) as exc:
            errors += 1
            first_error = first_error or repr(exc)
            continue
        lat.append(time.monotonic() - t0)
        if head.startswith(b"HTTP/1.1 200") and b"\r\nx-m2m-rsc: 2000" in head.lower():
            ops += 1
        else:
            errors += 1
            first_error = first_error or head.split(b"\r\n")[0].decode(errors="replace")
    results.put((ops, errors, first_error, time.process_time() - cpu0, lat))


def worker(index: int, port: int, start: float, seconds: float, results: Any) -> None:
    import socket

    profile = PskInitiator(KPSA_ID, KPSA_TEXT.encode(), CSE_ID, server_name=SNI).profile(
        tls13=False
    )
    ops = errors = 0
    first_error = ""
    lat: list[float] = []
    time.sleep(max(0.0, start - time.time()))
    cpu0 = time.process_time()
    deadline = time.monotonic() + seconds
    try:
        with socket.create_connection((HOST, port), 5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            engine = handshake(sock, profile)
            buf = bytearray()
            n = 0
            while (t0 := time.monotonic()) < deadline:
                n += 1
                engine.send(request_bytes(f"bench-{index}-{n:09d}"))
                sock.sendall(engine.data_to_send())
                head = read_response(sock, engine, buf)
                lat.append(time.monotonic() - t0)
                if head.startswith(b"HTTP/1.1 200") and b"\r\nx-m2m-rsc: 2000" in head.lower():
                    ops += 1
                else:
                    errors += 1
                    first_error = first_error or head.split(b"\r\n")[0].decode(errors="replace")
            engine.close()
            sock.sendall(engine.data_to_send())
    except (OSError, RuntimeError) as exc:
        errors += 1
        first_error = first_error or repr(exc)
    results.put((ops, errors, first_error, time.process_time() - cpu0, lat))


@dataclass
class Result:
    target: str
    rps: float
    errors: int
    srv_cores: float
    srv_ms: float
    cli_cores: float
    bk_cores: float
    machine: float
    p50_ms: float
    p99_ms: float
    first_error: str


def measure(target: Target, workers: int, seconds: float, backend_pid: int,
            fresh: bool = False) -> Result:
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    start = time.time() + 0.5
    run = fresh_worker if fresh else worker
    procs = [ctx.Process(target=run, args=(i, target.port, start, seconds, results))
             for i in range(workers)]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.time()))
    cpu0 = cpu_seconds(target.pids)
    bk0 = cpu_seconds([backend_pid])
    busy0, all0 = machine_busy()
    t0 = time.monotonic()
    out = [results.get(timeout=seconds + 30) for _ in procs]
    wall = max(time.monotonic() - t0, seconds)
    srv = cpu_seconds(target.pids) - cpu0
    bk = cpu_seconds([backend_pid]) - bk0
    busy1, all1 = machine_busy()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    ops = sum(o[0] for o in out)
    lat = sorted(x for o in out for x in o[4]) or [0.0]
    return Result(
        target=target.name,
        rps=ops / seconds,
        errors=sum(o[1] for o in out),
        srv_cores=srv / wall,
        srv_ms=1000 * srv / ops if ops else float("nan"),
        cli_cores=sum(o[3] for o in out) / seconds,
        bk_cores=bk / wall,
        machine=(busy1 - busy0) / max(1, all1 - all0),
        p50_ms=1000 * statistics.median(lat),
        p99_ms=1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        first_error=next((o[2] for o in out if o[2]), ""),
    )


def print_table(rows: list[Result]) -> None:
    head = (f"{'target':<10}{'req/s':>9}{'errors':>7}{'srv-cpu':>9}{'srv ms/req':>11}"
            f"{'cli-cpu':>9}{'bk-cpu':>8}{'busy':>6}{'p50 ms':>8}{'p99 ms':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.target:<10}{r.rps:>9.0f}{r.errors:>7}{r.srv_cores:>9.2f}{r.srv_ms:>11.3f}"
              f"{r.cli_cores:>9.2f}{r.bk_cores:>8.2f}{100 * r.machine:>5.0f}%"
              f"{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}")
    for r in rows:
        if r.first_error:
            print(f"  {r.target}: first error {r.first_error}")
    by = {r.target: r for r in rows}
    if "gateway" in by and "stunnel" in by and by["stunnel"].rps:
        g, s = by["gateway"], by["stunnel"]
        print("\nratio ours/stunnel (rate: higher is better for ours; CPU per request: lower is)")
        print(f"  rate x{g.rps / s.rps:.2f}   CPU/req x{g.srv_ms / s.srv_ms:.2f}   "
              f"p50 latency x{g.p50_ms / s.p50_ms:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeat, targets interleaved; report the median round")
    parser.add_argument("--workers", type=int, default=4, help="load generator processes")
    parser.add_argument("--no-stunnel", action="store_true")
    parser.add_argument("--uvloop", action="store_true",
                        help="run the gateway on uvloop, as `m2msec gateway` does when installed")
    parser.add_argument("--backend-close", action="store_true",
                        help="backend answers Connection: close (as ACME); implies --no-stunnel")
    parser.add_argument("--fresh", action="store_true",
                        help="a new association per request (handshake + one RETRIEVE + close)")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="cProfile the gateway process to PREFIX.<pid> and print the top")
    args = parser.parse_args()
    if not 0 < args.seconds <= 120:
        parser.error("--seconds must be in (0, 120]")
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be 1 to 10")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be 1 to 64")

    print(f"machine: {os.cpu_count()} CPUs, {platform_line()}")
    pattern = ("a fresh TLS 1.2 PSK-AES128-CBC-SHA256 association per request (full handshake,"
               " one RETRIEVE, close)" if args.fresh else
               "one persistent TLS 1.2 PSK-AES128-CBC-SHA256 association each")
    print(f"load: {args.workers} worker processes, {pattern}, {args.seconds:g} s per "
          "measurement, loopback\n")
    rows: list[Result] = []
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="m2msec-bench-gw-") as tmpdir:
        tmp = Path(tmpdir)
        store_path = str(tmp / "psk.db")
        with SqlitePskStore(store_path) as store:
            store.add(PskEntry(KPSA_ID, KPSA_TEXT.encode(), ENTITY))
        backend_port = free_port()
        ready = ctx.Event()
        backend = ctx.Process(target=run_backend, args=(backend_port, ready, args.backend_close),
                              daemon=True)
        backend.start()
        try:
            if not ready.wait(30):
                raise RuntimeError("backend did not start")
            targets: list[Callable[[], contextlib.AbstractContextManager[Target]]] = [
                lambda: gateway(backend_port, store_path, args.profile, args.uvloop)
            ]
            if not (args.no_stunnel or args.backend_close):
                targets.append(lambda: stunnel(tmp, backend_port))
            for rnd in range(1, args.rounds + 1):
                for make in targets:
                    with make() as target:
                        log(f"[round {rnd}/{args.rounds}] {target.name} for {args.seconds:g} s ...")
                        r = measure(target, args.workers, args.seconds, backend.pid or 0,
                                    args.fresh)
                        log(f"    {r.rps:.0f} req/s, {r.errors} errors, "
                            f"{r.srv_ms:.3f} srv ms/req, machine {100 * r.machine:.0f}% busy")
                        rows.append(r)
        finally:
            backend.terminate()
            backend.join(5)
            if backend.is_alive():
                backend.kill()
    medians = []
    for name in dict.fromkeys(r.target for r in rows):
        group = sorted((r for r in rows if r.target == name), key=lambda r: r.rps)
        medians.append(group[len(group) // 2])
    if args.rounds > 1:
        print(f"median round of {args.rounds} (targets interleaved in each round)")
    print_table(medians)
    if args.profile:
        print_profile(args.profile)


if __name__ == "__main__":
    main()
