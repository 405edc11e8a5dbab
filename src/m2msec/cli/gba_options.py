"""The GBA device options of ``m2msec connect --gba`` and ``m2msec enrol --gba``.

Both run Entity A's Ub bootstrapping (3GPP TS 33.220 4.5.2; seed 000 8.2.3.2, seed 004
8.3.3.1) with a USIM-like credential from the command line, and keep SQN_MS and the last
bootstrap (Ks sealed) in :class:`m2msec.frameworks.gba_device.DeviceState`, so a second run
within the key lifetime reuses Ks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from m2msec.cli.common import console, exit_on_errors, fail
from m2msec.cli.secrets import read_key, secret_file_option, secret_option
from m2msec.config.credentials import GbaSettings, KeySource
from m2msec.config.initiators import gba_device as device_of
from m2msec.errors import M2MSecError
from m2msec.frameworks.gba_device import GbaDevice

__all__ = [
    "BsfOption",
    "GbaDeviceOptions",
    "ImpiOption",
    "KFileOption",
    "KOption",
    "OpcFileOption",
    "OpcOption",
    "SqnOption",
    "UiccOption",
    "gba_device",
    "gba_keys",
]

BsfOption = Annotated[
    str | None, typer.Option("--bsf", help="GBA: the BSF's Ub URL, http://HOST:PORT")
]
ImpiOption = Annotated[str | None, typer.Option("--impi", help="GBA: our IMPI")]
KOption = Annotated[str | None, secret_option("--k", "GBA: USIM key K in hex")]
KFileOption = Annotated[Path | None, secret_file_option("--k-file", "GBA: K in hex")]
OpcOption = Annotated[str | None, secret_option("--opc", "GBA: OPc in hex")]
OpcFileOption = Annotated[Path | None, secret_file_option("--opc-file", "GBA: OPc in hex")]
SqnOption = Annotated[str | None, typer.Option("--sqn", help="GBA: initial SQN_MS (hex, 6 octets)")]
UiccOption = Annotated[
    bool, typer.Option("--uicc", help="GBA_U: Ks_int_NAF (and the -uicc prefix of seed 000)")
]


#: The values of those options: --bsf, --impi, --k, --opc, --sqn, --uicc, --k-file,
#: --opc-file.
GbaDeviceOptions = tuple[
    str | None, str | None, str | None, str | None, str | None, bool, Path | None, Path | None
]


def gba_keys(options: GbaDeviceOptions) -> tuple[KeySource, KeySource]:
    """K and OPc of the options, read by :func:`m2msec.cli.common.secret_text`'s forms."""
    _bsf, _impi, k, opc, _sqn, _uicc, k_file, opc_file = options
    if (k is None and k_file is None) or (opc is None and opc_file is None):
        fail("--gba needs --bsf, --impi, --k (or --k-file) and --opc (or --opc-file)")
    return (
        KeySource(value=read_key(k, "--k", file=k_file)),
        KeySource(value=read_key(opc, "--opc", file=opc_file)),
    )


def gba_device(options: GbaDeviceOptions) -> tuple[GbaDevice, Callable[[], None]]:
    """The device of the options, its saved state loaded, and the call that saves it
    (:func:`m2msec.config.initiators.gba_device`, telling what it reuses or runs)."""
    bsf, impi, _k, _opc, sqn, uicc, _k_file, _opc_file = options
    if not (bsf and impi):
        fail("--gba needs --bsf, --impi, --k (or --k-file) and --opc (or --opc-file)")
    k_source, opc_source = gba_keys(options)
    settings = GbaSettings(bsf, impi, k_source, opc_source, sqn, uicc)
    with exit_on_errors(failure=(M2MSecError,)):
        return device_of(settings, lambda message: console.print(message, highlight=False))
