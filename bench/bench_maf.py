"""MAF benchmarks: Kc issuance against bare TLS-PSK handshakes, and Kc retrieval latency.

Issue 4, part 8. Everything runs on 127.0.0.1:

* one server process runs :class:`m2msec.servers.maf.MafServer` (its client listener, the
  MAF Handshake of TS-0003 8.8.2.2, and its retrieval listener, 8.8.2.8) and, on a third
  port, a bare ``TLSServer`` with **the same** TLS profile (same PSK suites, same KmId -> Km
  resolver over the same MAF store) whose handler just closes the session;
* optionally ``openssl s_server -nocert -psk ...`` with the same KmId and Km;
* ``--clients`` load-generator processes (our TLS engine over blocking sockets, the same
  code for every target).

Measurements, interleaved within each of ``--rounds`` rounds, ``--seconds`` each:

* ``issue``: full Kc issuance as Entity A does it: TCP connect, MAF Handshake (TLS-PSK,
  KmId/Km), ``POST /maf/keys`` without keyValue (Key Registration, 8.8.2.7), the MAF exports
  Kc/KcID, seals Kc and commits it with its audit record (group commit; fsynced with
  ``--durability full``) before it answers 2001; the client exports too and checks that
  relativeKeyID == hex(KcID); close. The client's HTTP is a fixed request and a minimal
  reader, so that its CPU (which shares the cores with the server) stays close to the bare
  client's.
* ``bare``: TCP connect, the same TLS-PSK handshake against the bare TLSServer, close.
* ``s_server``: the same handshake against openssl s_server (one connection at a time).

Then Key Retrieval: ``--keys`` live keys (default 100,000) are written to the store in
bulk, and one Entity B (an IN-CSE certificate from a fresh ``m2msec ca``) sends
``GET /maf/keys/{relativeKeyID}`` for random keys over one persistent mutual-TLS
connection, one at a time; p50/p99/p99.9 latency of the whole round trip, each answer
checked against the key value written.

    python bench/bench_maf.py                       # TLS 1.2, 4 clients, 5 s x 3 rounds
    python bench/bench_maf.py --tls13 --no-openssl --keys 20000 --seconds 3
    python bench/bench_maf.py --durability full --clients 16
    python bench/bench_maf.py --only-issue --profile /tmp/maf.prof   # cProfile the server

Output: a line per round and target on stderr (with the kernel's part of the server's
CPU), then the medians (ops/s, errors, server and client CPU per operation, p50/p99), the
ratio issuance / bare of the rates and of the server's CPU per operation, and the
retrieval latency. ``--only-issue`` / ``--only-bare`` measure one target (with
``--profile``, to profile one path).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import h11

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_handshakes import cpu_seconds, free_port, handshake, log, wait_port

from m2msec.crypto.keyexport import LABEL_CONNECTION, split_export
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.maf.store import MafStore, NewKey
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.engine import DataReceived, TLSEngine
from m2msec.tls.profiles import PSK_SUITES_TLS, TLSProfile, Transport, new_context

HOST = "127.0.0.1"
FQDN = "maf.in.provider.com"
IN_DOMAIN = "in.provider.com"
KM_ID = "bench-ae1@maf.in.provider.com"
KM = bytes.fromhex("6f6e654d324d2d62656e63682d4b6d2d303132333435363738396162636465ff")
ENTITY_B = "//in.provider.com/in-cse"


def m2m_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


# -- the server process ------------------------------------------------------------------


def run_server(
    tmp: str,
    ports: tuple[int, int, int],
    ready: MpEvent,
    stop: MpEvent,
    uv: bool,
    tls13: bool,
    profile_to: str | None = None,
    durability: str = "normal",
) -> None:
    from m2msec.config.maf import MafConfig
    from m2msec.servers.maf import MafServer
    from m2msec.tls.aio import TLSConnection, TLSServer

    async def main() -> None:
        d = Path(tmp)
        cfg = MafConfig(
            FQDN,
            store=str(d / "maf.db"),
            listen=f"tls://{HOST}:{ports[0]}",
            retrieval_listen=f"tls://{HOST}:{ports[1]}",
            cert=d / "maf.pem",
            key=d / "maf.key",
            ca=d / "ca.pem",
            in_domain=IN_DOMAIN,
            tls13=tls13,
            max_handshakes=4096,
            durability=durability,
        )
        async with MafServer(cfg) as maf:

            async def bare(conn: TLSConnection) -> None:
                return  # TLSServer sends close_notify and closes

            server = TLSServer(maf._client_profile(), bare, max_handshakes=4096)
            await server.start(HOST, ports[2], backlog=4096)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.1)
            await server.close()
            batches, jobs = maf.journal_batches
            print(json.dumps({"batches": batches, "jobs": jobs, **maf.stats.as_dict()}), flush=True)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    prof = None
    if profile_to:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    if uv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    if prof is not None and profile_to:
        prof.disable()
        prof.dump_stats(profile_to)


# -- the load generator ------------------------------------------------------------------


def entity_a_profile(tls13: bool) -> TLSProfile:
    ctx = new_context(Transport.TLS, server_side=False, suites=PSK_SUITES_TLS, tls13=tls13)
    binding = PeerBinding(FQDN, PeerKind.SERVICE, key_id=KM_ID)
    return TLSProfile(
        framework=Framework.MAF,
        transport=Transport.TLS,
        server_side=False,
        ssl_context=ctx,
        psk_offer=lambda _hint: (KM_ID.encode(), KM, binding),
        server_name=FQDN,
    )


def http_exchange(
    sock: socket.socket,
    engine: TLSEngine,
    conn: h11.Connection,
    method: str,
    target: str,
    body: bytes = b"",
) -> tuple[int, bytes]:
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
    headers = [
        ("Host", FQDN),
        ("X-M2M-Origin", "bench"),
        ("X-M2M-RI", "r1"),
        ("Content-Length", str(len(body))),
    ]
    if body:
        headers.append(("Content-Type", "application/json"))
    out = conn.send(h11.Request(method=method, target=target, headers=headers))
    if body:
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    engine.send(out)
    sock.sendall(engine.data_to_send())
    status = 0
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("connection closed before the answer")
            engine.receive_data(data)
            extra = engine.data_to_send()
            if extra:
                sock.sendall(extra)
            for ev in engine.events():
                if isinstance(ev, DataReceived):
                    conn.receive_data(ev.data)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return status, b"".join(chunks)


def simple_exchange(sock: socket.socket, engine: TLSEngine, request: bytes) -> bytes:
    """Send ``request``; return the whole answer (head and Content-Length body)."""
    engine.send(request)
    sock.sendall(engine.data_to_send())
    got = b""
    need = -1
    while need < 0 or len(got) < need:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"connection closed before the answer: {got[:200]!r}")
        engine.receive_data(data)
        for ev in engine.events():
            if isinstance(ev, DataReceived):
                got += ev.data
        if need < 0 and b"\r\n\r\n" in got:
            head = got.split(b"\r\n\r\n", 1)[0]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            need = len(head) + 4 + length
    return got


def client(port: int, mode: str, tls13: bool, start: float, seconds: float, results: Any) -> None:
    profile = entity_a_profile(tls13)
    ops = errors = 0
    first_error = ""
    lat: list[float] = []
    body = json.dumps(
        {
            "mafKeyReg": {
                "mafFQDN": FQDN,
                "expirationTime": m2m_time(datetime.now(UTC) + timedelta(hours=1)),
                "adminFQDN": "admin.in.provider.com",
                "SUID": 32,
                "targetIDs": [ENTITY_B],
            }
        }
    ).encode()
    # The load generator's HTTP is minimal on purpose (a fixed request, the answer checked
    # by its status line and relativeKeyID): its CPU competes with the server's on the
    # same cores and should stay close to that of the bare-handshake client.
    request = (
        f"POST /maf/keys HTTP/1.1\r\nHost: {FQDN}\r\nX-M2M-Origin: bench\r\n"
        f"X-M2M-RI: r1\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    time.sleep(max(0.0, start - time.time()))
    cpu0 = time.process_time()
    deadline = time.monotonic() + seconds
    while (t0 := time.monotonic()) < deadline:
        try:
            with socket.create_connection((HOST, port), 5) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                engine = handshake(sock, profile)
                if mode == "issue":
                    answer = simple_exchange(sock, engine, request)
                    if not answer.startswith(b"HTTP/1.1 201 "):
                        raise RuntimeError(f"Key Registration answered {answer[:200]!r}")
                    rel, _kc = split_export(engine.export_keying_material(LABEL_CONNECTION, 48))
                    if b'"relativeKeyID":"' + rel.hex().encode() + b'"' not in answer:
                        raise RuntimeError("relativeKeyID differs from the exported KcID")
                lat.append(time.monotonic() - t0)
                ops += 1
                engine.close()
                with contextlib.suppress(OSError):
                    sock.sendall(engine.data_to_send())
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            errors += 1
            first_error = first_error or repr(exc)
    results.put((ops, errors, first_error, lat, time.process_time() - cpu0))


@dataclass
class Result:
    target: str
    ops_per_s: float
    errors: int
    srv_ms_per_op: float
    srv_sys_ms_per_op: float  # the kernel's part of srv_ms_per_op
    cli_ms_per_op: float
    p50_ms: float
    p99_ms: float
    first_error: str


def measure(name: str, port: int, pids: list[int], mode: str, args: argparse.Namespace) -> Result:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start = time.time() + 1.0
    procs = [
        ctx.Process(target=client, args=(port, mode, args.tls13, start, args.seconds, results))
        for _ in range(args.clients)
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.time()))
    cpu0, sys0 = cpu_seconds(pids), cpu_seconds(pids, kernel_only=True)
    out = [results.get(timeout=args.seconds + 60) for _ in procs]
    cpu = cpu_seconds(pids) - cpu0
    sys_ = cpu_seconds(pids, kernel_only=True) - sys0
    for p in procs:
        p.join(10)
    ops = sum(o[0] for o in out)
    errors = sum(o[1] for o in out)
    first = next((o[2] for o in out if o[2]), "")
    lat = sorted(x for o in out for x in o[3])
    p50 = lat[len(lat) // 2] * 1e3 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else float("nan")
    cli = sum(o[4] for o in out) / max(ops, 1) * 1e3
    return Result(
        name,
        ops / args.seconds,
        errors,
        cpu / max(ops, 1) * 1e3,
        sys_ / max(ops, 1) * 1e3,
        cli,
        p50,
        p99,
        first,
    )


# -- Key Retrieval -----------------------------------------------------------------------


def populate(store_path: Path, n: int) -> list[tuple[str, bytes]]:
    """Write ``n`` live keys for ENTITY_B straight into the store; return (id, Kc) pairs."""
    rng = random.Random(4)
    expires = datetime.now(UTC) + timedelta(hours=6)
    keys = [
        NewKey(
            rng.randbytes(16),
            rng.randbytes(32),
            expires,
            KM_ID.lower(),
            32,
            (ENTITY_B,),
            "admin.in.provider.com",
        )
        for _ in range(n)
    ]
    t0 = time.monotonic()
    with MafStore(store_path) as store:
        for i in range(0, n, 20_000):
            store.register_keys(keys[i : i + 20_000])
        total = store.count_keys()
    log(f"populated {n} keys in {time.monotonic() - t0:.1f} s ({total} rows in the store)")
    return [(k.relative_hex, k.kc) for k in keys]


def retrieval_latency(
    tmp: Path, port: int, keys: list[tuple[str, bytes]], count: int
) -> tuple[list[float], int]:
    cred = CertificateCredential(
        (tmp / "in-cse.pem").read_bytes(),
        (tmp / "in-cse.key").read_bytes(),
        (tmp / "ca.pem").read_bytes(),
    )
    profile = CertificateInitiator.for_service(cred, FQDN, in_domain=IN_DOMAIN).profile()
    rng = random.Random(8)
    lat: list[float] = []
    bad = 0
    with socket.create_connection((HOST, port), 5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        engine = handshake(sock, profile)
        conn = h11.Connection(h11.CLIENT)
        for i in range(count + 200):
            rel, kc = keys[rng.randrange(len(keys))]
            t0 = time.perf_counter()
            status, body = http_exchange(sock, engine, conn, "GET", f"/maf/keys/{rel}")
            dt = time.perf_counter() - t0
            if status != 200 or json.loads(body)["mafKey"]["keyValue"] != kc.hex():
                bad += 1
            if i >= 200:  # warm-up
                lat.append(dt)
    return lat, bad


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e3


# -- main --------------------------------------------------------------------------------


def prepare(tmp: Path) -> None:
    from m2msec.pki.authority import CertificateAuthority, write_credential

    ca = CertificateAuthority.init(tmp / "ca", domain=IN_DOMAIN)
    shutil.copy(ca.cert_path, tmp / "ca.pem")
    write_credential(ca.issue_service(FQDN), tmp / "maf")
    write_credential(ca.issue("/in-cse"), tmp / "in-cse")
    with MafStore(tmp / "maf.db") as store:
        store.add_client(KM_ID, KM, "Cbench-ae1")
        store.add_entity_b(ENTITY_B)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tls13", action="store_true", help="TLS 1.3 instead of 1.2")
    ap.add_argument("--asyncio", action="store_true", help="asyncio's loop, not uvloop")
    ap.add_argument("--no-openssl", action="store_true", help="skip openssl s_server")
    ap.add_argument("--keys", type=int, default=100_000, help="live keys for Key Retrieval")
    ap.add_argument("--retrievals", type=int, default=5000)
    ap.add_argument(
        "--durability",
        choices=("full", "normal"),
        default="normal",
        help="the MAF's durability (default: normal, the MAF's default)",
    )
    ap.add_argument("--only-issue", action="store_true", help="measure Kc issuance only")
    ap.add_argument("--only-bare", action="store_true", help="measure bare handshakes only")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the MAF server into FILE")
    args = ap.parse_args()
    args.seconds = min(max(args.seconds, 0.5), 120)

    with tempfile.TemporaryDirectory(prefix="bench-maf-") as name:
        tmp = Path(name)
        os.environ["M2MSEC_HOME"] = str(tmp / "home")
        os.environ.pop("M2MSEC_KEK", None)
        prepare(tmp)
        ctx = mp.get_context("spawn")
        ports = (free_port(), free_port(), free_port())
        ready, stop = ctx.Event(), ctx.Event()
        server = ctx.Process(
            target=run_server,
            args=(
                str(tmp),
                ports,
                ready,
                stop,
                not args.asyncio,
                args.tls13,
                args.profile,
                args.durability,
            ),
        )
        server.start()
        openssl: subprocess.Popen[bytes] | None = None
        try:
            if not ready.wait(60):
                raise SystemExit("the MAF server did not start")
            assert server.pid is not None
            log(f"MAF server process {server.pid}")
            targets: list[tuple[str, int, list[int], str]] = []
            if not args.only_bare:
                targets.append(("maf issue", ports[0], [server.pid], "issue"))
            if not args.only_issue:
                targets.append(("bare ours", ports[2], [server.pid], "bare"))
            if not args.no_openssl and not (args.only_issue or args.only_bare):
                sport = free_port()
                version = "-tls1_3" if args.tls13 else "-tls1_2"
                openssl = subprocess.Popen(
                    [
                        "openssl",
                        "s_server",
                        "-accept",
                        f"{HOST}:{sport}",
                        "-nocert",
                        version,
                        "-psk_identity",
                        KM_ID,
                        "-psk",
                        KM.hex(),
                        "-quiet",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                wait_port(sport, timeout=20.0)
                targets.append(("openssl s_server", sport, [openssl.pid], "bare"))
            proto = "TLS 1.3" if args.tls13 else "TLS 1.2"
            loop = "asyncio" if args.asyncio else "uvloop"
            log(
                f"{proto}, {args.clients} clients, {args.seconds:g} s x {args.rounds} rounds, "
                f"MAF on {loop}"
            )
            rows: dict[str, list[Result]] = {t[0]: [] for t in targets}
            for rnd in range(args.rounds):
                order = targets if rnd % 2 == 0 else list(reversed(targets))
                for name_, port, pids, mode in order:
                    r = measure(name_, port, pids, mode, args)
                    rows[name_].append(r)
                    log(
                        f"  round {rnd + 1} {name_:18} {r.ops_per_s:8.0f}/s errors={r.errors} "
                        f"srv {r.srv_ms_per_op:.2f} (sys {r.srv_sys_ms_per_op:.2f}) "
                        f"cli {r.cli_ms_per_op:.2f} ms/op "
                        f"p50 {r.p50_ms:.2f} ms "
                        f"{r.first_error[:80]}"
                    )
            print(
                f"\n{proto}, {args.clients} clients, {args.seconds:g} s x {args.rounds} "
                f"rounds (medians), MAF on {loop}"
            )
            print(
                f"{'target':20} {'ops/s':>8} {'errors':>7} {'srv ms/op':>10} "
                f"{'cli ms/op':>10} {'p50 ms':>8} {'p99 ms':>8}"
            )
            med: dict[str, float] = {}
            for name_, results in rows.items():
                med[name_] = statistics.median(r.ops_per_s for r in results)
                print(
                    f"{name_:20} {med[name_]:8.0f} {sum(r.errors for r in results):7d} "
                    f"{statistics.median(r.srv_ms_per_op for r in results):10.2f} "
                    f"{statistics.median(r.cli_ms_per_op for r in results):10.2f} "
                    f"{statistics.median(r.p50_ms for r in results):8.2f} "
                    f"{statistics.median(r.p99_ms for r in results):8.2f}"
                )
            if args.only_issue or args.only_bare:
                return
            ratio = med["maf issue"] / med["bare ours"]
            print(
                f"\nKc issuance / bare TLS-PSK handshakes (our TLSServer): {ratio:.2f}x "
                f"(goal >= 0.70x)"
            )
            # The load generator shares the cores with the server: the server's CPU per
            # operation is the steadier figure on a busy machine.
            cpu = {
                name_: statistics.median(r.srv_ms_per_op for r in results)
                for name_, results in rows.items()
            }
            print(
                f"server CPU per operation, bare / issuance (the rate the server alone "
                f"would allow): {cpu['bare ours'] / cpu['maf issue']:.2f}x"
            )
            if "openssl s_server" in med:
                print(
                    f"Kc issuance / openssl s_server handshakes: "
                    f"{med['maf issue'] / med['openssl s_server']:.2f}x"
                )

            # Key Retrieval with many live keys.
            keys = populate(tmp / "maf.db", args.keys)
            lat, bad = retrieval_latency(tmp, ports[1], keys, args.retrievals)
            print(
                f"\nKey Retrieval, {args.keys} live keys, one Entity B, {len(lat)} requests "
                f"on one mutual-TLS connection (durability {args.durability}): "
                f"p50 {percentile(lat, 0.5):.2f} ms, p99 {percentile(lat, 0.99):.2f} ms, "
                f"p99.9 {percentile(lat, 0.999):.2f} ms, wrong answers {bad}"
            )
        finally:
            stop.set()
            server.join(20)
            if server.is_alive():
                server.kill()
            if openssl is not None:
                openssl.terminate()
                openssl.wait(5)


if __name__ == "__main__":
    main()
