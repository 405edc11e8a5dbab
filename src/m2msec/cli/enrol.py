"""``m2msec enrol``: the Enrolee of the MEF-based bootstrap (TS-0003 8.3.2.1, 8.3.2.2, seed 004).

Bootstraps with the MEF's Enrolee listener (``--mef tls://HOST:PORT``, or ``dtls://`` for
DTLS 1.2 with the Enrolment Exchange over CoAP) by TLS-PSK with
``--kpm-id``/``--kpm`` (8.3.2.1) or by mutual TLS with ``--cert``/``--key``/``--ca``
(8.3.2.2), runs the Enrolment Exchange for ``--maf-id`` (Km, 10.3.2) or ``--enrolee-b``
(Kpsa, 10.3.3), or, with ``--gba``, bootstraps over Ub at the MEF's BSF (``--bsf``,
seed 004 8.3.3.1: KeID = B-TID, Km or Kpsa = Ks_NAF, :mod:`m2msec.frameworks.mef.gba`),
and keeps KeID, Ke and the credential sealed in the Enrolee store
(``<data dir>/enrolee.db``, :class:`m2msec.frameworks.mef.EnroleeStore`). A live Ke there
is reused; an expired one (10.7), or ``--renew``, bootstraps again. It prints KeID, the
target, the Enrolee-ID and the expiry, never a key.

``m2msec connect --psk-identity <KeID>`` without ``--psk`` then takes Kpsa from that store,
and ``m2msec connect --maf ... --km-id <KeID>`` without ``--km`` takes Km, as does a
credentials-table entry naming a KeID without a key
(:func:`m2msec.config.initiators.live_enrolment`). Exit status: 0 enrolled or reused, 1
the bootstrap or the exchange failed (or the store refused), 2 malformed options.
"""

from __future__ import annotations

import asyncio
from contextlib import closing
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from m2msec.cli import gba_options as g
from m2msec.cli.common import (
    exactly_one,
    exit_on_errors,
    fail,
    file_option,
    key_value_table,
    option,
    stdout_console,
    store_errors,
    store_option,
    url_option,
    utc_time,
)
from m2msec.cli.mef_admin import EnroleeBOption, MafIdOption, NafOption, read_kpm
from m2msec.cli.secrets import secret_file_option, secret_option
from m2msec.config.values import is_ip
from m2msec.errors import ConfigurationError, IdentifierError, M2MSecError, StoreError
from m2msec.frameworks.certificate import CertificateCredential
from m2msec.frameworks.mef import (
    Enrolee,
    EnroleeStore,
    EnrolmentResult,
    KpmCredential,
    enrol_or_reuse,
)
from m2msec.frameworks.mef.gba import enrol_gba_or_reuse
from m2msec.mef.records import EnrolmentTarget, check_kpm_id
from m2msec.tls.profiles import Transport

__all__ = ["enrol"]

StoreOption = Annotated[
    Path | None,
    store_option("The Enrolee store file (default: enrolee.db in the data directory)."),
]


def _open_store(path: Path | None) -> EnroleeStore:
    with store_errors():
        return EnroleeStore(path)


def _mef_address(url: str, mef_fqdn: str | None) -> tuple[str, int, str, Transport]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    schemes = {"tls": Transport.TLS, "dtls": Transport.DTLS}
    if parts.scheme not in schemes or not parts.hostname or not port or parts.path not in ("", "/"):
        fail("--mef must look like tls://HOST:PORT or dtls://HOST:PORT (an Enrolee listener)", 2)
    host = parts.hostname
    if mef_fqdn is None:
        if is_ip(host):
            fail("--mef names an IP address: give the MEF's FQDN with --mef-fqdn", 2)
        mef_fqdn = host
    return host, port, mef_fqdn, schemes[parts.scheme]


def _target(maf_id: str | None, enrolee_b: str | None, naf_fqdn: str | None) -> EnrolmentTarget:
    exactly_one(maf_id=maf_id, enrolee_b=enrolee_b)
    with exit_on_errors(usage=(IdentifierError, ConfigurationError)):
        if maf_id is not None:
            if naf_fqdn is not None:
                fail("--naf-fqdn goes with --enrolee-b (an AE as Enrolee B)", 2)
            return EnrolmentTarget.maf(maf_id)
        assert enrolee_b is not None
        return EnrolmentTarget.enrolee_b(enrolee_b, naf_fqdn)


def _kpm(kpm: str | None, kpm_file: Path | None) -> bytes:
    if kpm is not None and kpm_file is not None:
        fail("give --kpm - or --kpm-file, not both", 2)
    if kpm is None and kpm_file is None:
        fail("--kpm-id needs --kpm - (stdin) or --kpm-file FILE", 2)
    return read_kpm(kpm, kpm_file, ("--kpm", "--kpm-file"))


def enrol(
    mef: Annotated[
        str | None,
        url_option("The MEF's Enrolee listener, tls:// or dtls://HOST:PORT.", "--mef"),
    ] = None,
    kpm_id: Annotated[
        str | None, option("--kpm-id", metavar="ID", help="PSK bootstrap (8.3.2.1): our KpmID.")
    ] = None,
    kpm: Annotated[
        str | None,
        secret_option("--kpm", "Kpm in hex", literal=False),
    ] = None,
    kpm_file: Annotated[
        Path | None, secret_file_option("--kpm-file", "Kpm in hex")
    ] = None,
    cert: Annotated[
        Path | None, file_option("Certificate bootstrap (8.3.2.2): our certificate.", "--cert")
    ] = None,
    key: Annotated[Path | None, file_option("Our private key (PEM).", "--key")] = None,
    ca: Annotated[Path | None, file_option("Trust anchors for the MEF (PEM).", "--ca")] = None,
    maf_id: MafIdOption = None,
    enrolee_b: EnroleeBOption = None,
    naf_fqdn: NafOption = None,
    mef_fqdn: Annotated[
        str | None,
        option(
            "--mef-fqdn",
            metavar="FQDN",
            help="The MEF's FQDN, the domain of KeID (default: the --mef host).",
        ),
    ] = None,
    in_domain: Annotated[
        str | None,
        option(
            "--in-domain",
            metavar="FQDN",
            help="IN public domain of CSE names in certificates (default: the MEF FQDN "
            "without its first label).",
        ),
    ] = None,
    renew: Annotated[
        bool, typer.Option("--renew", help="Bootstrap again even if a live Ke is stored.")
    ] = False,
    tls12: Annotated[bool, typer.Option("--tls1_2", help="Offer TLS 1.2 only.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds.")] = 10.0,
    store: StoreOption = None,
    gba: Annotated[
        bool,
        typer.Option("--gba", help="GBA bootstrap (seed 004 8.3.3.1) at the MEF's BSF, --bsf."),
    ] = False,
    bsf: g.BsfOption = None,
    impi: g.ImpiOption = None,
    k: g.KOption = None,
    k_file: g.KFileOption = None,
    opc: g.OpcOption = None,
    opc_file: g.OpcFileOption = None,
    sqn: g.SqnOption = None,
    uicc: g.UiccOption = False,
) -> None:
    """Enrol at a MEF (seed 004): get a KeID whose Km or Kpsa the target fetches from it."""
    target = _target(maf_id, enrolee_b, naf_fqdn)
    if gba:
        if mef is not None or kpm_id is not None or cert is not None:
            fail("--gba bootstraps over Ub at --bsf: no --mef, --kpm-id or --cert", 2)
        _print(_enrol_gba(
            target, (bsf, impi, k, opc, sqn, uicc, k_file, opc_file), in_domain, renew, store
        ))
        return
    if mef is None:
        fail("give --mef tls://HOST:PORT (or dtls://), or --gba with --bsf", 2)
    host, port, fqdn, transport = _mef_address(mef, mef_fqdn)
    certificate = (cert, key, ca)
    if kpm_id is not None and any(certificate):
        fail("give --kpm-id (PSK) or --cert/--key/--ca (certificate), not both", 2)
    usage = (IdentifierError, ConfigurationError, ValueError)
    with exit_on_errors(usage=usage, failure=(M2MSecError,)):
        credential: KpmCredential | CertificateCredential
        if kpm_id is not None:
            credential = KpmCredential(check_kpm_id(kpm_id), _kpm(kpm, kpm_file))
        elif cert and key and ca:
            credential = CertificateCredential.from_files(cert, key, ca)
        else:
            fail("give --kpm-id with --kpm or --kpm-file, or --cert, --key and --ca", 2)
        enrolee = Enrolee(host, port, fqdn, credential, in_domain=in_domain,
                          transport=transport, tls13=not tls12, timeout=timeout)  # fmt: skip
    failures = (M2MSecError, StoreError, OSError)
    with closing(_open_store(store)) as enrolments, exit_on_errors(failure=failures):
        result, reused = asyncio.run(enrol_or_reuse(enrolee, target, enrolments, fresh=renew))
    _print((result, reused))


def _enrol_gba(
    target: EnrolmentTarget,
    options: g.GbaDeviceOptions,
    in_domain: str | None,
    renew: bool,
    store: Path | None,
) -> tuple[EnrolmentResult, bool]:
    """Ub bootstrapping at the MEF's BSF, then the target's Km or Kpsa (seed 004 8.3.3.1)."""
    device, save = g.gba_device(options)
    failures = (M2MSecError, StoreError, OSError)
    with closing(_open_store(store)) as enrolments, exit_on_errors(failure=failures):
        try:
            return asyncio.run(
                enrol_gba_or_reuse(device, target, enrolments, in_domain=in_domain, fresh=renew)
            )
        finally:
            save()


def _print(done: tuple[EnrolmentResult, bool]) -> None:
    result, reused = done
    rows = [
        ("KeID", str(result.ke_id)),
        ("target", f"{result.target} ({result.key_name})"),
        ("Enrolee-ID", result.enrolee_id or "-"),
        ("expires", utc_time(result.expires)),
        ("state", "reused (live Ke in the store)" if reused else "enrolled"),
    ]
    stdout_console().print(key_value_table(rows))
