"""Options shared by several commands."""

from typing import Annotated

import typer

from mcr_xdp.control import SOCKET_ENV

SocketOpt = Annotated[
    str | None,
    typer.Option("--socket", envvar=SOCKET_ENV, show_default="/run/mcr-xdp/mcr-xdp.sock",
                 help="Control socket of the relay (inside a named network namespace NS: "
                      "/run/mcr-xdp/netns-NS.sock)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
