"""The conventions operators expect of a command: --version / -V, -h for
help on the command and every subcommand, no traceback for either."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mcr_xdp import __version__
from mcr_xdp_cli.app import app

runner = CliRunner()


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    res = runner.invoke(app, [flag])
    assert res.exit_code == 0 and res.output == f"mcr-xdp {__version__}\n"


@pytest.mark.parametrize("args", [["-h"], ["attach", "-h"], ["rule", "-h"], ["rule", "add", "-h"], ["stats", "-h"]])
def test_short_help(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "Usage:" in res.output and "--help" in res.output and "-h" in res.output


def test_stats_of_a_relay_it_may_not_reach_says_so(monkeypatch):
    """Not root: the socket's refusal (exit 77), not a fall-back to the
    pinned maps that would fail less clearly."""
    from mcr_xdp import control, pins

    def refused(*args, **kwargs):
        raise control.ControlError("permission denied on /run/mcr-xdp/mcr-xdp.sock: run as root", 77)

    def never(*args, **kwargs):
        raise AssertionError("the pinned maps were read")

    monkeypatch.setattr(control, "request", refused)
    monkeypatch.setattr(pins, "read_stats", never)
    res = runner.invoke(app, ["stats"])
    assert res.exit_code == 77 and "run as root" in res.output


# -- the plain socket commands, answered without typer -------------------------

@pytest.mark.parametrize("argv, expected", [
    (["status"], ("status", {"socket_path": None, "as_json": False})),
    (["status", "--json", "--socket", "/s"], ("status", {"socket_path": "/s", "as_json": True})),
    (["status", "--socket=/s"], ("status", {"socket_path": "/s", "as_json": False})),
    (["rule", "list", "--json"], ("rule_list", {"socket_path": None, "as_json": True})),
    (["rule", "add", "239.1.1.1:5001=b", "[ff3e::1]:5001=c"],
     ("rule_add", {"socket_path": None, "rules": ["239.1.1.1:5001=b", "[ff3e::1]:5001=c"]})),
    (["rule", "del", "--socket", "/s", "3"], ("rule_del", {"socket_path": "/s", "rule": "3"})),
    (["stats"], ("stats_once", {"socket_path": None, "as_json": False})),
    (["stats", "--json"], ("stats_once", {"socket_path": None, "as_json": True})),
    # typer's: help, options the plain parser does not know, missing values
    (["status", "-h"], None), (["status", "--help"], None), (["stats", "--live"], None),
    (["stats", "--watch", "1"], None), (["status", "--socket"], None), (["status", "extra"], None),
    (["rule", "add"], None), (["rule", "del"], None), (["rule", "del", "1", "2"], None),
    (["rule", "add", "--", "x"], None), (["rule"], None), (["attach", "eth0"], None), ([], None),
    (["statu"], None),
])
def test_plain_forms(argv, expected):
    from mcr_xdp_cli import socket_cmds

    got = socket_cmds.plain(argv)
    assert (None if got is None else (got[0].__name__, got[1])) == expected


def test_plain_forms_are_the_typer_commands():
    """Every plain form is a typer command taking the same options, so the
    two parsers cannot drift apart unnoticed."""
    import typer.main

    from mcr_xdp_cli import socket_cmds

    group = typer.main.get_command(app)
    for words, (_, flags, positional) in socket_cmds._PLAIN.items():
        command = group
        for word in words:
            command = command.commands[word]
        options = {opt for p in command.params if p.param_type_name == "option" for opt in p.opts}
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        assert {"--socket", *flags} <= options, words  # the others go to typer
        assert [(a.nargs, a.required) for a in arguments] == {None: [], 1: [(1, True)], "+": [(-1, True)]}[positional]


def _main(*argv: str) -> subprocess.CompletedProcess:
    code = ("import sys; from mcr_xdp_cli.app import main; sys.argv[1:] = sys.argv[1:]\n"
            "try:\n    main()\nfinally:\n    print('typer' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv, code, message", [
    (["status", "--socket", "/nonexistent/relay.sock"], 1, "no relay is running here"),
    (["rule", "del", "--socket=/nonexistent/relay.sock", "3"], 1, "no relay is running here"),
    (["stats", "--json", "--socket", "/etc/passwd/x.sock"], 1, "Not a directory"),
])
def test_plain_forms_answer_without_typer_as_typer_would(argv, code, message):
    res = _main(*argv)
    assert res.returncode == code and message in res.stderr and res.stdout == "False\n"
    assert "Traceback" not in res.stderr
    typer_res = runner.invoke(app, argv)
    assert typer_res.exit_code == code and typer_res.output == res.stderr


def test_version_without_typer():
    res = _main("--version")
    assert res.returncode == 0 and res.stdout == f"mcr-xdp {__version__}\nFalse\n"
