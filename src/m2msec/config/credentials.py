"""An initiator's credentials table: which (KpsaId, Kpsa), certificate, KmId or GBA setting
belongs to which peer (TR-0038 7.1.2; TS-0003 8.2.2 Credential Configuration of Entity A).

TR-0038 7.1.2 configures each light (Entity A) "with a pair of credentials (psk,
psk_identity) associated with the CSE-ID" of the peer it contacts. An initiator that talks
to several peers holds a table of such pairs, as aiocoap's ``credentials`` map does for
CoAP clients (target URI pattern -> credential). This module is that table: read from TOML
(by default ``<data dir>/credentials.toml``, see :func:`default_credentials_path`), checked
whole on load, and asked :meth:`Credentials.for_peer` which entry belongs to a peer.

The file (docs/credentials.md)::

    [peers."https://192.168.1.10:8443"]     # a URL pattern ...
    id_b = "/mn-cse-123456"                 # IdB, checked against the association
    psk = { psk_identity = "AE123456789012-Light@in.provider.com", key_file = "light.hex" }

    [peers."/in-cse"]                       # ... or the peer's CSE-ID / AE-ID (IdB)
    certificate = { cert = "me.pem", key = "me.key", ca = "ca.pem" }

Each entry has exactly one framework table: ``psk`` (8.2.2.1), ``certificate`` (8.2.2.2),
``maf`` (8.2.2.3) or ``gba`` (seed 000 8.2.3.2), and optionally ``id_b``, ``server_name``,
``in_domain`` and ``tls12``.

Matching (:meth:`Credentials.for_peer`), most specific first:

1. a URL pattern naming the host and the port (``https://gw:8443``; no port = the
   scheme's default port, 443 or 5684);
2. an entry keyed by the peer's IdB (``/mn-cse-123456``), when the caller knows IdB;
3. a URL pattern naming the host, any port (``https://gw:*``);
4. a host wildcard ``*.suffix`` (the longest suffix first; a named port before ``*``);
5. ``*`` as host (``https://*:*``), then the entry ``"*"`` (any peer).

Within one step an entry naming the URL's own scheme (``https``, ``coaps``) beats one
naming its transport (``tls`` for https, ``dtls`` for coaps). A URL entry whose ``id_b``
differs from the IdB asked for does not match: it belongs to another peer. Two entries
that would name the same peers are refused on load, so the order is total.

Security of the file: a key is referenced (``key_file``, ``km_file``, ``k_file``,
``opc_file``: hexadecimal text, read only when the entry is used, with a warning when others
may read it) or, for PSK and MAF, taken from the Enrolee store by KeID
(``m2msec enrol``). A literal key in the table (``key``, ``km``, ``k``, ``opc``) is refused
unless the table file is private (no group or other permission bits, i.e. 0600); a table
that group or others may write is refused whatever it holds (it says which key to use for
which peer). Errors name the file, the entry and the field, never a key.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from m2msec.config.loader import read_toml
from m2msec.config.peer_patterns import DEFAULT_PORTS, PeerPattern, peer_key
from m2msec.config.values import boolean, file_path, invalid, unknown_key
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.frameworks.gba import is_btid
from m2msec.ids import check_fqdn, parse_entity_id
from m2msec.keyids import KeId, KmId, KpsaId
from m2msec.paths import state_path

__all__ = [
    "CREDENTIALS_FILE_NAME",
    "CertificateSettings",
    "Credential",
    "Credentials",
    "GbaSettings",
    "KeySource",
    "MafSettings",
    "PeerPattern",
    "PskSettings",
    "default_credentials_path",
    "is_gba_ke_id",
    "is_ke_id",
    "load_credentials",
    "parse_credentials",
    "peer_key",
]

CREDENTIALS_FILE_NAME: Final = "credentials.toml"
COMMAND_LINE: Final = "<command line>"

_MAX_KEY_OCTETS: Final = 64


def default_credentials_path() -> Path:
    """``<data dir>/credentials.toml`` (``$M2MSEC_HOME``, see :mod:`m2msec.paths`)."""
    return state_path(CREDENTIALS_FILE_NAME)


def is_gba_ke_id(text: str) -> bool:
    """Whether ``text`` is the KeID of a GBA bootstrap (seed 004 8.3.3.1): a B-TID,
    ``base64(RAND)@BSF``, used verbatim (docs/readings.md A-25), not an ordinary KpsaID."""
    # A B-TID's "=" padding breaks 10.6; ordinary KpsaIDs still need their key given.
    try:
        KpsaId.parse(text)
    except IdentifierError:
        return is_btid(text)
    return False


def is_ke_id(text: str) -> bool:
    """Whether ``text`` is a KeID (10.3.4) or a B-TID (a GBA KeID, seed 004 8.3.3.1), whose
    Kpsa or Km the Enrolee store may hold."""
    try:
        KeId.parse(text)
    except IdentifierError:
        return is_gba_ke_id(text)
    return True


# ----------------------------------------------------------------- the credential values


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where a secret comes from: its octets (a literal in a private table, or read from the
    command line or stdin), a file of hexadecimal text, or, with neither, the Enrolee store
    by the KeID that names the key. Never shows the octets in ``repr``."""

    value: bytes | None = field(default=None, repr=False)
    file: Path | None = None

    @property
    def from_enrolee_store(self) -> bool:
        return self.value is None and self.file is None

    def describe(self) -> str:
        if self.value is not None:
            return "given"
        if self.file is not None:
            return f"file {self.file}"
        return "Enrolee store"


@dataclass(frozen=True, slots=True)
class PskSettings:
    """Provisioned symmetric key (TS-0003 8.2.2.1): KpsaId and where Kpsa is."""

    psk_identity: str
    key: KeySource
    name: Literal["psk"] = "psk"

    def key_id(self) -> str:
        return self.psk_identity


@dataclass(frozen=True, slots=True)
class CertificateSettings:
    """Certificate-based (TS-0003 8.2.2.2): our certificate, private key and trust anchors."""

    cert: Path
    key: Path
    ca: Path
    name: Literal["certificate"] = "certificate"

    def key_id(self) -> str:
        return f"certificate {self.cert.name}"


@dataclass(frozen=True, slots=True)
class MafSettings:
    """MAF-based (TS-0003 8.2.2.3, seed 001): the MAF's client listener, KmID and where Km
    is, the targetIDs entry (default IdB) and, for a CSE as Entity A, its CSE-ID."""

    host: str
    port: int
    km_id: str
    km: KeySource
    maf_fqdn: str | None = None
    target_id: str | None = None
    cse_id: str | None = None
    name: Literal["maf"] = "maf"

    def key_id(self) -> str:
        return f"KmID {self.km_id}"


@dataclass(frozen=True, slots=True)
class GbaSettings:
    """GBA-based (seed 000 8.2.3.2): the BSF's Ub URL, the IMPI, the USIM's K and OPc, an
    initial SQN_MS (hex) and GBA_U."""

    bsf: str
    impi: str
    k: KeySource
    opc: KeySource
    sqn: str | None = None
    uicc: bool = False
    name: Literal["gba"] = "gba"

    def key_id(self) -> str:
        return f"IMPI {self.impi}"


Framework = PskSettings | CertificateSettings | MafSettings | GbaSettings


@dataclass(frozen=True, slots=True)
class Credential:
    """What Entity A needs to establish an SA with one peer: a framework's settings and the
    peer-side settings (IdB, SNI, IN domain, TLS 1.2 only). ``entry`` is the table entry it
    came from (its pattern) and ``source`` the file, or both ``<command line>``."""

    framework: Framework
    id_b: str | None = None
    server_name: str | None = None
    in_domain: str | None = None
    tls12: bool = False
    entry: str = COMMAND_LINE
    source: str = COMMAND_LINE

    def describe(self) -> str:
        """One line naming the entry and what it holds, never a key."""
        where = "the command line" if self.entry == COMMAND_LINE else (
            f"entry {self.entry!r} of {self.source}"
        )  # fmt: skip
        return f"{where}: {self.framework.name}, {self.framework.key_id()}"

    def overridden(
        self,
        *,
        id_b: str | None = None,
        server_name: str | None = None,
        in_domain: str | None = None,
        tls12: bool = False,
    ) -> Credential:
        """This credential with the given (not None, or true) values in place of its own:
        the command line wins over the table."""
        return replace(
            self,
            id_b=id_b if id_b is not None else self.id_b,
            server_name=server_name if server_name is not None else self.server_name,
            in_domain=in_domain if in_domain is not None else self.in_domain,
            tls12=tls12 or self.tls12,
        )


# ----------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class _Entry:
    pattern: PeerPattern
    credential: Credential


class Credentials:
    """An initiator's credentials table (module docstring): :meth:`for_peer` finds the entry
    that belongs to a peer. Built by :func:`load_credentials` (or from parsed ``entries``)."""

    def __init__(self, entries: Mapping[PeerPattern, Credential], source: str) -> None:
        self.source = source
        seen: dict[tuple[object, ...], str] = {}
        for pattern in entries:
            other = seen.setdefault(pattern.identity, pattern.text)
            if other != pattern.text:
                raise ConfigurationError(
                    f"{source}: entries {other!r} and {pattern.text!r} name the same peers"
                )
        self._entries = tuple(_Entry(p, c) for p, c in entries.items())

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Credential]:
        return (entry.credential for entry in self._entries)

    def __repr__(self) -> str:
        return f"Credentials({self.source!r}, {len(self)} entries)"

    def for_peer(self, url: str, id_b: str | None = None) -> Credential | None:
        """The most specific entry for the peer at ``url`` (``https://``, ``coaps://``,
        ``tls://`` or ``dtls://HOST[:PORT]``), whose IdB is ``id_b`` if known; None when
        no entry matches. The credential's ``id_b`` is the entry's (for an entry keyed by
        IdB, that IdB). ValueError for a URL that is not one of those."""
        scheme, host, port = _peer_address(url)
        entity = None
        if id_b is not None:
            try:
                entity = peer_key(id_b)
            except IdentifierError as exc:
                raise ValueError(str(exc)) from None
        best: tuple[tuple[int, int, int, int], _Entry] | None = None
        for entry in self._entries:
            rank = entry.pattern.rank(scheme, host, port, entity)
            if rank is None:
                continue
            own = entry.credential.id_b
            if own is not None and entity is not None and peer_key(own) != entity:
                continue  # an entry for another peer at this address
            if best is None or rank < best[0]:
                best = (rank, entry)
        return None if best is None else best[1].credential


def _peer_address(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r}: a peer URL is https://, coaps://, tls:// or dtls://HOST:PORT")
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


# ----------------------------------------------------------------- loading

_COMMON_KEYS: Final = frozenset({"id_b", "server_name", "in_domain", "tls12"})
_FRAMEWORK_KEYS: Final = {
    "psk": frozenset({"psk_identity", "key", "key_file"}),
    "certificate": frozenset({"cert", "key", "ca"}),
    "maf": frozenset({"url", "maf_fqdn", "km_id", "km", "km_file", "target_id", "cse_id"}),
    "gba": frozenset({"bsf", "impi", "k", "k_file", "opc", "opc_file", "sqn", "uicc"}),
}


def load_credentials(
    path: str | Path | None = None, *, required: bool = True
) -> Credentials | None:
    """The table at ``path`` (default :func:`default_credentials_path`). A missing file is an
    error when ``required`` (an explicit ``--credentials FILE``), else None. Errors are
    ConfigurationError naming the file, the entry and the field."""
    file = Path(path).expanduser() if path is not None else default_credentials_path()
    if not file.exists() and not required:
        return None
    data = read_toml(file)  # names the file when missing or invalid
    mode = stat.S_IMODE(file.stat().st_mode)
    if os.name == "posix" and mode & 0o022:
        raise ConfigurationError(
            f"{file}: group or others may write it (mode {mode:04o}): it says which key "
            f"to use for which peer; chmod 600 {file}"
        )
    private = os.name != "posix" or not mode & 0o077
    try:
        return parse_credentials(data, base=file.resolve().parent, source=str(file),
                                 private=private, mode=mode)  # fmt: skip
    except ConfigurationError as exc:
        raise ConfigurationError(f"{file}: {exc}") from None


def parse_credentials(
    data: Mapping[str, Any], *, base: Path, source: str, private: bool, mode: int = 0o600
) -> Credentials:
    """Validate a credentials document (module docstring); relative paths under ``base``;
    literal keys only when the document is ``private``."""
    for key in data:
        if key != "peers":
            raise unknown_key(key, {"peers"}, "")
    peers = data.get("peers", {})
    if not isinstance(peers, dict):
        raise ConfigurationError('peers must be a table of entries, [peers."PATTERN"]')
    entries: dict[PeerPattern, Credential] = {}
    for text, table in peers.items():
        where = f"peers.{_quoted(text)}"
        try:
            pattern = PeerPattern.parse(text)
        except ConfigurationError as exc:
            raise invalid(where, str(exc)) from None
        if not isinstance(table, dict):
            raise invalid(where, "must be a table (an entry)")
        parser = _EntryParser(where, base, private, mode)
        entries[pattern] = parser.credential(text, pattern, table, source)
    return Credentials(entries, source)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(slots=True)
class _EntryParser:
    where: str
    base: Path
    private: bool
    mode: int

    def credential(
        self, text: str, pattern: PeerPattern, table: Mapping[str, Any], source: str
    ) -> Credential:
        known = _COMMON_KEYS | frozenset(_FRAMEWORK_KEYS)
        for key in table:
            if key not in known:
                raise unknown_key(key, set(known), self.where)
        given = [name for name in _FRAMEWORK_KEYS if name in table]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise invalid(
                self.where, f"needs exactly one of psk, certificate, maf, gba (found {found})"
            )
        name = given[0]
        section = table[name]
        if not isinstance(section, dict):
            raise invalid(f"{self.where}.{name}", "must be a table")
        for key in section:
            if key not in _FRAMEWORK_KEYS[name]:
                raise unknown_key(key, set(_FRAMEWORK_KEYS[name]), f"{self.where}.{name}")
        framework: Framework
        if name == "psk":
            framework = self._psk(section)
        elif name == "certificate":
            framework = self._certificate(section)
        elif name == "maf":
            framework = self._maf(section)
        else:
            framework = self._gba(section)
        id_b = self._identity(table, "id_b")
        if pattern.entity is not None:
            if id_b is not None:
                raise invalid(f"{self.where}.id_b", "the entry is keyed by IdB already")
            id_b = text
        return Credential(
            framework,
            id_b=id_b,
            server_name=self._fqdn(table, "server_name"),
            in_domain=self._fqdn(table, "in_domain"),
            tls12=boolean(table.get("tls12", False), f"{self.where}.tls12"),
            entry=text,
            source=source,
        )

    # -- values

    def _key(self, field_name: str) -> str:
        return f"{self.where}.{field_name}"

    def _text(self, table: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
        value = table.get(name)
        if value is None:
            if required:
                raise invalid(self._key(name), "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise invalid(self._key(name), f"must be a non-empty string, not {value!r}")
        return value.strip()

    def _identity(self, table: Mapping[str, Any], name: str) -> str | None:
        value = self._text(table, name)
        if value is not None:
            try:
                parse_entity_id(value)
            except IdentifierError as exc:
                raise invalid(self._key(name), str(exc)) from None
        return value

    def _fqdn(self, table: Mapping[str, Any], name: str) -> str | None:
        value = self._text(table, name)
        if value is not None:
            try:
                check_fqdn(value, name)
            except IdentifierError as exc:
                raise invalid(self._key(name), str(exc)) from None
        return value

    def _secret(
        self, table: Mapping[str, Any], prefix: str, literal: str, file: str, what: str
    ) -> KeySource | None:
        """A key given as ``literal`` (hex, only in a private file) or as ``file``."""
        if literal in table and file in table:
            raise invalid(self._key(f"{prefix}.{literal}"), f"give {literal} or {file}, not both")
        if file in table:
            return KeySource(file=file_path(table[file], self._key(f"{prefix}.{file}"), self.base))
        if literal not in table:
            return None
        key = self._key(f"{prefix}.{literal}")
        if not self.private:
            raise invalid(
                key,
                f"a literal {what} needs a private file, and this one is mode "
                f"{self.mode:04o}: chmod 600 it, or use {file}",
            )
        value = table[literal]
        if not isinstance(value, str):
            raise invalid(key, f"must be hexadecimal text ({what})")
        try:
            octets = bytes.fromhex("".join(value.split()))
        except ValueError:
            raise invalid(key, f"the {what} is not hexadecimal (two digits per octet)") from None
        if not 0 < len(octets) <= _MAX_KEY_OCTETS:
            raise invalid(key, f"the {what} must be 1 to {_MAX_KEY_OCTETS} octets")
        return KeySource(value=octets)

    # -- frameworks

    def _psk(self, t: Mapping[str, Any]) -> PskSettings:
        identity = self._text(t, "psk_identity", required=False)
        if identity is None:
            raise invalid(self._key("psk.psk_identity"), "missing: the KpsaId")
        try:
            KpsaId.parse(identity, verbatim=is_gba_ke_id(identity))
        except IdentifierError as exc:
            raise invalid(self._key("psk.psk_identity"), str(exc)) from None
        key = self._secret(t, "psk", "key", "key_file", "Kpsa")
        if key is None:
            if not is_ke_id(identity):
                raise invalid(
                    self._key("psk"),
                    "give key_file (or key, in a private file); only a KeID of m2msec enrol "
                    "as psk_identity takes its Kpsa from the Enrolee store",
                )
            key = KeySource()
        return PskSettings(identity, key)

    def _certificate(self, t: Mapping[str, Any]) -> CertificateSettings:
        for name in ("cert", "key", "ca"):
            if name not in t:
                raise invalid(self._key(f"certificate.{name}"), "missing")
        files = {
            name: file_path(t[name], self._key(f"certificate.{name}"), self.base)
            for name in ("cert", "key", "ca")
        }
        return CertificateSettings(files["cert"], files["key"], files["ca"])

    def _maf(self, t: Mapping[str, Any]) -> MafSettings:
        url_key = self._key("maf.url")
        url = self._text(t, "url")
        if url is None:
            raise invalid(url_key, "missing: the MAF's client listener, tls://HOST:PORT")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            port = None
            parts = urlsplit("")
        if parts.scheme.lower() != "tls" or not parts.hostname or not port:
            raise invalid(url_key, f"{url!r}: write tls://HOST:PORT (the MAF's client listener)")
        km_id = self._text(t, "km_id")
        if km_id is None:
            raise invalid(self._key("maf.km_id"), "missing: our KmID")
        try:
            KmId.parse(km_id, verbatim=is_gba_ke_id(km_id))
        except IdentifierError as exc:
            raise invalid(self._key("maf.km_id"), str(exc)) from None
        km = self._secret(t, "maf", "km", "km_file", "Km")
        if km is None:
            if not is_ke_id(km_id):
                raise invalid(
                    self._key("maf"),
                    "give km_file (or km, in a private file); only a KeID of m2msec enrol "
                    "as km_id takes its Km from the Enrolee store",
                )
            km = KeySource()
        sub = _EntryParser(f"{self.where}.maf", self.base, self.private, self.mode)
        return MafSettings(
            host=parts.hostname,
            port=port,
            km_id=km_id,
            km=km,
            maf_fqdn=sub._fqdn(t, "maf_fqdn"),
            target_id=sub._identity(t, "target_id"),
            cse_id=sub._identity(t, "cse_id"),
        )

    def _gba(self, t: Mapping[str, Any]) -> GbaSettings:
        sub = _EntryParser(f"{self.where}.gba", self.base, self.private, self.mode)
        bsf = sub._text(t, "bsf", required=True)
        impi = sub._text(t, "impi", required=True)
        assert bsf is not None and impi is not None
        if urlsplit(bsf).scheme.lower() not in ("http", "https"):
            raise invalid(sub._key("bsf"), f"{bsf!r}: write the BSF's Ub URL, http://HOST:PORT")
        keys = []
        for literal, what in (("k", "K"), ("opc", "OPc")):
            found = self._secret(t, "gba", literal, f"{literal}_file", what)
            if found is None:
                raise invalid(sub._key(f"{literal}_file"), f"missing: the USIM's {what}")
            keys.append(found)
        sqn = sub._text(t, "sqn")
        if sqn is not None:
            try:
                if len(bytes.fromhex(sqn)) != 6:
                    raise ValueError
            except ValueError:
                raise invalid(sub._key("sqn"), "SQN_MS is 6 octets in hexadecimal") from None
        return GbaSettings(bsf, impi, keys[0], keys[1], sqn,
                           boolean(t.get("uicc", False), sub._key("uicc")))  # fmt: skip
