"""The Enrolee: bootstrap with the MEF and enrol for one target (TS-0003 8.3.2.1, 8.3.2.2,
10.3.1-10.3.4, seed 004; docs/mef.md).

1. **Bootstrap Security Handshake** with the MEF's Enrolee listener (``tls://H:P``, or
   ``dtls://H:P``: DTLS 1.2, 10.2.1): TLS-PSK (10.2.2) with psk_identity = KpmID and psk =
   Kpm (8.3.2.1), or mutual TLS with the Enrolee's certificate (10.2.3, 8.3.2.2), the MEF
   named by an FQDN certificate (10.1.1.6).
2. **Enrolment Key Generation** (10.3.1): 48 octets exported with
   ``EXPORTER-oneM2M-Bootstrap`` and no context; RelativeKeID and Ke split as every oneM2M
   export (docs/readings.md A-04); KeID = hexBinary(RelativeKeID)@MEF-FQDN (10.3.4).
3. **Enrolment Exchange** (docs/mef.md section 2): ``POST /mef/enrolment`` (over HTTP on
   TLS, over CoAP, TS-0008, on DTLS, as the MEF's listeners carry it) naming the
   Enrolment Target; the MEF answers after Ke is committed. The KeID it answers must be
   the one this session exported, and the target the one asked for, or the two ends would
   hold different keys.
4. From Ke the Enrolee derives the target's credential itself (:mod:`m2msec.mef.keys`):
   Km for a MAF-ID (10.3.2) or Kpsa for an Enrolee-B-ID (10.3.3), and presents KeID as its
   psk_identity to that target, which fetches the same credential from the MEF.

:func:`enrol_or_reuse` keeps the result in the :class:`~m2msec.frameworks.mef.store.EnroleeStore`
and reuses a live one; an expired Ke makes it bootstrap again (10.7). Keys never appear in
``repr``, logs or errors; KeIDs do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime

from m2msec.bindings.coap.options import CoapBindingError
from m2msec.crypto.keyexport import EXPORT_LENGTH, LABEL_BOOTSTRAP
from m2msec.errors import HandshakeError
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.frameworks.maf.common import Clock, MafError, expect, format_time, utc_now
from m2msec.frameworks.mef.result import EnrolmentResult
from m2msec.frameworks.mef.store import EnroleeStore
from m2msec.frameworks.provisioned import psk_profile
from m2msec.ids import check_fqdn
from m2msec.maf.store_records import check_key
from m2msec.mef import wire
from m2msec.mef.keys import EnrolmentKey, derive_for_target
from m2msec.mef.records import EnrolmentTarget, check_kpm_id
from m2msec.service.coap_client import CoapClient
from m2msec.service.onem2m_client import OneM2MClient, OneM2MResponse
from m2msec.tls.aio import TLSConnection
from m2msec.tls.aio import connect as tls_connect
from m2msec.tls.aio_dtls import DTLSAssociation, dtls_connect
from m2msec.tls.context import PeerBinding, PeerKind
from m2msec.tls.profiles import TLSProfile, Transport

__all__ = ["Enrolee", "EnrolmentError", "KpmCredential", "enrol_or_reuse"]

log = logging.getLogger(__name__)

_WHAT = "Enrolment Exchange"


class EnrolmentError(MafError):
    """The bootstrap or the Enrolment Exchange failed; ``rsc`` is the MEF's answer when it
    gave one (a MAF-style procedure error, as the MEF's refusal is the MAF's)."""


@dataclass(frozen=True, slots=True)
class KpmCredential:
    """The PSK bootstrap credential of 8.3.2.1: KpmID and Kpm (never in ``repr``)."""

    kpm_id: str
    kpm: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_kpm_id(self.kpm_id)
        check_key(self.kpm, "the Kpm")  # the MEF's own rule for a configured Kpm


def _psk_profile(
    credential: KpmCredential, mef_fqdn: str, transport: Transport, tls13: bool
) -> TLSProfile:
    """TLS-PSK with psk_identity = KpmID, psk = Kpm, the MEF bound by its FQDN (the SNI)."""
    kpm_id, kpm = credential.kpm_id, bytes(credential.kpm)
    binding = PeerBinding(peer_id=mef_fqdn, kind=PeerKind.SERVICE, key_id=kpm_id)

    def offer(hint: bytes | None) -> tuple[bytes, bytes, PeerBinding]:
        # As every PSK initiator here: no hint is defined, any received is ignored.
        return kpm_id.encode(), kpm, binding

    start = psk_profile(transport, server_side=False, tls13=tls13, local_id=kpm_id)
    return replace(start, psk_offer=offer, server_name=mef_fqdn)


class Enrolee:
    """The Enrolee towards the MEF at ``host:port``, named ``mef_fqdn`` (the domain of
    every KeID it issues, 10.3.4; the SNI), bootstrapping with a :class:`KpmCredential`
    (TLS-PSK, 8.3.2.1) or a certificate (mutual TLS, 8.3.2.2; CSE-IDs in certificates
    under ``in_domain``, by default the MEF FQDN without its first label).
    :attr:`bootstrap_id` is the KpmID or the identity our certificate names. ``origin``
    fills X-M2M-Origin (informative: the MEF authorises by the bootstrap credential)."""

    def __init__(
        self,
        host: str,
        port: int,
        mef_fqdn: str,
        credential: KpmCredential | CertificateCredential,
        *,
        in_domain: str | None = None,
        origin: str | None = None,
        transport: Transport = Transport.TLS,
        tls13: bool = True,
        timeout: float = 10.0,
        clock: Clock = utc_now,
    ) -> None:
        self.host = host
        self.port = port
        self.mef_fqdn = check_fqdn(mef_fqdn, "MEF FQDN").lower()
        self.transport = transport
        if isinstance(credential, KpmCredential):
            self.bootstrap_id = credential.kpm_id
            self._profile = _psk_profile(credential, self.mef_fqdn, transport, tls13)
        else:
            initiator = CertificateInitiator.for_service(
                credential, self.mef_fqdn, in_domain=in_domain or self.mef_fqdn.partition(".")[2]
            )
            if initiator.local_id is None:
                raise ValueError("the Enrolee's certificate names no CSE-ID or AE-ID")
            self.bootstrap_id = initiator.local_id
            self._profile = initiator.profile(transport=transport, tls13=tls13)
        self.origin = origin or self.bootstrap_id
        self.timeout = timeout
        self.clock = clock

    def __repr__(self) -> str:
        return (
            f"Enrolee(mef={self.mef_fqdn!r} at {self.host}:{self.port}, "
            f"bootstrap={self.bootstrap_id!r})"
        )

    async def enrol(self, target: EnrolmentTarget | None = None) -> EnrolmentResult:
        """One bootstrap handshake and one Enrolment Exchange for ``target`` (None: the
        target the MEF has configured for us); the credential derived for the target."""
        try:
            conn = await self._connect()
        except HandshakeError as exc:
            raise EnrolmentError(
                f"bootstrap handshake with the MEF {self.mef_fqdn} ({self.host}:{self.port}) "
                f"as {self.bootstrap_id} failed: {exc.reason}"
            ) from None
        try:
            key = EnrolmentKey.from_export(
                conn.export_keying_material(LABEL_BOOTSTRAP, EXPORT_LENGTH, None), self.mef_fqdn
            )
            response, status = await self._exchange(conn, wire.EnrolmentRequestBody(target))
        finally:
            with contextlib.suppress(Exception):
                if isinstance(conn, DTLSAssociation):
                    conn.close()
                else:
                    await conn.close()
        return self._result(key, target, response, status)

    async def _connect(self) -> TLSConnection | DTLSAssociation:
        if self.transport is Transport.DTLS:
            name = self._profile.server_name
            return await dtls_connect(
                self._profile, self.host, self.port, server_name=name, timeout=self.timeout
            )
        return await tls_connect(self.host, self.port, self._profile, timeout=self.timeout)

    async def _exchange(
        self, conn: TLSConnection | DTLSAssociation, body: wire.EnrolmentRequestBody
    ) -> tuple[OneM2MResponse, str]:
        """``POST /mef/enrolment``: over HTTP on TLS, over CoAP (TS-0008) on DTLS, as the
        MEF's listeners carry it; the answer and its status as the binding writes it."""
        path, content = wire.ENROLMENT_PATH, body.to_json()
        try:
            if isinstance(conn, DTLSAssociation):
                coap = await CoapClient(conn).request(
                    "POST", path, origin=self.origin, content=content, timeout=self.timeout
                )
                return OneM2MResponse(0, coap.rsc, {}, coap.payload), f"CoAP {coap.code_text}"
            request = OneM2MClient(conn, host=self.mef_fqdn).request(
                "POST", path, origin=self.origin, content=content
            )
            http = await asyncio.wait_for(request, self.timeout)
            return http, f"HTTP {http.status}"
        except TimeoutError:
            late = f"{_WHAT}: the MEF {self.mef_fqdn} did not answer in time"
            raise EnrolmentError(late) from None
        except (ConnectionError, OSError, CoapBindingError) as exc:
            reason = f"{_WHAT}: the connection to the MEF {self.mef_fqdn} failed ({exc})"
            raise EnrolmentError(reason) from None

    def _result(
        self,
        key: EnrolmentKey,
        asked: EnrolmentTarget | None,
        response: OneM2MResponse,
        status: str | None = None,
    ) -> EnrolmentResult:
        mef = self.mef_fqdn
        doc = expect(response, 2001, _WHAT, mef, peer="MEF", error=EnrolmentError, status=status)
        try:
            answer = wire.EnrolmentBody.parse(doc)
        except wire.WireError as exc:
            raise EnrolmentError(f"{_WHAT}: the MEF {mef} {exc}") from None
        # The KeID is not secret; compared in constant time all the same, as the MAF's KcID.
        same = hmac.compare_digest(answer.ke_id.relative_bytes, key.ke_id.relative_bytes)
        if not same or answer.ke_id != key.ke_id:
            raise EnrolmentError(
                f"{_WHAT}: the MEF {mef} answered KeID {answer.ke_id} but this session "
                f"exported {key.ke_id}; the two ends did not share the bootstrap session"
            )
        if asked is not None and answer.target != asked:
            raise EnrolmentError(
                f"{_WHAT}: the MEF {mef} enrolled for {answer.target}, not {asked}"
            )
        target = answer.target
        credential = derive_for_target(key.ke, target.target_id, enrolee_b=target.is_enrolee_b)
        result = EnrolmentResult(
            key.ke_id,
            target,
            answer.enrolee_id,
            answer.expires,
            self.bootstrap_id,
            key.ke,
            credential,
            self.clock(),
        )
        log.info(
            "enrolled at MEF %s: KeID=%s target=%s expires=%s",
            mef,
            result.ke_id,
            target,
            format_time(result.expires),
        )
        return result


async def enrol_or_reuse(
    enrolee: Enrolee,
    target: EnrolmentTarget,
    store: EnroleeStore,
    *,
    now: datetime | None = None,
    fresh: bool = False,
) -> tuple[EnrolmentResult, bool]:
    """The live enrolment of ``store`` for this MEF, target and bootstrap credential, or a
    new one (bootstrap, Enrolment Exchange, kept in ``store``): (result, reused). A Ke past
    its Enrolment Expiry is not reused (10.7); ``fresh`` bootstraps in any case."""
    if not fresh:
        found = store.current(enrolee.mef_fqdn, target, enrolee.bootstrap_id, now)
        if found is not None:
            return found, True
    result = await enrolee.enrol(target)
    store.save(result)
    return result, False
