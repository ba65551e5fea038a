"""The ingress program (bpf/relay.c) as a table of packets, run through
BPF_PROG_TEST_RUN: for each input frame, the XDP action, the exact output
frame, the verdict counted and the rule counters moved.

Expected frames are built by tests/packets.py from a description of the
rewritten packet, with checksums computed from scratch; nothing here calls
the checksum or rewrite code under test. Frames arrive on lo (ifindex 1 in
any namespace) and rules send them out of lo; a test run does not
transmit, it only returns the action.
"""

from __future__ import annotations

import dataclasses
import errno
import struct
from dataclasses import replace

import packets
import pytest
from packets import IP_MF, Udp4, Udp6, mac

from mcr_xdp import abi, encode, libbpf, loader
from mcr_xdp.rules import parse_rule

pytestmark = pytest.mark.root

PASS, DROP, REDIRECT = libbpf.XDP_PASS, libbpf.XDP_DROP, libbpf.XDP_REDIRECT

LO = 1  # LOOPBACK_IFINDEX: lo in every network namespace
OUT_MAC = mac("02:00:00:00:00:aa")  # source MAC of every output
SLOT_LO, SLOT_EMPTY = 1, 2  # devmap slots: lo, and one never filled
RULES = {
    # rule id: (rule, devmap slot). Input and output interfaces are both lo.
    1: ("239.1.1.1:5001=out/239.130.2.2:5002", SLOT_LO),
    2: ("239.1.1.2:5001=out", SLOT_LO),
    3: ("239.1.1.3:5001=out", SLOT_EMPTY),
    4: ("[ff3e::1:1]:5001=out/[ff3e::2:2]:5002", SLOT_LO),
    5: ("203.0.113.9@239.1.1.1:5001=out/239.5.5.5:5005", SLOT_LO),  # SSM: beats rule 1 for its source
}

IN = Udp4()  # 239.1.1.1:5001 from 192.0.2.1:40000, TTL 64, DF
IN6 = Udp6()  # [ff3e::1:1]:5001 from 2001:db8::1, hop limit 64


def sent(pkt: Udp4 | Udp6, eth_dst: str, **fields) -> bytes:
    """pkt as a rule sends it: fields changed, TTL or hop limit - 1,
    untagged, with the output's Ethernet header."""
    hops = {"ttl": pkt.ttl - 1} if isinstance(pkt, Udp4) else {"hop_limit": pkt.hop_limit - 1}
    return replace(pkt, vlan=None, eth_dst=mac(eth_dst), eth_src=OUT_MAC, **hops, **fields).build()


def rewritten(pkt: Udp4) -> bytes:
    """Rule 1: new group and port; the MAC keeps the low 23 bits of
    239.130.2.2, so the group's high bit must vanish."""
    return sent(pkt, "01:00:5e:02:02:02", dst="239.130.2.2", dport=5002)


def kept(pkt: Udp4) -> bytes:
    """Rule 2: same group and port."""
    return sent(pkt, "01:00:5e:01:01:02")


def rewritten6(pkt: Udp6) -> bytes:
    """Rule 4: MAC 33:33 + the low 32 bits of ff3e::2:2."""
    return sent(pkt, "33:33:00:02:00:02", dst="ff3e::2:2", dport=5002)


def ssm(pkt: Udp4) -> bytes:
    """Rule 5."""
    return sent(pkt, "01:00:5e:05:05:05", dst="239.5.5.5", dport=5005)


def options(ihl: int) -> bytes:
    """IPv4 options filling a header of ihl words: Router Alert, then
    distinct filler bytes so a shifted copy cannot go unnoticed."""
    filler = bytes(range(0x20, 0x20 + 4 * (ihl - 5) - 4))
    return bytes([0x94, 0x04, 0x00, 0x00]) + filler


def udp_check(frame: bytes) -> bytes:
    """The UDP checksum field of an untagged IPv4 (no options) or IPv6 frame."""
    at = 14 + (20 if frame[12:14] == b"\x08\x00" else 40) + 6
    return frame[at : at + 2]


def zero_checksum(pkt: Udp4 | Udp6, rewrite) -> Udp4 | Udp6:
    """pkt with a 2-byte payload for which the output UDP checksum computes
    to 0x0000, which is sent as 0xffff: found by brute force over the builder."""
    for value in range(0x10000):
        candidate = replace(pkt, payload=struct.pack("!H", value))
        if udp_check(rewrite(candidate)) == b"\xff\xff":
            return candidate
    raise AssertionError("no payload gives a zero UDP checksum")


ANY = object()  # output not checked (the frame is dropped)


@dataclasses.dataclass(frozen=True)
class Case:
    desc: str
    frame: bytes
    action: int
    verdict: str  # abi.Verdict member, by name: a renamed verdict fails its rows only
    out: object = None  # expected output bytes; None: the input, untouched; ANY: not checked
    rule: int | None = None  # id of the rule whose counters move


TAGGED = replace(IN, vlan=100)
WITH_OPTIONS = replace(IN, options=options(8))
ZERO_SUM = zero_checksum(IN, rewritten)
TAGGED6 = replace(IN6, vlan=100)
ZERO_SUM6 = zero_checksum(IN6, rewritten6)
PADDED = IN.build() + bytes(16)  # Ethernet padding after the IP packet

CASES = [
    Case("match: rewrite group and port", IN.build(), REDIRECT, "REDIRECT", rewritten(IN), rule=1),
    Case("match: keep group and port", replace(IN, dst="239.1.1.2").build(), REDIRECT, "REDIRECT",
         kept(replace(IN, dst="239.1.1.2")), rule=2),
    Case("match: TTL 2 leaves with TTL 1", replace(IN, ttl=2).build(), REDIRECT, "REDIRECT",
         rewritten(replace(IN, ttl=2)), rule=1),
    Case("match: TTL 1 dropped", replace(IN, ttl=1).build(), DROP, "DROP_TTL", rule=1),
    Case("match: TTL 0 dropped", replace(IN, ttl=0).build(), DROP, "DROP_TTL", rule=1),
    Case("match: no DF, other source", replace(IN, frag=0, src="198.51.100.7", sport=1).build(), REDIRECT,
         "REDIRECT", rewritten(replace(IN, frag=0, src="198.51.100.7", sport=1)), rule=1),
    Case("match: 802.1Q tag removed on output", TAGGED.build(), REDIRECT, "REDIRECT", rewritten(TAGGED), rule=1),
    Case("match: 802.1ad tag removed on output", replace(TAGGED, tpid=packets.ETH_P_8021AD).build(), REDIRECT,
         "REDIRECT", rewritten(TAGGED), rule=1),
    Case("match: zero UDP checksum stays zero", replace(IN, udp_checksum=False).build(), REDIRECT, "REDIRECT",
         rewritten(replace(IN, udp_checksum=False)), rule=1),
    Case("match: computed UDP checksum 0 sent as 0xffff", ZERO_SUM.build(), REDIRECT, "REDIRECT",
         rewritten(ZERO_SUM), rule=1),
    Case("match: SSM rule before the any-source rule", replace(IN, src="203.0.113.9").build(), REDIRECT,
         "REDIRECT", ssm(replace(IN, src="203.0.113.9")), rule=5),
    Case("match: Ethernet padding kept", PADDED, REDIRECT, "REDIRECT", rewritten(IN) + bytes(16), rule=1),
    Case("match: output slot empty", replace(IN, dst="239.1.1.3").build(), DROP, "DROP_NO_OUTPUT", ANY, rule=3),
    Case("match: tagged, output slot empty", replace(TAGGED, dst="239.1.1.3").build(), DROP, "DROP_NO_OUTPUT",
         ANY, rule=3),
    *[
        Case(f"match: IPv4 options, IHL {ihl}", replace(IN, options=options(ihl)).build(), REDIRECT, "REDIRECT",
             rewritten(replace(IN, options=options(ihl))), rule=1)
        for ihl in range(6, 16)
    ],
    Case("IPv6 match: rewrite group and port", IN6.build(), REDIRECT, "REDIRECT", rewritten6(IN6), rule=4),
    Case("IPv6 match: hop limit 2 leaves with 1", replace(IN6, hop_limit=2).build(), REDIRECT, "REDIRECT",
         rewritten6(replace(IN6, hop_limit=2)), rule=4),
    Case("IPv6 match: 802.1Q tag removed on output", TAGGED6.build(), REDIRECT, "REDIRECT", rewritten6(TAGGED6),
         rule=4),
    Case("IPv6 match: computed UDP checksum 0 sent as 0xffff", ZERO_SUM6.build(), REDIRECT, "REDIRECT",
         rewritten6(ZERO_SUM6), rule=4),
    Case("IPv6 match: hop limit 1 dropped", replace(IN6, hop_limit=1).build(), DROP, "DROP_TTL", rule=4),
    Case("IPv6 no rule: other group", replace(IN6, dst="ff3e::9").build(), PASS, "PASS_NO_RULE"),
    Case("IPv6 unicast destination", replace(IN6, dst="2001:db8::2", eth_dst=mac("02:00:00:00:00:02")).build(),
         PASS, "PASS_NOT_MULTICAST"),
    Case("IPv6 TCP to the group", replace(IN6, nexthdr=packets.IPPROTO_TCP, payload=bytes(20)).build(), PASS,
         "PASS_NOT_UDP"),
    Case("IPv6 extension header before UDP", replace(IN6, nexthdr=0, payload=bytes(8)).build(), PASS,
         "PASS_IPV6_EXT"),
    # IPv6 makes the UDP checksum mandatory: a zero one is not relayed.
    Case("IPv6 zero UDP checksum", replace(IN6, udp_checksum=False).build(), PASS, "PASS_MALFORMED"),
    Case("IPv6 version 4 in an IPv6 ethertype", replace(IN6, version=4).build(), PASS, "PASS_MALFORMED"),
    Case("IPv6 payload length beyond the frame", replace(IN6, payload_len=len(IN6.build()) - 54 + 1).build(), PASS,
         "PASS_MALFORMED"),
    Case("truncated: IPv6 header", IN6.build()[:14 + 39], PASS, "PASS_MALFORMED"),
    Case("truncated: UDP header after IPv6", IN6.build()[:14 + 40 + 7], PASS, "PASS_MALFORMED"),
    Case("no rule: other group", replace(IN, dst="239.9.9.9").build(), PASS, "PASS_NO_RULE"),
    Case("no rule: other port", replace(IN, dport=5002).build(), PASS, "PASS_NO_RULE"),
    Case("no rule: tagged, other group", replace(TAGGED, dst="239.9.9.9").build(), PASS, "PASS_NO_RULE"),
    Case("no rule: rewritten group is not an input", replace(IN, dst="239.130.2.2", dport=5002).build(), PASS,
         "PASS_NO_RULE"),
    Case("unicast destination", replace(IN, dst="192.0.2.99", eth_dst=mac("02:00:00:00:00:02")).build(), PASS,
         "PASS_NOT_MULTICAST"),
    Case("broadcast destination", replace(IN, dst="255.255.255.255", eth_dst=b"\xff" * 6).build(), PASS,
         "PASS_NOT_MULTICAST"),
    Case("first fragment (MF)", replace(IN, frag=IP_MF).build(), PASS, "PASS_FRAGMENT"),
    Case("later fragment (offset 185)", replace(IN, frag=185).build(), PASS, "PASS_FRAGMENT"),
    Case("last fragment (DF clear, offset 1)", replace(IN, frag=1).build(), PASS, "PASS_FRAGMENT"),
    Case("TCP to the group", replace(IN, proto=packets.IPPROTO_TCP, payload=bytes(20)).build(), PASS, "PASS_NOT_UDP"),
    Case("ARP", packets.arp_request(), PASS, "PASS_NOT_IP"),
    Case("QinQ: only one tag is parsed",
         packets.ethernet(IN.build()[:6], IN.eth_src, packets.ETH_P_8021Q, 100, packets.ETH_P_8021AD)
         + struct.pack("!HH", 200, packets.ETH_P_IP) + IN.build()[14:], PASS, "PASS_NOT_IP"),
    Case("IP version 6 in an IPv4 ethertype", replace(IN, version=6).build(), PASS, "PASS_MALFORMED"),
    Case("IHL 4", replace(IN, ihl=4).build(), PASS, "PASS_MALFORMED"),
    Case("IHL 0", replace(IN, ihl=0).build(), PASS, "PASS_MALFORMED"),
    Case("IHL beyond the frame", replace(IN, ihl=15).build(), PASS, "PASS_MALFORMED"),
    Case("total length beyond the frame", replace(IN, tot_len=len(IN.build()) - 14 + 1).build(), PASS,
         "PASS_MALFORMED"),
    Case("total length shorter than IP + UDP headers", replace(IN, tot_len=27).build(), PASS, "PASS_MALFORMED"),
    # BPF_PROG_TEST_RUN refuses XDP input shorter than ETH_HLEN (14) with
    # EINVAL (test_kernel_refuses_runt below), so the shortest frames here
    # are a bare Ethernet header.
    Case("truncated: Ethernet only, IPv4", IN.build()[:14], PASS, "PASS_MALFORMED"),
    *[
        Case(f"truncated: VLAN tag, {n} bytes", TAGGED.build()[:n], PASS, "PASS_MALFORMED")
        for n in (14, 16, 17)
    ],
    *[
        Case(f"truncated: IP header, {n} bytes", IN.build()[:n], PASS, "PASS_MALFORMED")
        for n in (15, 24, 33)
    ],
    Case("truncated: IP header after a VLAN tag", TAGGED.build()[:30], PASS, "PASS_MALFORMED"),
    *[
        Case(f"truncated: IP options, {n} bytes", WITH_OPTIONS.build()[:n], PASS, "PASS_MALFORMED")
        for n in (34, 40, 45)
    ],
    *[
        Case(f"truncated: UDP header, {n} bytes", IN.build()[:n], PASS, "PASS_MALFORMED")
        for n in (34, 38, 41)
    ],
    Case("truncated: UDP header after options", WITH_OPTIONS.build()[:50], PASS, "PASS_MALFORMED"),
]


@pytest.fixture(scope="module")
def relay(datapath):
    """RULES installed, slot SLOT_LO -> lo; returns the maps."""
    maps = datapath.maps
    for rule_id, (text, slot) in RULES.items():
        rule = parse_rule(text, "in")
        out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=slot, src_mac=OUT_MAC)
        maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, rule_id, [out]))
    maps.set_port(SLOT_LO, LO, datapath.egress_fd)
    maps.set_config(ssm_rules=sum("@" in text for text, _ in RULES.values()))
    return maps


def verdict_counts(maps) -> list[tuple[int, int]]:
    return [(c.packets, c.bytes) for c in maps.verdicts()]


def rule_counts(maps) -> dict[int, tuple[int, int, int, int]]:
    fields = ("packets", "bytes", "forwarded", "dropped")
    return {i: tuple(getattr(maps.rule_counters(i), f) for f in fields) for i in RULES}


def assert_checksums_valid(frame: bytes) -> None:
    """A second, independent opinion on the output: scapy recomputes the IPv4
    header and UDP checksums of the frame."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    pkt = Ether(frame)
    ip_check, udp_check = (pkt[IP].chksum if IP in pkt else None), pkt[UDP].chksum
    if IP in pkt:
        pkt[IP].chksum = None
    pkt[UDP].chksum = None
    fresh = Ether(bytes(pkt))
    if IP in fresh:
        assert fresh[IP].chksum == ip_check, "IP header checksum"
    if udp_check != 0:  # 0: sent without a checksum (IPv4 only)
        assert fresh[UDP].chksum == udp_check, "UDP checksum"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_relay(relay, run_xdp, case):
    verdicts, rules = verdict_counts(relay), rule_counts(relay)

    action, out = run_xdp(case.frame, LO)

    assert action == case.action
    if case.out is not ANY:
        expected = case.frame if case.out is None else case.out
        assert out == expected
    if action == REDIRECT:
        assert_checksums_valid(out)

    n, v = len(case.frame), abi.Verdict[case.verdict]
    verdicts[v] = (verdicts[v][0] + 1, verdicts[v][1] + n)
    assert verdict_counts(relay) == verdicts
    if case.rule is not None:
        packets_, bytes_, fwd, drop = rules[case.rule]
        rules[case.rule] = (packets_ + 1, bytes_ + n, fwd + (action == REDIRECT), drop + (action != REDIRECT))
    assert rule_counts(relay) == rules


def test_cases_are_what_they_claim():
    """Guards on the table itself."""
    assert len(TAGGED.build()) == len(IN.build()) + 4
    for pkt, rewrite in ((ZERO_SUM, rewritten), (ZERO_SUM6, rewritten6)):
        assert udp_check(rewrite(pkt)) == b"\xff\xff"
        assert udp_check(pkt.build()) not in (b"\x00\x00", b"\xff\xff")
    assert len(rewritten(TAGGED)) == len(TAGGED.build()) - 4
    assert len({case.desc for case in CASES}) == len(CASES)


def test_kernel_refuses_runt(relay, run_xdp):
    """Frames shorter than an Ethernet header never reach the program under
    BPF_PROG_TEST_RUN (EINVAL), so the table cannot test them; on a real
    interface no driver delivers them either."""
    verdicts = verdict_counts(relay)
    with pytest.raises(OSError) as exc:
        run_xdp(IN.build()[:13], LO)
    assert exc.value.errno == errno.EINVAL
    assert verdict_counts(relay) == verdicts


# Maps of the loss tracer (bpf/trace.c), a separate object.
TRACER_MAPS = {abi.MAP_LOSS, abi.MAP_LOSS_PROGS, abi.MAP_LOSS_MAPS, abi.MAP_LOSS_STEER}


def test_map_and_program_names(datapath):
    """Every MCR_MAP_* name (mirrored as abi.MAP_*) is a map of the compiled
    datapath, or of the loss tracer, and the loader opens all the
    datapath's; the program has its ABI name."""
    names = {value for key, value in vars(abi).items() if key.startswith("MAP_")}
    assert set(loader.MAP_NAMES) == names - TRACER_MAPS
    for name in names - TRACER_MAPS:
        datapath._bpf[name.encode()]  # bcc raises KeyError for a table it does not have
    assert libbpf.prog_name(datapath.prog_id) == abi.PROG_RELAY


def test_tracer_map_names():
    from mcr_xdp.trace import LossTracer

    tracer = LossTracer([])
    try:
        for name in TRACER_MAPS:
            tracer._bpf[name.encode()]
    finally:
        tracer.close()
