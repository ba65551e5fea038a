"""The live stats view: a rich full-screen Live fed with snapshots. Keys
are read from the terminal in cbreak mode; the terminal is restored on any
exit."""

from __future__ import annotations

import os
import select
import sys
import termios
import tty

from rich.live import Live

from mcr_xdp import stats

from . import render
from .console import out


class LiveView:
    """update() with each new snapshot; key() tells whether q was pressed."""

    def __init__(self, screen: bool = True):
        self._live = Live(console=out, screen=screen, auto_refresh=False, transient=False)
        self._prev: stats.Snapshot | None = None
        self._tty = sys.stdin.isatty()
        self._saved = None

    def __enter__(self) -> LiveView:
        if self._tty:
            self._saved = termios.tcgetattr(sys.stdin.fileno())
            tty.setcbreak(sys.stdin.fileno())
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._live.__exit__(*exc)
        finally:
            if self._saved is not None:
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)

    @property
    def stdin(self):
        return sys.stdin if self._tty else None

    def update(self, snap: stats.Snapshot, status: dict) -> None:
        rates = stats.rate(self._prev, snap) if self._prev is not None else None
        self._prev = snap
        self._live.update(render.dashboard(snap, rates, status), refresh=True)

    def quit_pressed(self) -> bool:
        """Read pending keys; True on q or Q."""
        if not self._tty:
            return False
        keys = b""
        while select.select([sys.stdin], [], [], 0)[0]:
            chunk = os.read(sys.stdin.fileno(), 64)
            if not chunk:
                break
            keys += chunk
        return b"q" in keys.lower()

    def wait(self, seconds: float) -> bool:
        """Sleep up to seconds, waking on a key; True if q was pressed."""
        if self._tty:
            select.select([sys.stdin], [], [], seconds)
        else:
            select.select([], [], [], seconds)
        return self.quit_pressed()
