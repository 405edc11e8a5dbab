"""The gateway's egress listeners: the CSE behind the gateway reaching its upstream peer
over a security association the gateway establishes as Entity A (issue 12 item 5).

TS-0003 8.2 puts the credentials and the handshake at the CSE; here the gateway is the
CSE's Initiator Agent (seed 003 7.3.1.1.1): it holds the credential of the initiator's
credentials table (TR-0038 7.1.2, :mod:`m2msec.config.credentials`) for the upstream URL and
runs Entity A's side of that framework (:func:`m2msec.config.initiators.build_initiator`).
The CSE speaks plain HTTP to a loopback listener (docs/gateway.md "Egress")::

    [gateway]
    listen = ["egress://127.0.0.1:8090?upstream=https://in-gw.example:8443"]

    [[egress]]                                # the same listener with every setting
    listen = "egress://127.0.0.1:8091"        # or "127.0.0.1:8091"
    upstream = "https://in-gw.example:8443"   # the peer (tls:// is the same); port: 443
    id_b = "/in-cse"                          # its CSE-ID (IdB); default: the entry's id_b
    credentials = "credentials.toml"          # the table; default <data dir>/credentials.toml
    entry = "/in-cse"                         # its entry; default: the one for_peer picks
    allow = ["/mn-cse-123456"]                # who may use it; default [gateway] cse_id
    allow_remote = false                      # a bind to a non-loopback address needs true
    rekey_after = 3600.0                      # seconds; a fresh handshake replaces the SA; 0: never
    connections = 4                           # SAs to the upstream open at most at a time
    idle_timeout = 90.0                       # seconds an SA may idle before it is closed
    timeout = 10.0                            # seconds per relayed request
    connect_timeout = 10.0                    # seconds per establishment (MAF, GBA included)

An ``egress://`` URL in ``[gateway] listen`` is a ``[[egress]]`` table with ``listen`` and
``upstream`` only. ``allow`` names CSE-IDs (the CSE, the AE-IDs under it, and the
CSE-relative C-stems it sends, read under ``[gateway] cse_id``) and AE-IDs (that AE only);
:func:`m2msec.servers.egress.originator_allowed` applies it. Errors name the key
(``egress[1].upstream: ...``), never a key's octets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from m2msec.config.credentials import (
    Credential,
    Credentials,
    default_credentials_path,
    load_credentials,
)
from m2msec.config.listeners import ListenerSpec, parse_listen_url
from m2msec.config.peer_patterns import DEFAULT_PORTS
from m2msec.config.values import boolean, invalid, number, unknown_key
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.ids import CseId, normalise_originator, parse_entity_id

__all__ = [
    "DEFAULT_CONNECTIONS",
    "DEFAULT_EGRESS_CONNECT_TIMEOUT",
    "DEFAULT_EGRESS_IDLE_TIMEOUT",
    "DEFAULT_EGRESS_TIMEOUT",
    "DEFAULT_REKEY_AFTER",
    "EGRESS_KEYS",
    "EgressConfig",
    "is_loopback",
    "parse_egress",
]

DEFAULT_REKEY_AFTER: Final = 3600.0
DEFAULT_CONNECTIONS: Final = 4
#: Below the gateway's own default idle_timeout (120 s), so that we close an idle SA
#: before the peer does rather than race its close with a request.
DEFAULT_EGRESS_IDLE_TIMEOUT: Final = 90.0
DEFAULT_EGRESS_TIMEOUT: Final = 10.0
DEFAULT_EGRESS_CONNECT_TIMEOUT: Final = 10.0

EGRESS_KEYS: Final = frozenset(
    {
        "listen",
        "upstream",
        "id_b",
        "credentials",
        "entry",
        "allow",
        "allow_remote",
        "rekey_after",
        "connections",
        "idle_timeout",
        "timeout",
        "connect_timeout",
    }
)


@dataclass(frozen=True, slots=True)
class EgressConfig:
    """One egress listener, validated (module docstring).

    ``upstream`` is the peer's URL as written (the credentials table ranks by its scheme),
    ``upstream_host``/``upstream_port`` where it is; ``allow`` the SP-relative (or, for
    another SP, absolute) forms of the allowed CSE-IDs and AE-IDs; ``rekey_after`` None
    means no timed re-key."""

    listener: ListenerSpec
    upstream: str
    upstream_host: str
    upstream_port: int
    credential: Credential
    allow: tuple[str, ...]
    allow_remote: bool = False
    rekey_after: float | None = DEFAULT_REKEY_AFTER
    connections: int = DEFAULT_CONNECTIONS
    idle_timeout: float = DEFAULT_EGRESS_IDLE_TIMEOUT
    timeout: float = DEFAULT_EGRESS_TIMEOUT
    connect_timeout: float = DEFAULT_EGRESS_CONNECT_TIMEOUT

    @property
    def upstream_url(self) -> str:
        """``https://HOST:PORT``: where the relayed requests go (the ``Host`` they carry)."""
        host = f"[{self.upstream_host}]" if ":" in self.upstream_host else self.upstream_host
        return f"https://{host}:{self.upstream_port}"


def is_loopback(host: str) -> bool:
    """Whether a listener host binds to loopback only (``localhost`` or a loopback IP)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def parse_egress(
    tables: object,
    listen: Sequence[ListenerSpec],
    *,
    base: Path,
    cse_id: CseId,
    in_domain: str | None,
) -> tuple[EgressConfig, ...]:
    """The egress listeners of ``[gateway] listen`` (its ``egress://`` URLs) and of the
    ``[[egress]]`` tables, in that order; relative paths under ``base``."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise invalid("egress", "must be an array of tables ([[egress]])")
    found: list[EgressConfig] = []
    for i, spec in enumerate(listen):
        if spec.scheme == "egress":
            found.append(
                _Egress(f"gateway.listen[{i}]", base, cse_id, in_domain).parse(
                    {"upstream": spec.upstream}, spec
                )
            )
    for i, table in enumerate(tables):
        where = f"egress[{i}]"
        for key in table:
            if key not in EGRESS_KEYS:
                raise unknown_key(key, EGRESS_KEYS, where)
        text = table.get("listen")
        if not isinstance(text, str) or not text:
            raise invalid(
                f"{where}.listen", "missing: where the CSE connects, 'egress://127.0.0.1:8090'"
            )
        url = text if "://" in text else f"egress://{text}"
        spec = parse_listen_url(url, f"{where}.listen", egress=True)
        if spec.scheme != "egress" or spec.upstream is not None:
            raise invalid(f"{where}.listen", f"{text!r}: write egress://HOST:PORT (upstream apart)")
        found.append(_Egress(where, base, cse_id, in_domain).parse(table, spec))
    return tuple(found)


@dataclass(slots=True)
class _Egress:
    where: str
    base: Path
    cse_id: CseId
    in_domain: str | None

    def key(self, name: str) -> str:
        return f"{self.where}.{name}"

    def parse(self, table: Mapping[str, Any], spec: ListenerSpec) -> EgressConfig:
        allow_remote = boolean(table.get("allow_remote", False), self.key("allow_remote"))
        if not allow_remote and not is_loopback(spec.host):
            raise invalid(
                self.key("listen"),
                f"{spec.url!r}: an egress listener binds to loopback (127.0.0.1, ::1) unless "
                "allow_remote = true: anyone who reaches it speaks with the gateway's credential",
            )
        upstream, host, port = self._upstream(table.get("upstream"))
        id_b = self._identity(table.get("id_b"), "id_b")
        credential = self._credential(table, upstream, id_b)
        if id_b is not None:
            credential = credential.overridden(id_b=id_b)
        rekey = table.get("rekey_after", DEFAULT_REKEY_AFTER)
        return EgressConfig(
            listener=spec,
            upstream=upstream,
            upstream_host=host,
            upstream_port=port,
            credential=credential,
            allow=self._allow(table.get("allow")),
            allow_remote=allow_remote,
            rekey_after=None if rekey == 0 else float(number(rekey, self.key("rekey_after"))),
            connections=self._count(table.get("connections", DEFAULT_CONNECTIONS)),
            idle_timeout=self._seconds(table, "idle_timeout", DEFAULT_EGRESS_IDLE_TIMEOUT),
            timeout=self._seconds(table, "timeout", DEFAULT_EGRESS_TIMEOUT),
            connect_timeout=self._seconds(table, "connect_timeout", DEFAULT_EGRESS_CONNECT_TIMEOUT),
        )

    def _count(self, value: object) -> int:
        return int(number(value, self.key("connections"), integer=True))

    def _seconds(self, table: Mapping[str, Any], name: str, default: float) -> float:
        return float(number(table.get(name, default), self.key(name)))

    def _upstream(self, value: object) -> tuple[str, str, int]:
        key = self.key("upstream")
        if not isinstance(value, str) or not value:
            raise invalid(key, "missing: the upstream peer, e.g. 'https://in-gw.example:8443'")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise invalid(key, f"{value!r} is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("https", "tls") or not parts.hostname:
            raise invalid(
                key, f"{value!r}: write https://HOST:PORT (oneM2M over TLS; tls:// is the same)"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise invalid(key, f"{value!r}: only scheme://host:port is allowed")
        return value, parts.hostname, port or DEFAULT_PORTS[scheme]

    def _identity(self, value: object, name: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise invalid(self.key(name), "must be a CSE-ID or AE-ID string")
        try:
            parse_entity_id(value)
        except IdentifierError as exc:
            raise invalid(self.key(name), str(exc)) from None
        return value

    def _credential(self, table: Mapping[str, Any], upstream: str, id_b: str | None) -> Credential:
        path = table.get("credentials")
        if path is not None and (not isinstance(path, str) or not path):
            raise invalid(self.key("credentials"), "must be the path of a credentials table")
        file = None
        if path is not None:
            file = Path(path).expanduser()
            if not file.is_absolute():
                file = self.base / file
        if file is None and not default_credentials_path().exists():
            raise invalid(
                self.key("credentials"),
                f"missing: no credentials table at {default_credentials_path()} (the default); "
                "write one (docs/credentials.md) or give credentials = FILE in [[egress]]",
            )
        try:
            creds = load_credentials(file)
        except ConfigurationError as exc:
            raise invalid(self.key("credentials"), str(exc)) from None
        assert creds is not None
        entry = table.get("entry")
        if entry is not None:
            return self._entry(creds, entry)
        try:
            found = creds.for_peer(upstream, id_b)
        except ValueError as exc:
            raise invalid(self.key("upstream"), str(exc)) from None
        if found is None:
            peer = f" (IdB {id_b})" if id_b else ""
            raise invalid(
                self.key("credentials"),
                f"{creds.source} has no entry for {upstream}{peer}: add one "
                f'([peers."{upstream}"] or [peers."/in-cse"]) or name it with entry = ...',
            )
        return found

    def _entry(self, creds: Credentials, entry: object) -> Credential:
        if not isinstance(entry, str) or not entry:
            raise invalid(self.key("entry"), "must be an entry's key, e.g. '/in-cse'")
        for credential in creds:
            if credential.entry == entry:
                return credential
        raise invalid(self.key("entry"), f"{creds.source} has no entry {entry!r}")

    def _allow(self, value: object) -> tuple[str, ...]:
        key = self.key("allow")
        if value is None:
            return (self.cse_id.sp_relative(),)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise invalid(key, "must be a non-empty list of CSE-IDs and AE-IDs")
        allowed = []
        for text in value:
            if not text.startswith("/"):
                raise invalid(key, f"{text!r}: write SP-relative (/mn-cse-123456) or absolute IDs")
            try:
                allowed.append(normalise_originator(text, self.cse_id, self.in_domain))
            except IdentifierError as exc:
                raise invalid(key, str(exc)) from None
        return tuple(allowed)
