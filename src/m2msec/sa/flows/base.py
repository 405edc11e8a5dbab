"""The base of seed 003's information flows (:class:`Flow`) and the checks of their tables.

Each flow of :mod:`m2msec.sa.flows` names its mandatory elements, the values each
enum-valued element may take in its table and its SA identifiers; :class:`Flow` checks
them at construction and each flow adds its notes in ``_check`` (ValueError).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from m2msec.sa.flows.values import Acceptance, FunctionalEntity, Relationship, Result
from m2msec.sa.records import SaId


# -- checks ------------------------------------------------------------------------------
def _fail(flow: Flow, message: str) -> ValueError:
    return ValueError(f"{flow.NAME} (seed 003, table {flow.TABLE}): {message}")


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, bytes | str | tuple) and len(value) == 0)


class Flow:
    """An information flow of seed 003 (one side of a confirmed flow, or an unconfirmed one).

    ``TABLE`` is its table, ``NAME`` the seed's name, ``RELATIONSHIP`` the relationship it
    crosses from ``SOURCE`` to ``DESTINATION`` (the confirm goes back the other way),
    ``PART`` is ``request``, ``confirm`` or ``unconfirmed``.
    """

    __slots__ = ()
    TABLE: ClassVar[int]
    NAME: ClassVar[str]
    RELATIONSHIP: ClassVar[Relationship]
    SOURCE: ClassVar[FunctionalEntity]
    DESTINATION: ClassVar[FunctionalEntity]
    PART: ClassVar[str] = "request"
    #: Elements that are octet-string SA identifiers (made :class:`SaId`).
    _SA_IDS: ClassVar[tuple[str, ...]] = ()
    #: Elements a value of the table must be given for.
    _MANDATORY: ClassVar[tuple[str, ...]] = ()
    #: Enum-valued elements and the values this table allows.
    _VALUES: ClassVar[Mapping[str, tuple[enum.Enum, ...]]] = MappingProxyType({})

    def __post_init__(self) -> None:
        for name in self._SA_IDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, bytes) or not value:
                raise _fail(self, f"{name} must be a non-empty octet string")
            if not isinstance(value, SaId):
                object.__setattr__(self, name, SaId(value))
        for name in self._MANDATORY:
            if _absent(getattr(self, name)):
                raise _fail(self, f"mandatory element {name} is missing")
        for name, allowed in self._VALUES.items():
            value = getattr(self, name)
            if value is None:
                continue
            kind = type(allowed[0])
            try:
                value = kind(value)
            except ValueError:
                raise _fail(self, f"{name} {value!r} is not a value of the table") from None
            if value not in allowed:
                raise _fail(self, f"{name} {value.value!r} is not allowed in this table")
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        """The table's notes (conditional elements)."""

    def _only_if(self, name: str, condition: bool, note: str) -> None:
        present = not _absent(getattr(self, name))
        if present and not condition:
            raise _fail(self, f"{name} must be absent: {note}")
        if condition and not present:
            raise _fail(self, f"{name} is required: {note}")

    def _at_least_one(self, names: Iterable[str], note: str) -> None:
        names = tuple(names)
        if all(_absent(getattr(self, n)) for n in names):
            raise _fail(self, f"one of {', '.join(names)} is required: {note}")

    def elements(self) -> dict[str, Any]:
        """The service elements present in this flow, by name."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not _absent(value) and value is not False:
                out[f.name] = value
        return out

    @classmethod
    def from_elements(cls: type[_F], elements: Mapping[str, Any]) -> _F:
        """Build the flow from its service elements (as a decoder would), ValueError for
        an unknown element or a missing mandatory one."""
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(elements) - set(known)
        if unknown:
            raise ValueError(
                f"{cls.NAME} (seed 003, table {cls.TABLE}): no element {sorted(unknown)[0]}"
            )
        for name, f in known.items():
            missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if missing and name not in elements:
                raise ValueError(
                    f"{cls.NAME} (seed 003, table {cls.TABLE}): mandatory element {name} is missing"
                )
        return cls(**elements)


_IA = FunctionalEntity.INITIATOR_AGENT
_IM = FunctionalEntity.INITIATOR_SA_MANAGEMENT
_RM = FunctionalEntity.RESPONDER_SA_MANAGEMENT
_RA = FunctionalEntity.RESPONDER_AGENT

_F = TypeVar("_F", bound=Flow)


def values(**allowed: tuple[enum.Enum, ...]) -> Mapping[str, tuple[enum.Enum, ...]]:
    """A flow's ``_VALUES``: each enum-valued element and the values its table allows."""
    return allowed


_SUCCESS_FAILURE: tuple[enum.Enum, ...] = (Result.SUCCESS, Result.FAILURE)
_ACCEPTED_REJECTED: tuple[enum.Enum, ...] = (Acceptance.ACCEPTED, Acceptance.REJECTED)
_ON_SUCCESS = "the note: only when the result is Success"
_ON_FAILURE = "the note: only when the result is Failure"
_ON_REJECTED = "the note: only when the result is Rejected"
