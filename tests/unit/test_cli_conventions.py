"""The conventions operators expect of a command: --version / -V, -h for
help on the command and every subcommand, no traceback for either."""

from __future__ import annotations

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
