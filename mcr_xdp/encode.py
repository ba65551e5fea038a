"""Turn a Rule into the datapath's map key and value (mcr_abi.h). Pure.

Everything the datapath writes into a packet is computed here once per rule
instead of once per packet: the Ethernet header and the checksum deltas.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

from . import abi, csum
from .rules import Address, Output, Rate, Rule


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


def rule_key(rule: Rule, ifindex: int) -> abi.RuleKey | abi.RangeKey:
    """The rule's key: in mcr_rules for an exact rule, in mcr_ranges (with
    its prefix length) for a range rule."""
    key = abi.RangeKey() if rule.ranged else abi.RuleKey()
    key.ifindex = ifindex
    key.port = socket.htons(rule.port)
    key.family = rule.family
    key.source[:] = _addr16(rule.source)
    key.group[:] = _addr16(rule.group)
    if rule.ranged:
        # The group's bits (all 16 bytes of one group: an IPv4 group's
        # zero padding matches the packet's), then the source's.
        if rule.group_len is not None:
            key.prefixlen = abi.RANGE_FIXED_BITS + rule.group_len
        else:
            source_bits = 0 if rule.source is None else (rule.source_len or rule.source.max_prefixlen)
            key.prefixlen = abi.RANGE_FIXED_BITS + 128 + source_bits
    return key


def host_mask(rule: Rule) -> bytes:
    """The group bits a range rule's packets keep (16 bytes): those past
    the group prefix; none for one group."""
    if rule.group_len is None:
        return bytes(16)
    bits = rule.group.max_prefixlen
    mask = (1 << (bits - rule.group_len)) - 1
    return mask.to_bytes(bits // 8, "big").ljust(16, b"\0")


def output_value(rule: Rule, out: Output, ifindex: int, slot: int, src_mac: bytes, stat: int = 0,
                 next_hop: bytes | None = None) -> abi.Output:
    """One output's datapath value: slot is its mcr_tx_ports key (one-output
    rules), stat its key in mcr_output_stats; next_hop the MAC of a unicast
    receiver's next hop (None: unknown, and its copies are dropped and
    counted, never sent to a guessed address)."""
    group = rule.out_group(out)
    port = rule.out_port(out)
    old_port, new_port = struct.pack("!H", rule.port), struct.pack("!H", port)
    # A range rule's group is its prefix, host bits zero, as is the
    # output's: the delta of the prefix alone is the delta of every group
    # in the range (the host bits cancel out of a ones'-complement
    # difference). Its port may vary (*): the datapath adds the port's part.
    addr_delta = csum.delta(rule.group.packed, group.packed)
    port_delta = 0 if rule.ranged else csum.delta(old_port, new_port)
    value = abi.Output()
    value.ifindex = ifindex
    value.slot = slot
    value.stat = stat
    if out.unicast:
        value.flags = abi.OUT_UNICAST | (abi.OUT_UNRESOLVED if next_hop is None else 0)
        value.eth[:] = (next_hop or bytes(6)) + src_mac
    else:
        value.eth[:] = multicast_mac(group) + src_mac
    value.port = socket.htons(out.port or 0) if rule.ranged else socket.htons(port)
    value.group[:] = _addr16(group)
    # IPv6 has no header checksum; the UDP checksum covers the addresses
    # through the pseudo header in both families.
    # A TTL of the rule's own (;ttl=N) depends on the packet's: the datapath
    # adds that part (bpf/rewrite.h ttl_delta).
    value.ttl = rule.ttl or 0
    ttl_part = 0 if rule.ttl else csum.TTL_DECREMENT_DELTA
    value.ip_csum_delta = csum.fold(addr_delta + ttl_part) if group.version == 4 else 0
    value.l4_csum_delta = csum.fold(addr_delta + port_delta)
    # A partial (offloaded) UDP checksum holds only the pseudo header: TC
    # updates it by this part alone and lets the kernel handle the port.
    value.pseudo_csum_delta = addr_delta
    return value


HEALTH_FLAGS = {"rtp": abi.RULE_HEALTH_RTP, "mpegts": abi.RULE_HEALTH_TS}  # Rule.health -> mcr_rule.flags


def rule_value(rule: Rule, index: int, outputs: list[abi.Output], flags: int = 0, merge: int = 0) -> abi.Rule:
    """merge: a merge leg's key in mcr_merge (the merged stream's)."""
    value = abi.Rule()
    value.id = index
    value.n_outputs = len(outputs)
    value.flags = (flags | (abi.RULE_RANGE if rule.ranged else 0) | HEALTH_FLAGS.get(rule.health_kind, 0)
                   | (abi.RULE_POLICE if rule.police is not None else 0)
                   | (abi.RULE_MERGE if rule.merge is not None else 0))
    value.merge = merge
    value.host_mask[:] = host_mask(rule)
    for i, out in enumerate(outputs):
        value.out[i] = out
    return value


BURST_SECONDS = 0.02  # a policer's bucket holds 20 ms at its rate ...
MIN_BURST = {"pps": 1, "bit": 1514 * 8}  # ... and at least one packet, one full-size frame


def police_value(rate: Rate) -> abi.Police:
    """A policer's datapath state for rate, its bucket full (struct
    mcr_police: tokens in units * 10^9)."""
    burst_units = max(int(rate.per_second * BURST_SECONDS), MIN_BURST[rate.unit])
    value = abi.Police()
    value.flags = abi.POLICE_BITS if rate.bits else 0
    value.rate = rate.per_second
    value.burst = burst_units * abi.NSEC
    value.fill_ns = -(-value.burst // rate.per_second)
    value.tokens = value.burst
    return value


RULE_KINDS = ("ssm_rules", "range_rules", "any_port_rules", "unicast_rules")


def rule_kind(rule: Rule) -> tuple[str, ...]:
    """The mcr_config counts (maps.set_config arguments) rule adds to: the
    lookup past the exact (group, port) one that finds it, if any, and
    unicast_rules for a unicast input (the datapath looks up unicast
    packets at all)."""
    if rule.ranged:
        kinds: tuple[str, ...] = ("range_rules" if rule.port else "any_port_rules",)
    else:
        kinds = ("ssm_rules",) if rule.source is not None else ()
    return (*kinds, "unicast_rules") if rule.unicast else kinds


def rule_kinds(rules: Iterable[Rule]) -> dict[str, int]:
    """How many rules each count of mcr_config has (maps.set_config's
    arguments): exact source-specific, range for one port, range for any
    port, unicast inputs."""
    kinds = dict.fromkeys(RULE_KINDS, 0)
    for rule in rules:
        for kind in rule_kind(rule):
            kinds[kind] += 1
    return kinds


def parse_mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return raw


