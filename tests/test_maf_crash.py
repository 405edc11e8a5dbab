"""Issue 4, part 7: the MAF killed (SIGKILL) in the middle of key registrations.

``m2msec maf serve`` runs as a real process. Concurrent Entity As register keys (exported
and self-generated) while the test kills the process at a random moment, restarts it, and
does it again. Afterwards every key whose 2001 CREATED answer reached its Entity A must be
in the store with the right value, retrievable by Entity B, and logged as issued; and no row
may be half-written: the database passes its integrity check and every stored key unseals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path

from m2msec.maf.audit import read_audit_log
from m2msec.maf.store import MafStore
from tests.interop import free_port, wait_listening
from tests.test_maf_server import (
    IN_CSE,
    KM,
    KM_ID,
    MAF_FQDN,
    Pki,
    entity_a,
    entity_b,
    exported,
    key_reg,
    make_pki,
    register,
    retrieve,
)

ROUNDS = 4
WORKERS = 12


def write_config(path: Path, pki: Pki, db: Path, port: int, rport: int) -> None:
    path.write_text(
        "[maf]\n"
        f'fqdn = "{MAF_FQDN}"\n'
        f'listen = "tls://127.0.0.1:{port}"\n'
        f'retrieval_listen = "tls://127.0.0.1:{rport}"\n'
        f'store = "{db}"\n'
        'in_domain = "in.provider.com"\n'
        "[certificates]\n"
        f'cert = "{pki.maf_cert}"\nkey = "{pki.maf_key}"\nca = "{pki.ca_pem}"\n'
    )


async def start_maf(config: Path, port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "m2msec.cli",
        "maf",
        "serve",
        "--config",
        str(config),
        "--log-level",
        "warning",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_listening(port, timeout=30)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


async def load(
    port: int, confirmed: dict[str, bytes], stop: asyncio.Event, rng: random.Random
) -> None:
    """Register keys until ``stop``; record those answered 2001 CREATED."""
    while not stop.is_set():
        try:
            client = await entity_a(port)
        except Exception:
            await asyncio.sleep(0.01)
            continue
        try:
            if rng.random() < 0.5:
                kc = rng.randbytes(32)
                response = await register(client, key_reg(keyValue=kc.hex()))
            else:
                kc = exported(client.conn)[1]
                response = await register(client)
            if response.rsc == 2001:
                confirmed[response.json()["mafKeyReg"]["relativeKeyID"]] = kc
        except Exception:  # the MAF died mid-request: nothing was confirmed
            pass
        finally:
            client.conn.abort()


async def test_sigkill_during_registrations_loses_no_confirmed_key(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    db = tmp_path / "maf" / "maf.db"
    with MafStore(db) as st:
        st.add_client(KM_ID, KM)
        st.add_entity_b(IN_CSE)
    port, rport = free_port(), free_port()
    config = tmp_path / "maf.toml"
    write_config(config, pki, db, port, rport)
    rng = random.Random(os.getpid())
    confirmed: dict[str, bytes] = {}
    for _ in range(ROUNDS):
        proc = await start_maf(config, port)
        before = len(confirmed)
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(load(port, confirmed, stop, random.Random(rng.random())))
            for _ in range(WORKERS)
        ]
        try:
            # Kill mid-load: once keys are flowing, at a random moment.
            for _ in range(1000):
                if len(confirmed) - before >= 10:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            stop.set()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await asyncio.gather(*workers, return_exceptions=True)
        assert proc.returncode == -signal.SIGKILL
        assert len(confirmed) - before >= 10, "no load reached the MAF before the kill"

    # Restart once more: every confirmed key is retrievable by Entity B with its value.
    proc = await start_maf(config, port)
    try:
        await wait_listening(rport, timeout=10)
        b = await entity_b(rport, pki.creds["/in-cse"])
        for rel, kc in confirmed.items():
            response = await retrieve(b, rel)
            assert response.rsc == 2000, (rel, response.body)
            assert response.json()["mafKey"]["keyValue"] == kc.hex()
        await b.close()
        # And it still issues keys.
        a = await entity_a(port)
        assert (await register(a)).rsc == 2001
        await a.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 15)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # No half-written row: the database is consistent and every stored key unseals.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with MafStore(db) as st:
        rows = {k.relative_id: k for k in st.list_keys(unseal=True)}
    assert all(k.kc is not None and len(k.kc) == 32 for k in rows.values())
    for rel, kc in confirmed.items():
        assert rows[rel].kc == kc
    # Committed-but-unanswered keys may exist (the kill came between commit and answer).
    assert len(rows) >= len(confirmed) + 1
    # Every confirmed key was logged as issued (in its own transaction) before its answer
    # left the MAF; the audit.log copy was written before the answer too.
    with MafStore(db) as st:
        records = [r for _, r in st.read_audit(limit=None)]
    for source in (records, read_audit_log(db.parent / "audit.log")):
        issued = {str(r["kcId"]).split("@")[0] for r in source if r["event"] == "key-issued"}
        assert set(confirmed) <= issued
    # ... and exactly the committed keys were logged as issued in the table.
    assert {str(r["kcId"]).split("@")[0] for r in records if r["event"] == "key-issued"} == set(
        rows
    )
