"""The relay's modes end to end (issue 5): native XDP (with CPU steering),
TC, the userspace PACKET_FANOUT fallback, and auto's fall-through.

Every count is exact: the predecessor's multi-worker fallback duplicated
packets (1.28x), and a relay that loses or duplicates one packet in ten
thousand fails here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time

import pytest

from mcr_xdp import abi
from mcr_xdp.lab.proc import Proc
from tests.fixtures.relay import SCALE, mcr, relay_cli, relay_streams, result, send, start_receiver, start_relay

pytestmark = pytest.mark.e2e

# The per-mode options of "2 workers": two steering CPUs for XDP (each
# forwards its flows), two PACKET_FANOUT workers for userspace; TC runs on
# whichever CPU receives, its per-CPU counters are the workers.
MODES = {
    "xdp-native": ["--mode", "xdp-native", "--steer-cpus", "0,1"],
    "tc": ["--mode", "tc"],
    "userspace": ["--mode", "userspace", "--workers", "2"],
}


def assert_exact(got: dict, count: int, dest: str | None = None) -> None:
    assert got["unique"] == count, got
    assert got["received"] == count, got  # no duplicates, no strays
    assert got["missing"] == 0 and got["corrupt"] == 0, got
    if dest is not None:
        assert got["destinations"] == {dest: count}, got


def status(topo) -> dict:
    proc = relay_cli(topo, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def stats(topo) -> dict:
    proc = relay_cli(topo, "stats", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def per_worker_forwarded(topo, mode: str) -> list[int]:
    """Forwarded packets per worker: per userspace worker, per CPU otherwise."""
    if mode == "userspace":
        return [w["forwarded"] for w in status(topo)["userspace"]["workers"]]
    return [c["forwarded"] for c in stats(topo)["cpus"]]


def interface_mode(topo, name: str = "in0") -> dict:
    return next(i for i in status(topo)["interfaces"] if i["name"] == name)


def csum_errors(topo, sink: int = 0) -> int:
    return topo.snmp(topo.sink[sink].ns)["InCsumErrors"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("count, rate", [(10_000, 10_000), (50_000, 5_000)], ids=["10k", "50k-at-5kpps"])
def test_two_workers_exact_count(chain, mode, count, rate):
    """The predecessor's multi-worker check: every packet out exactly once,
    and the per-worker counters add up to what the sink received."""
    start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001={chain.OUT}/239.2.2.2:5002", *MODES[mode])
    assert interface_mode(chain)["mode"] == mode
    receiver = start_receiver(chain, "239.2.2.2", 5002, count)
    before = csum_errors(chain)
    send(chain, "239.1.1.1", 5001, count, rate=rate, size=200)
    got = result(receiver)
    st = status(chain)
    assert_exact(got, count, "239.2.2.2:5002")  # on failure, st says where (ring_drops, notices)
    assert csum_errors(chain) == before
    if mode == "userspace":
        assert st["userspace"]["ring_drops"] == {"in0": 0}
    workers = per_worker_forwarded(chain, mode)
    assert len(workers) == 2
    assert sum(workers) == got["received"]


@pytest.mark.parametrize("inner_loop", ["compiled", "python"])
def test_userspace_inner_loops(chain, inner_loop):
    """The workers relay through the compiled inner loop (fallback/native.py)
    when it is built, through Python otherwise (MCR_XDP_INNER_LOOP=python
    stands for a host without it): status says which, and both relay every
    packet once, partial checksums (a sender with TX offload) completed."""
    env = {**os.environ, "MCR_XDP_INNER_LOOP": inner_loop} if inner_loop == "python" else None
    chain.exec(chain.src.ns, "ethtool", "-K", chain.src.name, "tx", "on")
    relay = start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001={chain.OUT}/239.2.2.2:5002", *MODES["userspace"],
                        env=env)
    assert status(chain)["userspace"]["inner_loop"] == inner_loop
    assert any("relaying in Python" in line for line in relay.lines) == (inner_loop == "python")
    receiver = start_receiver(chain, "239.2.2.2", 5002, 10_000)
    before = csum_errors(chain)
    send(chain, "239.1.1.1", 5001, 10_000, rate=10_000, size=200)
    assert_exact(result(receiver), 10_000, "239.2.2.2:5002")
    assert csum_errors(chain) == before
    assert sum(per_worker_forwarded(chain, "userspace")) == 10_000


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("streams", [1, 2, 5])
def test_concurrent_streams_no_loss(chain, mode, streams):
    for got in relay_streams(chain, streams, 2000, *MODES[mode]).values():
        assert_exact(got, 2000)


@pytest.mark.parametrize("chain", [3], indirect=True)
@pytest.mark.parametrize("mode", ["tc", "userspace"])
def test_fanout_three_outputs_exact_per_output(chain, mode):
    count = 3000
    outs = [("239.3.3.1", 6001), ("239.3.3.2", 6002), ("239.3.3.3", 6003)]
    rule = "239.1.1.1:5001=" + ",".join(f"out{i}/{g}:{p}" for i, (g, p) in enumerate(outs))
    start_relay(chain, chain.IN, "--rule", rule, *MODES[mode])
    receivers = [start_receiver(chain, g, p, count, sink=i) for i, (g, p) in enumerate(outs)]
    before = [csum_errors(chain, i) for i in range(3)]
    send(chain, "239.1.1.1", 5001, count, rate=3000, size=300)
    for i, (g, p) in enumerate(outs):
        assert_exact(result(receivers[i]), count, f"{g}:{p}")
        assert csum_errors(chain, i) == before[i]
    rule_stats = stats(chain)["rules"][0]
    assert rule_stats["forwarded"] == count
    assert [o["packets"] for o in rule_stats["outputs"]] == [count] * 3


def csum_errors6(topo, sink: int = 0) -> int:
    return topo.snmp6(topo.sink[sink].ns)["Udp6InCsumErrors"]


@pytest.mark.parametrize("mode", ["tc", "userspace"])
@pytest.mark.parametrize("family", [4, 6], ids=["IPv4", "IPv6"])
def test_partial_checksums_from_a_local_sender(chain, mode, family):
    """A sender with TX checksum offload hands the relay packets whose UDP
    checksum is still partial; TC and userspace must send them out right
    (XDP cannot: it never learns the checksum is partial)."""
    count = 2000
    (g_in, g_out), errors = ((("239.1.1.1", "239.2.2.2"), csum_errors) if family == 4
                             else (("ff3e::1", "ff3e::2"), csum_errors6))
    fmt = (lambda g: g) if family == 4 else (lambda g: f"[{g}]")
    chain.exec(chain.src.ns, "ethtool", "-K", chain.src.name, "tx", "on")
    start_relay(chain, chain.IN, "--rule", f"{fmt(g_in)}:5001={chain.OUT}/{fmt(g_out)}:5002", *MODES[mode])
    receiver = start_receiver(chain, g_out, 5002, count)
    before = errors(chain)
    send(chain, g_in, 5001, count, rate=4000, size=701)
    assert_exact(result(receiver), count, f"{g_out}:5002")
    assert errors(chain) == before


def test_steering_keeps_each_stream_in_order_and_uses_both_cpus(chain):
    streams, per_stream = 8, 2500
    in_first, out_first = ipaddress.ip_address("239.10.0.1"), ipaddress.ip_address("239.20.0.1")
    rules = []
    for i in range(streams):
        rules += ["--rule", f"{in_first + i}:5001={chain.OUT}/{out_first + i}:5002"]
    relay = start_relay(chain, chain.IN, *rules, *MODES["xdp-native"])
    assert any("steering flows over CPUs 0,1" in line for line in relay.lines), relay.lines
    assert status(chain)["steering"] == {"cpus": [0, 1]}
    receiver = start_receiver(chain, str(out_first), 5002, per_stream, streams=streams)
    send(chain, str(in_first), 5001, per_stream, rate=2500, streams=streams)
    got = result(receiver)
    for i in range(streams):
        stream = got[f"{out_first + i}:5002"]
        assert_exact(stream, per_stream)
        assert stream["out_of_order"] == 0, stream
    cpus = stats(chain)["cpus"]
    assert len(cpus) == 2 and all(c["forwarded"] > 0 for c in cpus), cpus
    assert sum(c["forwarded"] for c in cpus) == streams * per_stream


@pytest.mark.parametrize("failing, expected", [
    # On a veth, generic XDP is passed over: it can't remove a VLAN tag the
    # peer sends in skb metadata (test_vlan.py), and TC can.
    ("xdp-native", "tc"),
    ("xdp-native,xdp-generic", "tc"),
    ("xdp-native,xdp-generic,tc", "userspace"),
])
def test_auto_falls_through_to_the_next_mode(chain, failing, expected):
    count = 1000
    env = {**os.environ, "MCR_XDP_FAIL_MODES": failing}
    relay = Proc(chain.popen(chain.relay_in.ns, mcr(), "attach", chain.IN, "--rule",
                             f"239.1.1.1:5001={chain.OUT}/239.2.2.2:5002", env=env))
    chain.procs.append(relay)
    relay.wait_for("relaying", timeout=60 * SCALE)
    iface = interface_mode(chain)
    assert iface["mode"] == expected
    reasons = {n["mode"]: n["reason"] for n in iface["not_used"]}
    assert list(reasons) == ["xdp-native", "xdp-generic", "tc"][:len(iface["not_used"])]
    for mode, reason in reasons.items():
        assert ("MCR_XDP_FAIL_MODES" if mode in failing.split(",") else "VLAN tag") in reason, reasons
    receiver = start_receiver(chain, "239.2.2.2", 5002, count)
    send(chain, "239.1.1.1", 5001, count, rate=2000)
    assert_exact(result(receiver), count, "239.2.2.2:5002")
    assert relay.stop() == 0
    assert f"in0 runs in {expected} mode" in relay.stderr()


def qdiscs(topo) -> str:
    return topo.exec(topo.relay_in.ns, "tc", "qdisc", "show", "dev", topo.IN).stdout


def test_tc_cleans_up_on_stop_and_detach_removes_a_killed_relays_filter(chain):
    rule = f"239.1.1.1:5001={chain.OUT}"
    relay = start_relay(chain, chain.IN, "--rule", rule, "--mode", "tc")
    assert "clsact" in qdiscs(chain)
    assert relay.stop() == 0
    assert "clsact" not in qdiscs(chain)

    relay = start_relay(chain, chain.IN, "--rule", rule, "--mode", "tc")
    relay.stop(sig=9)
    assert abi.PROG_TC in chain.exec(chain.relay_in.ns, "tc", "filter", "show", "dev", chain.IN, "ingress").stdout
    # (The same attach again would take the filter over: test_restart.)
    proc = relay_cli(chain, "detach", chain.IN)
    assert proc.returncode == 0, proc.stderr
    assert "TC filter" in proc.stdout
    assert "clsact" not in qdiscs(chain)


def running(pid: int) -> bool:
    """pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_userspace_one_relay_per_input_and_workers_end_with_it(chain):
    rule = f"239.1.1.1:5001={chain.OUT}"
    relay = start_relay(chain, chain.IN, "--rule", rule, *MODES["userspace"])
    pids = [w["pid"] for w in status(chain)["userspace"]["workers"]]
    assert len(pids) == 2 and all(running(pid) for pid in pids)
    # A second one would send every packet again.
    second = chain.exec(chain.relay_in.ns, mcr(), "attach", chain.IN, "--rule", rule, "--mode", "userspace",
                        "--socket", "/run/mcr-xdp/second.sock", check=False)
    assert second.returncode == 4 and "another userspace relay" in second.stderr, second.stderr
    relay.stop(sig=9)
    deadline = time.monotonic() + 5
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(pid) for pid in pids), "workers outlived their relay"
