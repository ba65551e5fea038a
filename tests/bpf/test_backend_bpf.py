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
