"""The mcr-xdp command: a thin edge over mcr_xdp.relay.

main() answers the plain socket commands (status, rule, one-shot stats) and
--version without importing typer (socket_cmds says why); everything else
goes to the typer app in commands.py.
"""

from __future__ import annotations

import sys

from . import socket_cmds
from .console import run


def main() -> None:
    argv = sys.argv[1:]
    if argv in (["--version"], ["-V"], ["version"]):
        from mcr_xdp import __version__

        print(f"mcr-xdp {__version__}" if argv[0] != "version" else __version__)
        return
    plain = socket_cmds.plain(argv)
    if plain is not None:
        func, kwargs = plain
        sys.exit(run(func, **kwargs))
    from .commands import app

    app(prog_name="mcr-xdp")


def __getattr__(name: str):
    if name == "app":  # the typer app, for tests and tools that import it from here
        from .commands import app

        return app
    raise AttributeError(name)


if __name__ == "__main__":
    main()
