"""Child processes of a lab: console scripts of this environment, and a
process whose output a caller can wait on line by line."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import TopologyError


def venv_bin(name: str) -> str:
    """A console script of this interpreter's environment."""
    return str(Path(sys.executable).parent / name)


class Proc:
    """A child process whose stdout lines are collected by a thread, so a
    caller can wait for a line without blocking on a full pipe."""

    def __init__(self, popen: subprocess.Popen, on_line=None):
        self.popen = popen
        self.lines: list[str] = []
        self._on_line = on_line
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
            if self._on_line:
                self._on_line(line)
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The first line containing text; TopologyError if the process ends
        or the time runs out first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    stderr = self.popen.stderr.read() if self.popen.poll() is not None and self.popen.stderr else ""
                    # args[3:]: the command without its `ip netns exec NS`.
                    raise TopologyError(f"{self.popen.args[3:]} never printed {text!r}: {stderr.strip()}")
                self._cond.wait(min(left, 0.2))

    def stop(self, sig: int = 15, timeout: float = 20.0) -> int:
        """Signal the process (SIGTERM by default) and reap it; kill it if it
        does not end in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(5)
        return self.popen.returncode

    def stderr(self) -> str:
        return self.popen.stderr.read() if self.popen.stderr else ""
