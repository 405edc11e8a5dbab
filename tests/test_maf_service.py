"""The MAF procedures of :class:`m2msec.maf.service.MafService` (TS-0003 8.8.2.3-8.8.2.10).

These are sans-IO unit tests: no sockets, no TLS, no event loop. The service gets
``OneM2MRequest`` objects and a :class:`ClientSession` / :class:`Retriever` standing for
the authenticated peer, over a real SQLite :class:`MafStore` in ``tmp_path``; the
:class:`Write` steps it returns are committed by :func:`run`, a synchronous stand-in for
the server's journal (one store transaction per write, audit records in the same
transaction). The real-peer tests stay in tests/test_maf_server.py and
tests/test_interop_maf.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.crypto.keyexport import EXPORT_LENGTH, LABEL_CONNECTION, split_export
from m2msec.errors import StoreError
from m2msec.maf.audit import AuditEvent
from m2msec.maf.protocol import CONFLICT, MafPolicy, MafRefusal
from m2msec.maf.service import ClientSession, MafService, Retriever, Step, Write
from m2msec.maf.store import MafStore

FQDN = "maf.in.provider.com"
SP = "in.provider.com"
ADMIN = "admin.in.provider.com"
KM_ID = "ae1@maf.in.provider.com"
KM = bytes(range(32))
KM2_ID = "ae2@maf.in.provider.com"
KM2 = bytes(range(1, 33))
ENTITY_A = "/mn-cse-123456/Clight-AE1"
IN_CSE = "//in.provider.com/in-cse"
OTHER_CSE = "//in.provider.com/in-cse2"  # an allowed Entity B, not a target below
NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
EXPORTED = bytes(range(100, 100 + EXPORT_LENGTH))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Maf:
    """The service, its store and clock, and the audit records committed so far."""

    service: MafService
    store: MafStore
    clock: Clock
    audit: list[dict[str, str | int]] = field(default_factory=list)
    #: Make the next audit-only commits fail (a full disk), as the journal would report.
    fail_audit: bool = False

    def run(self, step: Step) -> HttpResponse:
        """Commit the service's writes as the server's journal does, then answer."""
        while isinstance(step, Write):
            if step.op is None and self.fail_audit:
                step = step.then(StoreError("disk full"))
                continue
            outcome: Any = None
            with self.store.writer() as w:
                if step.op is not None:
                    try:
                        with w.savepoint():
                            outcome = step.op(w)
                    except StoreError:
                        raise
                    except Exception as exc:
                        outcome = exc
                records = list(step.audit(outcome))
                w.append_audit(records)
            self.audit.extend(records)
            step = step.then(outcome)
        return step

    def client(self, request: OneM2MRequest, session: ClientSession | None = None) -> HttpResponse:
        return self.run(self.service.handle_client(session or self.session(), request))

    def retrieve(self, rel_id: str, entity: str | None = IN_CSE) -> HttpResponse:
        peer = Retriever(entity, entity or "C-cert", "cse" if entity else "credential", "sa-b")
        return self.run(self.service.handle_retrieval(peer, request("GET", f"/maf/keys/{rel_id}")))

    def session(self, km_id: str = KM_ID) -> ClientSession:
        km = self.store.get_client(km_id)
        assert km is not None
        return ClientSession(km, "sa-a", exporter)

    def events(self) -> list[str]:
        return [str(r["event"]) for r in self.audit]


def exporter(label: bytes, length: int) -> bytes:
    assert (label, length) == (LABEL_CONNECTION, EXPORT_LENGTH)
    return EXPORTED


def request(
    method: str = "POST",
    target: str = "/maf/keys",
    body: Any = None,
    *,
    rid: str | None = "r-1",
) -> OneM2MRequest:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    return OneM2MRequest(
        method=method,
        target=target,
        headers=(),
        body=data,
        origin="ae1",
        request_id=rid,
        release_version="3",
        content_type="application/json",
        resource_type=None,
    )


def key_reg(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "mafFQDN": FQDN,
        "expirationTime": "20300101T130000",
        "adminFQDN": ADMIN,
        "SUID": 32,
        "targetIDs": [IN_CSE],
    }
    body.update(fields)
    return {"mafKeyReg": {k: v for k, v in body.items() if v is not None}}


def client_reg(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"mafFQDN": FQDN, "expirationTime": "20300201T000000"}
    body["adminFQDN"] = ADMIN
    body.update(fields)
    return {"mafClientReg": body}


def doc(response: HttpResponse) -> Any:
    return json.loads(response.body) if response.body else None


@pytest.fixture
def maf(tmp_path: Path) -> Iterator[Maf]:
    with MafStore(tmp_path / "maf.db", cache_ttl=0) as store:
        store.add_client(KM_ID, KM, ENTITY_A)
        store.add_client(KM2_ID, KM2)
        store.add_entity_b(IN_CSE)
        store.add_entity_b(OTHER_CSE)
        clock = Clock()
        yield Maf(MafService(store, MafPolicy(FQDN, SP), clock), store, clock)


def registered(maf: Maf, **fields: Any) -> str:
    """A Key Registration with a keyValue; its RelativeKeyID."""
    r = maf.client(request(body=key_reg(keyValue="11" * 32, **fields)))
    assert r.rsc == 2001, doc(r)
    return str(doc(r)["mafKeyReg"]["relativeKeyID"])


# ----------------------------------------------------------------------------- 8.8.2.7


def test_key_registration_with_key_value(maf: Maf) -> None:
    r = maf.client(request(body=key_reg(keyValue="11" * 32, labels=["a"])))
    assert (r.status, r.rsc) == (201, 2001)
    body = doc(r)["mafKeyReg"]
    assert body["SUID"] == 32 and body["targetIDs"] == [IN_CSE] and body["labels"] == ["a"]
    assert body["sourceMAFClientID"] == KM_ID and body["expirationTime"] == "20300101T130000"
    stored = maf.store.get_key(body["relativeKeyID"])
    assert stored is not None and stored.kc == bytes.fromhex("11" * 32)
    assert maf.events() == [AuditEvent.KEY_ISSUED]
    assert maf.audit[0]["source"] == "keyValue" and maf.audit[0]["sa"] == "sa-a"
    assert maf.service.stats.keys_issued == 1


def test_exported_key_registration_once_per_session(maf: Maf) -> None:
    """10.3.1: Kc and its RelativeKeyID come from the session's exporter, once."""
    session = maf.session()
    r = maf.client(request(body=key_reg()), session)
    assert r.rsc == 2001
    relative, kc = split_export(EXPORTED)
    assert doc(r)["mafKeyReg"]["relativeKeyID"] == relative.hex()
    stored = maf.store.get_key(relative.hex())
    assert stored is not None and stored.kc == kc
    assert maf.audit[-1]["source"] == "exporter" and session.exported_used
    again = maf.client(request(body=key_reg()), session)
    assert again.rsc == CONFLICT
    assert maf.audit[-1]["event"] == AuditEvent.KEY_REFUSED
    assert maf.audit[-1]["rsc"] == CONFLICT


def test_exported_relative_key_id_in_use_is_a_conflict(maf: Maf) -> None:
    assert maf.client(request(body=key_reg())).rsc == 2001
    # A new session exporting the same octets (not possible over TLS; the store says no).
    r = maf.client(request(body=key_reg()))
    assert r.rsc == CONFLICT and "already in use" in doc(r)["m2m:dbg"]
    assert maf.audit[-1]["reason"] == "RelativeKeyID already in use"


def test_random_relative_key_id_is_drawn_again_then_given_up(tmp_path: Path) -> None:
    with MafStore(tmp_path / "maf.db", cache_ttl=0) as store:
        store.add_client(KM_ID, KM)
        store.add_entity_b(IN_CSE)
        draws: list[int] = []

        def same(n: int) -> bytes:
            draws.append(n)
            return b"\x07" * n

        maf = Maf(MafService(store, MafPolicy(FQDN, SP), Clock(), token=same), store, Clock())
        assert maf.client(request(body=key_reg(keyValue="11" * 32))).rsc == 2001
        draws.clear()
        r = maf.client(request(body=key_reg(keyValue="22" * 32)))
        assert r.rsc == 5000 and doc(r)["m2m:dbg"] == "no free RelativeKeyID"
        assert len(draws) == 4  # the first plan and three draws after collisions
        assert maf.events()[1:] == [AuditEvent.KEY_REFUSED] * 3


@pytest.mark.parametrize(
    ("body", "rsc"),
    [
        (b"not json", 4000),
        ({"mafKeyReg": []}, 4000),
        (key_reg(SUID=7), 4000),
        (key_reg(expirationTime="2030-01-01T13:00:00Z"), 4000),
        (key_reg(keyValue="zz"), 4000),
        (key_reg(mafFQDN="other.maf.com"), 4000),
        (key_reg(expirationTime="20291231T000000"), 4000),  # in the past
        (key_reg(targetIDs=["//in.provider.com/stranger"]), 4103),  # not an allowed Entity B
    ],
)
def test_key_registration_refusals_are_audited(maf: Maf, body: Any, rsc: int) -> None:
    r = maf.client(request(body=body))
    assert r.rsc == rsc and "m2m:dbg" in doc(r)
    assert maf.events() == [AuditEvent.KEY_REFUSED]
    assert maf.audit[0]["rsc"] == rsc and maf.audit[0]["kmId"] == KM_ID
    assert maf.service.stats.refused_by_rsc[rsc] == 1 and maf.service.stats.keys_issued == 0


def test_refusal_not_audited_is_answered_5000(maf: Maf) -> None:
    """An audit record that cannot be written turns the answer into 5000, never a key."""
    maf.fail_audit = True
    r = maf.client(request(body=key_reg(SUID=7)))
    assert r.rsc == 5000 and doc(r)["m2m:dbg"] == "MAF internal error"


def test_request_identifier_and_routes(maf: Maf) -> None:
    assert maf.client(request(body=key_reg(), rid=None)).rsc == 4000
    assert maf.client(request("GET", "/maf/nothing")).rsc == 4004
    assert maf.client(request("PATCH", "/maf/keys")).rsc == 4005
    # Key Retrieval belongs to the retrieval listener.
    r = maf.client(request("GET", "/maf/keys/" + "00" * 16))
    assert r.rsc == 4103 and "retrieval listener" in doc(r)["m2m:dbg"]
    ok = maf.client(request(body=key_reg(keyValue="11" * 32), rid="echo-me"))
    assert ("X-M2M-RI", "echo-me") in ok.headers


# ----------------------------------------------------------------------------- 8.8.2.9/10


def test_key_update(maf: Maf) -> None:
    rel = registered(maf)
    body = {"mafKeyReg": {"expirationTime": "20300101T123000", "targetIDs": [OTHER_CSE]}}
    r = maf.client(request("PUT", f"/maf/keys/{rel}", body))
    assert (r.status, r.rsc) == (200, 2004)
    assert doc(r) == {"mafKeyReg": {"targetIDs": [OTHER_CSE], "expirationTime": "20300101T123000"}}
    key = maf.store.get_key(rel)
    assert key is not None and key.target_ids == (OTHER_CSE,)
    assert maf.audit[-1]["event"] == AuditEvent.KEY_UPDATED
    assert maf.service.stats.keys_updated == 1


@pytest.mark.parametrize(
    ("body", "rsc"),
    [
        ({"mafKeyReg": {}}, 4000),
        ({"mafKeyReg": {"labels": "x"}}, 4000),
        ({"mafKeyReg": {"targetIDs": [IN_CSE, OTHER_CSE]}}, 4000),  # SAEF: one target
        ({"mafKeyReg": {"targetIDs": ["//in.provider.com/stranger"]}}, 4103),
    ],
)
def test_key_update_refusals(maf: Maf, body: Any, rsc: int) -> None:
    rel = registered(maf)
    assert maf.client(request("PUT", f"/maf/keys/{rel}", body)).rsc == rsc
    key = maf.store.get_key(rel)
    assert key is not None and key.target_ids == (IN_CSE,)


def test_keys_of_another_client_unknown_or_expired_are_not_found(maf: Maf) -> None:
    """8.8.2.9/8.8.2.10 pre-conditions: one 4004 for another KmId's, unknown, expired."""
    rel = registered(maf)
    update = {"mafKeyReg": {"labels": ["x"]}}
    other = maf.session(KM2_ID)
    assert maf.client(request("PUT", f"/maf/keys/{rel}", update), other).rsc == 4004
    assert maf.client(request("DELETE", f"/maf/keys/{rel}"), other).rsc == 4004
    assert maf.client(request("PUT", "/maf/keys/" + "ab" * 16, update)).rsc == 4004
    maf.clock.now = NOW + timedelta(hours=2)
    assert maf.client(request("PUT", f"/maf/keys/{rel}", update)).rsc == 4004
    assert maf.client(request("PUT", "/maf/keys/not-hex", update)).rsc == 4000


def test_key_deregistration(maf: Maf) -> None:
    rel = registered(maf)
    r = maf.client(request("DELETE", f"/maf/keys/{rel}"))
    assert (r.status, r.rsc, r.body) == (200, 2002, b"")
    assert maf.audit[-1]["event"] == AuditEvent.KEY_DEREGISTERED
    assert maf.client(request("DELETE", f"/maf/keys/{rel}")).rsc == 4004
    assert maf.retrieve(rel).rsc == 4004
    assert maf.service.stats.keys_deregistered == 1


# ----------------------------------------------------------------------------- 8.8.2.3-6


def test_client_registration_lifecycle(maf: Maf) -> None:
    r = maf.client(request("POST", "/maf/clients", client_reg(labels=["l"])))
    assert r.rsc == 2001
    body = doc(r)["mafClientReg"]
    reg_id = body["mafClientRegID"]
    assert body["mafClientID"] == KM_ID and body["adminFQDN"] == ADMIN
    assert body["expirationTime"] == "20300131T120000"  # shortened to 30 days from now
    assert maf.audit[-1]["event"] == AuditEvent.CLIENT_REGISTERED
    assert maf.service.stats.client_registrations == 1

    config = request("GET", f"/maf/clients/{reg_id}/config")
    assert maf.client(config).rsc == 4004  # none configured
    maf.store.set_client_config(KM_ID, {"mafFQDN": FQDN})
    got = maf.client(config)
    assert got.rsc == 2000 and doc(got) == {"mafClientCfg": {"mafFQDN": FQDN}}

    update = {"mafClientReg": {"expirationTime": "20300102T000000"}}
    r = maf.client(request("PUT", f"/maf/clients/{reg_id}", update))
    assert r.rsc == 2004 and doc(r) == {"mafClientReg": {"expirationTime": "20300102T000000"}}
    assert maf.audit[-1]["event"] == AuditEvent.CLIENT_UPDATED

    # A key registered under the registration is capped by it and removed with it.
    rel = registered(maf, expirationTime="20300103T000000")
    assert doc(maf.retrieve(rel))["mafKey"]["expirationTime"] == "20300102T000000"
    r = maf.client(request("DELETE", f"/maf/clients/{reg_id}"))
    assert r.rsc == 2002
    assert maf.audit[-1]["event"] == AuditEvent.CLIENT_DEREGISTERED
    assert maf.audit[-1]["keys"] == 1
    assert maf.retrieve(rel).rsc == 4004
    assert maf.client(request("DELETE", f"/maf/clients/{reg_id}")).rsc == 4004


def test_client_registration_refusals(maf: Maf) -> None:
    assert maf.client(request("POST", "/maf/clients", {"mafClientReg": {}})).rsc == 4000
    assert maf.client(request("POST", "/maf/clients", client_reg(adminFQDN=None))).rsc == 4000
    assert maf.client(request("POST", "/maf/clients", client_reg(extra=1))).rsc == 4000
    reg_id = doc(maf.client(request("POST", "/maf/clients", client_reg())))["mafClientReg"][
        "mafClientRegID"
    ]
    other = maf.session(KM2_ID)
    update: dict[str, Any] = {"mafClientReg": {"labels": []}}
    assert maf.client(request("PUT", f"/maf/clients/{reg_id}", update), other).rsc == 4004
    assert maf.client(request("DELETE", f"/maf/clients/{reg_id}"), other).rsc == 4004
    assert maf.client(request("PUT", f"/maf/clients/{reg_id}", {"mafClientReg": {}})).rsc == 4000
    assert maf.client(request("DELETE", "/maf/clients/bad id")).rsc == 4000
    maf.clock.now = NOW + timedelta(days=40)
    assert maf.client(request("GET", f"/maf/clients/{reg_id}/config")).rsc == 4004


# ----------------------------------------------------------------------------- 8.8.2.8


def test_key_retrieval(maf: Maf) -> None:
    rel = registered(maf)
    r = maf.retrieve(rel)
    assert (r.status, r.rsc) == (200, 2000)
    key = doc(r)["mafKey"]
    assert key["keyValue"] == "11" * 32 and key["relativeKeyID"] == rel
    assert key["sourceMAFClientID"] == KM_ID and key["entityID"] == ENTITY_A
    record = maf.audit[-1]
    assert record["event"] == AuditEvent.KEY_RETRIEVED and record["retriever"] == IN_CSE
    assert "11" * 32 not in json.dumps(maf.audit)  # never the key
    assert maf.service.stats.keys_retrieved == 1


def test_key_retrieval_refusals_are_audited(maf: Maf) -> None:
    rel = registered(maf)
    cases = [
        ("ab" * 16, IN_CSE, 4004, "unknown key"),
        (rel, OTHER_CSE, 4103, f"retriever {OTHER_CSE} is not in targetIDs"),
        (rel, "//in.provider.com/stranger", 4103, None),  # not an allowed Entity B
        (rel, None, 4103, None),  # the certificate names no AE-ID or CSE-ID
    ]
    for rel_id, entity, rsc, reason in cases:
        assert maf.retrieve(rel_id, entity).rsc == rsc
        record = maf.audit[-1]
        assert record["event"] == AuditEvent.RETRIEVAL_REFUSED and record["rsc"] == rsc
        assert reason is None or record["reason"] == reason
    assert maf.service.stats.refused_by_rsc == {4004: 1, 4103: 3}
    maf.clock.now = NOW + timedelta(hours=2)
    assert maf.retrieve(rel).rsc == 4004
    assert maf.audit[-1]["reason"] == "expired key"


def test_retrieval_listener_serves_key_retrieval_only(maf: Maf) -> None:
    peer = Retriever(IN_CSE, IN_CSE, "cse", "sa-b")
    r = maf.run(maf.service.handle_retrieval(peer, request(body=key_reg(keyValue="11" * 32))))
    assert r.rsc == 4103 and list(maf.store.list_keys()) == []


def test_retrieval_audit_failure_is_not_answered_by_the_service(maf: Maf) -> None:
    """Unlike the client listener, a retrieval whose audit record is not written raises:
    the server's HTTP loop answers it as an internal error (5000)."""
    rel = registered(maf)
    maf.fail_audit = True
    with pytest.raises(MafRefusal) as caught:
        maf.retrieve(rel)
    assert caught.value.rsc == 5000
    assert maf.service.stats.keys_retrieved == 0
