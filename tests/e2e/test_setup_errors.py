"""What a user sees when the machine is not set up: clear messages naming
the fix, nothing attached, no traceback; --mode auto refuses too (a relay
20 times slower in userspace only when asked for). And Ctrl-C while a
relay starts: everything undone, exit 130."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from mcr_xdp.lab.proc import Proc
from tests.fixtures.relay import mcr, xdp_prog

pytestmark = pytest.mark.e2e

RULE = "239.1.1.1:5001=out0"


def without_bcc(tmp_path: Path) -> str:
    """PYTHONPATH with a bcc that cannot be imported first, as on a machine
    without python3-bpfcc (the rest of the path kept: a worktree's code)."""
    (tmp_path / "bcc").mkdir(exist_ok=True)
    (tmp_path / "bcc" / "__init__.py").write_text("raise ImportError('bcc is not installed here')\n")
    return f"PYTHONPATH={tmp_path}:{os.environ.get('PYTHONPATH', '')}"


# No datapath object to load (as on a machine without clang): bcc would compile it.
NO_OBJECT = "MCR_XDP_DATAPATH=bcc"


@pytest.mark.parametrize("mode", [("--xdp-mode", "native"), ()], ids=["native", "auto"])
def test_bcc_missing_points_to_make_setup(chain, tmp_path, mode):
    proc = chain.exec(chain.relay_in.ns, "env", without_bcc(tmp_path), NO_OBJECT, mcr(), "attach", chain.IN,
                      "--rule", RULE, *mode, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "make setup" in proc.stderr and "bcc" in proc.stderr
    if not mode:  # auto: no silent fall-back; the way to relay anyway is named
        assert "--mode userspace" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert xdp_prog(chain, chain.relay_in.ns, chain.IN) == ""


def test_the_prebuilt_datapath_needs_neither_bcc_nor_headers(chain, tmp_path):
    """The object make setup built loads with libbpf alone: no bcc, and
    an empty /lib/modules (no kernel headers)."""
    script = (f"mount -t tmpfs none /lib/modules && exec env {without_bcc(tmp_path)} {mcr()} attach {chain.IN} "
              f"--rule {RULE} --xdp-mode native")
    relay = Proc(chain.popen(chain.relay_in.ns, "unshare", "-m", "sh", "-c", script))
    chain.procs.append(relay)
    relay.wait_for("relaying", timeout=60)
    assert xdp_prog(chain, chain.relay_in.ns, chain.IN)  # attached
    assert relay.stop() == 0


def test_bcc_missing_userspace_mode_relays_when_asked(chain, tmp_path):
    relay = Proc(chain.popen(chain.relay_in.ns, "env", without_bcc(tmp_path), mcr(), "attach", chain.IN, "--rule",
                             RULE, "--mode", "userspace"))
    chain.procs.append(relay)
    relay.wait_for("relaying", timeout=60)
    assert relay.stop() == 0


def test_ctrl_c_while_starting_undoes_the_start_and_exits_130(chain):
    relay = Proc(chain.popen(chain.relay_in.ns, "env", NO_OBJECT, mcr(), "attach", chain.IN, "--rule", RULE,
                             "--xdp-mode", "native"))
    chain.procs.append(relay)
    time.sleep(1.0)  # bcc compiles the datapath for seconds
    assert relay.popen.poll() is None and not relay.lines, "started too fast to interrupt"
    assert relay.stop(signal.SIGINT, timeout=60) == 130
    stderr = relay.stderr()
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert not any("relaying" in line for line in relay.lines)
    assert xdp_prog(chain, chain.relay_in.ns, chain.IN) == ""


def test_kernel_headers_missing_points_to_make_setup(chain):
    # An empty /lib/modules in a private mount namespace: no headers for bcc.
    script = (f"mount -t tmpfs none /lib/modules && exec env {NO_OBJECT} {mcr()} attach {chain.IN} --rule {RULE} "
              "--xdp-mode native")
    proc = chain.exec(chain.relay_in.ns, "unshare", "-m", "sh", "-c", script, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "kernel headers" in proc.stderr and "make setup" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert xdp_prog(chain, chain.relay_in.ns, chain.IN) == ""
