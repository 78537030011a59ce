"""The ``bnorder`` command: the app, its ``--version``, and every command registered in the
order ``--help`` lists them. Each command parses its options, calls one library function and
prints what render.py makes of the result; bad input ends in one line and exit code 2, in
one place (``shell.ProseGroup``)."""

from __future__ import annotations

from typing import Annotated

import typer

from bnorder import __version__
from bnorder.cli import experiments, networks, results
from bnorder.cli.shell import ProseGroup

app = typer.Typer(
    help="Which order of BatchNorm, activation and Dropout works best? Measured on CIFAR-10, "
    "CIFAR-100, SVHN or your own images, and on your own network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=ProseGroup,
)


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"bnorder {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """The options before any command."""


app.command()(experiments.run)
app.command()(experiments.validate)
app.command("plan")(experiments.plan)
app.command("compare")(results.compare_command)
app.command("report")(results.report_command)
app.command()(networks.diagnose)
app.command()(networks.audit)
app.command()(networks.schemes)
app.command()(networks.model)


if __name__ == "__main__":
    app()
