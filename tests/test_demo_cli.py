"""``m2msec demo`` and ``m2msec connect`` as a user runs them (real ACME CSEs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.interop
def test_demo_runs_tr0038_scenario() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "m2msec.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        # PYTHONPATH: this checkout's m2msec, whichever tree the editable install names.
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": SRC},
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    # Both lights registered by PSK and the home gateway reached the IN-CSE by certificate.
    assert "ADN-AE1 registers as Clight-AE1: X-M2M-RSC 2001 ok" in out
    assert "ADN-AE2 registers as Clight-AE2: X-M2M-RSC 2001 ok" in out
    assert "gateway refuses, ORIGINATOR_NOT_AUTHENTICATED: X-M2M-RSC 4106 ok" in out
    assert "MN-CSE registers at the IN-CSE (<remoteCSE>): X-M2M-RSC 2001 ok" in out
    # ADN-AE1 as a constrained light: CoAP over DTLS-PSK through the same gateway rules.
    assert "ADN-AE1 publishes state 'off' by CoAP: CoAP 2.01 Created, oneM2M-RSC 2001 ok" in out
    assert "on ADN-AE1's DTLS association: CoAP 4.03 Forbidden, oneM2M-RSC 4106 ok" in out
    # The GBA device bootstraps, associates, registers, and reuses Ks the second time.
    assert "GBA device registers an AE (Credential-ID 12-<B-TID>): X-M2M-RSC 2001 ok" in out
    assert "second association reuses Ks (no Ub run): ok" in out
    # The smartphone reaches the IN-CSE through the MAF and may only be the MAF's IdA.
    assert "smartphone registering as Clight-AE1 is refused: X-M2M-RSC 4106 ok" in out
    assert "smartphone registers as Csmartphone, the MAF's IdA: X-M2M-RSC 2001 ok" in out
    # A factory-fresh meter enrols at the MEF (PSK bootstrap) for the home gateway, which
    # had no psk row for it and fetches the Kpsa from the MEF; its AE registers.
    assert "MN-CSE psk table (2 rows) holds no row for /mn-cse-123456/Cmeter-1: ok" in out
    assert "meter-0001: TLS-PSK bootstrap as KpmID meter-0001 (PSK bootstrap, 8.3.2.1)" in out
    assert re.search(r"Enrolment Exchange: KeID [0-9a-f]{32}@mef\.in\.provider\.com", out)
    assert "meter registers as Cmeter-1, the AE its Enrolee-ID names: X-M2M-RSC 2001 ok" in out
    assert "meter speaking as Clight-AE1 is refused: X-M2M-RSC 4106 ok" in out
    assert "MN-CSE psk table still holds no row for it: ok" in out
    # A second device enrols for the MAF by GBA bootstrap at the MEF's BSF (KmID = B-TID);
    # the MAF fetches Km = Ks_NAF over Zn, and the AE the sensor's USS names registers.
    assert "9. Sensor to IN-CSE: MEF GBA bootstrap (seed 004 8.3.3.1) for the MAF" in out
    assert "GUSS allows NAF maf.provider.com as Csensor-2" in out
    assert re.search(
        r"sensor-0002@ims\.\S+: Ub bootstrap at the MEF's BSF \(Digest AKA\), "
        r"KeID = B-TID \S+==@mef\.in\.provider\.com",
        out,
    )
    assert "MAF Handshake with KmID = B-TID (Km = Ks_NAF from Zn)" in out
    assert "sensor registers as Csensor-2, the AE-ID its USS names: X-M2M-RSC 2001 ok" in out
    assert "MAF store holds no Master Credential for the B-TID: ok" in out
    assert "MEF's BSF: 1 Ub bootstrap, Km given once over Zn to the MAF: ok" in out
    assert "MEF: 1 PSK enrolment, its Kpsa fetched once by the gateway: ok" in out
    # Entity B's SA records bind the AE-IDs from the psk table and the CSE-ID from the cert.
    table = out[out.index("Security associations established") :]
    for expected in (
        "Clight-AE1",
        "Clight-AE2",
        "/mn-cse-123456",
        "certificate",
        "DTLSv1.2",
        "gba",
        "maf",
        "Csmartphone",
        "/mn-cse-123456/Cmeter-1",
        "Csensor-2",
    ):
        assert expected in table
    assert "All steps behaved as TS-0003 and TR-0038 describe." in out
    assert "1a2b3c4d5e6f7a8b" not in out + done.stderr  # no key material printed
    # Nor the drawn Kpm, Ke, Kpsa, Km or Kc: no run of hex digits longer than a KeID's.
    assert not re.search(r"[0-9a-fA-F]{33,}", out + done.stderr)
