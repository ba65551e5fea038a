"""Seeded fuzzing of the ingress program against the userspace datapath as
its model: mutated frames (bytes flipped, lengths lying, headers cut short,
padding added, IPv4 header checksums fixed up or not) run through
BPF_PROG_TEST_RUN and through mcr_xdp.fallback.forward.Table, two
implementations written apart (C in bpf/, Python in mcr_xdp/fallback/).

For every frame: the same action; a forwarded frame byte for byte the
model's, with valid checksums; a passed one untouched. At the end the
datapath's verdict counters equal the model's tally, frame for frame.

MCR_FUZZ_FRAMES sets the count (100,000 by default; docs/architecture.md
names a longer run); MCR_FUZZ_SEED the seed, printed on failure.
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter
from dataclasses import replace

import pytest

from mcr_xdp import abi, encode, libbpf
from mcr_xdp.fallback.forward import Table, entry_message
from mcr_xdp.rules import parse_rule
from tests.fixtures import packets, xdp_table
from tests.fixtures.packets import Udp4, Udp6

pytestmark = pytest.mark.root

FRAMES = int(os.environ.get("MCR_FUZZ_FRAMES", "100000"))
SEED = int(os.environ.get("MCR_FUZZ_SEED", "20261202"))
LO = xdp_table.LO
# Every rule of the table, all with an output: a rule without one is a
# devmap question (the table covers it), not a parsing one.
RULES = {rule_id: text for rule_id, (text, _slot) in xdp_table.RULES.items()}
SLOT = xdp_table.SLOT_LO

SEEDS = [
    xdp_table.IN, replace(xdp_table.IN, dst="239.1.1.2"), xdp_table.TAGGED, xdp_table.WITH_OPTIONS,
    replace(xdp_table.IN, src="203.0.113.9"), replace(xdp_table.IN, udp_checksum=False), xdp_table.ZERO_SUM,
    replace(xdp_table.IN, ttl=1), replace(xdp_table.IN, tpid=packets.ETH_P_8021AD, vlan=7),
    xdp_table.IN6, xdp_table.TAGGED6, xdp_table.ZERO_SUM6, replace(xdp_table.IN6, hop_limit=1),
    replace(xdp_table.IN, payload=bytes(1200)), replace(xdp_table.IN6, payload=bytes(900)),
]


@pytest.fixture(scope="module", params=["object", "bcc"])
def datapath(request):
    """Both builds of the datapath (mcr_xdp/objfile.py): the object clang
    built, and the sources compiled by bcc, each against the model."""
    from mcr_xdp import loader

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MCR_XDP_DATAPATH", request.param)
        dp = loader.Datapath()
    assert dp.compiler == request.param
    yield dp
    dp.close()


@pytest.fixture(scope="module")
def relay(datapath):
    maps = datapath.maps
    for rule_id, text in RULES.items():
        rule = parse_rule(text, "in")
        out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=SLOT, src_mac=xdp_table.OUT_MAC)
        maps.put_rule(encode.rule_key(rule, LO), encode.rule_value(rule, rule_id, [out]))
    maps.set_port(SLOT, LO, datapath.egress_fd)
    maps.set_config(**encode.rule_kinds(parse_rule(text, "in") for text in RULES.values()))
    maps.set_own_macs(frozenset({bytes(xdp_table.OUT_MAC)}))  # the loop guard, as the model has it
    return maps


@pytest.fixture(scope="module")
def model() -> Table:
    table = Table()
    for rule_id, text in RULES.items():
        rule = parse_rule(text, "in")
        out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=0, src_mac=xdp_table.OUT_MAC)
        table.put(entry_message(rule_id, LO, rule, [out]))
    return table


def _ip_start(frame: bytes) -> int:
    return 18 if frame[12:14] in (b"\x81\x00", b"\x88\xa8") else 14


def _fix_ipv4_checksum(frame: bytearray) -> None:
    """Recompute the IPv4 header checksum, so mutations behind it are
    reached rather than all stopped by it."""
    at = _ip_start(frame)
    if frame[at - 2:at] != b"\x08\x00" or len(frame) < at + 20:
        return
    hlen = (frame[at] & 0x0F) * 4
    if hlen < 20 or len(frame) < at + hlen:
        return
    frame[at + 10:at + 12] = b"\0\0"
    frame[at + 10:at + 12] = struct.pack("!H", packets.inet_checksum(bytes(frame[at:at + hlen])))


def mutate(rng: random.Random, pkt: Udp4 | Udp6) -> bytes:
    frame = bytearray(pkt.build())
    ip = _ip_start(frame)
    l4 = ip + (40 if isinstance(pkt, Udp6) else 20 + len(pkt.options))
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        kind = rng.randrange(6)
        if kind == 0 and len(frame) > 14:  # a byte anywhere in the headers
            frame[rng.randrange(min(len(frame), l4 + 8))] = rng.randrange(256)
        elif kind == 1 and len(frame) >= ip + 6:  # an IP length field lies
            at = ip + (2 if isinstance(pkt, Udp4) else 4)
            frame[at:at + 2] = struct.pack("!H", rng.choice((0, 7, 8, 27, 28, rng.randrange(65536),
                                                             len(frame) - ip, len(frame) - ip + 1)))
        elif kind == 2 and len(frame) >= l4 + 6:  # the UDP length lies
            frame[l4 + 4:l4 + 6] = struct.pack("!H", rng.choice((0, 7, 8, 9, rng.randrange(65536),
                                                                 len(frame) - l4, len(frame) - l4 + 1)))
        elif kind == 3:  # cut short
            del frame[rng.randrange(14, len(frame) + 1):]
        elif kind == 4:  # Ethernet padding
            frame += bytes(rng.randrange(1, 40))
        elif kind == 5 and isinstance(pkt, Udp4) and len(frame) > ip:  # the IHL
            frame[ip] = (frame[ip] & 0xF0) | rng.randrange(16)
    if rng.random() < 0.7:
        _fix_ipv4_checksum(frame)
    return bytes(frame)


def untag(frame: bytes) -> bytes | None:
    """As a packet socket delivers it (tests/unit/test_fallback_forward.py)."""
    if frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return frame[:12] + frame[16:] if len(frame) >= 18 else None
    return frame


def expect(model: Table, frame: bytes):
    """(verdict, output frame or None) by the model."""
    seen = untag(frame)
    if seen is None:
        return abi.Verdict.PASS_MALFORMED, None
    if frame[12:14] in (b"\x81\x00", b"\x88\xa8") and seen[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return abi.Verdict.PASS_NOT_IP, None  # two tags: the XDP parser takes one
    verdict, _, sends = model.handle(seen, LO)
    return abi.Verdict(verdict), bytes(sends[0][1]) if sends else None


def _checksums_valid(frame: bytes) -> bool:
    """IPv4 header and UDP checksums of an untagged frame the model
    forwards (well-formed up to the UDP length); scapy's opinion, as
    xdp_table.assert_checksums_valid gives it, costs too much per frame."""
    if frame[12:14] == b"\x08\x00":
        hlen = (frame[14] & 0x0F) * 4
        if packets.inet_checksum(frame[14:14 + hlen]):
            return False
        l4, src, dst, family = 14 + hlen, frame[26:30], frame[30:34], 4
    else:
        l4, src, dst, family = 54, frame[22:38], frame[38:54], 6
    ulen = int.from_bytes(frame[l4 + 4:l4 + 6], "big")
    if family == 4 and frame[l4 + 6:l4 + 8] == b"\0\0":
        return True  # sent without a UDP checksum
    pseudo = src + dst + (struct.pack("!BBH", 0, 17, ulen) if family == 4 else struct.pack("!I3xB", ulen, 17))
    return packets.inet_checksum(pseudo + frame[l4:l4 + ulen]) == 0


ACTION = {abi.Verdict.REDIRECT: libbpf.XDP_REDIRECT, abi.Verdict.DROP_TTL: libbpf.XDP_DROP,
          abi.Verdict.DROP_NO_NEIGH: libbpf.XDP_DROP, abi.Verdict.DROP_LOOP: libbpf.XDP_DROP}
# With a unicast input among the rules, metadata is reserved for frames to
# any MAC (bpf/relay.c may_be_ours), not just to multicast ones.
UNICAST_INPUTS = any(parse_rule(text, "in").unicast for text in RULES.values())


def test_fuzzed_frames_match_the_model(relay, model, datapath):
    rng = random.Random(SEED)
    before = xdp_table.verdict_counts(relay)
    tally: Counter = Counter()
    for i in range(FRAMES):
        frame = mutate(rng, rng.choice(SEEDS))
        verdict, out = expect(model, frame)
        ctx = libbpf.XdpMd(data=0, data_end=len(frame), ingress_ifindex=LO, rx_queue_index=0)
        action, got, _ = libbpf.test_run(datapath.prog_fd, frame, ctx)
        where = f"frame {i} (MCR_FUZZ_SEED={SEED}): {frame.hex()}"
        assert action == ACTION.get(verdict, libbpf.XDP_PASS), f"{verdict.name}, action {action}: {where}"
        if verdict == abi.Verdict.REDIRECT and not frame[0] & 1 and not UNICAST_INPUTS:
            # To a unicast MAC (a frame for this host), without unicast
            # inputs: no metadata is reserved (bpf/relay.c), the frame leaves
            # ingress original, untagged, and the egress program (not run by
            # a test run) rewrites it.
            assert got == untag(frame), where
        elif verdict == abi.Verdict.REDIRECT:
            assert got == out, where
            # The relay updates checksums, it does not repair them.
            assert _checksums_valid(got) == _checksums_valid(untag(frame)), where
        elif action == libbpf.XDP_PASS:
            assert got == frame, where
        tally[verdict] += 1
    after = xdp_table.verdict_counts(relay)
    counted = {abi.Verdict(v).name: after[v][0] - before[v][0] for v in range(abi.VERDICT_MAX)}
    assert counted == {v.name: tally[v] for v in abi.Verdict}
    # The mutations reach every part of the parser, not just its first check.
    assert {abi.Verdict.REDIRECT, abi.Verdict.DROP_TTL, abi.Verdict.PASS_MALFORMED, abi.Verdict.PASS_NO_RULE,
            abi.Verdict.PASS_NOT_IP} <= {v for v, n in tally.items() if n >= FRAMES // 1000}
