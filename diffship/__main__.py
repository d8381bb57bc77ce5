"""``python -m diffship ...``: the command line, as ``diffship ...`` and a checkout's ``python cli.py ...`` run it."""

from diffship.cli import run

run()
