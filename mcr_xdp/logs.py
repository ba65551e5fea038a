"""The running relay's log lines, each with a severity the reader can sort by.

A line has a level (the syslog priorities of sd-daemon(3)) and is written
in one of three formats:

  text     what a person reads on a terminal: info lines bare on stdout,
           the rest on stderr as "mcr-xdp: error: ...", "mcr-xdp: ..."
           (a warning) or "mcr-xdp: notice: ...";
  journal  the same lines, each preceded by "<N>" (N the priority), which
           journald takes as the entry's priority and strips;
  json     one JSON object a line: ts, level, msg and structured fields.

Without a format given, a stream that is the journal (systemd names it in
$JOURNAL_STREAM) gets journal lines, any other text; json lines on the
journal carry the "<N>" too (journald keeps the bare object). Info and
debug go to stdout, notices, warnings and errors to stderr.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
import time

PROG = "mcr-xdp"
# The format for this process and the ones it starts (userspace workers
# inherit it); `attach --log-format` reads and sets it.
FORMAT_ENV = "MCR_XDP_LOG_FORMAT"


class Level(enum.IntEnum):
    """syslog priorities: sd-daemon(3)'s SD_ERR "<3>" ... SD_DEBUG "<7>"."""

    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7


class Format(str, enum.Enum):
    TEXT = "text"
    JOURNAL = "journal"
    JSON = "json"


# What a text line says of its level after "mcr-xdp: " (a warning says
# nothing: the form the relay's warnings always had).
TEXT_LABELS = {Level.ERROR: "error: ", Level.WARNING: "", Level.NOTICE: "notice: "}


@dataclasses.dataclass(frozen=True)
class Event:
    """Something that happened to a running relay, and how much it matters."""

    level: Level
    text: str

    def __str__(self) -> str:
        return self.text


def on_journal(stream, env=os.environ) -> bool:
    """Whether stream is the one systemd connected to the journal:
    $JOURNAL_STREAM is "DEVICE:INODE" of it (systemd.exec(5)). A stream
    redirected elsewhere (a pipe, a file) does not match."""
    want = env.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
        dev, ino = (int(n) for n in want.split(":"))
    except (AttributeError, OSError, ValueError):  # no fd (a test's buffer), closed, no or bad variable
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def stream_for(level: Level):
    """stdout for info and debug, stderr for the rest (looked up at each
    line: a live view or a test may have replaced them)."""
    return sys.stdout if level >= Level.INFO else sys.stderr


def line(level: Level, msg: str, fmt: Format, prefixed: bool, fields: dict | None = None,
         now: float | None = None) -> str:
    """One log line in fmt, without its newline. prefixed: precede it with
    "<N>" (every physical line of a text message: journald reads each as an
    entry)."""
    if fmt is Format.JSON:
        import json

        t = time.time() if now is None else now
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
        text = json.dumps({"ts": ts, "level": level.name.lower(), "msg": msg, **(fields or {})})
    elif level <= Level.NOTICE:
        text = f"{PROG}: {TEXT_LABELS[level]}{msg}"
    else:
        text = msg
    if prefixed:
        return "\n".join(f"<{int(level)}>{part}" for part in text.split("\n"))
    return text


class Log:
    """Writes log lines in one format (None: journal lines on a stream that
    is the journal, text on any other; module doc)."""

    def __init__(self, fmt: Format | None = None):
        self.format = fmt

    def write(self, level: Level, msg: str, **fields) -> None:
        stream = stream_for(level)
        body = Format.JSON if self.format is Format.JSON else Format.TEXT
        prefixed = self.format is Format.JOURNAL or (self.format is not Format.TEXT and on_journal(stream))
        stream.write(line(level, msg, body, prefixed, fields) + "\n")
        stream.flush()

    def event(self, event: Event) -> None:
        self.write(event.level, event.text)

    def error(self, msg: str, **fields) -> None:
        self.write(Level.ERROR, msg, **fields)

    def warning(self, msg: str, **fields) -> None:
        self.write(Level.WARNING, msg, **fields)

    def notice(self, msg: str, **fields) -> None:
        self.write(Level.NOTICE, msg, **fields)

    def info(self, msg: str, **fields) -> None:
        self.write(Level.INFO, msg, **fields)


def from_env(env=os.environ) -> Log:
    """The log of a process the relay started (FORMAT_ENV; unset or not a
    format: automatic)."""
    try:
        return Log(Format(env.get(FORMAT_ENV, "")))
    except ValueError:
        return Log()
