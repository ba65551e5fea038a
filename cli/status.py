"""mcr-xdp status: what the running relay is doing."""

from __future__ import annotations

import json
from typing import Optional

from mcr_xdp import control

from . import options
from .console import out


def status(socket_path: Optional[str] = options.SOCKET, as_json: bool = options.JSON) -> None:
    """Show the running relay: interfaces, XDP mode, program ids, rules, joins, uptime."""
    st = control.request("status", {}, socket_path)
    if as_json:
        print(json.dumps(st, indent=2))
    else:
        from . import render

        for renderable in render.status(st):
            out.print(renderable)
