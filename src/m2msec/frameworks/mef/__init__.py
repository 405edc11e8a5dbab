"""The Enrolee of the MEF-based bootstrap (TS-0003 8.3.2.1, 8.3.2.2, seed 004; docs/mef.md).

* :class:`Enrolee` (:mod:`.enrolee`): the bootstrap handshake with a :class:`KpmCredential`
  or a certificate, Enrolment Key Generation
  (10.3.1) and the Enrolment Exchange, then Km (10.3.2) or Kpsa (10.3.3) for the target;
* :class:`EnrolmentResult` (:mod:`.result`): KeID, target, expiry, the credential;
* :class:`EnroleeStore` (:mod:`.store`): those results, sealed, under ``$M2MSEC_HOME``;
  :func:`enrol_or_reuse` reuses a live Ke and bootstraps again when it has expired.
"""

from m2msec.frameworks.mef.enrolee import Enrolee, EnrolmentError, KpmCredential, enrol_or_reuse
from m2msec.frameworks.mef.result import EnrolmentResult
from m2msec.frameworks.mef.store import EnroleeStore, default_enrolee_store_path

__all__ = [
    "Enrolee",
    "EnroleeStore",
    "EnrolmentError",
    "EnrolmentResult",
    "KpmCredential",
    "default_enrolee_store_path",
    "enrol_or_reuse",
]
