"""Unicast receivers and unicast inputs end to end, in every mode: copies
to a unicast receiver (head-end replication) beside multicast ones, to the
next hop's MAC the kernel resolved; a next hop that changes is followed, an
unknown one counted and reported; a UDP stream sent to an address of the
input relayed onto groups, without the host answering it. IPv4 and IPv6
at once, exact counts at socket receivers, TTL as asked, no checksum error
there."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.e2e.test_ranges import COUNT, MODES, assert_exact, relay_streams
from tests.fixtures.relay import SCALE, mcr, relay_cli, start_relay

pytestmark = pytest.mark.e2e

SINK4, SINK6 = "10.201.0.2", "fd00:201::2"  # the sink's addresses on the output network
IN4, IN6 = "10.200.1.2", "fd00:200:1::2"  # the relay input's own


def status(chain) -> dict:
    return json.loads(relay_cli(chain, "status", "--json").stdout)


def wait_resolved(chain, n: int, timeout: float = 20) -> list[dict]:
    """status' next_hops once n of them have a MAC (the managed neighbour
    entries the relay asked for answered)."""
    deadline = time.monotonic() + timeout * SCALE
    while True:
        hops = status(chain)["next_hops"]
        if sum(h["mac"] is not None for h in hops) >= n or time.monotonic() > deadline:
            return hops
        time.sleep(0.1)


def verdicts(chain) -> dict:
    snap = json.loads(relay_cli(chain, "stats", "--json").stdout)
    return {name: v["packets"] for name, v in snap["verdicts"].items()}


def sink_mac(chain) -> str:
    out = chain.exec(chain.sink[0].ns, "cat", f"/sys/class/net/{chain.sink[0].name}/address").stdout
    return out.strip()


@pytest.mark.parametrize("mode", MODES)
def test_unicast_receivers_beside_groups(chain, mode):
    """An IPv4 rule sends to a unicast receiver and to a group through the
    same output, an IPv6 rule to a unicast receiver: both streams at once,
    every copy where it belongs, to the receiver's MAC."""
    start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001={chain.OUT}/{SINK4}:6000,{chain.OUT}/239.2.2.2:5002",
                "--rule", f"[ff3e::1]:5001={chain.OUT}/[{SINK6}]:6000", *MODES[mode])
    hops = wait_resolved(chain, 2)
    assert {(h["via"], h["mac"]) for h in hops} == {(SINK4, sink_mac(chain)), (SINK6, sink_mac(chain))}, hops
    expected = [f"{SINK4}:6000", "239.2.2.2:5002", f"[{SINK6}]:6000"]
    got = relay_streams(chain, ["239.1.1.1:5001", "[ff3e::1]:5001"], expected)
    assert_exact(got, expected)
    assert verdicts(chain).get("drop_no_neigh", 0) == 0


@pytest.mark.parametrize("mode", MODES)
def test_unicast_inputs_onto_groups(chain, mode):
    """Streams sent to the input's own IPv4 and IPv6 addresses leave as
    multicast; the host never sees them (no ICMP port unreachable back)."""
    start_relay(chain, chain.IN, "--rule", f"{IN4}:5001={chain.OUT}/239.2.2.2:5002",
                "--rule", f"[{IN6}]:5001={chain.OUT}/[ff3e::2]:5002", *MODES[mode])
    assert not chain.igmp_groups(chain.relay_in.ns, chain.IN) & {"239.2.2.2"}  # nothing joined for them
    # The sender learns the input's MAC first: while its neighbour
    # discovery runs, its kernel queues a few packets and drops the rest
    # (IPv6 lost 9 of the first at 2 kpps), which is none of the relay's doing.
    mac = chain.exec(chain.relay_in.ns, "cat", f"/sys/class/net/{chain.IN}/address").stdout.strip()
    for address in (IN4, IN6):
        chain.exec(chain.src.ns, "ip", "neigh", "replace", address, "lladdr", mac, "dev", chain.src.name)
    no_ports = chain.snmp(chain.relay_in.ns)["NoPorts"], chain.snmp6(chain.relay_in.ns).get("Udp6NoPorts", 0)
    expected = ["239.2.2.2:5002", "[ff3e::2]:5002"]
    got = relay_streams(chain, [f"{IN4}:5001", f"[{IN6}]:5001"], expected)
    assert_exact(got, expected)
    assert (chain.snmp(chain.relay_in.ns)["NoPorts"],
            chain.snmp6(chain.relay_in.ns).get("Udp6NoPorts", 0)) == no_ports


@pytest.mark.parametrize("mode", ["xdp-native", "tc"])
def test_unresolved_receiver_is_counted_not_guessed(chain, mode):
    """A receiver nobody answers ARP for: its copies are dropped and
    counted as drop_no_neigh, status says why, and the rule's other output
    gets every packet."""
    ghost = "10.201.0.99"
    start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001={chain.OUT}/{ghost}:6000,{chain.OUT}/239.2.2.2:5002",
                *MODES[mode])
    got = relay_streams(chain, ["239.1.1.1:5001"], ["239.2.2.2:5002"])
    assert_exact(got, ["239.2.2.2:5002"])
    assert verdicts(chain)["drop_no_neigh"] == COUNT
    doc = status(chain)
    (hop,) = doc["next_hops"]
    assert (hop["via"], hop["mac"]) == (ghost, None) and hop["why"], hop
    assert any(f"{ghost}: unresolved" in n and "drop_no_neigh" in n for n in doc["notices"]), doc["notices"]
    shown = relay_cli(chain, "status").stdout
    assert "unicast receivers" in shown and f"{chain.OUT}/{ghost}:6000" in shown, shown
    # The receiver turns up: the kernel's next probe of the managed entry
    # (every 5 s) finds it, and the relay sends to it without a command.
    chain.exec(chain.sink[0].ns, "ip", "addr", "add", f"{ghost}/24", "dev", chain.sink[0].name)
    assert wait_resolved(chain, 1, timeout=30)[0]["mac"] == sink_mac(chain)
    got = relay_streams(chain, ["239.1.1.1:5001"], [f"{ghost}:6000", "239.2.2.2:5002"])
    assert_exact(got, [f"{ghost}:6000", "239.2.2.2:5002"])


@pytest.mark.parametrize("mode", ["xdp-native"])
def test_a_next_hop_that_changes_is_followed(chain, mode):
    """The receiver's MAC changes (a replaced host, a failover): once the
    neighbour table has the new one, the relay sends there, without a
    command, and every packet arrives."""
    start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001={chain.OUT}/{SINK4}:6000", *MODES[mode])
    wait_resolved(chain, 1)
    got = relay_streams(chain, ["239.1.1.1:5001"], [f"{SINK4}:6000"])
    assert_exact(got, [f"{SINK4}:6000"])
    new = "02:00:5e:aa:bb:cc"
    chain.exec(chain.sink[0].ns, "ip", "link", "set", chain.sink[0].name, "address", new)
    chain.exec(chain.relay_in.ns, "ip", "neigh", "replace", SINK4, "lladdr", new, "dev", chain.OUT, "nud", "reachable")
    deadline = time.monotonic() + 10 * SCALE
    while status(chain)["next_hops"][0]["mac"] != new and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status(chain)["next_hops"][0]["mac"] == new
    got = relay_streams(chain, ["239.1.1.1:5001"], [f"{SINK4}:6000"])
    assert_exact(got, [f"{SINK4}:6000"])


def test_detach_removes_the_neighbour_entries_it_made(chain):
    """The managed neighbour entry the relay asked for goes with it."""
    relay = start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001={chain.OUT}/{SINK4}:6000")
    wait_resolved(chain, 1)
    shown = chain.exec(chain.relay_in.ns, "ip", "neigh", "show", SINK4, "dev", chain.OUT).stdout
    assert "managed" in shown, shown
    relay.stop()
    shown = chain.exec(chain.relay_in.ns, "ip", "neigh", "show", SINK4, "dev", chain.OUT).stdout
    assert "managed" not in shown, shown


def test_a_unicast_input_port_in_use_is_refused(chain):
    """A program of the host listens on the input's address and port: the
    relay would take its traffic, so attach refuses, saying so."""
    holder = chain.popen(chain.relay_in.ns, sys.executable, "-c",
                         "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                         f"s.bind(('{IN4}', 5001)); print('bound', flush=True); time.sleep(60)",
                         stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        done = chain.exec(chain.relay_in.ns, mcr(), "attach", chain.IN, "--rule",
                          f"{IN4}:5001={chain.OUT}/239.2.2.2:5002", check=False)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    assert f"{IN4}:5001 on {chain.IN} is in use by another program" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_unicast_input_address_the_host_lacks_is_noticed(chain):
    """A unicast input for an address the input does not have (yet): a
    status notice says nothing arrives; once the address is added, the
    stream sent there is relayed, without a command."""
    later = "10.200.1.7"
    start_relay(chain, chain.IN, "--rule", f"{later}:5001={chain.OUT}/239.2.2.2:5002")
    notice = f"{later} is not an address of this host"
    assert any(notice in n for n in status(chain)["notices"])
    chain.exec(chain.relay_in.ns, "ip", "addr", "add", f"{later}/24", "dev", chain.IN)
    assert not any(notice in n for n in status(chain)["notices"])
    mac = chain.exec(chain.relay_in.ns, "cat", f"/sys/class/net/{chain.IN}/address").stdout.strip()
    chain.exec(chain.src.ns, "ip", "neigh", "replace", later, "lladdr", mac, "dev", chain.src.name)
    got = relay_streams(chain, [f"{later}:5001"], ["239.2.2.2:5002"])
    assert_exact(got, ["239.2.2.2:5002"])
