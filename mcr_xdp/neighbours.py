"""Next hops of unicast receivers, from the kernel (pyroute2).

A rule that sends to a unicast address (239.1.1.1:5001=eth1/10.0.2.5:6000)
needs the Ethernet address to send each copy to. The kernel knows it: the
route to the receiver through the output names the next hop (a gateway, or
the receiver itself on the link), and the neighbour table that hop's MAC.
The relay reads both, never guesses: a next hop without a known MAC makes
the output unresolved, and its copies are dropped and counted
(drop_no_neigh) until the kernel learns one.

Nothing the relay sends goes through the kernel's neighbour code (XDP and
TC write the Ethernet header themselves), so nothing would make the kernel
resolve a next hop or keep it fresh. The relay asks for exactly that with a
managed neighbour entry (NTF_EXT_MANAGED, Linux 5.16): the kernel resolves
it at once and re-probes it for as long as it exists. Entries the operator
made (permanent, or without ARP) are left as they are. The relay follows
neighbour and route events (Relay.follow_next_hops) and rewrites the rules
whose next hop's MAC changed; on exit it removes the managed entries it
made, unless it leaves its programs forwarding for a successor.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .rules import Address

NTF_EXT_MANAGED = 0x1  # NDA_FLAGS_EXT: the kernel keeps the entry resolved
NUD_INCOMPLETE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x01, 0x20, 0x40, 0x80
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | NUD_NOARP | NUD_PERMANENT  # reachable, stale, delay, probe, ...
RTN_UNICAST, RTN_LOCAL = 1, 2

Key = tuple[int, Address]  # (output ifindex, receiver address)

# Neighbour entries are read and made with netlink messages of our own:
# Debian 12's pyroute2 (0.7.2, the package's dependency) neither encodes
# nor decodes NDA_FLAGS_EXT (it sent the managed entry without its flag,
# and the kernel then never resolved it).
RTM_NEWNEIGH, RTM_GETNEIGH, NLMSG_ERROR = 28, 30, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
NDA_DST, NDA_LLADDR, NDA_FLAGS_EXT = 1, 2, 15
_NDMSG = struct.Struct("=BxxxiHBB")  # struct ndmsg: family, ifindex, state, flags, type


@dataclasses.dataclass(frozen=True)
class Entry:
    """A neighbour table entry, as the kernel has it."""

    state: int
    mac: bytes | None
    flags_ext: int


def _nla(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + bytes(-size % 4)


def _neigh_request(kind: int, flags: int, ifindex: int, address: str, state: int = 0,
                   attrs: bytes = b"") -> Entry | None:
    """One RTM_*NEIGH request; the entry the kernel answers with (a get),
    or None (an acknowledged change). Raises NetlinkError."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    body = _NDMSG.pack(family, ifindex, state, 0, 0) + _nla(NDA_DST, ip.packed) + attrs
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body)
        data = sock.recv(65536)
    offset = 0
    while offset + 16 <= len(data):
        size, msg_type = struct.unpack_from("=IH", data, offset)
        if msg_type == NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, offset + 16)[0]
            if code:
                raise NetlinkError(code, os.strerror(code))
            return None
        if msg_type == RTM_NEWNEIGH:
            return _entry(data[offset + 16 + _NDMSG.size:offset + size], _NDMSG.unpack_from(data, offset + 16)[2])
        offset += (size + 3) & ~3 or len(data)
    return None


def _entry(attrs: bytes, state: int) -> Entry:
    mac, flags_ext, offset = None, 0, 0
    while offset + 4 <= len(attrs):
        size, kind = struct.unpack_from("=HH", attrs, offset)
        if size < 4:
            break
        payload = attrs[offset + 4:offset + size]
        if kind == NDA_LLADDR and payload:
            mac = bytes(payload)
        elif kind == NDA_FLAGS_EXT and len(payload) >= 4:
            flags_ext = struct.unpack_from("=I", payload)[0]
        offset += (size + 3) & ~3
    return Entry(state, mac, flags_ext)


def neigh_get(ifindex: int, address: str) -> Entry | None:
    """The kernel's entry for address on ifindex (None: there is none)."""
    try:
        return _neigh_request(RTM_GETNEIGH, 0, ifindex, address)
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            return None
        raise


def neigh_make_managed(ifindex: int, address: str) -> None:
    """Create or replace the entry as a managed one (the kernel resolves it
    and keeps it resolved)."""
    _neigh_request(RTM_NEWNEIGH, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, ifindex, address,
                   attrs=_nla(NDA_FLAGS_EXT, struct.pack("=I", NTF_EXT_MANAGED)))


@dataclasses.dataclass(frozen=True)
class Hop:
    """Where a unicast receiver's copies go: the next hop's address and MAC
    (None: unresolved, and why)."""

    via: str  # the next hop: a gateway, or the receiver itself
    mac: bytes | None
    why: str = ""  # why there is no MAC

    def describe(self, receiver: Address) -> str:
        hop = "" if self.via == str(receiver) else f" via {self.via}"
        if self.mac is not None:
            return f"{receiver}{hop} at {self.mac.hex(':')}"
        return f"{receiver}{hop}: unresolved ({self.why})"


class NextHops:
    """The next hops of every unicast receiver the relay sends to, by
    (output ifindex, receiver address)."""

    def __init__(self):
        self._ipr: IPRoute | None = None
        self.hops: dict[Key, Hop] = {}
        self._managed: set[tuple[int, str]] = set()  # (ifindex, next hop) entries this relay made managed
        self.managed_supported = True

    def _netlink(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def lookup(self, ifindex: int, receiver: Address) -> Hop:
        """The receiver's next hop through ifindex, as known now (kept and
        followed from then on, until forget)."""
        key = (ifindex, receiver)
        hop = self.hops.get(key)
        if hop is None:
            hop = self.hops[key] = self._resolve(ifindex, receiver)
        return hop

    def forget(self, keep: set[Key]) -> None:
        """Stop following every receiver but those in keep."""
        for key in [k for k in self.hops if k not in keep]:
            del self.hops[key]

    def refresh(self, touched: set[tuple[int, str]] | None = None) -> dict[Key, Hop]:
        """Resolve again; returns the receivers whose hop changed (new
        value). touched: only those whose next hop is one of these
        (ifindex, address) pairs (a neighbour event); None: all (a route
        event, or the periodic check)."""
        changed = {}
        for key, old in list(self.hops.items()):
            if touched is not None and (key[0], old.via) not in touched:
                continue
            hop = self._resolve(*key)
            if hop != old:
                self.hops[key] = changed[key] = hop
        return changed

    def _resolve(self, ifindex: int, receiver: Address) -> Hop:
        ipr = self._netlink()
        try:
            route = ipr.route("get", dst=str(receiver), oif=ifindex)[0]
        except NetlinkError as exc:
            return Hop(str(receiver), None, f"no route to it through this interface: {exc.args[-1]}")
        if route["type"] == RTN_LOCAL:
            return Hop(str(receiver), None, "it is an address of this host")
        if route["type"] != RTN_UNICAST:
            return Hop(str(receiver), None, "its route is not a unicast route (unreachable, prohibit, blackhole)")
        via = route.get_attr("RTA_GATEWAY") or str(receiver)
        self._manage(ifindex, via)
        try:
            neigh = neigh_get(ifindex, via)
        except NetlinkError as exc:
            return Hop(via, None, f"the neighbour table did not answer: {exc.args[-1]}")
        if neigh is None:
            if (ifindex, via) in self._managed:  # removed behind the relay's back (ip neigh flush): again
                self._managed.discard((ifindex, via))
                self._manage(ifindex, via)
            return Hop(via, None, "no neighbour entry yet" if self.managed_supported else
                       "no neighbour entry, and this kernel cannot be asked to make one (Linux 5.16+): it appears "
                       "when the host itself sends to that address")
        if not neigh.mac or not neigh.state & NUD_VALID:
            why = {NUD_INCOMPLETE: "being resolved", NUD_FAILED: "no answer to ARP / neighbour solicitation"}
            return Hop(via, None, why.get(neigh.state, f"neighbour state {neigh.state:#x}"))
        return Hop(via, neigh.mac)

    def _manage(self, ifindex: int, via: str) -> None:
        """Ask the kernel to resolve via and keep it resolved (a managed
        entry), unless the operator's entry is there (permanent, no ARP)."""
        if not self.managed_supported or (ifindex, via) in self._managed:
            return
        try:
            found = neigh_get(ifindex, via)
        except NetlinkError:
            found = None
        if found is not None and found.state & (NUD_PERMANENT | NUD_NOARP):
            return  # the operator's
        if found is not None and found.flags_ext & NTF_EXT_MANAGED:
            self._managed.add((ifindex, via))  # a predecessor's (a restart without a gap): this relay's now
            return
        try:
            neigh_make_managed(ifindex, via)
        except NetlinkError as exc:
            if exc.code in (errno.EINVAL, errno.EOPNOTSUPP):
                self.managed_supported = False  # an older kernel: entries appear with the host's own traffic
            return
        self._managed.add((ifindex, via))

    def close(self, keep: bool = False) -> None:
        """Remove the managed entries this relay made (keep: leave them for
        a successor that sends to the same receivers)."""
        if self._ipr is None:
            return
        if not keep:
            for ifindex, via in self._managed:
                try:
                    self._ipr.neigh("del", dst=via, ifindex=ifindex)
                except NetlinkError:
                    pass  # gone with its interface, or removed by someone else
        self._managed.clear()
        self._ipr.close()
        self._ipr = None


def touched_by(messages) -> set[tuple[int, str]] | None:
    """What a batch of netlink events changed, for NextHops.refresh: the
    (ifindex, address) of each neighbour event, or None (everything) when a
    route changed."""
    touched: set[tuple[int, str]] = set()
    for msg in messages:
        event = msg.get("event", "")
        if event in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
            touched.add((msg["ifindex"], msg.get_attr("NDA_DST")))
        elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            return None
    return touched
