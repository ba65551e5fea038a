"""Rules that share output interfaces, under concurrent traffic, in every
mode: each output gets exactly its own streams, rewritten, and nothing of
an input group leaks onto an output network.

In native XDP the kernel queues redirected frames per device and CPU, and
runs the egress program of the queue's first frame on the whole batch
(kernel/bpf/devmap.c bq_enqueue), with the first frame's input device as
the context's ingress interface. Frames of single-output and fan-out
rules, of different rules and of different inputs share those batches as
soon as they share an output; low rates rarely fill a batch with more than
one frame, so every stream here runs at 20 kpps at the same time as the
others. Receivers on each output network count every stream they must get
(exact counts, no duplicate, valid payload) and a socket joined to each
input group counts leaks, which must be 0; UDP checksum errors must not
rise on any sink. A frame may be missing only if the kernel counted it
dropped on a veth whose receiving end fell behind (a full ring: a vCPU
held by the hypervisor for a few ms does it), up to 1% of a sink's
frames; such a run passes with a warning naming the counters. The
scenarios and their runner are in tests/fixtures/shared_outputs.py
(test_vlan.py runs them too).
"""

from __future__ import annotations

import time

import pytest

from tests.fixtures.relay import SCALE
from tests.fixtures.shared_outputs import MODES, SCENARIOS, Scenario, assert_counted, assert_exact, run_scenario

pytestmark = pytest.mark.e2e

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("chain", [{"outputs": 2}], indirect=True)
def test_shared_outputs_exact(chain, name, mode):
    scenario = SCENARIOS[name]
    res = run_scenario(chain, scenario, *MODES[mode])
    assert_exact(res, scenario, sorted({d for _, dests in scenario.sends for d in dests}))
    assert_counted(res, scenario)


# Two inputs carrying their own streams to shared outputs. With CPU steering
# both inputs' frames meet in one CPU's cpumap queue, whose flushes the
# kernel records under one input device: the egress program must take each
# frame's input from the frame (struct mcr_meta), not from the context.
TWO_INPUT_MODES = {
    "native": ("--mode", "xdp-native"),
    "native, steered to one CPU": ("--mode", "xdp-native", "--steer-cpus", "0"),
    # Generic XDP does not steer (a kernel bug loses frames: bpf/relay.c
    # mcr_relay_skb); asked to, it forwards on the receiving CPU and says so.
    "generic, --steer-cpus given": ("--mode", "xdp-generic", "--steer-cpus", "0"),
    "tc": ("--mode", "tc"),
    "userspace": ("--mode", "userspace", "--workers", "2"),
}

TWO_INPUTS = {
    "the same group on both inputs": Scenario(
        rules=("in0/239.1.1.1:5001=out0/239.2.2.1:5101,out1/239.3.3.1:5201",
               "in1/239.1.1.1:5001=out0/239.2.2.2:5102,out1/239.3.3.2:5202"),
        sends=((0, ("239.1.1.1:5001",)), (1, ("239.1.1.1:5001",))),
        expect=(("239.2.2.1:5101", "239.2.2.2:5102"), ("239.3.3.1:5201", "239.3.3.2:5202")),
    ),
    "other groups, fan-out beside single": Scenario(
        rules=("in0/239.1.1.1:5001=out0/239.2.2.1:5101,out1/239.3.3.1:5201",
               "in1/239.1.1.2:5002=out1/239.3.3.2:5202"),
        sends=((0, ("239.1.1.1:5001",)), (1, ("239.1.1.2:5002",))),
        expect=(("239.2.2.1:5101",), ("239.3.3.1:5201", "239.3.3.2:5202")),
    ),
}


@pytest.mark.parametrize("mode", TWO_INPUT_MODES)
@pytest.mark.parametrize("name", TWO_INPUTS)
@pytest.mark.parametrize("chain", [{"outputs": 2, "inputs": 2}], indirect=True)
def test_two_inputs_exact(chain, name, mode):
    scenario = TWO_INPUTS[name]
    res = run_scenario(chain, scenario, *TWO_INPUT_MODES[mode])
    assert_exact(res, scenario, sorted({d for _, dests in scenario.sends for d in dests}))
    assert_counted(res, scenario)
    if mode.startswith("generic"):
        notices = res["stats"]["status"]["notices"]
        assert sum("--steer-cpus steers native XDP only" in n for n in notices) == 2, notices


# A fan-out rule whose FIRST output can't take the frames: down, or an MTU
# below the frame. Generic XDP clones a broadcast entry by entry and stops
# at the first failure, so the relay lists the outputs that can take a
# frame first; the others skip the dead output by themselves.
DEAD_FIRST = Scenario(
    rules=("239.1.1.1:5001=out0/239.2.2.2:5002,out1/239.3.3.3:5003",),
    sends=((0, ("239.1.1.1:5001",)),),
    expect=((), ("239.3.3.3:5003",)),
    size=400,
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dead", ["down", "mtu below the frame"])
@pytest.mark.parametrize("chain", [{"outputs": 2}], indirect=True)
def test_dead_first_output_spares_the_others(chain, dead, mode):
    if dead == "down":
        chain.exec(chain.relay_in.ns, "ip", "link", "set", "out0", "down")
    else:
        chain.exec(chain.relay_in.ns, "ip", "link", "set", "out0", "mtu", "300")
    res = run_scenario(chain, DEAD_FIRST, *MODES[mode])
    assert_exact(res, DEAD_FIRST, ["239.1.1.1:5001"])


@pytest.mark.parametrize("chain", [{"outputs": 2}], indirect=True)
def test_first_output_going_down_moves_behind_the_others(chain):
    """Generic XDP: an output that goes down while the relay runs is moved
    behind the others at the next counter interval."""
    def first_output_down():
        chain.exec(chain.relay_in.ns, "ip", "link", "set", "out0", "down")
        time.sleep(2.5 * SCALE)  # two --interval ticks

    res = run_scenario(chain, DEAD_FIRST, *MODES["generic"], "--interval", "1", after_start=first_output_down)
    assert_exact(res, DEAD_FIRST, ["239.1.1.1:5001"])
