"""The psk-lookup-table, the identity registry and the app rules on PostgreSQL (issue 10 item 3).

The store contract runs over both dialects (SQLite file, PostgreSQL schema on the private
server of tests/pg.py). Then two ``m2msec gateway serve`` processes share one PostgreSQL
psk table: a ``m2msec psk add`` is served by both, a ``psk remove`` stops both serving the
key within the lookup cache's lifetime (default 2 s), seen by ``openssl s_client``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.app_rules import AppRule
from m2msec.errors import ConfigurationError, DuplicateCredentialError, StoreError
from m2msec.store import PskEntry, SealedPskStore, open_store
from m2msec.store.app_rules import AppRuleStore
from m2msec.store.registry import IdentityRegistry, credential_key
from tests.interop import (
    TR0038_AE_ID,
    TR0038_KPSA_HEX,
    TR0038_KPSA_ID,
    free_port,
    require,
    run,
    spawn,
    wait_listening,
)
from tests.pg import pg_server, pg_url  # noqa: F401 - fixtures

KEK_HEX = "42" * 32
KEK = bytes.fromhex(KEK_HEX)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path}/psk.db"
    else:
        yield request.getfixturevalue("pg_url")


def test_contract_add_get_list_remove(url: str) -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    with open_store(url, kek=KEK) as st:
        st.add(PskEntry("b@x", b"\x01" * 16, "Cb", expires))
        st.add(PskEntry("a@x", b"\x02" * 32))
        with pytest.raises(DuplicateCredentialError, match="a@x"):
            st.add(PskEntry("a@x", b"\x03" * 16))
        st.add(PskEntry("a@x", b"\x03" * 16, "Ca"), replace=True)
        got = st.get("a@x")
        assert got is not None and got.kpsa == b"\x03" * 16 and got.entity_id == "Ca"
        assert [(i.kpsa_id, i.key_length) for i in st.list()] == [("a@x", 16), ("b@x", 16)]
        assert st.get("b@x") == PskEntry("b@x", b"\x01" * 16, "Cb", expires)
        assert st.get("\udcff") is None and st.count() == 2
        with pytest.raises(DuplicateCredentialError, match="c@x"):
            st.add_many([PskEntry("d@x", b"\x04" * 16), PskEntry("c@x", b"\x05" * 16),
                         PskEntry("c@x", b"\x05" * 16)])
        assert st.count() == 2  # all or nothing
        assert st.add_many([PskEntry(f"{i}@y", b"\x06" * 16) for i in range(5)]) == 5
        past = datetime.now(UTC) - timedelta(days=1)
        st.add(PskEntry("old@x", b"\x07" * 16, None, past))
        assert st.purge_expired() == 1
        assert st.remove("a@x") and not st.remove("a@x") and st.count() == 6
    # Reopened: the rows are still there, sealed under the same KEK; another KEK is refused.
    with open_store(url, kek=KEK) as st:
        assert st.get("b@x") is not None
    with pytest.raises(StoreError, match="key-encryption key"):
        open_store(url, kek=b"\x11" * 32)


def test_contract_registry(url: str) -> None:
    with open_store(url, kek=KEK) as st:
        st.add(PskEntry("k@x", b"\x01" * 16, "Cae1"))
        with IdentityRegistry(st.database) as reg:
            assert reg.owner_of("Cae1") == credential_key("psk", "k@x")
            assert reg.record("Cae9", "maf:km1") and reg.record("Cae9", "maf:km1")
            assert not reg.record("Cae9", "maf:km2")
            assert reg.owner_of("Cae9") == "maf:km1" and reg.recorded_for("maf:km1") == "Cae9"
            assert list(reg.list()) == [("Cae9", "maf:km1", "registration")]
            assert reg.forget("Cae9") and reg.owner_of("Cae9") is None


def test_contract_psk_remove_releases_the_identities_its_row_registered(url: str) -> None:
    # A Credential-ID association of row k@x registered Cdev; removing the row releases Cdev
    # (a new row under the same KpsaId must not inherit it), and nobody else's record.
    with open_store(url, kek=KEK) as st, IdentityRegistry(st.database) as reg:
        st.add(PskEntry("k@x", b"\x01" * 16))
        st.add(PskEntry("other@x", b"\x02" * 16))
        assert reg.record("Cdev", credential_key("psk", "k@x"))
        assert reg.record("Cother", credential_key("psk", "other@x"))
        assert reg.record("Cmaf", "maf:k@x")  # same key id, another framework: kept
        assert st.remove("k@x")
        assert reg.owner_of("Cdev") is None
        assert reg.owner_of("Cother") == credential_key("psk", "other@x")
        assert reg.owner_of("Cmaf") == "maf:k@x"
        st.add(PskEntry("k@x", b"\x03" * 16))
        assert reg.recorded_for(credential_key("psk", "k@x")) is None
        # An expired row that is purged keeps its identity: renewing the key keeps the AE-ID.
        st.add(PskEntry("old@x", b"\x04" * 16, None, datetime.now(UTC) - timedelta(days=1)))
        assert reg.record("Cold", credential_key("psk", "old@x"))
        assert st.purge_expired() == 1
        assert reg.owner_of("Cold") == credential_key("psk", "old@x")


def test_contract_app_rules(url: str) -> None:
    # The stored serviceSubscribedAppRules (m2msec gateway rule) on both dialects.
    with open_store(url, kek=KEK) as st, AppRuleStore(st.database, cache_ttl=0) as rules:
        first = rules.add(AppRule(("12-*",), ("C*",)), name="lights")
        second = rules.add(AppRule(("11-km@x",), ("Cmeter*",), ("Nmeter",)))
        assert second.id > first.id
        with pytest.raises(ConfigurationError, match="lights"):
            rules.add(AppRule(("12-*",), ("S*",)), name="lights")
        assert [r.name for r in rules.list()] == ["lights", None]
        assert rules.rules()[1] == AppRule(("11-km@x",), ("Cmeter*",), ("Nmeter",))
        assert rules.remove("lights") and not rules.remove("lights")
        assert rules.remove(str(second.id)) and rules.rules() == ()


def test_postgres_cache_sees_other_connections_within_ttl(pg_url: str) -> None:  # noqa: F811
    with open_store(pg_url, kek=KEK) as a, open_store(pg_url, kek=KEK, cache_ttl=0) as b:
        assert isinstance(a, SealedPskStore)
        a.add(PskEntry("k@x", b"\x01" * 16))
        assert b.get("k@x") is not None  # cached in b now
        a.remove("k@x")
        assert b.get("k@x") is None  # ttl 0: the change counter is read on every lookup


# ------------------------------------------------- two gateway processes, one PostgreSQL table


def _s_client(port: int) -> list[str]:
    return [
        require("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
        "-cipher", "PSK-AES128-GCM-SHA256", "-psk", TR0038_KPSA_HEX,
        "-psk_identity", TR0038_KPSA_ID, "-nocommands",
    ]


async def _served(port: int) -> bool:
    done = await run(_s_client(port), stdin=b"")
    # s_client prints the negotiated suite even when the server's alert follows it.
    return "Cipher is PSK" in done.output and "alert" not in done.output


async def _psk(*args: str) -> None:
    done = await run([sys.executable, "-m", "m2msec.cli", "psk", *args])
    assert done.returncode == 0, done.describe()


async def test_two_gateways_share_one_postgres_psk_table(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv("M2MSEC_KEK", KEK_HEX)  # every process sharing the table has it
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))
    open_store(pg_url).close()  # created by the operator before the gateways start
    ports = [free_port(), free_port()]

    def serve(port: int) -> list[str]:
        return [
            sys.executable, "-m", "m2msec.cli", "gateway", "serve",
            "--listen", f"tls://127.0.0.1:{port}", "--backend", "http://127.0.0.1:9",
            "--cse-id", "/mn-cse-123456", "--store", pg_url,
        ]

    async with spawn(serve(ports[0])) as gw1, spawn(serve(ports[1])) as gw2:
        await wait_listening(ports[0], gw1, timeout=30)
        await wait_listening(ports[1], gw2, timeout=30)
        assert not await _served(ports[0])  # no row yet
        await _psk("add", TR0038_KPSA_ID, "--key", TR0038_KPSA_HEX, "--entity-id",
                   TR0038_AE_ID, "--store", pg_url)
        # A KpsaId never served is not cached: both see the new row at once.
        assert await _served(ports[0]) and await _served(ports[1])
        await _psk("remove", TR0038_KPSA_ID, "--store", pg_url)
        removed = time.monotonic()
        for port in ports:
            while await _served(port):
                # The lookup cache may serve the row for up to its lifetime (2 s).
                assert time.monotonic() - removed < 2.0 + 3.0, "still served after removal"
                await asyncio.sleep(0.2)
        assert gw1.running and gw2.running


# ------------------------------------------------------------ BSF store on both dialects

BSF_K = "465b5ce8b199b49faa5f0a2ee238a6bc"
BSF_OPC = "cd63cb71954a9f4e48a5994e37a02baf"
IMPI = "dev1@ims.example.com"


def test_bsf_contract(url: str) -> None:
    from m2msec.gba.records import BootstrapSession, Guss
    from m2msec.gba.subscribers import SubscriberStore

    now = datetime.now(UTC).replace(microsecond=0)
    with SubscriberStore(url, kek=KEK) as st:
        st.add_subscriber(IMPI, k=bytes.fromhex(BSF_K), opc=bytes.fromhex(BSF_OPC), sqn=5)
        with pytest.raises(DuplicateCredentialError):
            st.add_subscriber(IMPI, k=bytes.fromhex(BSF_K), opc=bytes.fromhex(BSF_OPC))
        st.add_subscriber(IMPI, k=bytes.fromhex(BSF_K), opc=bytes.fromhex(BSF_OPC), sqn=7,
                          replace=True)
        st.set_guss(IMPI, Guss(any_naf=True))
        sub = st.get_subscriber(IMPI)
        assert sub is not None and sub.sqn == 7 and sub.guss.any_naf
        assert st.advance_sqn(IMPI, 5) > 7
        session = BootstrapSession("b1@bsf", IMPI, b"\x01" * 16, b"\x02" * 32, now,
                                   now + timedelta(hours=1), "GBA_ME")
        st.put_session(session)
        assert st.get_session("b1@bsf") == session and st.count_sessions() == 1
        assert st.remove_subscriber(IMPI) and st.get_session("b1@bsf") is None
        assert st.count_subscribers() == 0


async def test_two_bsf_processes_share_one_postgres_store(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A subscriber added or removed by ``m2msec bsf`` is seen by two ``bsf serve``
    processes at once (no cache); both step one SQN_HE (a Ub run on each succeeds with
    one USIM, which accepts only fresh SQNs)."""
    from m2msec.gba.aka import Usim
    from m2msec.gba.ub import UbError, bootstrap

    monkeypatch.setenv("M2MSEC_KEK", KEK_HEX)
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))
    cli = [sys.executable, "-m", "m2msec.cli", "bsf"]
    added = await run([*cli, "add-subscriber", IMPI, "--k", BSF_K, "--opc", BSF_OPC,
                       "--any-naf", "--store", pg_url])
    assert added.returncode == 0, added.describe()
    ports = [free_port(), free_port()]

    def serve(port: int) -> list[str]:
        return [*cli, "serve", "--listen", f"http://127.0.0.1:{port}", "--fqdn",
                "bsf.in.provider.com", "--store", pg_url]

    usim = Usim(bytes.fromhex(BSF_K), bytes.fromhex(BSF_OPC), 0)
    async with spawn(serve(ports[0])) as b1, spawn(serve(ports[1])) as b2:
        await wait_listening(ports[0], b1, timeout=30)
        await wait_listening(ports[1], b2, timeout=30)
        first = await bootstrap(f"http://127.0.0.1:{ports[0]}/", usim, IMPI)
        second = await bootstrap(f"http://127.0.0.1:{ports[1]}/", usim, IMPI)
        assert first.btid != second.btid
        removed = await run([*cli, "remove", IMPI, "--store", pg_url])
        assert removed.returncode == 0, removed.describe()
        for port in ports:
            with pytest.raises(UbError) as refused:  # the BSF answers: unknown IMPI
                await bootstrap(f"http://127.0.0.1:{port}/", usim, IMPI)
            assert "cannot reach" not in str(refused.value), refused.value
        assert b1.running and b2.running
