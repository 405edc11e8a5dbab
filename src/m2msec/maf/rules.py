"""The rules of the MAF procedures over the store's reads (TS-0003 8.8.2.3-8.8.2.10), sans-IO.

Given a parsed request (:mod:`m2msec.maf.requests`), the :class:`~m2msec.maf.protocol.MafPolicy`
and the store's reads (:class:`~m2msec.maf.protocol.MafReader`): the lifetime the MAF grants
(:func:`assign_expiry`), the record each write procedure plans (``plan_*``), the
registration or key a MAF Client may act on (``owned_*``), who may retrieve a key
(:func:`decide_retrieval`), and the success bodies (``*_body``). Nothing here writes:
:mod:`m2msec.maf.service` hands the planned writes to the server's journal.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from m2msec.bindings.messages import RSC
from m2msec.crypto.keyexport import EXPORT_LENGTH, RELATIVE_ID_LENGTH, split_export
from m2msec.errors import IdentifierError
from m2msec.maf import wire
from m2msec.maf.protocol import (
    CONFLICT,
    SINGLE_TARGET_SUIDS,
    MafPolicy,
    MafReader,
    MafRefusal,
    allowed_entity_bs,
    bad_request,
    canonical_entity,
    format_m2m_time,
)
from m2msec.maf.requests import ClientRegRequest, KeyRegRequest, KeyUpdateRequest, RegUpdateRequest
from m2msec.maf.store import ClientRegistration, MafKey, MasterCredential, NewKey

__all__ = [
    "assign_expiry",
    "client_registration_body",
    "decide_retrieval",
    "key_registration_body",
    "owned_key",
    "owned_registration",
    "plan_client_registration",
    "plan_key_registration",
    "plan_key_update",
    "plan_registration_update",
    "retrieval_body",
]


# ----------------------------------------------------------------------------- rules


def assign_expiry(
    requested: datetime, now: datetime, max_lifetime: timedelta, cap: datetime | None = None
) -> datetime:
    """The expirationTime the MAF grants: the request, shortened to ``max_lifetime`` from
    now and to ``cap`` (the client registration), to the microsecond (TS-0004 6.3.3 allows
    a fraction; rounding to whole seconds cut a 6 s Kc to 5.x s, issue 9 item 7)."""
    if requested <= now:
        raise bad_request("expirationTime is not in the future")
    granted = min(requested, now + max_lifetime)
    if cap is not None:
        granted = min(granted, cap)
    if granted <= now:
        raise bad_request("the expirationTime the MAF could grant has already passed")
    return granted


def _check_targets(
    store: MafReader, policy: MafPolicy, given: tuple[str, ...], canonical: tuple[str, ...]
) -> None:
    """8.2.2.3 Association Configuration: the MAF provides Kc only to the Entity Bs it is
    authorised for; 4103 naming the first target that is not one."""
    allowed = allowed_entity_bs(store, policy)
    for text, canon in zip(given, canonical, strict=True):
        if canon not in allowed:
            raise MafRefusal(
                RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
                f"this MAF is not authorised to provide keys to {text}",
                audit=f"target {canon} is not an allowed Entity B",
            )


def plan_client_registration(
    policy: MafPolicy, km: MasterCredential, req: ClientRegRequest, now: datetime, reg_id: str
) -> ClientRegistration:
    """8.8.2.3: a registration record with the lifetime the MAF grants."""
    expires = assign_expiry(req.expires, now, policy.registration_lifetime)
    return ClientRegistration(reg_id, km.canonical, expires, req.admin_fqdn, req.labels, now)


def client_registration_body(reg: ClientRegistration, km: MasterCredential) -> dict[str, Any]:
    """Table 8.8.2.3-2 (:class:`m2msec.maf.wire.MafClientRegBody`)."""
    return wire.MafClientRegBody(
        reg.reg_id, reg.expires_at, km.km_id, reg.admin_fqdn, reg.labels
    ).to_json()


def owned_registration(
    store: MafReader, km: MasterCredential, reg_id: str, now: datetime
) -> ClientRegistration:
    """A live registration of this MAF Client, or 4004 (unknown, expired or another's)."""
    reg = store.get_registration(reg_id)
    if reg is None:
        raise MafRefusal(RSC.NOT_FOUND, "no such MAF Client Registration", audit="unknown")
    if reg.km_id != km.canonical:
        raise MafRefusal(
            RSC.NOT_FOUND, "no such MAF Client Registration", audit="registration of another KmId"
        )
    if reg.expired(now):
        raise MafRefusal(RSC.NOT_FOUND, "no such MAF Client Registration", audit="expired")
    return reg


def _echoed(
    expires: datetime | None, has_labels: bool, labels: tuple[str, ...] | None
) -> dict[str, Any]:
    """An update's answer holds only the fields of the request (tables 8.8.2.5-2 and
    8.8.2.9-2 NOTE): the expirationTime granted, the labels set."""
    out: dict[str, Any] = {}
    if expires is not None:
        out["expirationTime"] = format_m2m_time(expires)
    if has_labels:
        out["labels"] = list(labels or ())
    return out


def plan_registration_update(
    policy: MafPolicy, reg: ClientRegistration, req: RegUpdateRequest, now: datetime
) -> tuple[datetime | None, dict[str, Any]]:
    """8.8.2.5: the new expirationTime (or None) and the response body, which holds only
    the fields of the request (table 8.8.2.5-2 NOTE)."""
    expires = None
    if req.expires is not None:
        expires = assign_expiry(req.expires, now, policy.registration_lifetime)
    return expires, {"mafClientReg": _echoed(expires, req.has_labels, req.labels)}


def plan_key_registration(
    store: MafReader,
    policy: MafPolicy,
    km: MasterCredential,
    req: KeyRegRequest,
    now: datetime,
    *,
    exported: bytes | None,
    random_id: bytes,
) -> NewKey:
    """8.8.2.7: check the targets, choose the key value and RelativeKeyID, grant the lifetime.

    ``exported`` is the session's 48-octet ``EXPORTER-oneM2M-Connection`` output (None if
    the session already gave its exported key); ``random_id`` the RelativeKeyID to use
    for a self-generated ``keyValue``.
    """
    _check_targets(store, policy, req.target_ids, req.canonical_targets)
    if req.key_value is not None:
        if len(random_id) != RELATIVE_ID_LENGTH:
            raise ValueError("random_id must be 16 octets")
        relative_id, kc = random_id, req.key_value
    else:
        if exported is None:
            raise MafRefusal(
                CONFLICT,
                "this TLS session's exported key is already registered; run a new MAF "
                "Handshake for another key",
                audit="second exporter-based registration in one session",
            )
        if len(exported) != EXPORT_LENGTH:
            raise ValueError("exported keying material must be 48 octets")
        relative_id, kc = split_export(exported)
    reg = store.live_registration(km.canonical, req.admin_fqdn, now)
    expires = assign_expiry(
        req.expires, now, policy.key_lifetime, None if reg is None else reg.expires_at
    )
    return NewKey(
        relative_id=relative_id,
        kc=kc,
        expires_at=expires,
        km_id=km.canonical,
        suid=req.suid,
        target_ids=req.target_ids,
        admin_fqdn=req.admin_fqdn,
        labels=req.labels,
        reg_id=None if reg is None else reg.reg_id,
    )


def key_registration_body(key: NewKey, km: MasterCredential) -> dict[str, Any]:
    """Table 8.8.2.7-2 (:class:`m2msec.maf.wire.MafKeyRegBody`)."""
    return wire.MafKeyRegBody(
        relative_id=bytes.fromhex(key.relative_hex),
        expires=key.expires_at,
        source_client_id=km.km_id,
        admin_fqdn=key.admin_fqdn,
        suid=key.suid,
        target_ids=tuple(key.target_ids),
        labels=key.labels,
    ).to_json()


def owned_key(store: MafReader, km: MasterCredential, rel_id: str, now: datetime) -> MafKey:
    """A live key registered by this MAF Client, or 4004 (8.8.2.9/8.8.2.10 pre-conditions)."""
    key = store.get_key(rel_id)
    reason = None
    if key is None:
        reason = "unknown"
    elif key.km_id != km.canonical:
        reason = "key of another KmId"
    elif key.deregistered:
        reason = "de-registered"
    elif key.expired(now):
        reason = "expired"
    if reason is not None or key is None:
        raise MafRefusal(RSC.NOT_FOUND, "no such key registration", audit=reason)
    return key


def plan_key_update(
    store: MafReader,
    policy: MafPolicy,
    key: MafKey,
    req: KeyUpdateRequest,
    now: datetime,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """8.8.2.9: (arguments for :meth:`MafWriter.update_key`, response body with only the
    requested fields, table 8.8.2.9-2 NOTE)."""
    changes: dict[str, Any] = {}
    out: dict[str, Any] = {}
    if req.target_ids is not None:
        assert req.canonical_targets is not None
        if key.suid in SINGLE_TARGET_SUIDS and len(req.target_ids) != 1:
            raise bad_request(f"targetIDs must hold exactly one identity for SUID {key.suid}")
        _check_targets(store, policy, req.target_ids, req.canonical_targets)
        changes["target_ids"] = req.target_ids
        out["targetIDs"] = list(req.target_ids)
    if req.expires is not None:
        reg = store.get_registration(key.reg_id) if key.reg_id else None
        cap = None if reg is None or reg.expired(now) else reg.expires_at
        expires = assign_expiry(req.expires, now, policy.key_lifetime, cap)
        changes["expires_at"] = expires
    if req.has_labels:
        changes["labels"] = req.labels
    out.update(_echoed(changes.get("expires_at"), req.has_labels, req.labels))
    return changes, {"mafKeyReg": out}


def decide_retrieval(
    store: MafReader,
    policy: MafPolicy,
    retriever: str,
    rel_id: str,
    now: datetime,
) -> MafKey:
    """8.8.2.8: the key for an authenticated Target MAF Client, or a refusal.

    ``retriever`` is Entity B's authenticated identity (CSE-ID or AE-ID as the certificate
    framework bound it). It must be an allowed Entity B (else 4103). An unknown, expired or
    de-registered key is 4004 with one message for all three (the audit says which); a
    retriever not in the key's targetIDs is 4103.
    """
    try:
        who = canonical_entity(retriever, policy.sp_fqdn)
    except IdentifierError:
        raise MafRefusal(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            "the authenticated identity is not an AE-ID or CSE-ID",
            audit=f"retriever {retriever!r} is not an AE-ID or CSE-ID",
        ) from None
    if who not in allowed_entity_bs(store, policy):
        raise MafRefusal(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            "this MAF does not hand keys to you",
            audit=f"retriever {who} is not an allowed Entity B",
        )
    key = store.get_key(rel_id)
    reason = None
    if key is None:
        reason = "unknown"
    elif key.deregistered or key.kc is None:
        reason = "de-registered"
    elif key.expired(now):
        reason = "expired"
    if reason is not None or key is None:
        raise MafRefusal(RSC.NOT_FOUND, "no such key", audit=f"{reason} key")
    targets = set()
    for text in key.target_ids:
        try:
            targets.add(canonical_entity(text, policy.sp_fqdn))
        except IdentifierError:
            continue
    if who not in targets:
        raise MafRefusal(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            "you are not a target of this key",
            audit=f"retriever {who} is not in targetIDs",
        )
    return key


def retrieval_body(key: MafKey, client: MasterCredential | None) -> dict[str, Any]:
    """Table 8.8.2.8-2, plus the RelativeKeyID and (8.2.2.3) Entity A's CSE-ID/AE-ID when
    the MAF is configured with one."""
    assert key.kc is not None
    return wire.MafKeyBody(
        relative_id=bytes.fromhex(key.relative_id),
        key_value=key.kc,
        expires=key.expires_at,
        source_client_id=client.km_id if client is not None else key.km_id,
        admin_fqdn=key.admin_fqdn,
        suid=key.suid,
        entity_id=client.entity_id if client is not None else None,
        labels=key.labels,
    ).to_json()
