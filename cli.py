"""diffship's command line from a checkout: ``python cli.py export ...`` (installed, the same is ``diffship export ...``).

The Click group and every command live in the package (``diffship/cli.py``, ``diffship/commands/``), so that an
installed diffship has them too; this file only runs it.
"""

from diffship.cli import cli, main, run

__all__ = ["cli", "main", "run"]

if __name__ == "__main__":
    run()
