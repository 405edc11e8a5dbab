"""``m2msec mef``: the M2M Enrolment Function (TS-0003 8.3, seed 004) from the shell.

Minimal stand-in for the merge: the store commands of :mod:`m2msec.cli.mef_admin`
(``serve`` comes with :mod:`m2msec.servers.mef`).
"""

from __future__ import annotations

from m2msec.cli import mef_admin
from m2msec.cli.common import sub_app

__all__ = ["app"]

app = sub_app("mef", "The M2M Enrolment Function (TS-0003 8.3).")
mef_admin.register(app)
