"""mcr-xdp status: what the running relay is doing."""

from __future__ import annotations

import json

from mcr_xdp import control

from . import render
from .console import out
from .options import JsonOpt, SocketOpt


def status(socket_path: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Show the running relay: interfaces, XDP mode, program ids, rules, joins, uptime."""
    st = control.request("status", {}, socket_path)
    if as_json:
        print(json.dumps(st, indent=2))
    else:
        for renderable in render.status(st):
            out.print(renderable)
