"""The lab (mcr_xdp.lab) as the CLI sees it: its failures are McrErrors, so
a failing `mcr-xdp demo` prints one line and exits with a code instead of a
traceback. No namespace is built: the topology's build is replaced."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mcr_xdp import features
from mcr_xdp.errors import McrError, TopologyError
from mcr_xdp.lab.netns import Chain
from mcr_xdp.lab.proc import Proc
from mcr_xdp_cli.app import app


def test_topology_error_is_an_mcr_error():
    assert issubclass(TopologyError, McrError)
    assert TopologyError("no namespace").exit_code == 1


def test_failing_demo_reports_one_line(monkeypatch):
    def build(self):
        raise TopologyError("creating network namespace mcr-demo-1-1-src: [Errno 1] Operation not permitted")

    monkeypatch.setattr(features, "require_root", lambda what: None)
    monkeypatch.setattr(Chain, "build", build)

    res = CliRunner().invoke(app, ["demo"])

    assert res.exit_code == 1
    assert "mcr-xdp: error: creating network namespace mcr-demo-1-1-src" in res.output
    assert "Traceback" not in res.output


def test_process_that_ends_without_the_line_is_a_topology_error():
    popen = subprocess.Popen([sys.executable, "-c", "print('started'); import sys; sys.exit('no relay')"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = Proc(popen)

    assert proc.wait_for("started", timeout=30) == "started"
    with pytest.raises(TopologyError, match="never printed 'relaying': no relay"):
        proc.wait_for("relaying", timeout=30)
    assert proc.stop() == 1
