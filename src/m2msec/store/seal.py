"""Secrets sealed at rest: AES-256-GCM under a key-encryption key (KEK).

TS-0003 8.2.2.1 leaves the protection of the provisioned Kpsa table to the implementation;
TR-0038 7.1.2 shows it as a plain psk-lookup-table. We never write a Kpsa in the clear:
each one is sealed as::

    version (1 octet, 0x01) || nonce (12 octets, random) || AES-GCM ciphertext || tag (16)

with associated data supplied by the caller (the store binds the row's key identifier and
the other columns, so a sealed key cannot be moved to another row or re-bound to another
entity). Random 96-bit nonces are safe far beyond the number of rows we will ever seal
under one KEK (NIST SP 800-38D, 2**32 invocations).

The KEK (32 octets) comes from, in order: an explicit argument, the environment variable
``M2MSEC_KEK`` (64 hexadecimal characters), or a file ``kek`` beside the database (64
hexadecimal characters and a newline), created mode 0600 on first use. The file protects
copies of the database (backups, bug reports); it does not protect against someone who can
read the whole data directory: production deployments should give ``M2MSEC_KEK`` from a
secret manager.

Error messages name what could not be unsealed and why, never key material.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from m2msec.errors import ConfigurationError, StoreError
from m2msec.paths import write_private

__all__ = [
    "KEK_ENV",
    "KEK_FILE_NAME",
    "KEK_SIZE",
    "SEAL_OVERHEAD",
    "SEAL_VERSION",
    "Sealer",
    "generate_kek",
    "kek_from_env",
    "load_kek",
    "parse_kek_hex",
    "sealed_plaintext_length",
]

log = logging.getLogger(__name__)

KEK_ENV: Final = "M2MSEC_KEK"
KEK_FILE_NAME: Final = "kek"
KEK_SIZE: Final = 32
SEAL_VERSION: Final = 1
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
SEAL_OVERHEAD: Final = 1 + _NONCE_SIZE + _TAG_SIZE
_VERSION_BYTE: Final = bytes([SEAL_VERSION])


class Sealer:
    """Seals and unseals short secrets under one KEK (AES-256-GCM)."""

    __slots__ = ("_aead",)

    def __init__(self, kek: bytes) -> None:
        if len(kek) != KEK_SIZE:
            raise ConfigurationError(f"the key-encryption key must be {KEK_SIZE} octets")
        self._aead = AESGCM(kek)

    def __repr__(self) -> str:
        return "Sealer(<kek hidden>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_SIZE)
        # The version byte is authenticated too, so it cannot be changed to downgrade later.
        return _VERSION_BYTE + nonce + self._aead.encrypt(nonce, plaintext, _VERSION_BYTE + aad)

    def unseal(self, sealed: bytes, aad: bytes, *, what: str) -> bytes:
        """Open ``sealed``; ``what`` names the secret in error messages (never its value)."""
        if len(sealed) < SEAL_OVERHEAD:
            raise StoreError(f"cannot unseal {what}: sealed value truncated")
        if sealed[0] != SEAL_VERSION:
            raise StoreError(f"cannot unseal {what}: unknown seal format version {sealed[0]}")
        nonce = sealed[1 : 1 + _NONCE_SIZE]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE_SIZE :], _VERSION_BYTE + aad)
        except InvalidTag:
            raise StoreError(
                f"cannot unseal {what}: wrong key-encryption key? (or the stored row was altered)"
            ) from None

    def check(self, sealed: bytes, aad: bytes, expected: bytes, *, what: str) -> None:
        """Unseal a known check value; raise StoreError unless it matches ``expected``."""
        if not hmac.compare_digest(self.unseal(sealed, aad, what=what), expected):
            raise StoreError(f"cannot unseal {what}: wrong key-encryption key?")


def sealed_plaintext_length(sealed_length: int) -> int:
    """Length of the secret inside a sealed value of ``sealed_length`` octets."""
    return max(0, sealed_length - SEAL_OVERHEAD)


def generate_kek() -> bytes:
    return secrets.token_bytes(KEK_SIZE)


def parse_kek_hex(text: str, *, source: str) -> bytes:
    """Decode a KEK written as 64 hexadecimal characters; ``source`` names where it came from."""
    try:
        kek = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"{source} must hold {2 * KEK_SIZE} hexadecimal characters"
        ) from None
    if len(kek) != KEK_SIZE:
        raise ConfigurationError(f"{source} must hold {2 * KEK_SIZE} hexadecimal characters")
    return kek


def kek_from_env() -> bytes | None:
    """The KEK from ``$M2MSEC_KEK``, or None when the variable is unset or empty."""
    value = os.environ.get(KEK_ENV)
    if not value:
        return None
    return parse_kek_hex(value, source=f"${KEK_ENV}")


def load_kek(path: Path, *, create: bool) -> bytes:
    """The KEK from ``$M2MSEC_KEK`` if set, else from the file ``path``.

    With ``create``, a missing file is created (0600) with a fresh random KEK. The file
    appears atomically with its full content (:func:`m2msec.paths.write_private`); if
    another process won the race to create it, that process's KEK is used.
    """
    from_env = kek_from_env()
    if from_env is not None:
        return from_env
    try:
        return _read_kek_file(path)
    except FileNotFoundError:
        if not create:
            raise StoreError(
                f"no key-encryption key: ${KEK_ENV} is not set and {path} does not exist"
            ) from None
    return _create_kek_file(path)


def _read_kek_file(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        data = f.read(4 * KEK_SIZE)
    if mode & 0o077:
        log.warning(
            "key-encryption key file %s is accessible by group/others (mode %03o); "
            "run chmod 600 on it",
            path,
            mode,
        )
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path} is not a key-encryption key file") from None
    return parse_kek_hex(text, source=str(path))


def _create_kek_file(path: Path) -> bytes:
    kek = generate_kek()
    try:
        write_private(path, kek.hex().encode("ascii") + b"\n")
    except FileExistsError:
        # Another process created it first: everyone must use the same KEK.
        return _read_kek_file(path)
    log.info("created key-encryption key file %s", path)
    return kek
