"""MAF-Based Symmetric Key Security Association Establishment, client side (TS-0003 8.2.2.3).

Moved into a package; :mod:`.client` still holds every role while it is split.
"""

from m2msec.frameworks.maf.client import *  # noqa: F403
from m2msec.frameworks.maf.client import __all__, _same_entity  # noqa: F401
