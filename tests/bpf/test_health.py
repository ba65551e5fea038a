"""Stream health (;health=rtp|mpegts) in the datapath, through
BPF_PROG_TEST_RUN: RTP gaps, 16-bit wraps, duplicates, reordering, SSRC
changes; MPEG-TS continuity counters with the standard's exceptions. Each
case runs its datagrams through the native XDP program, the generic one
and the TC one, and the counts must be the case's own numbers and those of
the Python model (mcr_xdp.health.Tracker, which userspace-free tests and
docs rely on)."""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import replace

import pytest

from mcr_xdp import abi, encode, health, libbpf
from mcr_xdp.rules import parse_rule
from tests.bpf.test_tc import SkBuff
from tests.fixtures.packets import Udp4, Udp6, mac

pytestmark = pytest.mark.root

LO = 1
OUT_MAC = mac("02:00:00:00:00:aa")
RTP_ID, TS_ID, PLAIN_ID, RTP6_ID = 700, 701, 702, 703
RULES = {
    RTP_ID: "239.7.7.1:7000=lo/239.8.8.1:7000;health=rtp",
    TS_ID: "239.7.7.2:7000=lo/239.8.8.2:7000;health=mpegts",
    PLAIN_ID: "239.7.7.3:7000=lo/239.8.8.3:7000",
    RTP6_ID: "[ff3e::7:1]:7000=lo/[ff3e::8:1]:7000;health=rtp",
}
GROUPS = {RTP_ID: "239.7.7.1", TS_ID: "239.7.7.2", PLAIN_ID: "239.7.7.3"}
SSRC = 0x11223344


def rtp(seq: int, ssrc: int = SSRC, payload: bytes = bytes(20), csrcs: int = 0, extension: int | None = None,
        pt: int = 96) -> bytes:
    """An RTP v2 header (RFC 3550) with csrcs CSRC words and an extension
    header of extension words, then payload."""
    first = 0x80 | (0x10 if extension is not None else 0) | csrcs
    head = struct.pack("!BBHII", first, pt, seq & 0xFFFF, seq * 90, ssrc) + bytes(4 * csrcs)
    if extension is not None:
        head += struct.pack("!HH", 0xBEDE, extension) + bytes(4 * extension)
    return head + payload


def ts(pid: int, cc: int, payload: bool = True, adaptation: bool = False, discontinuity: bool = False) -> bytes:
    """One 188-byte TS packet (ISO/IEC 13818-1 2.4.3.2)."""
    afc = (2 if adaptation or discontinuity else 0) | (1 if payload else 0)
    head = struct.pack("!BHB", 0x47, pid & 0x1FFF, (afc << 4) | (cc & 0xF))
    if afc & 2:
        length = 183 if not payload else 7
        af = bytes([length, 0x80 if discontinuity else 0]) + b"\xff" * (length - 1)
        head += af
    return head + b"\xaa" * (188 - len(head))


def datagrams_of(*packets: bytes) -> bytes:
    return b"".join(packets)


@dataclasses.dataclass(frozen=True)
class Case:
    desc: str
    rule_id: int
    payloads: list[bytes]
    expect: dict  # health.Counts fields the case is about


def _seqs(seqs, **kw) -> list[bytes]:
    return [rtp(s, **kw) for s in seqs]


CASES = [
    Case("rtp in order", RTP_ID, _seqs(range(100, 110)), dict(received=10, lost=0, reordered=0, duplicates=0)),
    Case("rtp gaps", RTP_ID, _seqs([0, 1, 2, 5, 6, 9, 10]), dict(received=7, lost=4)),
    Case("rtp wraps at 65535", RTP_ID, _seqs([65533, 65534, 65535, 0, 1, 3]), dict(lost=1, reordered=0)),
    Case("rtp gap across the wrap", RTP_ID, _seqs([65534, 2]), dict(lost=3)),
    Case("rtp duplicates", RTP_ID, _seqs([1, 2, 2, 3, 3, 3]), dict(received=6, duplicates=3, lost=0)),
    Case("rtp late packet fills its gap", RTP_ID, _seqs([1, 2, 4, 5, 3]), dict(lost=0, reordered=1)),
    Case("rtp late packet before the first", RTP_ID, _seqs([10, 11, 9]), dict(lost=0, reordered=1)),
    Case("rtp late duplicate", RTP_ID, _seqs([1, 2, 3, 4, 2]), dict(duplicates=1, reordered=0)),
    Case("rtp duplicate across the wrap", RTP_ID, _seqs([65535, 0, 65535]), dict(duplicates=1, lost=0)),
    Case("rtp ssrc change restarts", RTP_ID, _seqs([1, 2, 4]) + _seqs([9000, 9001, 9003], ssrc=0x55),
         dict(ssrc_changes=1, lost=2, ssrc=0x55)),
    Case("rtp 32,000 ahead is a gap", RTP_ID, _seqs([0, 32000]), dict(lost=31999)),
    Case("rtp window: a number 65,536 on is new", RTP_ID,
         _seqs([0, 20000, 40000, 60000, 65535, 0x10000 + 20000]), dict(duplicates=0)),
    Case("not rtp", RTP_ID, [b"\x00" * 20, b"\x80" * 5, rtp(1)], dict(received=3, invalid=2, lost=0)),
    Case("rtp with csrcs and an extension", RTP_ID, [rtp(1, csrcs=3, extension=2), rtp(3, csrcs=15)], dict(lost=1)),
    Case("ts continuous", TS_ID, [datagrams_of(*(ts(0x100, i) for i in range(7))),
                                   datagrams_of(*(ts(0x100, i) for i in range(7, 14)))],
         dict(ts_packets=14, cc_errors=0)),
    Case("ts wraps at 15", TS_ID, [datagrams_of(*(ts(0x100, i % 16) for i in range(14, 21)))], dict(cc_errors=0)),
    Case("ts one packet missing", TS_ID, [datagrams_of(ts(0x100, 0), ts(0x100, 1), ts(0x100, 3), ts(0x101, 0))],
         dict(ts_packets=4, cc_errors=1)),
    Case("ts per pid", TS_ID, [datagrams_of(ts(0x100, 0), ts(0x200, 5), ts(0x100, 1), ts(0x200, 6), ts(0x200, 8))],
         dict(cc_errors=1)),
    Case("ts one duplicate is allowed", TS_ID, [datagrams_of(ts(0x100, 0), ts(0x100, 1), ts(0x100, 1), ts(0x100, 2))],
         dict(cc_errors=0)),
    Case("ts a second duplicate is an error", TS_ID,
         [datagrams_of(ts(0x100, 0), ts(0x100, 1), ts(0x100, 1), ts(0x100, 1), ts(0x100, 2))], dict(cc_errors=1)),
    Case("ts adaptation field only: counter does not advance", TS_ID,
         [datagrams_of(ts(0x100, 4), ts(0x100, 4, payload=False, adaptation=True), ts(0x100, 5))], dict(cc_errors=0)),
    Case("ts discontinuity indicator", TS_ID,
         [datagrams_of(ts(0x100, 4), ts(0x100, 9, adaptation=True, discontinuity=True), ts(0x100, 10))],
         dict(cc_errors=0)),
    Case("ts null packets carry no counter", TS_ID, [datagrams_of(ts(0x100, 0), ts(0x1FFF, 7), ts(0x1FFF, 2),
                                                                  ts(0x100, 1))], dict(cc_errors=0, ts_packets=4)),
    Case("ts lost sync", TS_ID, [datagrams_of(ts(0x100, 0), b"\x00" * 188, ts(0x100, 5))],
         dict(invalid=1, ts_packets=1, cc_errors=0)),
    Case("ts after rtp (ST 2022-2), with an RTP gap and a CC error", TS_ID,
         [rtp(1, pt=33, payload=datagrams_of(*(ts(0x44, i) for i in range(7)))),
          rtp(3, pt=33, payload=datagrams_of(*(ts(0x44, i) for i in range(8, 15)))),
          rtp(4, pt=33, csrcs=1, extension=1, payload=datagrams_of(ts(0x44, 15)))],
         dict(lost=1, cc_errors=1, ts_packets=15)),
    Case("rtp extension past the datagram", TS_ID, [rtp(1, extension=0)[:12] + b"\x00\x00\x01\x00" + ts(1, 0)],
         dict(invalid=1, ts_packets=0, lost=0)),
    Case("rtp extension longer than any datagram", RTP_ID, [rtp(1, extension=0)[:12] + b"\x00\x00\xff\xff"],
         dict(invalid=1, lost=0)),
    Case("rtp over ipv6", RTP6_ID, _seqs([1, 2, 5, 5, 4]), dict(lost=1, duplicates=1, reordered=1)),
]


def frame(rule_id: int, payload: bytes, vlan: int | None = None) -> bytes:
    if rule_id == RTP6_ID:
        return Udp6(dst="ff3e::7:1", dport=7000, payload=payload, vlan=vlan).build()
    return Udp4(dst=GROUPS[rule_id], dport=7000, payload=payload, vlan=vlan).build()


@pytest.fixture(scope="module")
def rules(datapath):
    maps = datapath.maps
    for rule_id, text in RULES.items():
        rule = parse_rule(text, "in")
        out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=0, src_mac=OUT_MAC)
        maps.reset_rule_counters(rule_id)
        maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, rule_id, [out]))
    maps.set_port(0, LO, datapath.egress_fd)
    return {rule_id: parse_rule(text, "in") for rule_id, text in RULES.items()}


def _runner(datapath, hook: str):
    if hook == "tc":
        fd = datapath.tc_fd
        return lambda data: libbpf.test_run(fd, data, SkBuff(ingress_ifindex=LO, ifindex=LO))[0]
    fd = datapath.prog_fd if hook == "native" else datapath.generic_fd
    return lambda data: libbpf.test_run(fd, data, libbpf.XdpMd(data=0, data_end=len(data), ingress_ifindex=LO))[0]


HOOKS = ["native", "generic", "tc"]


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_health(datapath, rules, hook, case):
    maps, run = datapath.maps, _runner(datapath, hook)
    kind = rules[case.rule_id].health
    maps.start_health(case.rule_id)
    model = health.Tracker(kind)
    for payload in case.payloads:
        run(frame(case.rule_id, payload))
        model.datagram(payload)
    got = maps.health_counts(case.rule_id, kind)
    assert got == model.counts()
    assert {k: getattr(got, k) for k in case.expect} == case.expect
    if "received" not in case.expect:
        assert got.received == len(case.payloads)


@pytest.mark.parametrize("hook", HOOKS)
def test_health_of_tagged_and_ttl_dropped_frames(datapath, rules, hook):
    """The payload is found whatever happens to the frame on the way: a tag
    taken off, a TTL too low to forward."""
    maps, run = datapath.maps, _runner(datapath, hook)
    maps.start_health(RTP_ID)
    run(Udp4(dst=GROUPS[RTP_ID], dport=7000, payload=rtp(1), vlan=7).build())
    run(Udp4(dst=GROUPS[RTP_ID], dport=7000, payload=rtp(2), ttl=1).build())
    run(Udp4(dst=GROUPS[RTP_ID], dport=7000, payload=rtp(4), ttl=1, vlan=7).build())
    run(Udp4(dst=GROUPS[RTP_ID], dport=7000, payload=rtp(5), options=b"\x01" * 40).build())
    got = maps.health_counts(RTP_ID, "rtp")
    assert (got.received, got.lost, got.invalid, got.ssrc) == (4, 1, 0, SSRC)


@pytest.mark.parametrize("hook", HOOKS)
def test_rules_without_health_leave_it_alone(datapath, rules, hook):
    run = _runner(datapath, hook)
    before = datapath.maps.rule_counters(PLAIN_ID).packets
    assert run(frame(PLAIN_ID, rtp(1))) != 0
    assert datapath.maps.rule_counters(PLAIN_ID).packets == before + 1
    assert datapath.maps.health(PLAIN_ID) is None


def test_a_rule_whose_state_is_gone_still_forwards(datapath, rules):
    """The flag without the entry (a race with the control plane): the
    frame is forwarded, nothing is counted."""
    maps, run = datapath.maps, _runner(datapath, "native")
    maps.stop_health(RTP_ID)
    before = maps.rule_counters(RTP_ID).forwarded
    assert run(frame(RTP_ID, rtp(1))) == 4  # XDP_REDIRECT
    assert maps.rule_counters(RTP_ID).forwarded == before + 1
    assert maps.health(RTP_ID) is None


def test_case_expectations_hold_in_the_model():
    """The table's numbers are the standard's, not whatever the code does:
    each is checked by hand above; here the model agrees with them."""
    for case in CASES:
        model = health.Tracker("mpegts" if case.rule_id == TS_ID else "rtp")
        for payload in case.payloads:
            model.datagram(payload)
        assert {k: getattr(model.counts(), k) for k in case.expect} == case.expect, case.desc


def test_counts_read_back_from_the_state():
    state = abi.Health(state=abi.HEALTH_STARTED, first=10, max=19, unique=8, lost_before=3, received=11,
                       ssrc=0x44332211)
    got = health.from_state(state, "rtp")
    assert (got.lost, got.received, got.ssrc) == (5, 11, 0x11223344)
    assert health.from_state(abi.Health(), "rtp") == health.Counts("rtp")
    assert replace(got, lost=1) + health.Counts("rtp", lost=2) == replace(got, lost=3)
