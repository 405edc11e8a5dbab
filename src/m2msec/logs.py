"""How m2msec's servers write their logs: text (as before) or one JSON object per line.

Tracker issue 14 item 7 (docs/operations.md, "Logs"). The one formatter of the project:
:class:`JsonFormatter` writes each record as one JSON object on one line, with

* ``time`` (RFC 3339, UTC, milliseconds, ``Z``), ``level``, ``logger``, ``message``;
* every field a log call passed with ``extra=`` as a field of its own. The association
  lines of the gateway (TLS and DTLS) and of the (D)TLS listeners pass them through
  :func:`sa_fields`: ``sa_id`` (the SA identifier of seed 003), ``peer`` (the identity
  the SA is bound to, or the identity a refused peer offered), ``framework``, ``cause``
  (why it was refused or ended), ``peer_address``, ``key_id``, ``event``;
* ``exception``: the traceback text, when the record carries one.

Keys never reach a log record (common rules; tests/test_log_format.py scans the output of
a gateway for the keys it used): the fields hold identifiers only, a KpsaId, KmId, KcId or
KeId is an identifier, never the key it names. The text format is the one the CLI always
wrote (:data:`TEXT_FORMAT`); the ``extra=`` fields do not show in it, so its lines stay
as they were. Bottom layer: no m2msec import.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

__all__ = [
    "LOG_FORMATS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "configure",
    "sa_fields",
]

LOG_FORMATS: Final = ("text", "json")
"""The values of ``--log-format``."""

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The text lines the ``serve`` commands always wrote."""

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def sa_fields(
    *,
    sa_id: str | None = None,
    peer: str | None = None,
    framework: str | None = None,
    cause: str | None = None,
    **more: object,
) -> dict[str, object]:
    """The ``extra=`` of an association log line: the SA identifier, peer, framework and
    cause (each None when not known, so every association line has all four) and any
    ``more`` identifiers (``peer_address``, ``key_id``, ``event``). Never pass a key."""
    fields: dict[str, object] = {
        "sa_id": sa_id,
        "peer": peer,
        "framework": framework,
        "cause": cause,
    }
    fields.update(more)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure` installs (so that a second call replaces it)."""


def _is_plain_stderr(handler: logging.Handler) -> bool:
    """A plain text handler on standard error (``logging.basicConfig``'s), not a test's."""
    return type(handler) is logging.StreamHandler and handler.stream in (
        sys.stderr,
        sys.__stderr__,
    )


def configure(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Log m2msec's records at ``level`` (``"info"``...) to ``stream`` (standard error).

    ``text``: the lines of :data:`TEXT_FORMAT`, through :func:`logging.basicConfig` when
    nothing handles the root logger yet (as the CLI always did). ``json``: one
    :class:`JsonFormatter` handler on the root logger, in place of a plain text handler on
    standard error (``m2msec -v``'s) and of one an earlier call installed.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    if log_format == "json":
        for plain in [h for h in root.handlers if _is_plain_stderr(h)]:
            root.removeHandler(plain)  # the CLI's basicConfig: JSON replaces its text lines
        handler = _Handler(stream if stream is not None else sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    elif stream is not None:
        handler = _Handler(stream)
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
        root.addHandler(handler)
    elif not root.handlers:
        logging.basicConfig(format=TEXT_FORMAT)
    logging.getLogger("m2msec").setLevel(level.upper())
