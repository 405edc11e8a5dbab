"""The gateway's record of one security association, as its rules see it (TS-0003 8.2).

An :class:`Association` holds the identity a TS-0003 clause 8.2 association was bound to
(normalised: SP-relative AE-ID or CSE-ID, docs/readings.md A-14; for an AE also its
Absolute AE-ID, TS-0001 7.2), and, for a Credential-ID binding (docs/readings.md A-13), the
AE-ID it is bound to once the CSE has answered its registration (:meth:`Association.bind_ae`,
called by :mod:`m2msec.servers.registration`). :func:`credential_of` names the credential in
the identity registry (:mod:`m2msec.store.registry`). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from m2msec.config import GatewayConfig
from m2msec.errors import IdentifierError
from m2msec.ids import AeId, CseId, normalise_originator, parse_entity_id
from m2msec.logs import sa_fields
from m2msec.tls.context import Framework, PeerKind, SecurityContext

__all__ = ["Association", "credential_of", "sp_fqdn_of"]


@dataclass(slots=True)
class Association:
    """The identity state of one security association, as the rules see it.

    ``identity`` is the bound identity in normalised form (SP-relative AE-ID or CSE-ID,
    docs/readings.md A-14), or None while a Credential-ID binding awaits AE registration.
    """

    context: SecurityContext
    registrar: CseId
    sp_fqdn: str | None
    kind: PeerKind
    identity: str | None
    credential_id: str | None = None
    cse: CseId | None = None
    #: time.monotonic() of the last live revalidation of its psk row (ISSUE-NOTES issue 6).
    revalidated_at: float = -float("inf")

    @classmethod
    def from_context(
        cls, context: SecurityContext, registrar: CseId, sp_fqdn: str | None = None
    ) -> Association:
        sp = sp_fqdn if sp_fqdn is not None else registrar.sp_fqdn
        kind = context.peer_kind
        if kind is PeerKind.CREDENTIAL:
            return cls(context, registrar, sp, kind, None, credential_id=context.peer_id)
        if kind is PeerKind.SERVICE:
            return cls(context, registrar, sp, kind, None)
        try:
            identity = normalise_originator(context.peer_id, registrar, sp)
            cse = CseId.parse(identity) if kind is PeerKind.CSE else None
        except IdentifierError:
            return cls(context, registrar, sp, kind, None)
        return cls(context, registrar, sp, kind, identity, cse=cse)

    @property
    def peer_id(self) -> str:
        """The identity told to the backend: bound identity, else the Credential-ID."""
        if self.identity is not None:
            return self.identity
        return self.credential_id or self.context.peer_id

    @property
    def absolute_id(self) -> str:
        """The Absolute AE-ID (``//{SP FQDN}/{cse}/{stem}``, TS-0001 7.2) the context is bound
        to, when the M2M-SP's FQDN is known; else :attr:`peer_id` (ISSUE-NOTES, A-14)."""
        identity = self.identity
        local = identity and identity.startswith("/") and not identity.startswith("//")
        if self.kind is PeerKind.AE and local and self.sp_fqdn:
            return f"//{self.sp_fqdn}{identity}"
        return self.peer_id

    def normalise(self, origin: str) -> str:
        return normalise_originator(origin, self.registrar, self.sp_fqdn)

    def registration_origin(self) -> str | None:
        """The AE-ID-Stem to register under, if it names exactly our identity here."""
        if self.kind is not PeerKind.AE or self.identity is None:
            return None
        try:
            entity = parse_entity_id(self.identity, self.registrar)
            if not isinstance(entity, AeId):
                return None
            if self.normalise(entity.stem) != self.identity:
                return None  # a C-stem of another registrar, or another M2M-SP's AE
        except IdentifierError:
            return None
        return entity.stem

    def bind_ae(self, aei: str) -> str:
        """Bind a Credential-ID association to the AE-ID the CSE assigned (A-13)."""
        identity = self.normalise(aei)
        entity = parse_entity_id(identity, self.registrar)
        if not isinstance(entity, AeId):
            raise IdentifierError(f"invalid AE-ID {aei!r}: names a CSE")
        self.identity = identity
        self.kind = PeerKind.AE
        return identity


_CREDENTIAL_PREFIX: dict[Framework, str] = {
    Framework.PROVISIONED_PSK: "psk",
    Framework.MAF: "maf",
    Framework.GBA: "gba",
    Framework.CERTIFICATE: "cert",
}


def credential_of(context: SecurityContext) -> str | None:
    """The identity registry's key of the association's credential (m2msec.store.registry).

    psk and certificate: the KpsaId / fingerprint. MAF: ``maf:<KmId>`` from a Credential-ID
    ``11-<KmId>`` (the KcId changes with every key); with IdA the MAF vouches for the
    identity itself, so ``maf:<IdA>``. GBA likewise: ``gba:<B-TID>`` or ``gba:<USS identity>``.
    """
    prefix = _CREDENTIAL_PREFIX[context.framework]
    if context.framework in (Framework.MAF, Framework.GBA):
        peer = context.peer_id
        credential_prefix = "11-" if context.framework is Framework.MAF else "12-"
        if peer.startswith(credential_prefix):
            peer = peer[3:]
        return f"{prefix}:{peer}"
    if context.key_id is None:
        return None
    return f"{prefix}:{context.key_id}"


def sp_fqdn_of(config: GatewayConfig) -> str | None:
    """The M2M-SP's FQDN the gateway's Absolute AE-IDs carry: the CSE-ID's, else in_domain."""
    return config.cse_id.sp_fqdn or config.in_domain


def log_fields(
    ctx: SecurityContext,
    event: str,
    cause: str | None,
    address: str | None = None,
    peer: str | None = None,
) -> dict[str, object]:
    """The ``extra=`` of an association log line (:func:`m2msec.logs.sa_fields`: the SA
    identifier, peer, framework, cause, and the key *identifier*, never a key); ``peer``
    is the identity as bound, by default the handshake's."""
    return sa_fields(
        sa_id=ctx.sa_id,
        peer=peer or ctx.peer_id,
        framework=ctx.framework.value,
        cause=cause,
        event=event,
        peer_kind=ctx.peer_kind.value,
        key_id=ctx.key_id,
        protocol=ctx.protocol,
        cipher=ctx.cipher_suite,
        peer_address=address,
    )
