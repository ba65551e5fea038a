"""Stream checks in userspace mode (mcr_xdp.fallback.streams): the shared
state file, its locks, a worker's checks against the Python model, and the
relay's bookkeeping of slots and merge keys as rules come, change and go."""

from __future__ import annotations

import pytest

from mcr_xdp import abi, encode, health
from mcr_xdp.fallback import Fallback, streams
from mcr_xdp.rules import parse_rule, parse_rules
from tests.bpf.test_health import rtp


@pytest.fixture
def states():
    s = streams.States(streams.create())
    yield s
    s.close()


def test_a_leg_checks_like_the_model(states):
    """Two legs' Streams over one merge slot: the first copy of each number
    goes on, and each leg's health is the model's."""
    legs = [streams.Stream(states, "rtp", i, 3) for i in range(2)]
    model, trackers = abi.Health(), [health.Tracker("rtp") for _ in legs]
    for leg, seq in ((0, 1), (1, 1), (1, 2), (0, 2), (0, 4), (1, 3), (1, 4), (0, 5)):
        payload = rtp(seq)
        got = legs[leg].check(payload, True)
        merged = health.merge_check(model, payload, 0)
        trackers[leg].datagram(payload, merged)
        assert got == merged
    assert health.merge_from_state(states.copy(streams.merge_slot(3)), "rtp", 2) \
        == health.merge_from_state(model, "rtp", 2)
    for i, tracker in enumerate(trackers):
        assert health.from_state(states.copy(i), "rtp") == tracker.counts()
    assert [health.from_state(states.copy(i), "rtp").first_copies for i in range(2)] == [3, 2]


def test_a_stopped_packet_is_counted_but_not_merged(states):
    stream = streams.Stream(states, "rtp", 0, 0)
    assert stream.check(rtp(7), False) == health.MERGE_NONE  # its TTL ran out, say
    assert health.from_state(states.copy(0), "rtp").received == 1
    assert states.copy(streams.merge_slot(0)).received == 0


def test_reset_starts_a_slot_over(states):
    streams.Stream(states, "rtp", 5, None).check(rtp(1), True)
    assert states.copy(5).received == 1
    states.reset(5)
    assert states.copy(5).received == 0


def _outputs(rule):
    return [encode.output_value(rule, o, 2, 0, bytes(6)) for o in rule.outputs]


def test_the_relay_gives_out_slots_and_keys():
    """Slots and keys follow rules: a health slot per checked rule, kept
    (not reset) when the rule changes otherwise; one merge key per stream,
    freed with its last leg."""
    fb = Fallback(workers=1)
    fb.start()
    try:
        plain = parse_rule("lo/239.1.1.1:5001=lo2")
        fb.put_rule(0, 1, plain, _outputs(plain), fresh=True)
        assert fb.counters.health_slots == {} and fb.counters.merge_keys == {}
        checked = parse_rule("lo/239.1.1.1:5001=lo2;health=rtp")
        fb.put_rule(0, 1, checked, _outputs(checked), fresh=False)
        slot = fb.counters.health_slots[0]
        streams.Stream(fb.states, "rtp", slot, None).check(rtp(1), True)
        fb.put_rule(0, 1, checked, _outputs(checked), fresh=False)  # the same rule again: its counts stay
        assert fb.counters.health_counts(0, "rtp").received == 1
        legs = parse_rules("lo/239.2.2.1:5001|lo3/239.2.2.2:5001=lo2/239.3.3.3:5001;merge=rtp")
        for i, leg in enumerate(legs, start=1):
            fb.put_rule(i, 1, leg, _outputs(leg), fresh=True)
        assert fb.counters.merge_keys[1] == fb.counters.merge_keys[2]
        assert fb.counters.merge_counts(1, "rtp", 2) == health.MergeCounts("rtp", 2)
        fb.delete_rule(1)
        assert 1 not in fb.counters.merge_keys and 2 in fb.counters.merge_keys
        fb.delete_rule(2)
        fb.delete_rule(0)
        assert fb.counters.health_slots == {} and fb.counters.merge_keys == {}
        assert fb._merges.key(legs[0].merge_name) is None
    finally:
        fb.close()
