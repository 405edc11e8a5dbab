"""Registration binding: which AE-ID an association acts as, from the CSE and the registry.

An association bound to a Credential-ID (docs/readings.md A-13) becomes an AE's when the CSE
answers its registration (TS-0001 V3.36 10.2.2.2, step 003) with 2001 CREATED:
:func:`bind_registration` reads ``m2m:ae/aei`` from that answer (:func:`aei_from_response`),
binds the association and records the AE-ID for the credential in the identity registry
(:mod:`m2msec.store.registry`); :func:`bind_recorded` binds the same credential's later
associations to it. An identity the MAF (IdA) or GBA (USS) vouched for is recorded as owned
by the credential that proved it (TS-0001 9.6.1.2.2: only its owner may register it).
"""

from __future__ import annotations

import json
import logging

from m2msec.bindings.messages import RSC, HttpResponse, media_type_and_ty
from m2msec.errors import IdentifierError
from m2msec.servers.association import Association, credential_of
from m2msec.store.registry import IdentityRegistry
from m2msec.tls.context import Framework

__all__ = ["aei_from_response", "bind_recorded", "bind_registration"]

# The gateway's log lines keep the one logger name operators filter on (docs/gateway.md).
log = logging.getLogger("m2msec.servers.gateway")


def bind_recorded(assoc: Association, registry: IdentityRegistry) -> None:
    """At establishment: bind to the AE-ID the credential registered, or record ownership."""
    ctx = assoc.context
    credential = credential_of(ctx)
    if credential is None:
        return
    if assoc.identity is None:
        # A credential's later sessions act as the AE-ID it registered (issue 9).
        recorded = registry.recorded_for(credential)
        if recorded is not None:
            try:
                assoc.bind_ae(recorded)
            except IdentifierError:
                log.warning("recorded AE-ID of %s is not usable here", assoc.peer_id)
    elif (
        ctx.framework in (Framework.MAF, Framework.GBA)
        and registry.owner_of(assoc.identity) is None
    ):
        # A MAF IdA / GBA USS identity is owned by the credential that proved it.
        registry.record(assoc.identity, credential, source=ctx.framework.value)


def bind_registration(
    assoc: Association, response: HttpResponse, registry: IdentityRegistry | None
) -> str | None:
    """After a registration: bind to the AE-ID of a 2001 answer; the identity bound, or None."""
    aei = aei_from_response(response)
    if aei is None:
        if response.rsc == RSC.CREATED:
            log.warning(
                "AE registration by %s succeeded but the answer carries no readable "
                "m2m:ae/aei (JSON); the association stays unbound",
                assoc.peer_id,
            )
        return None
    try:
        identity = assoc.bind_ae(aei)
    except IdentifierError as exc:
        log.warning("cannot bind %s to the registered AE-ID: %s", assoc.peer_id, exc)
        return None
    log.info("association %s bound to AE %s", assoc.credential_id, identity)
    credential = credential_of(assoc.context)
    if (
        registry is not None
        and credential is not None
        and not registry.record(identity, credential)
    ):
        log.warning(
            "AE-ID %s registered by %s is recorded for another credential",
            identity,
            assoc.peer_id,
        )
    return identity


def aei_from_response(response: HttpResponse) -> str | None:
    """``m2m:ae/aei`` of a 2001 CREATED answer in JSON, or None."""
    if response.rsc != RSC.CREATED:
        return None
    ctype = next((v for k, v in response.headers if k.lower() == "content-type"), None)
    encoding = next((v for k, v in response.headers if k.lower() == "content-encoding"), "")
    media, _ = media_type_and_ty(ctype)
    if media is None or "json" not in media or encoding.strip().lower() not in ("", "identity"):
        return None
    try:
        doc = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return None
    ae = doc.get("m2m:ae") if isinstance(doc, dict) else None
    aei = ae.get("aei") if isinstance(ae, dict) else None
    return aei if isinstance(aei, str) and aei else None
