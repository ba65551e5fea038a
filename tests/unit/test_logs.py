"""Log lines: the level each format carries, and when a stream counts as the
journal (systemd's $JOURNAL_STREAM naming that very stream)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from mcr_xdp import logs
from mcr_xdp.logs import FORMAT_ENV, Format, Level, Log, line

NOW = 1700000000.25  # 2023-11-14T22:13:20.250Z

# (level, text line, journal line): what a person reads, and what journald
# is handed (it strips "<N>" and keeps N as the entry's priority).
LINES = [
    (Level.ERROR, "mcr-xdp: error: boom", "<3>mcr-xdp: error: boom"),
    (Level.WARNING, "mcr-xdp: boom", "<4>mcr-xdp: boom"),
    (Level.NOTICE, "mcr-xdp: notice: boom", "<5>mcr-xdp: notice: boom"),
    (Level.INFO, "boom", "<6>boom"),
    (Level.DEBUG, "boom", "<7>boom"),
]


@pytest.mark.parametrize("level, text, journal", LINES, ids=[lv.name for lv, _, _ in LINES])
def test_text_and_journal_lines(level, text, journal):
    assert line(level, "boom", Format.TEXT, prefixed=False) == text
    assert line(level, "boom", Format.TEXT, prefixed=True) == journal


def test_every_line_of_a_message_carries_the_level_on_the_journal():
    """journald makes an entry of each line: one without "<N>" would get
    the unit's default priority."""
    assert line(Level.ERROR, "one\ntwo", Format.TEXT, prefixed=True) == "<3>mcr-xdp: error: one\n<3>two"


@pytest.mark.parametrize("level", list(Level))
def test_json_line(level):
    got = json.loads(line(level, "line\nbreak", Format.JSON, prefixed=False, fields={"forwarded": 7}, now=NOW))
    assert got == {"ts": "2023-11-14T22:13:20.250Z", "level": level.name.lower(), "msg": "line\nbreak",
                   "forwarded": 7}


def test_json_on_the_journal_is_one_object_after_the_level():
    got = line(Level.WARNING, "x", Format.JSON, prefixed=True, now=NOW)
    assert got.startswith("<4>{") and "\n" not in got and json.loads(got[3:])["level"] == "warning"


@pytest.fixture
def pipe():
    """A pipe's ends as files, the write end the kind of stream systemd hands over."""
    r, w = os.pipe()
    with os.fdopen(r) as reader, os.fdopen(w, "w") as writer:
        yield reader, writer


def journal_stream(f) -> str:
    st = os.fstat(f.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_on_journal_matches_the_stream_named(pipe):
    reader, writer = pipe
    env = {"JOURNAL_STREAM": journal_stream(writer)}
    assert logs.on_journal(writer, env)
    r, w = os.pipe()  # another pipe: another inode
    with os.fdopen(r), os.fdopen(w, "w") as other:
        assert not logs.on_journal(other, env)


@pytest.mark.parametrize("value", [None, "", "garbage", "1:2:3", "0:0"])
def test_on_journal_without_a_usable_variable(pipe, value):
    _, writer = pipe
    assert not logs.on_journal(writer, {} if value is None else {"JOURNAL_STREAM": value})


def test_on_journal_of_a_stream_without_a_descriptor():
    import io

    assert not logs.on_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_levels_choose_the_stream():
    assert logs.stream_for(Level.INFO) is logs.sys.stdout and logs.stream_for(Level.DEBUG) is logs.sys.stdout
    assert all(logs.stream_for(lv) is logs.sys.stderr for lv in (Level.ERROR, Level.WARNING, Level.NOTICE))


def written(monkeypatch, pipe, fmt: Format | None, level: Level = Level.ERROR, journal: bool = True) -> str:
    """What Log(fmt) writes for one line at level to a pipe that is (or
    is not) the journal."""
    reader, writer = pipe
    monkeypatch.setattr(logs.sys, "stderr" if level <= Level.NOTICE else "stdout", writer)
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream(writer))
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    Log(fmt).write(level, "boom", rules=["a"])
    writer.close()
    return reader.read()


@pytest.mark.parametrize("fmt, journal, want", [
    (None, True, "<3>mcr-xdp: error: boom\n"),  # found the journal
    (None, False, "mcr-xdp: error: boom\n"),
    (Format.TEXT, True, "mcr-xdp: error: boom\n"),  # text forces plain lines
    (Format.JOURNAL, False, "<3>mcr-xdp: error: boom\n"),  # journal forces the prefix
    (Format.JOURNAL, True, "<3>mcr-xdp: error: boom\n"),
])
def test_log_formats(monkeypatch, pipe, fmt, journal, want):
    assert written(monkeypatch, pipe, fmt, journal=journal) == want


@pytest.mark.parametrize("journal", [True, False])
def test_log_json(monkeypatch, pipe, journal):
    got = written(monkeypatch, pipe, Format.JSON, Level.INFO, journal=journal)
    assert got.startswith("<6>{" if journal else "{") and got.endswith("}\n")
    obj = json.loads(got.removeprefix("<6>"))
    assert (obj["level"], obj["msg"], obj["rules"]) == ("info", "boom", ["a"])


def test_log_of_a_child_process():
    assert logs.from_env({FORMAT_ENV: "json"}).format is Format.JSON
    assert logs.from_env({}).format is None and logs.from_env({FORMAT_ENV: "nonsense"}).format is None


@pytest.fixture
def cli_log(monkeypatch):
    """The CLI's log as each command starts it, restored afterwards
    (attach sets its format and FORMAT_ENV for the relay's children)."""
    from mcr_xdp_cli.console import log

    monkeypatch.setattr(log, "format", None)
    monkeypatch.setenv(FORMAT_ENV, "text")
    monkeypatch.delenv(FORMAT_ENV)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    return log


def test_a_failed_attach_says_so_in_the_log_format(cli_log, tmp_path):
    """The error line of a start that fails (before the relay exists) is in
    the format asked for, with its level and exit code."""
    from mcr_xdp_cli.app import app

    missing = tmp_path / "nope.toml"
    res = CliRunner().invoke(app, ["attach", "--config", str(missing), "--log-format", "json"])
    assert res.exit_code == 2
    [obj] = [json.loads(text) for text in res.output.splitlines()]
    assert obj["level"] == "error" and obj["exit_code"] == 2 and str(missing) in obj["msg"], res.output
    assert os.environ[FORMAT_ENV] == "json"  # what the relay's workers would inherit

    res = CliRunner().invoke(app, ["attach", "--config", str(missing), "--log-format", "text"])
    assert res.output == f"mcr-xdp: error: {missing}: cannot read: No such file or directory\n"
