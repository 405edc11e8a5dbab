"""MILENAGE operations per second: ours (m2msec.crypto.milenage) against a peer, same run.

The peer is CryptoMobile's ``Milenage`` when it is importable (pycrate's AuC uses it; it
is not on PyPI, and pycrate itself ships no MILENAGE of its own). Otherwise the peer is the
plain reference below: TS 35.206 4.1 written as one would from the spec text (byte-wise
XOR, rotation by slicing, a new AES-128 context per block from ``cryptography``), and the
output says so. Both sides are checked against TS 35.208 test set 1 before timing.

Operations (one "op" each):

* ``vector``: what the HSS does per authentication vector: f1 + f2345 (MAC-A, XRES, CK,
  IK, AK) for a fresh RAND;
* ``f2345`` alone; ``f1`` alone; ``f5*`` alone (resynchronisation);
* ours twice: ``ours`` keeps one :class:`Milenage` per subscriber (the key schedule once,
  as the HSS simulator and the USIM do), ``ours-1shot`` calls the module functions (a key
  schedule per call, like the peer).

Prints ops/s (median of ``--rounds`` interleaved rounds of ``--seconds`` each) and the
ratio ours / peer.

    python bench/bench_milenage.py                 # 3 rounds of 1 s per measurement
    python bench/bench_milenage.py --rounds 5 --seconds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from m2msec.crypto import milenage
from m2msec.crypto.milenage import Milenage

# TS 35.208 test set 1.
K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OP = bytes.fromhex("cdc202d5123e20f62b6d676ac72cb318")
OPC = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")
RAND = bytes.fromhex("23553cbe9637a89d218ae64dae47bf35")
SQN = bytes.fromhex("ff9bb4d0b607")
AMF = bytes.fromhex("b9b9")
F1 = bytes.fromhex("4a9ffac354dfafb3")
F2 = bytes.fromhex("a54211d5e3ba50bf")
F5S = bytes.fromhex("451e8beca43b")


# ----------------------------------------------------------------------------- reference


def _e(k: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _x(a: bytes, b: bytes) -> bytes:
    return bytes(i ^ j for i, j in zip(a, b, strict=True))


def _rot(a: bytes, bits: int) -> bytes:
    n = bits // 8
    return a[n:] + a[:n]


def _c(i: int) -> bytes:
    return bytes(15) + bytes([i])


class ReferenceMilenage:
    """TS 35.206 4.1, plainly (the comparison peer when CryptoMobile is absent)."""

    name = "plain reference (CryptoMobile not installed)"

    def f1(self, k: bytes, opc: bytes, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        temp = _e(k, _x(rand, opc))
        in1 = sqn + amf + sqn + amf
        out1 = _x(_e(k, _x(_x(temp, _rot(_x(in1, opc), 64)), _c(0))), opc)
        return out1[:8]

    def f2345(self, k: bytes, opc: bytes, rand: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        temp = _e(k, _x(rand, opc))
        out2 = _x(_e(k, _x(_rot(_x(temp, opc), 0), _c(1))), opc)
        out3 = _x(_e(k, _x(_rot(_x(temp, opc), 32), _c(2))), opc)
        out4 = _x(_e(k, _x(_rot(_x(temp, opc), 64), _c(4))), opc)
        return out2[8:], out3, out4, out2[:6]

    def f5star(self, k: bytes, opc: bytes, rand: bytes) -> bytes:
        temp = _e(k, _x(rand, opc))
        return _x(_e(k, _x(_rot(_x(temp, opc), 96), _c(8))), opc)[:6]


class CryptoMobilePeer:
    """CryptoMobile's Milenage (argument order K, RAND, ..., OP as in its API)."""

    name = "CryptoMobile.Milenage"

    def __init__(self) -> None:
        from CryptoMobile.Milenage import Milenage as CM  # type: ignore[import-not-found]

        self._m = CM(OP)
        self._m.set_opc(OPC)

    def f1(self, k: bytes, opc: bytes, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        return bytes(self._m.f1(k, rand, sqn, amf))

    def f2345(self, k: bytes, opc: bytes, rand: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        res, ck, ik, ak = self._m.f2345(k, rand)
        return bytes(res), bytes(ck), bytes(ik), bytes(ak)

    def f5star(self, k: bytes, opc: bytes, rand: bytes) -> bytes:
        return bytes(self._m.f5star(k, rand))


def peer() -> ReferenceMilenage | CryptoMobilePeer:
    try:
        return CryptoMobilePeer()
    except ImportError:
        return ReferenceMilenage()


# ----------------------------------------------------------------------------- timing


def rate(op: Callable[[bytes], object], seconds: float) -> float:
    rands = [os.urandom(16) for _ in range(256)]
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for r in rands:
            op(r)
        n += len(rands)
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement (<= 30)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (<= 10)")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 0.1), 30.0)
    rounds = min(max(args.rounds, 1), 10)

    other = peer()
    ours = Milenage(K, OPC)
    # Correctness first (TS 35.208 set 1), for both sides.
    assert milenage.opc(K, OP) == OPC
    for impl in (other,):
        assert impl.f1(K, OPC, RAND, SQN, AMF) == F1, f"{other.name}: f1 wrong"
        assert impl.f2345(K, OPC, RAND)[0] == F2, f"{other.name}: f2 wrong"
        assert impl.f5star(K, OPC, RAND) == F5S, f"{other.name}: f5* wrong"
    assert ours.f1(RAND, SQN, AMF) == F1 and ours.f2345(RAND)[0] == F2
    assert ours.f5star(RAND) == F5S

    def ours_vector(r: bytes) -> None:
        ours.f1_f2345(r, SQN, AMF)  # TEMP once, four AES blocks in one call

    def oneshot_vector(r: bytes) -> None:
        milenage.f1(K, OPC, r, SQN, AMF)
        milenage.f2345(K, OPC, r)

    def peer_vector(r: bytes) -> None:
        other.f1(K, OPC, r, SQN, AMF)
        other.f2345(K, OPC, r)

    cases: dict[str, dict[str, Callable[[bytes], object]]] = {
        "vector": {"ours": ours_vector, "ours-1shot": oneshot_vector, "peer": peer_vector},
        "f2345": {
            "ours": ours.f2345,
            "ours-1shot": lambda r: milenage.f2345(K, OPC, r),
            "peer": lambda r: other.f2345(K, OPC, r),
        },
        "f1": {
            "ours": lambda r: ours.f1(r, SQN, AMF),
            "ours-1shot": lambda r: milenage.f1(K, OPC, r, SQN, AMF),
            "peer": lambda r: other.f1(K, OPC, r, SQN, AMF),
        },
        "f5*": {
            "ours": ours.f5star,
            "ours-1shot": lambda r: milenage.f5star(K, OPC, r),
            "peer": lambda r: other.f5star(K, OPC, r),
        },
    }
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for op, impls in cases.items():
            for who, fn in impls.items():
                results.setdefault((op, who), []).append(rate(fn, seconds))

    print(f"MILENAGE ops/s, median of {rounds} round(s) x {seconds:g} s; peer: {other.name}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)")
    print(f"{'op':8} {'ours':>12} {'ours-1shot':>12} {'peer':>12} {'ours/peer':>10} "
          f"{'1shot/peer':>10}")  # fmt: skip
    for op in cases:
        o = statistics.median(results[(op, "ours")])
        s = statistics.median(results[(op, "ours-1shot")])
        p = statistics.median(results[(op, "peer")])
        print(f"{op:8} {o:12,.0f} {s:12,.0f} {p:12,.0f} {o / p:10.2f} {s / p:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
