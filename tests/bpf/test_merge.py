"""Seamless protection (legs a|b=...;merge=rtp) in the datapath, through
BPF_PROG_TEST_RUN: which copy of each RTP sequence number goes on (the
first, from whichever leg), across the 16-bit wrap and at the window's
edges, with SSRC changes, datagrams that are no RTP and a sender that
starts its sequence over. Each case runs through the native XDP program,
the generic one and the TC one; the decisions and counts must be the
case's own and those of the Python model (mcr_xdp.health.merge_check,
which the userspace workers run). Two threads on two CPUs sending the same
stream at once on the two legs must get every number through once."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
import time

import pytest

from mcr_xdp import abi, encode, health, libbpf
from mcr_xdp.rules import parse_rules
from tests.bpf.test_health import _runner, rtp
from tests.fixtures.packets import Udp4, mac

pytestmark = pytest.mark.root

LO = 1
OUT_MAC = mac("02:00:00:00:00:bb")
LEG_IDS = {"a": 800, "b": 801}
GROUPS = {"a": "239.7.8.1", "b": "239.7.8.2"}
MERGE_KEY = 5
RULE = "in/239.7.8.1:7000|in/239.7.8.2:7000=lo/239.8.9.1:7000;merge=rtp"
FORWARDED = {"native": 4, "generic": 4, "tc": 7}  # XDP_REDIRECT, TC_ACT_REDIRECT
DROPPED = {"native": 1, "generic": 1, "tc": 2}  # XDP_DROP, TC_ACT_SHOT
NOT_RTP = b"\x00" * 20


@dataclasses.dataclass(frozen=True)
class Case:
    desc: str
    packets: list[tuple[str, bytes]]  # (leg, payload)
    sent: str  # per packet: F forwarded, D dropped
    expect: dict = dataclasses.field(default_factory=dict)  # MergeCounts fields


def legs(*items) -> list[tuple[str, bytes]]:
    """("a", 1), ("b", 1, 0x55), ("a", None) -> (leg, RTP payload or not RTP)."""
    return [(leg, NOT_RTP if rest[0] is None else rtp(rest[0], *rest[1:])) for leg, *rest in items]


CASES = [
    Case("first copy on, second dropped", legs(("a", 1), ("b", 1), ("a", 2), ("b", 2)), "FDFD",
         dict(forwarded=2, copies=2, lost=0)),
    Case("whichever leg is first", legs(("b", 1), ("a", 1), ("a", 2), ("b", 2), ("b", 3), ("a", 3)), "FDFDFD",
         dict(forwarded=3, copies=3)),
    Case("a gap one leg fills", legs(("a", 1), ("a", 3), ("b", 1), ("b", 2), ("b", 3)), "FFDFD",
         dict(lost=0, reordered=1)),
    Case("a gap on both legs is lost", legs(("a", 1), ("a", 2), ("a", 5), ("b", 1), ("b", 2), ("b", 5)), "FFFDDD",
         dict(lost=2)),
    Case("wrap at 65535", legs(("a", 65534), ("a", 65535), ("b", 65535), ("a", 0), ("b", 0), ("b", 1), ("a", 1)),
         "FFDFDFD", dict(lost=0, copies=3)),
    Case("a leg 30,000 behind: still a copy", legs(*(("a", s) for s in (0, 10000, 20000, 30000)), ("b", 0)),
         "FFFFD", dict(copies=1)),
    Case("window edge: 32,767 behind is a copy, not new", legs(("a", 0), ("a", 32767), ("b", 0)), "FFD"),
    Case("window edge: 32,767 behind, never seen, goes on", legs(("a", 1), ("a", 32768), ("b", 1 + 1)), "FFF",
         dict(reordered=1)),
    Case("a number 65,536 on is new", legs(*(("a", s) for s in (0, 20000, 40000, 60000, 65535)), ("b", 0)),
         "FFFFFF", dict(copies=0)),
    Case("not rtp is dropped", legs(("a", None), ("a", 1), ("b", None)), "DFD", dict(invalid=2, forwarded=1)),
    Case("a new ssrc starts over", legs(("a", 1), ("a", 2), ("b", 2, 0x55), ("a", 2, 0x55), ("b", 3, 0x55)),
         "FFFDF", dict(ssrc_changes=1, ssrc=0x55)),
]


def frame(leg: str, payload: bytes) -> bytes:
    return Udp4(dst=GROUPS[leg], dport=7000, payload=payload).build()


@pytest.fixture(scope="module")
def rules(datapath):
    maps = datapath.maps
    found = {}
    for rule in parse_rules(RULE):
        leg = "a" if str(rule.group) == GROUPS["a"] else "b"
        out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=0, src_mac=OUT_MAC)
        maps.reset_rule_counters(LEG_IDS[leg])
        maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, LEG_IDS[leg], [out], merge=MERGE_KEY))
        found[leg] = rule
    maps.set_port(0, LO, datapath.egress_fd)
    return found


def _start(maps):
    maps.start_merge(MERGE_KEY)
    for rule_id in LEG_IDS.values():
        maps.start_health(rule_id)
        maps.merge_keys[rule_id] = MERGE_KEY


HOOKS = ["native", "generic", "tc"]


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_merge(datapath, rules, hook, case):
    maps, run = datapath.maps, _runner(datapath, hook)
    _start(maps)
    model = abi.Health()
    trackers = {leg: health.Tracker("rtp") for leg in LEG_IDS}
    sent = ""
    for leg, payload in case.packets:
        action = run(frame(leg, payload))
        assert action in (FORWARDED[hook], DROPPED[hook])
        sent += "F" if action == FORWARDED[hook] else "D"
        merged = health.merge_check(model, payload, 0)
        trackers[leg].datagram(payload, merged)
    assert sent == case.sent
    got = maps.merge_counts(LEG_IDS["a"], "rtp", 2)
    assert dataclasses.replace(got, resyncs=0) == health.merge_from_state(model, "rtp", 2)
    assert {k: getattr(got, k) for k in case.expect} == case.expect
    assert got.forwarded == sent.count("F") and got.received == len(case.packets)
    for leg, rule_id in LEG_IDS.items():  # each leg: its own arrivals, first copies and suppressed
        assert maps.health_counts(rule_id, "rtp") == trackers[leg].counts()


def test_case_expectations_hold_in_the_model():
    """The table's decisions are checked by hand; the model agrees."""
    for case in CASES:
        model = abi.Health()
        got = "".join("F" if health.merge_check(model, p, 0) == health.MERGE_FIRST else "D" for _, p in case.packets)
        assert got == case.sent, case.desc


@pytest.mark.parametrize("hook", HOOKS)
def test_a_sender_that_starts_over_is_followed(datapath, rules, hook):
    """Copies alone for longer than any path delay (MERGE_RESYNC_NS): the
    sender started its sequence again under the same SSRC. That copy is
    dropped and counted; the next packet starts the window over."""
    maps, run = datapath.maps, _runner(datapath, hook)
    _start(maps)
    for seq in range(100, 110):
        assert run(frame("a", rtp(seq))) == FORWARDED[hook]
    state = maps.merge(MERGE_KEY)
    state.last_ns = 0  # the last forwarded packet, long ago (ktime counts from boot)
    libbpf.map_update(maps._fd[abi.MAP_MERGE], ctypes.c_uint32(MERGE_KEY), state)
    assert run(frame("b", rtp(100))) == DROPPED[hook]  # restarted at 100: taken for a copy
    for seq in range(101, 104):
        assert run(frame("a", rtp(seq))) == FORWARDED[hook]
        assert run(frame("b", rtp(seq))) == DROPPED[hook]
    got = maps.merge_counts(LEG_IDS["a"], "rtp", 2)
    assert (got.resyncs, got.forwarded, got.copies, got.lost) == (1, 13, 4, 0)


@pytest.mark.parametrize("hook", HOOKS)
def test_a_later_time_stored_by_another_cpu_is_no_resync(datapath, rules, hook):
    """The clock is read before the window's lock: a copy may find a later
    time there, stored by another CPU's first copy meanwhile. That is no
    second of copies alone (an unsigned wrap once took it for one, and
    every resync let the next copies through twice)."""
    maps, run = datapath.maps, _runner(datapath, hook)
    _start(maps)
    assert run(frame("a", rtp(1))) == FORWARDED[hook]
    state = maps.merge(MERGE_KEY)
    state.last_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 10**9
    libbpf.map_update(maps._fd[abi.MAP_MERGE], ctypes.c_uint32(MERGE_KEY), state)
    assert run(frame("b", rtp(1))) == DROPPED[hook]
    assert run(frame("b", rtp(1))) == DROPPED[hook]  # still a copy: the window did not start over
    assert maps.merge_counts(LEG_IDS["a"], "rtp", 2).resyncs == 0


@pytest.mark.parametrize("hook", HOOKS)
def test_without_its_window_a_leg_forwards(datapath, rules, hook):
    """The flag without the stream's entry (a race with the control plane):
    forwarded, never lost."""
    maps, run = datapath.maps, _runner(datapath, hook)
    _start(maps)
    maps.stop_merge(MERGE_KEY)
    assert run(frame("a", rtp(1))) == FORWARDED[hook]
    assert run(frame("b", rtp(1))) == FORWARDED[hook]
    assert maps.merge(MERGE_KEY) is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_legs_on_two_cpus_at_once_pass_each_number_once(datapath, rules):
    """Both legs' copies of one stream, sent at the same moment by two
    threads on two CPUs (the test runs release the GIL): the window's lock
    lets exactly one copy of each number through."""
    maps = datapath.maps
    _start(maps)
    n = 20000
    cpus = sorted(os.sched_getaffinity(0))[:2]
    frames = {leg: [frame(leg, rtp(seq)) for seq in range(n)] for leg in LEG_IDS}
    forwarded = {}
    barrier = threading.Barrier(2)

    def send(leg, cpu):
        os.sched_setaffinity(0, {cpu})  # this thread only
        run = _runner(datapath, "native")
        barrier.wait()
        forwarded[leg] = sum(run(f) == 4 for f in frames[leg])

    threads = [threading.Thread(target=send, args=(leg, cpu)) for leg, cpu in zip(LEG_IDS, cpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = maps.merge_counts(LEG_IDS["a"], "rtp", 2)
    assert forwarded["a"] + forwarded["b"] == n, forwarded
    assert (got.forwarded, got.copies, got.lost) == (n, n, 0)
    firsts = [maps.health_counts(rule_id, "rtp").first_copies for rule_id in LEG_IDS.values()]
    assert firsts == [forwarded["a"], forwarded["b"]]
