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

from m2msec.cli.common import console, fail, read_key
from m2msec.errors import M2MSecError
from m2msec.frameworks.gba_device import DeviceState, GbaDevice
from m2msec.gba.aka import Usim
from m2msec.gba.ub import Bootstrap

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
    """The device of the options, its saved state loaded, and the call that saves it."""
    bsf, impi, k, opc, sqn, uicc = options
    if not (bsf and impi and k and opc):
        fail("--gba needs --bsf, --impi, --k and --opc")
    state = DeviceState()
    try:
        saved_sqn, saved = state.load(impi, bsf)
        given = int(sqn, 16) if sqn else 0
        usim = Usim(read_key(k, "--k"), read_key(opc, "--opc"), max(given, saved_sqn or 0))
    except ValueError as exc:
        fail(f"GBA credential: {exc}")
    except M2MSecError as exc:
        fail(str(exc))

    def remember(bootstrap: Bootstrap) -> None:
        state.save(impi, bsf, usim.sqn_ms, bootstrap)
        console.print(f"GBA: bootstrapped with {bsf}, B-TID {bootstrap.btid}")

    device = GbaDevice(usim, impi, bsf, uicc=uicc, bootstrap=saved, on_bootstrap=remember)
    if saved is not None and device.bootstrap_valid():
        console.print(f"GBA: reusing Ks of B-TID {saved.btid} (until {saved.expires})")

    def save() -> None:
        state.save(impi, bsf, usim.sqn_ms, device.bootstrap)

    return device, save
