"""The ``m2msec`` command."""

from __future__ import annotations

import importlib
import logging

import typer

from m2msec import __version__, logs

app = typer.Typer(
    name="m2msec",
    help="oneM2M security associations (TS-0003): PSK, certificates, MAF, GBA over TLS/DTLS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Sub-commands are mounted when present, so each lives in a module of its own.
_SUBAPPS = {
    "psk": ("m2msec.cli.psk", "Manage the psk-lookup-table (KpsaId -> entity, Kpsa)."),
    "ca": ("m2msec.cli.ca", "A small CA issuing certificates that name CSE-IDs and AE-IDs."),
    "gateway": ("m2msec.cli.gateway", "The CSE security gateway."),
    "bsf": ("m2msec.cli.bsf", "The GBA BSF and its HSS simulator (3GPP TS 33.220)."),
    "maf": ("m2msec.cli.maf", "The M2M Authentication Function (MAF, TS-0003 8.8)."),
    "mef": ("m2msec.cli.mef", "The M2M Enrolment Function (MEF, TS-0003 8.3)."),
    "sa": (
        "m2msec.cli.sa",
        "Live security associations of a running gateway (list, show, update, remove).",
    ),
}


def _mount() -> None:
    for name, (module, help_text) in _SUBAPPS.items():
        sub = importlib.import_module(module)
        app.add_typer(sub.app, name=name, help=help_text)
    from m2msec.cli.connect import connect
    from m2msec.cli.demo import demo
    from m2msec.cli.enrol import enrol

    app.command("connect")(connect)
    app.command("demo")(demo)
    app.command("enrol")(enrol)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log progress to stderr"),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=logs.TEXT_FORMAT,
    )


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


_mount()


def main() -> None:
    app()
