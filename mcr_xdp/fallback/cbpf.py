"""Classic BPF socket filters for the fallback's packet sockets. Pure.

The filter admits exactly the frames a rule of the input matches, by group
(or group prefix) and UDP port (or any port; sources are the worker's to
check), and never the relay's own transmissions (PACKET_OUTGOING). Within
BPF_MAXINSNS each (group, port) pair is tested exactly; past that the
filter widens to "multicast UDP to a rule port" (when no rule is for any
port), then to "multicast UDP", and the worker's lookup decides. A unicast
input's (address, port) is tested exactly in every form: the host's own
unicast traffic never reaches a worker.

Frames on a packet socket arrive without their VLAN tag (the kernel moves
it into metadata before the taps run), so the IP header is at byte 14.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Iterable

SO_ATTACH_FILTER = 26
BPF_MAXINSNS = 4096
ACCEPT = 0x40000  # snap length: any frame this relay can see, whole
PACKET_OUTGOING = 4
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4

# Opcodes (linux/filter.h)
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
LD_H_IND = 0x48
LDX_B_MSH = 0xB1
LD_MEM, ST = 0x60, 0x02
ALU_AND_K = 0x54
JA, JEQ, JGE, JSET = 0x05, 0x15, 0x35, 0x45
RET = 0x06

ETH = 14
IP4_PROTO, IP4_FRAG, IP4_DADDR = ETH + 9, ETH + 6, ETH + 16
IP6_NEXTHDR, IP6_DADDR, IP6_DPORT = ETH + 6, ETH + 24, ETH + 40 + 2

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def _i(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> Insn:
    return (code, jt, jf, k & 0xFFFFFFFF)


def drop_all() -> list[Insn]:
    return [_i(RET, 0)]


Pair = tuple[bytes, bytes, int]  # group prefix, its netmask (packed), port (0: any)


def _match(at: int, group: bytes, mask: bytes, port: int) -> list[Insn]:
    """Accept a frame whose group (at `at`) is in the prefix and whose
    port (scratch memory 0) is port; else fall through to what follows.
    Words outside the prefix are not loaded; every mismatch jumps to the
    end of these instructions."""
    checks: list[list] = []
    for j in range(0, len(group), 4):
        word, keep = int.from_bytes(group[j:j + 4], "big"), int.from_bytes(mask[j:j + 4], "big")
        if keep:
            checks.append([_i(LD_W_ABS, at + j), *([_i(ALU_AND_K, keep)] if keep != 0xFFFFFFFF else []), word])
    if port:
        checks.append([_i(LD_MEM, 0), port])
    n = sum(len(c) for c in checks) + 1
    prog: list[Insn] = []
    for check in checks:
        *loads, value = check
        prog += loads
        prog.append(_i(JEQ, value, jf=n - len(prog) - 1))
    return prog + [_i(RET, ACCEPT)]


def _v4(pairs: list[Pair], ports: set[int], exact: bool, by_port: bool) -> list[Insn]:
    prog = [
        _i(LD_B_ABS, IP4_PROTO), _i(JEQ, 17, jt=1), _i(RET, 0),
        _i(LD_H_ABS, IP4_FRAG), _i(JSET, 0x3FFF, jf=1), _i(RET, 0),  # fragments: the host's
        _i(LDX_B_MSH, ETH), _i(LD_H_IND, ETH + 2), _i(ST, 0),        # M[0] = UDP destination port
    ]
    if exact:
        for group, mask, port in pairs:
            prog += _match(IP4_DADDR, group, mask, port)
        return prog + [_i(RET, 0)]
    for group, mask, port in pairs:  # unicast inputs: exact in every form
        if group[0] & 0xF0 != 0xE0:
            prog += _match(IP4_DADDR, group, mask, port)
    prog += [_i(LD_W_ABS, IP4_DADDR), _i(JGE, 0xE0000000, jt=1), _i(RET, 0), _i(JGE, 0xF0000000, jf=1),
             _i(RET, 0)]
    return _accept_ports(prog, ports, by_port)


def _accept_ports(prog: list[Insn], ports: set[int], by_port: bool) -> list[Insn]:
    """Any multicast group: accept the rules' ports (the destination port is
    in scratch memory 0), or every port when there are too many to list or
    a rule is for any port."""
    if by_port and 0 not in ports:
        prog.append(_i(LD_MEM, 0))
        for port in sorted(ports):
            prog += [_i(JEQ, port, jf=1), _i(RET, ACCEPT)]
        return prog + [_i(RET, 0)]
    return prog + [_i(RET, ACCEPT)]


def _v6(pairs: list[Pair], ports: set[int], exact: bool, by_port: bool) -> list[Insn]:
    prog = [
        _i(LD_B_ABS, IP6_NEXTHDR), _i(JEQ, 17, jt=1), _i(RET, 0),
        _i(LD_H_ABS, IP6_DPORT), _i(ST, 0),
    ]
    if exact:
        for group, mask, port in pairs:
            prog += _match(IP6_DADDR, group, mask, port)
        return prog + [_i(RET, 0)]
    for group, mask, port in pairs:
        if group[0] != 0xFF:
            prog += _match(IP6_DADDR, group, mask, port)
    prog += [_i(LD_B_ABS, IP6_DADDR), _i(JEQ, 0xFF, jt=1), _i(RET, 0)]
    return _accept_ports(prog, ports, by_port)


def rule_filter(endpoints: Iterable[tuple[str, int]]) -> list[Insn]:
    """A filter admitting UDP to these (group or GROUP/LEN, port; 0: any)
    endpoints of one input, received (not sent) by the interface."""
    v4, v6 = set(), set()
    for group, port in endpoints:
        net = ipaddress.ip_network(group)
        (v4 if net.version == 4 else v6).add((net.network_address.packed, net.netmask.packed, port))
    v4_pairs, v6_pairs = sorted(v4), sorted(v6)
    ports4, ports6 = {p for _, _, p in v4}, {p for _, _, p in v6}
    for exact, by_port in ((True, False), (False, True), (False, False)):
        prog = _program(v4_pairs, v6_pairs, ports4, ports6, exact, by_port)
        if len(prog) <= BPF_MAXINSNS:
            return prog
    raise AssertionError("unreachable: the widest filter is a few instructions")


def _program(v4_pairs, v6_pairs, ports4, ports6, exact, by_port) -> list[Insn]:
    prog = [
        _i(LD_W_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE), _i(JEQ, PACKET_OUTGOING, jf=1), _i(RET, 0),
        _i(LD_H_ABS, 12),
    ]
    v4 = _v4(v4_pairs, ports4, exact, by_port) if v4_pairs else [_i(RET, 0)]
    v6 = _v6(v6_pairs, ports6, exact, by_port) if v6_pairs else [_i(RET, 0)]
    # IPv4: skip the long jump; otherwise jump over the IPv4 part (ja has a
    # 32-bit offset, conditional jumps only 8 bits).
    prog += [_i(JEQ, 0x0800, jt=1), _i(JA, len(v4))]
    prog += v4
    prog += [_i(JEQ, 0x86DD, jt=1), _i(RET, 0)]
    return prog + v6


def attach(sock: socket.socket, prog: list[Insn]) -> None:
    """Attach (or atomically replace) sock's filter."""
    raw = b"".join(struct.pack("HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(prog), ctypes.addressof(buf)))
