"""``verify``: every file of a package against the manifest's sha256 and size (core.package)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from diffship.commands.help import Command
from diffship.commands.options import package_option


@click.command(cls=Command, short_help="Check every file of a package against its manifest.")
@package_option("Model package folder.")
@click.option("--strict", is_flag=True, help="Hash every file, trusting no record of earlier checks (DIFFSHIP_VERIFY=always).")
def verify(package: Path, strict: bool) -> None:
    """Check every file of a package against the manifest's sha256 and size (what loading does file by file).

    \b
    Examples:
      {prog} verify --package packages/tiny
      {prog} verify --package packages/sd15 --strict      # at a service's start-up: trusts nothing

    Exits 1 when any file is missing, changed or incomplete, listing each.
    """
    from diffship.core.integrity import VERIFY_ENV
    from diffship.core.package import ModelPackage

    if strict:
        os.environ[VERIFY_ENV] = "always"
    opened = ModelPackage.open(package)
    started = time.perf_counter()
    problems = opened.verify_all()
    seconds = time.perf_counter() - started
    size = sum(entry.bytes for entry in opened.manifest.files.values())
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(1)
    mode = "hashed every file" if strict else "unchanged files trusted from the verification record"
    click.echo(f"all {len(opened.manifest.files)} files intact ({size / 1e9:.2f} GB in {seconds:.1f}s; {mode})")
