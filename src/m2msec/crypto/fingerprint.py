"""Fingerprints of the keys and certificates behind a Security Association.

Seed 003 7.3.1.1.2.2 / 7.3.1.1.2.4: each side's SA Management "stores the SA keys and
parameters". m2msec stores the parameters and, in place of the key, a fingerprint that
lets an operator tell whether two SAs used the same Kpsa, Kc or Ks_NAF (docs/sa.md) while
revealing nothing of it. This is the one implementation: the TLS engine fills
``SecurityContext.key_fingerprint`` with it, :mod:`m2msec.sa.records` re-exports it and
:func:`m2msec.pki.names.certificate_fingerprint` is built on :func:`certificate_fingerprint`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = ["FINGERPRINT_LABEL", "certificate_fingerprint", "key_fingerprint"]

#: The context of the one-way function a key fingerprint is made with.
FINGERPRINT_LABEL: Final = b"m2msec SA key fingerprint"


def key_fingerprint(secret: bytes) -> str:
    """A short one-way tag of a symmetric key (Kpsa, Kc, Ks_NAF) that reveals nothing.

    An HMAC-SHA-256 keyed by the secret over a fixed label, cut to 8 octets (16 hex
    digits): equal keys give equal tags, so an operator can tell whether two SAs used one
    key. For the keys of TS-0003 10.3 (128 bits and more) it gives nothing towards the key;
    a low-entropy key typed by hand stays as guessable as it was.
    """
    if not secret:
        raise ValueError("a key fingerprint needs a non-empty key")
    return hmac.new(secret, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def certificate_fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, lowercase hex (public, shown in full)."""
    return hashlib.sha256(der).hexdigest()
