"""The MAF's audit log: who was given which key, who was refused, and when.

TS-0003 8.2.2.3 makes the MAF the party that hands a Kc to Entity B ("Assigning Kc
Lifetime is the responsibility of the MAF"); the operator needs a record of every key
issued, retrieved, refused and de-registered. Each event is one JSON object::

    {"time": "2026-11-23T10:00:00.123Z", "event": "key-issued",
     "kcId": "9f...@maf.example.com", "kmId": "ae1@maf.example.com",
     "target": "//in.provider.com/in-cse", "expires": "20261124T100000", ...}

Fields are limited to :data:`FIELDS` and their values to short text and integers
(:func:`audit_record`): a record cannot carry bytes, so it cannot carry a key.

Where records go (:mod:`m2msec.servers.maf`): into the ``audit`` table of the MAF store, in
the same transaction as the change they record (a key is never committed without its
"key-issued" record, and the record is committed before the answer is sent); then, as JSON
lines, into ``audit.log`` beside the store (:class:`AuditLog`, created 0600, one
``write()`` per batch on an ``O_APPEND`` descriptor so lines never interleave), a copy for
``tail -f`` and log shippers. ``m2msec maf audit`` prints the table.
"""

from __future__ import annotations

import enum
import json
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from m2msec.errors import StoreError
from m2msec.paths import ensure_private_dir
from m2msec.store.db import Closing

__all__ = ["FIELDS", "AuditEvent", "AuditLog", "audit_record", "read_audit_log"]


class AuditEvent(enum.StrEnum):
    """What happened."""

    KEY_ISSUED = "key-issued"  # 8.8.2.7
    KEY_REFUSED = "key-registration-refused"
    KEY_UPDATED = "key-updated"  # 8.8.2.9
    KEY_DEREGISTERED = "key-deregistered"  # 8.8.2.10 (and removal of its client)
    KEY_RETRIEVED = "key-retrieved"  # 8.8.2.8
    RETRIEVAL_REFUSED = "key-retrieval-refused"
    CLIENT_REGISTERED = "client-registered"  # 8.8.2.3
    CLIENT_UPDATED = "client-registration-updated"  # 8.8.2.5
    CLIENT_DEREGISTERED = "client-deregistered"  # 8.8.2.6
    CLIENT_REFUSED = "client-request-refused"
    HANDSHAKE_REFUSED = "handshake-refused"  # MAF Handshake or retrieval channel


#: The only fields a record may hold (besides ``time`` and ``event``).
FIELDS: Final = frozenset(
    {
        "kcId",  # MAF Key Identifier <relativeKeyID>@<MAF-FQDN> (TS-0003 10.3.5)
        "kmId",  # the Source MAF Client (KmId)
        "target",  # targetIDs, comma-separated
        "retriever",  # the Target MAF Client's authenticated identity
        "entityId",  # Entity A's CSE-ID/AE-ID configured for the KmId
        "regId",  # mafClientRegID
        "adminFQDN",
        "suid",
        "expires",  # expirationTime
        "keys",  # number of keys de-registered with a client
        "rsc",  # the Response Status Code answered
        "reason",  # why a request was refused (text safe to show)
        "source",  # "exporter" or "keyValue"
        "listener",  # "client" or "retrieval"
        "peer",  # network address
        "sa",  # SA identifier of the TLS session (an exporter value, never a key)
    }
)
_MAX_TEXT: Final = 512


def _now_text() -> str:
    v = datetime.now(UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
        f".{v.microsecond // 1000:03d}Z"
    )


def audit_record(event: AuditEvent, **fields: str | int | None) -> dict[str, str | int]:
    """One audit record; None values are left out. Unknown field names and values that
    are not short text or integers raise ValueError (so key bytes can never be logged)."""
    record: dict[str, str | int] = {"time": _now_text(), "event": event.value}
    for name, value in fields.items():
        if name not in FIELDS:
            raise ValueError(f"{name!r} is not an audit field")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"audit field {name!r} must be text or an integer")
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            value = value[: _MAX_TEXT - 3] + "..."
        record[name] = value
    return record


class AuditLog(Closing):
    """Append-only JSON-lines audit file (module documentation). Thread-safe."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.fsync = fsync
        self._lock = threading.Lock()
        ensure_private_dir(self.path.parent)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            self._fd: int | None = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open audit log {self.path}: {exc.strerror}") from None
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise StoreError(f"audit log {self.path} is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(self._fd, 0o600)

    def write(self, records: Iterable[Mapping[str, str | int]]) -> None:
        """Append ``records`` with one write, then fsync (when configured)."""
        data = "".join(
            json.dumps(dict(r), separators=(",", ":"), ensure_ascii=False) + "\n" for r in records
        ).encode("utf-8")
        if not data:
            return
        with self._lock:
            if self._fd is None:
                raise StoreError(f"audit log {self.path} is closed")
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                raise StoreError(f"cannot write audit log {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_audit_log(path: str | os.PathLike[str]) -> list[dict[str, str | int]]:
    """Every complete record of an audit file (a torn last line, after a crash, is skipped)."""
    out: list[dict[str, str | int]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out
