"""MEF Key Retrieval (TS-0003 V3.18 8.3.5.2.8) beside fetchCredentials (8.3.2.1 step f, seed 004).

docs/mef.md section 3b, docs/readings.md A-32: ``GET /mef/keys/<RelativeKeyID>`` answering
``mefKey``, mapped as the MAF's Key Retrieval (``GET /maf/keys/{relativeKeyID}``, ``mafKey``),
and answered by the one handler of fetchCredentials (``MefService.answer_target``). Tested
here: both routes give the same key, Enrolee-ID and lifetime; the same refusals with the
same codes and texts; the audit rows of each; the wire shape beside the MAF's; the client
(:class:`MefKeyRetriever`) against the real MEF server; and both routes end to end — the
gateway as Enrolee B (``[mef] retrieval``, ACME behind it, ``openssl s_client`` as the
device) and the MAF (``mef_retrieval``, and ``m2msec maf serve --mef-retrieval`` in a
subprocess) resolving a KeID they do not know.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.config import parse_config
from m2msec.config.maf import MafConfig, parse_maf_config
from m2msec.errors import ConfigurationError, StoreError
from m2msec.frameworks.maf import MafClient, MafError
from m2msec.frameworks.mef_fetch import (
    CredentialFetchError,
    MefCredentialFetcher,
    MefKeyRetriever,
    fetcher_class,
)
from m2msec.keyids import KeId
from m2msec.maf.store import MafStore
from m2msec.maf.wire import MafKeyBody
from m2msec.mef.keys import derive_for_target
from m2msec.mef.records import Bootstrap, Enrolee, EnrolmentTarget
from m2msec.mef.service import EnroleeIdentity, MefPolicy, MefService
from m2msec.mef.store import MefStore
from m2msec.mef.wire import (
    CredentialBody,
    MefKeyBody,
    TargetRetrieval,
    WireError,
    fetch_path,
    key_path,
    parse_fetch_answer,
    parse_key_path,
)
from m2msec.pki.authority import write_credential
from m2msec.servers.gateway import Gateway
from m2msec.servers.maf import MafServer
from tests.acme import AcmeCse, acme_fixture
from tests.interop import HOST, free_port, run, spawn, wait_listening
from tests.test_mef_server import IN_DOMAIN, MAF_FQDN, MAF_KPM_ID, MEF_FQDN, Pki, make_pki
from tests.test_mef_targets import (
    GW_CSE,
    OTHER_KPM_ID,
    World,
    enrolled,
    openssl_enrol,
    psk_client,
    registration,
    rsc,
    running_world,
)

# ----------------------------------------------------------------------------- sans-IO

KEK = bytes(range(32))
KPM = bytes.fromhex("00112233445566778899aabbccddeeff")
EXPORT = bytes(range(48))  # RelativeKeID 00..0f, Ke 10..2f
KE = EXPORT[16:]
FQDN = "mef.example.com"
KE_ID = KeId(EXPORT[:16], FQDN)
GATEWAY = EnrolmentTarget.enrolee_b("/mn-cse-123456")
MAF = EnrolmentTarget.maf("maf.provider.com")
DEVICE = EnroleeIdentity(Bootstrap.PSK, "kpm-1@mef.example.com")
ENROLEE_ID = "/mn-cse-123456/Cdevice-1"
KPSA_LABEL = b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"
KM_LABEL = b"oneM2M Enrolment Key to Master Credential derivation"
KPSA = hmac.new(KE, KPSA_LABEL + b"/mn-cse-123456", hashlib.sha256).digest()
KM = hmac.new(KE, KM_LABEL + b"maf.provider.com", hashlib.sha256).digest()
NOW = datetime(2026, 12, 1, 10, 0, 0, 500_000, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MefStore]:
    with MefStore(tmp_path / "mef.db", kek=KEK) as st:
        st.add_enrolee(Enrolee(Bootstrap.PSK, DEVICE.bootstrap_id, ENROLEE_ID, GATEWAY,
                               timedelta(days=30), KPM))  # fmt: skip
        st.allow_target(GATEWAY)
        st.allow_target(MAF)
        yield st


@pytest.fixture
def mef(store: MefStore, clock: Clock) -> MefService:
    service = MefService(MefPolicy(FQDN), store, clock=clock)
    assert service.enrol(request("POST", "/mef/enrolment"), DEVICE, EXPORT).rsc == 2001
    return service


def request(method: str, target: str, origin: str | None = None, rid: str | None = "r-1"
            ) -> OneM2MRequest:  # fmt: skip
    return OneM2MRequest(method, target, (), b"", origin, rid, None, "application/json", None)


def by_fetch(mef: MefService, target: EnrolmentTarget = GATEWAY, ke_id: KeId = KE_ID,
             origin: str | None = None) -> HttpResponse:  # fmt: skip
    path = fetch_path(ke_id, target.suid)
    return mef.answer_target(request("GET", path, origin), target)


def by_key(mef: MefService, target: EnrolmentTarget = GATEWAY, ke_id: KeId = KE_ID,
           origin: str | None = None) -> HttpResponse:  # fmt: skip
    return mef.answer_target(request("GET", key_path(ke_id), origin), target)


def body(response: HttpResponse) -> dict[str, Any]:
    value = json.loads(response.body)
    assert isinstance(value, dict)
    return value


def audit(store: MefStore) -> list[dict[str, Any]]:
    return [record for _, record in store.read_audit()]


def test_both_routes_give_the_same_key(mef: MefService, store: MefStore) -> None:
    fetched = by_fetch(mef)
    retrieved = by_key(mef)
    assert (fetched.rsc, retrieved.rsc) == (2000, 2000)
    f = parse_fetch_answer(body(fetched))
    k = MefKeyBody.parse(body(retrieved))
    assert isinstance(f, CredentialBody)
    assert f.credential == k.key_value == KPSA  # 10.3.3, hand-computed
    assert f.enrolee_id == k.enrolee_id == k.source_client_id == ENROLEE_ID
    assert f.expires == k.expires == NOW.replace(microsecond=0) + timedelta(days=30)
    assert f.suid == k.suid == 22 and k.relative_id == KE_ID.relative_bytes
    assert k.admin_fqdn == FQDN
    # Upper-case hexBinary names the same key (docs/readings.md A-05).
    upper = mef.answer_target(request("GET", f"/mef/keys/{KE_ID.relative_hex.upper()}"), GATEWAY)
    assert MefKeyBody.parse(body(upper)).key_value == KPSA
    assert mef.stats["fetched"] == 3 and mef.stats["key_retrievals"] == 2
    granted = [r for r in audit(store) if r["event"] in ("credentials-fetched", "key-retrieved")]
    assert [r["event"] for r in granted] == [
        "credentials-fetched",
        "key-retrieved",
        "key-retrieved",
    ]
    for record in granted:
        assert record["keId"] == str(KE_ID) and record["enroleeId"] == ENROLEE_ID
        assert record["suid"] == 22 and record["rsc"] == 2000
        assert record["requester"] == str(GATEWAY)


def test_km_for_a_maf_target(store: MefStore, clock: Clock) -> None:
    store.add_enrolee(Enrolee(Bootstrap.PSK, "kpm-2@mef.example.com", ENROLEE_ID, MAF,
                              timedelta(days=1), KPM))  # fmt: skip
    mef = MefService(MefPolicy(FQDN), store, clock=clock)
    who = EnroleeIdentity(Bootstrap.PSK, "kpm-2@mef.example.com")
    assert mef.enrol(request("POST", "/mef/enrolment"), who, EXPORT).rsc == 2001
    k = MefKeyBody.parse(body(by_key(mef, MAF)))
    f = parse_fetch_answer(body(by_fetch(mef, MAF)))
    assert isinstance(f, CredentialBody)
    assert k.key_value == f.credential == KM and k.suid == f.suid == 21  # 10.3.2


def test_the_answer_has_the_shape_of_the_mafs() -> None:
    expires = datetime(2026, 12, 31, 10, 0, tzinfo=UTC)
    mef_key = MefKeyBody(KE_ID.relative_bytes, KPSA, expires, ENROLEE_ID, FQDN, 22, ENROLEE_ID)
    maf_key = MafKeyBody(KE_ID.relative_bytes, KPSA, expires, "kmid", FQDN, 32, ENROLEE_ID)
    ours, theirs = mef_key.to_json()["mefKey"], maf_key.to_json()["mafKey"]
    assert set(ours) - {"sourceMEFClientID"} == set(theirs) - {"sourceMAFClientID"}
    assert ours == {
        "relativeKeyID": KE_ID.relative_hex,
        "keyValue": KPSA.hex(),
        "expirationTime": "20261231T100000",
        "sourceMEFClientID": ENROLEE_ID,
        "adminFQDN": FQDN,
        "SUID": 22,
        "entityID": ENROLEE_ID,
    }
    assert MefKeyBody.parse(mef_key.to_json()) == mef_key
    assert KPSA.hex() not in repr(mef_key)
    for broken, message in (
        ({**ours, "keyValue": "00"}, "32 octets"),
        ({**ours, "keyValue": "zz"}, "hexBinary"),
        ({**ours, "SUID": 32}, "21 or 22"),
        ({**ours, "SUID": True}, "21 or 22"),
        ({**ours, "expirationTime": "20261231T100000+02:00"}, "expirationTime"),
        ({k: v for k, v in ours.items() if k != "sourceMEFClientID"}, "sourceMEFClientID"),
        ({**ours, "entityID": ""}, "entityID"),
    ):
        with pytest.raises(WireError, match=message):
            MefKeyBody.parse({"mefKey": broken})
    with pytest.raises(WireError, match="mefKey"):
        MefKeyBody.parse({"mafKey": ours})


def test_key_path() -> None:
    assert key_path(KE_ID) == f"/mef/keys/{KE_ID.relative_hex}"
    assert parse_key_path(key_path(KE_ID), FQDN) == KE_ID
    for bad in ("/mef/keys/", "/mef/keys/00ff", "/mef/keys/" + "zz" * 16,
                f"/mef/keys/{KE_ID.relative_hex}?x=1", f"/mef/keys/{KE_ID.relative_hex}/22",
                f"/mef/keys/{KE_ID}", "/mef/key/00"):  # fmt: skip
        with pytest.raises(WireError):
            parse_key_path(bad, FQDN)


def test_request_checks(mef: MefService, store: MefStore) -> None:
    path = key_path(KE_ID)
    assert mef.answer_target(request("POST", path), GATEWAY).rsc == 4005
    assert mef.answer_target(request("GET", path, rid=None), GATEWAY).rsc == 4000
    assert mef.answer_target(request("GET", "/mef/keys/00ff"), GATEWAY).rsc == 4000
    assert mef.answer_target(request("GET", "/mef/other"), GATEWAY).rsc == 4004
    refusal = mef.answer_target(request("GET", "/mef/keys/xyz"), GATEWAY)
    assert set(body(refusal)) == {"m2m:dbg"}  # as the MAF's refusals
    events = [r["event"] for r in audit(store) if r["event"].endswith("refused")]
    assert events == ["key-retrieval-refused"] * 3 + ["fetch-refused", "key-retrieval-refused"]
    assert mef.stats["key_retrievals_refused"] == 4 and mef.stats["fetch_refused"] == 5


def refusal_of(response: HttpResponse) -> tuple[int, str]:
    doc = body(response)
    assert "keyValue" not in response.body.decode() and "credential" not in doc
    return response.rsc or 0, str(doc["m2m:dbg"])


def test_refusals_are_the_same_on_both_routes(
    mef: MefService, store: MefStore, clock: Clock
) -> None:
    stranger = EnrolmentTarget.enrolee_b("/mn-cse-999")
    unknown = KeId(b"\x09" * 16, FQDN)
    cases: list[tuple[EnrolmentTarget, KeId, str | None, int, str]] = [
        (MAF, KE_ID, None, 4004, "enrolled for"),  # another (allowed) target
        (GATEWAY, unknown, None, 4004, "unknown KeID"),
        (stranger, KE_ID, None, 4103, ""),  # not an Enrolment Target
        (GATEWAY, KE_ID, "/mn-cse-other", 4106, "X-M2M-Origin"),
    ]
    for target, ke_id, origin, code, reason in cases:
        got = refusal_of(by_fetch(mef, target, ke_id, origin))
        assert got == refusal_of(by_key(mef, target, ke_id, origin))
        assert got[0] == code
        pair = audit(store)[-2:]
        assert [r["event"] for r in pair] == ["fetch-refused", "key-retrieval-refused"]
        assert pair[0]["rsc"] == pair[1]["rsc"] == code
        assert pair[0]["reason"] == pair[1]["reason"] and reason in str(pair[0]["reason"])
    # The same text for a KeID of another target and an unknown one: nothing revealed.
    assert refusal_of(by_key(mef, MAF)) == refusal_of(by_key(mef, GATEWAY, unknown))
    clock.now += timedelta(days=30)  # Ke's Enrolment Expiry
    assert refusal_of(by_key(mef)) == refusal_of(by_fetch(mef)) == refusal_of(by_key(mef, MAF))
    assert [r["reason"] for r in audit(store)[-3:-1]] == [f"{KE_ID}: expired"] * 2


def test_no_key_without_its_audit_record(
    mef: MefService, store: MefStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "commit", broken)
    response = by_key(mef)
    assert response.rsc == 5000 and KPSA.hex() not in response.body.decode()
    assert set(body(response)) == {"m2m:dbg"}
    assert mef.stats["key_retrievals"] == 0 and mef.stats["key_retrievals_refused"] == 1


def test_fetch_credentials_is_the_same_handler(mef: MefService) -> None:
    alias = mef.fetch_credentials(request("GET", key_path(KE_ID)), GATEWAY)
    assert MefKeyBody.parse(body(alias)).key_value == KPSA


def test_keys_never_in_logs(mef: MefService, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    by_key(mef)
    by_key(mef, MAF)
    for secret in (KE.hex(), KPM.hex(), KPSA.hex(), KM.hex()):
        assert secret not in caplog.text
    assert str(KE_ID) in caplog.text


# ----------------------------------------------------------------------------- configuration


def test_retrieval_settings(pki: Pki, tmp_path: Path) -> None:
    assert fetcher_class("fetch-credentials") is MefCredentialFetcher
    assert fetcher_class(TargetRetrieval.KEY_RETRIEVAL) is MefKeyRetriever
    default = parse_config(gateway_config(pki, tmp_path, None))
    assert default.mef is not None
    assert default.mef.retrieval is TargetRetrieval.FETCH_CREDENTIALS
    cfg = parse_config(gateway_config(pki, tmp_path, "key-retrieval"))
    assert cfg.mef is not None and cfg.mef.retrieval is TargetRetrieval.KEY_RETRIEVAL
    with pytest.raises(ConfigurationError, match=r"mef\.retrieval: must be 'fetch-credentials'"):
        parse_config(gateway_config(pki, tmp_path, "fetchCredentials"))
    maf = {"fqdn": MAF_FQDN, "mef": "tls://127.0.0.1:8447", "mef_fqdn": MEF_FQDN}
    assert parse_maf_config({"maf": maf}).mef_retrieval is TargetRetrieval.FETCH_CREDENTIALS
    cfg_maf = parse_maf_config({"maf": {**maf, "mef_retrieval": "key-retrieval"}})
    assert cfg_maf.mef_retrieval is TargetRetrieval.KEY_RETRIEVAL
    with pytest.raises(ConfigurationError, match=r"maf\.mef_retrieval"):
        parse_maf_config({"maf": {**maf, "mef_retrieval": 3}})


def gateway_config(pki: Pki, tmp_path: Path, retrieval: str | None, *, mef_port: int = 8447,
                   backend: str = "http://127.0.0.1:8080") -> dict[str, Any]:  # fmt: skip
    key, cert = write_credential(pki.ca.issue(GW_CSE), tmp_path / "gw", overwrite=True)
    mef: dict[str, Any] = {"url": f"tls://{HOST}:{mef_port}", "fqdn": MEF_FQDN, "timeout": 2.0}
    if retrieval is not None:
        mef["retrieval"] = retrieval
    return {
        "gateway": {
            "listen": [f"tls://{HOST}:0?framework=mef"],
            "backend": backend,
            "cse_id": GW_CSE,
            "in_domain": IN_DOMAIN,
        },
        "mef": mef,
        "certificates": {"cert": str(cert), "key": str(key), "ca": str(pki.ca.cert_path)},
    }


# ----------------------------------------------------------------------------- the real MEF


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("mef-keyret-pki"))


@pytest.fixture
async def world(pki: Pki, tmp_path: Path) -> AsyncIterator[World]:
    async with running_world(pki, tmp_path) as running:
        yield running


def retriever(world: World, **kw: Any) -> MefKeyRetriever:
    kw.setdefault("local_id", GW_CSE)
    return MefKeyRetriever(
        world.gw_cred, {MEF_FQDN: (HOST, world.target_port)}, in_domain=IN_DOMAIN, **kw
    )


async def test_key_retriever_against_the_mef_server(world: World) -> None:
    ke_id, ke = await enrolled(world)
    kpsa = derive_for_target(ke, GW_CSE, enrolee_b=True)
    async with retriever(world) as keys, world.fetcher() as fetcher:
        by_key_retrieval = await keys.fetch(ke_id)
        by_fetch_credentials = await fetcher.fetch(ke_id)
        assert by_key_retrieval == by_fetch_credentials  # KeID, Kpsa, Enrolee-ID, lifetime, SUID
        assert by_key_retrieval.credential == kpsa and by_key_retrieval.suid == 22
        assert kpsa.hex() not in repr(by_key_retrieval) and "MefKeyRetriever" in repr(keys)
        assert (await keys.fetch(ke_id)).credential == kpsa  # cached
        assert keys.stats.cache_hits == 1
    assert world.mef.stats["key_retrievals"] == 1 and world.mef.stats["fetched"] == 2
    events = [r["event"] for _, r in world.store.read_audit()]
    assert events.count("key-retrieved") == 1 and events.count("credentials-fetched") == 1


async def test_key_retriever_refusals(world: World) -> None:
    other_ke, _ = await enrolled(world, OTHER_KPM_ID)
    async with retriever(world) as keys:
        with pytest.raises(CredentialFetchError, match="has no enrolment") as info:
            await keys.fetch(other_ke)  # enrolled for another Enrolee B
        assert info.value.rsc == 4004
        with pytest.raises(CredentialFetchError, match="has no enrolment") as info:
            await keys.fetch(KeId.from_relative(bytes(16), MEF_FQDN))
        assert info.value.rsc == 4004
        with pytest.raises(CredentialFetchError, match="not configured"):
            await keys.fetch(KeId.from_relative(bytes(16), "mef.elsewhere.com"))
    stranger = MefKeyRetriever(world.pki.creds["/in-cse2"], {MEF_FQDN: (HOST, world.target_port)},
                               in_domain=IN_DOMAIN)  # fmt: skip
    async with stranger:
        with pytest.raises(CredentialFetchError, match="not an Enrolment Target") as info:
            await stranger.fetch(other_ke)
        assert info.value.rsc == 4103
    refused = [r for _, r in world.store.read_audit() if r["event"] == "key-retrieval-refused"]
    assert [r["rsc"] for r in refused] == [4004, 4004, 4103]
    assert world.mef.stats["key_retrievals_refused"] == 3


# ----------------------------------------------------------------------------- end to end

acme = acme_fixture(scope="function")  # each test registers the same AE-ID
ROUTES = ["fetch-credentials", "key-retrieval"]


@pytest.mark.interop
@pytest.mark.parametrize("retrieval", ROUTES)
async def test_gateway_resolves_an_unknown_keid_by_each_route(
    world: World, acme: AcmeCse, tmp_path: Path, retrieval: str
) -> None:
    """``openssl s_client`` enrols at the MEF, then associates with the gateway
    (``framework=mef``, ``[mef] retrieval``) by TLS-PSK with that KeID and its Kpsa; the
    gateway, which has no psk row for it, asks the MEF by the configured procedure."""
    cfg = parse_config(
        gateway_config(world.pki, tmp_path, retrieval, mef_port=world.target_port, backend=acme.url)
    )
    ke_id, kpsa = await openssl_enrol(world)
    base = f"/~/{acme.cse_id}/{acme.cse_name}"
    rn = f"kr-{retrieval}"
    async with Gateway(cfg) as gw:
        port = gw.listeners[0].port
        done = await run(psk_client(port, ke_id, kpsa), stdin=registration(base, "Cdevice-1", rn))
        assert rsc(done.output) == "2001", done.output
        # Bound to the Enrolee-ID the MEF returned: it may not speak for another AE.
        done = await run(psk_client(port, ke_id, kpsa), stdin=registration(base, "Cdevice-2", "x"))
        assert rsc(done.output) == "4106", done.output
        # A KeID enrolled for another Enrolee B: refused by the MEF, the handshake fails.
        other, other_ke = await enrolled(world, OTHER_KPM_ID)
        other_kpsa = derive_for_target(other_ke, GW_CSE, enrolee_b=True)
        done = await run(psk_client(port, str(other), other_kpsa), stdin=b"")
        assert rsc(done.output) is None and done.returncode != 0, done.output
    stats = world.mef.stats
    assert stats["fetched"] == 1  # once, then cached
    keyret = retrieval == "key-retrieval"
    assert stats["key_retrievals"] == (1 if keyret else 0)
    assert stats["key_retrievals_refused"] == (1 if keyret else 0)
    events = [r["event"] for _, r in world.store.read_audit()]
    granted, refused = (
        ("key-retrieved", "key-retrieval-refused")
        if keyret
        else ("credentials-fetched", "fetch-refused")
    )
    assert events.count(granted) == 1 and events.count(refused) == 1, events


def maf_world(world: World, tmp_path: Path) -> tuple[MafStore, Path, Path]:
    key, cert = world.pki.files[MAF_FQDN]  # write_credential: (key, cert)
    maf_store = MafStore(tmp_path / "maf.db")
    maf_store.add_entity_b("/in-cse")
    return maf_store, cert, key


@pytest.mark.parametrize("retrieval", ROUTES)
async def test_maf_resolves_an_unknown_kmid_by_each_route(
    world: World, tmp_path: Path, retrieval: str
) -> None:
    ke_id, ke = await enrolled(world, MAF_KPM_ID)
    km = derive_for_target(ke, MAF_FQDN, enrolee_b=False)
    maf_store, cert, key = maf_world(world, tmp_path)
    cfg = MafConfig(
        MAF_FQDN, str(tmp_path / "maf.db"), listen=f"tls://{HOST}:0", retrieval_listen=None,
        cert=cert, key=key, ca=world.pki.ca.cert_path,
        mef=f"tls://{HOST}:{world.target_port}", mef_fqdn=MEF_FQDN,
        mef_retrieval=TargetRetrieval(retrieval),
    )  # fmt: skip
    try:
        async with MafServer(cfg, maf_store) as maf:
            client = MafClient(HOST, maf.client_port, MAF_FQDN, str(ke_id), km)
            issued = await client.register_key("/in-cse")
            stored = maf_store.get_key(issued.kc_id.relative_hex)
            assert stored is not None and stored.km_id == str(ke_id).lower()
            wrong = MafClient(HOST, maf.client_port, MAF_FQDN, str(ke_id), bytes(32))
            with pytest.raises(MafError, match=r"MAF Handshake .* failed"):
                await wrong.register_key("/in-cse")
    finally:
        maf_store.close()
    assert world.mef.stats["fetched"] == 1
    assert world.mef.stats["key_retrievals"] == (1 if retrieval == "key-retrieval" else 0)


async def test_maf_serve_mef_retrieval_shell(world: World, tmp_path: Path) -> None:
    """``m2msec maf serve --mef URL --mef-retrieval key-retrieval``, as an operator runs it."""
    ke_id, ke = await enrolled(world, MAF_KPM_ID)
    km = derive_for_target(ke, MAF_FQDN, enrolee_b=False)
    maf_store, cert, key = maf_world(world, tmp_path)
    maf_store.close()
    port = free_port()
    argv = [
        sys.executable, "-m", "m2msec.cli", "maf", "serve", "--fqdn", MAF_FQDN,
        "--listen", f"tls://{HOST}:{port}", "--retrieval-listen", "off",
        "--store", str(tmp_path / "maf.db"), "--in-domain", IN_DOMAIN,
        "--cert", str(cert), "--key", str(key), "--ca", str(world.pki.ca.cert_path),
        "--mef", f"tls://{HOST}:{world.target_port}", "--mef-fqdn", MEF_FQDN,
    ]  # fmt: skip
    bad = await run([*argv, "--mef-retrieval", "fetchCredentials"], timeout=30)
    assert bad.returncode == 2 and "mef_retrieval" in bad.output, bad.describe()
    async with spawn([*argv, "--mef-retrieval", "key-retrieval"]) as maf:
        await wait_listening(port, timeout=20)
        client = MafClient(HOST, port, MAF_FQDN, str(ke_id), km)
        issued = await client.register_key("/in-cse")
        assert issued.kc_id.fqdn == MAF_FQDN
        assert "Km by key-retrieval" in maf.output, maf.describe()
        assert km.hex() not in maf.output and ke.hex() not in maf.output
    assert world.mef.stats["key_retrievals"] == 1
