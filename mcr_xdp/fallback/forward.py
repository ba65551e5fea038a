"""The userspace datapath: the same parse, lookup and rewrite as bpf/, in
Python, for the fallback workers. Pure: frames in, verdict and frames out.

A rule arrives as the datapath's own encoding (encode.output_value: the
Ethernet header, new group and port, checksum deltas), so both datapaths
write identical packets. Frames come from a packet socket, which has
already taken any VLAN tag off into metadata: the copies leave untagged,
as the XDP path sends them.
"""

from __future__ import annotations

import struct
import sys
import time
from typing import NamedTuple

from .. import abi
from ..health import MERGE_FIRST
from .counters import output_base, rule_base
from .streams import Stream

# Verdicts as plain ints: the per-packet path compares and shifts them.
(PASS_NOT_IP, PASS_NOT_UDP, PASS_NOT_MULTICAST, PASS_FRAGMENT, PASS_NO_RULE, PASS_MALFORMED, PASS_IPV6_EXT,
 DROP_TTL, DROP_NO_OUTPUT, REDIRECT, REDIRECT_MULTI, DROP_NO_NEIGH, DROP_POLICED, DROP_LOOP, DROP_MERGED) = (
    int(abi.Verdict[n]) for n in (
        "PASS_NOT_IP", "PASS_NOT_UDP", "PASS_NOT_MULTICAST", "PASS_FRAGMENT", "PASS_NO_RULE", "PASS_MALFORMED",
        "PASS_IPV6_EXT", "DROP_TTL", "DROP_NO_OUTPUT", "REDIRECT", "REDIRECT_MULTI", "DROP_NO_NEIGH",
        "DROP_POLICED", "DROP_LOOP", "DROP_MERGED"))

_ORDER = sys.byteorder  # the deltas are sums of 16-bit words in host order
_IPV4, _IPV6 = b"\x08\x00", b"\x86\xdd"
_IP4 = struct.Struct("!BxHxxHBBH4s4s")  # at 14: version/IHL, total length, frag, TTL, protocol, check, src, dst
_IP6 = struct.Struct("!HBB16s16s")  # at 18: payload length, next header, hop limit, src, dst
_UDP = struct.Struct("!2s2s2sH")  # source port, destination port, length, check
_ETH_IP4 = struct.Struct("!12s10sBBH4s4s")  # MACs, ethertype..frag, TTL, protocol, check, src, dst
_ETH_IP6 = struct.Struct("!12s9sB16s16s")  # MACs, ethertype..next header, hop limit, src, dst


class Out(NamedTuple):
    index: int  # output index in the rule
    ifindex: int
    eth: bytes  # destination then source MAC
    group: bytes  # 4 or 16 bytes
    port: bytes  # network order
    ip_delta: int  # checksum deltas, as 16-bit values in network order
    l4_delta: int
    counter: int  # its packets counter (counters.output_base)
    ttl: int = 0  # the rule's ;ttl=N (0: the received TTL minus one)
    unicast: bool = False  # a unicast receiver: its MAC is its next hop's, never the group's


class Entry(NamedTuple):
    index: int
    outputs: tuple[Out, ...]
    counter: int  # the rule's packets counter (counters.rule_base)
    host_mask: int | None = None  # a range rule's (abi.RULE_RANGE): the group bits a packet keeps
    unresolved: int = 0  # outputs left out of `outputs`: unicast receivers without a next-hop MAC
    bucket: Bucket | None = None  # ;police=RATE: this worker's token bucket
    stream: Stream | None = None  # ;health= or a merge leg: the checks, in the relay's shared state


class Bucket:
    """bpf/police.h's token bucket (struct mcr_police), per worker: a
    rule's stream goes to one worker (PACKET_FANOUT hashes flows), which
    holds it to the rule's rate."""

    __slots__ = ("bits", "rate", "burst", "fill_ns", "tokens", "last")

    def __init__(self, police: dict):
        self.bits, self.rate = police["bits"], police["rate"]
        self.burst, self.fill_ns = police["burst"], police["fill_ns"]
        self.tokens, self.last = self.burst, 0

    def take(self, nbytes: int, now: int) -> bool:
        """Whether a frame of nbytes at now (ns) is within the rate."""
        cost = nbytes * 8 * abi.NSEC if self.bits else abi.NSEC
        tokens = min(self.burst, self.tokens + min(max(now - self.last, 0), self.fill_ns) * self.rate)
        self.last = max(self.last, now)
        ok = tokens >= cost
        self.tokens = tokens - cost if ok else tokens
        return ok


def entry_message(index: int, ifindex: int, rule, outputs: list[abi.Output],
                  police: abi.Police | None = None) -> dict:
    """A rule (rules.Rule, its encoded outputs and policer) as the relay
    sends it to its workers (JSON-able)."""
    n = 4 if rule.family == abi.FAMILY_IPV4 else 16
    return {
        "op": "put", "id": index, "ifindex": ifindex,
        "source": rule.source.packed.hex() if rule.source is not None else "", "source_len": rule.source_len,
        "group": rule.group.packed.hex(), "group_len": rule.group_len, "port": rule.port, "ranged": rule.ranged,
        "outputs": [{"ifindex": o.ifindex, "eth": bytes(o.eth).hex(), "group": bytes(o.group)[:n].hex(),
                     "port": o.port, "ip": o.ip_csum_delta, "l4": o.l4_csum_delta, "ttl": o.ttl, "flags": o.flags}
                    for o in outputs],
        "unicast": rule.unicast,
        "police": None if police is None else {"bits": bool(police.flags & abi.POLICE_BITS), "rate": police.rate,
                                               "burst": police.burst, "fill_ns": police.fill_ns},
    }


def _bucket(msg: dict) -> Bucket | None:
    return Bucket(msg["police"]) if msg.get("police") else None


def _range_prefix(msg: dict) -> tuple[int, int]:
    """(bits, value) of a range rule over group + source as one number:
    its group prefix, or its one group and then its source (prefix)."""
    n = len(msg["group"]) // 2
    group = int(msg["group"], 16)
    if msg.get("group_len") is not None:
        return msg["group_len"], group >> (8 * n - msg["group_len"])
    if not msg["source"]:
        return 8 * n, group
    bits = msg["source_len"] if msg.get("source_len") is not None else 8 * n
    return 8 * n + bits, (group << bits) | (int(msg["source"], 16) >> (8 * n - bits))


def _group_mac(group: bytes) -> bytes:
    """The Ethernet address a group maps to (encode.multicast_mac, on bytes)."""
    if len(group) == 4:
        return b"\x01\x00\x5e" + bytes((group[1] & 0x7F,)) + group[2:]
    return b"\x33\x33" + group[12:]


def _place(entry: Entry, out: Out, group: bytes, dport: bytes) -> Out:
    """A range rule's output for one packet (bpf/rewrite.h): out with the
    destination MAC, group and port for it, and the port's part of its UDP
    checksum delta added."""
    g = int.from_bytes(out.group, "big") | (int.from_bytes(group, "big") & entry.host_mask)
    new = g.to_bytes(len(group), "big")
    port, l4 = dport, out.l4_delta
    if out.port != b"\0\0":
        port = out.port
        l4 = _fold(l4 + (~int.from_bytes(dport, "big") & 0xFFFF) + int.from_bytes(port, "big"))
    eth = out.eth if out.unicast else _group_mac(new) + out.eth[6:]
    return out._replace(eth=eth, group=new, port=port, l4_delta=l4)


def _network(delta: int) -> int:
    """A delta of host-order words as the same delta of network-order words.
    Ones'-complement sums do not care about byte order as long as every word
    is swapped alike (RFC 1071, 2.(B)), so the fields are read in network
    order here and the delta swapped once per rule instead."""
    return int.from_bytes(delta.to_bytes(2, _ORDER), "big")


def _fold(value: int) -> int:
    while value >> 16:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def _apply(check: int, delta: int) -> int:
    """RFC 1624 eqn. 3, as bpf/rewrite.h csum_apply; check and delta folded,
    so one fold suffices."""
    s = (~check & 0xFFFF) + delta
    return ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF


def _udp_checksum(pseudo: bytes, segment: bytes) -> int:
    """The full UDP checksum, for frames whose checksum the sender left
    partial. The ones'-complement sum of 16-bit words is the big-endian
    number mod 0xffff (2**16 = 1 mod 0xffff); a computed 0 is sent as 0xffff."""
    data = pseudo + segment
    if len(data) % 2:
        data += b"\0"
    s = int.from_bytes(data, "big") % 0xFFFF
    return (~(s or 0xFFFF) & 0xFFFF) or 0xFFFF


class Table:
    """Rules by (input ifindex, source, group, port), as the worker holds
    them; handle() is the per-packet path, written for CPython's speed:
    one struct unpack per header, one pack per copy, ints for verdicts."""

    def __init__(self, states=None):
        self.states = states  # streams.States: where rules' stream checks keep their state (None: no checks)
        self.by_key: dict[tuple, Entry] = {}
        self.keys: dict[int, tuple] = {}  # rule index -> key
        self.ssm: dict[int, int] = {}  # input ifindex -> source-specific rules on it
        # Range rules, as the datapath's LPM trie: (input ifindex, port,
        # b"\0\0" for any, address length) -> {prefix bits: {prefix value:
        # entry}}, and the same key -> its prefix lengths, longest first.
        self.ranges: dict[tuple, dict[int, dict[int, Entry]]] = {}
        self.lengths: dict[tuple, list[int]] = {}
        self.range_keys: dict[int, tuple] = {}  # rule index -> (ranges key, bits, value)
        self.unicast: set[int] = set()  # ids of unicast inputs' rules: while none, unicast is the host's
        # The MACs the relay sends from (its outputs'), for the loop guard:
        # MAC -> how many rule outputs send from it.
        self.own_macs: dict[bytes, int] = {}
        self._macs: dict[int, list[bytes]] = {}  # rule index -> its outputs' source MACs

    def put(self, msg: dict) -> Entry:
        self.delete(msg["id"])
        macs = self._macs[msg["id"]] = [bytes.fromhex(o["eth"])[6:] for o in msg["outputs"]]
        for mac in macs:
            self.own_macs[mac] = self.own_macs.get(mac, 0) + 1
        if msg.get("unicast"):
            self.unicast.add(msg["id"])
        if msg.get("ranged"):
            return self._put_range(msg)
        source = bytes.fromhex(msg["source"])
        key = (msg["ifindex"], source, bytes.fromhex(msg["group"]), msg["port"].to_bytes(2, "big"))
        outputs, unresolved = _outputs(msg)
        entry = Entry(msg["id"], outputs, rule_base(msg["id"]), unresolved=unresolved, bucket=_bucket(msg),
                      stream=self._stream(msg))
        self.by_key[key] = entry
        self.keys[msg["id"]] = key
        if source:
            self.ssm[key[0]] = self.ssm.get(key[0], 0) + 1
        return entry

    def _stream(self, msg: dict) -> Stream | None:
        checked, merge = msg.get("health"), msg.get("merge")
        if self.states is None or (checked is None and merge is None):
            return None
        return Stream(self.states, checked and checked["kind"], checked and checked["slot"], merge)

    def _put_range(self, msg: dict) -> Entry:
        # The group bits a packet keeps: those past the group prefix.
        length = msg.get("group_len")
        host_mask = 0 if length is None else (1 << (4 * len(msg["group"]) - length)) - 1
        outputs, unresolved = _outputs(msg)
        entry = Entry(msg["id"], outputs, rule_base(msg["id"]), host_mask, unresolved, _bucket(msg), self._stream(msg))
        key = (msg["ifindex"], msg["port"].to_bytes(2, "big"), len(msg["group"]) // 2)
        bits, value = _range_prefix(msg)
        self.ranges.setdefault(key, {}).setdefault(bits, {})[value] = entry
        self.lengths[key] = sorted(self.ranges[key], reverse=True)
        self.range_keys[msg["id"]] = (key, bits, value)
        return entry

    def entry(self, index: int) -> Entry | None:
        """The entry of the rule of index, if it has one."""
        key = self.keys.get(index)
        if key is not None:
            return self.by_key[key]
        found = self.range_keys.get(index)
        return self.ranges[found[0]][found[1]][found[2]] if found is not None else None

    def delete(self, index: int) -> None:
        self.unicast.discard(index)
        for mac in self._macs.pop(index, ()):
            self.own_macs[mac] -= 1
            if not self.own_macs[mac]:
                del self.own_macs[mac]
        found = self.range_keys.pop(index, None)
        if found is not None:
            key, bits, value = found
            by_bits = self.ranges[key]
            del by_bits[bits][value]
            if not by_bits[bits]:
                del by_bits[bits]
            self.lengths[key] = sorted(by_bits, reverse=True)
            if not by_bits:
                del self.ranges[key], self.lengths[key]
            return
        key = self.keys.pop(index, None)
        if key is None:
            return
        del self.by_key[key]
        if key[1]:
            self.ssm[key[0]] -= 1

    def lookup(self, ifindex: int, source: bytes, group: bytes, port: bytes) -> Entry | None:
        """The datapath's precedence (bpf/forward.h lookup_rule): exact
        (source, group, port), exact (group, port), the longest range for
        the port, the longest range for any port."""
        if self.ssm.get(ifindex):
            entry = self.by_key.get((ifindex, source, group, port))
            if entry is not None:
                return entry
        entry = self.by_key.get((ifindex, b"", group, port))
        if entry is None and self.ranges:
            entry = self._lookup_range(ifindex, source, group, port)
        return entry

    def _lookup_range(self, ifindex: int, source: bytes, group: bytes, port: bytes) -> Entry | None:
        total = 16 * len(group)
        value = int.from_bytes(group + source, "big")
        for key in ((ifindex, port, len(group)), (ifindex, b"\0\0", len(group))):
            by_bits = self.ranges.get(key)
            if by_bits is None:
                continue
            for bits in self.lengths[key]:
                entry = by_bits[bits].get(value >> (total - bits))
                if entry is not None:
                    return entry
        return None

    def handle(self, frame: bytes, ifindex: int, partial: bool = False):
        """(verdict, entry, [(Out, frame to send)]) for one received frame;
        entry is None when no rule matched. partial: the UDP checksum holds
        only the pseudo header (TP_STATUS_CSUMNOTREADY)."""
        n = len(frame)
        # The loop guard (bpf/police.h own_mac): a multicast frame from one
        # of the relay's own output MACs is its own copy come back.
        if frame[0] & 1 and frame[6:12] in self.own_macs:
            return DROP_LOOP, None, ()
        et = frame[12:14]
        if et == _IPV4:
            if n < 34:
                return PASS_MALFORMED, None, ()
            vihl, tot, frag, ttl, proto, ip_check, src, group = _IP4.unpack_from(frame, 14)
            ihl = (vihl & 0x0F) << 2
            if vihl >> 4 != 4 or ihl < 20 or tot < ihl or 14 + tot > n:
                return PASS_MALFORMED, None, ()
            if group[0] & 0xF0 != 0xE0 and (not self.unicast or frag & 0x3FFF or proto != 17):
                return PASS_NOT_MULTICAST, None, ()  # the host's (a unicast input's rule is UDP)
            if frag & 0x3FFF:
                return PASS_FRAGMENT, None, ()
            if proto != 17:
                return PASS_NOT_UDP, None, ()
            if tot < ihl + 8:
                return (PASS_MALFORMED if group[0] & 0xF0 == 0xE0 else PASS_NOT_MULTICAST), None, ()
            l4 = 14 + ihl
            sport, dport, ulen, udp_check = _UDP.unpack_from(frame, l4)
            if not 8 <= int.from_bytes(ulen, "big") <= tot - ihl:
                return (PASS_MALFORMED if group[0] & 0xF0 == 0xE0 else PASS_NOT_MULTICAST), None, ()
            entry = None
            if self.ssm.get(ifindex):
                entry = self.by_key.get((ifindex, src, group, dport))
            if entry is None:
                entry = self.by_key.get((ifindex, b"", group, dport))
                if entry is None:
                    entry = self._lookup_range(ifindex, src, group, dport) if self.ranges else None
                    if entry is None:
                        return (PASS_NO_RULE if group[0] & 0xF0 == 0xE0 else PASS_NOT_MULTICAST), None, ()
            # The header checksum, as the XDP datapath checks it after the
            # lookup: words summed in ones' complement are the header as one
            # number mod 0xffff (2**16 = 1 mod 0xffff), 0 when valid.
            if int.from_bytes(frame[14:l4], "big") % 0xFFFF:
                return PASS_MALFORMED, None, ()
            if not entry.outputs:
                return DROP_NO_NEIGH, entry, ()
            set_ttl = entry.outputs[0].ttl
            stop = _stop(entry, ttl, set_ttl, n)
            if entry.stream is not None and entry.stream.check(frame[l4 + 8:14 + tot], stop is None) > MERGE_FIRST:
                stop = DROP_MERGED
            if stop is not None:
                return stop, entry, ()
            # ;ttl=N: the TTL/protocol word's part of the header checksum.
            extra = (~(ttl << 8 | 17) & 0xFFFF) + (set_ttl << 8 | 17) if set_ttl else 0
            fixed, options, rest = frame[12:22], frame[34:l4], frame[l4 + 8:]
            sends = []
            for out in entry.outputs:
                if entry.host_mask is not None:
                    out = _place(entry, out, group, dport)
                if partial:  # the full checksum, over the rewritten pseudo header
                    pseudo = src + out.group + b"\x00\x11" + ulen
                    check = _udp_checksum(pseudo, sport + out.port + ulen + b"\0\0" + frame[l4 + 8:14 + tot])
                elif udp_check:  # zero: no checksum, stays zero
                    check = _apply(udp_check, out.l4_delta) or 0xFFFF
                else:
                    check = 0
                sends.append((out, b"".join((
                    _ETH_IP4.pack(out.eth, fixed, set_ttl or ttl - 1, 17, _apply(ip_check, _fold(out.ip_delta + extra)),
                                  src, out.group),
                    options, _UDP.pack(sport, out.port, ulen, check), rest))))
            return REDIRECT if len(sends) == 1 else REDIRECT_MULTI, entry, sends
        if n < 14:
            return PASS_MALFORMED, None, ()
        if et == _IPV6:
            if n < 54:
                return PASS_MALFORMED, None, ()
            plen, nh, hops, src, group = _IP6.unpack_from(frame, 18)
            if frame[14] >> 4 != 6 or 54 + plen > n:
                return PASS_MALFORMED, None, ()
            if group[0] != 0xFF and (not self.unicast or nh != 17):
                return PASS_NOT_MULTICAST, None, ()
            if nh != 17:
                return (PASS_NOT_UDP if nh in (6, 58) else PASS_IPV6_EXT), None, ()
            if n < 62 or plen < 8:
                return (PASS_MALFORMED if group[0] == 0xFF else PASS_NOT_MULTICAST), None, ()
            sport, dport, ulen, udp_check = _UDP.unpack_from(frame, 54)
            if not udp_check or not 8 <= int.from_bytes(ulen, "big") <= plen:
                return (PASS_MALFORMED if group[0] == 0xFF else PASS_NOT_MULTICAST), None, ()
            entry = self.lookup(ifindex, src, group, dport)
            if entry is None:
                return (PASS_NO_RULE if group[0] == 0xFF else PASS_NOT_MULTICAST), None, ()
            if not entry.outputs:
                return DROP_NO_NEIGH, entry, ()
            set_ttl = entry.outputs[0].ttl
            stop = _stop(entry, hops, set_ttl, n)
            if entry.stream is not None and entry.stream.check(frame[62:54 + plen], stop is None) > MERGE_FIRST:
                stop = DROP_MERGED
            if stop is not None:
                return stop, entry, ()
            fixed, rest = frame[12:21], frame[62:]
            sends = []
            for out in entry.outputs:
                if entry.host_mask is not None:
                    out = _place(entry, out, group, dport)
                if partial:
                    pseudo = src + out.group + b"\0\0" + ulen + b"\0\0\0\x11"
                    check = _udp_checksum(pseudo, sport + out.port + ulen + b"\0\0" + frame[62:54 + plen])
                else:
                    check = _apply(udp_check, out.l4_delta) or 0xFFFF
                sends.append((out, b"".join((_ETH_IP6.pack(out.eth, fixed, set_ttl or hops - 1, src, out.group),
                                             _UDP.pack(sport, out.port, ulen, check), rest))))
            return REDIRECT if len(sends) == 1 else REDIRECT_MULTI, entry, sends
        return PASS_NOT_IP, None, ()


def _stop(entry: Entry, hops: int, set_ttl: int, nbytes: int) -> int | None:
    """The verdict that keeps a matched frame from its outputs, if any:
    its TTL (unless ;ttl=N sets one), its rule's policer."""
    if hops <= 1 and not set_ttl:
        return DROP_TTL
    if entry.bucket is not None and not entry.bucket.take(nbytes, time.monotonic_ns()):
        return DROP_POLICED
    return None


def _outputs(msg: dict) -> tuple[tuple[Out, ...], int]:
    """The outputs a packet goes to, and how many were left out: unicast
    receivers whose next hop has no known MAC (their copies are counted as
    DROP_NO_NEIGH, never sent to a guessed address)."""
    outputs = tuple(
        Out(i, o["ifindex"], bytes.fromhex(o["eth"]), bytes.fromhex(o["group"]),
            # o["port"] is the u16 as the datapath stores it (network order in memory)
            o["port"].to_bytes(2, _ORDER), _network(o["ip"]), _network(o["l4"]), output_base(msg["id"], i),
            o.get("ttl", 0), bool(o.get("flags", 0) & abi.OUT_UNICAST))
        for i, o in enumerate(msg["outputs"])
        if not o.get("flags", 0) & abi.OUT_UNRESOLVED
    )
    return outputs, len(msg["outputs"]) - len(outputs)
