"""Group memberships held on input interfaces so switches and routers send
the traffic (IGMP for IPv4, MLD for IPv6).

A socket holds at most net.ipv4.igmp_max_memberships groups (20 by default),
so a pool per interface opens sockets as needed. The sockets never bind and
carry a drop-all filter with IP_MULTICAST_ALL off: they exist only to hold
memberships and never queue data.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from .errors import McrError

IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
SO_ATTACH_FILTER = 26
MAX_MEMBERSHIPS_SYSCTL = "/proc/sys/net/ipv4/igmp_max_memberships"

# Classic BPF "ret #0": accept nothing.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)


def _drop_all_filter(sock: socket.socket) -> None:
    import ctypes

    buf = ctypes.create_string_buffer(_DROP_ALL)
    prog = struct.pack("HL", 1, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


def per_socket_limit() -> int:
    try:
        with open(MAX_MEMBERSHIPS_SYSCTL) as f:
            return max(1, int(f.read()))
    except (OSError, ValueError):
        return 20


class JoinError(McrError):
    pass


class JoinPool:
    """Memberships of one interface (by ifindex) for one address family."""

    def __init__(self, ifindex: int, ifname: str, family: int = socket.AF_INET, per_socket: int | None = None):
        self.ifindex = ifindex
        self.ifname = ifname
        self.family = family
        self.per_socket = per_socket or (per_socket_limit() if family == socket.AF_INET else 1000)
        self._socks: list[socket.socket] = []
        self._members: dict[ipaddress._BaseAddress, socket.socket] = {}

    @property
    def groups(self) -> list:
        return list(self._members)

    def _socket_with_room(self) -> socket.socket:
        load = {id(s): 0 for s in self._socks}
        for s in self._members.values():
            load[id(s)] += 1
        for s in self._socks:
            if load[id(s)] < self.per_socket:
                return s
        s = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            if self.family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            _drop_all_filter(s)
        except OSError:
            s.close()
            raise
        self._socks.append(s)
        return s

    def join(self, group) -> None:
        group = ipaddress.ip_address(group)
        if group in self._members:
            return
        s = self._socket_with_room()
        try:
            if self.family == socket.AF_INET:
                mreqn = group.packed + bytes(4) + struct.pack("i", self.ifindex)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group.packed + struct.pack("I", self.ifindex))
        except OSError as exc:
            raise JoinError(f"cannot join {group} on {self.ifname}: {exc.strerror}") from None
        self._members[group] = s

    def leave(self, group) -> None:
        group = ipaddress.ip_address(group)
        s = self._members.pop(group, None)
        if s is None:
            return
        try:
            if self.family == socket.AF_INET:
                mreqn = group.packed + bytes(4) + struct.pack("i", self.ifindex)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreqn)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP, group.packed + struct.pack("I", self.ifindex))
        except OSError:
            pass  # the interface may be gone; closing the socket leaves anyway

    def close(self) -> None:
        """Leave every group (closing a socket drops its memberships)."""
        self._members.clear()
        for s in self._socks:
            s.close()
        self._socks.clear()

    @property
    def sockets(self) -> int:
        return len(self._socks)
