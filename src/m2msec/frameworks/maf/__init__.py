"""MAF-Based Symmetric Key Security Association Establishment (TS-0003 8.2.2.3, seed 001).

Three parties: Entity A (the Source MAF Client, e.g. TR-0038's smartphone), the M2M
Authentication Function (MAF) and Entity B (an Infrastructure Node; our gateway in front
of the IN-CSE, acting as Target MAF Client). This package holds the two MAF Clients; the
MAF itself is :mod:`m2msec.maf` and :mod:`m2msec.servers.maf`. One concern a module:

* :mod:`.common`: what both MAF Clients share (records, errors, reading the MAF's
  answers, the start of a TLS profile; 8.8.2, 10.2.2);
* :mod:`.client`: Entity A <-> MAF, the MAF Handshake (8.8.2.2) and the Client and Key
  Registration procedures over it (8.8.2.3-8.8.2.7, 8.8.2.9, 8.8.2.10);
* :mod:`.initiator`: Entity A <-> Entity B, TLS-PSK with KcId/Kc (8.2.2.3, docs/readings.md
  A-16 for the renewal after a refused Kc);
* :mod:`.retrieval`: Entity B <-> MAF, Key Retrieval (8.8.2.8, docs/readings.md A-17);
* :mod:`.responder`: Entity B, resolving a KcId and binding the session (8.2.2.3,
  docs/readings.md A-06).

Keys never appear in ``repr``, logs or error messages; key identifiers do.
"""

from m2msec.frameworks.maf.client import (
    DEFAULT_CLIENT_LIFETIME,
    DEFAULT_KEY_LIFETIME,
    MafClient,
    MafSession,
    absolute_target,
)
from m2msec.frameworks.maf.common import (
    SUID_MAF_SAEF,
    IssuedKc,
    KeyRetrievalError,
    MafClientRegistration,
    MafError,
    RetrievedKc,
    format_time,
    parse_time,
)
from m2msec.frameworks.maf.initiator import MafInitiator
from m2msec.frameworks.maf.responder import MafResponder
from m2msec.frameworks.maf.retrieval import MafKeyRetriever, RetrieverStats

__all__ = [
    "DEFAULT_CLIENT_LIFETIME",
    "DEFAULT_KEY_LIFETIME",
    "SUID_MAF_SAEF",
    "IssuedKc",
    "KeyRetrievalError",
    "MafClient",
    "MafClientRegistration",
    "MafError",
    "MafInitiator",
    "MafKeyRetriever",
    "MafResponder",
    "MafSession",
    "RetrievedKc",
    "RetrieverStats",
    "absolute_target",
    "format_time",
    "parse_time",
]
