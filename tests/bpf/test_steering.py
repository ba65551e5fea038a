"""CPU steering in the ingress program (--steer-cpus), under
BPF_PROG_TEST_RUN.

With steering on, a frame that matches a rule goes to its flow's CPU
untouched (the cpumap program there rewrites, forwards and counts it, so
the ingress counts nothing); anything else is handled on the spot as
without steering. The cpumap program itself cannot be test-run (the kernel
refuses programs of that attach type): it is the same forward() as the
ingress with steering off, which test_relay_prog.py covers, and the
end-to-end tests run it for real.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace

import pytest

from mcr_xdp import abi, encode, libbpf
from mcr_xdp.rules import parse_rule
from tests.fixtures.packets import Udp4

pytestmark = pytest.mark.root

LO = 1
IN = Udp4()  # 239.1.1.1:5001


@pytest.fixture(scope="module")
def steered(datapath):
    """A rule out of lo, steering over CPU 0."""
    maps = datapath.maps
    rule = parse_rule("239.1.1.1:5001=lo/239.2.2.2:5002", "in")
    out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=0, src_mac=bytes(6))
    maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, 0, [out]))
    maps.set_port(0, LO, datapath.egress_fd)
    maps.reset_rule_counters(0)
    datapath.set_steering([0])
    yield datapath
    datapath.set_steering([])


def counts(maps) -> tuple[list[int], int]:
    return [c.packets for c in maps.verdicts()], maps.rule_counters(0).packets


def test_a_matching_frame_goes_to_its_cpu_untouched_and_uncounted(steered, run_xdp):
    before = counts(steered.maps)
    action, out = run_xdp(IN.build(), LO)
    assert action == libbpf.XDP_REDIRECT
    assert out == IN.build()  # the CPU it lands on rewrites it
    assert counts(steered.maps) == before


def test_other_traffic_is_handled_here(steered, run_xdp):
    verdicts, _ = counts(steered.maps)
    action, out = run_xdp(replace(IN, dst="239.9.9.9").build(), LO)
    assert action == libbpf.XDP_PASS
    verdicts[abi.Verdict.PASS_NO_RULE] += 1
    assert counts(steered.maps)[0] == verdicts


def test_a_cpu_without_a_cpumap_entry_forwards_here(steered, run_xdp):
    """Steering to a CPU the cpumap has no entry for (a CPU gone offline)
    must not lose the frame."""
    fd = steered.maps.fds[abi.MAP_STEER]
    libbpf.map_update(fd, ctypes.c_uint32(0), ctypes.c_uint32(1))  # CPU 1: no entry
    try:
        verdicts, rule_packets = counts(steered.maps)
        action, out = run_xdp(IN.build(), LO)
        assert action == libbpf.XDP_REDIRECT
        assert out != IN.build()  # rewritten here: it went to the output
        verdicts[abi.Verdict.REDIRECT] += 1
        assert counts(steered.maps) == (verdicts, rule_packets + 1)
    finally:
        libbpf.map_update(fd, ctypes.c_uint32(0), ctypes.c_uint32(0))


def test_steering_off_forwards_here(steered, run_xdp):
    steered.set_steering([])
    try:
        verdicts, _ = counts(steered.maps)
        action, _ = run_xdp(IN.build(), LO)
        assert action == libbpf.XDP_REDIRECT
        verdicts[abi.Verdict.REDIRECT] += 1
        assert counts(steered.maps)[0] == verdicts
    finally:
        steered.set_steering([0])
