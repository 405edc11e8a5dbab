"""The BSF end to end: Ub bootstrapping (TS 24.109) against a running BsfServer with the
device's Ub client, Zn over real mutual TLS with certificates from our CA, and every
refusal of the contract (wrong RES, MAC failure, resync, unknown/expired B-TID, malformed
Authorization, a B-TID asked for by another NAF, GUSS, key type)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h11
import pytest

from m2msec.bindings.messages import OneM2MRequest
from m2msec.crypto import gba
from m2msec.crypto.milenage import opc as derive_opc
from m2msec.errors import ConfigurationError
from m2msec.frameworks.certificate import CertificateCredential
from m2msec.frameworks.gba import zn_profile
from m2msec.gba.aka import Usim
from m2msec.gba.digest import (
    Authorization,
    compute_response,
    parse_challenge,
)
from m2msec.gba.records import Guss
from m2msec.gba.ub import UbError, bootstrap
from m2msec.gba.wire import ZnError, ZnRequest
from m2msec.gba.zn import ZnClient
from m2msec.pki.authority import CertificateAuthority, IssuedCredential, write_credential
from m2msec.servers.bsf import BsfConfig, BsfServer, load_bsf_config, parse_bsf_config
from m2msec.tls.context import Framework
from tests.slow_head import trickle_head

DOMAIN = "in.provider.com"
BSF_FQDN = "bsf.in.provider.com"
NAF_FQDN = "mn-cse-123456.in.provider.com"  # the gateway's CSE public domain name
OTHER_NAF = "other-naf.in.provider.com"
IMPI = "dev1@ims.example.com"
UICC_IMPI = "uicc@ims.example.com"
K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC = derive_opc(K, bytes.fromhex("cdc202d5123e20f62b6d676ac72cb318"))
UA = gba.ua_protocol_id_tls_psk(gba.SUITE_IDS["PSK-AES128-CBC-SHA256"])


# ----------------------------------------------------------------------------- fixtures


@dataclass
class Pki:
    ca_pem: Path
    bsf: tuple[Path, Path]
    naf: IssuedCredential
    other_naf: IssuedCredential
    ae: IssuedCredential
    foreign: IssuedCredential
    foreign_ca: bytes
    ca_bytes: bytes

    def credential(
        self, issued: IssuedCredential, ca: bytes | None = None
    ) -> CertificateCredential:
        return CertificateCredential(issued.cert_pem, issued.key_pem, ca or self.ca_bytes)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("gba-pki")
    ca = CertificateAuthority.init(base / "ca", domain=DOMAIN)
    other = CertificateAuthority.init(base / "other-ca", domain=DOMAIN)
    key, cert = write_credential(ca.issue_service(BSF_FQDN), base / "bsf")
    return Pki(
        ca_pem=ca.cert_path,
        bsf=(cert, key),
        naf=ca.issue("/mn-cse-123456"),
        other_naf=ca.issue_service(OTHER_NAF),
        ae=ca.issue("/mn-cse-123456/Cdevice"),
        foreign=other.issue("/mn-cse-123456"),
        foreign_ca=other.cert_pem,
        ca_bytes=ca.cert_pem,
    )


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def bsf(tmp_path: Path, pki: Pki, clock: Clock) -> AsyncIterator[BsfServer]:
    cert, key = pki.bsf
    config = BsfConfig(
        fqdn=BSF_FQDN,
        listen=(("127.0.0.1", 0),),
        zn_listen=(("127.0.0.1", 0),),
        store=tmp_path / "bsf.db",
        cert=cert,
        key=key,
        ca=pki.ca_pem,
        ks_lifetime=600,
        challenge_timeout=30,
    )
    server = BsfServer(config, clock=clock)
    await server.start()
    server.store.add_subscriber(
        IMPI, k=K, opc=OPC, guss=Guss.allowing({NAF_FQDN: {"aeId": "/mn-cse-123456/Cdev1"}})
    )
    server.store.add_subscriber(UICC_IMPI, k=K, opc=OPC, uicc=True, guss=Guss.allowing([NAF_FQDN]))
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def open_bsf(tmp_path: Path, clock: Clock) -> AsyncIterator[BsfServer]:
    """A Ub-only BSF without a per-source rate limit in the way (the flood tests below
    measure the per-IMPI bound alone)."""
    config = BsfConfig(
        fqdn=BSF_FQDN,
        listen=(("127.0.0.1", 0),),
        store=tmp_path / "open.db",
        challenge_timeout=30,
        ub_rate=1e9,
        ub_burst=10**9,
    )
    server = BsfServer(config, clock=clock)
    await server.start()
    server.store.add_subscriber(IMPI, k=K, opc=OPC, guss=Guss.allowing([NAF_FQDN]))
    try:
        yield server
    finally:
        await server.close()


def zn_client(bsf: BsfServer, credential: CertificateCredential) -> ZnClient:
    host, port = bsf.zn_addresses[0]
    return ZnClient(zn_profile(credential, BSF_FQDN), host, port, BSF_FQDN, timeout=5.0)


class RawUb:
    """A plain HTTP/1.1 client for sending hand-made Ub requests (keep-alive)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, bsf: BsfServer) -> RawUb:
        host, port = bsf.ub_addresses[0]
        return cls(*await asyncio.open_connection(host, port))

    async def send(
        self, authorization: str | list[str] | None, *, method: str = "GET", target: str = "/"
    ) -> tuple[int, dict[str, str], bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = [("Host", "bsf"), ("Content-Length", "0")]
        values = [authorization] if isinstance(authorization, str) else authorization or []
        headers += [("Authorization", v) for v in values]
        self.writer.write(
            self.h11.send(h11.Request(method=method, target=target, headers=headers))
            + self.h11.send(h11.EndOfMessage())
        )
        status, out, body = 0, {}, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await asyncio.wait_for(self.reader.read(65536), 5))
            elif isinstance(event, h11.Response):
                status = event.status_code
                out = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, out, body

    async def close(self) -> None:
        self.writer.close()


def first_request(impi: str = IMPI) -> str:
    return Authorization(
        username=impi, realm=BSF_FQDN, nonce="", uri="/", response="", algorithm=None
    ).header_value()


def answer(
    challenge_header: str, *, password: bytes, impi: str = IMPI, uri: str = "/", **extra: str
) -> str:
    ch = parse_challenge(challenge_header)
    response = compute_response(
        password=password,
        username=impi,
        realm=ch.realm,
        method="GET",
        uri=uri,
        nonce=ch.nonce,
        qop="auth-int",
        nc="00000001",
        cnonce="c0ffee",
    )
    auth = Authorization(
        username=impi,
        realm=ch.realm,
        nonce=ch.nonce,
        uri=uri,
        response=response,
        qop="auth-int",
        nc="00000001",
        cnonce="c0ffee",
        **extra,  # type: ignore[arg-type]
    )
    return auth.header_value()


# ----------------------------------------------------------------------------- Ub


async def test_bootstrap_then_naf_key_over_zn(bsf: BsfServer, pki: Pki, clock: Clock) -> None:
    usim = Usim(K, OPC, sqn=0)
    boot = await bootstrap(bsf.ub_url(), usim, IMPI)
    _, _, domain = boot.btid.partition("@")
    assert domain == BSF_FQDN
    assert gba.parse_btid(boot.btid)[0] == boot.rand
    assert abs((boot.expires - clock.now).total_seconds() - 600) <= 1
    session = bsf.store.get_session(boot.btid)
    assert session is not None and session.ks == boot.ks and session.gba_type == "GBA_ME"
    assert bsf.stats.bootstraps == 1

    naf_id = gba.naf_id(NAF_FQDN, UA)
    async with zn_client(bsf, pki.credential(pki.naf)) as zn:
        key = await zn.fetch(boot.btid, naf_id)
        again = await zn.fetch(boot.btid, naf_id)  # over the kept connection
    # The NAF's key equals what the device derives on its own from Ks.
    assert key.ks_naf == boot.ks_ext_naf(naf_id) == again.ks_naf
    assert key.impi == IMPI and key.btid == boot.btid and key.gba_type == "GBA_ME"
    assert key.uss == {"aeId": "/mn-cse-123456/Cdev1"}
    assert key.expires == boot.expires
    assert bsf.stats.zn_answered == 2


async def test_ks_is_reusable_for_several_suites(bsf: BsfServer, pki: Pki) -> None:
    boot = await bootstrap(bsf.ub_url(), Usim(K, OPC, 0), IMPI)
    async with zn_client(bsf, pki.credential(pki.naf)) as zn:
        keys = {}
        for suite in gba.SUITE_IDS.values():
            naf_id = gba.naf_id(NAF_FQDN, gba.ua_protocol_id_tls_psk(suite))
            keys[suite] = (await zn.fetch(boot.btid, naf_id)).ks_naf
            assert keys[suite] == boot.ks_ext_naf(naf_id)
    assert len(set(keys.values())) == 3  # docs/readings.md A-09: the key depends on the suite


async def test_sqn_out_of_range_resynchronises(bsf: BsfServer) -> None:
    usim = Usim(K, OPC, sqn=0x0000_1234_5678)
    boot = await bootstrap(bsf.ub_url(), usim, IMPI)
    assert bsf.stats.resyncs == 1 and bsf.stats.bootstraps == 1
    sub = bsf.store.get_subscriber(IMPI)
    assert sub is not None and sub.sqn == int.from_bytes(usim.sqn_ms, "big")
    # A second device run without resync now.
    await bootstrap(bsf.ub_url(), usim, IMPI)
    assert bsf.stats.resyncs == 1
    assert boot.btid != (await bootstrap(bsf.ub_url(), usim, IMPI)).btid


async def test_mac_failure_gives_up_and_tells_the_bsf(bsf: BsfServer) -> None:
    impostor = Usim(bytes(16), OPC, 0)  # a device whose K the BSF does not have
    bsf.store.add_subscriber("victim@example.com", k=K, opc=OPC)
    with pytest.raises(UbError, match="MAC-A does not verify"):
        await bootstrap(bsf.ub_url(), impostor, "victim@example.com")
    assert bsf.stats.bootstraps == 0
    assert bsf.stats.ub_refused == 1  # the empty-password notification
    assert bsf.store.count_sessions() == 0


async def test_unknown_impi_is_refused(bsf: BsfServer) -> None:
    with pytest.raises(UbError, match="unknown IMPI") as info:
        await bootstrap(bsf.ub_url(), Usim(K, OPC), "nobody@example.com")
    assert info.value.status == 403


async def test_wrong_res_is_refused_and_leaves_the_challenge_usable(bsf: BsfServer) -> None:
    # Issue 9 item 5: a wrong RES no longer burns the nonce (it used to: then anyone who saw
    # the request could cancel a device's bootstrap with one forged answer). The device that
    # holds the challenge still answers it; the nonce is used up only by a verified answer.
    from m2msec.gba.digest import split_nonce

    raw = await RawUb.open(bsf)
    try:
        status, headers, _ = await raw.send(first_request())
        assert status == 401
        challenge = headers["www-authenticate"]
        wrong = answer(challenge, password=b"\x00" * 8)
        status, _, body = await raw.send(wrong)
        assert status == 403 and b"does not verify" in body
        # A forged "MAC failure" notification (empty password: anyone can compute it).
        status, _, body = await raw.send(answer(challenge, password=b""))
        assert status == 403 and b"MAC failure" in body
        rand, autn, _ = split_nonce(parse_challenge(challenge).nonce)
        res = Usim(K, OPC, 0).authenticate(rand, autn).res
        status, _, _ = await raw.send(answer(challenge, password=res))
        assert status == 200
        # Now it is used up: the same answer only earns a fresh challenge.
        status, headers, _ = await raw.send(answer(challenge, password=res))
        assert status == 401 and headers["www-authenticate"] != challenge
    finally:
        await raw.close()
    assert bsf.store.count_sessions() == 1


async def test_correct_res_by_hand_matches_the_server(bsf: BsfServer) -> None:
    # The raw path with the right RES succeeds: the refusals above are not accidental.
    from m2msec.gba.digest import split_nonce

    raw = await RawUb.open(bsf)
    try:
        _, headers, _ = await raw.send(first_request())
        rand, autn, _ = split_nonce(parse_challenge(headers["www-authenticate"]).nonce)
        res = Usim(K, OPC, 0).authenticate(rand, autn).res
        status, headers, body = await raw.send(answer(headers["www-authenticate"], password=res))
        assert status == 200
        assert headers["content-type"] == "application/vnd.3gpp.bsf+xml"
        assert b'<BootstrappingInfo xmlns="uri:3gpp-gba">' in body
        assert "rspauth=" in headers["authentication-info"]
    finally:
        await raw.close()


MALFORMED = [
    ("Basic dXNlcjpwYXNz", "not Digest"),
    (
        'Digest username="u", username="v", realm="r", nonce="", uri="/", response=""',
        "more than once",
    ),
    ('Digest realm="r", nonce="", uri="/", response=""', "missing parameter(s) username"),
    ('Digest username="u, realm="r", nonce="", uri="/", response=""', "expected ','"),
    ('Digest username="u", realm="r", nonce="', "unterminated"),
    ('Digest username="u", realm="r", nonce="", uri="/other", response=""', "not the request-URI"),
    ('Digest username="u", realm="r", nonce="", uri="/", response="zz"', "32 hexadecimal"),
]


@pytest.mark.parametrize(("header", "reason"), MALFORMED)
async def test_malformed_authorization_is_a_400_with_the_reason(
    bsf: BsfServer, header: str, reason: str
) -> None:
    raw = await RawUb.open(bsf)
    try:
        status, _, body = await raw.send(header)
        assert status == 400
        assert reason in body.decode()
        # The connection and the server keep serving.
        status, _, _ = await raw.send(first_request())
        assert status == 401
    finally:
        await raw.close()


async def test_missing_or_repeated_authorization_and_other_methods(bsf: BsfServer) -> None:
    raw = await RawUb.open(bsf)
    try:
        status, _, body = await raw.send(None)
        assert status == 400 and b"username" in body
        status, _, body = await raw.send([first_request(), first_request()])
        assert status == 400 and b"more than once" in body
        status, headers, _ = await raw.send(first_request(), method="PUT")
        assert status == 405 and headers["allow"] == "GET, POST"
        status, _, _ = await raw.send(first_request(), method="POST")
        assert status == 401
    finally:
        await raw.close()


async def test_nonce_for_another_user_and_expired_challenges(bsf: BsfServer, clock: Clock) -> None:
    bsf.store.add_subscriber("eve@example.com", k=bytes(16), opc=bytes(16))
    raw = await RawUb.open(bsf)
    try:
        _, headers, _ = await raw.send(first_request())
        stolen = answer(headers["www-authenticate"], password=b"x", impi="eve@example.com")
        status, _, body = await raw.send(stolen)
        assert status == 403 and b"another user" in body

        _, headers, _ = await raw.send(first_request())
        clock.now += timedelta(seconds=31)  # challenge_timeout is 30 s
        from m2msec.gba.digest import split_nonce

        rand, autn, _ = split_nonce(parse_challenge(headers["www-authenticate"]).nonce)
        res = Usim(K, OPC, 0).authenticate(rand, autn).res
        status, _, _ = await raw.send(answer(headers["www-authenticate"], password=res))
        assert status == 401  # forgotten: a fresh challenge, no session
    finally:
        await raw.close()
    assert bsf.store.count_sessions() == 0


async def test_wrong_realm_qop_and_auts(bsf: BsfServer) -> None:
    raw = await RawUb.open(bsf)
    try:
        for tweak, reason in (
            (lambda h: h.replace(f'realm="{BSF_FQDN}"', 'realm="evil.example.com"'), b"realm"),
            (lambda h: h.replace("qop=auth-int", "qop=auth"), b"qop"),
            (lambda h: h + ', auts="AAAA"', b"AUTS"),
            (lambda h: h + ', auts="%%%"', b"auts is not base64"),
        ):
            _, headers, _ = await raw.send(first_request())
            header = tweak(answer(headers["www-authenticate"], password=b""))
            status, _, body = await raw.send(header)
            assert status in (400, 403), body
            assert reason in body, body
    finally:
        await raw.close()


async def test_forged_auts_is_refused(bsf: BsfServer) -> None:
    import base64

    raw = await RawUb.open(bsf)
    try:
        _, headers, _ = await raw.send(first_request())
        forged = base64.b64encode(bytes(14)).decode()
        status, _, body = await raw.send(
            answer(headers["www-authenticate"], password=b"", auts=forged)
        )
        assert status == 403 and b"MAC-S" in body
    finally:
        await raw.close()
    assert bsf.stats.resyncs == 0


# ----------------------------------------------------------------------------- Zn


async def test_zn_refusals(bsf: BsfServer, pki: Pki, clock: Clock) -> None:
    boot = await bootstrap(bsf.ub_url(), Usim(K, OPC, 0), IMPI)
    own = gba.naf_id(NAF_FQDN, UA)
    other = gba.naf_id(OTHER_NAF, UA)
    async with zn_client(bsf, pki.credential(pki.naf)) as zn:
        with pytest.raises(ZnError, match="unknown B-TID") as info:
            await zn.fetch("AAAAAAAAAAAAAAAAAAAAAA==@" + BSF_FQDN, own)
        assert info.value.status == 404
        # A NAF asking for the key of another NAF (nafId FQDN != its certificate).
        with pytest.raises(ZnError, match="certificate authenticates") as info:
            await zn.fetch(boot.btid, other)
        assert info.value.status == 403
        with pytest.raises(ZnError, match="no UICC") as info:
            await zn.fetch(boot.btid, own, gba_u=True)
        assert info.value.status == 403
    # A NAF authenticated for itself but not in the subscriber's GUSS.
    async with zn_client(bsf, pki.credential(pki.other_naf)) as zn:
        with pytest.raises(ZnError, match="GUSS does not allow") as info:
            await zn.fetch(boot.btid, other)
        assert info.value.status == 403
    # Past the key lifetime.
    clock.now += timedelta(seconds=601)
    async with zn_client(bsf, pki.credential(pki.naf)) as zn:
        with pytest.raises(ZnError, match="expired") as info:
            await zn.fetch(boot.btid, own)
        assert info.value.status == 404
    assert bsf.stats.zn_refused == 5 and bsf.stats.zn_answered == 0


async def test_zn_gba_u_gives_ks_int_naf(bsf: BsfServer, pki: Pki) -> None:
    boot = await bootstrap(bsf.ub_url(), Usim(K, OPC, 0), UICC_IMPI)
    naf_id = gba.naf_id(NAF_FQDN, UA)
    async with zn_client(bsf, pki.credential(pki.naf)) as zn:
        internal = await zn.fetch(boot.btid, naf_id, gba_u=True)
        external = await zn.fetch(boot.btid, naf_id, gba_u=False)
    assert internal.gba_type == "GBA_U"
    assert internal.ks_naf == boot.ks_int_naf(naf_id)
    assert external.ks_naf == boot.ks_ext_naf(naf_id)
    assert internal.ks_naf != external.ks_naf


@pytest.mark.parametrize("who", ["foreign", "ae"])
async def test_zn_needs_a_certificate_of_our_ca_naming_an_fqdn(
    bsf: BsfServer, pki: Pki, who: str
) -> None:
    if who == "foreign":
        # Another CA's certificate (the client trusts our CA to check the BSF).
        credential = CertificateCredential(pki.foreign.cert_pem, pki.foreign.key_pem, pki.ca_bytes)
    else:
        credential = pki.credential(pki.ae)  # an AE-ID certificate: a URI, no dNSName
    async with zn_client(bsf, credential) as zn:
        with pytest.raises(ZnError) as info:
            await zn.fetch("x@" + BSF_FQDN, gba.naf_id(NAF_FQDN, UA))
    assert info.value.status == 0  # refused in the handshake


async def test_zn_client_checks_the_bsf_name(bsf: BsfServer, pki: Pki) -> None:
    host, port = bsf.zn_addresses[0]
    wrong = "not-the-bsf.in.provider.com"
    client = ZnClient(zn_profile(pki.credential(pki.naf), wrong), host, port, wrong)
    async with client:
        with pytest.raises(ZnError, match="cannot establish Zn TLS"):
            await client.fetch("x@" + BSF_FQDN, gba.naf_id(NAF_FQDN, UA))


def test_zn_client_needs_a_mutual_tls_client_profile(pki: Pki) -> None:
    # Zn is mutually authenticated (TS 33.220 4.4.3): the client takes a certificate
    # framework client profile (frameworks.gba.zn_profile), nothing else.
    profile = zn_profile(pki.credential(pki.naf), BSF_FQDN)
    for wrong in (
        dataclasses.replace(profile, server_side=True),
        dataclasses.replace(profile, certificate_policy=None),
        dataclasses.replace(profile, framework=Framework.PROVISIONED_PSK),
    ):
        with pytest.raises(ConfigurationError, match="certificate client profile"):
            ZnClient(wrong, "127.0.0.1", 1, BSF_FQDN)


def _zn_request(target: str, method: str = "GET") -> OneM2MRequest:
    return OneM2MRequest(
        method=method,
        target=target,
        headers=(),
        body=b"",
        origin=None,
        request_id=None,
        release_version=None,
        content_type=None,
        resource_type=None,
    )


@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        ("/zn/bootstrap/", 400, "percent-encoded B-TID"),
        ("/zn/bootstrap/a%2Fb/c", 400, "percent-encoded"),
        ("/elsewhere", 405, "no Zn resource"),
        ("/zn/bootstrap/x", 400, "nafId is missing"),
        ("/zn/bootstrap/x?nafId=zz", 400, "not hexadecimal"),
        ("/zn/bootstrap/x?nafId=0102", 400, "NAF_Id too short"),
        ("/zn/bootstrap/x?nafId=" + gba.naf_id(NAF_FQDN, UA).hex() + "&gbaU=2", 400, "gbaU"),
        ("/zn/bootstrap/x?nafId=00&nafId=00", 400, "only once"),
        ("/zn/bootstrap/x?foo=1", 400, "unknown query parameter"),
        ("/zn/bootstrap/%ff?nafId=00", 400, "UTF-8"),
    ],
)
async def test_zn_malformed_requests(bsf: BsfServer, target: str, status: int, reason: str) -> None:
    response = bsf.service.handle_zn(_zn_request(target), frozenset({NAF_FQDN}))
    assert response.status == status
    assert reason in json.loads(response.body)["error"]


async def test_zn_other_method(bsf: BsfServer) -> None:
    response = bsf.service.handle_zn(_zn_request("/zn/bootstrap/x", "POST"), frozenset({NAF_FQDN}))
    assert response.status == 405


def test_zn_request_round_trip() -> None:
    req = ZnRequest("I1U8vpY3qJ0hiuZNrke/NQ==@" + BSF_FQDN, gba.naf_id(NAF_FQDN, UA), True)
    assert "%2F" in req.target() and "%40" in req.target()
    assert ZnRequest.from_target(req.target()) == req


# ----------------------------------------------------------------------------- config


def test_config_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"bsf\.fqdn: missing"):
        parse_bsf_config({"bsf": {}})
    with pytest.raises(ConfigurationError, match="did you mean 'listen'"):
        parse_bsf_config({"bsf": {"fqdn": BSF_FQDN, "lisen": []}})
    with pytest.raises(ConfigurationError, match="needs cert, key and ca"):
        parse_bsf_config({"bsf": {"fqdn": BSF_FQDN, "zn_listen": ["tls://127.0.0.1:1"]}})
    with pytest.raises(ConfigurationError, match="must start with http://"):
        parse_bsf_config({"bsf": {"fqdn": BSF_FQDN, "listen": ["tls://127.0.0.1:1"]}})
    with pytest.raises(ConfigurationError, match="needs a host and a port"):
        parse_bsf_config({"bsf": {"fqdn": BSF_FQDN, "listen": ["http://127.0.0.1"]}})
    with pytest.raises(ConfigurationError, match="no such file"):
        parse_bsf_config({"bsf": {"fqdn": BSF_FQDN, "cert": "missing.pem"}}, base_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="must be greater than 0"):
        parse_bsf_config({"bsf": {"fqdn": BSF_FQDN, "ks_lifetime": 0}})
    with pytest.raises(ConfigurationError, match="FQDN"):
        parse_bsf_config({"bsf": {"fqdn": "not a name"}})
    with pytest.raises(ConfigurationError, match="unknown section"):
        parse_bsf_config({"gateway": {}})


def test_config_file_paths_are_relative_to_the_file(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.bsf
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "bsf.pem").write_bytes(cert.read_bytes())
    (folder / "bsf.key").write_bytes(key.read_bytes())
    (folder / "ca.pem").write_bytes(pki.ca_pem.read_bytes())
    (folder / "bsf.toml").write_text(
        '[bsf]\nfqdn = "BSF.in.provider.com"\nlisten = "http://127.0.0.1:0"\n'
        'zn_listen = ["tls://[::1]:0"]\nstore = "state/bsf.db"\n'
        'cert = "bsf.pem"\nkey = "bsf.key"\nca = "ca.pem"\nks_lifetime = 120\n'
    )
    cfg = load_bsf_config(folder / "bsf.toml", {"bsf.ks_lifetime": 60.0})
    assert cfg.fqdn == BSF_FQDN
    assert cfg.listen == (("127.0.0.1", 0),) and cfg.zn_listen == (("::1", 0),)
    assert cfg.store == folder / "state" / "bsf.db"
    assert cfg.cert == folder / "bsf.pem"
    assert cfg.ks_lifetime == 60.0
    with pytest.raises(ConfigurationError, match="invalid TOML"):
        (folder / "bad.toml").write_text("[bsf\n")
        load_bsf_config(folder / "bad.toml")


async def test_server_keeps_serving_after_garbage(bsf: BsfServer) -> None:
    host, port = bsf.ub_addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
    data = await asyncio.wait_for(reader.read(4096), 5)
    assert data.startswith(b"HTTP/1.1 400")
    writer.close()
    await bootstrap(bsf.ub_url(), Usim(K, OPC, 0), IMPI)


# ----------------------------------------------------------------------------- floods


def _count_sqn_steps(bsf: BsfServer) -> list[int]:
    """Count the store writes that step SQN_HE (each unauthenticated challenge used to)."""
    steps: list[int] = []
    store = bsf.store
    advance = store.advance_sqn

    def counting(impi: str, ind_bits: int) -> int:
        steps.append(1)
        return advance(impi, ind_bits)

    store.advance_sqn = counting  # type: ignore[method-assign]
    return steps


async def _flood(bsf: BsfServer, count: int, connections: int = 4) -> list[int]:
    statuses: list[int] = []

    async def one(n: int) -> None:
        raw = await RawUb.open(bsf)
        try:
            for _ in range(n):
                statuses.append((await raw.send(first_request()))[0])
        finally:
            await raw.close()

    await asyncio.gather(*(one(count // connections) for _ in range(connections)))
    return statuses


async def test_challenge_flood_does_not_step_sqn(open_bsf: BsfServer, clock: Clock) -> None:
    bsf = open_bsf
    steps = _count_sqn_steps(bsf)
    sqn_before = bsf.store.get_subscriber(IMPI).sqn  # type: ignore[union-attr]
    statuses = await _flood(bsf, 1000)
    assert statuses == [401] * 1000
    # One vector, handed out again while it is in the first half of its lifetime.
    assert len(steps) == 1 and bsf.stats.challenges == 1
    assert bsf.stats.challenges_reused == 999
    sub = bsf.store.get_subscriber(IMPI)
    assert sub is not None and sub.sqn > sqn_before
    # Past half of challenge_timeout (30 s) a second vector; never more than
    # max_pending_per_impi (2) outstanding, so a flood steps SQN once per 15 s at most.
    raw = await RawUb.open(bsf)
    try:
        _, headers, _ = await raw.send(first_request())
        first = headers["www-authenticate"]
        clock.now += timedelta(seconds=16)
        _, headers, _ = await raw.send(first_request())
        second = headers["www-authenticate"]
        assert second != first and len(steps) == 2
        # The first is still answerable: a device that got it has 14 s left.
        from m2msec.gba.digest import split_nonce

        rand, autn, _ = split_nonce(parse_challenge(first).nonce)
        res = Usim(K, OPC, 0).authenticate(rand, autn).res
        status, _, _ = await raw.send(answer(first, password=res))
        assert status == 200
    finally:
        await raw.close()
    assert len(steps) == 2


async def test_honest_device_bootstraps_during_a_challenge_flood(open_bsf: BsfServer) -> None:
    bsf = open_bsf
    steps = _count_sqn_steps(bsf)
    flood = asyncio.create_task(_flood(bsf, 1000))
    await asyncio.sleep(0.05)
    usim = Usim(K, OPC, 0)  # one device: its USIM accepts each SQN once (TS 33.102 C.2)
    boots = []
    for _ in range(3):  # each bootstrap uses its challenge up; the flood then makes one more
        boots.append(await bootstrap(bsf.ub_url(), usim, IMPI))
    statuses = await flood
    assert set(statuses) == {401}
    assert bsf.stats.bootstraps == 3 and len({b.btid for b in boots}) == 3
    # Without the flood: 3 vectors. With it: at most one more per bootstrap.
    assert len(steps) <= 2 * 3


async def test_per_source_rate_limit_answers_429(tmp_path: Path) -> None:
    config = BsfConfig(
        fqdn=BSF_FQDN,
        listen=(("127.0.0.1", 0),),
        store=tmp_path / "limited.db",
        ub_rate=0.2,
        ub_burst=3,
    )
    async with BsfServer(config) as bsf:
        bsf.store.add_subscriber(IMPI, k=K, opc=OPC)
        raw = await RawUb.open(bsf)
        try:
            for _ in range(3):
                assert (await raw.send(first_request()))[0] == 401
            status, headers, body = await raw.send(first_request())
            assert status == 429 and b"too many" in body
            assert 1 <= int(headers["retry-after"]) <= 5
            # Garbage counts too: the limit is on requests, before any parsing.
            assert (await raw.send(None))[0] == 429
        finally:
            await raw.close()
        assert bsf.stats.ub_rate_limited == 2


def test_source_table_is_bounded() -> None:
    from m2msec.gba.service import SourceLimiter

    limiter = SourceLimiter(rate=1.0, burst=1, max_sources=100)
    for n in range(10_000):
        assert limiter.take(f"10.0.{n >> 8}.{n & 255}", 0.0) == 0.0
    assert len(limiter._buckets) == 100
    assert limiter.take("10.0.39.15", 0.0) > 0  # the most recent are kept


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        (("2001:db8:1:2::1", 5000, 0, 0), ("2001:db8:1:2:ffff::9", 5001, 0, 0), True),
        (("2001:db8:1:2::1", 5000, 0, 0), ("2001:db8:1:3::1", 5000, 0, 0), False),
        (("::ffff:192.0.2.7", 5000, 0, 0), ("192.0.2.7", 5001), True),
        (("192.0.2.7", 5000), ("192.0.2.8", 5000), False),
    ],
)
def test_ub_rate_limit_counts_an_ipv6_slash_64_as_one_source(
    first: tuple[object, ...], second: tuple[object, ...], shared: bool
) -> None:
    # One host holds a whole /64: per-address buckets would let it rotate addresses forever.
    from m2msec.gba.service import SourceLimiter, rate_limit_source

    limiter = SourceLimiter(rate=0.01, burst=1)
    assert limiter.take(rate_limit_source(first), 0.0) == 0.0
    assert (limiter.take(rate_limit_source(second), 0.0) > 0) is shared


async def test_ub_request_head_trickled_byte_by_byte_gets_408(
    tmp_path: Path, clock: Clock
) -> None:
    # Issue 10 item 1: the BSF's loop is the service layer's, with its request-head deadline;
    # before, a Ub head trickled a byte at a time held the connection for the idle timeout.
    config = BsfConfig(
        fqdn=BSF_FQDN,
        listen=(("127.0.0.1", 0),),
        store=tmp_path / "bsf.db",
        request_head_timeout=1.0,
    )
    server = BsfServer(config, clock=clock)
    await server.start()
    try:
        host, port = server.ub_addresses[0]
        reader, writer = await asyncio.open_connection(host, port)

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        try:
            got, elapsed = await trickle_head(send, lambda: reader.read(4096))
        finally:
            writer.close()
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert elapsed < 5  # generous: the deadline is 1 s, the full trickle 13 s
    finally:
        await server.close()
