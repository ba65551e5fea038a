"""Policers end to end: a stream at twice its rule's ;police= rate gets the
rate through (within 2%), the rest dropped and counted as policed, in every
mode that forwards."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.relay import SCALE, relay_cli, result, send, start_receiver, start_relay, until

pytestmark = pytest.mark.e2e

MODES = {"xdp-native": ("--mode", "xdp-native"), "tc": ("--mode", "tc"),
         "userspace": ("--mode", "userspace", "--workers", "2")}
LIMIT = int(5000 / SCALE)  # packets a second
SENT = 4 * LIMIT * 2  # four seconds at twice the limit
BURST = max(LIMIT // 50, 1)  # 20 ms at the rate (encode.police_value)


@pytest.mark.parametrize("mode", MODES)
def test_a_policed_rule_delivers_its_rate(chain, mode):
    start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001=out0/239.2.2.2:5002;police={LIMIT}pps", *MODES[mode])
    receiver = start_receiver(chain, "239.2.2.2", 5002, SENT, idle=2.0)
    sent = send(chain, "239.1.1.1", 5001, SENT, rate=2 * LIMIT)
    got = result(receiver)
    # The bucket starts full, then fills at the rate for as long as the stream lasts.
    expected = LIMIT * sent["seconds"] + BURST
    assert abs(got["unique"] - expected) <= 0.02 * expected, (got, sent)
    assert got["duplicates"] == 0 and got["corrupt"] == 0
    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    rule = stats["rules"][0]
    assert rule["forwarded"] == got["unique"] and rule["dropped"] == SENT - got["unique"], rule
    assert stats["verdicts"]["drop_policed"]["packets"] == SENT - got["unique"]
    # The kernel datapath counts its policer's drops per rule; the userspace
    # workers only as the verdict (each worker holds its own bucket).
    assert rule["policed"] == (None if mode == "userspace" else SENT - got["unique"]), rule


LOOP_MODES = {"xdp-native": ("--mode", "xdp-native"), "xdp-generic": ("--mode", "xdp-generic"),
              "tc": ("--mode", "tc"), "userspace": ("--mode", "userspace", "--workers", "2")}


def _loop_back(chain) -> None:
    """A cable from the output's network back to the input's, bridged at
    both ends: every frame the relay sends on out0 comes back on its input.
    The sink's address moves to its bridge (named veth0, as the receiver
    expects); the sender keeps sending on its veth0, now a bridge port."""
    src, sink = chain.src.ns, chain.sink[0].ns
    chain.exec(src, "ip", "link", "add", "loopa", "type", "veth", "peer", "name", "loopb", "netns", sink)
    chain.exec(src, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
    for port in ("veth0", "loopa"):
        chain.exec(src, "ip", "link", "set", port, "master", "br0")
    for dev in ("loopa", "br0"):
        chain.exec(src, "ip", "link", "set", dev, "up")
    chain.exec(sink, "ip", "link", "set", "veth0", "down")
    chain.exec(sink, "ip", "link", "set", "veth0", "name", "lan0")
    chain.exec(sink, "ip", "link", "add", "veth0", "type", "bridge", "mcast_snooping", "0")
    for port in ("lan0", "loopb"):
        chain.exec(sink, "ip", "link", "set", port, "master", "veth0")
    for dev in ("lan0", "loopb", "veth0"):
        chain.exec(sink, "ip", "link", "set", dev, "up")
    chain.exec(sink, "ip", "addr", "add", "10.201.0.2/24", "dev", "veth0")
    _wait_forwarding(chain, (src, sink))


def _wait_forwarding(chain, namespaces) -> None:
    """Until every bridge port forwards. A veth's carrier comes up through
    the kernel's link watch, up to a second after `ip link set up`; until
    then its bridge port is disabled and floods nothing: a relay that
    starts fast (userspace) saw part of its copies never reach the cable."""
    def states():
        return {(ns, port["ifname"]): port.get("state") for ns in namespaces
                for port in json.loads(chain.exec(ns, "bridge", "-j", "link", "show").stdout or "[]")}

    def forwarding():
        now = states()
        return len(now) == 4 and set(now.values()) == {"forwarding"}

    until(forwarding, 5 * SCALE, lambda: f"bridge ports not forwarding: {states()}", interval=0.05)


@pytest.mark.parametrize("mode", LOOP_MODES)
def test_a_loop_is_broken_and_counted(chain, mode):
    """Without the guard each packet would come back and be relayed again
    until its TTL ran out: 15 copies of each at the receiver, and the input
    network flooded. With it every packet arrives once and each copy that
    came back is counted as drop_loop."""
    count = 2000
    _loop_back(chain)
    start_relay(chain, chain.IN, "--rule", "239.1.1.1:5001=out0", *LOOP_MODES[mode])
    receiver = start_receiver(chain, "239.1.1.1", 5001, count, idle=2.0)
    send(chain, "239.1.1.1", 5001, count, rate=2000, ttl=16)
    got = result(receiver)
    assert (got["unique"], got["duplicates"], got["received"]) == (count, 0, count), got
    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    # What came back over the cable (the relay's copies, and the sink's own
    # IGMP/MLD reports, which are not the relay's) was dropped as a loop:
    # every one of the relay's copies.
    came_back = int(chain.exec(chain.src.ns, "cat", "/sys/class/net/loopa/statistics/rx_packets").stdout)
    dropped = stats["verdicts"]["drop_loop"]["packets"]
    assert count <= dropped <= came_back <= dropped + 50, (dropped, came_back)
    assert stats["rules"][0]["forwarded"] == count
