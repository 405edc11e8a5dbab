"""The MEF's ``dtls://`` Enrolee listener (TS-0003 8.3.2.1, seed 004; 10.2.1 for DTLS).

The Bootstrap Security Handshake is TLS-PSK over DTLS 1.2 (psk_identity = KpmID, psk =
Kpm, the DTLS suites of 10.2.2, TLS_PSK_WITH_AES_128_CCM_8 first); the Enrolment Exchange
(``POST /mef/enrolment``) is carried over CoAP (TS-0008) as the gateway's ``dtls://``
listeners carry requests: the one :class:`~m2msec.servers.coap_gateway.CoapListener`
(message layer, separate answers, block-wise transfer) with this module as its host. Each
association exports ``EXPORTER-oneM2M-Bootstrap`` when it is established and gets one
:class:`~m2msec.servers.mef_session.BootstrapSession`. Sessions are never resumed: every
bootstrap runs the Kpm lookup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.mef.records import Bootstrap
from m2msec.mef.service import MefService
from m2msec.servers.coap_gateway import CoapListener
from m2msec.servers.mef_session import (
    BOOTSTRAP_EXPORT_OCTETS,
    BOOTSTRAP_EXPORTER_LABEL,
    BootstrapSession,
    EnrolmentCommits,
    enrolee_identity,
)
from m2msec.service.metrics import ServerMetrics
from m2msec.tls.aio_dtls import DTLSAssociation
from m2msec.tls.context import SecurityContext
from m2msec.tls.profiles import TLSProfile

__all__ = ["CoapSettings", "MefCoapEnrolees"]

FailureHook = Callable[["tuple[Any, ...] | None", str], None]


@dataclass(frozen=True, slots=True)
class CoapSettings:
    """What the CoAP listener reads of its server's configuration (from ``MefConfig``)."""

    max_handshakes: int
    idle_timeout: float
    handshake_timeout: float
    max_body: int
    resumption: bool = False
    coap_response_options: bool = True


class _Counted:
    """An ``int`` attribute kept in its owner's ``_stats`` Counter under its own name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, counts: _Counts, owner: type | None = None) -> int:
        return counts._stats[self.name]

    def __set__(self, counts: _Counts, value: int) -> None:
        counts._stats[self.name] = value


class _Counts:
    """The counters the listener updates, kept in the MEF's one stats ``Counter``."""

    coap_bad_messages = _Counted()
    coap_requests = _Counted()
    bad_requests = _Counted()

    def __init__(self, stats: Counter[str]) -> None:
        self._stats = stats


class MefCoapEnrolees:
    """One ``dtls://`` Enrolee listener; the host of its :class:`CoapListener`."""

    def __init__(
        self,
        service: MefService,
        commits: EnrolmentCommits,
        profile: TLSProfile,
        settings: CoapSettings,
        stats: Counter[str],
        on_failure: FailureHook,
        *,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.service = service
        self.commits = commits
        self.config = settings
        self.stats = _Counts(stats)
        self._counter = stats
        self._on_failure = on_failure
        self._exports: dict[str, bytes] = {}
        self.listener = CoapListener(
            self, profile, on_established=self._established, metrics=metrics
        )

    @property
    def port(self) -> int:
        handle = self.listener.handle
        assert handle is not None, "start() the listener first"
        return handle.port

    async def start(self, host: str, port: int) -> None:
        await self.listener.start(host, port)

    async def close(self) -> None:
        await self.listener.close()

    # -- the listener's host (coap_gateway.AssociationHost) ---------------------------------
    def _established(self, dtls: DTLSAssociation) -> None:
        # Keyed by the session's identifier (itself from an exporter, never a key).
        label, octets = BOOTSTRAP_EXPORTER_LABEL, BOOTSTRAP_EXPORT_OCTETS
        self._exports[dtls.context.sa_id] = dtls.export_keying_material(label, octets)

    def handshake_failed(self, peer: tuple[Any, ...] | None, reason: str) -> None:
        self._on_failure(peer, reason)

    def admit_association(self, ctx: SecurityContext, peer: Any) -> bool:
        return ctx.sa_id in self._exports

    def open_association(self, ctx: SecurityContext, peer: Any) -> BootstrapSession:
        who = enrolee_identity(ctx, Bootstrap.PSK)
        assert who is not None  # a PSK session always names its KpmID
        self._counter["bootstrap_sessions"] += 1
        return BootstrapSession(self.service, self.commits, who, self._exports.pop(ctx.sa_id))

    def close_association(self, assoc: BootstrapSession) -> None:
        pass  # nothing held beyond the session object

    async def process(
        self, assoc: BootstrapSession, request: OneM2MRequest
    ) -> tuple[HttpResponse, bool]:
        return await assoc.enrol(request), False
