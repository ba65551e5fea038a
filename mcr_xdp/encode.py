"""Turn a Rule into the datapath's map key and value (mcr_abi.h). Pure.

Everything the datapath writes into a packet is computed here once per rule
instead of once per packet: the Ethernet header and the checksum deltas.
"""

from __future__ import annotations

import socket
import struct

from . import abi, csum
from .rules import Address, Output, Rule


def multicast_mac(group: Address) -> bytes:
    """The Ethernet address a group maps to (RFC 1112 section 6.4, RFC 2464
    section 7)."""
    if group.version == 4:
        return b"\x01\x00\x5e" + struct.pack("!I", int(group) & 0x7FFFFF)[1:]
    return b"\x33\x33" + group.packed[-4:]


def _addr16(addr: Address | None) -> bytes:
    if addr is None:
        return bytes(16)
    return addr.packed.ljust(16, b"\0")


def rule_key(rule: Rule, ifindex: int) -> abi.RuleKey:
    key = abi.RuleKey()
    key.ifindex = ifindex
    key.port = socket.htons(rule.port)
    key.family = rule.family
    key.source[:] = _addr16(rule.source)
    key.group[:] = _addr16(rule.group)
    return key


def output_value(rule: Rule, out: Output, ifindex: int, slot: int, src_mac: bytes) -> abi.Output:
    group = rule.out_group(out)
    port = rule.out_port(out)
    old_port, new_port = struct.pack("!H", rule.port), struct.pack("!H", port)
    addr_delta = csum.delta(rule.group.packed, group.packed)
    value = abi.Output()
    value.ifindex = ifindex
    value.slot = slot
    value.eth[:] = multicast_mac(group) + src_mac
    value.port = socket.htons(port)
    value.group[:] = _addr16(group)
    # IPv6 has no header checksum; the UDP checksum covers the addresses
    # through the pseudo header in both families.
    # A TTL of the rule's own (;ttl=N) depends on the packet's: the datapath
    # adds that part (bpf/rewrite.h ttl_delta).
    value.ttl = rule.ttl or 0
    ttl_part = 0 if rule.ttl else csum.TTL_DECREMENT_DELTA
    value.ip_csum_delta = csum.fold(addr_delta + ttl_part) if group.version == 4 else 0
    value.l4_csum_delta = csum.fold(addr_delta + csum.delta(old_port, new_port))
    # A partial (offloaded) UDP checksum holds only the pseudo header: TC
    # updates it by this part alone and lets the kernel handle the port.
    value.pseudo_csum_delta = addr_delta
    return value


def rule_value(rule: Rule, rule_id: int, outputs: list[abi.Output], flags: int = 0) -> abi.Rule:
    value = abi.Rule()
    value.id = rule_id
    value.n_outputs = len(outputs)
    value.flags = flags
    for i, out in enumerate(outputs):
        value.out[i] = out
    return value


def parse_mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return raw


