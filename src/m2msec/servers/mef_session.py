"""One bootstrap session of the MEF (TS-0003 8.3.2.1, seed 004), over TLS or DTLS.

After the Bootstrap Security Handshake the session exports 48 octets with
``EXPORTER-oneM2M-Bootstrap`` and no context (10.3.1, docs/readings.md A-04), and
:class:`BootstrapSession` answers its Enrolment Exchange through
:class:`~m2msec.mef.service.MefService`, its commit grouped with the other sessions'
(:mod:`m2msec.service.group_commit`). Shared by the
TLS listeners (:mod:`m2msec.servers.mef`) and the CoAP-over-DTLS one
(:mod:`m2msec.servers.mef_coap`), with the identities a handshake authenticated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import PeerKind, derivation_identity
from m2msec.mef.records import Bootstrap, EnrolmentTarget
from m2msec.mef.service import EnroleeIdentity, MefRefusal, MefService, PlannedEnrolment
from m2msec.service.group_commit import GroupCommit
from m2msec.tls.context import SecurityContext

__all__ = [
    "BOOTSTRAP_EXPORTER_LABEL",
    "BOOTSTRAP_EXPORT_OCTETS",
    "BootstrapSession",
    "EnrolmentCommits",
    "enrolee_identity",
    "target_identity",
]

log = logging.getLogger(__name__)

#: The MEF's one committer of enrolments (:meth:`MefService.commit_enrolments`).
EnrolmentCommits = GroupCommit[PlannedEnrolment, MefRefusal | None]

#: 10.3.1 with seed 004's label: RelativeKeID (16 octets) || Ke (32 octets), no context.
BOOTSTRAP_EXPORTER_LABEL: Final = b"EXPORTER-oneM2M-Bootstrap"
BOOTSTRAP_EXPORT_OCTETS: Final = 48


class BootstrapSession:
    """One bootstrap handshake's Enrolment Exchange, over HTTP or CoAP: the session's
    export is spent once an enrolment stored it (a second one is refused 4105).

    A PSK session plans its enrolment from the Enrolee its handshake's PSK lookup read
    (:meth:`MefService.bootstrap_enrolee`), on the event loop: no store read, no thread.
    Only the commit (shared, fsynced) and a refusal's audit record run in a worker thread,
    and the answer is sent only after the commit. A certificate session reads its Enrolee
    in a worker thread when it asks."""

    def __init__(
        self, service: MefService, commits: EnrolmentCommits, who: EnroleeIdentity, exported: bytes
    ) -> None:
        self.service = service
        self.commits = commits
        self.who = who
        self._exported: bytes | None = exported
        # Claimed now, right after the handshake, within the window its read is kept for.
        self._enrolee = service.bootstrap_enrolee(who)

    @property
    def peer_id(self) -> str:
        """Who bootstrapped, for logs (a KpmID or a certificate identity, never a key)."""
        return str(self.who)

    async def enrol(self, request: OneM2MRequest) -> HttpResponse:
        service = self.service
        planned: PlannedEnrolment | HttpResponse
        if self._enrolee is None:
            # Nothing read yet: the store's read runs off the loop.
            planned = await asyncio.to_thread(
                service.prepare_enrolment, request, self.who, self._exported
            )
            if isinstance(planned, HttpResponse):
                return planned
        else:
            try:
                planned = service.plan_request(request, self.who, self._exported, self._enrolee)
            except MefRefusal as refused:  # its audit record is a store write
                return await asyncio.to_thread(service.refuse_enrolment, request, self.who, refused)
        # The commit is shared with the sessions enrolling at the same time (group commit).
        refusal = await self.commits.submit(planned)
        if refusal is not None:
            return await asyncio.to_thread(service.refuse_enrolment, request, self.who, refusal)
        self._exported = None
        return service.answer_enrolment(request, self.who, planned, None)


def enrolee_identity(ctx: SecurityContext, bootstrap: Bootstrap) -> EnroleeIdentity | None:
    """Who ran the bootstrap handshake: its KpmID, or the canonical CSE-ID/AE-ID its
    certificate names (:func:`m2msec.ids.derivation_identity`)."""
    if bootstrap is Bootstrap.PSK:
        return EnroleeIdentity(Bootstrap.PSK, ctx.key_id or ctx.peer_id)
    if ctx.peer_kind not in (PeerKind.AE, PeerKind.CSE):
        log.info("certificate Enrolee %s is not a CSE or an AE", ctx.peer_id)
        return None
    try:
        return EnroleeIdentity(
            Bootstrap.CERTIFICATE, derivation_identity(ctx.peer_id, enrolee_b=True)
        )
    except IdentifierError as exc:
        log.info("certificate Enrolee %s refused: %s", ctx.peer_id, exc)
        return None


def target_identity(ctx: SecurityContext) -> EnrolmentTarget | None:
    """The Enrolment Target a certificate authenticated: a MAF (its FQDN) or an Enrolee B."""
    try:
        if ctx.peer_kind is PeerKind.SERVICE:
            return EnrolmentTarget.maf(ctx.peer_id)
        if ctx.peer_kind in (PeerKind.AE, PeerKind.CSE):
            return EnrolmentTarget.enrolee_b(ctx.peer_id)
    except (IdentifierError, ConfigurationError) as exc:
        log.info("target %s refused: %s", ctx.peer_id, exc)
        return None
    log.info("target %s is not a MAF, a CSE or an AE", ctx.peer_id)
    return None
