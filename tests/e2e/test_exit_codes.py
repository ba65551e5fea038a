"""Every exit code the README lists, from the command a user would run to
get it: the README's list and this file's table must name the same codes."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from mcr_xdp.lab.proc import Proc
from tests.fixtures.pkgtools import ROOT
from tests.fixtures.relay import mcr, relay_cli, start_relay

pytestmark = pytest.mark.e2e

RULE = "239.1.1.1:5001=out0"
# Not root, whatever the checkout's permissions: the user nobody, with
# CAP_DAC_READ_SEARCH alone so that it can read a checkout under /root.
NOT_ROOT = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search")
CODES = {0, 1, 2, 3, 4, 75, 77, 130}


def test_the_readme_lists_these_codes():
    text = " ".join((ROOT / "README.md").read_text().split())
    listed = re.search(r"Exit codes: (.*?)\.", text)[1]
    assert {int(n) for n in re.findall(r"(?:^|, )(\d+) ", listed)} == CODES, listed


def _code(chain, *args, env=None) -> tuple[int, str]:
    run = chain.exec(chain.relay_in.ns, *args, check=False, **({"env": env} if env else {}))
    assert "Traceback" not in run.stderr, run.stderr
    return run.returncode, run.stderr


def test_each_exit_code(chain, tmp_path):
    relay = start_relay(chain, chain.IN, "--rule", RULE, "--mode", "userspace")
    ns = chain.relay_in.ns

    # 0: success
    assert relay_cli(chain, "status", "--json").returncode == 0
    # 1: a refusal by the running relay, or a failed check: no relay at that socket
    code, err = _code(chain, mcr(), "status", "--socket", str(tmp_path / "none.sock"))
    assert code == 1 and "no relay is running here" in err
    # 2: bad rule, option, config or interface
    code, err = _code(chain, mcr(), "rule", "del", "99")
    assert code == 2 and "99" in err
    assert _code(chain, mcr(), "rule", "add", "239.1.1.1:99999=out0")[0] == 2
    assert _code(chain, mcr(), "attach", chain.IN, "--rule", RULE, "--bogus")[0] == 2
    (tmp_path / "bad.toml").write_text("[inputs.in0]\nrules = [1]\n")
    assert _code(chain, mcr(), "config", "check", "--offline", str(tmp_path / "bad.toml"))[0] == 2
    assert _code(chain, mcr(), "attach", "nosuch0", "--rule", RULE)[0] == 2
    # 3: missing setup: no datapath object to load (as without clang) and a
    # bcc that cannot be imported
    (tmp_path / "bcc").mkdir()
    (tmp_path / "bcc" / "__init__.py").write_text("raise ImportError('no bcc here')\n")
    code, err = _code(chain, "env", f"PYTHONPATH={tmp_path}:{os.environ.get('PYTHONPATH', '')}",
                      "MCR_XDP_DATAPATH=bcc", mcr(), "attach", chain.OUT, "--rule", "239.1.1.2:5001=in0",
                      "--socket", str(tmp_path / "other.sock"))
    assert code == 3 and "bcc" in err
    # 4: another relay serves the socket
    code, err = _code(chain, mcr(), "attach", chain.OUT, "--rule", "239.1.1.2:5001=in0")
    assert code == 4, err
    # 77: not root
    for args in (("status",), ("rule", "add", "239.1.1.3:5001=out0"), ("stats",),
                 ("attach", chain.IN, "--rule", RULE, "--socket", str(tmp_path / "x.sock"))):
        code, err = _code(chain, *NOT_ROOT, mcr(), *args)
        assert code == 77 and "root" in err, (args, code, err)
    # 130: interrupted (Ctrl-C in a command that runs until stopped)
    # As a terminal starts it: with Ctrl-C's default action, whatever this
    # test run inherited (a shell's background job ignores SIGINT, and so
    # would every child, Python's KeyboardInterrupt included).
    watch = Proc(chain.popen(ns, mcr(), "stats", "--watch", "0.2",
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)))
    chain.procs.append(watch)
    watch.wait_for("schema_version", timeout=30)
    assert watch.stop(signal.SIGINT) == 130
    # 75: handed over (SIGQUIT): exits for the next relay to take over
    assert relay.stop(signal.SIGQUIT) == 75
    time.sleep(0.2)
    # Ctrl-C (or SIGTERM) on a running relay is how it is stopped: 0
    again = start_relay(chain, chain.IN, "--rule", RULE, "--mode", "userspace")
    assert again.stop(signal.SIGINT) == 0
