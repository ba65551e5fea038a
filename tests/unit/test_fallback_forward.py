"""The userspace datapath (mcr_xdp.fallback.forward) against the XDP
program's own packet table (tests/fixtures/xdp_table.py): same verdicts,
byte-identical output frames. No privileges: it is plain Python.

Frames reach a packet socket without their VLAN tag (the kernel moves it to
metadata first), so tagged rows are fed with the tag taken off; the rows
about XDP's devmap slots do not apply (userspace sends by interface).
"""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from mcr_xdp import abi, encode
from mcr_xdp.fallback.forward import Table, entry_message
from mcr_xdp.rules import parse_rule
from tests.fixtures import xdp_table
from tests.fixtures.packets import Udp4, Udp6, inet_checksum, mac

LO = xdp_table.LO
OUT_MAC = xdp_table.OUT_MAC


def message(rule_id: int, text: str, outs_ifindex: int = LO) -> dict:
    rule = parse_rule(text, "in")
    outs = [encode.output_value(rule, o, ifindex=outs_ifindex, slot=i, src_mac=OUT_MAC,
                                next_hop=xdp_table.next_hop(o))
            for i, o in enumerate(rule.outputs)]
    return entry_message(rule_id, LO, rule, outs)


@pytest.fixture(scope="module")
def table() -> Table:
    t = Table()
    for rule_id, (text, _slot) in xdp_table.RULES.items():
        t.put(message(rule_id, text))
    return t


def untag(frame: bytes) -> bytes | None:
    """The frame as a packet socket sees it: one tag (802.1Q or 802.1ad)
    taken off; None for a tag cut short (the kernel would not deliver it)."""
    if frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return frame[:12] + frame[16:] if len(frame) >= 18 else None
    return frame


CASES = [c for c in xdp_table.CASES if c.verdict != "DROP_NO_OUTPUT" and untag(c.frame) is not None]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_same_table_as_xdp(table, case):
    frame = untag(case.frame)
    verdict, entry, sends = table.handle(frame, LO)
    assert verdict == abi.Verdict[case.verdict]
    assert (entry.index if entry else None) == case.rule
    if case.action == xdp_table.REDIRECT:
        assert [bytes(buf) for _, buf in sends] == [case.out]
        xdp_table.assert_checksums_valid(bytes(sends[0][1]))
    else:
        assert not sends


def partial(frame: bytes) -> bytes:
    """frame as a sender with checksum offload hands it over: the UDP
    checksum field holds the folded pseudo-header sum, not complemented
    (CHECKSUM_PARTIAL); the device would sum the rest."""
    if frame[12:14] == b"\x08\x00":
        l4 = 14 + (frame[14] & 0xF) * 4
        pseudo = frame[26:34] + b"\x00\x11" + frame[l4 + 4:l4 + 6]
    else:
        l4 = 54
        pseudo = frame[22:54] + b"\0\0" + frame[l4 + 4:l4 + 6] + b"\0\0\0\x11"
    check = ~inet_checksum(pseudo) & 0xFFFF
    return frame[:l4 + 6] + struct.pack("!H", check) + frame[l4 + 8:]


@pytest.mark.parametrize("pkt, rewrite", [
    (xdp_table.IN, xdp_table.rewritten),
    (replace(xdp_table.IN, payload=bytes(range(256)) * 5 + b"odd"), xdp_table.rewritten),
    (replace(xdp_table.IN, options=xdp_table.options(7)), xdp_table.rewritten),
    (xdp_table.IN6, xdp_table.rewritten6),
    (replace(xdp_table.IN6, payload=b"x" * 999), xdp_table.rewritten6),
], ids=["IPv4", "IPv4 1283-byte payload", "IPv4 options", "IPv6", "IPv6 odd length"])
def test_partial_checksum_is_completed(table, pkt, rewrite):
    verdict, _, sends = table.handle(partial(pkt.build()), LO, partial=True)
    assert verdict == abi.Verdict.REDIRECT
    assert bytes(sends[0][1]) == rewrite(pkt)


def test_fanout_one_frame_per_output():
    t = Table()
    t.put(message(3, "239.1.1.1:5001=a/239.3.3.1:6001,b/239.3.3.2:6002,a/239.3.3.3:6003"))
    verdict, entry, sends = t.handle(Udp4().build(), LO)
    assert verdict == abi.Verdict.REDIRECT_MULTI and entry.index == 3
    expected = [replace(Udp4(), dst=g, dport=p, ttl=63, eth_dst=mac(m), eth_src=OUT_MAC).build()
                for g, p, m in (("239.3.3.1", 6001, "01:00:5e:03:03:01"), ("239.3.3.2", 6002, "01:00:5e:03:03:02"),
                                ("239.3.3.3", 6003, "01:00:5e:03:03:03"))]
    assert [bytes(b) for _, b in sends] == expected
    assert [o.index for o, _ in sends] == [0, 1, 2]


def test_rules_replace_and_delete():
    t = Table()
    t.put(message(1, "239.1.1.1:5001=x/239.2.2.2:5002"))
    t.put(message(1, "239.1.1.1:5001=x/239.4.4.4:5004"))  # same id: replaced in place
    _, _, sends = t.handle(Udp4().build(), LO)
    assert bytes(sends[0][1])[30:34] == bytes([239, 4, 4, 4])
    t.put(message(2, "203.0.113.9@239.1.1.1:5001=x/239.5.5.5:5005"))
    assert t.handle(replace(Udp4(), src="203.0.113.9").build(), LO)[1].index == 2
    assert t.handle(Udp4().build(), LO)[1].index == 1
    t.delete(2)
    assert t.handle(replace(Udp4(), src="203.0.113.9").build(), LO)[1].index == 1
    t.delete(1)
    assert t.handle(Udp4().build(), LO)[0] == abi.Verdict.PASS_NO_RULE
    assert not t.by_key and not any(t.ssm.values())


def test_other_input_does_not_match(table):
    assert table.handle(Udp4().build(), LO + 1)[0] == abi.Verdict.PASS_NO_RULE
    assert table.handle(Udp6().build(), LO + 1)[0] == abi.Verdict.PASS_NO_RULE
