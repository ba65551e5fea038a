"""What the relay refuses before it touches the kernel (a loopback device as
input or output), the same in `attach` and `config check`; and what it
accepts with a warning (an interface that is down: it is followed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.relay import mcr, relay_cli, result, send, start_receiver, start_relay, xdp_prog

pytestmark = pytest.mark.e2e

LOOPBACK = "is a loopback device: nothing arrives there from a network and nothing sent there leaves the host"


@pytest.mark.parametrize("args", [
    ("in0", "--rule", "239.1.1.1:5001=lo"),
    ("in0", "--rule", "239.1.1.1:5001=out0,lo/239.2.2.2:5002"),
    ("lo", "--rule", "239.1.1.1:5001=out0"),
], ids=["output", "one output of a fan-out", "input"])
def test_a_loopback_device_is_refused(chain, tmp_path, args):
    proc = chain.exec(chain.relay_in.ns, mcr(), "attach", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"'lo' {LOOPBACK}" in proc.stderr and "Traceback" not in proc.stderr
    assert xdp_prog(chain, chain.relay_in.ns, "in0") == "" and xdp_prog(chain, chain.relay_in.ns, "lo") == ""

    iface, _, rule = args
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[inputs.{iface}]\nrules = ["{rule}"]\n')
    check = chain.exec(chain.relay_in.ns, mcr(), "config", "check", str(cfg), check=False)
    assert check.returncode == 2 and f"'lo' {LOOPBACK}" in check.stderr, check.stderr


def test_an_output_that_is_down_is_accepted_followed_and_said(chain):
    chain.exec(chain.relay_in.ns, "ip", "link", "set", chain.OUT, "down")
    relay = start_relay(chain, chain.IN, "--rule", "239.1.1.1:5001=out0/239.2.2.2:5002")
    assert json.loads(relay_cli(chain, "status", "--json").stdout)["links"]["out0"] == "down"

    chain.exec(chain.relay_in.ns, "ip", "link", "set", chain.OUT, "up")
    chain.exec(chain.sink[0].ns, "ip", "link", "set", chain.sink[0].name, "up")
    receiver = start_receiver(chain, "239.2.2.2", 5002, 300, idle=2.0)
    send(chain, "239.1.1.1", 5001, 300, rate=2000)
    assert result(receiver)["unique"] == 300
    assert relay.stop() == 0
    stderr = relay.stderr()
    assert "mcr-xdp: notice: interface out0 is down" in stderr and "interface out0 is up" in stderr, stderr


def test_dry_run_checks_everything_and_attaches_nothing(chain):
    """--dry-run: exit 0 with the programs the kernel verified, and then
    nothing of the relay anywhere: no program, no TC filter, no join, no
    pin, no socket; a bad rule or a busy interface exits as attach would."""
    ns = chain.relay_in.ns
    pins_before = sorted(p.name for p in Path("/sys/fs/bpf").glob("mcr*"))
    run = chain.exec(ns, mcr(), "attach", chain.IN, "--rule", "239.1.1.1:5001=out0/239.2.2.2:5002", "--dry-run",
                     check=False)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "input in0: free, would try xdp-native, xdp-generic, tc, userspace" in out
    assert "mcr_relay" in out and "mcr_tc_relay" in out and "mcr_cpu_relay" in out and "nothing attached" in out
    assert xdp_prog(chain, ns, chain.IN) == ""
    assert "mcr" not in chain.exec(ns, "tc", "filter", "show", "dev", chain.IN, "ingress", check=False).stdout
    assert "239.1.1.1" not in chain.igmp_groups(ns, chain.IN)
    assert sorted(p.name for p in Path("/sys/fs/bpf").glob("mcr*")) == pins_before
    assert not list(Path("/run/mcr-xdp").glob(f"netns-{ns}*"))

    bad = chain.exec(ns, mcr(), "attach", chain.IN, "--rule", "239.1.1.1:5001=nosuch0", "--dry-run", check=False)
    assert bad.returncode == 2 and "nosuch0" in bad.stderr and "Traceback" not in bad.stderr

    start_relay(chain, chain.IN, "--rule", "239.1.1.1:5001=out0")
    busy = chain.exec(ns, mcr(), "attach", chain.IN, "--rule", "239.1.1.1:5001=out0", "--dry-run",
                      "--socket", f"/run/mcr-xdp/{ns}-dry.sock", check=False)
    assert busy.returncode == 4 and "Traceback" not in busy.stderr, busy.stderr
