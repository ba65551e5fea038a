"""The fallback's classic BPF socket filters (mcr_xdp.fallback.cbpf), run by
a small interpreter of the kernel's semantics (an out-of-bounds load
rejects the packet; jumps are relative to the next instruction).

A filter must admit exactly its input's rule traffic and never the relay's
own transmissions; past BPF_MAXINSNS it widens, never narrows.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace

import pytest

from mcr_xdp.fallback import cbpf
from tests.fixtures.packets import IP_MF, Udp4, Udp6, arp_request

PACKET_HOST, PACKET_MULTICAST, PACKET_OUTGOING = 0, 2, 4


def run(prog, frame: bytes, pkttype: int = PACKET_MULTICAST) -> int:
    """What the filter returns for frame (0: dropped)."""
    a = x = 0
    mem = [0] * 16
    pc = 0

    def load(off: int, size: int):
        if off == (cbpf.SKF_AD_OFF + cbpf.SKF_AD_PKTTYPE) & 0xFFFFFFFF:
            return pkttype
        if off + size > len(frame):
            return None
        return int.from_bytes(frame[off:off + size], "big")

    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code in (cbpf.LD_W_ABS, cbpf.LD_H_ABS, cbpf.LD_B_ABS):
            a = load(k, {cbpf.LD_W_ABS: 4, cbpf.LD_H_ABS: 2, cbpf.LD_B_ABS: 1}[code])
            if a is None:
                return 0
        elif code == cbpf.LD_H_IND:
            a = load(x + k, 2)
            if a is None:
                return 0
        elif code == cbpf.LDX_B_MSH:
            b = load(k, 1)
            if b is None:
                return 0
            x = 4 * (b & 0xF)
        elif code == cbpf.ALU_AND_K:
            a &= k
        elif code == cbpf.LD_MEM:
            a = mem[k]
        elif code == cbpf.ST:
            mem[k] = a
        elif code == cbpf.JA:
            pc += k
        elif code in (cbpf.JEQ, cbpf.JGE, cbpf.JSET):
            hit = {cbpf.JEQ: a == k, cbpf.JGE: a >= k, cbpf.JSET: bool(a & k)}[code]
            pc += jt if hit else jf
        elif code == cbpf.RET:
            return k
        else:
            raise AssertionError(f"opcode {code:#x} not interpreted")


ENDPOINTS = [("239.1.1.1", 5001), ("239.1.1.2", 5001), ("239.7.7.7", 6000), ("ff3e::1:1", 5001)]
FILTER = cbpf.rule_filter(ENDPOINTS)
IN, IN6 = Udp4(), Udp6()


@pytest.mark.parametrize("frame, admitted", [
    (IN.build(), True),
    (replace(IN, dst="239.1.1.2").build(), True),
    (replace(IN, dst="239.7.7.7", dport=6000).build(), True),
    (replace(IN, options=bytes([0x94, 4, 0, 0]) + bytes(8)).build(), True),  # port found past options
    (replace(IN, ttl=1).build(), True),  # the worker counts it as DROP_TTL, like XDP
    (IN6.build(), True),
    (replace(IN, dport=5002).build(), False),  # right group, other port
    (replace(IN, dst="239.7.7.7").build(), False),  # a group's port belongs to that group only
    (replace(IN, dst="239.9.9.9").build(), False),
    (replace(IN, frag=IP_MF).build(), False),
    (replace(IN, frag=1).build(), False),
    (replace(IN, proto=6, payload=bytes(20)).build(), False),
    (replace(IN6, dst="ff3e::1:2").build(), False),
    (replace(IN6, dport=5002).build(), False),
    (replace(IN6, nexthdr=0, payload=bytes(8)).build(), False),
    (arp_request(), False),
    (IN.build()[:30], False),
    (IN6.build()[:50], False),
], ids=lambda v: "" if isinstance(v, bytes) else str(v))
def test_admits_rule_traffic_only(frame, admitted):
    assert bool(run(FILTER, frame)) == admitted


def test_whole_frames_admitted():
    big = replace(IN, payload=bytes(1400)).build()
    assert run(FILTER, big) >= len(big)


def test_never_the_relays_own_transmissions():
    for frame in (IN.build(), IN6.build()):
        assert run(FILTER, frame, PACKET_OUTGOING) == 0
        assert run(FILTER, frame, PACKET_HOST)


def test_drop_all():
    assert run(cbpf.drop_all(), IN.build()) == 0


def test_one_family_only():
    v4 = cbpf.rule_filter([("239.1.1.1", 5001)])
    assert run(v4, IN.build()) and not run(v4, replace(IN6, dport=5001).build())
    v6 = cbpf.rule_filter([("ff3e::1:1", 5001)])
    assert run(v6, IN6.build()) and not run(v6, IN.build())


RANGES = cbpf.rule_filter([("239.3.0.0/16", 5001), ("239.5.0.0/24", 0), ("ff3e::/96", 0),
                           ("ff3e:2::/32", 7000)])


@pytest.mark.parametrize("frame, admitted", [
    (replace(IN, dst="239.3.0.0").build(), True),
    (replace(IN, dst="239.3.255.255").build(), True),
    (replace(IN, dst="239.4.0.0").build(), False),  # just past the /16
    (replace(IN, dst="239.3.1.1", dport=5002).build(), False),  # the /16 is for port 5001
    (replace(IN, dst="239.5.0.77", dport=1).build(), True),  # any port
    (replace(IN, dst="239.5.1.0", dport=1).build(), False),
    (replace(IN6, dst="ff3e::2:3", dport=9).build(), True),
    (replace(IN6, dst="ff3e:0:0:1::1", dport=9).build(), False),  # outside the /96
    (replace(IN6, dst="ff3e:2:abcd::1", dport=7000).build(), True),
    (replace(IN6, dst="ff3e:2:abcd::1", dport=7001).build(), False),
    (replace(IN6, dst="ff3e:3::1", dport=7000).build(), False),
], ids=lambda v: "" if isinstance(v, bytes) else str(v))
def test_group_ranges_and_any_port(frame, admitted):
    assert bool(run(RANGES, frame)) == admitted


def test_an_any_port_rule_widens_to_every_port():
    """Past BPF_MAXINSNS the filter lists the rules' ports, unless one rule
    takes any port: then multicast UDP to every port."""
    prog = cbpf.rule_filter(many(4000, "239.10.0.0", ports=3) + [("239.20.0.0/16", 0)])
    assert len(prog) <= cbpf.BPF_MAXINSNS
    assert run(prog, replace(IN, dst="239.20.1.1", dport=4242).build())


def many(n: int, first: str, ports: int = 1):
    base = ipaddress.ip_address(first)
    return [(str(base + i), 5000 + i % ports) for i in range(n)]


@pytest.mark.parametrize("endpoints, exact", [
    (many(800, "239.10.0.0"), True),  # 5 instructions a pair: still exact
    (many(4000, "239.10.0.0", ports=3), False),  # past BPF_MAXINSNS: multicast to a rule port
    (many(300, "ff3e::10:0"), True),  # 11 a pair
    (many(1000, "ff3e::10:0", ports=2), False),
])
def test_large_rule_sets_stay_within_the_limit_and_admit_every_rule(endpoints, exact):
    prog = cbpf.rule_filter(endpoints)
    assert len(prog) <= cbpf.BPF_MAXINSNS
    six = ":" in endpoints[0][0]
    for group, port in endpoints[:: max(1, len(endpoints) // 50)] + endpoints[-1:]:
        pkt = replace(IN6 if six else IN, dst=group, dport=port)
        assert run(prog, pkt.build()), (group, port)
    stranger = replace(IN6 if six else IN, dst=endpoints[0][0], dport=4999)
    assert not run(prog, stranger.build())
    unused_group = replace(IN6 if six else IN, dst="ff3e::ffff:ffff" if six else "239.255.255.254",
                           dport=endpoints[0][1])
    assert bool(run(prog, unused_group.build())) == (not exact)


def test_every_port_widens_to_all_multicast_udp():
    endpoints = [(str(ipaddress.ip_address("239.20.0.0") + i), 1 + i) for i in range(3000)]
    prog = cbpf.rule_filter(endpoints)
    assert len(prog) <= cbpf.BPF_MAXINSNS
    assert run(prog, replace(IN, dst="239.99.0.1", dport=9).build())
    assert not run(prog, replace(IN, dst="10.0.0.1", eth_dst=bytes(6)).build())  # unicast stays out


def test_jumps_fit_their_fields():
    for prog in (FILTER, cbpf.rule_filter(many(800, "239.10.0.0")), cbpf.rule_filter(many(300, "ff3e::10:0"))):
        for code, jt, jf, k in prog:
            assert 0 <= jt <= 255 and 0 <= jf <= 255
            struct.pack("HBBI", code, jt, jf, k)
