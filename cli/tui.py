"""The live stats view: a rich full-screen Live fed with snapshots. Keys
are read from the terminal in cbreak mode; the terminal is restored on any
exit."""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import tty

from rich.live import Live

from mcr_xdp import stats
from mcr_xdp.errors import UsageError

from . import render
from .console import out


def require_terminal(option: str) -> None:
    if not sys.stdout.isatty():
        raise UsageError(f"{option} draws a full-screen view and needs a terminal; "
                         "for a stream to a pipe or file use `mcr-xdp stats --watch SECONDS`")


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


class LiveView:
    """update() with each new snapshot; key() tells whether q was pressed."""

    def __init__(self, screen: bool = True, handle_sigterm: bool = True):
        self._handle_sigterm = handle_sigterm
        self._old_term = None
        self._live = Live(console=out.console, screen=screen, auto_refresh=False, transient=False)
        self._prev: stats.Snapshot | None = None
        self._tty = sys.stdin.isatty()
        self._saved = None

    def __enter__(self) -> LiveView:
        # SIGTERM must restore the terminal too, like Ctrl-C (unless the
        # caller handles signals itself, as the relay does).
        if self._handle_sigterm:
            self._old_term = signal.signal(signal.SIGTERM, _interrupt)
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
            if self._old_term is not None:
                signal.signal(signal.SIGTERM, self._old_term)

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
