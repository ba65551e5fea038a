"""Fan-out as tables of packets under BPF_PROG_TEST_RUN.

Ingress (mcr_relay): a rule with several outputs leaves the headers original
(only an 802.1Q/802.1ad tag goes) and broadcasts the frame to the rule's
devmap, counting REDIRECT_MULTI once per input packet.

Egress (mcr_egress): each broadcast copy is rewritten for the output that
leaves through its egress interface; copies for one interface used by
several outputs are told apart by their order. Devmap programs cannot be
test-run and a test run takes no egress interface, so the plain-XDP twin
mcr_egress_twin (compiled with -DMCR_TEST_TWINS) runs the same code with the
egress ifindex taken from the map mcr_twin_egress. A "broadcast" below runs
the twin once per devmap entry, in key order, as the kernel does.

Expected frames are built by tests/fixtures/packets.py from a description of each
output, with checksums computed from scratch, and a second opinion from
scapy; nothing here calls the rewrite or checksum code under test. Frames
arrive on lo. The output interfaces a and b are ifindex numbers only: the
twin never transmits. The rules' devmaps point at lo, because the kernel
accepts devmap entries only for interfaces that exist, and a test run does
not transmit either.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from dataclasses import replace

import pytest

from mcr_xdp import abi, encode, libbpf, loader
from mcr_xdp.rules import parse_rule
from tests.fixtures import packets
from tests.fixtures.packets import Udp4, Udp6, mac
from tests.fixtures.xdp_table import ANY, HOST_MAC, assert_checksums_valid, next_hop, stats_of

pytestmark = pytest.mark.root

PASS, DROP, REDIRECT = libbpf.XDP_PASS, libbpf.XDP_DROP, libbpf.XDP_REDIRECT

LO = 1  # LOOPBACK_IFINDEX: lo in every network namespace
TWIN = "mcr_egress_twin"  # test-only programs and map, not part of the ABI
TWIN_EGRESS_MAP = "mcr_twin_egress"
IFINDEX = {"a": 101, "b": 102, "c": 103}  # c: an interface no rule outputs to
MACS = {"a": mac("02:00:00:00:00:aa"), "b": mac("02:00:00:00:00:bb")}  # source MAC per output interface


@dataclasses.dataclass(frozen=True)
class Out:
    """One output as the receiver must see it."""

    iface: str
    group: str
    port: int
    eth_dst: str  # the group's multicast MAC, written out by hand


# Interface a appears twice in each rule, with two groups; the MACs keep
# only the low 23 (IPv4) or 32 (IPv6) bits of the group.
FAN4 = [Out("a", "239.2.2.2", 5002, "01:00:5e:02:02:02"), Out("b", "239.130.3.3", 5003, "01:00:5e:02:03:03"),
        Out("a", "239.4.4.4", 5004, "01:00:5e:04:04:04")]
FAN6 = [Out("a", "ff3e::2:2", 5002, "33:33:00:02:00:02"), Out("b", "ff3e::3:3", 5003, "33:33:00:03:00:03"),
        Out("a", "ff3e::4:4", 5004, "33:33:00:04:00:04")]
SSM = [Out("a", "239.5.5.5", 5005, "01:00:5e:05:05:05"), Out("b", "239.6.6.6", 5006, "01:00:5e:06:06:06")]
# MAX_OUTPUTS outputs, a and b taking turns: each interface 8 times.
WIDE = [Out("ab"[i % 2], f"239.16.0.{i}", 6000 + i, f"01:00:5e:10:00:{i:02x}") for i in range(abi.MAX_OUTPUTS)]
SINGLE = [Out("b", "239.7.7.7", 5007, "01:00:5e:07:07:07")]
SSM_SOURCE = "203.0.113.9"
RANGE_OUTS = [Out("a", "239.10.4.5", 6001, "01:00:5e:0a:04:05"), Out("b", "239.29.4.5", 5555, "01:00:5e:1d:04:05"),
              Out("a", "239.139.4.5", 5555, "01:00:5e:0b:04:05")]
# Unicast receivers (next hops: xdp_table.NEXT_HOPS; 10.0.2.9 has none)
# beside a group on the same interface; and a unicast input's fan-out.
UNICAST_OUTS = [Out("a", "10.0.2.5", 6000, "02:00:00:00:05:05"), Out("b", "239.17.17.17", 5017, "01:00:5e:11:11:11"),
                Out("a", "10.0.2.9", 6000, "")]
UNICAST_IN_OUTS = [Out("a", "239.18.18.18", 5018, "01:00:5e:12:12:12"), Out("b", "10.0.2.5", 6018, "02:00:00:00:05:05")]


def spec(outs: list[Out]) -> str:
    return ",".join(f"{o.iface}/[{o.group}]:{o.port}" if ":" in o.group else f"{o.iface}/{o.group}:{o.port}"
                    for o in outs)


RULES = {
    # rule id: (rule, its outputs, has a fan-out devmap)
    7: (f"239.1.1.1:5001={spec(FAN4)}", FAN4, True),
    8: (f"[ff3e::1:1]:5001={spec(FAN6)}", FAN6, True),
    9: (f"239.1.1.9:5001={spec(FAN4)}", FAN4, False),  # its devmap is missing
    10: (f"239.1.1.16:5001={spec(WIDE)}", WIDE, True),
    11: (f"{SSM_SOURCE}@239.1.1.1:5001={spec(SSM)}", SSM, True),  # beats rule 7 for its source
    13: (f"239.1.1.13:5001={spec(SINGLE)}", SINGLE, False),  # one output: tx_ports, no devmap of its own
    15: (f"239.1.1.15:5001={spec(FAN4)};ttl=7", FAN4, True),  # a TTL of its own
    # A range, its outputs as RANGE_IN gets them: the egress finds the rule
    # by longest prefix again, for each copy.
    16: ("239.29.0.0/16:*=a/239.10.0.0/16:6001,b,a/239.139.0.0/16:*", RANGE_OUTS, True),
    17: (f"239.1.1.17:5001={spec(UNICAST_OUTS)}", UNICAST_OUTS, True),
    18: (f"192.0.2.50:5001={spec(UNICAST_IN_OUTS)}", UNICAST_IN_OUTS, True),
}
TTL_OF = {15: 7}

IN = Udp4()  # 239.1.1.1:5001 from 192.0.2.1:40000, TTL 64, DF: rule 7
IN6 = Udp6()  # [ff3e::1:1]:5001 from 2001:db8::1, hop limit 64: rule 8
NO_FANOUT = replace(IN, dst="239.1.1.9")
IN_WIDE = replace(IN, dst="239.1.1.16")
FROM_SSM = replace(IN, src=SSM_SOURCE)
RANGE_IN = Udp4(dst="239.29.4.5", dport=5555)
TO_UNICAST = replace(IN, dst="239.1.1.17")
UNICAST_IN = Udp4(dst="192.0.2.50", eth_dst=mac(HOST_MAC))


def sent(pkt: Udp4 | Udp6, out: Out, ttl: int | None = None) -> bytes:
    """pkt as output out sends it: its group, port and Ethernet header, TTL
    or hop limit - 1 (or ttl, the rule's own), untagged."""
    hops = {"ttl": ttl or pkt.ttl - 1} if isinstance(pkt, Udp4) else {"hop_limit": ttl or pkt.hop_limit - 1}
    return replace(pkt, vlan=None, dst=out.group, dport=out.port, eth_dst=mac(out.eth_dst),
                   eth_src=MACS[out.iface], **hops).build()


def options(ihl: int) -> bytes:
    """IPv4 options filling a header of ihl words (Router Alert, filler)."""
    return bytes([0x94, 0x04, 0x00, 0x00]) + bytes(range(0x20, 0x20 + 4 * (ihl - 5) - 4))


@dataclasses.dataclass(frozen=True)
class Copy:
    """One copy of a broadcast: the interface it leaves through, and what the
    egress must make of it."""

    iface: str
    out: bytes | None = None  # expected output bytes; None: XDP_DROP, counted as verdict
    counted: tuple[int, int] | None = None  # (rule id, output index) whose counter moves
    verdict: str = "EGRESS_DROP"  # what a dropped copy counts (abi.Verdict, by name)


@dataclasses.dataclass(frozen=True)
class EgressCase:
    desc: str
    frame: bytes  # as the ingress broadcast it: untagged, headers original
    copies: tuple[Copy, ...]  # in devmap key order


def every_output(desc: str, pkt: Udp4 | Udp6, rule_id: int, pad: bytes = b"") -> EgressCase:
    """One broadcast of pkt (+ Ethernet padding) through all outputs of rule_id."""
    outs = RULES[rule_id][1]
    copies = tuple(Copy(o.iface, sent(pkt, o, TTL_OF.get(rule_id)) + pad, (rule_id, i)) for i, o in enumerate(outs))
    return EgressCase(desc, pkt.build() + pad, copies)


def dropped(desc: str, pkt_or_frame, *ifaces: str) -> EgressCase:
    frame = pkt_or_frame if isinstance(pkt_or_frame, bytes) else pkt_or_frame.build()
    return EgressCase(desc, frame, tuple(Copy(i) for i in ifaces))


EGRESS_CASES = [
    every_output("IPv4: a, b, a get outputs 0, 1, 2", IN, 7),
    every_output("range: a, b, a get outputs 0, 1, 2, host bits kept", RANGE_IN, 16),
    every_output("IPv4: again (the rotation starts over)", IN, 7),
    every_output("IPv6: a, b, a get outputs 0, 1, 2", IN6, 8),
    every_output("IPv4: 16 outputs, 8 per interface", IN_WIDE, 10),
    every_output("IPv4: TTL 2 leaves with TTL 1", replace(IN, ttl=2), 7),
    every_output("IPv4 ;ttl=7: every copy leaves with TTL 7", replace(IN, dst="239.1.1.15"), 15),
    every_output("IPv4 ;ttl=7: TTL 1 arrives too (the ingress forwards it)", replace(IN, dst="239.1.1.15", ttl=1), 15),
    every_output("IPv4: zero UDP checksum stays zero", replace(IN, udp_checksum=False), 7),
    every_output("IPv4: options (IHL 8)", replace(IN, options=options(8)), 7),
    every_output("IPv4: Ethernet padding kept", IN, 7, pad=bytes(16)),
    every_output("SSM rule before the any-source rule", FROM_SSM, 11),
    EgressCase("IPv4: b alone (only output 1 uses it)", IN.build(), (Copy("b", sent(IN, FAN4[1]), (7, 1)),)),
    dropped("IPv4: interface not an output of the rule", IN, "c"),
    dropped("IPv6: interface not an output of the rule", IN6, "c"),
    dropped("IPv4: no rule (deleted)", replace(IN, dst="239.9.9.9"), "a", "b"),
    dropped("IPv6: no rule (deleted)", replace(IN6, dst="ff3e::9"), "a"),
    dropped("tagged copy: the ingress strips tags", replace(IN, vlan=100), "a"),
    dropped("not multicast UDP", packets.arp_request(), "a"),
    EgressCase("unicast receivers: next hop's MAC; beside a group; an unresolved one dropped, counted",
               TO_UNICAST.build(), (Copy("a", sent(TO_UNICAST, UNICAST_OUTS[0]), (17, 0)),
                                    Copy("b", sent(TO_UNICAST, UNICAST_OUTS[1]), (17, 1)),
                                    Copy("a", None, None, "DROP_NO_NEIGH"))),
    every_output("unicast input: onto a group and a unicast receiver", UNICAST_IN, 18),
]


@dataclasses.dataclass(frozen=True)
class IngressCase:
    desc: str
    frame: bytes
    action: int
    verdict: str  # abi.Verdict member, by name
    rule: int  # id of the rule whose counters move
    out: object = ANY  # expected output bytes


INGRESS_CASES = [
    IngressCase("IPv4 fan-out: headers untouched", IN.build(), REDIRECT, "REDIRECT_MULTI", 7, IN.build()),
    IngressCase("IPv4 fan-out: 802.1Q tag removed", replace(IN, vlan=100).build(), REDIRECT, "REDIRECT_MULTI", 7,
                IN.build()),
    IngressCase("IPv4 fan-out: 802.1ad tag removed", replace(IN, vlan=100, tpid=packets.ETH_P_8021AD).build(),
                REDIRECT, "REDIRECT_MULTI", 7, IN.build()),
    IngressCase("IPv4 fan-out: TTL 2 is not decremented here", replace(IN, ttl=2).build(), REDIRECT,
                "REDIRECT_MULTI", 7, replace(IN, ttl=2).build()),
    IngressCase("IPv4 fan-out: 16 outputs", IN_WIDE.build(), REDIRECT, "REDIRECT_MULTI", 10, IN_WIDE.build()),
    IngressCase("IPv4 fan-out: SSM rule first", FROM_SSM.build(), REDIRECT, "REDIRECT_MULTI", 11, FROM_SSM.build()),
    IngressCase("IPv6 fan-out: headers untouched", IN6.build(), REDIRECT, "REDIRECT_MULTI", 8, IN6.build()),
    IngressCase("IPv6 fan-out: 802.1Q tag removed", replace(IN6, vlan=100).build(), REDIRECT, "REDIRECT_MULTI", 8,
                IN6.build()),
    IngressCase("IPv4 fan-out: TTL 1 dropped", replace(IN, ttl=1).build(), DROP, "DROP_TTL", 7),
    IngressCase("IPv4 fan-out: TTL 0 dropped", replace(IN, ttl=0).build(), DROP, "DROP_TTL", 7),
    IngressCase("IPv6 fan-out: hop limit 1 dropped", replace(IN6, hop_limit=1).build(), DROP, "DROP_TTL", 8),
    IngressCase("IPv4 fan-out: no devmap", NO_FANOUT.build(), DROP, "DROP_NO_OUTPUT", 9),
    IngressCase("IPv4 fan-out: tagged, no devmap", replace(NO_FANOUT, vlan=100).build(), DROP, "DROP_NO_OUTPUT", 9),
]


@pytest.fixture(scope="module")
def datapath():
    """Overrides tests/bpf/conftest.py: this module needs the twin."""
    dp = loader.Datapath(cflags=("-DMCR_TEST_TWINS",))
    yield dp
    dp.close()


@pytest.fixture(scope="module")
def one_cpu():
    """The egress tells copies for one interface apart by a per-CPU counter,
    and the kernel runs all copies of a broadcast on one CPU: so do the
    tests."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    yield
    os.sched_setaffinity(0, before)


@pytest.fixture(scope="module")
def egress(datapath, one_cpu):
    """egress(frame, iface) -> (XDP action, output frame): the twin, as if
    the frame left through iface."""
    prog_fd = datapath.load_func(TWIN)
    map_fd = datapath._bpf[TWIN_EGRESS_MAP.encode()].map_fd

    def run_copy(frame: bytes, iface: str):
        libbpf.map_update(map_fd, ctypes.c_uint32(0), ctypes.c_uint32(IFINDEX[iface]))
        return run(prog_fd, frame)

    return run_copy


@pytest.fixture(scope="module")
def relay(datapath):
    """RULES installed (input lo, outputs a and b); returns the maps."""
    maps = datapath.maps
    for rule_id, (text, outs, has_fanout) in RULES.items():
        rule = parse_rule(text, "in")
        stats = stats_of(rule_id, len(rule.outputs))
        values = [encode.output_value(rule, o, ifindex=IFINDEX[o.iface], slot=i, src_mac=MACS[o.iface], stat=stats[i],
                                      next_hop=next_hop(o))
                  for i, o in enumerate(rule.outputs)]
        maps.reset_rule_counters(rule_id, stats)
        maps.output_slots[rule_id] = stats
        if has_fanout:
            maps.set_fanout(rule_id, [(LO, datapath.egress_fd)] * len(outs))
        maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, rule_id, values))
    maps.set_config(**encode.rule_kinds(parse_rule(text, "in") for text, _, _ in RULES.values()))
    return maps


def run(prog_fd: int, frame: bytes) -> tuple[int, bytes]:
    ctx = libbpf.XdpMd(data=0, data_end=len(frame), ingress_ifindex=LO, rx_queue_index=0)
    action, out, _ = libbpf.test_run(prog_fd, frame, ctx)
    return action, out


def verdict_counts(maps) -> list[tuple[int, int]]:
    return [(c.packets, c.bytes) for c in maps.verdicts()]


def rule_counts(maps) -> dict[int, tuple[int, int, int, int]]:
    fields = ("packets", "bytes", "forwarded", "dropped")
    return {i: tuple(getattr(maps.rule_counters(i), f) for f in fields) for i in RULES}


def output_counts(maps) -> dict[tuple[int, int], tuple[int, int]]:
    counts = {(rule_id, i): (c.packets, c.bytes)
              for rule_id, (_, outs, _) in RULES.items()
              for i, c in enumerate(maps.output_counters(rule_id, len(outs)))}
    counts[(OTHER_RULE_ID, 0)] = tuple(getattr(maps.output_counters(OTHER_RULE_ID, 1)[0], f)
                                       for f in ("packets", "bytes"))
    return counts


@pytest.mark.parametrize("case", EGRESS_CASES, ids=lambda c: c.desc)
def test_egress(relay, egress, case):
    rules = rule_counts(relay)
    for i, copy in enumerate(case.copies):
        verdicts, outputs = verdict_counts(relay), output_counts(relay)

        action, out = egress(case.frame, copy.iface)

        check_copy(relay, verdicts, outputs, len(case.frame), action, out, copy.out, copy.counted, copy.verdict,
                   f"copy {i} through {copy.iface}")
    assert rule_counts(relay) == rules  # the ingress counted the input packet already


def check_copy(relay, verdicts, outputs, n: int, action: int, out: bytes, expected: bytes | None,
               counted: tuple[int, int] | None, verdict: str, where: str) -> None:
    """One copy through the egress: dropped and counted as verdict
    (expected None), or passed as expected with valid checksums and counted
    for its output; verdicts and outputs are the counts before it."""
    if expected is None:
        assert action == DROP, where
        v = abi.Verdict[verdict]
        verdicts[v] = (verdicts[v][0] + 1, verdicts[v][1] + n)
    else:
        assert action == PASS, where
        assert out == expected, where
        assert_checksums_valid(out)
        if counted is not None:
            packets_, bytes_ = outputs[counted]
            outputs[counted] = (packets_ + 1, bytes_ + n)
    assert verdict_counts(relay) == verdicts, where
    assert output_counts(relay) == outputs, where


@pytest.mark.parametrize("case", INGRESS_CASES, ids=lambda c: c.desc)
def test_ingress_fanout(relay, run_xdp, case):
    verdicts, rules, outputs = verdict_counts(relay), rule_counts(relay), output_counts(relay)

    action, out = run_xdp(case.frame, LO)

    assert action == case.action
    if case.out is not ANY:
        assert out == case.out
    n, v = len(case.frame), abi.Verdict[case.verdict]
    verdicts[v] = (verdicts[v][0] + 1, verdicts[v][1] + n)
    assert verdict_counts(relay) == verdicts
    packets_, bytes_, fwd, drop = rules[case.rule]
    rules[case.rule] = (packets_ + 1, bytes_ + n, fwd + (action == REDIRECT), drop + (action != REDIRECT))
    assert rule_counts(relay) == rules
    assert output_counts(relay) == outputs  # the egress counts the copies


@pytest.mark.parametrize("pkt, rule_id", [(replace(IN, vlan=100), 7), (replace(IN6, vlan=100), 8),
                                          (replace(IN_WIDE, vlan=100, tpid=packets.ETH_P_8021AD), 10)],
                         ids=["IPv4", "IPv6", "16 outputs"])
def test_ingress_then_egress(relay, run_xdp, egress, pkt, rule_id):
    """A tagged frame through the ingress, then its broadcast copies through
    the egress in devmap order: every output gets its own rewrite."""
    action, copy = run_xdp(pkt.build(), LO)
    assert action == REDIRECT
    for i, o in enumerate(RULES[rule_id][1]):
        action, out = egress(copy, o.iface)
        assert action == PASS, f"output {i}"
        assert out == sent(pkt, o), f"output {i}"
        assert_checksums_valid(out)


def test_cleared_fanout_drops(datapath, relay, run_xdp):
    """Clearing a live rule's devmap turns its redirect into DROP_NO_OUTPUT
    (the relay never does it in this order, but the datapath must not mind)."""
    pkt = replace(IN, dst="239.1.1.42")
    rule = parse_rule(f"239.1.1.42:5001={spec(FAN4)}", "in")
    rule_id = 12
    stats = stats_of(rule_id, len(rule.outputs))
    values = [encode.output_value(rule, o, ifindex=IFINDEX[o.iface], slot=i, src_mac=MACS[o.iface], stat=stats[i])
              for i, o in enumerate(rule.outputs)]
    relay.reset_rule_counters(rule_id, stats)
    relay.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, rule_id, values))
    try:
        relay.set_fanout(rule_id, [(LO, datapath.egress_fd)] * len(values))
        assert run_xdp(pkt.build(), LO)[0] == REDIRECT
        relay.clear_fanout(rule_id)
        before = verdict_counts(relay)[abi.Verdict.DROP_NO_OUTPUT][0]
        assert run_xdp(pkt.build(), LO)[0] == DROP
        assert verdict_counts(relay)[abi.Verdict.DROP_NO_OUTPUT][0] == before + 1
    finally:
        relay.delete_rule(encode.rule_key(rule, LO))
        relay.clear_fanout(rule_id)


def test_cases_are_what_they_claim():
    """Guards on the tables themselves."""
    assert len({c.desc for c in EGRESS_CASES}) == len(EGRESS_CASES)
    assert len({c.desc for c in INGRESS_CASES}) == len(INGRESS_CASES)
    for outs in (FAN4, FAN6):
        assert [o.iface for o in outs].count("a") == 2  # one interface used twice ...
        assert len({(o.group, o.port) for o in outs}) == len(outs)  # ... with different groups
    for text, outs, _ in RULES.values():
        assert len(parse_rule(text, "in").outputs) == len(outs) >= 1
    # Every output of a rule gets a frame different from the others'.
    assert len({sent(IN, o) for o in FAN4}) == len(FAN4)


# -- struct mcr_meta: what the ingress tells the egress ----------------------
#
# In native XDP the kernel runs the egress program of a device queue's first
# frame, with that frame's input as the context's ingress interface, over
# every frame queued in the flush (kernel/bpf/devmap.c bq_enqueue): frames of
# single-output and fan-out rules and of several inputs meet there. So every
# frame carries a struct mcr_meta, and the egress program goes by it.

SINGLE_IN = replace(IN, dst="239.1.1.13")
# Another input (its ifindex need not exist: a map key) with its own rule
# for IN's group and port: the test runs report lo as the input, as a batch
# headed by a frame from lo would.
OTHER_INPUT, NO_RULES_INPUT = 99, 98
OTHER_RULE_ID, OTHER = 14, Out("b", "239.8.8.8", 5008, "01:00:5e:08:08:08")


def meta(magic: int, ifindex: int = LO, seq: int = 0) -> bytes:
    return bytes(abi.Meta(magic=magic, ifindex=ifindex, seq=seq))


DONE = abi.META_DONE
EGRESS = abi.META_EGRESS


@dataclasses.dataclass(frozen=True)
class MetaCopy:
    iface: str
    meta: bytes  # the frame's metadata as the ingress left it
    out: bytes | None  # expected output; None: XDP_DROP, counted EGRESS_DROP
    counted: tuple[int, int] | None = None  # (rule id, output index) whose counter moves
    verdict: str = "EGRESS_DROP"


@dataclasses.dataclass(frozen=True)
class MetaCase:
    desc: str
    frame: bytes
    copies: tuple[MetaCopy, ...]  # in the order the device queue runs them


def _seq_copies(seq: int, *ifaces_and_outs) -> tuple[MetaCopy, ...]:
    return tuple(MetaCopy(iface, meta(EGRESS, LO, seq), sent(IN, FAN4[i]) if i is not None else None,
                          (7, i) if i is not None else None) for iface, i in ifaces_and_outs)


META_CASES = [
    MetaCase("DONE: rewritten at ingress, passed as it is", sent(SINGLE_IN, SINGLE[0]),
             (MetaCopy("b", meta(DONE), sent(SINGLE_IN, SINGLE[0])),
              MetaCopy("a", meta(DONE), sent(SINGLE_IN, SINGLE[0])))),
    MetaCase("DONE: passed even where its group matches a rule (no second rewrite)", IN.build(),
             (MetaCopy("a", meta(DONE), IN.build()),)),
    MetaCase("EGRESS: single-output rule rewritten here", SINGLE_IN.build(),
             (MetaCopy("b", meta(EGRESS, LO, 1), sent(SINGLE_IN, SINGLE[0]), (13, 0)),)),
    MetaCase("EGRESS: the input comes from the metadata, not the batch", IN.build(),
             (MetaCopy("b", meta(EGRESS, OTHER_INPUT, 2), sent(IN, OTHER), (OTHER_RULE_ID, 0)),)),
    MetaCase("EGRESS: no rule under the frame's own input: dropped", IN.build(),
             (MetaCopy("b", meta(EGRESS, NO_RULES_INPUT, 3), None),)),
    MetaCase("EGRESS: copies of one packet: a, b, a get outputs 0, 1, 2", IN.build(),
             _seq_copies(10, ("a", 0), ("b", 1), ("a", 2))),
    MetaCase("EGRESS: a packet whose second copy on a was lost, then the next: starts over", IN.build(),
             _seq_copies(11, ("a", 0)) + _seq_copies(12, ("a", 0), ("a", 2))),
    MetaCase("EGRESS: more copies on a than a has outputs: the third is dropped", IN.build(),
             _seq_copies(13, ("a", 0), ("a", 2), ("a", None))),
    MetaCase("EGRESS: IPv6 copies", IN6.build(),
             tuple(MetaCopy(o.iface, meta(EGRESS, LO, 14), sent(IN6, o), (8, i)) for i, o in enumerate(FAN6))),
    MetaCase("someone else's metadata: as if none (context input, rotation)", IN.build(),
             (MetaCopy("b", (0x12345678).to_bytes(4, "little") * 3, sent(IN, FAN4[1]), (7, 1)),)),
]


@pytest.fixture(scope="module")
def other_input(datapath, relay):
    """OTHER_INPUT's rule for IN's group and port."""
    rule = parse_rule(f"239.1.1.1:5001={spec([OTHER])}", "in")
    stats = stats_of(OTHER_RULE_ID, 1)
    value = encode.output_value(rule, rule.outputs[0], ifindex=IFINDEX["b"], slot=0, src_mac=MACS["b"], stat=stats[0])
    relay.reset_rule_counters(OTHER_RULE_ID, stats)
    relay.output_slots[OTHER_RULE_ID] = stats
    relay.put_rule(encode.rule_key(rule, OTHER_INPUT), encode.rule_value(rule, OTHER_RULE_ID, [value]))
    yield relay
    relay.delete_rule(encode.rule_key(rule, OTHER_INPUT))


@pytest.fixture(scope="module")
def egress_meta(datapath, one_cpu):
    """egress_meta(frame, iface, meta, ctx ingress) -> (action, metadata out,
    frame out): the twin, as if the frame left through iface."""
    prog_fd = datapath.load_func(TWIN)
    map_fd = datapath._bpf[TWIN_EGRESS_MAP.encode()].map_fd

    def run_copy(frame: bytes, iface: str, meta_in: bytes):
        libbpf.map_update(map_fd, ctypes.c_uint32(0), ctypes.c_uint32(IFINDEX[iface]))
        ctx = libbpf.XdpMd(ingress_ifindex=LO)
        action, meta_out, out, _ = libbpf.test_run_meta(prog_fd, frame, ctx, meta=meta_in)
        return action, meta_out, out

    return run_copy


@pytest.mark.parametrize("case", META_CASES, ids=lambda c: c.desc)
def test_egress_by_metadata(other_input, egress_meta, case):
    relay = other_input
    rules = rule_counts(relay)
    for i, copy in enumerate(case.copies):
        verdicts, outputs = verdict_counts(relay), output_counts(relay)

        action, meta_out, out = egress_meta(case.frame, copy.iface, copy.meta)

        where = f"copy {i} through {copy.iface}"
        check_copy(relay, verdicts, outputs, len(case.frame), action, out, copy.out, copy.counted, copy.verdict,
                   where)
        if action == PASS:
            ours = int.from_bytes(copy.meta[:4], "little") in (DONE, EGRESS)
            assert meta_out == (b"" if ours else copy.meta), f"{where}: our metadata leaves, others' stays"
    assert rule_counts(relay) == rules


@pytest.fixture(scope="module")
def single_port(datapath, relay):
    """Rule 13's output slot: b's ifindex does not exist, so its tx_ports
    entry points at lo (a test run never transmits)."""
    datapath.maps.set_port(0, LO, datapath.egress_fd)
    return relay


@pytest.mark.parametrize("pkt, rule_id, magic, out", [
    (SINGLE_IN, 13, DONE, sent(SINGLE_IN, SINGLE[0])),
    (replace(SINGLE_IN, vlan=100), 13, DONE, sent(SINGLE_IN, SINGLE[0])),
    (IN, 7, EGRESS, IN.build()),
    (replace(IN6, vlan=100), 8, EGRESS, IN6.build()),
], ids=["one output: rewritten, DONE", "one output, tagged: rewritten untagged, DONE",
        "fan-out: original, EGRESS with input and packet number", "IPv6 fan-out, tagged: untagged, EGRESS"])
def test_ingress_leaves_metadata(datapath, single_port, one_cpu, pkt, rule_id, magic, out):
    ctx = libbpf.XdpMd(ingress_ifindex=LO)
    action, meta_out, frame, _ = libbpf.test_run_meta(datapath.prog_fd, pkt.build(), ctx)
    assert action == REDIRECT
    assert frame == out
    m = abi.Meta.from_buffer_copy(meta_out)
    assert len(meta_out) == ctypes.sizeof(abi.Meta)
    assert m.magic == magic
    if magic == EGRESS:
        assert (m.ifindex, m.seq) == (LO, single_port.rule_counters(rule_id).packets & 0xFFFFFFFF)


@pytest.mark.parametrize("pkt", [SINGLE_IN, replace(SINGLE_IN, vlan=100)], ids=["untagged", "tagged"])
def test_ingress_sends_a_rewritten_frame_direct_without_metadata(datapath, single_port, pkt):
    """With the slot in mcr_tx_direct (its interface takes no fan-out copy),
    the rewritten frame goes there, without our metadata: no egress program
    runs on it."""
    datapath.maps.set_direct(0, LO)
    try:
        ctx = libbpf.XdpMd(ingress_ifindex=LO)
        action, meta_out, frame, _ = libbpf.test_run_meta(datapath.prog_fd, pkt.build(), ctx)
    finally:
        datapath.maps.clear_direct(0)
    assert (action, meta_out, frame) == (REDIRECT, b"", sent(SINGLE_IN, SINGLE[0]))


def test_ingress_passes_host_traffic_without_metadata(datapath, single_port):
    ctx = libbpf.XdpMd(ingress_ifindex=LO)
    frame = replace(IN, dst="239.9.9.9").build()
    action, meta_out, out, _ = libbpf.test_run_meta(datapath.prog_fd, frame, ctx)
    assert (action, meta_out, out) == (PASS, b"", frame)


@pytest.mark.parametrize("pkt, rule_id", [(replace(SINGLE_IN, vlan=100), 13), (replace(IN, vlan=100), 7)],
                         ids=["one output", "fan-out"])
def test_generic_ingress_leaves_headers_for_the_egress(datapath, single_port, egress_meta, pkt, rule_id):
    """mcr_relay_skb (generic XDP): no metadata, headers original (the tag
    goes), nothing counted per output; the egress program rewrites from the
    context's input (generic XDP gives each copy its entry's program at once)."""
    outputs = output_counts(single_port)
    ctx = libbpf.XdpMd(ingress_ifindex=LO)
    action, meta_out, frame, _ = libbpf.test_run_meta(datapath.generic_fd, pkt.build(), ctx)
    assert (action, meta_out, frame) == (REDIRECT, b"", replace(pkt, vlan=None).build())
    assert output_counts(single_port) == outputs
    outs = RULES[rule_id][1]
    for i, o in enumerate(outs):
        action, _, out = egress_meta(frame, o.iface, b"")
        assert (action, out) == (PASS, sent(pkt, o)), f"output {i}"
        outputs[(rule_id, i)] = (outputs[(rule_id, i)][0] + 1, outputs[(rule_id, i)][1] + len(frame))
    assert output_counts(single_port) == outputs
