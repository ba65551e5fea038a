"""Ones'-complement checksum arithmetic (RFC 1071, RFC 1624).

The datapath adds precomputed deltas (bpf/rewrite.h csum_apply); this module
computes them. Words are 16-bit values in host order, read from bytes in
network order exactly as the BPF program loads them, so a delta computed
here applies unchanged to the checksum field in the packet.
"""

import struct
import sys

_WORD = "<H" if sys.byteorder == "little" else ">H"

# The TTL sits in the high byte (network order) of a 16-bit word; lowering it
# by one lowers that word by 0x0100 (network) whatever the TTL was, so its
# delta ~m + m' is a constant: 0xfffe in little-endian word order.
TTL_DECREMENT_DELTA = 0xFFFF - (0x0001 if sys.byteorder == "little" else 0x0100)


def _words(data: bytes):
    if len(data) % 2:
        data += b"\0"
    return [struct.unpack_from(_WORD, data, i)[0] for i in range(0, len(data), 2)]


def fold(value: int) -> int:
    while value >> 16:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def delta(old: bytes, new: bytes) -> int:
    """sum(~m + m') over the words of old and new, folded to 16 bits."""
    if len(old) != len(new):
        raise ValueError("old and new fields differ in length")
    total = 0
    for m, m_new in zip(_words(old), _words(new)):
        total += (~m & 0xFFFF) + m_new
    return fold(total)


def checksum(data: bytes) -> int:
    """The Internet checksum of data, as the 16-bit value found in packets
    (network order integer)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack_from("!H", data, i)[0] for i in range(0, len(data), 2))
    return ~fold(total) & 0xFFFF
