"""The command line's commands, one module each; ``cli.py`` holds the group and registers them.

Each module maps its command's options onto the library's functions and imports what the command needs inside it, so
that ``cli.py`` loads cheaply and ``generate`` never loads torch, onnx or any build-time module. Options several
commands take are defined once in ``options.py``; terminal output helpers are in ``display.py``; ``help.py`` fills the
program's name into help texts and lists the commands in sections.
"""
