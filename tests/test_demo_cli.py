"""``m2msec demo`` and ``m2msec connect`` as a user runs them (real ACME CSEs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.interop
def test_demo_runs_tr0038_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "m2msec.cli", "demo", "--workdir", str(tmp_path)],
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
    _assert_chain_over_two_sas(out, tmp_path)
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


def _assert_chain_over_two_sas(out: str, workdir: Path) -> None:
    """Step 5: ADN-AE1 -> MN-CSE -> IN-CSE with ACME on both CSEs (issue 12 item 5). ACME
    as the MN-CSE registers at ACME IN through the home gateway's egress; ADN-AE1's
    requests for the IN-CSE cross SA 1 (PSK) and SA 2 (certificates, kept by the egress)."""
    egress = re.search(r"egress://127\.0\.0\.1:(\d+) \(egress: ACME MN-CSE's registrar\)", out)
    assert egress, out
    egress_url = f"http://127.0.0.1:{egress[1]}"
    # ACME itself was told to register there, and says (in its own log) that it did.
    ini = (workdir / "acme-mn" / "acme.ini").read_text()
    assert "cseType=MN" in ini and f"address={egress_url}\n" in ini
    acme_log = "".join(p.read_text() for p in (workdir / "acme-mn" / "logs").glob("*.log"))
    assert "Registered to registrar CSE: /id-in" in acme_log
    assert "ACME MN-CSE registered at the IN-CSE through the egress (its log): ok" in out
    # The <remoteCSE> it created, retrieved at ACME IN.
    assert "<remoteCSE> mn-cse-123456 exists at ACME IN-CSE, csi /mn-cse-123456: ok" in out
    # Honest variant, said out loud: ACME forwards to its registrar's published poa.
    assert "poa set to the egress (operator): ok" in out
    # The requests that crossed both SAs, answered by ACME IN.
    assert "ADN-AE1 publishes 'on' at the IN-CSE (/~/id-in/cse-in/home): X-M2M-RSC 2001 ok" in out
    assert (
        "ADN-AE1 reads it back from the IN-CSE (/~/id-in/cse-in/home/la): X-M2M-RSC 2000 ok" in out
    )
    assert "both crossed the egress (2 relayed) and SA 2 (IN gateway: 2): ok" in out
    # SA 1: the light's context and the home gateway's record name one SA.
    assert re.search(r"SA 1: ADN-AE1 -> home gateway, PSK, sa=[0-9a-f]{32}\n", out)
    assert "SA 1: the home gateway holds the same sa_id, bound to Clight-AE1: ok" in out
    # SA 2: the egress's record and the IN gateway's record show the same sa_id.
    ends = re.findall(
        r"SA 2: egress record sa=([0-9a-f]{32}) peer=/id-in certificate\n"
        r"\s+IN gateway\s+sa=([0-9a-f]{32}) peer=/mn-cse-123456\n",
        out,
    )
    assert ends and all(a == b for a, b in ends), out
    assert "SA 2: the egress and the IN gateway hold the same sa_id: ok" in out
    assert "egress refuses another CSE's From, ORIGINATOR_HAS_NO_PRIVILEGE: ok" in out
    # The egress's counters: the registration's requests and the chain's, relayed.
    stats = re.search(
        r"Home gateway egress: (\d+) SA\(s\) established to the IN-CSE, "
        r"(\d+) requests relayed, 1 refused, 0 upstream errors",
        out,
    )
    assert stats and int(stats[1]) >= 1 and int(stats[2]) >= 4, out
    table = out[out.index("Security associations established") :]
    assert re.search(
        r"MN-CSE egress -> IN-CSE \(SA 2\)\s+│ certificate\s+│ /id-in\s+│ "
        r"/mn-cse-123456",
        table,
    ), table
    # The credentials table the egress read: 0600, paths only, no key octets.
    creds = workdir / "mn-gateway-credentials.toml"
    assert creds.stat().st_mode & 0o777 == 0o600
    assert "BEGIN" not in creds.read_text()
