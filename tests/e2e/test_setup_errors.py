"""What a user sees when the machine is not set up: clear messages naming
the fix, nothing attached, no traceback. (In --mode auto the relay would
fall back to the userspace path instead; these ask for XDP explicitly.)"""

from __future__ import annotations

import pytest

from tests.fixtures.relay import mcr, xdp_prog

pytestmark = pytest.mark.e2e

RULE = "239.1.1.1:5001=out0"


def test_bcc_missing_points_to_make_setup(chain, tmp_path):
    # A bcc that cannot be imported, first on the path, as on a machine
    # without python3-bpfcc.
    (tmp_path / "bcc").mkdir()
    (tmp_path / "bcc" / "__init__.py").write_text("raise ImportError('bcc is not installed here')\n")
    proc = chain.exec(chain.relay_in.ns, "env", f"PYTHONPATH={tmp_path}", mcr(), "attach", chain.IN, "--rule", RULE,
                      "--xdp-mode", "native", check=False)
    assert proc.returncode == 3, proc.stderr
    assert "make setup" in proc.stderr and "bcc" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert xdp_prog(chain, chain.relay_in.ns, chain.IN) == ""


def test_kernel_headers_missing_points_to_make_setup(chain):
    # An empty /lib/modules in a private mount namespace: no headers for bcc.
    script = f"mount -t tmpfs none /lib/modules && exec {mcr()} attach {chain.IN} --rule {RULE} --xdp-mode native"
    proc = chain.exec(chain.relay_in.ns, "unshare", "-m", "sh", "-c", script, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "kernel headers" in proc.stderr and "make setup" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert xdp_prog(chain, chain.relay_in.ns, chain.IN) == ""
