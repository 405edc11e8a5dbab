"""Generic Bootstrapping Architecture (3GPP TS 33.220) for the GBA-based SAEF.

Seed 000 8.2.3.2 (legacy in V3.18, docs/readings.md A-10) lets Entity A use Ks_(ext/int)_NAF from
GBA as the TLS-PSK of an association with Entity B. This package holds the network and
device machinery behind that key:

* :mod:`m2msec.gba.aka` - 3G AKA (TS 33.102 6.3): the USIM side and the HSS side,
  AUTN/AUTS, SQN freshness and resynchronisation, on MILENAGE.
* :mod:`m2msec.gba.digest` - HTTP Digest AKA (RFC 3310 over RFC 2617), sans-IO.
* :mod:`m2msec.gba.subscribers` - the HSS simulator's subscriber store and the BSF's
  bootstrapping sessions (SQLite, secrets sealed).
* :mod:`m2msec.gba.wire` - the Ub and Zn messages, written and read by both ends (sans-IO).
* :mod:`m2msec.gba.ub` - Entity A's Ub client (TS 24.109 bootstrapping over HTTP).
* :mod:`m2msec.gba.zn` - the NAF's Zn client, over HTTP on mutually authenticated TLS
  (our mapping; TS 29.109 uses Diameter).
* :mod:`m2msec.gba.service` - the BSF's answers on Ub and Zn, without asyncio.

The BSF's listeners and lifecycle are :mod:`m2msec.servers.bsf`.
"""
