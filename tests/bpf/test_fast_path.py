"""The exact rules' fast path (bpf/mcr_abi.h, relay.c fast_forward): rule
copies in mcr_fast_rules found through mcr_fast_index, kept by
maps.FastRules beside mcr_rules, and the loop guard's MAC filter. Run
through BPF_PROG_TEST_RUN like test_relay_prog."""

from __future__ import annotations

import ctypes
import dataclasses

import pytest

from mcr_xdp import abi, encode, libbpf, loader, stats
from mcr_xdp.maps import fast_bucket, mac_bucket
from mcr_xdp.rules import parse_rule
from tests.fixtures.xdp_table import (
    CASES,
    IN,
    LO,
    REDIRECT,
    RULES,
    SLOT_LO,
    check_case,
    install,
    run_frame,
    verdict_counts,
)

pytestmark = pytest.mark.root

PASS, DROP = libbpf.XDP_PASS, libbpf.XDP_DROP
UNICAST_INPUTS = {19, 20, 23}  # their rules turn the fast path off (cfg->unicast_rules)


def _run(dp, frame: bytes) -> tuple[int, bytes]:
    return run_frame(dp.prog_fd, frame)


def _put(dp, text: str, rule_id: int, slot: int = SLOT_LO):
    return install(dp.maps, text, rule_id, slot)


def _frame(group: str, **fields) -> bytes:
    return dataclasses.replace(IN, dst=group, **fields).build()


def _dst_group(out: bytes) -> str:
    return ".".join(str(b) for b in out[30:34])


@pytest.fixture(params=["direct slot", "egress slot"])
def dp(request):
    """A datapath with lo in slot SLOT_LO: through mcr_tx_direct (the usual
    case), or only through mcr_tx_ports with the egress program (an
    interface that takes fan-out copies too)."""
    datapath = loader.Datapath()
    try:
        datapath.maps.set_port(SLOT_LO, LO, datapath.egress_fd)
        if request.param == "direct slot":
            datapath.maps.set_direct(SLOT_LO, LO)
        yield datapath
    finally:
        datapath.close()


@pytest.fixture
def table(dp):
    """The packet table's rules but the unicast inputs' (which send every
    frame to forward())."""
    texts = []
    for rule_id, (text, slot) in RULES.items():
        if rule_id not in UNICAST_INPUTS:
            _put(dp, text, rule_id, slot)
            texts.append(text)
    dp.maps.set_config(**encode.rule_kinds(parse_rule(text, "in") for text in texts))
    return dp


def test_packet_table(table):
    """Every row of the packet table but the unicast inputs' gives the same
    action, bytes and counters with the fast path in front of forward()."""
    cases = [c for c in CASES if c.rule not in UNICAST_INPUTS and not c.desc.startswith("unicast input")]
    assert len(cases) > 60
    assert table.maps.fast.copies > 10  # the exact rules have their copies
    for case in cases:
        check_case(table.maps, table.prog_fd, case)


def test_the_copy_forwards(dp):
    """A frame of a rule with a copy is forwarded from the copy: with the
    rule gone from mcr_rules behind the control plane's back it still is,
    which also shows bpf/forward.h and maps.fast_bucket hash alike."""
    key = _put(dp, "239.1.1.1:5001=out/239.9.9.9:5001", 1)
    dp.maps.set_config(ssm_rules=0)
    assert _run(dp, _frame("239.1.1.1"))[0] == REDIRECT
    assert libbpf.map_delete(dp.maps.fds[abi.MAP_RULES], key)
    action, out = _run(dp, _frame("239.1.1.1"))
    assert (action, _dst_group(out)) == (REDIRECT, "239.9.9.9")
    dp.maps.delete_rule(key)
    before = verdict_counts(dp.maps)[abi.Verdict.PASS_NO_RULE][0]
    assert _run(dp, _frame("239.1.1.1"))[0] == PASS
    assert verdict_counts(dp.maps)[abi.Verdict.PASS_NO_RULE][0] == before + 1


def _sharing_group(group: str) -> str:
    """Another group whose key falls in group's bucket."""
    def key(g):
        return encode.rule_key(parse_rule(f"{g}:5001=out", "in"), LO)

    bucket = fast_bucket(key(group))
    for i in range(1 << 20):
        other = f"239.{2 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        if fast_bucket(key(other)) == bucket:
            return other
    raise AssertionError("no group shares the bucket")


def test_bucket_sharers(dp):
    """Two rules in one bucket: the first has the copy, the second is found
    in mcr_rules after the keys differ; with the first deleted, the bucket
    sends every lookup to mcr_rules."""
    other = _sharing_group("239.1.1.1")
    first = _put(dp, "239.1.1.1:5001=out/239.9.9.1:5001", 1)
    second = _put(dp, f"{other}:5001=out/239.9.9.2:5001", 2)
    dp.maps.set_config(ssm_rules=0)
    assert dp.maps.fast.copies == 1
    assert _dst_group(_run(dp, _frame("239.1.1.1"))[1]) == "239.9.9.1"
    assert _dst_group(_run(dp, _frame(other))[1]) == "239.9.9.2"
    dp.maps.delete_rule(first)
    index = ctypes.c_uint32()
    assert libbpf.map_lookup(dp.maps.fds[abi.MAP_FAST_INDEX], ctypes.c_uint32(fast_bucket(first)), index)
    assert index.value == abi.FAST_HASH
    assert _run(dp, _frame("239.1.1.1"))[0] == PASS
    assert _dst_group(_run(dp, _frame(other))[1]) == "239.9.9.2"
    dp.maps.delete_rule(second)
    assert libbpf.map_lookup(dp.maps.fds[abi.MAP_FAST_INDEX], ctypes.c_uint32(fast_bucket(first)), index)
    assert index.value == 0
    assert _run(dp, _frame(other))[0] == PASS


def test_changes_and_a_full_table(dp):
    """Half the entries take copies; the rules past them live in mcr_rules
    alone and are forwarded all the same. Changing every copy twice over
    reuses the entries the first change left (after a grace period), and
    each frame leaves as its rule says now."""
    n = abi.FAST_RULES // 2 + 20
    groups = [f"239.{10 + i // 250}.0.{1 + i % 250}" for i in range(n)]
    for i, group in enumerate(groups):
        _put(dp, f"{group}:5001=out/239.9.0.1:5001", i)
    dp.maps.set_config(ssm_rules=0)
    assert dp.maps.fast.copies <= abi.FAST_RULES // 2
    for generation in (2, 3):
        for i, group in enumerate(groups):
            _put(dp, f"{group}:5001=out/239.9.0.{generation}:5001", i)
        for group in groups[:: 97] + groups[-20:]:
            action, out = _run(dp, _frame(group))
            assert (action, _dst_group(out)) == (REDIRECT, f"239.9.0.{generation}"), group


def test_source_specific_first(dp):
    """An (S,G) rule beats the (*,G) rule for its source; both have copies."""
    _put(dp, "239.1.1.1:5001=out/239.9.9.1:5001", 1)
    _put(dp, "203.0.113.9@239.1.1.1:5001=out/239.9.9.5:5001", 2)
    dp.maps.set_config(ssm_rules=1)
    assert dp.maps.fast.copies == 2
    assert _dst_group(_run(dp, _frame("239.1.1.1", src="203.0.113.9"))[1]) == "239.9.9.5"
    assert _dst_group(_run(dp, _frame("239.1.1.1", src="203.0.113.10"))[1]) == "239.9.9.1"


def test_loop_guard_filter(dp):
    """A source MAC in the filter bucket of one of the relay's own MACs, but
    not one of them, is forwarded; the own MAC's frame is dropped."""
    own = bytes.fromhex("0200000000bb")
    neighbour = bytes.fromhex("0200000001ba")
    assert mac_bucket(neighbour) == mac_bucket(own)
    _put(dp, "239.1.1.1:5001=out", 1)
    dp.maps.set_config(ssm_rules=0)
    dp.maps.set_own_macs(frozenset({own}))
    assert _run(dp, _frame("239.1.1.1", eth_src=neighbour))[0] == REDIRECT
    assert _run(dp, _frame("239.1.1.1", eth_src=own))[0] == DROP
    assert verdict_counts(dp.maps)[abi.Verdict.DROP_LOOP][0] == 1
    dp.maps.set_own_macs(frozenset())
    assert _run(dp, _frame("239.1.1.1", eth_src=own))[0] == REDIRECT


def test_ipv4_lookup_words(dp):
    """The IPv4 lookup compares four words of a key (bpf/forward.h
    fast_lookup_ipv4): an IPv4 key with a byte set past its group would
    look like its group's there, so the control plane gives it no copy (it
    would hash to another bucket than the frame's, so this shows the
    guard, maps.ipv4_key_sound, not a collision); a frame of the group
    still finds its own rule."""
    key = _put(dp, "239.1.1.1:5001=out/239.9.9.1:5001", 1)
    dp.maps.set_config(ssm_rules=0)
    assert dp.maps.fast.copies == 1
    odd = abi.RuleKey.from_buffer_copy(bytes(key))
    odd.group[15] = 1
    rule = abi.Rule()
    assert libbpf.map_lookup(dp.maps.fds[abi.MAP_RULES], key, rule)
    dp.maps.delete_rule(key)
    dp.maps.put_rule(odd, rule)
    assert dp.maps.fast.copies == 0
    assert _run(dp, _frame("239.1.1.1"))[0] == PASS
    _put(dp, "239.1.1.1:5001=out/239.9.9.2:5001", 2)
    assert dp.maps.fast.copies == 1
    assert _dst_group(_run(dp, _frame("239.1.1.1"))[1]) == "239.9.9.2"


def test_a_sent_frame_is_counted_once(dp):
    """The fast path counts a frame it sent in the rule's fast_packets and
    fast_bytes and its verdict only (bpf/mcr_abi.h, ABI 15): the output's
    slot stays untouched, and Maps derives the rule's and output 0's counts
    from the fast fields, as `mcr-xdp stats` shows them."""
    rule_id, stat = 7, 42
    rule = parse_rule("239.1.1.1:5001=out/239.9.9.9:5001", "in")
    out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=SLOT_LO, src_mac=bytes(6), stat=stat)
    dp.maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, rule_id, [out]))
    dp.maps.output_slots[rule_id] = (stat,)
    dp.maps.set_config(ssm_rules=0)
    frame = _frame("239.1.1.1")
    redirects = verdict_counts(dp.maps)[abi.Verdict.REDIRECT][0]
    for _ in range(3):
        assert _run(dp, frame)[0] == REDIRECT

    raw = [dp.maps._percpu(abi.MAP_RULE_STATS, rule_id, abi.RuleCounters)[cpu] for cpu in range(dp.maps.ncpus)]
    fields = ("packets", "bytes", "forwarded", "dropped", "fast_packets", "fast_bytes")
    assert tuple(sum(getattr(c, f) for c in raw) for f in fields) == (0, 0, 0, 0, 3, 3 * len(frame))
    assert sum(c.packets for c in dp.maps._percpu(abi.MAP_OUTPUT_STATS, stat, abi.Counter)) == 0

    seen = dp.maps.rule_counters(rule_id)
    assert (seen.packets, seen.bytes, seen.forwarded, seen.dropped) == (3, 3 * len(frame), 3, 0)
    (to_out,) = dp.maps.output_counters(rule_id, 1)
    assert (to_out.packets, to_out.bytes) == (3, 3 * len(frame))
    assert verdict_counts(dp.maps)[abi.Verdict.REDIRECT][0] == redirects + 3

    # What `stats` collects, reading the rule's entry once (the fast
    # fields serve the rule and its output alike).
    reads = []
    percpu = dp.maps._percpu
    dp.maps._percpu = lambda name, *args: reads.append(name) or percpu(name, *args)
    try:
        snap = stats.collect([dp.maps], {rule_id: (rule_id, rule)})
    finally:
        del dp.maps._percpu
    (row,) = snap.rules
    assert (row.packets, row.forwarded, row.outputs[0].packets) == (3, 3, 3)
    assert reads.count(abi.MAP_RULE_STATS) == 1 and reads.count(abi.MAP_OUTPUT_STATS) == 1
