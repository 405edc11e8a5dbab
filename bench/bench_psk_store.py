"""Benchmark of the SQLite psk-lookup-table (TS-0003 8.2.2.1): build, lookups, size.

Builds a store of ``--rows`` rows with one ``add_many`` (KpsaIds in a scrambled order, as an
operator's export would be), then measures ``get`` for random existing KpsaIds:

* cold: ``cache_size=0``, every lookup goes to SQLite and unseals the key (the operating
  system's page cache is warm from the build: we do not drop it, other work shares this
  machine);
* warm: the default LRU cache, a working set that fits in it (every lookup a hit).

Prints median and p99 latency in microseconds, the on-disk size per row ((db + wal) / rows)
and the growth of the process's resident memory per row. Targets: median lookup < 50 us,
< 300 bytes per row.

    python bench/bench_psk_store.py --rows 1000000
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from m2msec.store import PskEntry, SqlitePskStore


def rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def kpsa_id(i: int) -> str:
    return f"AE{i:012d}-Light@in.provider.com"


def scrambled(n: int) -> Iterator[int]:
    """0..n-1 in a scrambled order without holding a permutation in memory."""
    step = 2_654_435_761 % n or 1
    while math.gcd(step, n) != 1:
        step += 1
    for i in range(n):
        yield (i * step + 12_345) % n


def entries(n: int, key_len: int, expires: datetime) -> Iterator[PskEntry]:
    for i in scrambled(n):
        yield PskEntry(kpsa_id(i), os.urandom(key_len), f"Clight-AE{i}", expires)


def measure(get: Callable[[str], object], ids: list[str]) -> tuple[float, float]:
    """Median and p99 of ``get`` over ``ids``, in microseconds."""
    timer = time.perf_counter_ns
    samples = []
    for kid in ids:
        t0 = timer()
        found = get(kid)
        samples.append(timer() - t0)
        if found is None:
            raise SystemExit(f"lookup of {kid} found nothing")
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def file_size(path: Path) -> int:
    return sum(
        p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--key-len", type=int, default=16, help="Kpsa length in octets")
    parser.add_argument("--dir", type=Path, help="where to build the store (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    args = parser.parse_args()

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="m2msec-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "bench.db"
    kek = os.urandom(32)
    rng = random.Random(1)
    n = args.rows
    print(
        f"store {path}: {n} rows, {args.key_len}-octet keys, "
        f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}"
    )

    try:
        rss_start = rss_bytes()
        store = SqlitePskStore(path, kek=kek, cache_size=0)
        expires = datetime(2030, 1, 1, tzinfo=UTC)
        step = max(1, n // 10)
        next_report = step
        t0 = time.perf_counter()

        def progress(done: int) -> None:
            nonlocal next_report
            if done >= next_report or done == n:
                print(f"  {done:>9} rows  {time.perf_counter() - t0:6.1f} s", flush=True)
                next_report = (done // step + 1) * step

        written = store.add_many(entries(n, args.key_len, expires), progress=progress)
        build = time.perf_counter() - t0
        assert written == n
        rss_built = rss_bytes()
        size = file_size(path)
        print(f"build: {build:.1f} s ({n / build:,.0f} rows/s)")
        print(
            f"on disk: {size / 1e6:.1f} MB = {size / n:.0f} bytes/row "
            f"(db {path.stat().st_size / 1e6:.1f} MB + wal/shm)"
        )

        # Cold: no LRU cache, every get is a SQLite lookup plus an AES-GCM unseal.
        ids = [kpsa_id(rng.randrange(n)) for _ in range(args.lookups)]
        median, p99 = measure(store.get, ids)
        print(f"get, cache off ({len(ids)} random ids): median {median:.1f} us, p99 {p99:.1f} us")
        store.close()

        # Warm: default cache, a working set that fits in it.
        warm_store = SqlitePskStore(path, kek=kek)
        working = [kpsa_id(rng.randrange(n)) for _ in range(4096)]
        for kid in working:
            warm_store.get(kid)
        ids = [rng.choice(working) for _ in range(args.lookups)]
        median, p99 = measure(warm_store.get, ids)
        print(f"get, cache warm (4096-id working set): median {median:.1f} us, p99 {p99:.1f} us")

        # Uniform over all rows with the default cache (mostly misses, the realistic worst).
        ids = [kpsa_id(rng.randrange(n)) for _ in range(args.lookups)]
        median, p99 = measure(warm_store.get, ids)
        print(f"get, default cache, uniform ids: median {median:.1f} us, p99 {p99:.1f} us")
        del ids, working
        rss_end = rss_bytes()
        warm_store.close()

        print(
            f"RSS: start {rss_start / 1e6:.1f} MB, after build {rss_built / 1e6:.1f} MB, "
            f"after lookups {rss_end / 1e6:.1f} MB"
        )
        print(
            f"RSS growth per row: {(rss_built - rss_start) / n:.1f} bytes after build, "
            f"{(rss_end - rss_start) / n:.1f} bytes after lookups"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"peak RSS (getrusage): {peak / 1024:.1f} MB")
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
