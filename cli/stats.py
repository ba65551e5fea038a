"""mcr-xdp stats: the running relay's counters as tables, JSON or a live view."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Optional

import typer

from mcr_xdp import control

from . import options
from .console import out

if TYPE_CHECKING:
    from mcr_xdp import stats


def fetch_json(socket_path: str | None) -> dict:
    """The running relay's snapshot; when no relay answers, the pinned maps
    of one that was killed (its program may still forward)."""
    from mcr_xdp import pins, stats
    from mcr_xdp.errors import PrivilegeError

    try:
        return control.request("stats", {}, socket_path)
    except control.ControlError as exc:
        if exc.exit_code == PrivilegeError.exit_code:
            raise  # not root: the pinned maps would say the same, less clearly
        pinned = pins.read_stats(control.instance_for(socket_path))
        if pinned is None:
            raise
        return stats.as_json(*pinned)


def fetch(socket_path: str | None) -> tuple[stats.Snapshot, dict]:
    from mcr_xdp import stats

    snap, status = stats.from_json(fetch_json(socket_path))
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
    from mcr_xdp import stats

    from . import render
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
            print(json.dumps(fetch_json(socket_path)), flush=True)
            time.sleep(watch)
    data = fetch_json(socket_path)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    snap, status = stats.from_json(data)
    out.print(render.header(snap, None, status))
    out.print(render.rules_live(snap, None))
    for table in (render.snapshot_health(snap), render.merge_table(snap)):
        if table is not None:
            out.print(table)
    out.print(render.drops_table(snap, None))
