"""Help that names the program as the user ran it, and the group's two sections (commands, developer tools).

Examples in command docstrings are written ``{prog} generate ...``; the help fills in the program: ``python cli.py``
from a checkout, ``diffship`` when installed as the console script, ``python -m diffship`` (``program_name``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

import click

PROG = "{prog}"
DEFAULT_PROGRAM = "python cli.py"


PACKAGE_MODULES = {("diffship", "__main__.py"): "python -m diffship", ("diffship", "cli.py"): "python -m diffship.cli"}
"""The package's own files ``sys.argv[0]`` names under ``python -m``: the user ran a module, not a file."""


def program_name(argv0: str) -> str:
    """How the user started us, from ``sys.argv[0]``: ``python -m diffship`` for the package's module, ``python
    cli.py`` for a script, else the executable's name (``diffship``, the console script)."""
    folder, name = os.path.basename(os.path.dirname(argv0)), os.path.basename(argv0)
    if not name or name.startswith("-"):  # python -c, an embedded interpreter
        return DEFAULT_PROGRAM
    if (folder, name) in PACKAGE_MODULES:
        return PACKAGE_MODULES[folder, name]
    return f"python {name}" if name.endswith(".py") else name


def _program(ctx: click.Context) -> str:
    return ctx.find_root().info_name or DEFAULT_PROGRAM


def _write_help_text(command: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    text = inspect.cleandoc(command.help or "").partition("\f")[0].replace(PROG, _program(ctx))
    if text:
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(text)


class Command(click.Command):
    """A command whose help text says ``{prog}`` for the program's name."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_help_text(self, ctx, formatter)


class SectionedGroup(click.Group):
    """The command group: its help lists commands in titled sections, in the order they were added."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sections: dict[str, list[str]] = {}

    def add_section(self, title: str, commands: Sequence[click.Command]) -> None:
        for command in commands:
            self.add_command(command)
        self.sections.setdefault(title, []).extend(command.name or "" for command in commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        listed = [name for names in self.sections.values() for name in names]
        return listed + sorted(set(self.commands) - set(listed))

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_help_text(self, ctx, formatter)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        width = formatter.width - 6 - max(len(name) for name in self.commands)
        sectioned = {name for names in self.sections.values() for name in names}
        others = sorted(set(self.commands) - sectioned)  # added with add_command, outside any section
        for title, names in [*self.sections.items(), ("Other commands", others)]:
            rows = [(name, self.commands[name].get_short_help_str(width)) for name in names
                    if not self.commands[name].hidden]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
