"""The Enrolee (TS-0003 8.3.2.1, 8.3.2.2, seed 004): its sealed store, its checks of the
MEF's answer, ``m2msec enrol`` and ``m2msec connect`` with an enrolled KeID.

The MEF is our real :class:`~m2msec.servers.mef.MefServer` on loopback (helpers of
tests/test_mef_server.py); the Enrolment Targets fetch with real mutual TLS. Only the
answer-checking tests hand the Enrolee a crafted MEF answer: no real MEF answers another
KeID than the one it exported, so no real peer can show that refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec.cli.main import app
from m2msec.config.maf import MafConfig
from m2msec.errors import DuplicateCredentialError, StoreError
from m2msec.frameworks.mef import (
    Enrolee,
    EnroleeStore,
    EnrolmentError,
    EnrolmentResult,
    KpmCredential,
    default_enrolee_store_path,
    enrol_or_reuse,
)
from m2msec.keyids import KeId
from m2msec.maf.store import MafStore
from m2msec.mef.keys import EnrolmentKey, derive_for_target
from m2msec.mef.records import Bootstrap
from m2msec.mef.records import Enrolee as EnroleeConfig
from m2msec.servers.gateway import Gateway
from m2msec.servers.maf import MafServer
from m2msec.servers.mef import MefServer
from m2msec.service.onem2m_client import OneM2MResponse
from m2msec.store.base import PskEntry
from m2msec.store.sqlite import SqlitePskStore
from m2msec.tls.profiles import Transport
from tests.test_gateway import CSE, SNI, Echo, gw_config
from tests.test_mef_server import (
    CERT_ENROLEE,
    ENROLEE_ID,
    GATEWAY,
    HOST,
    IN_DOMAIN,
    KEK,
    KPM,
    KPM_ID,
    MAF,
    MAF_FQDN,
    MAF_KPM_ID,
    MEF_FQDN,
    Pki,
    fetch,
    make_pki,
    mef_config,
    seed_store,
    target,
)

# The vectors of tests/test_mef_keys.py: an export, its Ke, the 10.3.3 label.
EXPORT = bytes(range(48))
KE = bytes(range(16, 48))
KPSA_LABEL = b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"
LATER = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("enrolee-pki"))


@pytest.fixture
async def mef(pki: Pki, tmp_path: Path) -> AsyncIterator[MefServer]:
    store = seed_store(tmp_path / "mef.db")
    async with MefServer(mef_config(pki, tmp_path), store) as server:
        yield server
    store.close()


def psk_enrolee(server: MefServer, kpm_id: str = KPM_ID, kpm: bytes = KPM) -> Enrolee:
    return Enrolee(HOST, server.listener("enrolee").port, MEF_FQDN, KpmCredential(kpm_id, kpm))


def result(expires: datetime = LATER, *, boot: str = KPM_ID, rel: int = 0) -> EnrolmentResult:
    key = EnrolmentKey.from_export(bytes([rel]) + EXPORT[1:], MEF_FQDN)
    kpsa = derive_for_target(key.ke, "/in-cse", enrolee_b=True)
    return EnrolmentResult(key.ke_id, GATEWAY, ENROLEE_ID, expires, boot, key.ke, kpsa)


async def fetched_credential(server: MefServer, pki: Pki, got: EnrolmentResult) -> bytes:
    """What the target's own fetchCredentials (8.3.2.1 step f) gets for ``got``."""
    who, suid = ("/in-cse", 22) if got.target.is_enrolee_b else (MAF_FQDN, 21)
    client = await target(server, pki.creds[who])
    answer = await fetch(client, str(got.ke_id), suid, who)
    await client.close()
    assert answer.rsc == 2000, answer.body
    return bytes.fromhex(answer.json()["fetchCredentials"]["credential"])


# ----------------------------------------------------------------------------- the store


def test_store_keeps_enrolments_sealed_and_finds_the_live_one(tmp_path: Path) -> None:
    path = tmp_path / "enrolee.db"
    store = EnroleeStore(path, kek=KEK)
    kept = result()
    store.save(kept)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.get(kept.ke_id) == kept
    assert store.get(str(kept.ke_id).upper().replace("@MEF", "@mef")) == kept  # hex in any case
    assert store.current(MEF_FQDN.upper(), GATEWAY, KPM_ID) == kept
    assert store.current(MEF_FQDN, GATEWAY, KPM_ID, now=LATER) is None  # expired: bootstrap
    assert store.current(MEF_FQDN, GATEWAY, "other@mef.in.provider.com") is None
    assert store.current(MEF_FQDN, MAF, KPM_ID) is None
    assert store.list() == [(kept.ke_id, GATEWAY, LATER)]
    with pytest.raises(DuplicateCredentialError):
        store.save(kept)
    store.close()
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("enrolee.db-*"))
    for secret in (kept.ke, kept.credential):
        assert secret not in raw and secret.hex().encode() not in raw
        assert secret.hex() not in repr(kept)
    assert str(kept.ke_id) in repr(kept)


def test_a_fresh_enrolment_erases_the_expired_ones(tmp_path: Path) -> None:
    store = EnroleeStore(tmp_path / "enrolee.db", kek=KEK)
    old = result(datetime.now(UTC) - timedelta(seconds=1), rel=1)
    store.save(old)
    assert store.current(MEF_FQDN, GATEWAY, KPM_ID) is None
    store.save(result(rel=2))
    assert store.get(old.ke_id) is None
    assert [k for k, _, _ in store.list()] == [result(rel=2).ke_id]
    store.close()


def test_a_row_edited_without_the_kek_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "enrolee.db"
    store = EnroleeStore(path, kek=KEK)
    kept = result()
    store.save(kept)
    store.close()
    with sqlite3.connect(path) as conn:  # a longer expiry, written without the KEK
        conn.execute("UPDATE enrolments SET expires_at = expires_at + 86400")
    store = EnroleeStore(path, kek=KEK)
    with pytest.raises(StoreError, match="cannot unseal the keys of KeID"):
        store.get(kept.ke_id)
    store.close()
    with pytest.raises(StoreError):
        EnroleeStore(path, kek=bytes(32))  # another KEK


def test_default_store_is_in_m2msec_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("M2MSEC_KEK", raising=False)
    store = EnroleeStore()
    store.save(result())
    store.close()
    path = default_enrolee_store_path()
    assert path == tmp_path / "home" / "enrolee.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "home" / "kek").stat().st_mode) == 0o600


# ----------------------------------------------------------------------------- the answer


def answer(ke_id: str, target: dict[str, str]) -> OneM2MResponse:
    body = {"mefEnrol": {"keID": ke_id, **target, "enroleeID": ENROLEE_ID,
                         "expirationTime": "20300101T000000"}}  # fmt: skip
    return OneM2MResponse(201, 2001, {}, json.dumps(body).encode())


def test_the_enrolee_derives_kpsa_of_the_vectors() -> None:
    enrolee = Enrolee(HOST, 1, MEF_FQDN, KpmCredential(KPM_ID, KPM))
    key = EnrolmentKey.from_export(EXPORT, MEF_FQDN)
    got = enrolee._result(key, GATEWAY, answer(str(key.ke_id), {"enroleeBID": "/in-cse"}))
    assert got.ke == KE and got.ke_id == key.ke_id and got.expires == LATER
    expected = hmac.new(KE, KPSA_LABEL + b"/in-cse", hashlib.sha256).digest()
    assert got.credential == expected and got.key_name == "Kpsa"
    assert got.bootstrap_id == KPM_ID and got.enrolee_id == ENROLEE_ID


def test_another_ke_id_or_target_in_the_answer_is_refused() -> None:
    enrolee = Enrolee(HOST, 1, MEF_FQDN, KpmCredential(KPM_ID, KPM))
    key = EnrolmentKey.from_export(EXPORT, MEF_FQDN)
    other = KeId(bytes(16), MEF_FQDN)
    with pytest.raises(EnrolmentError, match="did not share the bootstrap session"):
        enrolee._result(key, GATEWAY, answer(str(other), {"enroleeBID": "/in-cse"}))
    elsewhere = f"{key.ke_id.relative_hex}@mef2.in.provider.com"
    with pytest.raises(EnrolmentError, match="did not share"):
        enrolee._result(key, GATEWAY, answer(elsewhere, {"enroleeBID": "/in-cse"}))
    with pytest.raises(EnrolmentError, match="enrolled for maf:"):
        enrolee._result(key, GATEWAY, answer(str(key.ke_id), {"mafID": MAF_FQDN}))
    refused = OneM2MResponse(403, 4103, {}, b'{"m2m:dbg": "not configured"}')
    with pytest.raises(EnrolmentError, match=r"refused by the MEF .*4103.*not configured") as e:
        enrolee._result(key, GATEWAY, refused)
    assert e.value.rsc == 4103


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
async def test_psk_enrolee_and_enrolee_b_hold_the_same_kpsa(
    mef: MefServer, pki: Pki, tls13: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = mef.listener("enrolee").port
    enrolee = Enrolee(HOST, port, MEF_FQDN, KpmCredential(KPM_ID, KPM), tls13=tls13)
    got = await enrolee.enrol(GATEWAY)
    assert got.ke_id.mef_fqdn == MEF_FQDN and got.target == GATEWAY
    assert got.enrolee_id == ENROLEE_ID and got.expires > datetime.now(UTC)
    assert got.credential == derive_for_target(got.ke, "/in-cse", enrolee_b=True)
    assert await fetched_credential(mef, pki, got) == got.credential
    for secret in (KPM, got.ke, got.credential):
        assert secret.hex() not in caplog.text and secret.hex() not in repr(got)


async def test_psk_enrolee_and_maf_hold_the_same_km(mef: MefServer, pki: Pki) -> None:
    got = await psk_enrolee(mef, MAF_KPM_ID).enrol(MAF)
    assert got.key_name == "Km"
    assert got.credential == derive_for_target(got.ke, MAF_FQDN, enrolee_b=False)
    assert await fetched_credential(mef, pki, got) == got.credential


async def test_certificate_enrolee(mef: MefServer, pki: Pki) -> None:
    port = mef.listener("enrolee", "certificate").port
    enrolee = Enrolee(HOST, port, MEF_FQDN, pki.creds[CERT_ENROLEE], in_domain=IN_DOMAIN)
    assert enrolee.bootstrap_id == CERT_ENROLEE
    got = await enrolee.enrol()  # the target the MEF has configured
    assert got.target == GATEWAY and got.bootstrap_id == CERT_ENROLEE
    assert await fetched_credential(mef, pki, got) == got.credential


async def test_refusals_reach_the_enrolee(mef: MefServer) -> None:
    with pytest.raises(EnrolmentError, match="bootstrap handshake with the MEF") as e:
        await psk_enrolee(mef, KPM_ID, b"\xee" * 32).enrol(GATEWAY)
    assert e.value.rsc is None
    with pytest.raises(EnrolmentError, match="RSC 4103") as e:
        await psk_enrolee(mef).enrol(MAF)  # configured for the gateway, not the MAF
    assert e.value.rsc == 4103
    assert mef.stats["enrolments"] == 0


async def test_a_live_ke_is_reused_and_an_expired_one_bootstraps_again(
    pki: Pki, tmp_path: Path
) -> None:
    store = seed_store(tmp_path / "mef.db")
    short = EnroleeConfig(Bootstrap.PSK, KPM_ID, ENROLEE_ID, GATEWAY, timedelta(seconds=2), KPM)
    store.add_enrolee(short, replace=True)
    enrolments = EnroleeStore(tmp_path / "enrolee.db", kek=KEK)
    async with MefServer(mef_config(pki, tmp_path), store) as server:
        enrolee = psk_enrolee(server)
        first, reused = await enrol_or_reuse(enrolee, GATEWAY, enrolments)
        assert not reused
        again, reused = await enrol_or_reuse(enrolee, GATEWAY, enrolments)
        assert reused and again == first and server.stats["enrolments"] == 1
        await asyncio.sleep(max(0.0, (first.expires - datetime.now(UTC)).total_seconds()) + 0.1)
        fresh, reused = await enrol_or_reuse(enrolee, GATEWAY, enrolments)
        assert not reused and fresh.ke_id != first.ke_id
        assert server.stats["enrolments"] == 2
        assert enrolments.get(first.ke_id) is None  # the expired Ke is erased
        assert await fetched_credential(server, pki, fresh) == fresh.credential
        renewed, reused = await enrol_or_reuse(enrolee, GATEWAY, enrolments, fresh=True)
        assert not reused and renewed.ke_id != fresh.ke_id
    enrolments.close()
    store.close()


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kpm-id", KPM_ID, "--kpm", "-"], "exactly one of --maf-id and --enrolee-b"),
        (["--kpm-id", KPM_ID, "--kpm", "-", "--maf-id", MAF_FQDN, "--enrolee-b", "/in-cse"],
         "exactly one of"),
        (["--enrolee-b", "/in-cse"], "give --kpm-id with --kpm or --kpm-file, or --cert"),
        (["--kpm-id", KPM_ID, "--enrolee-b", "/in-cse"], "--kpm-id needs --kpm"),
        (["--kpm-id", KPM_ID, "--kpm", "-", "--kpm-file", "f", "--enrolee-b", "/in-cse"],
         "not both"),
        (["--kpm-id", KPM_ID, "--cert", "c", "--enrolee-b", "/in-cse"], "not both"),
        (["--kpm-id", KPM_ID, "--kpm", "-", "--maf-id", MAF_FQDN, "--naf-fqdn", "n.example"],
         "--naf-fqdn goes with --enrolee-b"),
        (["--kpm-id", KPM_ID, "--kpm", "-", "--enrolee-b", "Cbare"], "Cbare"),
        (["--kpm-id", "bad id", "--kpm", "-", "--enrolee-b", "/in-cse"], "invalid KpmID"),
        (["--kpm-id", KPM_ID, "--kpm", KPM.hex(), "--enrolee-b", "/in-cse"],
         "give --kpm - (standard input), --kpm @FILE or --kpm-file FILE"),
        (["--kpm-id", KPM_ID, "--kpm", "-", "--enrolee-b", "/in-cse"], "the Kpm must be 16 to"),
    ],
)
def test_enrol_option_errors(argv: list[str], message: str, tmp_path: Path) -> None:
    mef = ["--mef", f"tls://{MEF_FQDN}:1", "--store", str(tmp_path / "e.db")]
    got = CliRunner().invoke(app, ["enrol", *mef, *argv], input="00\n")
    assert got.exit_code == 2, got.output
    assert KPM.hex() not in got.output
    assert message in " ".join(got.output.split())
    assert not (tmp_path / "e.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://mef.in.provider.com:1", "tls://HOST:PORT"),
        ("tls://mef.in.provider.com", "tls://HOST:PORT"),
        ("coaps://mef.in.provider.com:1", "tls://HOST:PORT or dtls://HOST:PORT"),
        ("tls://127.0.0.1:1", "give the MEF's FQDN with --mef-fqdn"),
    ],
)
def test_enrol_mef_url_errors(url: str, message: str) -> None:
    argv = ["enrol", "--mef", url, "--kpm-id", KPM_ID, "--kpm", "-", "--enrolee-b", "/in-cse"]
    got = CliRunner().invoke(app, argv)
    assert got.exit_code == 2 and message in " ".join(got.output.split()), got.output


async def run_cli(home: Path, *argv: str, stdin: bytes = b"") -> tuple[int, str]:
    env = {**os.environ, "M2MSEC_HOME": str(home), "COLUMNS": "200"}
    env.pop("M2MSEC_KEK", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "m2msec.cli", *argv,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_enrol_then_connect_to_the_gateway_with_the_kpsa(
    mef: MefServer, pki: Pki, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    kpm_file = tmp_path / "kpm.hex"
    kpm_file.write_text(KPM.hex() + "\n")
    enrol = ["enrol", "--mef", f"tls://{HOST}:{mef.listener('enrolee').port}",
             "--mef-fqdn", MEF_FQDN, "--kpm-id", KPM_ID, "--enrolee-b", "/in-cse"]  # fmt: skip
    code, out = await run_cli(home, *enrol, "--kpm", "-", stdin=KPM.hex().encode() + b"\n")
    assert code == 0, out
    assert "enrolled" in out and ENROLEE_ID in out and "enrolee-b:/in-cse (Kpsa)" in out
    ke_id = next(w for w in out.split() if w.endswith("@" + MEF_FQDN))
    code, again = await run_cli(home, *enrol, "--kpm-file", str(kpm_file))
    assert code == 0 and "reused" in again and ke_id in again, again
    assert mef.stats["enrolments"] == 1

    with EnroleeStore(home / "enrolee.db") as enrolments:
        held = enrolments.get(ke_id)
    assert held is not None
    kpsa = await fetched_credential(mef, pki, held)
    assert kpsa == held.credential
    for secret in (KPM, held.ke, kpsa):
        assert secret.hex() not in out + again

    # The gateway's psk table gets the row the gateway would fetch (the MEF's answer).
    psk = SqlitePskStore(tmp_path / "psk.db")
    psk.add_many([PskEntry(ke_id, kpsa, ENROLEE_ID, held.expires)])
    async with Echo() as echo:
        gateway = Gateway(gw_config(echo.url), store=psk)
        await gateway.start()
        try:
            port = next(i.port for i in gateway.listeners if i.framework == "provisioned-psk")
            code, out = await run_cli(
                home, "connect", f"https://{HOST}:{port}/~/mn-cse-123456/x", "--from", "Cdevice-1",
                "--id-b", CSE, "--servername", SNI, "--psk-identity", ke_id,
            )  # fmt: skip
        finally:
            await gateway.close()
    psk.close()
    assert code == 0, out
    assert "provisioned-psk" in out and ke_id in out and "X-M2M-RSC: 2001" in out
    assert kpsa.hex() not in out
    # The gateway bound the association to the Enrolee-ID the MEF answered with the Kpsa.
    assert echo.seen and dict(echo.seen[0]["headers"])["x-m2msec-peer-id"] == ENROLEE_ID


async def test_connect_without_a_stored_or_live_ke_id_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ke_id = str(result().ke_id)
    connect = ["connect", "https://127.0.0.1:1/x", "--from", "Cx", "--id-b", CSE]
    code, out = await run_cli(home, *connect, "--psk-identity", ke_id)
    assert code == 1 and "is not in the Enrolee store: run m2msec enrol" in out, out
    home.mkdir(exist_ok=True)
    with EnroleeStore(home / "enrolee.db") as enrolments:
        enrolments.save(result(datetime.now(UTC) - timedelta(seconds=1)))
    code, out = await run_cli(home, *connect, "--psk-identity", ke_id)
    assert code == 1 and "expired at" in out and "run m2msec enrol again" in out, out
    maf = ["--maf", "tls://127.0.0.1:1", "--km-id", ke_id]
    code, out = await run_cli(home, *connect, *maf)
    assert code == 1 and "expired" in out, out


def test_enrol_is_a_command_and_names_its_options() -> None:
    got = CliRunner().invoke(app, ["enrol", "--help"], env={"COLUMNS": "200"})
    assert got.exit_code == 0, got.output
    for name in ("--mef", "--kpm-id", "--kpm-file", "--cert", "--maf-id", "--enrolee-b",
                 "--mef-fqdn", "--renew", "--store"):  # fmt: skip
        assert name in got.output


async def test_connect_takes_km_of_an_enrolled_ke_id_to_the_maf(
    mef: MefServer, tmp_path: Path
) -> None:
    """The MAF Handshake (8.8.2.2) with KmID = KeID and the Km the Enrolee derived; the MAF
    knows it here because its store is seeded with what fetchCredentials would give it."""
    home = tmp_path / "home"
    port = mef.listener("enrolee").port
    code, out = await run_cli(
        home, "enrol", "--mef", f"tls://{HOST}:{port}", "--mef-fqdn", MEF_FQDN,
        "--kpm-id", MAF_KPM_ID, "--kpm", "-", "--maf-id", MAF_FQDN, stdin=KPM.hex().encode(),
    )  # fmt: skip
    assert code == 0 and f"maf:{MAF_FQDN} (Km)" in out, out
    ke_id = next(w for w in out.split() if w.endswith("@" + MEF_FQDN))
    with EnroleeStore(home / "enrolee.db") as enrolments:
        held = enrolments.get(ke_id)
    assert held is not None
    maf_store = MafStore(tmp_path / "maf.db", kek=KEK)
    maf_store.add_client(ke_id, held.credential, "/mn-cse-2/Cdev2")
    maf_store.add_entity_b("/in-cse")
    config = MafConfig(fqdn=MAF_FQDN, listen=f"tls://{HOST}:0", retrieval_listen=None,
                       audit_log=str(tmp_path / "audit.log"))  # fmt: skip
    async with MafServer(config, maf_store) as maf:
        code, out = await run_cli(
            home, "connect", "https://127.0.0.1:1/x", "--from", "Cdev2", "--id-b", "/in-cse",
            "--maf", f"tls://{HOST}:{maf.client_port}", "--km-id", ke_id,
        )  # fmt: skip
        issued = maf.stats.keys_issued
    maf_store.close()
    assert issued == 1, out  # the MAF Handshake and Key Registration went through
    assert code == 1 and "cannot reach 127.0.0.1:1" in out  # no gateway listens there
    assert held.credential.hex() not in out


async def test_enrol_with_a_certificate_from_the_shell(
    mef: MefServer, pki: Pki, tmp_path: Path
) -> None:
    key, cert = pki.files[CERT_ENROLEE]
    port = mef.listener("enrolee", "certificate").port
    code, out = await run_cli(
        tmp_path / "home", "enrol", "--mef", f"tls://{HOST}:{port}", "--mef-fqdn", MEF_FQDN,
        "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca.cert_path),
        "--enrolee-b", "/in-cse",
    )  # fmt: skip
    assert code == 0 and "enrolled" in out and CERT_ENROLEE in out, out
    code, out = await run_cli(
        tmp_path / "home", "enrol", "--mef", f"tls://{HOST}:{port}", "--mef-fqdn", MEF_FQDN,
        "--cert", str(cert), "--key", str(key), "--ca", str(tmp_path / "missing.pem"),
        "--enrolee-b", "/in-cse",
    )  # fmt: skip
    assert code == 2 and "missing.pem" in out, out


def test_enrol_with_no_mef_listening_exits_1(tmp_path: Path) -> None:
    argv = ["enrol", "--mef", "tls://127.0.0.1:1", "--mef-fqdn", MEF_FQDN, "--kpm-id", KPM_ID,
            "--kpm", "-", "--enrolee-b", "/in-cse",
            "--store", str(tmp_path / "e.db")]  # fmt: skip
    got = CliRunner().invoke(app, argv, input=KPM.hex() + "\n")
    assert got.exit_code == 1, got.output
    text = " ".join(got.output.split())
    assert f"bootstrap handshake with the MEF {MEF_FQDN} (127.0.0.1:1) as {KPM_ID} failed" in text
    assert KPM.hex() not in got.output


async def test_dtls_enrolee_over_coap_and_enrolee_b_hold_the_same_kpsa(
    mef: MefServer, pki: Pki, tmp_path: Path
) -> None:
    """The bootstrap over DTLS 1.2 (10.2.1), the Enrolment Exchange over CoAP (TS-0008)."""
    port = mef.listener("enrolee", "psk", "dtls").port
    enrolee = Enrolee(HOST, port, MEF_FQDN, KpmCredential(KPM_ID, KPM), transport=Transport.DTLS)
    got = await enrolee.enrol(GATEWAY)
    assert got.target == GATEWAY and got.enrolee_id == ENROLEE_ID
    assert await fetched_credential(mef, pki, got) == got.credential
    with pytest.raises(EnrolmentError, match=r"RSC 4103 \(CoAP 4\.03"):
        await enrolee.enrol(MAF)  # not its configured target: the CoAP answer's status
    code, out = await run_cli(
        tmp_path / "home", "enrol", "--mef", f"dtls://{HOST}:{port}", "--mef-fqdn", MEF_FQDN,
        "--kpm-id", KPM_ID, "--kpm", "-", "--enrolee-b", "/in-cse", stdin=KPM.hex().encode(),
    )  # fmt: skip
    assert code == 0 and "enrolled" in out and ENROLEE_ID in out, out
    assert mef.stats["enrolments"] == 2
