"""Entity A from a :class:`~m2msec.config.credentials.Credential`: the one place that turns a
credential into the initiator of its framework (TS-0003 8.2.2.1 PSK, 8.2.2.2 certificates,
8.2.2.3 MAF, seed 000 8.2.3.2 GBA).

:func:`build_initiator` reads the keys the credential points at (a hex file, the Enrolee
store of ``m2msec enrol`` by KeID, or the octets given), builds the framework's initiator
(:class:`~m2msec.frameworks.provisioned.PskInitiator`,
:class:`~m2msec.frameworks.certificate.CertificateInitiator`,
:class:`~m2msec.frameworks.maf.MafInitiator`,
:class:`~m2msec.frameworks.gba_device.GbaDevice`) and returns an :class:`Initiator` whose
:meth:`~Initiator.connect` establishes the SA with the peer. ``m2msec connect`` uses it for
a credentials-table entry and for its own options alike (they become a ``Credential``).

Errors: :class:`~m2msec.errors.ConfigurationError` for a credential that cannot work
(naming its entry), :class:`CredentialUnavailable` when the Enrolee store has no live key
for the KeID. Keys never appear in messages or ``repr``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Final

from m2msec.config.credentials import (
    CertificateSettings,
    Credential,
    GbaSettings,
    KeySource,
    MafSettings,
    PskSettings,
    is_gba_ke_id,
)
from m2msec.config.values import is_ip
from m2msec.errors import ConfigurationError, IdentifierError, M2MSecError
from m2msec.frameworks.gba_device import GbaDevice
from m2msec.frameworks.maf import MafInitiator
from m2msec.frameworks.mef import EnrolmentResult
from m2msec.ids import CseId, parse_entity_id
from m2msec.keyids import KeId, KmId
from m2msec.store.importer import parse_hex_key
from m2msec.tls.aio import TLSConnection
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = [
    "DEFAULT_IN_DOMAIN",
    "CredentialUnavailable",
    "Initiator",
    "build_initiator",
    "default_server_name",
    "gba_device",
    "live_enrolment",
    "parse_ke_id",
    "read_key_file",
]

log = logging.getLogger(__name__)

#: The IN public domain of CSE names when neither the credential nor the caller gives one.
DEFAULT_IN_DOMAIN: Final = "in.provider.com"
_MAX_KEY_OCTETS: Final = 64

Notice = Callable[[str], None]


class CredentialUnavailable(M2MSecError):
    """The key a credential names is not usable: no such KeID in the Enrolee store, its
    enrolment expired, or it was enrolled for the other kind of target."""


def default_server_name(host: str, id_b: str | None, in_domain: str) -> str | None:
    """The SNI when none is configured (docs/readings.md A-11, A-12).

    A host name in the URL is sent as is, as s_client does; for an IP-address URL with a
    CSE-ID as IdB it is the CSE public domain name ``<CSE-ID>.<IN domain>`` (TS-0001
    6.5.1.1); otherwise (an IP and an AE or no IdB) nothing, since no name is known.
    """
    if not is_ip(host):
        return host
    if id_b:
        try:
            entity = parse_entity_id(id_b)
            if isinstance(entity, CseId):
                return entity.public_domain_name(in_domain)
        except IdentifierError:
            return None  # not usable as a DNS label: send no SNI rather than a wrong one
    return None


def read_key_file(path: Path, what: str) -> bytes:
    """A key of 1 to 64 octets from a file of hexadecimal text (whitespace ignored); a
    warning when group or others may read the file. Errors name the file, never the key."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not hexadecimal text"
        raise ConfigurationError(f"cannot read the {what} file {path}: {reason}") from None
    if os.name == "posix" and mode & 0o077:
        log.warning("%s file %s is readable by others (mode %04o); chmod 600 it", what, path, mode)
    key = parse_hex_key(text, f"the {what} in {path}")
    if not 0 < len(key) <= _MAX_KEY_OCTETS:
        raise ConfigurationError(f"the {what} in {path} must be 1 to 64 octets, not {len(key)}")
    return key


def parse_ke_id(text: str) -> KeId | str:
    """A KeID (10.3.4), or a GBA KeID, the B-TID, verbatim (docs/readings.md A-25)."""
    try:
        return KeId.parse(text)
    except IdentifierError:
        if is_gba_ke_id(text):
            return text
        raise


def live_enrolment(ke_id: str, *, enrolee_b: bool, store: Path | None = None) -> EnrolmentResult:
    """The live enrolment of KeID ``ke_id`` in the Enrolee store (``m2msec enrol``): its
    Kpsa (``enrolee_b``) or Km. IdentifierError when ``ke_id`` is not a KeID,
    :class:`CredentialUnavailable` when it is unknown, expired or for the other target."""
    from m2msec.frameworks.mef import EnroleeStore

    parsed = parse_ke_id(ke_id)
    with closing(EnroleeStore(store)) as enrolments:
        found = enrolments.get(parsed)
    wanted = "Kpsa" if enrolee_b else "Km"
    if found is None:
        raise CredentialUnavailable(
            f"KeID {parsed} is not in the Enrolee store: run m2msec enrol, or give the {wanted}"
        )
    if found.expired():
        when = found.expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise CredentialUnavailable(
            f"the enrolment {parsed} expired at {when}: run m2msec enrol again for a fresh Ke"
        )
    if found.target.is_enrolee_b != enrolee_b:
        raise CredentialUnavailable(
            f"KeID {parsed} was enrolled for {found.target}, which gets a {found.key_name}"
        )
    return found


def _key(source: KeySource, what: str) -> bytes:
    if source.value is not None:
        return source.value
    assert source.file is not None
    return read_key_file(source.file, what)


@dataclass(slots=True)
class Initiator:
    """Entity A for one peer (module docstring). ``profile`` is the (D)TLS profile of the
    PSK and certificate frameworks (None for MAF and GBA, whose keys come at connect
    time); ``maf`` / ``gba`` the framework's own initiator, for its state."""

    credential: Credential
    transport: Transport
    id_b: str | None
    server_name: str | None
    profile: TLSProfile | None = None
    maf: MafInitiator | None = None
    gba: GbaDevice | None = None
    _open: Callable[[str, int, float], Awaitable[TLSConnection]] | None = field(
        default=None, repr=False
    )

    async def connect(self, host: str, port: int, *, timeout: float = 10.0) -> TLSConnection:
        """Establish the SA with the peer at ``host:port`` over TLS."""
        if self._open is not None:
            return await self._open(host, port, timeout)
        assert self.profile is not None
        return await tls_connect(host, port, self.profile, timeout=timeout)


def build_initiator(
    credential: Credential,
    *,
    host: str,
    transport: Transport = Transport.TLS,
    notice: Notice = log.info,
) -> Initiator:
    """Entity A of ``credential`` towards the peer at ``host`` (module docstring).

    The SNI is the credential's ``server_name``, else :func:`default_server_name`; the IN
    domain its ``in_domain``, else :data:`DEFAULT_IN_DOMAIN`. ``notice`` is told what the
    MAF and GBA flows did (KcId and lifetime, bootstrap reused or run), never a key."""
    in_domain = credential.in_domain or DEFAULT_IN_DOMAIN
    id_b = credential.id_b
    server_name = credential.server_name
    if server_name is None:
        server_name = default_server_name(host, id_b, in_domain)
    framework = credential.framework
    if transport is Transport.DTLS and isinstance(framework, MafSettings | GbaSettings):
        raise ConfigurationError(
            f"{credential.describe()}: coaps:// takes a psk or certificate credential"
        )
    try:
        if isinstance(framework, PskSettings):
            profile = _psk_profile(framework, credential, id_b, server_name, transport)
            return Initiator(credential, transport, id_b, server_name, profile=profile)
        if isinstance(framework, CertificateSettings):
            profile = _certificate_profile(
                framework, credential, id_b, server_name, in_domain, transport
            )
            return Initiator(credential, transport, id_b, server_name, profile=profile)
        if isinstance(framework, MafSettings):
            return _maf_initiator(framework, credential, id_b, server_name, in_domain, notice)
        return _gba_initiator(framework, credential, id_b, server_name, notice)
    except ValueError as exc:  # a key of the wrong length, a malformed identifier
        raise ConfigurationError(f"{_where(credential)}{exc}") from None


def _where(credential: Credential) -> str:
    if credential.source == credential.entry:  # the command line
        return ""
    return f"{credential.source}: entry {credential.entry!r}: "


def _need_id_b(credential: Credential, id_b: str | None) -> str:
    if id_b is None:
        raise ConfigurationError(
            f"{_where(credential)}no IdB (Entity B's CSE-ID or AE-ID): give id_b in the "
            "entry, or --id-b"
        )
    return id_b


def _psk_profile(
    psk: PskSettings,
    credential: Credential,
    id_b: str | None,
    server_name: str | None,
    transport: Transport,
) -> TLSProfile:
    from m2msec.frameworks.provisioned import PskInitiator

    peer = _need_id_b(credential, id_b)
    if psk.key.from_enrolee_store:  # a KeID's Kpsa (m2msec enrol --enrolee-b)
        kpsa = live_enrolment(psk.psk_identity, enrolee_b=True).credential
    else:
        kpsa = _key(psk.key, "Kpsa")
    # The KpsaID of a GBA bootstrap (m2msec enrol --gba) is its B-TID, verbatim.
    verbatim = is_gba_ke_id(psk.psk_identity)
    initiator = PskInitiator(
        psk.psk_identity, kpsa, peer, server_name=server_name, verbatim=verbatim
    )
    return initiator.profile(transport, tls13=not credential.tls12)


def _certificate_profile(
    settings: CertificateSettings,
    credential: Credential,
    id_b: str | None,
    server_name: str | None,
    in_domain: str,
    transport: Transport,
) -> TLSProfile:
    from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator

    peer = _need_id_b(credential, id_b)
    own = CertificateCredential.from_files(settings.cert, settings.key, settings.ca)
    initiator = CertificateInitiator(own, peer, in_domain=in_domain, server_name=server_name)
    return initiator.profile(transport=transport, tls13=not credential.tls12)


def _maf_initiator(
    maf: MafSettings,
    credential: Credential,
    id_b: str | None,
    server_name: str | None,
    in_domain: str,
    notice: Notice,
) -> Initiator:
    """Entity A of the MAF framework: Kc from the MAF, then the association with B.

    targetIDs gets the Absolute CSE-ID/AE-ID (8.8.2.7) under ``in_domain``; ``cse_id``
    declares Entity A a CSE configured with its CSE-ID (seed 001)."""
    from m2msec.frameworks.maf import MafClient

    target = maf.target_id or id_b
    if target is None:
        raise ConfigurationError(
            f"{_where(credential)}maf needs Entity B's identity: id_b (or maf.target_id)"
        )
    maf_fqdn = maf.maf_fqdn
    if maf.km.from_enrolee_store:  # a KeID's Km (m2msec enrol --maf-id), for its MAF
        enrolled = live_enrolment(maf.km_id, enrolee_b=False)
        km, maf_fqdn = enrolled.credential, maf_fqdn or enrolled.target.target_id
    else:
        km = _key(maf.km, "Km")
    # The KmID of a GBA bootstrap (m2msec enrol --gba --maf-id) is its B-TID, verbatim.
    km_id = KmId.parse(maf.km_id, verbatim=True) if is_gba_ke_id(maf.km_id) else maf.km_id
    tls13 = not credential.tls12
    client = MafClient(maf.host, maf.port, maf_fqdn, km_id, km, tls13=tls13)
    initiator = MafInitiator(
        client,
        target,
        server_name,
        id_b=id_b or target,
        tls13=tls13,
        sp_fqdn=in_domain,
        local_id=maf.cse_id,
        entity_a_kind="cse" if maf.cse_id is not None else None,
    )

    async def open_association(host: str, port: int, timeout: float) -> TLSConnection:
        client.timeout = timeout
        conn = await initiator.connect(host, port, timeout=timeout)
        issued = initiator.current
        if issued is not None:
            notice(
                f"MAF {client.maf_fqdn}: KcId {issued.kc_id}, Kc lifetime until "
                f"{issued.expires.isoformat(timespec='seconds')}"
            )
        return conn

    return Initiator(credential, Transport.TLS, id_b or target, server_name, maf=initiator,
                     _open=open_association)  # fmt: skip


def gba_device(
    settings: GbaSettings, notice: Notice = log.info
) -> tuple[GbaDevice, Callable[[], None]]:
    """The GBA device of ``settings``, with its saved state (SQN_MS, the last bootstrap with
    Ks sealed: :class:`~m2msec.frameworks.gba_device.DeviceState`) loaded, and the call that
    saves it. ``m2msec enrol --gba`` uses it too."""
    from m2msec.frameworks.gba_device import DeviceState
    from m2msec.gba.aka import Usim
    from m2msec.gba.ub import Bootstrap

    bsf, impi = settings.bsf, settings.impi
    state = DeviceState()
    try:
        saved_sqn, saved = state.load(impi, bsf)
        given = int(settings.sqn, 16) if settings.sqn else 0
        usim = Usim(_key(settings.k, "K"), _key(settings.opc, "OPc"), max(given, saved_sqn or 0))
    except ValueError as exc:
        raise ConfigurationError(f"GBA credential: {exc}") from None

    def remember(bootstrap: Bootstrap) -> None:
        state.save(impi, bsf, usim.sqn_ms, bootstrap)
        notice(f"GBA: bootstrapped with {bsf}, B-TID {bootstrap.btid}")

    device = GbaDevice(usim, impi, bsf, uicc=settings.uicc, bootstrap=saved, on_bootstrap=remember)
    if saved is not None and device.bootstrap_valid():
        notice(f"GBA: reusing Ks of B-TID {saved.btid} (until {saved.expires})")

    def save() -> None:
        state.save(impi, bsf, usim.sqn_ms, device.bootstrap)

    return device, save


def _gba_initiator(
    settings: GbaSettings,
    credential: Credential,
    id_b: str | None,
    server_name: str | None,
    notice: Notice,
) -> Initiator:
    """Entity A of the GBA framework: USIM from the credential, state from the data dir."""
    if not server_name:
        raise ConfigurationError(
            f"{_where(credential)}gba needs Entity B's host name (its NAF FQDN): give "
            "server_name (--servername)"
        )
    device, save = gba_device(settings, notice)
    name = server_name

    async def open_association(host: str, port: int, timeout: float) -> TLSConnection:
        try:
            return await device.connect(host, port, name, id_b=id_b, timeout=timeout)
        finally:
            save()

    return Initiator(credential, Transport.TLS, id_b, server_name, gba=device,
                     _open=open_association)  # fmt: skip
