"""mcr-xdp status: what the running relay is doing."""

from __future__ import annotations

from typing import Optional

from . import options, socket_cmds


def status(socket_path: Optional[str] = options.SOCKET, as_json: bool = options.JSON) -> None:
    """Show the running relay: interfaces, XDP mode, program ids, rules, joins, uptime."""
    socket_cmds.status(socket_path, as_json)
