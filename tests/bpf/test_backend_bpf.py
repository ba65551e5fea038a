"""The BPF backend's devmap slots against the kernel: a single-output rule
whose output interface is re-created again and again (a VPN or container
link gets a new ifindex each time) never runs out of mcr_tx_ports slots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mcr_xdp import abi

pytestmark = pytest.mark.root

CHURN = """
import ctypes, json, subprocess
from mcr_xdp import abi, libbpf
from mcr_xdp.backends import InstalledRule
from mcr_xdp.backends.bpf import BpfBackend
from mcr_xdp.links import lookup
from mcr_xdp.rules import parse_rule

def ip(*args):
    subprocess.run(["ip", *args], check=True)

ip("link", "add", "in0", "type", "veth", "peer", "name", "in0p")
backend = BpfBackend()
rule = parse_rule("in0/239.1.1.1:5001=out0/239.2.2.2:5002")
seen = set()
for i in range({rounds}):
    ip("link", "add", "out0", "type", "veth", "peer", "name", "out0p")
    links = lookup(["in0", "out0"])
    seen.add(links["out0"].ifindex)
    backend.put_rule(InstalledRule(0, 0, rule, links["in0"].ifindex), links, fresh=i == 0)
    last = links["out0"].ifindex
    ip("link", "del", "out0")
ip("link", "add", "out0", "type", "veth", "peer", "name", "out0p")
links = lookup(["in0", "out0"])
backend.put_rule(InstalledRule(0, 0, rule, links["in0"].ifindex), links, fresh=False)
ports = []
fd = backend.datapath.maps.fds[abi.MAP_TX_PORTS]
for slot in range(abi.MAX_PORTS):
    value = abi.DevmapVal()
    if libbpf.map_lookup(fd, ctypes.c_uint32(slot), value) and value.ifindex:
        ports.append((slot, value.ifindex))
print(json.dumps({{"ifindexes": len(seen), "slots": backend._slots.in_use, "ports": ports,
                   "out0": links["out0"].ifindex}}))
backend.close()
"""


def test_an_output_recreated_more_times_than_there_are_slots():
    ns = f"mcr-{os.getpid()}-slots"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                              CHURN.format(rounds=abi.MAX_PORTS + 8)],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        got = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert got["ifindexes"] == abi.MAX_PORTS + 8  # every round a new interface
    # One slot in use, naming the interface that exists now; the kernel
    # emptied the slots of the deleted ones and the backend reused them.
    assert list(got["slots"].items()) == [(str(got["out0"]), got["ports"][0][0])]
    assert [ifindex for _, ifindex in got["ports"]] == [got["out0"]]


def test_pinned_counters_it_cannot_take_over_still_relay(tmp_path, monkeypatch):
    """A killed relay's pins of the right ABI version but a map bcc will not
    take (here: a counter map of the wrong size): the backend compiles
    without them, counts from zero and says so, rather than fail to start."""
    from mcr_xdp import libbpf, loader, pins
    from mcr_xdp.backends.bpf import BpfBackend

    monkeypatch.setattr(pins, "_bpffs", pins.Bpffs(tmp_path, "a test directory"))
    directory = pins.pin_dir("x")
    directory.mkdir(parents=True)
    # tmp_path is no bpffs: the names only need to exist for the backend to
    # try them; bcc then fails to open them as maps.
    for name in loader.ADOPTED_MAPS:
        (directory / name).write_text("")
    backend = BpfBackend(left={"instance": "x", "pid": 1234, "abi_version": abi.ABI_VERSION})
    try:
        assert backend.adopt_notice == "counters start again: the killed relay's pinned maps could not be taken over"
        assert sum(c.packets for c in backend.counters.verdicts()) == 0
        assert libbpf.prog_id(backend.datapath.prog_fd) > 0
    finally:
        backend.close()


DIRECT = """
import ctypes, json, subprocess
from mcr_xdp import abi, libbpf
from mcr_xdp.backends import InstalledRule
from mcr_xdp.backends.bpf import BpfBackend
from mcr_xdp.links import lookup
from mcr_xdp.rules import parse_rule

for name in ("in0", "out0", "out1"):
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
links = lookup(["in0", "out0", "out1"])
backend = BpfBackend()
fd = backend.datapath.maps.fds[abi.MAP_TX_DIRECT]

def direct():
    found = {}
    for slot in range(abi.MAX_PORTS):
        value = abi.DevmapVal()
        if libbpf.map_lookup(fd, ctypes.c_uint32(slot), value) and value.ifindex:
            found[slot] = value.ifindex
    return sorted(found.values())

names = {links[n].ifindex: n for n in ("out0", "out1")}
steps = {}
single = InstalledRule(0, 0, parse_rule("in0/239.1.1.1:5001=out0/239.2.2.2:5002"), links["in0"].ifindex)
other = InstalledRule(1, 1, parse_rule("in0/239.1.1.3:5001=out1/239.2.2.3:5002"), links["in0"].ifindex)
backend.put_rule(single, links, fresh=True)
backend.put_rule(other, links, fresh=True)
steps["singles"] = direct()
fanout = InstalledRule(2, 2, parse_rule("in0/239.1.1.2:5001=out0/239.3.3.3:5003,out0/239.4.4.4:5004"),
                       links["in0"].ifindex)
backend.put_rule(fanout, links, fresh=True)
steps["fan-out on out0"] = direct()
backend.delete_rule(fanout)
steps["fan-out gone"] = direct()
backend.put_rule(InstalledRule(1, 1, parse_rule("in0/239.1.1.3:5001=out1/239.2.2.3:5002,out0/239.9.9.9:5009"),
                               links["in0"].ifindex), links, fresh=False)
steps["a single rule becomes fan-out"] = direct()
backend.put_rule(other, links, fresh=False)
steps["and single again"] = direct()
backend.close()
print(json.dumps({k: [names[i] for i in v] for k, v in steps.items()}))
"""


def test_direct_slots_only_for_interfaces_without_fan_out():
    """A one-output rule's interface has a slot in mcr_tx_direct (no egress
    program) only while no fan-out rule sends there: the kernel runs one
    program over a device's whole batch."""
    ns = f"mcr-{os.getpid()}-direct"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", DIRECT],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        got = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert got == {"singles": ["out0", "out1"], "fan-out on out0": ["out1"], "fan-out gone": ["out0", "out1"],
                   "a single rule becomes fan-out": [], "and single again": ["out0", "out1"]}
