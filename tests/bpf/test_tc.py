"""The TC program (bpf/tc_relay.c) under BPF_PROG_TEST_RUN.

It must relay exactly like the XDP ingress program: the whole single-output
packet table of tests/fixtures/xdp_table.py runs through it, with TC's actions in
place of XDP's (redirect: TC_ACT_REDIRECT, drop: TC_ACT_SHOT, pass:
TC_ACT_UNSPEC, so a later filter still sees the packet). Fan-out differs:
every output but the last gets a clone sent at once (bpf_clone_redirect),
the last takes the packet itself. The rules here send everything out of lo,
so the clones are captured on lo by a packet socket and compared too.

A test run cannot make a packet's checksum partial (CHECKSUM_PARTIAL): the
end-to-end tests send such packets (tests/e2e/test_modes.py).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import socket
import struct
from dataclasses import replace

import pytest

from mcr_xdp import abi, encode, libbpf
from mcr_xdp.rules import parse_rule
from tests.fixtures import xdp_table
from tests.fixtures.packets import Udp4, Udp6, mac

pytestmark = pytest.mark.root

TC_ACT_UNSPEC, TC_ACT_SHOT, TC_ACT_REDIRECT = 0xFFFFFFFF, 2, 7
TC_ACTION = {libbpf.XDP_PASS: TC_ACT_UNSPEC, libbpf.XDP_DROP: TC_ACT_SHOT, libbpf.XDP_REDIRECT: TC_ACT_REDIRECT}
LO = 1
OUT_MAC = xdp_table.OUT_MAC

# Fan-out rules: their own groups, so they never meet the single-output table.
FAN = [("239.3.3.1", 6001, "01:00:5e:03:03:01"), ("239.3.3.2", 6002, "01:00:5e:03:03:02"),
       ("239.131.3.3", 6003, "01:00:5e:03:03:03")]
FAN6 = [("ff3e::3:1", 6001, "33:33:00:03:00:01"), ("ff3e::3:2", 6002, "33:33:00:03:00:02")]
WIDE = [(f"239.16.0.{i}", 7000 + i, f"01:00:5e:10:00:{i:02x}") for i in range(abi.MAX_OUTPUTS)]
FAN_RULES = {
    20: ("239.1.3.1:5001=" + ",".join(f"lo/{g}:{p}" for g, p, _ in FAN), FAN),
    21: ("[ff3e::3:0]:5001=" + ",".join(f"lo/[{g}]:{p}" for g, p, _ in FAN6), FAN6),
    22: ("239.1.3.16:5001=" + ",".join(f"lo/{g}:{p}" for g, p, _ in WIDE), WIDE),
    23: ("239.1.3.23:5001=" + ",".join(f"lo/{g}:{p}" for g, p, _ in FAN) + ";ttl=9", FAN),
    # A range: outputs as RANGE_IN gets them. The second keeps the port the
    # first rewrote, the third the group bits it keeps.
    24: ("239.29.0.0/16:*=lo/239.10.0.0/16:6001,lo,lo/239.139.0.0/16:*",
         [("239.10.4.5", 6001, "01:00:5e:0a:04:05"), ("239.29.4.5", 5555, "01:00:5e:1d:04:05"),
          ("239.139.4.5", 5555, "01:00:5e:0b:04:05")]),
}
RANGE_IN = Udp4(dst="239.29.4.5", dport=5555)
FAN_IN = Udp4(dst="239.1.3.1")
FAN_IN6 = Udp6(dst="ff3e::3:0")
WIDE_IN = Udp4(dst="239.1.3.16")


class SkBuff(ctypes.Structure):
    """struct __sk_buff up to ifindex: what a test run may set (the rest
    must be zero)."""

    _fields_ = [(name, ctypes.c_uint32) for name in (
        "len", "pkt_type", "mark", "queue_mapping", "protocol", "vlan_present", "vlan_tci", "vlan_proto",
        "priority", "ingress_ifindex", "ifindex")]


@pytest.fixture(scope="module")
def relay(datapath):
    """Both tables' rules, every output on lo; returns the maps."""
    maps = datapath.maps
    for rule_id, (text, _slot) in xdp_table.RULES.items():
        rule = parse_rule(text, "in")
        out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=0, src_mac=OUT_MAC,
                                  next_hop=xdp_table.next_hop(rule.outputs[0]))
        maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, rule_id, [out]))
    for rule_id, (text, _) in FAN_RULES.items():
        rule = parse_rule(text, "in")
        stats = xdp_table.stats_of(rule_id, len(rule.outputs))
        outs = [encode.output_value(rule, o, ifindex=LO, slot=i, src_mac=OUT_MAC, stat=stats[i])
                for i, o in enumerate(rule.outputs)]
        maps.reset_rule_counters(rule_id, stats)
        maps.output_slots[rule_id] = stats
        maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, rule_id, outs))
    texts = [text for text, _ in (*xdp_table.RULES.values(), *FAN_RULES.values())]
    maps.set_config(**encode.rule_kinds(parse_rule(text, "in") for text in texts))
    return maps


@pytest.fixture(scope="module")
def run_tc(datapath):
    """run_tc(frame) -> (TC action, the packet after the program)."""
    fd = datapath.tc_fd

    def run(frame: bytes):
        ctx = SkBuff(ingress_ifindex=LO, ifindex=LO)
        action, out, _ = libbpf.test_run(fd, frame, ctx)
        return action, out

    return run


@pytest.fixture
def capture():
    """Frames leaving lo (PACKET_OUTGOING) to the fan-out test ports, as
    the clones go out; read after the test run."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind(("lo", 0))
    sock.settimeout(0.2)

    def read() -> list[bytes]:
        frames = []
        while True:
            try:
                data, addr = sock.recvfrom(65536)
            except TimeoutError:
                return frames
            if addr[2] == socket.PACKET_OUTGOING and _port(data) in {p for _, outs in FAN_RULES.values()
                                                                      for _, p, _ in outs}:
                frames.append(data)

    yield read
    sock.close()


def _port(frame: bytes) -> int | None:
    if frame[12:14] == b"\x08\x00":
        return struct.unpack_from("!H", frame, 14 + (frame[14] & 0xF) * 4 + 2)[0]
    if frame[12:14] == b"\x86\xdd":
        return struct.unpack_from("!H", frame, 14 + 40 + 2)[0]
    return None


def sent(pkt, group: str, port: int, eth_dst: str, ttl: int | None = None) -> bytes:
    hops = {"ttl": ttl or pkt.ttl - 1} if isinstance(pkt, Udp4) else {"hop_limit": ttl or pkt.hop_limit - 1}
    return replace(pkt, vlan=None, dst=group, dport=port, eth_dst=mac(eth_dst), eth_src=OUT_MAC, **hops).build()


def _runt(frame: bytes) -> bool:
    """An IPv4 or IPv6 ethertype without a whole fixed IP header: a test run
    of an skb program refuses it (EINVAL), as a real stack would drop it
    before TC."""
    need = {b"\x08\x00": 14 + 20, b"\x86\xdd": 14 + 40}.get(frame[12:14], 0)
    return len(frame) < need


# The XDP table, but for cases that test XDP's devmap slots (TC redirects
# by ifindex, and every rule here has an existing one) and runts.
TABLE = [c for c in xdp_table.CASES if c.verdict != "DROP_NO_OUTPUT" and not _runt(c.frame)]
RUNTS = [c for c in xdp_table.CASES if _runt(c.frame)]


@pytest.mark.parametrize("case", TABLE, ids=lambda c: c.desc)
def test_same_table_as_xdp(relay, run_tc, case):
    verdicts, rules = xdp_table.verdict_counts(relay), xdp_table.rule_counts(relay)

    action, out = run_tc(case.frame)

    assert action == TC_ACTION[case.action]
    if case.out is not xdp_table.ANY:
        assert out == (case.frame if case.out is None else case.out)
    if action == TC_ACT_REDIRECT:
        xdp_table.assert_checksums_valid(out)
    n, v = len(case.frame), abi.Verdict[case.verdict]
    verdicts[v] = (verdicts[v][0] + 1, verdicts[v][1] + n)
    assert xdp_table.verdict_counts(relay) == verdicts
    if case.rule is not None:
        p, b, fwd, drop = rules[case.rule]
        ok = case.action == libbpf.XDP_REDIRECT
        rules[case.rule] = (p + 1, b + n, fwd + ok, drop + (not ok))
    assert xdp_table.rule_counts(relay) == rules


@dataclasses.dataclass(frozen=True)
class FanCase:
    desc: str
    pkt: Udp4 | Udp6
    rule: int
    ttl: int | None = None  # the rule's ;ttl=N


FAN_CASES = [
    FanCase("IPv4: three outputs, the last one takes the packet", FAN_IN, 20),
    FanCase("IPv4: tagged input, untagged copies", replace(FAN_IN, vlan=7), 20),
    FanCase("IPv4: zero UDP checksum stays zero in every copy", replace(FAN_IN, udp_checksum=False), 20),
    FanCase("IPv4: TTL 2, every copy leaves with 1", replace(FAN_IN, ttl=2), 20),
    FanCase("IPv6: two outputs", FAN_IN6, 21),
    FanCase("IPv4: MAX_OUTPUTS outputs", WIDE_IN, 22),
    FanCase("IPv4 ;ttl=9: every copy leaves with TTL 9", replace(FAN_IN, dst="239.1.3.23"), 23, 9),
    FanCase("IPv4 ;ttl=9: TTL 1 is relayed, every copy with 9", replace(FAN_IN, dst="239.1.3.23", ttl=1), 23, 9),
    FanCase("range: each copy from the headers as received", RANGE_IN, 24),
    FanCase("range: zero UDP checksum stays zero", replace(RANGE_IN, udp_checksum=False), 24),
]


@pytest.mark.parametrize("case", FAN_CASES, ids=lambda c: c.desc)
def test_fanout_clones_then_the_packet(relay, run_tc, capture, case):
    outs = FAN_RULES[case.rule][1]
    before = relay.output_counters(case.rule, len(outs))
    verdict = relay.verdicts()[abi.Verdict.REDIRECT_MULTI].packets
    frame = case.pkt.build()

    action, out = run_tc(frame)
    clones = capture()

    expected = [sent(case.pkt, g, p, m, case.ttl) for g, p, m in outs]
    assert action == TC_ACT_REDIRECT
    assert out == expected[-1]
    assert clones == expected[:-1]
    for copy in expected:
        xdp_table.assert_checksums_valid(copy)
    after = relay.output_counters(case.rule, len(outs))
    assert [a.packets - b.packets for a, b in zip(after, before)] == [1] * len(outs)
    assert [a.bytes - b.bytes for a, b in zip(after, before)] == [len(frame)] * len(outs)
    assert relay.verdicts()[abi.Verdict.REDIRECT_MULTI].packets == verdict + 1


def test_fanout_ttl_one_sends_nothing(relay, run_tc, capture):
    action, _ = run_tc(replace(FAN_IN, ttl=1).build())
    assert action == TC_ACT_SHOT
    assert capture() == []


@pytest.mark.parametrize("case", RUNTS, ids=lambda c: c.desc)
def test_kernel_refuses_ip_runts(relay, run_tc, case):
    """The table's frames cut inside the fixed IP header never reach the
    program under a test run; nothing is counted."""
    verdicts = xdp_table.verdict_counts(relay)
    with pytest.raises(OSError) as exc:
        run_tc(case.frame)
    assert exc.value.errno == errno.EINVAL
    assert xdp_table.verdict_counts(relay) == verdicts
