"""GBA key derivation (3GPP TS 33.220 Annex B and Annex H) and B-TID (4.5.2).

* :func:`kdf` is the generic key derivation function of TS 33.220 B.2::

      S   = FC || P0 || L0 || P1 || L1 || ... || Pn || Ln     (Li: length of Pi, 2 octets)
      out = HMAC-SHA-256(Key, S)

  Character strings become octets by UTF-8 (B.2.1).
* Ks = CK || IK (4.5.2).
* Ks_ext_NAF = KDF(Ks, FC=0x01, "gba-me", RAND, IMPI, NAF_Id) and
  Ks_int_NAF = KDF(Ks, FC=0x01, "gba-u", RAND, IMPI, NAF_Id) (B.3). With GBA_ME the key
  the NAF and the device share is Ks_(ext)_NAF, the "gba-me" derivation.
* NAF_Id = NAF FQDN || Ua security protocol identifier (4.5.2, Annex H): five octets,
  ``01 00 00 00 02`` for HTTP Digest (RFC 3310 based Ua, H.3), ``01 00 01 yy zz`` for
  shared-key TLS with the cipher suite ``yy zz`` (H.2). The NAF FQDN is written in lower
  case without a trailing dot: DNS names compare case-insensitively (docs/readings.md A-05), and
  both ends must feed the same octets into the KDF (our choice; the spec has no rule).
* B-TID = base64(RAND) "@" BSF server domain name (4.5.2, an NAI per RFC 4282).

No published GBA KDF test vector could be found (TS 33.220 has none); the tests check
the KDF against an independent computation of the same clause, written differently.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

from m2msec.errors import IdentifierError
from m2msec.ids import check_fqdn

__all__ = [
    "FC_NAF",
    "GBA_ME",
    "GBA_U",
    "KS_NAF_LENGTH",
    "SUITE_IDS",
    "UA_HTTP_DIGEST",
    "UA_PROTOCOL_ID_LENGTH",
    "btid",
    "kdf",
    "ks_ext_naf",
    "ks_from",
    "ks_int_naf",
    "naf_id",
    "parse_btid",
    "parse_naf_id",
    "ua_protocol_id_tls_psk",
]

#: FC of the Ks_(ext/int)_NAF derivation (TS 33.220 B.3).
FC_NAF: Final = 0x01
#: P0 of the derivations (B.3).
GBA_ME: Final = b"gba-me"
GBA_U: Final = b"gba-u"
KS_NAF_LENGTH: Final = 32
UA_PROTOCOL_ID_LENGTH: Final = 5

#: Ua security protocol identifier of RFC 3310 based HTTP Digest (TS 33.220 H.3).
UA_HTTP_DIGEST: Final = bytes.fromhex("0100000002")
_UA_TLS_PREFIX: Final = bytes.fromhex("010001")

#: OpenSSL names of the PSK suites we offer -> their IANA identifiers (the ``yy zz`` of
#: the shared-key TLS Ua protocol id, TS 33.220 H.2).
SUITE_IDS: Final[dict[str, int]] = {
    "PSK-AES128-CBC-SHA256": 0x00AE,  # TLS_PSK_WITH_AES_128_CBC_SHA256, RFC 5487
    "PSK-AES128-GCM-SHA256": 0x00A8,  # TLS_PSK_WITH_AES_128_GCM_SHA256, RFC 5487
    "PSK-AES128-CCM8": 0xC0A8,  # TLS_PSK_WITH_AES_128_CCM_8, RFC 6655
}

_MAX_PARAM: Final = 0xFFFF
_RAND_LENGTH: Final = 16
_CK_IK_LENGTH: Final = 16


def kdf(key: bytes, fc: int, *params: bytes) -> bytes:
    """The TS 33.220 B.2 KDF: HMAC-SHA-256(key, FC || P0 || L0 || ... || Pn || Ln)."""
    if not 0 <= fc <= 0xFF:
        raise ValueError("FC is one octet")
    parts = [bytes([fc])]
    for i, p in enumerate(params):
        if not isinstance(p, bytes | bytearray):
            raise TypeError(f"KDF parameter P{i} must be bytes (encode strings as UTF-8)")
        if len(p) > _MAX_PARAM:
            raise ValueError(f"KDF parameter P{i} is longer than 65535 octets")
        parts.append(bytes(p))
        parts.append(len(p).to_bytes(2, "big"))
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def ks_from(ck: bytes, ik: bytes) -> bytes:
    """Ks = CK || IK (TS 33.220 4.5.2), 32 octets."""
    if len(ck) != _CK_IK_LENGTH or len(ik) != _CK_IK_LENGTH:
        raise ValueError("CK and IK are 16 octets each")
    return bytes(ck) + bytes(ik)


def ua_protocol_id_tls_psk(suite: int) -> bytes:
    """Ua security protocol id of shared-key TLS with ``suite``: 01 00 01 yy zz (H.2)."""
    if not 0 <= suite <= 0xFFFF:
        raise ValueError("a TLS cipher suite identifier is two octets")
    return _UA_TLS_PREFIX + suite.to_bytes(2, "big")


def _normal_fqdn(fqdn: str) -> str:
    fqdn = fqdn.rstrip(".") if fqdn.endswith(".") and fqdn != "." else fqdn
    return check_fqdn(fqdn, "NAF FQDN").lower()


def naf_id(naf_fqdn: str, ua_protocol_id: bytes) -> bytes:
    """NAF_Id = FQDN of the NAF || Ua security protocol identifier (4.5.2, Annex H).

    The FQDN is taken in lower case without a trailing dot (module docstring).
    """
    if len(ua_protocol_id) != UA_PROTOCOL_ID_LENGTH:
        raise ValueError(f"the Ua security protocol id is {UA_PROTOCOL_ID_LENGTH} octets")
    return _normal_fqdn(naf_fqdn).encode("ascii") + bytes(ua_protocol_id)


def parse_naf_id(value: bytes) -> tuple[str, bytes]:
    """Split a NAF_Id into (NAF FQDN in lower case, Ua security protocol id).

    Raises :class:`~m2msec.errors.IdentifierError` when the FQDN part is not a DNS name.
    """
    if len(value) <= UA_PROTOCOL_ID_LENGTH:
        raise IdentifierError("NAF_Id too short: FQDN || 5-octet Ua protocol id expected")
    fqdn_octets, ua = value[:-UA_PROTOCOL_ID_LENGTH], value[-UA_PROTOCOL_ID_LENGTH:]
    try:
        fqdn = fqdn_octets.decode("ascii")
    except UnicodeDecodeError:
        raise IdentifierError("NAF_Id: the FQDN part is not ASCII") from None
    if fqdn != fqdn.lower():
        raise IdentifierError("NAF_Id: the FQDN part must be in lower case")
    return check_fqdn(fqdn, "NAF FQDN in NAF_Id"), bytes(ua)


def _derive(ks: bytes, p0: bytes, rand: bytes, impi: str, naf_id: bytes) -> bytes:
    if len(ks) != 2 * _CK_IK_LENGTH:
        raise ValueError("Ks is 32 octets (CK || IK)")
    if len(rand) != _RAND_LENGTH:
        raise ValueError("RAND is 16 octets")
    if not impi:
        raise ValueError("IMPI is empty")
    return kdf(ks, FC_NAF, p0, bytes(rand), impi.encode("utf-8"), bytes(naf_id))


def ks_ext_naf(ks: bytes, rand: bytes, impi: str, naf_id: bytes) -> bytes:
    """Ks_ext_NAF (= Ks_NAF of GBA_ME) = KDF(Ks, "gba-me", RAND, IMPI, NAF_Id) (B.3)."""
    return _derive(ks, GBA_ME, rand, impi, naf_id)


def ks_int_naf(ks: bytes, rand: bytes, impi: str, naf_id: bytes) -> bytes:
    """Ks_int_NAF (GBA_U, kept in the UICC) = KDF(Ks, "gba-u", RAND, IMPI, NAF_Id) (B.3)."""
    return _derive(ks, GBA_U, rand, impi, naf_id)


def btid(rand: bytes, bsf_domain: str) -> str:
    """B-TID = base64(RAND)@BSF server domain name (TS 33.220 4.5.2)."""
    if len(rand) != _RAND_LENGTH:
        raise ValueError("RAND is 16 octets")
    domain = _normal_fqdn(bsf_domain)
    return base64.b64encode(bytes(rand)).decode("ascii") + "@" + domain


def parse_btid(value: str) -> tuple[bytes, str]:
    """(RAND, BSF domain) of a B-TID; :class:`IdentifierError` when it is not one of ours."""
    local, sep, domain = value.rpartition("@")
    if not sep or not local:
        raise IdentifierError(f"B-TID {value[:80]!r} is not base64(RAND)@BSF-domain")
    try:
        rand = base64.b64decode(local, validate=True)
    except (binascii.Error, ValueError):
        raise IdentifierError(f"B-TID {value[:80]!r}: the part before '@' is not base64") from None
    if len(rand) != _RAND_LENGTH:
        raise IdentifierError(f"B-TID {value[:80]!r}: RAND is not 16 octets")
    return rand, check_fqdn(domain, "BSF domain in B-TID")
