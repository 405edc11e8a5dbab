"""Full GBA (bootstrap + NAF key + TLS-PSK) per second, against bare TLS-PSK handshakes.

Seed 000 8.2.3.2 (GBA-based SAEF). One server process holds the BSF (Ub over HTTP with
Digest AKA on Milenage, Zn over mutual TLS, SQLite HSS/session store) and three TLS 1.2
responders on loopback; the load generator (this process, ``--clients`` concurrent
asyncio tasks, each with its own subscriber and USIM) measures, interleaved round by
round, each for ``--seconds``:

* ``bare-psk``: a TLS 1.2 PSK handshake (PskInitiator against PskResponder over a SQLite
  psk-lookup-table), then close: the baseline every ratio is taken against;
* ``gba-full``: a fresh Ub bootstrapping (two HTTP exchanges, AKA on both sides), then
  the TLS-PSK handshake with ``3GPP-bootstrapping;<B-TID>``, for which the NAF fetches
  Ks_NAF over Zn (a new B-TID each time, so never cached);
* ``gba-zn``: Ks reused by the device (no Ub), the NAF without its key cache: Zn fetch
  plus handshake;
* ``gba-reuse``: Ks reused and Ks_NAF cached at the NAF: what a device reconnecting
  within the key lifetime costs;
* ``ub-only``: the bootstrapping alone.

Columns: the median rate and its ratio to ``bare-psk`` measured in the same run; the
server process's CPU time per operation (BSF and NAF together; the load generator's own
Milenage and TLS work is not in it) and its ratio to ``bare-psk``'s, the steadier figure
when other work shares the machine.

It also reports Milenage operations per second by running the GBA core's
``bench/bench_milenage.py`` when present (else a short inline count, said so).

    python bench/bench_gba.py --seconds 3 --rounds 3 --clients 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_handshakes import cpu_seconds, log

HOST = "127.0.0.1"
IN_DOMAIN = "in.provider.com"
BSF_FQDN = f"bsf.{IN_DOMAIN}"
NAF_FQDN = f"id-in.{IN_DOMAIN}"
KPSA_ID = "AE123456789012-Bench@in.provider.com"
KPSA = bytes(range(16, 48))
K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")
KINDS = ("bare-psk", "gba-full", "gba-zn", "gba-reuse", "ub-only")


def impi(i: int) -> str:
    return f"bench-{i}@ims.mnc001.mcc001.3gppnetwork.org"


# -- the server process ------------------------------------------------------------------


def run_servers(workdir: str, clients: int, pipe: Connection) -> None:
    asyncio.run(_servers(Path(workdir), clients, pipe))


async def _servers(work: Path, clients: int, pipe: Connection) -> None:
    import logging

    from m2msec.frameworks.certificate import CertificateCredential
    from m2msec.frameworks.gba import GbaResponder, zn_profile
    from m2msec.frameworks.provisioned import PskResponder
    from m2msec.gba.records import Guss
    from m2msec.gba.zn import ZnClient
    from m2msec.servers.bsf import BsfConfig, BsfServer
    from m2msec.store import PskEntry, SqlitePskStore
    from m2msec.tls.aio import TLSConnection, TLSServer

    logging.disable(logging.WARNING)  # refusals would flood stderr; none are expected
    config = BsfConfig(
        fqdn=BSF_FQDN,
        listen=((HOST, 0),),
        zn_listen=((HOST, 0),),
        store=work / "bsf.db",
        cert=work / "bsf.pem",
        key=work / "bsf.key",
        ca=work / "ca" / "ca.pem",
        max_handshakes=4096,
        # Every client runs from 127.0.0.1: the per-address Ub limit (10/s by default)
        # would measure the limiter, and its 429 ended the run.
        ub_rate=1e9,
        ub_burst=1_000_000,
    )
    store = SqlitePskStore(work / "psk.db")
    store.add(PskEntry(KPSA_ID, KPSA, "Cbench"))

    async def done(conn: TLSConnection) -> None:
        return None  # handshake only; TLSServer closes the association

    async with BsfServer(config) as bsf:
        for i in range(clients):
            bsf.store.add_subscriber(impi(i), k=K, opc=OPC, guss=Guss.allowing([NAF_FQDN]))
        credential = CertificateCredential.from_files(
            work / "in-cse.pem", work / "in-cse.key", work / "ca" / "ca.pem"
        )
        zn_host, zn_port = bsf.zn_addresses[0]
        profile = zn_profile(credential, BSF_FQDN, in_domain=IN_DOMAIN)
        zn = ZnClient(profile, zn_host, zn_port, BSF_FQDN, max_connections=8)
        cached = GbaResponder(zn, NAF_FQDN)
        uncached = GbaResponder(zn, NAF_FQDN, cache_size=0)
        servers = [
            TLSServer(PskResponder(store).profile(tls13=False), done, max_handshakes=4096),
            TLSServer(cached.profile(), done, max_handshakes=4096),
            TLSServer(uncached.profile(), done, max_handshakes=4096),
        ]
        for server in servers:
            await server.start(HOST, 0, backlog=4096)
        pipe.send({"ub": bsf.ub_url(), "ports": [s.port for s in servers], "pid": os.getpid()})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pipe.recv)  # any message: stop
        for server in servers:
            await server.close()
        await zn.close()
        stats = {"bsf": bsf.stats.as_dict(), "zn_fetches": cached.zn_fetches + uncached.zn_fetches}
    store.close()
    pipe.send(stats)


# -- the load generator ------------------------------------------------------------------


async def measure(
    kind: str, seconds: float, clients: int, ub: str, ports: list[int]
) -> tuple[float, int]:
    from m2msec.frameworks.gba_device import GbaDevice
    from m2msec.frameworks.provisioned import PskInitiator
    from m2msec.gba.aka import Usim
    from m2msec.tls.aio import connect

    psk_profile = PskInitiator(KPSA_ID, KPSA, "/id-in", server_name=NAF_FQDN).profile(tls13=False)
    devices = [GbaDevice(Usim(K, OPC), impi(i), ub) for i in range(clients)]
    if kind in ("gba-zn", "gba-reuse"):
        await asyncio.gather(*(d.ensure_bootstrap() for d in devices))
    bare_port, cached_port, uncached_port = ports

    def operation(device: GbaDevice) -> Callable[[], Awaitable[None]]:
        async def bare() -> None:
            conn = await connect(HOST, bare_port, psk_profile)
            await conn.close()

        async def full() -> None:
            await device.ensure_bootstrap(force=True)
            conn = await connect(HOST, cached_port, device.profile(NAF_FQDN))
            await conn.close()

        async def zn() -> None:
            conn = await connect(HOST, uncached_port, device.profile(NAF_FQDN))
            await conn.close()

        async def reuse() -> None:
            conn = await connect(HOST, cached_port, device.profile(NAF_FQDN))
            await conn.close()

        async def ub_only() -> None:
            await device.ensure_bootstrap(force=True)

        return {"bare-psk": bare, "gba-full": full, "gba-zn": zn, "gba-reuse": reuse,
                "ub-only": ub_only}[kind]  # fmt: skip

    count = 0
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(device: GbaDevice) -> None:
        nonlocal count, errors
        op = operation(device)
        while time.monotonic() < deadline:
            try:
                await op()
                count += 1
            except Exception as exc:
                if errors == 0:
                    log(f"  {kind}: first error: {exc}")
                errors += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(d) for d in devices))
    return count / (time.monotonic() - started), errors


def milenage_rate(seconds: float) -> str:
    here = Path(__file__).with_name("bench_milenage.py")
    if here.exists():
        done = subprocess.run(
            [sys.executable, str(here), "--seconds", str(min(seconds, 5.0))],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return f"(from bench/bench_milenage.py)\n{done.stdout.strip() or done.stderr.strip()}"
    from m2msec.crypto.milenage import Milenage

    m = Milenage(K, OPC)
    rand = os.urandom(16)
    sqn, amf = bytes(6), bytes(2)
    n = 0
    deadline = time.monotonic() + min(seconds, 3.0)
    start = time.monotonic()
    while time.monotonic() < deadline:
        m.f1(rand, sqn, amf)
        m.f2345(rand)
        n += 1
    rate = n / (time.monotonic() - start)
    return (
        f"(bench/bench_milenage.py not found: inline count) one AKA's Milenage "
        f"(f1 + f2345): {rate:,.0f}/s"
    )


def setup(work: Path) -> None:
    from m2msec.pki.authority import CertificateAuthority, write_credential

    ca = CertificateAuthority.init(work / "ca", domain=IN_DOMAIN)
    write_credential(ca.issue_service(BSF_FQDN), work / "bsf")
    write_credential(ca.issue("/id-in"), work / "in-cse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--only", choices=KINDS, action="append")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 0.5), 120.0)
    kinds = tuple(args.only or KINDS)
    if "bare-psk" not in kinds:
        kinds = ("bare-psk", *kinds)
    with tempfile.TemporaryDirectory(prefix="m2msec-bench-gba-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("M2MSEC_HOME", str(work / "home"))
        setup(work)
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(
            target=run_servers, args=(str(work), args.clients, child), daemon=True
        )
        proc.start()
        try:
            if not parent.poll(60):
                raise RuntimeError("the server process did not start")
            info: dict[str, Any] = parent.recv()
            rates: dict[str, list[float]] = {k: [] for k in kinds}
            cpu: dict[str, list[float]] = {k: [] for k in kinds}
            errors: dict[str, int] = dict.fromkeys(kinds, 0)
            for r in range(args.rounds):
                for kind in kinds:
                    before = cpu_seconds([info["pid"]])
                    rate, errs = asyncio.run(
                        measure(kind, seconds, args.clients, info["ub"], info["ports"])
                    )
                    used = cpu_seconds([info["pid"]]) - before
                    rates[kind].append(rate)
                    cpu[kind].append(used / max(rate * seconds, 1) * 1000)
                    errors[kind] += errs
                    log(f"round {r + 1} {kind}: {rate:,.1f}/s, errors {errs}")
            parent.send("stop")
            stats = parent.recv() if parent.poll(30) else {}
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    base = statistics.median(rates["bare-psk"])
    base_ms = statistics.median(cpu["bare-psk"])
    print(f"\nGBA (seed 000 8.2.3.2), {args.clients} clients, {args.rounds} x {seconds:g} s")
    head = ("measurement", "ops/s", "rate/bare", "server ms/op", "ms/bare", "errors")
    print(f"{head[0]:<12} {head[1]:>9} {head[2]:>10} {head[3]:>13} {head[4]:>8} {head[5]:>7}")
    for kind in kinds:
        rate = statistics.median(rates[kind])
        ms = statistics.median(cpu[kind])
        print(
            f"{kind:<12} {rate:>9,.1f} {rate / base:>9.2f}x {ms:>13.2f} "
            f"{ms / base_ms:>7.2f}x {errors[kind]:>7}"
        )
    if stats:
        print(f"BSF counters: {stats['bsf']}; NAF Zn fetches: {stats['zn_fetches']}")
    print("\nMilenage " + milenage_rate(seconds))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
