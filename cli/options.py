"""Options shared by several commands.

Options are written as defaults (`x: T = typer.Option(...)`), not with
`Annotated`: Debian 12's python3-typer is 0.7, which predates Annotated
support, and the Debian package uses it (docs/install.md).
"""

import typer

from mcr_xdp.control import SOCKET_ENV

SOCKET = typer.Option(None, "--socket", envvar=SOCKET_ENV, show_default="/run/mcr-xdp/mcr-xdp.sock",
                      help="Control socket of the relay (inside a named network namespace NS: "
                           "/run/mcr-xdp/netns-NS.sock).")


JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
