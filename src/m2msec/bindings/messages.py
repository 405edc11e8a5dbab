"""oneM2M request and response values shared by the HTTP and CoAP bindings.

TS-0004 clause 6.4 names the request primitive's parameters; both bindings turn what
they receive into a :class:`OneM2MRequest` in HTTP-binding form (the CoAP binding maps
TS-0008 options onto the same header names) and answer an :class:`HttpResponse`, so the
gateway and the MAF/BSF handlers never see which transport carried a request. Response
Status Codes (:class:`RSC`) are TS-0004 clause 6.6, tables 6.6.3.x-1.

RSC to HTTP status (:func:`http_status_for`): TS-0009's mapping, as implemented by the
ACME CSE (TS-0009 is not available to us): 4103 and 4107 -> 403, 4000 -> 400,
4004 and 5103 -> 404, 4005 -> 405, 4008 -> 504, 5000 -> 500, 5001 -> 501; a code
not listed maps by its class (2xxx -> 200, 4xxx -> 400, 5xxx and 6xxx -> 500).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

__all__ = [
    "RSC",
    "HttpResponse",
    "OneM2MRequest",
    "Operation",
    "error_response",
    "http_status_for",
    "media_type_and_ty",
]


class RSC(enum.IntEnum):
    """Response Status Codes used here (TS-0004 tables 6.6.3.3-1, 6.6.3.5-1, 6.6.3.6-1)."""

    OK = 2000
    CREATED = 2001
    DELETED = 2002
    UPDATED = 2004
    BAD_REQUEST = 4000
    RELEASE_VERSION_NOT_SUPPORTED = 4001
    NOT_FOUND = 4004
    OPERATION_NOT_ALLOWED = 4005
    REQUEST_TIMEOUT = 4008
    UNSUPPORTED_MEDIA_TYPE = 4015
    ORIGINATOR_HAS_NO_PRIVILEGE = 4103
    CONFLICT = 4105
    ORIGINATOR_NOT_AUTHENTICATED = 4106
    SECURITY_ASSOCIATION_REQUIRED = 4107
    APP_RULE_VALIDATION_FAILED = 4126
    SERVICE_SUBSCRIPTION_NOT_ESTABLISHED = 4128
    INTERNAL_SERVER_ERROR = 5000
    NOT_IMPLEMENTED = 5001
    TARGET_NOT_REACHABLE = 5103


# TS-0009's RSC -> HTTP status table, as ACME implements it (see the module docstring).
_HTTP_STATUS: dict[int, int] = {
    2000: 200,
    2001: 201,
    2002: 200,
    2004: 200,
    1000: 202,
    4000: 400,
    4001: 501,
    4004: 404,
    4005: 405,
    4008: 504,
    4015: 415,
    4101: 403,
    4102: 400,
    4103: 403,
    4105: 409,
    4106: 403,
    4107: 403,
    4108: 403,
    4117: 403,
    4126: 403,
    4127: 403,
    4128: 403,
    5000: 500,
    5001: 501,
    5103: 404,
    5105: 403,
    5106: 409,
    5107: 404,
    5203: 403,
    5204: 500,
    5205: 403,
    5207: 406,
}


def http_status_for(rsc: int) -> int:
    """The HTTP status that carries Response Status Code ``rsc``."""
    if rsc in _HTTP_STATUS:
        return _HTTP_STATUS[rsc]
    cls = rsc // 1000
    return {1: 202, 2: 200, 4: 400}.get(cls, 500)


class Operation(enum.StrEnum):
    """oneM2M operations and the HTTP methods carrying them (TS-0009, via TS-0004 6.4)."""

    CREATE = "create"  # POST with ty
    RETRIEVE = "retrieve"  # GET
    UPDATE = "update"  # PUT
    DELETE = "delete"  # DELETE
    NOTIFY = "notify"  # POST without ty


def media_type_and_ty(content_type: str | None) -> tuple[str | None, int | None]:
    """``application/json;ty=2`` -> ``("application/json", 2)``.

    Raises ValueError when ``ty`` is present but not a non-negative integer.
    """
    if content_type is None:
        return None, None
    media, *params = content_type.split(";")
    ty: int | None = None
    for param in params:
        name, sep, value = param.strip().partition("=")
        if sep and name.strip().lower() == "ty":
            value = value.strip().strip('"')
            if not value.isdigit() or len(value) > 6:
                raise ValueError(f"invalid resource type ty={value!r} in Content-Type")
            ty = int(value)
    return media.strip().lower() or None, ty


@dataclass(frozen=True, slots=True)
class OneM2MRequest:
    """A complete oneM2M request as received over HTTP.

    ``headers`` keeps every header in arrival order, names in lower case, values decoded
    as Latin-1 (HTTP's octets, losslessly). ``origin``, ``request_id`` and
    ``release_version`` are the ``X-M2M-*`` parameters (None when absent);
    ``resource_type`` the ``ty`` of ``Content-Type``.
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    origin: str | None
    request_id: str | None
    release_version: str | None
    content_type: str | None
    resource_type: int | None
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    @property
    def operation(self) -> Operation | None:
        """The oneM2M operation, or None for a method the binding does not map."""
        if self.method == "POST":
            return Operation.NOTIFY if self.resource_type is None else Operation.CREATE
        return {
            "GET": Operation.RETRIEVE,
            "PUT": Operation.UPDATE,
            "DELETE": Operation.DELETE,
        }.get(self.method)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An HTTP response to send: status, headers (without framing headers) and body."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)

    @property
    def rsc(self) -> int | None:
        for name, value in self.headers:
            if name.lower() == "x-m2m-rsc" and value.isdigit():
                return int(value)
        return None


def error_response(
    rsc: int,
    message: str,
    *,
    request_id: str | None = None,
    release_version: str | None = None,
    http_status: int | None = None,
) -> HttpResponse:
    """A oneM2M error answer: HTTP status, ``X-M2M-RSC``, the echoed ``X-M2M-RI`` and
    ``X-M2M-RVI``, and ``{"m2m:dbg": message}`` as JSON (TS-0004 6.6, debugInfo)."""
    headers = [("X-M2M-RSC", str(int(rsc)))]
    if request_id is not None:
        headers.append(("X-M2M-RI", request_id))
    if release_version is not None:
        headers.append(("X-M2M-RVI", release_version))
    headers.append(("Content-Type", "application/json"))
    body = json.dumps({"m2m:dbg": message}).encode()
    return HttpResponse(http_status or http_status_for(rsc), tuple(headers), body)
