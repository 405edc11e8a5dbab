"""TLS-PSK handshakes and forwarded round trips per second: our responder against stunnel.

Targets, all on 127.0.0.1, each fronting the same plain TCP echo backend (its own process):

* ``ours-1p`` / ``ours-2p``: ``TLSServer`` + ``PskResponder`` over a SQLite psk-lookup-table
  (the TR-0038 row and a 30-octet row), in 1 or 2 worker processes sharing the port
  through SO_REUSEPORT. Each association is forwarded to the backend, as stunnel does.
* ``stunnel``: stunnel as a TLS-PSK server (``PSKsecrets``, ``ciphers =
  PSK-AES128-CBC-SHA256``, TLS 1.2 only), ``connect`` to the backend, its own threads.

One load generator for every target: ``--clients`` processes, each running blocking
handshakes with our engine (PskInitiator profile, TLSEngine pumped over a plain socket).
Measurements, each ``--seconds`` long:

* ``handshake``: full TLS 1.2 PSK-AES128-CBC-SHA256 handshakes (new TCP connection, no
  resumption, close_notify, close); optionally TLS 1.3 (``--tls13``).
* ``rtt``: one persistent association per client process, then 64-octet requests each
  waiting for its echo from the backend.

Besides operations per second it reports the CPU the target used (``srv-cpu``, in cores;
our processes or stunnel, the backend not included) and the target's CPU time per
operation, which stays meaningful when the shared cores, not the target, limit the rate.

    python bench/bench_handshakes.py --seconds 5
    python bench/bench_handshakes.py --seconds 3 --tls13 --profile /tmp/ours.prof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import multiprocessing as mp
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from m2msec.frameworks.provisioned import PskInitiator, PskResponder
from m2msec.store import PskEntry, SqlitePskStore
from m2msec.tls.aio import TLSConnection, TLSServer
from m2msec.tls.engine import HandshakeComplete, HandshakeFailed, TLSEngine

HOST = "127.0.0.1"
SERVER_ID = "/mn-cse-123456"
SNI = "mn-cse-123456.in.provider.com"
TR0038 = ("AE123456789012-Light@in.provider.com", bytes.fromhex("1a2b3c4d5e6f7a8b"), "Clight-AE1")
# stunnel reads the key as the text after the colon and wants at least 16 octets.
KPSA_ID = "AE123456789012-Bench@in.provider.com"
KPSA_TEXT = "oneM2M-bench-Kpsa-0123456789ab"
ENTITY = "Clight-AE2"
PAYLOAD = 64
TICK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout}s")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def cpu_seconds(pids: list[int], *, kernel_only: bool = False) -> float:
    """utime + stime of processes (all their threads), from /proc; stime alone with
    ``kernel_only``."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[12]) + (0 if kernel_only else int(fields[11]))
    return total / TICK


# -- the backend -------------------------------------------------------------------------


def run_backend(port: int, ready: MpEvent) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(echo, HOST, port, backlog=4096)
        ready.set()
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())


# -- our responder -----------------------------------------------------------------------


def run_ours(port: int, backend: int, store_path: str, ready: MpEvent, stop: MpEvent,
             profile_to: str | None, use_uvloop: bool) -> None:
    async def forward(conn: TLSConnection) -> None:
        reader, writer = await asyncio.open_connection(HOST, backend)

        async def up() -> None:
            while data := await conn.recv():
                writer.write(data)
                await writer.drain()

        async def down() -> None:
            while data := await reader.read(65536):
                await conn.send(data)

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()

    async def main() -> None:
        store = SqlitePskStore(store_path)
        profile = PskResponder(store, local_id=SERVER_ID).profile(tls13=True)
        server = TLSServer(profile, forward, max_handshakes=4096)
        await server.start(HOST, port, reuse_port=True, backlog=4096)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await server.close()
        store.close()

    prof = cProfile.Profile() if profile_to else None
    if prof:
        prof.enable()
    if use_uvloop:
        import uvloop

        _accept_uvloop_transports()
        uvloop.run(main())
    else:
        asyncio.run(main())
    if prof and profile_to:
        prof.disable()
        prof.dump_stats(f"{profile_to}.{os.getpid()}")


def _accept_uvloop_transports() -> None:
    """Bench-only workaround: aio's connection_made asserts an asyncio.Transport, which
    uvloop's TCPTransport is not (a subclass in spirit only). Same body, no assert."""
    from m2msec.tls import aio

    def connection_made(self: Any, transport: Any) -> None:
        self._transport = transport
        self.peer = transport.get_extra_info("peername")
        self._timer = asyncio.get_running_loop().call_later(
            self._timeout, self._handshake_timed_out
        )
        self.engine.start()
        self._flush()

    aio._TLSProtocol.connection_made = connection_made  # type: ignore[method-assign]


@dataclass
class Target:
    name: str
    port: int
    pids: list[int]
    stop: Callable[[], None]


@contextlib.contextmanager
def ours(nproc: int, backend: int, store_path: str, profile_to: str | None,
         use_uvloop: bool = False) -> Iterator[Target]:
    ctx = mp.get_context("spawn")
    port = free_port()
    stop = ctx.Event()
    procs = []
    try:
        for _ in range(nproc):
            ready = ctx.Event()
            p = ctx.Process(target=run_ours, args=(port, backend, store_path, ready, stop,
                                                   profile_to, use_uvloop), daemon=True)
            p.start()
            procs.append(p)
            if not ready.wait(30):
                raise RuntimeError("our server did not start")
        name = f"ours-{nproc}p" + ("-uv" if use_uvloop else "")
        yield Target(name, port, [p.pid for p in procs if p.pid], stop.set)
    finally:
        stop.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


@contextlib.contextmanager
def stunnel(
    tmp: Path, backend: int, tls13: bool, *, identity: str = KPSA_ID, key_text: str = KPSA_TEXT
) -> Iterator[Target]:
    """stunnel as a TLS-PSK server for ``identity``/``key_text`` in front of ``backend``."""
    exe = shutil.which("stunnel") or shutil.which("stunnel4")
    if exe is None:
        raise SystemExit("stunnel is not installed (apt-get install stunnel4), or use --no-stunnel")
    port = free_port()
    secrets = tmp / "psk.secrets"
    secrets.write_text(f"{identity}:{key_text}\n")
    secrets.chmod(0o600)
    version = "TLSv1.3" if tls13 else "TLSv1.2"
    conf = tmp / f"stunnel-{version}.conf"
    conf.write_text("\n".join([
        "foreground = yes",
        f"pid = {tmp / 'stunnel.pid'}",
        "debug = 3",
        "[psk]",
        f"accept = {HOST}:{port}",
        f"connect = {HOST}:{backend}",
        f"PSKsecrets = {secrets}",
        "ciphers = PSK-AES128-CBC-SHA256",
        "ciphersuites = TLS_AES_128_GCM_SHA256",
        f"sslVersionMin = {version}",
        f"sslVersionMax = {version}",
        "",
    ]))
    proc = subprocess.Popen([exe, str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        yield Target("stunnel", port, [proc.pid], proc.terminate)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- the load generator ------------------------------------------------------------------


def handshake(sock: socket.socket, profile: Any) -> TLSEngine:
    engine = TLSEngine(profile)
    engine.start()
    sock.sendall(engine.data_to_send())
    while True:
        data = sock.recv(65536)
        engine.receive_data(data)
        out = engine.data_to_send()
        if out:
            sock.sendall(out)
        for event in engine.events():
            if isinstance(event, HandshakeComplete):
                return engine
            if isinstance(event, HandshakeFailed):
                raise RuntimeError(event.reason)
        if not data:
            raise RuntimeError("server closed during the handshake")


def client(port: int, mode: str, tls13: bool, start: float, seconds: float,
           results: Any) -> None:
    profile = PskInitiator(KPSA_ID, KPSA_TEXT.encode(), SERVER_ID, server_name=SNI).profile(
        tls13=tls13
    )
    ops = errors = 0
    first_error = ""
    lat: list[float] = []
    time.sleep(max(0.0, start - time.time()))
    cpu0 = time.process_time()
    deadline = time.monotonic() + seconds
    if mode == "handshake":
        while (t0 := time.monotonic()) < deadline:
            try:
                with socket.create_connection((HOST, port), 5) as sock:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    engine = handshake(sock, profile)
                    lat.append(time.monotonic() - t0)
                    ops += 1
                    engine.close()
                    sock.sendall(engine.data_to_send())
            except (OSError, RuntimeError) as exc:
                errors += 1
                first_error = first_error or repr(exc)
    else:
        request = os.urandom(PAYLOAD)
        try:
            with socket.create_connection((HOST, port), 5) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                engine = handshake(sock, profile)
                while (t0 := time.monotonic()) < deadline:
                    engine.send(request)
                    sock.sendall(engine.data_to_send())
                    got = 0
                    while got < PAYLOAD:
                        data = sock.recv(65536)
                        if not data:
                            raise RuntimeError("connection closed")
                        engine.receive_data(data)
                        for event in engine.events():
                            got += len(getattr(event, "data", b""))
                    lat.append(time.monotonic() - t0)
                    ops += 1
                engine.close()
                sock.sendall(engine.data_to_send())
        except (OSError, RuntimeError) as exc:
            errors += 1
            first_error = repr(exc)
    results.put((ops, errors, first_error, time.process_time() - cpu0, lat))


@dataclass
class Result:
    target: str
    mode: str
    ops_per_s: float
    errors: int
    srv_cores: float
    srv_ms_per_op: float
    cli_cores: float
    bk_cores: float
    machine: float
    p50_ms: float
    p99_ms: float
    first_error: str


def measure(target: Target, mode: str, tls13: bool, clients: int, seconds: float,
            backend_pid: int) -> Result:
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=client, args=(target.port, mode, tls13, start, seconds, results))
             for _ in range(clients)]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.time()))
    cpu0 = cpu_seconds(target.pids)
    bk0 = cpu_seconds([backend_pid])
    busy0, all0 = machine_busy()
    t0 = time.monotonic()
    out = [results.get(timeout=seconds + 30) for _ in procs]
    wall = time.monotonic() - t0
    srv_cpu = cpu_seconds(target.pids) - cpu0
    bk_cpu = cpu_seconds([backend_pid]) - bk0
    busy1, all1 = machine_busy()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    ops = sum(o[0] for o in out)
    lat = sorted(x for o in out for x in o[4]) or [0.0]
    wall = max(wall, seconds)
    return Result(
        target=target.name,
        mode=mode + (" tls1.3" if tls13 else " tls1.2"),
        ops_per_s=ops / seconds,
        errors=sum(o[1] for o in out),
        srv_cores=srv_cpu / wall,
        srv_ms_per_op=1000 * srv_cpu / ops if ops else float("nan"),
        cli_cores=sum(o[3] for o in out) / seconds,
        bk_cores=bk_cpu / wall,
        machine=(busy1 - busy0) / max(1, all1 - all0),
        p50_ms=1000 * statistics.median(lat),
        p99_ms=1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        first_error=next((o[2] for o in out if o[2]), ""),
    )


def median_rows(rows: list[Result]) -> list[Result]:
    """Per (measurement, target), the round with the median rate."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in rows:
        groups.setdefault((r.mode, r.target), []).append(r)
    out = []
    for group in groups.values():
        group.sort(key=lambda r: r.ops_per_s)
        out.append(group[len(group) // 2])
    return out


def print_table(rows: list[Result]) -> None:
    head = (f"{'measurement':<17}{'target':<11}{'ops/s':>9}{'errors':>7}{'srv-cpu':>9}"
            f"{'srv ms/op':>10}{'cli-cpu':>9}{'bk-cpu':>8}{'busy':>6}{'p50 ms':>8}{'p99 ms':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.mode:<17}{r.target:<11}{r.ops_per_s:>9.0f}{r.errors:>7}{r.srv_cores:>9.2f}"
              f"{r.srv_ms_per_op:>10.3f}{r.cli_cores:>9.2f}{r.bk_cores:>8.2f}"
              f"{100 * r.machine:>5.0f}%{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}")
    for r in rows:
        if r.first_error:
            print(f"  {r.target} {r.mode}: first error {r.first_error}")


def print_ratios(rows: list[Result]) -> None:
    by = {(r.mode, r.target): r for r in rows}
    print("\nratios ours/stunnel (rate: higher is better for ours; CPU per op: lower is)")
    for mode in dict.fromkeys(r.mode for r in rows):
        ref = by.get((mode, "stunnel"))
        if ref is None or not ref.ops_per_s:
            continue
        for name in sorted({r.target for r in rows if r.target.startswith("ours")}):
            r = by.get((mode, name))
            if r:
                print(f"  {mode:<17}{name:<11} rate x{r.ops_per_s / ref.ops_per_s:.2f}   "
                      f"CPU/op x{r.srv_ms_per_op / ref.srv_ms_per_op:.2f}")


def print_profile(prefix: str, top: int = 30) -> None:
    files = [str(p) for p in Path(prefix).parent.glob(Path(prefix).name + ".*")]
    if not files:
        return
    stats = pstats.Stats(*files)
    print(f"\nprofile of our server processes ({', '.join(files)}), by own time:")
    stats.sort_stats("tottime").print_stats(top)
    print("by cumulative time:")
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--clients", type=int, default=4, help="load generator processes")
    parser.add_argument("--procs", default="1,2", help="our server process counts to run")
    parser.add_argument("--tls13", action="store_true", help="also measure TLS 1.3")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat everything, targets interleaved; report medians")
    parser.add_argument("--no-stunnel", action="store_true")
    parser.add_argument("--uvloop", action="store_true",
                        help="also run our server on uvloop (pip install uvloop)")
    parser.add_argument("--only", choices=["handshake", "rtt"], help="one measurement kind")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="cProfile our server processes to PREFIX.<pid> and print the top")
    args = parser.parse_args()
    if not 0 < args.seconds <= 120:
        parser.error("--seconds must be in (0, 120]")
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be 1 to 10")
    modes = [args.only] if args.only else ["handshake", "rtt"]
    versions = [False, True] if args.tls13 else [False]
    nprocs = [int(n) for n in args.procs.split(",") if n]

    print(f"machine: {os.cpu_count()} CPUs, {platform_line()}")
    print(f"load: {args.clients} client processes, {args.seconds:g} s per measurement, "
          f"loopback, {PAYLOAD}-octet requests for rtt\n")
    rows: list[Result] = []
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="m2msec-bench-") as tmpdir:
        tmp = Path(tmpdir)
        store_path = tmp / "psk.db"
        with SqlitePskStore(store_path) as store:
            store.add_many([PskEntry(*TR0038), PskEntry(KPSA_ID, KPSA_TEXT.encode(), ENTITY)])
        backend_port = free_port()
        ready = ctx.Event()
        backend = ctx.Process(target=run_backend, args=(backend_port, ready), daemon=True)
        backend.start()
        try:
            if not ready.wait(30):
                raise RuntimeError("backend did not start")
            for rnd in range(1, args.rounds + 1):
                for tls13 in versions:
                    targets: list[Callable[[], contextlib.AbstractContextManager[Target]]] = [
                        (lambda n=n, uv=uv: ours(n, backend_port, str(store_path), args.profile,
                                                 uv))
                        for n in nprocs
                        for uv in ([False, True] if args.uvloop else [False])
                    ]
                    if not args.no_stunnel:
                        targets.append(lambda tls13=tls13: stunnel(tmp, backend_port, tls13))
                    for make in targets:
                        with make() as target:
                            for mode in modes:
                                log(f"[round {rnd}/{args.rounds}] {target.name} {mode} "
                                    f"tls1.{3 if tls13 else 2} for {args.seconds:g} s ...")
                                r = measure(target, mode, tls13, args.clients, args.seconds,
                                            backend.pid or 0)
                                log(f"    {r.ops_per_s:.0f} ops/s, {r.errors} errors, "
                                    f"machine {100 * r.machine:.0f}% busy")
                                rows.append(r)
        finally:
            backend.terminate()
            backend.join(5)
            if backend.is_alive():
                backend.kill()
    rows = median_rows(rows)
    rows.sort(key=lambda r: (r.mode.split()[1], r.mode))
    if args.rounds > 1:
        print(f"medians of {args.rounds} rounds (targets interleaved in each round)")
    print_table(rows)
    print_ratios(rows)
    if args.profile:
        print_profile(args.profile)


def platform_line() -> str:
    import platform

    import OpenSSL

    return (f"Python {platform.python_version()}, pyOpenSSL {OpenSSL.__version__}, "
            f"{OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode()}")


if __name__ == "__main__":
    main()
