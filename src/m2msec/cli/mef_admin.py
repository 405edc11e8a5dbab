"""``m2msec mef`` store commands: the MEF's Bootstrap Instruction Configuration (TS-0003
8.3.2.1, seed 004) on :class:`~m2msec.mef.store.MefStore`, no server needed.

* ``add-enrolee KPMID (--key-file F | --key -) --enrolee-id ID (--maf-id FQDN | --enrolee-b
  ID [--naf-fqdn FQDN]) [--lifetime 30d]``, or ``add-enrolee --cert-identity ID ...`` for a
  certificate bootstrap (8.3.2.2); ``list-enrolees``, ``remove-enrolee`` (also erases its
  enrolments), ``import FILE.csv`` (all rows checked first, one transaction);
* ``allow-target ID [--kind maf|enrolee-b]``: an Enrolment Target that may fetch
  credentials; ``list-targets``, ``remove-target``;
* ``keys``: the enrolments (KeID, Enrolee-ID, target, Enrolment Expiry), never Ke;
  ``audit``: the audit records.

Keys are never printed and never taken as an argument: ``--key -`` reads standard input (a
hidden prompt on a terminal), ``--key @FILE`` or ``--key-file`` a file (a warning if others
may read it); a literal ``--key HEX`` is refused (docs/cli.md "Secret options"). Every list
takes ``--json`` (JSON lines, one object per row).
Exit status, as ``m2msec maf``: 0 on success, 1 when the store refuses (unknown, duplicate,
wrong key-encryption key), 2 for malformed input (ids rules, docs/readings.md A-27).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from m2msec.cli.common import (
    JsonOption,
    done,
    import_file_argument,
    option,
    print_audit,
    print_listing,
    stderr_console,
    stdout_console,
    store_errors,
    store_option,
    utc_time,
)
from m2msec.cli.secrets import secret_file_option, secret_option, secret_text
from m2msec.errors import ConfigurationError, UnknownCredentialError
from m2msec.ids import derivation_identity
from m2msec.mef.importer import (
    DEFAULT_LIFETIME,
    load_enrolee_csv,
    make_enrolee,
    parse_kpm_hex,
    parse_lifetime,
)
from m2msec.mef.records import Bootstrap, Enrolee, Enrolment, EnrolmentTarget, TargetKind
from m2msec.mef.store import MefStore

__all__ = ["register"]

_R = TypeVar("_R")

#: From this many rows an import reports its progress on stderr.
PROGRESS_FROM: Final = 1000

StoreOption = Annotated[
    str | None,
    store_option(
        "MEF store file, sqlite:///absolute/path or postgresql://user@host/db URL "
        "(default: mef.db in the m2msec data directory)."
    ),
]
KpmIdArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="KPMID",
        help="The Enrolee's KpmID, its psk_identity at the bootstrap handshake (8.3.2.1).",
        show_default=False,
    ),
]
CertIdentityOption = Annotated[
    str | None,
    option(
        "--cert-identity",
        metavar="ID",
        help="Instead of a KpmID: the CSE-ID or AE-ID the Enrolee's certificate names "
        "(certificate-based bootstrap, 8.3.2.2).",
    ),
]
TargetArgument = Annotated[
    str, typer.Argument(metavar="ID", help="A MAF-ID (an FQDN), or a CSE-ID or AE-ID.")
]
KindOption = Annotated[
    str | None,
    option(
        "--kind",
        metavar="KIND",
        help="maf or enrolee-b (default: enrolee-b for an id starting with '/', else maf).",
    ),
]
NafOption = Annotated[
    str | None,
    option("--naf-fqdn", metavar="FQDN", help="The NAF FQDN of an AE as Enrolee B (A-27)."),
]
# The Enrolment Target options, shared with ``m2msec enrol``.
MafIdOption = Annotated[
    str | None,
    option("--maf-id", metavar="FQDN", help="Enrolment Target: this MAF (Km, 10.3.2)."),
]
EnroleeBOption = Annotated[
    str | None,
    option("--enrolee-b", metavar="ID", help="Enrolment Target: this CSE or AE as Enrolee B "
           "(Kpsa, 10.3.3)."),
]  # fmt: skip


def _open(store: str | None) -> closing[MefStore]:
    return closing(MefStore(store))


def read_kpm(
    key: str | None, key_file: Path | None, names: tuple[str, str] = ("--key", "--key-file")
) -> bytes:
    """A Kpm from ``-`` (stdin, a hidden prompt on a terminal), ``@FILE`` or the file
    option (a warning when others may read it), never a literal (:func:`secret_text` with
    ``literal=False``); ``names`` are the two options in messages (``m2msec enrol`` too)."""
    text = secret_text(key, names[0], file=key_file, prompt="Kpm (hexadecimal)", literal=False)
    if text is None:
        raise ConfigurationError(f"give the Kpm as {names[0]} - (standard input) or {names[1]}")
    return parse_kpm_hex(text)


def _lifetime_text(lifetime: timedelta) -> str:
    seconds = int(lifetime.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _target_json(target: EnrolmentTarget) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": target.kind.value, "id": target.canonical}
    if target.naf_fqdn is not None:
        out["nafFQDN"] = target.naf_fqdn
    return out


def _target_text(target: EnrolmentTarget) -> str:
    return str(target) + (f" (NAF {target.naf_fqdn})" if target.naf_fqdn else "")


def _bootstrap(kpm_id: str | None, cert_identity: str | None) -> tuple[Bootstrap, str]:
    if (kpm_id is None) == (cert_identity is None):
        raise ConfigurationError("give exactly one of KPMID and --cert-identity")
    if cert_identity is not None:
        return Bootstrap.CERTIFICATE, derivation_identity(cert_identity, enrolee_b=True)
    assert kpm_id is not None
    return Bootstrap.PSK, kpm_id


def _target(target_id: str, kind: str | None, naf_fqdn: str | None) -> EnrolmentTarget:
    if kind is None:
        kind = TargetKind.ENROLEE_B if target_id.startswith("/") else TargetKind.MAF
    try:
        target_kind = TargetKind(kind)
    except ValueError:
        raise ConfigurationError(f"unknown target kind {kind!r}; maf or enrolee-b") from None
    return EnrolmentTarget(target_kind, target_id, naf_fqdn)


def _read(store: str | None, read: Callable[[MefStore], _R]) -> tuple[_R, str]:
    """``read`` the store; its rows and the store's location."""
    with store_errors(), _open(store) as st:
        return read(st), st.location


# ----------------------------------------------------------------------------- Enrolees


def add_enrolee(
    enrolee_id: Annotated[
        str, option("--enrolee-id", metavar="ID", help="The Enrolee's CSE-ID or AE-ID.")
    ],
    kpm_id: KpmIdArgument = None,
    key_file: Annotated[
        Path | None, secret_file_option("--key-file", "the Kpm in hexadecimal")
    ] = None,
    key: Annotated[
        str | None, secret_option("--key", "The Kpm in hexadecimal", literal=False)
    ] = None,
    cert_identity: CertIdentityOption = None,
    maf_id: MafIdOption = None,
    enrolee_b: EnroleeBOption = None,
    naf_fqdn: NafOption = None,
    lifetime: Annotated[
        str,
        option("--lifetime", metavar="TIME", help="Ke's lifetime: 30d (default), 12h, 3600s."),
    ] = _lifetime_text(DEFAULT_LIFETIME),
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite an Enrolee with this credential.")
    ] = False,
    store: StoreOption = None,
) -> None:
    """Configure an Enrolee: its bootstrap credential, Enrolee-ID, Enrolment Target, lifetime."""
    with store_errors():
        if cert_identity is None and (key is None) == (key_file is None):
            raise ConfigurationError("give exactly one of --key-file and --key -")
        if cert_identity is not None and (key is not None or key_file is not None):
            raise ConfigurationError("a certificate Enrolee (--cert-identity) has no Kpm")
        _bootstrap(kpm_id, cert_identity)
        kpm = None if cert_identity is not None else read_kpm(key, key_file)
        enrolee = make_enrolee(
            kpm_id=kpm_id,
            kpm=kpm,
            cert_identity=cert_identity,
            enrolee_id=enrolee_id,
            maf_id=maf_id,
            enrolee_b=enrolee_b,
            naf_fqdn=naf_fqdn,
            lifetime=parse_lifetime(lifetime),
        )
        with _open(store) as st:
            st.add_enrolee(enrolee, replace=replace)
    what = f"{len(kpm)}-octet Kpm" if kpm is not None else "certificate"
    done(
        "added Enrolee",
        f"{enrolee.bootstrap.value}:{enrolee.bootstrap_id}",
        f" ({what}, Enrolee-ID {enrolee.enrolee_id}, target {_target_text(enrolee.target)}, "
        f"lifetime {_lifetime_text(enrolee.lifetime)})",
    )


def _enrolee_json(e: Enrolee) -> dict[str, Any]:
    return {
        "bootstrap": e.bootstrap.value,
        "bootstrapId": e.bootstrap_id,
        "enroleeId": e.enrolee_id,
        "target": _target_json(e.target),
        "lifetime": int(e.lifetime.total_seconds()),
        "created": utc_time(e.created_at),
    }


def _enrolee_cells(e: Enrolee) -> tuple[str, ...]:
    return (
        e.bootstrap.value,
        e.bootstrap_id,
        e.enrolee_id,
        _target_text(e.target),
        _lifetime_text(e.lifetime),
        utc_time(e.created_at),
    )


def list_enrolees(as_json: JsonOption = False, store: StoreOption = None) -> None:
    """List the Enrolees: bootstrap credential, Enrolee-ID, target, lifetime (never Kpm)."""
    enrolees, where = _read(store, MefStore.list_enrolees)
    shown = print_listing(
        enrolees,
        title=f"MEF Enrolees {where}",
        columns=("bootstrap", "KpmID / identity", "Enrolee-ID", "target", "lifetime", "added"),
        cells=_enrolee_cells,
        to_json=_enrolee_json,
        as_json=as_json,
        empty=f"no Enrolees in {where}",
    )
    if shown and not as_json:
        stdout_console().print(Text(f"{shown} Enrolee(s)"))


def remove_enrolee(
    kpm_id: KpmIdArgument = None,
    cert_identity: CertIdentityOption = None,
    store: StoreOption = None,
) -> None:
    """Remove an Enrolee and erase its enrolments (their KeIDs stop resolving at once)."""
    with store_errors():
        bootstrap, bootstrap_id = _bootstrap(kpm_id, cert_identity)
        with _open(store) as st:
            found, erased = st.remove_enrolee(bootstrap, bootstrap_id)
        if not found:
            raise UnknownCredentialError(f"no Enrolee {bootstrap.value}:{bootstrap_id}")
    done("removed Enrolee", f"{bootstrap.value}:{bootstrap_id}", f" ({erased} enrolment(s) erased)")


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """Report an import's progress on stderr: a bar on a terminal, else a line per tenth."""
    console = stderr_console()
    if total < PROGRESS_FROM:
        yield lambda _done: None
    elif console.is_terminal:
        columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("import", total=total)
            yield lambda n: bar.update(task, completed=n)
    else:
        shown = [0]

        def line(n: int) -> None:
            if n * 10 // total > shown[0] * 10 // total or n == total:
                shown[0] = n
                console.print(Text(f"importing: {n}/{total} Enrolees"))

        yield line


def import_enrolees(
    file: Annotated[
        Path,
        import_file_argument(
            "CSV with columns kpm_id,kpm,enrolee_id,maf_id,enrolee_b,naf_fqdn,lifetime.",
            "FILE.csv",
        ),
    ],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite Enrolees whose KpmID is configured.")
    ] = False,
    store: StoreOption = None,
) -> None:
    """Import Enrolees: every row is checked first, then all are written in one transaction."""
    with store_errors():
        enrolees = load_enrolee_csv(file)
        with _open(store) as st, _progress(len(enrolees)) as progress:
            written = st.add_enrolees(enrolees, replace=replace, progress=progress)
    stdout_console().print(Text(f"imported {written} Enrolee(s) from {file}", style="green"))


# ----------------------------------------------------------------------------- targets


def allow_target(
    target_id: TargetArgument,
    kind: KindOption = None,
    naf_fqdn: NafOption = None,
    store: StoreOption = None,
) -> None:
    """Let an Enrolment Target (a MAF or an Enrolee B) fetch credentials (8.3.2.1 step f)."""
    with store_errors():
        target = _target(target_id, kind, naf_fqdn)
        with _open(store) as st:
            added = st.allow_target(target)
    done("allowed target" if added else "already allowed:", _target_text(target))


def remove_target(
    target_id: TargetArgument, kind: KindOption = None, store: StoreOption = None
) -> None:
    """Stop an Enrolment Target fetching credentials."""
    with store_errors():
        target = _target(target_id, kind, None)
        with _open(store) as st:
            if not st.remove_target(target):
                raise UnknownCredentialError(f"{target} is not an allowed target")
    done("removed target", str(target))


def list_targets(as_json: JsonOption = False, store: StoreOption = None) -> None:
    """List the Enrolment Targets that may fetch credentials."""
    targets, where = _read(store, MefStore.list_targets)
    if not as_json and targets:  # one target a line, as before
        for target in targets:
            stdout_console().print(Text(_target_text(target)))
        return
    print_listing(
        targets,
        title="Enrolment Targets",
        columns=("target",),
        cells=lambda t: (_target_text(t),),
        to_json=_target_json,
        as_json=as_json,
        empty=f"no targets allowed in {where}",
    )


# ----------------------------------------------------------------------------- keys, audit


def _enrolment_json(listed: tuple[str, Enrolment]) -> dict[str, Any]:
    bootstrap, e = listed
    return {
        "keID": str(e.ke_id),
        "bootstrap": bootstrap,
        "enroleeId": e.enrolee_id,
        "target": _target_json(e.target),
        "expires": utc_time(e.expires_at),
        "created": utc_time(e.created_at),
        "expired": e.expired(),
    }


def keys(
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", help="Show at most this many.")] = 1000,
    store: StoreOption = None,
) -> None:
    """List the enrolments: KeID, Enrolee-ID, target, Enrolment Expiry (never Ke)."""
    now = datetime.now(UTC)

    def read(st: MefStore) -> tuple[list[tuple[str, Enrolment]], int, int]:
        listed = st.list_enrolments(limit=limit)
        return listed, st.count_enrolments(), st.count_enrolments(live_at=now)

    (enrolments, total, live), where = _read(store, read)

    def cells(listed: tuple[str, Enrolment]) -> tuple[str | Text, ...]:
        bootstrap, e = listed
        state = "expired" if e.expired(now) else "live"
        return (
            str(e.ke_id), e.enrolee_id, bootstrap, _target_text(e.target),
            utc_time(e.expires_at), Text(state, style="" if state == "live" else "red"),
        )  # fmt: skip

    shown = print_listing(
        enrolments,
        title=f"MEF enrolments {where}",
        columns=("KeID", "Enrolee-ID", "bootstrap", "target", "expires (UTC)", "state"),
        cells=cells,
        to_json=_enrolment_json,
        as_json=as_json,
        empty=f"no enrolments in {where}",
    )
    if shown and not as_json:
        stdout_console().print(Text(f"{total} enrolment(s), {live} live; showing {shown}"))


_AUDIT_COLUMNS: Final = (
    "time", "event", "requester", "keId", "enroleeId", "target", "suid", "rsc", "reason",
)  # fmt: skip


def audit(
    after: Annotated[
        int, typer.Option("--after", metavar="SEQ", help="Only records after this number.")
    ] = 0,
    limit: Annotated[int, typer.Option("--limit", help="Show at most this many.")] = 1000,
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """The audit records (enrolments, fetches, refusals), oldest first; never a key."""
    records, where = _read(store, lambda st: st.read_audit(after=after, limit=limit))
    print_audit(
        records,
        title=f"MEF audit {where}",
        columns=_AUDIT_COLUMNS,
        as_json=as_json,
        empty=f"no audit records in {where}",
    )


# ----------------------------------------------------------------------------- mounting

_COMMANDS: Final[tuple[tuple[str, Callable[..., None]], ...]] = (
    ("add-enrolee", add_enrolee),
    ("list-enrolees", list_enrolees),
    ("remove-enrolee", remove_enrolee),
    ("import", import_enrolees),
    ("allow-target", allow_target),
    ("remove-target", remove_target),
    ("list-targets", list_targets),
    ("keys", keys),
    ("audit", audit),
)


def register(app: typer.Typer) -> None:
    """Add the store commands to the ``m2msec mef`` group."""
    for name, command in _COMMANDS:
        app.command(name)(command)
