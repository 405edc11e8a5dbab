"""The M2M Enrolment Function (MEF) of TS-0003 8.3, sans-IO core (tracker issue 11).

Seed 004 generalises the Pre-Provisioned Symmetric Key bootstrap (TS-0003 V3.18 8.3.2.1):
the MEF provisions either a Master Credential Km for a MAF or a Provisioned Secure
Connection Key Kpsa for an "Enrolee B" (a CSE or AE). Here, without sockets:

- :mod:`m2msec.mef.keys`: Enrolment Key Generation (10.3.1, 10.3.4) and the Km / Kpsa
  derivations (10.3.2, 10.3.3);
- :mod:`m2msec.mef.records`: the Bootstrap Instruction Configuration of an Enrolee, its
  Enrolment Target, an enrolment (Ke, KeID, Enrolment Expiry, 10.7) and audit records;
- :mod:`m2msec.mef.store`: where they live (SQLite or PostgreSQL, keys sealed at rest);
- :mod:`m2msec.mef.wire`: the Enrolment Exchange answer and fetchCredentials
  (tables 8.3.2.1-5 and -6) for both roles;
- :mod:`m2msec.mef.service`: the MEF's decisions (:class:`~m2msec.mef.service.MefService`).

docs/mef.md describes the HTTP mapping and the choices where the seed is open.
"""
