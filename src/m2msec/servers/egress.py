"""The gateway's egress: the CSE behind the gateway reaches its upstream peer (for example
the MN-CSE its IN-CSE, TR-0038 7.1.3) over a security association the gateway establishes
as Entity A, the CSE's Initiator Agent (seed 003 7.3.1.1.1; issue 12 item 5).

An ``egress://HOST:PORT?upstream=URL`` listener (or an ``[[egress]]`` table,
:mod:`m2msec.config.egress`; docs/gateway.md "Egress") takes plain oneM2M HTTP from the CSE
and relays what the allow-list accepts to the upstream peer over the SAs that
:class:`~m2msec.servers.egress_link.UpstreamLink` keeps (establishment, reconnection,
re-keying, SA records). The CSE needs no TLS stack and no credential of its own.

Who may use it (:func:`originator_allowed`, one pure rule): the listener binds to loopback
unless ``allow_remote = true``, and every request's From must be one of the local CSE's
identities in ``allow`` (default: the gateway's ``cse_id``): a CSE-ID there admits the CSE
itself and every AE-ID under it (``/mn-cse-123456/Cxyz``, the CSE-relative ``Cxyz`` read
under ``cse_id``), an AE-ID admits that AE. Refusals are the egress's own answers:

* no From: 4000 BAD_REQUEST (TS-0004 8.2.2: From is mandatory);
* a From that is no CSE-ID or AE-ID, or one not in ``allow``: 4103
  ORIGINATOR_HAS_NO_PRIVILEGE - an access decision about the originator (ISSUE-NOTES:
  4106 is for a From against an SA's identity, which is the upstream's check; 4107 for a
  CSE-ID outside an SA, which is not the case here: the SA exists, this originator may not
  use it).

Upstream failures: 5103 TARGET_NOT_REACHABLE when no SA can be established or it breaks
before an answer; 4008 REQUEST_TIMEOUT when no answer comes within ``timeout``; 5000 for
an answer larger than the egress relays; 4000 for a request HTTP/1.1 cannot carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial

from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest, error_response
from m2msec.config import GatewayConfig, ListenerSpec
from m2msec.errors import IdentifierError
from m2msec.ids import CseId, normalise_originator, originator_within, parse_entity_id
from m2msec.sa.machine import RecordSink
from m2msec.sa.management import InitiatorSaManagement
from m2msec.sa.outcomes import RemoveOutcome, UpdateOutcome
from m2msec.sa.records import SaId, SaRecord, SaRole
from m2msec.sa.store import SaRecordStore
from m2msec.servers.backend import (
    BackendError,
    BackendRequestError,
    BackendTimeout,
    BackendTooLarge,
)
from m2msec.servers.egress_link import EgressStats, UpstreamLink
from m2msec.servers.forwarding import relayed_headers, response_headers
from m2msec.service.server import HttpService, PlainConnections

__all__ = ["Egress", "EgressStats", "originator_allowed"]

log = logging.getLogger(__name__)


def originator_allowed(
    origin: str | None, allow: Sequence[str], registrar: CseId, sp_fqdn: str | None
) -> tuple[int, str] | None:
    """None when ``origin`` may use the egress; else the refusal (RSC, reason) (module
    docstring). ``allow`` holds normalised CSE-IDs and AE-IDs (:mod:`m2msec.config.egress`);
    a bare C-stem is read under ``registrar``, the local CSE."""
    if not origin:
        return RSC.BAD_REQUEST, "the request has no From (X-M2M-Origin)"
    try:
        norm = normalise_originator(origin, registrar, sp_fqdn)
    except IdentifierError:
        return RSC.ORIGINATOR_HAS_NO_PRIVILEGE, "the From is not a CSE-ID or AE-ID"
    for entry in allow:
        entity = parse_entity_id(entry)
        if isinstance(entity, CseId):
            if originator_within(norm, entity):
                return None
        elif norm == entry:
            return None
    return (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
        "this originator may not use the egress (not one of the local CSE's identities)",
    )


class Egress:
    """Every egress listener of one gateway, their links and their SA records.

    The gateway calls :meth:`open` for each ``egress://`` listener (its ``_open_egress``)
    and :meth:`aclose` at shutdown; requests are served by the gateway's
    :class:`~m2msec.service.server.HttpService`, under its limits and its graceful close.
    """

    def __init__(
        self,
        config: GatewayConfig,
        http: HttpService,
        *,
        sink: RecordSink | None = None,
        store: Callable[[], SaRecordStore | None] = lambda: None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.stats = EgressStats()
        self._http = http
        #: The Initiator's SA Management of every upstream SA (seed 003 7.3.1.1.2.2); its
        #: records go to ``sink`` (the gateway's SA record store, through GatewaySa).
        self.management = InitiatorSaManagement(sink=sink, clock=clock)
        self._store = store
        self.links: list[UpstreamLink] = []
        self._servers: list[asyncio.Server] = []
        self._plain = PlainConnections(self._http)

    def records(self) -> list[SaRecord]:
        """The initiator-side SA records (role INITIATOR), oldest established first, live
        or ended: from the SA record store, else the live ones."""
        store = self._store()
        if store is None:
            return list(self.management.live())
        store.flush(2.0)
        return [r for r in store.list() if r.role is SaRole.INITIATOR]

    # -- the initiator side of GatewaySa's admin (servers.gateway_sa.InitiatorSide) --------
    def link_of(self, sa_id: SaId) -> UpstreamLink | None:
        return next((link for link in self.links if link.holds(sa_id)), None)

    async def update_sa(self, sa_id: SaId) -> UpdateOutcome | None:
        """``m2msec sa update`` of an upstream SA: its link re-keys in place (a fresh
        handshake, then the switch). None when no link holds ``sa_id``."""
        link = self.link_of(sa_id)
        if link is None:
            return None
        link.last_update = None
        await link.rekey()
        return link.last_update

    async def remove_sa(self, sa_id: SaId, reason: str) -> RemoveOutcome | None:
        """``m2msec sa remove`` of an upstream SA (close_notify; the next request makes a
        new one). None when no link holds ``sa_id``."""
        link = self.link_of(sa_id)
        return None if link is None else await link.remove(sa_id, reason)

    async def open(self, spec: ListenerSpec) -> tuple[asyncio.Server, str]:
        """Start the link of the egress listener ``spec`` and listen: (server, framework)."""
        egress = self.config.egress_for(spec)
        link = UpstreamLink(egress, self.management, self.stats)
        await link.start()
        self.links.append(link)
        server = await asyncio.start_server(
            partial(self._serve, link), spec.host, spec.port, reuse_address=True
        )
        self._servers.append(server)
        log.info(
            "egress %s:%s -> %s (%s, %s), allowed: %s",
            spec.host,
            server.sockets[0].getsockname()[1],
            egress.upstream,
            link.framework,
            egress.credential.describe(),
            ", ".join(egress.allow),
        )
        return server, link.framework

    async def aclose(self) -> None:
        await self._plain.cancel()
        for link in self.links:
            await link.aclose()
        if self.links:
            log.info("egress stopped: %s", self.stats.as_dict())

    async def _serve(
        self, link: UpstreamLink, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        if not (link.config.allow_remote or _is_loopback_peer(peer)):
            writer.close()  # bound to loopback: only a misrouted packet gets here
            return
        await self._plain.serve(reader, writer, partial(self.handle, link))

    async def handle(self, link: UpstreamLink, request: OneM2MRequest) -> tuple[HttpResponse, bool]:
        """One request of the local CSE: the allow-list, then the upstream over the SA."""
        cfg = self.config
        refusal = originator_allowed(
            request.origin, link.config.allow, cfg.cse_id, cfg.cse_id.sp_fqdn or cfg.in_domain
        )
        if refusal is not None:
            rsc, reason = refusal
            self.stats.requests_refused += 1
            log.warning(
                "egress refused %s %s originator=%r: %s",
                request.method,
                request.target[:200],
                request.origin,
                reason,
            )
            return _answer(request, rsc, reason), False
        try:
            resp = await link.request(
                request.method, request.target, relayed_headers(request), request.body
            )
        except BackendTimeout:
            return self._failed(request, link, RSC.REQUEST_TIMEOUT, "did not answer in time")
        except BackendTooLarge:
            return self._failed(
                request, link, RSC.INTERNAL_SERVER_ERROR, "answered more than the egress relays"
            )
        except BackendRequestError:
            return _answer(request, RSC.BAD_REQUEST, "the request cannot be relayed as HTTP"), False
        except BackendError as exc:
            return self._failed(
                request, link, RSC.TARGET_NOT_REACHABLE, f"cannot be reached ({exc})"
            )
        self.stats.requests_forwarded += 1
        return HttpResponse(resp.status, response_headers(resp.headers), resp.body), False

    def _failed(
        self, request: OneM2MRequest, link: UpstreamLink, rsc: int, what: str
    ) -> tuple[HttpResponse, bool]:
        self.stats.upstream_errors += 1
        log.error("egress upstream %s %s (%s)", link.config.upstream, what, request.method)
        return _answer(request, rsc, f"the upstream peer {what}"), False


def _answer(request: OneM2MRequest, rsc: int, message: str) -> HttpResponse:
    return error_response(
        rsc, message, request_id=request.request_id, release_version=request.release_version
    )


def _is_loopback_peer(peer: object) -> bool:
    if not isinstance(peer, tuple) or not peer:
        return False
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(str(peer[0])).is_loopback
    return False
