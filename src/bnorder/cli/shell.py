"""What every command shares: the command group, which turns bad input into its exit in one
place, and the consoles the commands print on."""

from __future__ import annotations

import inspect
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperGroup, TyperOption

from bnorder.cli import render
from bnorder.core.errors import BnorderError
from bnorder.runs.sweep import SweepInterrupted

# long paths stay whole: easier to copy, and to grep. Commands print on ``shell.console``,
# looked up when they print, so that one replacement (a test's) reaches every command
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def prose(text: str | None) -> str | None:
    """A docstring as help text: its paragraphs kept, each on one line. In its rich markup
    mode typer keeps a docstring's single line breaks, which then break sentences mid-line
    wherever the terminal is not as wide as the source."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


class ProseGroup(TyperGroup):
    """The app's command group: every command's help (and its own) as ``prose``. Built when
    the app runs, after every command is registered, so no command can be missed."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.help = prose(self.help)
        for command in [self, *self.commands.values()]:
            command.help = prose(command.help)
            plain_metavars(command)

    def get_params(self, ctx: click.Context) -> list[Any]:
        """The app's own options, those typer adds after it is built (completion) included."""
        params = super().get_params(ctx)
        for param in params:
            plain_metavar(param)
        return params

    def invoke(self, ctx: click.Context) -> Any:
        """Every command runs through here: the one place bad input (a BnorderError) becomes
        exit code 2 and Ctrl-C exit code 130, each with one line. Any other error, an
        unexpected OSError included, is not the user's input and keeps its traceback."""
        try:
            return super().invoke(ctx)
        except BnorderError as err:
            raise fail(err) from None
        except SweepInterrupted as stop:
            raise fail(render.interrupted_message(stop), code=130) from None
        except KeyboardInterrupt:  # a sweep stopped mid-run raises SweepInterrupted instead
            before = " before any run started" if ctx.invoked_subcommand == "run" else ""
            raise fail(f"interrupted{before}", code=130) from None


def plain_metavars(command: click.Command) -> None:
    """Help that reads at any width, for each of ``command``'s parameters and its --help."""
    for param in [*command.params, command.get_help_option(click.Context(command))]:
        plain_metavar(param)


def plain_metavar(param: object) -> None:
    """A flag shows no ``<bool>`` as if it took a value; an argument is named in capitals, as
    help texts name it; a choice shows its name, its values being in its help, where typer
    prints them as one word cut anywhere."""
    if isinstance(param, TyperArgument):
        param.metavar = (param.metavar or param.name).upper()
    elif getattr(param, "is_flag", False):
        param.metavar = ""
    elif isinstance(param, TyperOption) and param.type_descriptor.is_choice:
        param.metavar = param.opts[0].lstrip("-").upper()


def say(text: str, *, to: Console | None = None) -> None:
    """A line of plain text on ``to`` (default: ``console``, looked up as it prints): user
    paths, names and values in it print as they are, never as rich markup (a folder named
    ``[/red]`` would otherwise stop the command)."""
    (to or console).print(text, markup=False, highlight=False)


def fail(message: str | BaseException, code: int = 2) -> typer.Exit:
    """``message`` on stderr as one line; the exit to raise, with ``code``."""
    errors.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False)
    return typer.Exit(code)
