"""The GBA-based framework (seed 000 8.2.3.2): identities, NAF_Id, Entity A and the NAF.

Identity and NAF_Id tests compare octets typed from docs/readings.md (A-01, A-02, A-09) and
TS 33.220 Annex H. The handshake tests run :class:`GbaDevice` against
:class:`GbaResponder` over loopback TCP. Most use ``StandInZn``, a stand-in for the BSF's
Zn answer that derives Ks_NAF from the same Ks with :mod:`m2msec.crypto.gba` (so the NAF
side's caching, refusals and binding can be driven precisely); the tests at the end use
the real :class:`~m2msec.servers.bsf.BsfServer` over Ub and Zn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.crypto.gba import btid as make_btid
from m2msec.crypto.gba import ks_ext_naf, ks_int_naf
from m2msec.errors import HandshakeError, IdentifierError, M2MSecError
from m2msec.frameworks.gba import (
    HINT,
    HINT_UICC,
    GbaResponder,
    format_identity,
    gba_naf_id,
    parse_identity,
    zn_profile,
)
from m2msec.frameworks.gba_device import GbaDevice, device_naf_key
from m2msec.frameworks.provisioned import PskInitiator
from m2msec.tls.aio import TLSConnection, TLSServer, connect
from m2msec.tls.context import Framework, PeerBinding, PeerKind, SecurityContext
from m2msec.tls.profiles import (
    PSK_SUITES_TLS,
    TLSProfile,
    Transport,
    cipher_string,
    new_context,
)

NAF = "in-cse.in.provider.com"
BSF_DOMAIN = "bsf.operator.example"
IMPI = "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"
BTID = "I2+8e5Y3qJ0hiuZNrke/NQ==@bsf.operator.example"


# ----------------------------------------------------------------------------- identities


def test_hints_are_ascii_octets() -> None:
    # the hyphen is ASCII 0x2D, never U+2011 (e2 80 91 in UTF-8).
    assert bytes.fromhex("33475050") + b"\x2d" + b"bootstrapping" == HINT
    assert HINT_UICC == HINT + b"\x2d" + b"uicc"
    for hint in (HINT, HINT_UICC):
        assert all(0x20 < b < 0x7F for b in hint)
        assert b"\xe2\x80\x91" not in hint


def test_format_identity_octets() -> None:
    assert format_identity(BTID) == (
        b"3GPP\x2dbootstrapping\x3bI2+8e5Y3qJ0hiuZNrke/NQ==@bsf.operator.example"
    )
    assert format_identity(BTID, uicc=True) == b"3GPP-bootstrapping-uicc;" + BTID.encode()


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (b"3GPP-bootstrapping;" + BTID.encode(), (BTID, False)),
        (b"3GPP-bootstrapping." + BTID.encode(), (BTID, False)),  # TS 36.508's separator
        (b"3GPP-bootstrapping-uicc;" + BTID.encode(), (BTID, True)),
        (b"3GPP-bootstrapping-uicc." + BTID.encode(), (BTID, True)),
        # never split on the last dot: the B-TID's domain keeps all of its dots
        (b"3GPP-bootstrapping.abc@a.b.c.example", ("abc@a.b.c.example", False)),
        # the longest prefix first: "-uicc" is not read as part of the B-TID
        (b"3GPP-bootstrapping-uicc.x@bsf.example", ("x@bsf.example", True)),
    ],
)
def test_parse_identity(identity: bytes, expected: tuple[str, bool]) -> None:
    assert parse_identity(identity) == expected


@pytest.mark.parametrize(
    ("identity", "why"),
    [
        # U+2011 NON-BREAKING HYPHEN, as one occurrence in seed 000 has it
        ("3GPP\u2011bootstrapping;".encode() + BTID.encode(), "non-ASCII hyphen"),
        ("3GPP\u2011bootstrapping-uicc;".encode() + BTID.encode(), "non-ASCII hyphen"),
        (b"3GPP-bootstrapping" + BTID.encode(), "exactly one"),
        (b"3GPP-bootstrapping:" + BTID.encode(), "exactly one"),
        (b"3GPP-bootstrapping;;" + BTID.encode(), "exactly one"),
        (b"3GPP-bootstrapping;." + BTID.encode(), "exactly one"),
        (b"3GPP-bootstrapping-uiccx;" + BTID.encode(), "exactly one"),
        (b"3GPP-bootstrapping;", "empty"),
        (b"3gpp-bootstrapping;" + BTID.encode(), "no 3GPP-bootstrapping prefix"),
        (b"AE123456789012-Light@in.provider.com", "no 3GPP-bootstrapping prefix"),
        (b"3GPP-bootstrapping;no-at-sign", "<local>@<BSF domain>"),
        (b"3GPP-bootstrapping;a b@bsf.example", "visible ASCII"),
        (b"3GPP-bootstrapping;x@bsf_.exa mple", "visible ASCII"),
        (b"3GPP-bootstrapping;x@-bad-.example", "BSF domain"),
        (b"3GPP-bootstrapping;\xc3\xa9@bsf.example", "not ASCII"),
    ],
)
def test_parse_identity_refusals(identity: bytes, why: str) -> None:
    with pytest.raises(IdentifierError, match=why):
        parse_identity(identity)


def test_format_identity_refuses_bad_btid() -> None:
    for bad in ("", "no-at", ";x@bsf.example", "x y@bsf.example", "x@" + "a" * 120 + ".example"):
        with pytest.raises(IdentifierError):
            format_identity(bad)


# ----------------------------------------------------------------------------- NAF_Id


@pytest.mark.parametrize(
    ("suite", "ua"),
    [(0x00AE, "01000100ae"), (0x00A8, "01000100a8"), (0xC0A8, "010001c0a8")],
)
def test_naf_id_holds_the_negotiated_suite(suite: int, ua: str) -> None:
    # TS 33.220 H.2: 01 00 01 yy zz with yy zz the suite; FQDN in lower case.
    assert gba_naf_id("IN-CSE.in.provider.com", suite) == NAF.encode() + bytes.fromhex(ua)


def test_naf_key_depends_on_suite_fqdn_and_gba_type() -> None:
    b = _bootstrap()
    keys = {
        device_naf_key(b, NAF, 0x00AE),
        device_naf_key(b, NAF, 0x00A8),
        device_naf_key(b, NAF, 0xC0A8),
        device_naf_key(b, "other.in.provider.com", 0x00AE),
        device_naf_key(b, NAF, 0x00AE, uicc=True),
    }
    assert len(keys) == 5
    nid = NAF.encode() + bytes.fromhex("01000100ae")
    assert device_naf_key(b, NAF, 0x00AE) == ks_ext_naf(b.ks, b.rand, IMPI, nid)
    assert device_naf_key(b, NAF, 0x00AE, uicc=True) == ks_int_naf(b.ks, b.rand, IMPI, nid)


# ----------------------------------------------------------------------------- stand-ins


@dataclass(frozen=True)
class _Bootstrap:
    btid: str
    rand: bytes
    ks: bytes = field(repr=False)
    impi: str
    expires: datetime


def _bootstrap(lifetime: timedelta = timedelta(hours=1)) -> _Bootstrap:
    rand = os.urandom(16)
    return _Bootstrap(
        make_btid(rand, BSF_DOMAIN), rand, os.urandom(32), IMPI, datetime.now(UTC) + lifetime
    )


@dataclass(frozen=True)
class _NafKey:
    ks_naf: bytes = field(repr=False)
    expires: datetime
    impi: str
    btid: str
    uss: dict[str, Any] | None


class BsfRefusal(M2MSecError):
    pass


class StandInZn:
    """Stands in for the BSF's Zn answer (no real peer needed for these NAF-side cases):
    knows the bootstraps it is given and derives Ks_NAF like the BSF does."""

    def __init__(self, *boots: _Bootstrap, uss: dict[str, Any] | None = None) -> None:
        self.boots = {b.btid: b for b in boots}
        self.uss = uss
        self.calls: list[tuple[str, bytes, bool]] = []
        self.delay = 0.0
        self.gate: asyncio.Event | None = None

    async def fetch(self, btid: str, naf_id: bytes, gba_u: bool) -> _NafKey:
        self.calls.append((btid, naf_id, gba_u))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        b = self.boots.get(btid)
        if b is None:
            raise BsfRefusal("404 unknown B-TID")
        derive = ks_int_naf if gba_u else ks_ext_naf
        return _NafKey(derive(b.ks, b.rand, b.impi, naf_id), b.expires, b.impi, btid, self.uss)


def _device(*boots: _Bootstrap, uicc: bool = False) -> GbaDevice:
    queue = list(boots)

    async def bootstrapper() -> _Bootstrap:
        return queue.pop(0)

    from m2msec.gba.aka import Usim

    usim = Usim(os.urandom(16), os.urandom(16))
    return GbaDevice(usim, IMPI, "http://127.0.0.1:9", uicc=uicc, bootstrapper=bootstrapper)


class Naf:
    def __init__(self, responder: GbaResponder, suites: tuple[str, ...] | None = None) -> None:
        self.responder = responder
        profile = responder.profile()
        if suites is not None:
            profile.ssl_context.set_cipher_list(cipher_string(suites))
        self.contexts: list[SecurityContext] = []
        self.failures: list[str] = []
        self.server = TLSServer(
            profile, self._handle, on_failure=lambda peer, why: self.failures.append(why)
        )

    async def _handle(self, conn: TLSConnection) -> None:
        self.contexts.append(conn.context)
        data = await conn.recv()
        await conn.send(b"naf:" + data)

    async def __aenter__(self) -> Naf:
        await self.server.start("127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()

    @property
    def port(self) -> int:
        return self.server.port


def _raw_client(identity: bytes, key: bytes, tls13: bool = False) -> TLSProfile:
    """A PSK client sending ``identity`` as is (identities PskInitiator would refuse)."""

    def offer(hint: bytes | None) -> tuple[bytes, bytes, PeerBinding]:
        return identity, key, PeerBinding("/id-in", PeerKind.CSE)

    ctx = new_context(Transport.TLS, server_side=False, suites=PSK_SUITES_TLS, tls13=tls13)
    return TLSProfile(
        framework=Framework.PROVISIONED_PSK,
        transport=Transport.TLS,
        server_side=False,
        ssl_context=ctx,
        psk_offer=offer,
        server_name=NAF,
    )


async def _echo(conn: TLSConnection) -> bytes:
    await conn.send(b"ping")
    data = await conn.recv()
    await conn.close()
    return data


# ----------------------------------------------------------------------------- handshakes


@pytest.mark.parametrize("suite", PSK_SUITES_TLS)
async def test_device_and_naf_agree_for_each_suite(suite: str) -> None:
    from m2msec.crypto.gba import SUITE_IDS

    boot = _bootstrap()
    zn = StandInZn(boot)
    async with Naf(GbaResponder(zn, NAF, local_id="/id-in"), (suite,)) as naf:
        device = _device(boot)
        conn = await device.connect("127.0.0.1", naf.port, NAF)
        assert await _echo(conn) == b"naf:ping"
    ctx = conn.context
    assert ctx.framework is Framework.GBA and ctx.protocol == "TLSv1.2"
    assert ctx.cipher_suite == suite
    assert ctx.server_name == NAF and ctx.key_id == boot.btid
    assert ctx.peer_kind is PeerKind.SERVICE and ctx.peer_id == NAF
    # Entity B asked Zn for NAF_Id = its FQDN || 01 00 01 yy zz of the chosen suite.
    assert zn.calls == [(boot.btid, gba_naf_id(NAF, SUITE_IDS[suite]), False)]
    (b_ctx,) = naf.contexts
    assert b_ctx.sa_id == ctx.sa_id
    assert b_ctx.peer_kind is PeerKind.CREDENTIAL
    assert b_ctx.peer_id == f"12-{boot.btid}"  # verbatim, '+' '/' '=' and all
    assert b_ctx.valid_until == boot.expires
    assert b_ctx.server_name == NAF


async def test_device_reuses_ks_and_naf_caches_the_key() -> None:
    boot = _bootstrap()
    zn = StandInZn(boot)
    async with Naf(GbaResponder(zn, NAF)) as naf:
        device = _device(boot)
        for _ in range(3):
            conn = await device.connect("127.0.0.1", naf.port, NAF)
            assert await _echo(conn) == b"naf:ping"
    assert device.bootstraps == 1  # Ks reused (seed 000 8.2.3.2)
    assert len(zn.calls) == 1 and naf.responder.cache_hits == 2


async def test_concurrent_handshakes_share_one_zn_fetch() -> None:
    boot = _bootstrap()
    zn = StandInZn(boot)
    zn.gate = asyncio.Event()
    async with Naf(GbaResponder(zn, NAF)) as naf:
        device = _device(boot)
        await device.ensure_bootstrap()
        tasks = [asyncio.create_task(device.connect("127.0.0.1", naf.port, NAF)) for _ in range(4)]
        while not zn.calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        zn.gate.set()
        for conn in await asyncio.gather(*tasks):
            assert await _echo(conn) == b"naf:ping"
    assert len(zn.calls) == 1


async def test_device_bootstraps_again_near_expiry() -> None:
    old = _bootstrap(timedelta(seconds=5))  # inside the renew_before margin
    new = _bootstrap()
    zn = StandInZn(old, new)
    async with Naf(GbaResponder(zn, NAF)) as naf:
        device = _device(new)
        device._bootstrap = old  # as if loaded from disk
        conn = await device.connect("127.0.0.1", naf.port, NAF)
        assert await _echo(conn) == b"naf:ping"
    assert device.bootstraps == 1 and conn.context.key_id == new.btid


async def test_device_bootstraps_again_when_the_naf_does_not_know_the_btid() -> None:
    forgotten = _bootstrap()
    new = _bootstrap()
    zn = StandInZn(new)  # the BSF no longer knows the first B-TID
    async with Naf(GbaResponder(zn, NAF)) as naf:
        device = _device(forgotten, new)
        await device.ensure_bootstrap()
        conn = await device.connect("127.0.0.1", naf.port, NAF)
        assert await _echo(conn) == b"naf:ping"
    assert device.bootstraps == 2 and conn.context.key_id == new.btid
    assert any("refused by the BSF" in f for f in naf.failures)


async def test_uss_identity_is_bound() -> None:
    boot = _bootstrap()
    zn = StandInZn(boot, uss={"aeId": "Cgba-device"})
    async with Naf(GbaResponder(zn, NAF)) as naf:
        conn = await _device(boot).connect("127.0.0.1", naf.port, NAF, id_b="/id-in")
        assert await _echo(conn) == b"naf:ping"
    assert conn.context.peer_id == "/id-in" and conn.context.peer_kind is PeerKind.CSE
    assert naf.contexts[0].peer_id == "Cgba-device"
    assert naf.contexts[0].peer_kind is PeerKind.AE


async def test_bad_uss_identity_is_refused() -> None:
    boot = _bootstrap()
    zn = StandInZn(boot, uss={"aeId": "/not-an-ae"})
    async with Naf(GbaResponder(zn, NAF)) as naf:
        with pytest.raises(HandshakeError):
            await _device(boot).connect("127.0.0.1", naf.port, NAF)
    assert any("wrong kind of entity" in f for f in naf.failures)


async def test_non_gba_identity_refused_without_zn() -> None:
    zn = StandInZn()
    async with Naf(GbaResponder(zn, NAF)) as naf:
        initiator = PskInitiator(
            "AE123456789012-Light@in.provider.com", os.urandom(16), "/id-in", server_name=NAF
        )
        with pytest.raises(HandshakeError):
            await connect("127.0.0.1", naf.port, initiator.profile(tls13=False))
        await asyncio.sleep(0.05)
    assert zn.calls == []
    assert naf.failures and "no 3GPP-bootstrapping prefix" in naf.failures[0]


async def test_tls13_client_refused_without_zn() -> None:
    zn = StandInZn()
    async with Naf(GbaResponder(zn, NAF)) as naf:
        # The NAF speaks TLS 1.2 only, so a 1.3-only client gets no session.
        profile = _raw_client(b"3GPP-bootstrapping;" + BTID.encode(), os.urandom(32), True)
        profile.ssl_context.set_min_proto_version(0x0304)
        with pytest.raises(HandshakeError):
            await connect("127.0.0.1", naf.port, profile)
    assert zn.calls == []


async def test_unknown_btid_refused() -> None:
    known, unknown = _bootstrap(), _bootstrap()
    zn = StandInZn(known)
    async with Naf(GbaResponder(zn, NAF)) as naf:
        device = _device(unknown, unknown)
        with pytest.raises(HandshakeError, match="unknown psk identity"):
            await device.connect("127.0.0.1", naf.port, NAF)
    assert naf.failures and "404 unknown B-TID" in naf.failures[0]


async def test_expired_naf_key_refused_and_cache_expires() -> None:
    boot = _bootstrap()
    now = [datetime.now(UTC)]
    zn = StandInZn(boot)
    responder = GbaResponder(zn, NAF, clock=lambda: now[0])
    async with Naf(responder) as naf:
        device = _device(boot, boot)
        conn = await device.connect("127.0.0.1", naf.port, NAF)
        await _echo(conn)
        now[0] = boot.expires + timedelta(seconds=1)  # the NAF's clock passes the lifetime
        with pytest.raises(HandshakeError, match="unknown psk identity"):
            await device.connect("127.0.0.1", naf.port, NAF)
    # The expired cache entry was not used: Zn was asked again, for the device's retry too
    # (a refused reused B-TID makes it bootstrap once more; here the BSF hands out the same).
    assert len(zn.calls) == 3 and device.bootstraps == 2
    assert "expired" in naf.failures[-1]


async def test_wrong_sni_gives_a_different_key() -> None:
    boot = _bootstrap()
    zn = StandInZn(boot)
    async with Naf(GbaResponder(zn, NAF)) as naf:
        with pytest.raises(HandshakeError):
            await _device(boot).connect("127.0.0.1", naf.port, "other.in.provider.com")
    assert len(zn.calls) == 1  # the NAF fetched its own key; the Finished MACs differ


async def test_uicc_policy() -> None:
    boot = _bootstrap()
    zn = StandInZn(boot)
    async with Naf(GbaResponder(zn, NAF, require_uicc=True)) as naf:
        # A device without a UICC sees the -uicc hint and gives up itself.
        with pytest.raises(HandshakeError, match="requires GBA_U"):
            await _device(boot).connect("127.0.0.1", naf.port, NAF)
        assert zn.calls == []
        # A UICC device answers with the -uicc prefix and Ks_int_NAF.
        conn = await _device(boot, uicc=True).connect("127.0.0.1", naf.port, NAF)
        assert await _echo(conn) == b"naf:ping"
    assert [c[2] for c in zn.calls] == [True]


async def test_plain_prefix_refused_when_naf_requires_uicc() -> None:
    boot = _bootstrap()
    zn = StandInZn(boot)
    async with Naf(GbaResponder(zn, NAF, require_uicc=True)) as naf:
        key = device_naf_key(boot, NAF, 0x00A8)
        profile = _raw_client(b"3GPP-bootstrapping;" + boot.btid.encode(), key)
        with pytest.raises(HandshakeError):
            await connect("127.0.0.1", naf.port, profile)
        await asyncio.sleep(0.05)
    assert zn.calls == []
    assert "requires GBA_U" in naf.failures[0]


async def test_uicc_device_with_plain_naf_uses_ks_int_naf() -> None:
    boot = _bootstrap()
    zn = StandInZn(boot)
    async with Naf(GbaResponder(zn, NAF)) as naf:
        conn = await _device(boot, uicc=True).connect("127.0.0.1", naf.port, NAF)
        assert await _echo(conn) == b"naf:ping"
    assert [c[2] for c in zn.calls] == [True]  # B asked for the key matching the prefix


async def test_device_refuses_a_server_without_the_gba_hint(tmp_path: Path) -> None:
    # A provisioned-PSK server sends no hint: the device does not offer its B-TID.
    from m2msec.frameworks.provisioned import PskResponder
    from m2msec.store import SqlitePskStore

    boot = _bootstrap()
    store = SqlitePskStore(tmp_path / "psk.db")
    profile = PskResponder(store, local_id="/id-in").profile(tls13=False)
    server = TLSServer(profile, lambda conn: asyncio.sleep(0))
    await server.start("127.0.0.1", 0)
    try:
        with pytest.raises(HandshakeError, match="not 3GPP-bootstrapping"):
            await _device(boot).connect("127.0.0.1", server.port, NAF)
    finally:
        await server.close()
        store.close()


def test_responder_profile_is_tls12_with_hint() -> None:
    responder = GbaResponder(StandInZn(), "IN-CSE.in.provider.com.", local_id="/id-in")
    assert responder.naf_fqdn == NAF
    profile = responder.profile()
    assert profile.psk_hint == HINT and profile.framework is Framework.GBA
    assert GbaResponder(StandInZn(), NAF, require_uicc=True).profile().psk_hint == HINT_UICC


def test_repr_hides_keys() -> None:
    boot = _bootstrap()
    device = _device(boot)
    device._bootstrap = replace(boot)
    assert boot.ks.hex() not in repr(device)


# ----------------------------------------------------------------------------- real BSF

IN_DOMAIN = "in.provider.com"
BSF_FQDN = "bsf.in.provider.com"
IN_CSE = "id-in"
NAF_FQDN = f"{IN_CSE}.{IN_DOMAIN}"  # the IN-CSE's public domain name: its NAF FQDN
#: TS 35.208 test set 1's K and OPc as the subscriber's credential.
K1 = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC1 = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")
DEVICE_IMPI = "device-1@ims.mnc001.mcc001.3gppnetwork.org"


@dataclass
class GbaNet:
    """A BSF (Ub and Zn listeners, real HSS simulator) and the NAF's Zn credential."""

    bsf: Any
    ca: Any
    naf_cert: Path
    naf_key: Path
    zn_host: str
    zn_port: int
    now: list[datetime]

    def add_subscriber(self, impi: str, *, nafs: Any = (NAF_FQDN,), uicc: bool = False) -> Any:
        from m2msec.gba.records import Guss

        return self.bsf.store.add_subscriber(
            impi, k=K1, opc=OPC1, guss=Guss.allowing(nafs), uicc=uicc
        )

    def device(self, impi: str = DEVICE_IMPI, **kw: Any) -> GbaDevice:
        from m2msec.gba.aka import Usim

        return GbaDevice(Usim(K1, OPC1), impi, self.bsf.ub_url(), **kw)

    def zn_client(self) -> Any:
        from m2msec.frameworks.certificate import CertificateCredential
        from m2msec.gba.zn import ZnClient

        credential = CertificateCredential.from_files(
            self.naf_cert, self.naf_key, self.ca.cert_path
        )
        profile = zn_profile(credential, BSF_FQDN, in_domain=IN_DOMAIN)
        return ZnClient(profile, self.zn_host, self.zn_port, BSF_FQDN)


@contextlib.asynccontextmanager
async def gba_network(directory: Path, *, ks_lifetime: float = 3600.0) -> AsyncIterator[GbaNet]:
    """A CA for in.provider.com, a BSF with Ub and Zn on loopback, the IN-CSE's certificate.

    The BSF's clock is ``net.now[0]`` when set (else the real time), so tests can age
    bootstraps at the BSF.
    """
    from m2msec.pki.authority import CertificateAuthority, write_credential
    from m2msec.servers.bsf import BsfConfig, BsfServer

    ca = CertificateAuthority.init(directory / "ca", domain=IN_DOMAIN)
    bsf_key, bsf_cert = write_credential(ca.issue_service(BSF_FQDN), directory / "bsf")
    naf_key, naf_cert = write_credential(ca.issue(f"/{IN_CSE}"), directory / "in-cse")
    now: list[datetime] = []
    config = BsfConfig(
        fqdn=BSF_FQDN,
        listen=(("127.0.0.1", 0),),
        zn_listen=(("127.0.0.1", 0),),
        store=directory / "bsf.db",
        cert=bsf_cert,
        key=bsf_key,
        ca=ca.cert_path,
        ks_lifetime=ks_lifetime,
    )
    bsf = BsfServer(config, clock=lambda: now[0] if now else datetime.now(UTC))
    async with bsf:
        host, port = bsf.zn_addresses[0]
        yield GbaNet(bsf, ca, naf_cert, naf_key, host, port, now)


async def test_real_bsf_device_to_naf(tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net:
        net.add_subscriber(DEVICE_IMPI)
        zn = net.zn_client()
        async with zn, Naf(GbaResponder(zn, NAF_FQDN, local_id="/id-in")) as naf:
            device = net.device()
            for _ in range(2):
                conn = await device.connect("127.0.0.1", naf.port, NAF_FQDN, id_b="/id-in")
                assert await _echo(conn) == b"naf:ping"
            boot = device.bootstrap
            assert boot is not None
        # One Ub run, one Zn fetch: Ks reused by the device, Ks_NAF cached by the NAF.
        assert net.bsf.stats.bootstraps == 1 and device.bootstraps == 1
        assert net.bsf.stats.zn_answered == 1 and naf.responder.cache_hits == 1
    ctx = conn.context
    assert (ctx.peer_id, ctx.peer_kind, ctx.key_id) == ("/id-in", PeerKind.CSE, boot.btid)
    assert boot.btid.endswith("@" + BSF_FQDN)
    assert naf.contexts[0].peer_id == f"12-{boot.btid}"
    assert naf.contexts[0].valid_until == boot.expires
    assert naf.contexts[-1].sa_id == ctx.sa_id


async def test_real_bsf_uss_binds_the_ae_id_and_gba_u(tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net:
        net.add_subscriber(DEVICE_IMPI, nafs={NAF_FQDN: {"aeId": "Cgba-meter"}}, uicc=True)
        zn = net.zn_client()
        async with zn, Naf(GbaResponder(zn, NAF_FQDN, require_uicc=True)) as naf:
            conn = await net.device(uicc=True).connect("127.0.0.1", naf.port, NAF_FQDN)
            assert await _echo(conn) == b"naf:ping"
    assert (naf.contexts[0].peer_id, naf.contexts[0].peer_kind) == ("Cgba-meter", PeerKind.AE)


async def test_real_bsf_refusals(tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net:
        net.add_subscriber(DEVICE_IMPI)
        net.add_subscriber("other@ims.example.org", nafs=("elsewhere.in.provider.com",))
        zn = net.zn_client()
        async with zn, Naf(GbaResponder(zn, NAF_FQDN)) as naf:
            # GUSS: this subscriber may not use this NAF (403 from the BSF).
            with pytest.raises(HandshakeError):
                await net.device("other@ims.example.org").connect("127.0.0.1", naf.port, NAF_FQDN)
            assert "GUSS does not allow NAF" in naf.failures[-1]
            # GBA_U asked for a GBA_ME subscriber (403).
            with pytest.raises(HandshakeError):
                await net.device(uicc=True).connect("127.0.0.1", naf.port, NAF_FQDN)
            assert "no UICC" in naf.failures[-1]
        # A NAF asking for a key bound to another NAF's FQDN (not in its certificate).
        zn2 = net.zn_client()
        async with zn2, Naf(GbaResponder(zn2, "elsewhere.in.provider.com")) as rogue:
            with pytest.raises(HandshakeError):
                await net.device().connect("127.0.0.1", rogue.port, "elsewhere.in.provider.com")
            assert "certificate authenticates id-in.in.provider.com" in rogue.failures[-1]


# ----------------------------------------------------------------------------- [gba] config


def _gba_toml(
    directory: Path, gba: str, listen: str = '"tls://127.0.0.1:8443?framework=gba"'
) -> Path:
    from m2msec.pki.authority import CertificateAuthority, write_credential

    if not (directory / "ca").exists():
        ca = CertificateAuthority.init(directory / "ca", domain=IN_DOMAIN)
        write_credential(ca.issue(f"/{IN_CSE}"), directory / "in-cse")
    path = directory / "gw.toml"
    path.write_text(
        f'[gateway]\nlisten = [{listen}]\nbackend = "http://127.0.0.1:8080"\n'
        f'cse_id = "/{IN_CSE}"\nin_domain = "{IN_DOMAIN}"\n\n[gba]\n{gba}\n'
    )
    return path


def test_gba_config_from_toml(tmp_path: Path) -> None:
    from m2msec.config import load_config

    files = 'cert = "in-cse.pem"\nkey = "in-cse.key"\nca = "ca/ca.pem"\n'
    cfg = load_config(_gba_toml(tmp_path, 'zn = "tls://bsf.in.provider.com:8091"\n' + files))
    assert cfg.gba is not None and cfg.frameworks == ("gba",)
    assert (cfg.gba.bsf_host, cfg.gba.bsf_port) == ("bsf.in.provider.com", 8091)
    assert cfg.gba.bsf_fqdn == "bsf.in.provider.com"  # defaults to the zn host
    assert cfg.gba.naf_fqdn == NAF_FQDN  # defaults to the CSE's public domain name
    assert cfg.gba.cert == tmp_path / "in-cse.pem" and not cfg.gba.require_uicc
    assert cfg.listen[0].framework == "gba"
    cfg = load_config(
        _gba_toml(
            tmp_path,
            'zn = "tls://127.0.0.1:8091"\nbsf_fqdn = "BSF.in.provider.com"\n'
            'naf_fqdn = "gw.in.provider.com"\nrequire_uicc = true\n' + files,
        )
    )
    assert cfg.gba is not None
    assert (cfg.gba.bsf_fqdn, cfg.gba.naf_fqdn, cfg.gba.require_uicc) == (
        "bsf.in.provider.com",
        "gw.in.provider.com",
        True,
    )


FILES = 'cert = "in-cse.pem"\nkey = "in-cse.key"\nca = "ca/ca.pem"\n'


@pytest.mark.parametrize(
    ("gba", "listen", "message"),
    [
        ("", None, "gba.zn: missing"),
        ('zn = "http://127.0.0.1:8091"', None, "gba.zn"),
        ('zn = "tls://127.0.0.1:8091"', None, "gba.bsf_fqdn"),  # an IP needs bsf_fqdn
        ('zn = "tls://bsf.in.provider.com:1"\nnaf_fqdn = "bad_name"', None, "gba.naf_fqdn"),
        ('zn = "tls://bsf.in.provider.com:1"', None, "gba.cert: missing"),
        ('zn = "tls://bsf.in.provider.com:1"\ncert = "nope.pem"', None, "no such file"),
        ('zn = "tls://bsf.in.provider.com:1"\nrequire_uicc = "yes"\n' + FILES, None, "uicc"),
        ('zn = "tls://bsf.in.provider.com:1"\nzn_port = 1', None, "unknown key 'gba.zn_port'"),
    ],
)
def test_gba_config_errors(tmp_path: Path, gba: str, listen: str | None, message: str) -> None:
    from m2msec.config import load_config
    from m2msec.errors import ConfigurationError

    path = _gba_toml(tmp_path, gba, *(() if listen is None else (listen,)))
    with pytest.raises(ConfigurationError, match=message):
        load_config(path)


def test_gba_beside_another_framework_needs_framework_names(tmp_path: Path) -> None:
    from m2msec.config import load_config
    from m2msec.errors import ConfigurationError

    gba = (
        'zn = "tls://bsf.in.provider.com:1"\n'
        '[certificates]\ncert = "in-cse.pem"\nkey = "in-cse.key"\nca = "ca/ca.pem"'
    )
    both = r"\[certificates\] and \[gba\] are configured; add .*\?framework=gba"
    with pytest.raises(ConfigurationError, match=both):
        load_config(_gba_toml(tmp_path, gba, '"tls://127.0.0.1:8443"'))
    ok = load_config(
        _gba_toml(
            tmp_path,
            gba,
            '"tls://127.0.0.1:8443?framework=gba", "tls://127.0.0.1:8444?framework=certificate"',
        )
    )
    assert ok.gba is not None and ok.gba.cert == tmp_path / "in-cse.pem"  # from [certificates]


# ----------------------------------------------------------------------------- device state


def test_device_state_round_trip_and_refusals(tmp_path: Path) -> None:
    import json
    import stat

    from m2msec.frameworks.gba_device import DeviceState
    from m2msec.gba.ub import Bootstrap

    b = _bootstrap()
    boot = Bootstrap(b.btid, b.rand, b.ks, b.impi, b.expires.replace(microsecond=0))
    state = DeviceState(tmp_path / "state" / "gba-device.json")
    assert state.load(IMPI, "http://bsf:1/") == (None, None)
    state.save(IMPI, "http://bsf:1/", bytes.fromhex("000000000021"), boot)
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    assert b.ks.hex() not in state.path.read_text()  # Ks sealed
    sqn, loaded = state.load(IMPI, "http://bsf:1/")
    assert sqn == 0x21 and loaded == boot and loaded.ks == boot.ks
    assert state.load(IMPI, "http://other-bsf:1/") == (0x21, None)  # another BSF's Ks
    assert state.load("someone-else@ims.example", "http://bsf:1/") == (None, None)
    # Tampering with what the seal binds (here the expiry) makes the saved Ks unusable.
    doc = json.loads(state.path.read_text())
    later = (boot.expires + timedelta(days=1)).isoformat()
    doc[IMPI]["bootstrap"]["expires"] = later
    state.path.write_text(json.dumps(doc))
    assert state.load(IMPI, "http://bsf:1/") == (0x21, None)
    # An expired bootstrap is not loaded.
    old = Bootstrap(b.btid, b.rand, b.ks, b.impi, datetime.now(UTC) - timedelta(seconds=1))
    state.save(IMPI, "http://bsf:1/", bytes(6), old)
    assert state.load(IMPI, "http://bsf:1/") == (0, None)


def test_device_state_keeps_its_expiry_as_xs_datetime(tmp_path: Path) -> None:
    # One time codec (m2mtime): the saved expiry is an xs:dateTime in UTC with its
    # microseconds; a file written before (isoformat, "+00:00") still loads.
    import json

    from m2msec.frameworks.gba_device import DeviceState
    from m2msec.gba.ub import Bootstrap

    b = _bootstrap()
    boot = Bootstrap(b.btid, b.rand, b.ks, b.impi, b.expires.replace(microsecond=123456))
    state = DeviceState(tmp_path / "gba-device.json")
    state.save(IMPI, "http://bsf:1/", bytes(6), boot)
    saved = json.loads(state.path.read_text())[IMPI]["bootstrap"]["expires"]
    assert saved.endswith(".123456Z") and "+" not in saved
    assert state.load(IMPI, "http://bsf:1/") == (0, boot)
    old_text = boot.expires.isoformat()
    doc = json.loads(state.path.read_text())
    doc[IMPI]["bootstrap"]["expires"] = old_text
    doc[IMPI]["bootstrap"]["ks"] = (
        state._sealer().seal(b.ks, state._aad(IMPI, b.btid, "http://bsf:1/", old_text)).hex()
    )
    state.path.write_text(json.dumps(doc))
    assert state.load(IMPI, "http://bsf:1/") == (0, boot)
