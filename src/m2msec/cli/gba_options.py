"""The GBA device options of ``m2msec connect --gba`` and ``m2msec enrol --gba``.

Both run Entity A's Ub bootstrapping (3GPP TS 33.220 4.5.2; seed 000 8.2.3.2, seed 004
8.3.3.1) with a USIM-like credential from the command line, and keep SQN_MS and the last
bootstrap (Ks sealed) in :class:`m2msec.frameworks.gba_device.DeviceState`, so a second run
within the key lifetime reuses Ks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from m2msec.cli.common import console, exit_on_errors, fail, read_key
from m2msec.config.credentials import GbaSettings, KeySource
from m2msec.config.initiators import gba_device as device_of
from m2msec.errors import M2MSecError
from m2msec.frameworks.gba_device import GbaDevice

__all__ = [
    "BsfOption",
    "GbaDeviceOptions",
    "ImpiOption",
    "KOption",
    "OpcOption",
    "SqnOption",
    "UiccOption",
    "gba_device",
]

BsfOption = Annotated[
    str | None, typer.Option("--bsf", help="GBA: the BSF's Ub URL, http://HOST:PORT")
]
ImpiOption = Annotated[str | None, typer.Option("--impi", help="GBA: our IMPI")]
KOption = Annotated[str | None, typer.Option("--k", help="GBA: USIM key K (hex, or -)")]
OpcOption = Annotated[str | None, typer.Option("--opc", help="GBA: OPc (hex, or -)")]
SqnOption = Annotated[str | None, typer.Option("--sqn", help="GBA: initial SQN_MS (hex, 6 octets)")]
UiccOption = Annotated[
    bool, typer.Option("--uicc", help="GBA_U: Ks_int_NAF (and the -uicc prefix of seed 000)")
]


#: The values of those options: --bsf, --impi, --k, --opc, --sqn, --uicc.
GbaDeviceOptions = tuple[str | None, str | None, str | None, str | None, str | None, bool]


def gba_device(options: GbaDeviceOptions) -> tuple[GbaDevice, Callable[[], None]]:
    """The device of the options, its saved state loaded, and the call that saves it
    (:func:`m2msec.config.initiators.gba_device`, telling what it reuses or runs)."""
    bsf, impi, k, opc, sqn, uicc = options
    if not (bsf and impi and k and opc):
        fail("--gba needs --bsf, --impi, --k and --opc")
    settings = GbaSettings(
        bsf, impi, KeySource(value=read_key(k, "--k")), KeySource(value=read_key(opc, "--opc")),
        sqn, uicc,
    )  # fmt: skip
    with exit_on_errors(failure=(M2MSecError,)):
        return device_of(settings, lambda message: console.print(message, highlight=False))
