"""MEF benchmarks: enrolments against bare TLS-PSK handshakes, and fetchCredentials latency.

Issue 11, item 7. Everything runs on 127.0.0.1:

* one server process runs :class:`m2msec.servers.mef.MefServer` (its TLS-PSK Enrolee
  listener, the bootstrap of TS-0003 8.3.2.1 / seed 004, and its target listener,
  fetchCredentials over mutual TLS) and, on a third port, a bare ``TLSServer`` with **the
  same** profile (``MefServer.psk_profile``: the 10.2.2 suites, KpmID -> Kpm looked up in
  the same MEF store) whose handler just closes the session;
* ``--clients`` load-generator processes (our TLS engine over blocking sockets, the same
  code for both targets).

Measurements, interleaved within each of ``--rounds`` rounds, ``--seconds`` each:

* ``enrol``: a whole enrolment as an Enrolee does it: TCP connect, the bootstrap handshake
  (TLS-PSK, KpmID/Kpm), ``POST /mef/enrolment``; the MEF exports Ke/KeID (10.3.1, 10.3.4),
  seals Ke and commits it with its audit record (fsynced) before it answers 2001; the
  client exports too and checks that the KeID answered is hexBinary(RelativeKeID)@MEF-FQDN;
  close. The client's HTTP is a fixed request and a minimal reader (bench_maf.py's).
* ``bare``: TCP connect, the same TLS-PSK handshake against the bare TLSServer, close.

Then fetchCredentials: ``--enrolees`` live enrolments (default 100,000) are written to the
store in bulk (``MefStore.commit``, 20,000 a transaction), and one Enrolee B (an IN-CSE
certificate from a fresh ``m2msec ca``) sends ``GET /fetchCredentials/<KeID>/22`` for
random KeIDs over one persistent mutual-TLS connection, one at a time; p50/p99/p99.9 of
the whole round trip, each answer checked against the Kpsa derived from the Ke written.

    python bench/bench_mef.py                      # TLS 1.2, 4 clients, 5 s x 3 rounds
    python bench/bench_mef.py --tls13 --seconds 3
    python bench/bench_mef.py --quick              # a small run: 1 s x 1 round, 2,000 enrolees

Output: a line per round and target on stderr (with the server's kernel CPU per
operation), then the medians (ops/s, errors, server and client CPU per operation,
p50/p99), the ratio enrolments / bare handshakes of the rates (goal >= 0.70x, said plainly
when not met) and of the server's CPU per operation, the fetchCredentials latency, and on
stderr the group commit's enrolments per transaction.

The server logs as ``m2msec mef serve --log-level info`` (``--log-level``), to
``mef.log`` in the bench's temporary directory. ``--profile DIR`` runs ``py-spy record``
on the server during each measurement (collapsed stacks, ``DIR/enrol-tls12.txt`` etc.;
``BENCH_PYSPY_ARGS=--gil`` samples only the thread holding the GIL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_handshakes import cpu_seconds, free_port, handshake, log
from bench_maf import percentile, simple_exchange

from m2msec.crypto.keyexport import LABEL_BOOTSTRAP
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.frameworks.provisioned import psk_profile
from m2msec.keyids import KeId
from m2msec.mef.keys import EnrolmentKey, derive_for_target
from m2msec.mef.records import Bootstrap, Enrolee, Enrolment, EnrolmentTarget
from m2msec.mef.store import MefStore
from m2msec.tls.context import PeerBinding, PeerKind
from m2msec.tls.profiles import TLSProfile, Transport

HOST = "127.0.0.1"
FQDN = "mef.in.provider.com"
IN_DOMAIN = "in.provider.com"
KPM_ID = "bench-device@mef.in.provider.com"
KPM = bytes.fromhex("6f6e654d324d2d62656e63682d4b706d2d303132333435363738396162636465ff")
ENROLEE_ID = "/in-cse/Cbench-device"
TARGET = EnrolmentTarget.enrolee_b("/in-cse")
ENROLEE = Enrolee(Bootstrap.PSK, KPM_ID, ENROLEE_ID, TARGET, timedelta(days=1), KPM)


# -- the server process ------------------------------------------------------------------


def run_server(
    tmp: str,
    ports: tuple[int, int, int],
    ready: MpEvent,
    stop: MpEvent,
    uv: bool,
    tls13: bool,
    log_level: str,
) -> None:
    import logging

    from m2msec.cli.common import setup_logging
    from m2msec.config.mef import MefConfig
    from m2msec.servers.mef import MefServer
    from m2msec.tls.aio import TLSConnection, TLSServer

    async def main() -> None:
        d = Path(tmp)
        cfg = MefConfig(
            FQDN,
            str(d / "mef.db"),
            enrolee_listen=(f"tls://{HOST}:{ports[0]}",),
            target_listen=f"tls://{HOST}:{ports[1]}",
            cert=d / "mef.pem",
            key=d / "mef.key",
            ca=d / "ca.pem",
            in_domain=IN_DOMAIN,
            tls13=tls13,
            max_handshakes=4096,
        )
        async with MefServer(cfg) as mef:

            async def bare(conn: TLSConnection) -> None:
                return  # TLSServer sends close_notify and closes

            server = TLSServer(mef.psk_profile(Transport.TLS), bare, max_handshakes=4096)
            await server.start(HOST, ports[2], backlog=4096)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.1)
            await server.close()
            print(f"MEF stats: {dict(sorted(mef.stats.items()))}", file=sys.stderr, flush=True)
            commits = mef.commits
            print(
                f"group commit: {commits.items} enrolments in {commits.batches} transactions "
                f"({commits.items / max(commits.batches, 1):.2f} a transaction)",
                file=sys.stderr,
                flush=True,
            )

    # As `m2msec mef serve --log-level LEVEL` logs (to stderr there, to a file here).
    logging.basicConfig(
        filename=str(Path(tmp) / "mef.log"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    setup_logging(log_level)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if uv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


# -- the load generator ------------------------------------------------------------------


def enrolee_profile(tls13: bool) -> TLSProfile:
    """The Enrolee's side of the bootstrap handshake: psk_identity = KpmID, psk = Kpm."""
    binding = PeerBinding(peer_id=FQDN, kind=PeerKind.SERVICE, key_id=KPM_ID)
    start = psk_profile(Transport.TLS, server_side=False, tls13=tls13, local_id=KPM_ID)
    return replace(start, psk_offer=lambda _hint: (KPM_ID.encode(), KPM, binding), server_name=FQDN)


def client(port: int, mode: str, tls13: bool, start: float, seconds: float, results: Any) -> None:
    profile = enrolee_profile(tls13)
    ops = errors = 0
    first_error = ""
    lat: list[float] = []
    body = b'{"mefEnrolReq":{}}'
    request = (
        f"POST /mef/enrolment HTTP/1.1\r\nHost: {FQDN}\r\nX-M2M-Origin: Cbench-device\r\n"
        f"X-M2M-RI: e1\r\nContent-Type: application/json\r\nConnection: close\r\n"
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
                if mode == "enrol":
                    answer = simple_exchange(sock, engine, request)
                    if not answer.startswith(b"HTTP/1.1 201 "):
                        raise RuntimeError(f"Enrolment Exchange answered {answer[:200]!r}")
                    exported = engine.export_keying_material(LABEL_BOOTSTRAP, 48)
                    ke_id = EnrolmentKey.from_export(exported, FQDN).ke_id
                    if f'"keID":"{ke_id}"'.encode() not in answer:
                        raise RuntimeError("the KeID answered is not the exported one")
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
    srv_sys_ms_per_op: float
    cli_ms_per_op: float
    p50_ms: float
    p99_ms: float
    first_error: str


def profiler(pid: int, mode: str, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    """With ``--profile DIR``: py-spy samples the server (all threads, GIL holders and
    waiters alike, idle excluded) while ``mode`` is measured; collapsed stacks in DIR."""
    if args.profile is None:
        return None
    out = Path(args.profile) / f"{mode}-{'tls13' if args.tls13 else 'tls12'}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
    cmd += ["--duration", str(max(1, int(args.seconds))), "--nonblocking", "-o", str(out)]
    cmd += os.environ.get("BENCH_PYSPY_ARGS", "").split()  # e.g. "--gil" or "--native"
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(name: str, port: int, pid: int, mode: str, args: argparse.Namespace) -> Result:
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
    spy = profiler(pid, mode, args)
    cpu0, sys0 = cpu_seconds([pid]), cpu_seconds([pid], kernel_only=True)
    out = [results.get(timeout=args.seconds + 60) for _ in procs]
    cpu = cpu_seconds([pid]) - cpu0
    kernel = cpu_seconds([pid], kernel_only=True) - sys0
    if spy is not None:
        spy.wait(30)
    for p in procs:
        p.join(10)
    ops = sum(o[0] for o in out)
    lat = [x for o in out for x in o[3]]
    return Result(
        name,
        ops / args.seconds,
        sum(o[1] for o in out),
        cpu / max(ops, 1) * 1e3,
        kernel / max(ops, 1) * 1e3,
        sum(o[4] for o in out) / max(ops, 1) * 1e3,
        percentile(lat, 0.5) if lat else float("nan"),
        percentile(lat, 0.99) if lat else float("nan"),
        next((o[2] for o in out if o[2]), ""),
    )


# -- fetchCredentials --------------------------------------------------------------------


def populate(store_path: Path, n: int) -> list[tuple[KeId, bytes]]:
    """Write ``n`` live enrolments for TARGET straight into the store; (KeID, Kpsa) pairs."""
    rng = random.Random(4)
    now = datetime.now(UTC).replace(microsecond=0)
    expires = now + timedelta(hours=6)
    made = [
        Enrolment(
            KeId.from_relative(rng.randbytes(16), FQDN),
            rng.randbytes(32),
            ENROLEE_ID,
            TARGET,
            expires,
            now,
        )
        for _ in range(n)
    ]
    t0 = time.monotonic()
    with MefStore(store_path) as store:
        for i in range(0, n, 20_000):
            store.commit((e, ENROLEE) for e in made[i : i + 20_000])
        total = store.count_enrolments()
    log(f"populated {n} enrolments in {time.monotonic() - t0:.1f} s ({total} rows in the store)")
    return [(e.ke_id, derive_for_target(e.ke, "/in-cse", enrolee_b=True)) for e in made]


def fetch_latency(
    tmp: Path, port: int, keys: list[tuple[KeId, bytes]], count: int
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
        for i in range(count + 200):
            ke_id, kpsa = keys[rng.randrange(len(keys))]
            request = (
                f"GET /fetchCredentials/{ke_id}/22 HTTP/1.1\r\nHost: {FQDN}\r\n"
                f"X-M2M-Origin: /in-cse\r\nX-M2M-RI: f{i}\r\n\r\n"
            ).encode()
            t0 = time.perf_counter()
            answer = simple_exchange(sock, engine, request)
            dt = time.perf_counter() - t0
            if not answer.startswith(b"HTTP/1.1 200 ") or kpsa.hex().encode() not in answer:
                bad += 1
            if i >= 200:  # warm-up
                lat.append(dt)
    return lat, bad


# -- main --------------------------------------------------------------------------------


def prepare(tmp: Path) -> None:
    from m2msec.pki.authority import CertificateAuthority, write_credential

    ca = CertificateAuthority.init(tmp / "ca", domain=IN_DOMAIN)
    shutil.copy(ca.cert_path, tmp / "ca.pem")
    write_credential(ca.issue_service(FQDN), tmp / "mef")
    write_credential(ca.issue("/in-cse"), tmp / "in-cse")
    with MefStore(tmp / "mef.db") as store:
        store.add_enrolee(ENROLEE)
        store.allow_target(TARGET)


def report(rows: dict[str, list[Result]], header: str) -> None:
    print(f"\n{header}")
    print(
        f"{'target':20} {'ops/s':>8} {'errors':>7} {'srv ms/op':>10} "
        f"{'cli ms/op':>10} {'p50 ms':>8} {'p99 ms':>8}"
    )
    for name, results in rows.items():
        print(
            f"{name:20} {statistics.median(r.ops_per_s for r in results):8.0f} "
            f"{sum(r.errors for r in results):7d} "
            f"{statistics.median(r.srv_ms_per_op for r in results):10.2f} "
            f"{statistics.median(r.cli_ms_per_op for r in results):10.2f} "
            f"{statistics.median(r.p50_ms for r in results):8.2f} "
            f"{statistics.median(r.p99_ms for r in results):8.2f}"
        )
    med = {n: statistics.median(r.ops_per_s for r in rs) for n, rs in rows.items()}
    cpu = {n: statistics.median(r.srv_ms_per_op for r in rs) for n, rs in rows.items()}
    ratio = med["mef enrol"] / med["bare ours"]
    verdict = "met" if ratio >= 0.70 else "NOT met"
    print(
        f"\nenrolments / bare TLS-PSK handshakes (our TLSServer, same profile): {ratio:.2f}x "
        f"(goal >= 0.70x: {verdict})"
    )
    # The load generator shares the cores with the server: the server's CPU per operation
    # is the steadier figure on a busy machine.
    print(
        f"server CPU per operation, bare / enrolment (the rate the server alone would "
        f"allow): {cpu['bare ours'] / cpu['mef enrol']:.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tls13", action="store_true", help="TLS 1.3 instead of 1.2")
    ap.add_argument("--asyncio", action="store_true", help="asyncio's loop, not uvloop")
    ap.add_argument("--enrolees", type=int, default=100_000, help="live enrolments to fetch")
    ap.add_argument("--fetches", type=int, default=5000)
    ap.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="the server's log level, as `m2msec mef serve --log-level` (default info, its "
        "default; the lines go to a file in the bench's directory)",
    )
    ap.add_argument("--quick", action="store_true", help="1 s x 1 round, 2,000 enrolees")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the server with py-spy during each measurement (the last round's "
        "stacks, collapsed, in DIR/enrol-tls12.txt etc.; CPU figures then include py-spy)",
    )
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.enrolees, args.fetches = 1.0, 1, 2000, 500
    args.seconds = min(max(args.seconds, 0.5), 120)

    with tempfile.TemporaryDirectory(prefix="bench-mef-") as name:
        tmp = Path(name)
        os.environ["M2MSEC_HOME"] = str(tmp / "home")
        os.environ.pop("M2MSEC_KEK", None)  # the store's kek file, beside it
        prepare(tmp)
        ctx = mp.get_context("spawn")
        ports = (free_port(), free_port(), free_port())
        ready, stop = ctx.Event(), ctx.Event()
        uv = not args.asyncio
        server = ctx.Process(
            target=run_server,
            args=(str(tmp), ports, ready, stop, uv, args.tls13, args.log_level),
        )
        server.start()
        try:
            if not ready.wait(60):
                raise SystemExit("the MEF server did not start")
            assert server.pid is not None
            targets = [("mef enrol", ports[0], "enrol"), ("bare ours", ports[2], "bare")]
            proto = "TLS 1.3" if args.tls13 else "TLS 1.2"
            setup = (
                f"{proto}, {args.clients} clients, {args.seconds:g} s x {args.rounds} rounds, "
                f"MEF on {'uvloop' if uv else 'asyncio'}, log level {args.log_level}"
            )
            log(f"MEF server process {server.pid}; {setup}")
            rows: dict[str, list[Result]] = {t[0]: [] for t in targets}
            for rnd in range(args.rounds):
                for name_, port, mode in targets if rnd % 2 == 0 else targets[::-1]:
                    r = measure(name_, port, server.pid, mode, args)
                    rows[name_].append(r)
                    log(
                        f"  round {rnd + 1} {name_:10} {r.ops_per_s:8.0f}/s errors={r.errors} "
                        f"srv {r.srv_ms_per_op:.2f} (kernel {r.srv_sys_ms_per_op:.2f}) "
                        f"cli {r.cli_ms_per_op:.2f} ms/op "
                        f"p50 {r.p50_ms:.2f} ms {r.first_error[:80]}"
                    )
            report(rows, f"{setup} (medians)")

            keys = populate(tmp / "mef.db", args.enrolees)
            lat, bad = fetch_latency(tmp, ports[1], keys, args.fetches)
            print(
                f"\nfetchCredentials, {args.enrolees} live enrolments, one Enrolee B, "
                f"{len(lat)} requests on one mutual-TLS connection: "
                f"p50 {percentile(lat, 0.5):.2f} ms, p99 {percentile(lat, 0.99):.2f} ms, "
                f"p99.9 {percentile(lat, 0.999):.2f} ms, wrong answers {bad}"
            )
        finally:
            stop.set()
            server.join(20)
            if server.is_alive():
                server.kill()


if __name__ == "__main__":
    main()
