"""Interfaces that come and go under a running relay: an output or input
deleted and re-created (VPN and container interfaces get a new ifindex each
time) is followed without a command; down and up are reported."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.relay import SCALE, relay_cli, result, send, start_receiver, start_relay, until

pytestmark = pytest.mark.e2e

RULE = "239.1.1.1:5001=out0/239.2.2.2:5002"


def _notices(chain) -> list[str]:
    proc = relay_cli(chain, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["notices"]


def _relayed(chain, count: int = 300) -> int:
    receiver = start_receiver(chain, "239.2.2.2", 5002, count, idle=2.0)
    send(chain, "239.1.1.1", 5001, count, rate=2000)
    return result(receiver)["unique"]


@pytest.mark.parametrize("mode", ["xdp-native", "tc", "userspace"])
def test_an_output_recreated_is_followed(chain, mode):
    relay = start_relay(chain, chain.IN, "--mode", mode, "--rule", RULE, "--interval", "0.5")
    assert _relayed(chain) == 300

    chain.exec(chain.relay_in.ns, "ip", "link", "del", chain.OUT)  # takes the sink's end with it
    until(lambda: any("output out0 is gone" in n for n in _notices(chain)), 10 * SCALE)

    chain.link(chain.relay_out[0], chain.sink[0])  # the same names, new ifindexes
    until(lambda: not any("is gone" in n for n in _notices(chain)), 10 * SCALE)
    assert _relayed(chain) == 300

    assert relay.stop() == 0
    stderr = relay.stderr()
    assert "rule 0: output out0 is gone" in stderr and "rule 0: relaying to out0 again" in stderr, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("mode", ["xdp-native", "tc", "userspace"])
def test_an_input_recreated_is_attached_again(chain, mode):
    relay = start_relay(chain, chain.IN, "--mode", mode, "--rule", RULE, "--interval", "0.5")
    assert _relayed(chain) == 300

    chain.exec(chain.relay_in.ns, "ip", "link", "del", chain.IN)
    until(lambda: any("input in0 is gone" in n for n in _notices(chain)), 10 * SCALE)

    chain.link(chain.src, chain.relay_in)
    until(lambda: not any("is gone" in n for n in _notices(chain)), 10 * SCALE)
    status = json.loads(relay_cli(chain, "status", "--json").stdout)
    [iface] = status["interfaces"]
    assert (iface["name"], iface["mode"], iface["joins"], iface["rules"]) == ("in0", mode, 1, 1)
    assert "239.1.1.1" in chain.igmp_groups(chain.relay_in.ns, chain.IN)  # joined again
    assert _relayed(chain) == 300
    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    assert stats["rules"][0]["forwarded"] == 600  # the same rule, counters kept

    assert relay.stop() == 0
    stderr = relay.stderr()
    assert "input in0 is gone" in stderr and f"input in0 is back: attached in {mode} mode" in stderr, stderr
    assert "Traceback" not in stderr


def test_an_output_down_and_up_is_reported(chain):
    """With a counter interval far longer than the test: netlink link
    events, not the periodic check, bring the news."""
    relay = start_relay(chain, chain.IN, "--rule", RULE, "--interval", "600")
    status = json.loads(relay_cli(chain, "status", "--json").stdout)
    assert status["links"] == {"in0": "up", "out0": "up"}

    chain.exec(chain.relay_in.ns, "ip", "link", "set", chain.OUT, "down")
    until(lambda: "interface out0 is down" in _notices(chain), 10 * SCALE)
    assert json.loads(relay_cli(chain, "status", "--json").stdout)["links"]["out0"] == "down"
    chain.exec(chain.relay_in.ns, "ip", "link", "set", chain.OUT, "up")
    until(lambda: "interface out0 is down" not in _notices(chain), 10 * SCALE)
    assert _relayed(chain) == 300

    assert relay.stop() == 0
    stderr = relay.stderr()
    assert "interface out0 is down" in stderr and "interface out0 is up" in stderr, stderr
