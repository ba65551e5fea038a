"""mcr-xdp stats: the running relay's counters as tables, JSON or a live view."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Optional

import typer

from . import options, socket_cmds

if TYPE_CHECKING:
    from mcr_xdp import stats


def fetch(socket_path: str | None) -> tuple[stats.Snapshot, dict]:
    from mcr_xdp import stats

    snap, status = stats.from_json(socket_cmds.stats_json(socket_path))
    # Rates need timestamps of this process's clock, not the relay's.
    return dataclasses.replace(snap, timestamp=time.monotonic()), status


def stats_cmd(
    live: bool = typer.Option(False, "--live", help="Full-screen live view; q or Ctrl-C quits."),
    as_json: bool = typer.Option(False, "--json", help="One JSON snapshot (docs/stats-json.md)."),
    watch: Optional[float] = typer.Option(None, "--watch", min=0.1, help="Print a JSON snapshot every SECONDS, "
                                          "one per line.", show_default=False),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between live updates."),
    socket_path: Optional[str] = options.SOCKET,
) -> None:
    """Show the running relay's counters: per rule, output, CPU and verdict.

    Without a running relay, the pinned maps of a killed one are read.

    Example: mcr-xdp stats --live
    """
    from .tui import LiveView, require_terminal

    if live:
        require_terminal("--live")
        with LiveView() as view:
            while True:
                snap, status = fetch(socket_path)
                view.update(snap, status)
                if view.wait(interval):
                    return
    if watch is not None:
        while True:
            print(json.dumps(socket_cmds.stats_json(socket_path)), flush=True)
            time.sleep(watch)
    socket_cmds.stats_once(socket_path, as_json)
