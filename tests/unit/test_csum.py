"""Ones'-complement arithmetic (mcr_xdp.csum) against checksums recomputed
from scratch by tests/fixtures/packets.py, which shares no code with it.

Random cases come from random.Random with a fixed seed, so a failure
reproduces; the seed and case number are in the test id.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import sys

import pytest

from mcr_xdp import csum, encode
from mcr_xdp.rules import parse_rule
from tests.fixtures import packets

SEED = 0x4D4352
CASES = 200
# The datapath loads the checksum field as a native-order __u16 (rewrite.h).
NATIVE = "<H" if sys.byteorder == "little" else ">H"


def apply_eqn3(check: int, delta: int) -> int:
    """bpf/rewrite.h csum_apply, re-done here: RFC 1624 eqn. 3 on the
    checksum as found in the packet (network order int); returns the same."""
    host = struct.unpack(NATIVE, struct.pack("!H", check))[0]
    total = (~host & 0xFFFF) + delta
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.unpack("!H", struct.pack(NATIVE, ~total & 0xFFFF))[0]


KNOWN = [
    # (data, checksum): RFC 1071 section 3 example, a textbook IPv4 header
    # (with its checksum field zeroed), odd length, all zero.
    (bytes.fromhex("0001f203f4f5f6f7"), 0x220D),
    (bytes.fromhex("450000730000400040110000c0a80001c0a800c7"), 0xB861),
    (b"\x01", 0xFEFF),
    (bytes(20), 0xFFFF),
]


@pytest.mark.parametrize("data, expected", KNOWN)
def test_checksum_known(data, expected):
    assert csum.checksum(data) == expected
    assert packets.inet_checksum(data) == expected


FOLDS = [(0, 0), (0xFFFF, 0xFFFF), (0x10000, 1), (0x1FFFF, 1), (0x2FFFD, 0xFFFF), (0xFFFFFFFF, 0xFFFF)]


@pytest.mark.parametrize("value, expected", FOLDS)
def test_fold(value, expected):
    assert csum.fold(value) == expected


def test_checksum_random():
    rng = random.Random(SEED)
    for _ in range(CASES):
        data = rng.randbytes(rng.randrange(1, 80))
        assert csum.checksum(data) == packets.inet_checksum(data), data.hex()


def _field_cases():
    rng = random.Random(SEED)
    for i in range(CASES):
        size = 2 * rng.randrange(10, 40)  # a 20..78-byte header
        header = bytearray(rng.randbytes(size))
        header[0:2] = b"\0\0"  # the checksum field, word 0
        start = 2 * rng.randrange(1, size // 2)  # fields are word aligned
        length = 2 * rng.randrange(1, (size - start) // 2 + 1)
        new = rng.randbytes(length)
        yield pytest.param(bytes(header), start, new, id=f"seed{SEED:x}-{i}")


@pytest.mark.parametrize("header, start, new", list(_field_cases()))
def test_delta_equals_recompute(header, start, new):
    """Changing any word-aligned field and applying csum.delta gives the
    checksum a full recomputation gives."""
    old_check = packets.inet_checksum(header)
    changed = header[:start] + new + header[start + len(new) :]
    d = csum.delta(header[start : start + len(new)], new)
    assert 0 <= d <= 0xFFFF
    assert apply_eqn3(old_check, d) == packets.inet_checksum(changed)


@pytest.mark.parametrize("ttl", [1, 2, 64, 128, 255])
def test_ttl_decrement_delta(ttl):
    """The TTL constant is the delta of the TTL/protocol word for any TTL and
    protocol, and applied to a real header gives the recomputed checksum."""
    rng = random.Random(SEED + ttl)
    for proto in (1, 6, 17, 255):
        assert csum.delta(bytes([ttl, proto]), bytes([ttl - 1, proto])) == csum.TTL_DECREMENT_DELTA
        src = f"10.{rng.randrange(256)}.{rng.randrange(256)}.1"
        old = packets.ipv4(src, "239.1.1.1", b"", proto=proto, ttl=ttl)
        new = packets.ipv4(src, "239.1.1.1", b"", proto=proto, ttl=ttl - 1)
        old_check = struct.unpack_from("!H", old, 10)[0]
        assert apply_eqn3(old_check, csum.TTL_DECREMENT_DELTA) == struct.unpack_from("!H", new, 10)[0]


def _rewrite_cases():
    rng = random.Random(SEED)
    for i in range(50):
        group = f"239.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 256)}"
        new_group = f"{rng.randrange(224, 240)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        port, new_port = rng.randrange(1, 65536), rng.randrange(1, 65536)
        pkt = packets.Udp4(
            dst=group,
            dport=port,
            src=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            sport=rng.randrange(1, 65536),
            ttl=rng.randrange(2, 256),
            payload=rng.randbytes(rng.randrange(0, 64)),
        )
        yield pytest.param(pkt, new_group, new_port, id=f"seed{SEED:x}-{i}")


@pytest.mark.parametrize("pkt, new_group, new_port", list(_rewrite_cases()))
def test_encoded_deltas_equal_recompute(pkt, new_group, new_port):
    """The deltas encode.output_value precomputes for the datapath turn the
    IPv4 and UDP checksums of a packet into those of the rewritten packet."""
    rule = parse_rule(f"{pkt.dst}:{pkt.dport}=eth1/{new_group}:{new_port}", "eth0")
    out = encode.output_value(rule, rule.outputs[0], ifindex=3, slot=0, src_mac=bytes(6))
    want = dataclasses.replace(pkt, dst=new_group, dport=new_port, ttl=pkt.ttl - 1).build()
    got = pkt.build()
    ip_check, udp_check = struct.unpack_from("!H", got, 24)[0], struct.unpack_from("!H", got, 40)[0]
    assert apply_eqn3(ip_check, out.ip_csum_delta) == struct.unpack_from("!H", want, 24)[0]
    new_udp = apply_eqn3(udp_check, out.l4_csum_delta) or 0xFFFF  # RFC 768, as rewrite.h
    assert new_udp == struct.unpack_from("!H", want, 40)[0]
