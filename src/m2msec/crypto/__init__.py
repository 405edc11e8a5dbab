"""Cryptographic helpers of m2msec: TS-0003 10.3 key export and derivations
(``keyexport``), GBA key derivation (``gba``, 3GPP TS 33.220 annex B) and MILENAGE
(``milenage``, 3GPP TS 35.206). Import the module you need; nothing is re-exported here."""
