"""Entity A of the GBA-based framework (seed 000 clause 8.2.3.2; legacy, A-10).

The device side of :mod:`m2msec.frameworks.gba`: :class:`GbaDevice` bootstraps with the
BSF over Ub (3GPP TS 33.220 4.5.2, TS 24.109 clause 5; :mod:`m2msec.gba.ub`), reuses Ks
while it is valid, derives Kc = Ks_ext_NAF (GBA_ME) or Ks_int_NAF (GBA_U) for Entity B's
NAF_Id (TS 33.220 Annex B.3, H.2; docs/readings.md A-07, A-08, A-09) and runs the TLS-PSK
(or DTLS-PSK, our extension) handshake with the psk_identity
``3GPP-bootstrapping[-uicc];<B-TID>`` (TS 24.109 Annex F; A-01, A-02).
:class:`DeviceState` keeps SQN_MS and the last bootstrap between runs (``m2msec connect
--gba``), times as xs:dateTime through :mod:`m2msec.m2mtime`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from m2msec import m2mtime
from m2msec.crypto.gba import ks_ext_naf, ks_int_naf
from m2msec.errors import ConfigurationError, HandshakeError, M2MSecError
from m2msec.frameworks.gba import (
    HINT,
    HINT_UICC,
    assume_utc,
    format_identity,
    gba_naf_id,
    gba_profile,
)
from m2msec.gba.aka import Usim
from m2msec.gba.ub import Bootstrap
from m2msec.gba.ub import bootstrap as ub_bootstrap
from m2msec.ids import check_fqdn, entity_kind
from m2msec.tls.aio import TLSConnection
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.context import PeerBinding, PeerKind
from m2msec.tls.profiles import TLSProfile, Transport

if TYPE_CHECKING:
    from m2msec.tls.aio_dtls import DTLSAssociation

__all__ = ["Bootstrapper", "DeviceState", "GbaDevice", "device_naf_key"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def device_naf_key(
    bootstrap: Bootstrap, naf_fqdn: str, cipher_suite: int, *, uicc: bool = False
) -> bytes:
    """Kc of Entity A for NAF ``naf_fqdn`` and the negotiated suite (TS 33.220 B.3).

    Ks_int_NAF with ``uicc`` (GBA_U, the application in the UICC), else Ks_ext_NAF
    (which is Ks_NAF with GBA_ME): seed 000 8.2.3.2, docs/readings.md A-07, A-08.
    """
    nid = gba_naf_id(naf_fqdn, cipher_suite)
    derive = ks_int_naf if uicc else ks_ext_naf
    return derive(bootstrap.ks, bootstrap.rand, bootstrap.impi, nid)


Bootstrapper = Callable[[], Awaitable[Bootstrap]]
"""Runs one Ub bootstrapping and returns the new bootstrap."""


class GbaDevice:
    """Entity A of the GBA-based framework (seed 000 8.2.3.2).

    ``usim`` is the USIM-like credential (:class:`m2msec.gba.aka.Usim`), ``impi`` the
    subscriber's private identity and ``bsf_url`` the BSF's Ub address (``http://...``).
    ``uicc`` selects GBA_U with Ks_int_NAF and the ``-uicc`` prefix (docs/readings.md A-08).

    A valid bootstrap is reused (no Ub run) until ``renew_before`` ahead of its expiry;
    ``bootstrap`` seeds it (e.g. from disk) and ``on_bootstrap`` is told of each new one
    (to persist it). ``bootstrapper`` replaces the Ub client (tests, other transports).
    """

    def __init__(
        self,
        usim: Usim,
        impi: str,
        bsf_url: str,
        *,
        uicc: bool = False,
        bootstrap: Bootstrap | None = None,
        on_bootstrap: Callable[[Bootstrap], None] | None = None,
        bootstrapper: Bootstrapper | None = None,
        renew_before: timedelta = timedelta(seconds=30),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.usim = usim
        self.impi = impi
        self.bsf_url = bsf_url
        self.uicc = uicc
        self._bootstrap = bootstrap
        self._on_bootstrap = on_bootstrap
        self._bootstrapper = bootstrapper
        self.renew_before = renew_before
        self._clock = clock
        self._lock = asyncio.Lock()
        self._profiles: dict[tuple[str, str | None, Transport], TLSProfile] = {}
        #: How many Ub bootstrappings this device ran.
        self.bootstraps = 0

    def __repr__(self) -> str:
        btid = self._bootstrap.btid if self._bootstrap else None
        return f"GbaDevice(impi={self.impi!r}, uicc={self.uicc}, btid={btid!r})"

    @property
    def bootstrap(self) -> Bootstrap | None:
        """The current bootstrap (B-TID, RAND, Ks, lifetime), or None."""
        return self._bootstrap

    def bootstrap_valid(self, margin: timedelta | None = None) -> bool:
        b = self._bootstrap
        if b is None:
            return False
        margin = self.renew_before if margin is None else margin
        return assume_utc(b.expires) - margin > self._clock()

    async def ensure_bootstrap(self, *, force: bool = False) -> Bootstrap:
        """Reuse a valid Ks (seed 000 8.2.3.2), or bootstrap with the BSF over Ub."""
        async with self._lock:
            if not force and self.bootstrap_valid():
                assert self._bootstrap is not None
                return self._bootstrap
            if self._bootstrapper is not None:
                fresh = await self._bootstrapper()
            else:
                fresh = await ub_bootstrap(self.bsf_url, self.usim, self.impi)
            self.bootstraps += 1
            self._bootstrap = fresh
            log.info("GBA: bootstrapped, B-TID %s until %s", fresh.btid, fresh.expires)
            if self._on_bootstrap is not None:
                self._on_bootstrap(fresh)
            return fresh

    def _offer(
        self, server_name: str, id_b: str | None, hint: bytes | None, suite: int | None
    ) -> tuple[bytes, bytes, PeerBinding]:
        b = self._bootstrap
        if b is None or assume_utc(b.expires) <= self._clock():
            raise HandshakeError("no valid GBA bootstrap (run the Ub bootstrapping first)")
        if hint not in (HINT, HINT_UICC):
            shown = "none" if hint is None else repr(hint[:48].decode("ascii", "replace"))
            raise HandshakeError(
                f"Entity B sent identity hint {shown}, not 3GPP-bootstrapping: it is not a NAF"
            )
        if hint == HINT_UICC and not self.uicc:
            raise HandshakeError(
                "Entity B requires GBA_U with Ks_int_NAF (hint 3GPP-bootstrapping-uicc); "
                "this device is not configured with a UICC"
            )
        if suite is None:
            raise HandshakeError("negotiated cipher suite unknown: GBA needs TLS 1.2")
        key = device_naf_key(b, server_name, suite, uicc=self.uicc)
        if id_b is not None:
            binding = PeerBinding(id_b, entity_kind(id_b), b.btid, assume_utc(b.expires))
        else:
            binding = PeerBinding(server_name, PeerKind.SERVICE, b.btid, assume_utc(b.expires))
        return format_identity(b.btid, self.uicc), key, binding

    def profile(
        self, server_name: str, *, id_b: str | None = None, transport: Transport = Transport.TLS
    ) -> TLSProfile:
        """A TLS 1.2 PSK profile for Entity B ``server_name`` (its NAF FQDN, sent as SNI).
        ``transport=Transport.DTLS``: DTLS 1.2 instead (our extension, see
        :meth:`GbaResponder.profile`).

        Entity A binds the session to ``id_b`` (B's CSE-ID) when given, else to the
        server name; the BSF vouched for it, since only the NAF holding a certificate
        for that FQDN gets the key. Call :meth:`ensure_bootstrap` before handshaking.
        """
        name = check_fqdn(server_name.rstrip("."), "Entity B host name (NAF FQDN)").lower()
        cached = self._profiles.get((name, id_b, transport))
        if cached is not None:
            return cached

        def offer(hint: bytes | None, suite: int | None) -> tuple[bytes, bytes, PeerBinding]:
            return self._offer(name, id_b, hint, suite)

        profile = replace(
            gba_profile(transport, server_side=False), psk_suite_offer=offer, server_name=name
        )
        self._profiles[(name, id_b, transport)] = profile
        return profile

    async def connect(
        self,
        host: str,
        port: int,
        server_name: str | None = None,
        *,
        id_b: str | None = None,
        timeout: float = 10.0,
    ) -> TLSConnection:
        """Bootstrap if needed, then run the TLS-PSK handshake with Entity B.

        ``server_name`` (default ``host``) is Entity B's host name: the SNI and the FQDN in
        NAF_Id. When a reused B-TID is refused as unknown (the BSF forgot it), the device
        bootstraps once more and retries. Returns the :class:`~m2msec.tls.aio.TLSConnection`.
        """
        profile = self.profile(server_name or host, id_b=id_b)
        return await self._handshake(lambda: tls_connect(host, port, profile, timeout=timeout))

    async def connect_dtls(
        self,
        host: str,
        port: int,
        server_name: str | None = None,
        *,
        id_b: str | None = None,
        timeout: float = 10.0,
    ) -> DTLSAssociation:
        """:meth:`connect` over DTLS 1.2 (CoAP binding; our extension, see
        :meth:`GbaResponder.profile`): NAF_Id from the suite of the DTLS ServerHello."""
        from m2msec.tls.aio_dtls import dtls_connect

        profile = self.profile(server_name or host, id_b=id_b, transport=Transport.DTLS)
        return await self._handshake(lambda: dtls_connect(profile, host, port, timeout=timeout))

    async def _handshake(self, handshake: Callable[[], Awaitable[_T]]) -> _T:
        """Bootstrap if needed and run ``handshake``; when Entity B does not know a reused
        B-TID (the BSF forgot it), bootstrap once more and run it again."""
        reused = self.bootstrap_valid()
        await self.ensure_bootstrap()
        try:
            return await handshake()
        except HandshakeError as exc:
            if not reused or "unknown psk identity" not in exc.reason:
                raise
            log.info("GBA: Entity B does not know B-TID; bootstrapping again")
        await self.ensure_bootstrap(force=True)
        return await handshake()


# ----------------------------------------------------------------------------- persistence


class DeviceState:
    """Entity A's GBA state kept between runs (``m2msec connect --gba``).

    One JSON file (mode 0600, in the data directory by default) holding, per IMPI, SQN_MS
    (the highest SQN the USIM accepted, so a later run does not accept an old challenge)
    and the last bootstrap with Ks sealed by :mod:`m2msec.store.seal` under the data
    directory's key-encryption key (associated data: IMPI, B-TID, BSF URL and expiry), so a
    second run within the key lifetime reuses Ks instead of bootstrapping again (seed 000
    8.2.3.2). K and OPc are never written here.
    """

    FILE_NAME: Final = "gba-device.json"

    def __init__(self, path: Path | None = None, *, kek: bytes | None = None) -> None:
        from m2msec.paths import data_dir

        self.path = path if path is not None else data_dir() / self.FILE_NAME
        self._kek = kek

    def _sealer(self) -> Any:
        from m2msec.paths import ensure_private_dir
        from m2msec.store.seal import KEK_FILE_NAME, Sealer, load_kek

        if self._kek is None:
            ensure_private_dir(self.path.parent)
            self._kek = load_kek(self.path.parent / KEK_FILE_NAME, create=True)
        return Sealer(self._kek)

    @staticmethod
    def _aad(impi: str, btid: str, bsf_url: str, expires: str) -> bytes:
        return "\x1f".join(("m2msec/gba-device/ks", impi, btid, bsf_url, expires)).encode()

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigurationError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(text)
        except ValueError:
            raise ConfigurationError(f"{self.path} is not a GBA device state file") from None
        if not isinstance(doc, dict):
            raise ConfigurationError(f"{self.path} is not a GBA device state file")
        return doc

    def load(self, impi: str, bsf_url: str) -> tuple[int | None, Bootstrap | None]:
        """(SQN_MS, bootstrap) saved for ``impi``; the bootstrap only if it was made with
        ``bsf_url`` and has not expired."""
        entry = self._read().get(impi)
        if not isinstance(entry, dict):
            return None, None
        sqn = entry.get("sqnMs")
        sqn_ms = int(sqn, 16) if isinstance(sqn, str) and sqn else None
        boot = entry.get("bootstrap")
        if not isinstance(boot, dict) or boot.get("bsf") != bsf_url:
            return sqn_ms, None
        try:
            expires_text = str(boot["expires"])
            expires = m2mtime.parse_xs_datetime(expires_text, "saved bootstrap expiry")
            if expires <= datetime.now(UTC):
                return sqn_ms, None
            btid = str(boot["btid"])
            ks = self._sealer().unseal(
                bytes.fromhex(str(boot["ks"])),
                self._aad(impi, btid, bsf_url, expires_text),
                what=f"Ks of B-TID {btid}",
            )
            rand = bytes.fromhex(str(boot["rand"]))
        except (KeyError, ValueError, M2MSecError) as exc:
            log.warning("ignoring the saved GBA bootstrap of %s: %s", impi, exc)
            return sqn_ms, None
        return sqn_ms, Bootstrap(btid, rand, ks, impi, expires)

    def save(self, impi: str, bsf_url: str, sqn_ms: bytes, bootstrap: Bootstrap | None) -> None:
        """Record SQN_MS and the bootstrap of ``impi`` (atomically, mode 0600)."""
        from m2msec.paths import ensure_private_dir, write_private

        doc = self._read()
        entry: dict[str, Any] = {"sqnMs": sqn_ms.hex()}
        if bootstrap is not None:
            expires = m2mtime.format_xs_datetime(assume_utc(bootstrap.expires))
            sealed = self._sealer().seal(
                bootstrap.ks, self._aad(impi, bootstrap.btid, bsf_url, expires)
            )
            entry["bootstrap"] = {
                "bsf": bsf_url,
                "btid": bootstrap.btid,
                "rand": bootstrap.rand.hex(),
                "ks": sealed.hex(),
                "expires": expires,
            }
        doc[impi] = entry
        ensure_private_dir(self.path.parent)
        text = json.dumps(doc, indent=1, sort_keys=True)
        write_private(self.path, text.encode("utf-8"), exist_ok=True)
