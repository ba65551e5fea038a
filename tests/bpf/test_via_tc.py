"""Rules whose outputs native XDP can't reach (MCR_RULE_VIA_TC): the native
ingress program passes their frames on, uncounted; generic XDP and TC
forward them as any rule; the TC companion (mcr_tc_companion, beside
native XDP) forwards and counts exactly those, and leaves every other frame
alone, uncounted (the XDP program counted it)."""

from __future__ import annotations

import pytest

from mcr_xdp import abi, encode, libbpf
from mcr_xdp.rules import parse_rule
from tests.bpf.test_tc import TC_ACT_REDIRECT, TC_ACT_UNSPEC, SkBuff
from tests.fixtures.packets import Udp4, Udp6
from tests.fixtures.xdp_table import LO, OUT_MAC, SLOT_LO, sent

pytestmark = pytest.mark.root

VIA_TC, PLAIN, VIA_TC6 = 1, 2, 3
RULES = {
    VIA_TC: ("239.9.1.1:5001=out/239.9.2.2:5002", abi.RULE_VIA_TC),
    PLAIN: ("239.9.1.2:5001=out/239.9.2.3:5003", 0),
    VIA_TC6: ("[ff3e::9:1]:5001=out/[ff3e::9:2]:5002", abi.RULE_VIA_TC),
}
FRAMES = {
    VIA_TC: Udp4(dst="239.9.1.1"),
    PLAIN: Udp4(dst="239.9.1.2"),
    VIA_TC6: Udp6(dst="ff3e::9:1"),
}
OUT = {
    VIA_TC: sent(FRAMES[VIA_TC], "01:00:5e:09:02:02", dst="239.9.2.2", dport=5002),
    PLAIN: sent(FRAMES[PLAIN], "01:00:5e:09:02:03", dst="239.9.2.3", dport=5003),
    VIA_TC6: sent(FRAMES[VIA_TC6], "33:33:00:09:00:02", dst="ff3e::9:2", dport=5002),
}
NO_RULE = Udp4(dst="239.9.9.9").build()


@pytest.fixture(scope="module")
def maps(datapath):
    maps = datapath.maps
    maps.set_port(SLOT_LO, LO, -1)
    for rule_id, (text, flags) in RULES.items():
        rule = parse_rule(text, "in")
        out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=SLOT_LO, src_mac=OUT_MAC)
        maps.reset_rule_counters(rule_id)
        maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, rule_id, [out], flags))
    return maps


def _xdp(fd: int, frame: bytes):
    ctx = libbpf.XdpMd(data=0, data_end=len(frame), ingress_ifindex=LO, rx_queue_index=0)
    action, out, _ = libbpf.test_run(fd, frame, ctx)
    return action, out


def _tc(fd: int, frame: bytes):
    action, out, _ = libbpf.test_run(fd, frame, SkBuff(ingress_ifindex=LO, ifindex=LO))
    return action, out


def _counts(maps, rule_id: int) -> tuple[int, int, int]:
    """(rule matched, rule forwarded, all verdicts) packets."""
    c = maps.rule_counters(rule_id)
    return c.packets, c.forwarded, sum(v.packets for v in maps.verdicts())


@pytest.mark.parametrize("rule_id", [VIA_TC, VIA_TC6])
def test_native_xdp_passes_the_frame_on_uncounted(datapath, maps, rule_id):
    frame = FRAMES[rule_id].build()
    before = _counts(maps, rule_id)
    assert _xdp(datapath.prog_fd, frame) == (libbpf.XDP_PASS, frame)
    assert _counts(maps, rule_id) == before


@pytest.mark.parametrize("rule_id", [VIA_TC, VIA_TC6])
def test_generic_xdp_forwards_it(datapath, maps, rule_id):
    """Generic XDP's redirect reaches every device: the flag is not its."""
    matched, forwarded, seen = _counts(maps, rule_id)
    action, out = _xdp(datapath.generic_fd, FRAMES[rule_id].build())
    assert action == libbpf.XDP_REDIRECT
    assert _counts(maps, rule_id) == (matched + 1, forwarded + 1, seen + 1)


def test_native_xdp_forwards_a_plain_rule(datapath, maps):
    matched, forwarded, seen = _counts(maps, PLAIN)
    assert _xdp(datapath.prog_fd, FRAMES[PLAIN].build()) == (libbpf.XDP_REDIRECT, OUT[PLAIN])
    assert _counts(maps, PLAIN) == (matched + 1, forwarded + 1, seen + 1)


@pytest.mark.parametrize("fd_name", ["tc_companion_fd", "tc_fd"])
@pytest.mark.parametrize("rule_id", [VIA_TC, VIA_TC6])
def test_tc_forwards_and_counts_it(datapath, maps, rule_id, fd_name):
    matched, forwarded, seen = _counts(maps, rule_id)
    assert _tc(getattr(datapath, fd_name), FRAMES[rule_id].build()) == (TC_ACT_REDIRECT, OUT[rule_id])
    assert _counts(maps, rule_id) == (matched + 1, forwarded + 1, seen + 1)


@pytest.mark.parametrize("frame", [FRAMES[PLAIN].build(), NO_RULE], ids=["a plain rule", "no rule"])
def test_the_companion_leaves_every_other_frame_alone_uncounted(datapath, maps, frame):
    before = _counts(maps, PLAIN)
    assert _tc(datapath.tc_companion_fd, frame) == (TC_ACT_UNSPEC, frame)
    assert _counts(maps, PLAIN) == before
