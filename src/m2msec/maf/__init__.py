"""The M2M Authentication Function (MAF) of TS-0003 8.8, server side.

The MAF-based Security Association Establishment Framework (TS-0003 8.2.2.3, as corrected
by the seed CR ``001``) puts a MAF between Entity A and Entity B: Entity A runs the MAF
Handshake (8.8.2.2, TLS-PSK with psk_identity = KmId, psk = Km) and the Key Registration
procedure (8.8.2.7), both sides export Kc and KcID from that TLS session (10.3.1), and
Entity B, an Infrastructure Node, later fetches Kc with the Key Retrieval procedure
(8.8.2.8) over a mutually authenticated channel.

* :mod:`m2msec.maf.store`: the MAF's own store (Master Credentials, allowed Entity Bs,
  client registrations, key registrations), SQLite, secrets sealed at rest;
* :mod:`m2msec.maf.protocol`: our HTTP mapping of the 8.8.2 procedures, sans-IO;
* :mod:`m2msec.maf.requests` (routing, parsing) and :mod:`m2msec.maf.rules` (each
  procedure's rules over the store's reads, the success bodies), sans-IO;
* :mod:`m2msec.maf.audit`: the append-only audit log (never key material);
* :mod:`m2msec.servers.maf`: the asyncio server (``m2msec maf serve``).

The mapping is documented in ``docs/maf.md`` (TS-0032 is not available to us).
"""

from __future__ import annotations
