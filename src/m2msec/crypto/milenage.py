"""The MILENAGE algorithm set (3GPP TS 35.205 / TS 35.206), checked against TS 35.208.

MILENAGE gives the 3G authentication and key generation functions of TS 33.102 6.3:
f1 (network authentication, MAC-A), f1* (resynchronisation, MAC-S), f2 (RES), f3 (CK),
f4 (IK), f5 (anonymity key AK) and f5* (AK for resynchronisation), all from a 128-bit
subscriber key K and an operator variant OPc. The kernel is AES-128 on single blocks
(TS 35.206 4.1 names Rijndael with a 128-bit block and key; AES-128 is that), taken from
``cryptography``; everything else is a handful of 128-bit XORs and rotations (TS 35.206
clause 4.1):

    OPc  = OP xor E_K(OP)
    TEMP = E_K(RAND xor OPc)
    IN1  = SQN || AMF || SQN || AMF
    OUT1 = E_K(TEMP xor rot(IN1 xor OPc, r1) xor c1) xor OPc      f1 = OUT1[0..63]
                                                                  f1* = OUT1[64..127]
    OUTi = E_K(rot(TEMP xor OPc, ri) xor ci) xor OPc, i = 2..5    f5 = OUT2[0..47]
                                                                  f2 = OUT2[64..127]
                                                                  f3 = OUT3, f4 = OUT4
                                                                  f5* = OUT5[0..47]

with the constants r1 = 64, r2 = 0, r3 = 32, r4 = 64, r5 = 96 (bits, rotation towards
the most significant bit) and c1 = 0, c2 = 1, c3 = 2, c4 = 4, c5 = 8 (as 128-bit
integers). Bytes in, bytes out; lengths are checked (K, OP, OPc, RAND 16 octets; SQN 6;
AMF 2) and a wrong length raises :class:`ValueError` naming the parameter, never its value.

:class:`Milenage` keeps the AES key schedule of one (K, OPc) for repeated use (the HSS
simulator and the USIM); the module functions are one-shot conveniences over it.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "AK_LENGTH",
    "AMF_LENGTH",
    "KEY_LENGTH",
    "MAC_LENGTH",
    "RAND_LENGTH",
    "RES_LENGTH",
    "SQN_LENGTH",
    "Milenage",
    "f1",
    "f1star",
    "f5star",
    "f2345",
    "opc",
]

KEY_LENGTH: Final = 16
RAND_LENGTH: Final = 16
SQN_LENGTH: Final = 6
AMF_LENGTH: Final = 2
MAC_LENGTH: Final = 8
RES_LENGTH: Final = 8
AK_LENGTH: Final = 6

_MASK: Final = (1 << 128) - 1
# TS 35.206 4.1: rotations (bits) and constants.
_R1, _R2, _R3, _R4, _R5 = 64, 0, 32, 64, 96
_C1, _C2, _C3, _C4, _C5 = 0, 1, 2, 4, 8


def _check(value: bytes, length: int, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes")
    if len(value) != length:
        raise ValueError(f"{name} must be {length} octets, not {len(value)}")
    return bytes(value)


def _rot(x: int, r: int) -> int:
    """Cyclic rotation of a 128-bit value by ``r`` bits towards the most significant end."""
    if r == 0:
        return x
    return ((x << r) | (x >> (128 - r))) & _MASK


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _bytes(x: int) -> bytes:
    return x.to_bytes(16, "big")


class Milenage:
    """MILENAGE for one subscriber: K and OPc fixed, the AES-128 key schedule kept.

    Not safe for concurrent use from several threads (the AES context is shared).
    """

    __slots__ = ("_enc", "_opc")

    def __init__(self, k: bytes, opc: bytes) -> None:
        k = _check(k, KEY_LENGTH, "K")
        self._opc = _int(_check(opc, KEY_LENGTH, "OPc"))
        # ECB on single blocks is the MILENAGE kernel E_K (TS 35.206 4.1); blocks are
        # independent, so one encryptor context serves every call.
        self._enc = Cipher(algorithms.AES(k), modes.ECB()).encryptor()  # noqa: S305

    def __repr__(self) -> str:
        return "Milenage(<K and OPc hidden>)"

    def _e(self, block: bytes) -> bytes:
        return self._enc.update(block)

    def _temp(self, rand: bytes) -> int:
        rand = _check(rand, RAND_LENGTH, "RAND")
        return _int(self._e(_bytes(_int(rand) ^ self._opc)))

    def _out1(self, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        sqn = _check(sqn, SQN_LENGTH, "SQN")
        amf = _check(amf, AMF_LENGTH, "AMF")
        temp = self._temp(rand)
        in1 = _int(sqn + amf + sqn + amf)
        block = temp ^ _rot(in1 ^ self._opc, _R1) ^ _C1
        return _bytes(_int(self._e(_bytes(block))) ^ self._opc)

    def f1(self, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        """MAC-A (8 octets): network authentication code."""
        return self._out1(rand, sqn, amf)[:MAC_LENGTH]

    def f1star(self, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        """MAC-S (8 octets): resynchronisation message authentication code."""
        return self._out1(rand, sqn, amf)[MAC_LENGTH:]

    def f1_both(self, rand: bytes, sqn: bytes, amf: bytes) -> tuple[bytes, bytes]:
        """(MAC-A, MAC-S) from one computation of OUT1."""
        out1 = self._out1(rand, sqn, amf)
        return out1[:MAC_LENGTH], out1[MAC_LENGTH:]

    def f2345(self, rand: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """(RES 8 octets, CK 16, IK 16, AK 6)."""
        temp = self._temp(rand)
        x = temp ^ self._opc
        opc = self._opc
        # OUT2, OUT3 and OUT4 in one call: ECB encrypts the three blocks independently.
        blocks = (
            _bytes(_rot(x, _R2) ^ _C2) + _bytes(_rot(x, _R3) ^ _C3) + _bytes(_rot(x, _R4) ^ _C4)
        )
        out = self._e(blocks)
        out2 = _bytes(_int(out[0:16]) ^ opc)
        ck = _bytes(_int(out[16:32]) ^ opc)
        ik = _bytes(_int(out[32:48]) ^ opc)
        return out2[8:16], ck, ik, out2[0:AK_LENGTH]

    def f1_f2345(
        self, rand: bytes, sqn: bytes, amf: bytes
    ) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """(MAC-A, RES, CK, IK, AK) with TEMP computed once: one authentication vector."""
        sqn = _check(sqn, SQN_LENGTH, "SQN")
        amf = _check(amf, AMF_LENGTH, "AMF")
        temp = self._temp(rand)
        opc = self._opc
        x = temp ^ opc
        in1 = _int(sqn + amf + sqn + amf)
        blocks = (
            _bytes(temp ^ _rot(in1 ^ opc, _R1) ^ _C1)
            + _bytes(_rot(x, _R2) ^ _C2)
            + _bytes(_rot(x, _R3) ^ _C3)
            + _bytes(_rot(x, _R4) ^ _C4)
        )
        out = self._e(blocks)
        mac_a = _bytes(_int(out[0:16]) ^ opc)[:MAC_LENGTH]
        out2 = _bytes(_int(out[16:32]) ^ opc)
        ck = _bytes(_int(out[32:48]) ^ opc)
        ik = _bytes(_int(out[48:64]) ^ opc)
        return mac_a, out2[8:16], ck, ik, out2[0:AK_LENGTH]

    def f5star(self, rand: bytes) -> bytes:
        """AK* (6 octets): anonymity key for resynchronisation."""
        temp = self._temp(rand)
        out5 = _int(self._e(_bytes(_rot(temp ^ self._opc, _R5) ^ _C5))) ^ self._opc
        return _bytes(out5)[:AK_LENGTH]


def opc(k: bytes, op: bytes) -> bytes:
    """OPc = OP xor E_K(OP) (TS 35.206 4.1)."""
    k = _check(k, KEY_LENGTH, "K")
    op = _check(op, KEY_LENGTH, "OP")
    enc = Cipher(algorithms.AES(k), modes.ECB()).encryptor()  # noqa: S305
    return _bytes(_int(enc.update(op)) ^ _int(op))


def f1(k: bytes, opc: bytes, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
    """MAC-A = f1_K(SQN, RAND, AMF), 8 octets."""
    return Milenage(k, opc).f1(rand, sqn, amf)


def f1star(k: bytes, opc: bytes, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
    """MAC-S = f1*_K(SQN, RAND, AMF), 8 octets."""
    return Milenage(k, opc).f1star(rand, sqn, amf)


def f2345(k: bytes, opc: bytes, rand: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(RES, CK, IK, AK) = (f2, f3, f4, f5)_K(RAND)."""
    return Milenage(k, opc).f2345(rand)


def f5star(k: bytes, opc: bytes, rand: bytes) -> bytes:
    """AK* = f5*_K(RAND), 6 octets."""
    return Milenage(k, opc).f5star(rand)
