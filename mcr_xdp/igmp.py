"""Group memberships held on input interfaces so switches and routers send
the traffic (IGMP for IPv4, MLD for IPv6).

Joins use the protocol-independent MCAST_JOIN_GROUP and
MCAST_JOIN_SOURCE_GROUP (RFC 3678) by interface index, for both families.
A socket holds at most net.ipv4.igmp_max_memberships groups (20 by default)
and net.ipv4.igmp_max_msf sources per group (10), so a pool per interface
opens sockets as needed. The sockets never bind and carry a drop-all filter
with IP_MULTICAST_ALL off: they only hold memberships and never queue data.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct

from .errors import McrError

IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
SO_ATTACH_FILTER = 26
MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP = 42, 45
MCAST_JOIN_SOURCE_GROUP, MCAST_LEAVE_SOURCE_GROUP = 46, 47
SYSCTL = "/proc/sys/net/ipv4/"

# Classic BPF "ret #0": accept nothing.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)
_SOCKADDR_STORAGE = 128


class JoinError(McrError):
    pass


def _sysctl(name: str, default: int) -> int:
    try:
        with open(SYSCTL + name) as f:
            return max(1, int(f.read()))
    except (OSError, ValueError):
        return default


def _sockaddr(addr) -> bytes:
    if addr.version == 4:
        raw = struct.pack("=H2x4s", socket.AF_INET, addr.packed)
    else:
        raw = struct.pack("=H2xI16sI", socket.AF_INET6, 0, addr.packed, 0)
    return raw.ljust(_SOCKADDR_STORAGE, b"\0")


def _group_req(ifindex: int, group, source=None) -> bytes:
    """struct group_req / group_source_req: u32 interface, then 8-byte
    aligned sockaddr_storage fields."""
    req = struct.pack("=I4x", ifindex) + _sockaddr(group)
    return req if source is None else req + _sockaddr(source)


def _drop_all_filter(sock: socket.socket) -> None:
    buf = ctypes.create_string_buffer(_DROP_ALL)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", 1, ctypes.addressof(buf)))


class _Socket:
    def __init__(self, family: int):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET:
                self.sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            else:
                self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            _drop_all_filter(self.sock)
        except OSError:
            self.sock.close()
            raise
        self.sources: dict = {}  # group -> set of sources (empty set: any-source)


class JoinPool:
    """Memberships of one interface (by ifindex), both families, any-source
    and source-specific."""

    def __init__(self, ifindex: int, ifname: str, max_groups: int | None = None, max_sources: int | None = None):
        self.ifindex = ifindex
        self.ifname = ifname
        self.max_groups = max_groups or _sysctl("igmp_max_memberships", 20)
        self.max_sources = max_sources or _sysctl("igmp_max_msf", 10)
        self._socks: dict[int, list[_Socket]] = {socket.AF_INET: [], socket.AF_INET6: []}
        self._where: dict[tuple, _Socket] = {}  # (group, source) -> socket holding it

    @property
    def memberships(self) -> list[tuple]:
        return list(self._where)

    @property
    def sockets(self) -> int:
        return sum(len(v) for v in self._socks.values())

    def _fits(self, s: _Socket, group, source) -> bool:
        if group not in s.sources:
            return len(s.sources) < self.max_groups
        # A socket can't mix any-source and source-specific on one group.
        held = s.sources[group]
        return source is not None and bool(held) and len(held) < self.max_sources

    def _socket_for(self, group, source) -> _Socket:
        family = socket.AF_INET if group.version == 4 else socket.AF_INET6
        socks = self._socks[family]
        if socks and self._fits(socks[-1], group, source):
            return socks[-1]  # the newest: where joins in a row go, without a scan of 500 sockets
        for s in socks:
            if self._fits(s, group, source):
                return s
        s = _Socket(family)
        self._socks[family].append(s)
        return s

    def join(self, group, source=None) -> None:
        group = ipaddress.ip_address(group)
        source = None if source is None else ipaddress.ip_address(source)
        if (group, source) in self._where:
            return
        s = self._socket_for(group, source)
        level = socket.IPPROTO_IP if group.version == 4 else socket.IPPROTO_IPV6
        opt = MCAST_JOIN_GROUP if source is None else MCAST_JOIN_SOURCE_GROUP
        try:
            s.sock.setsockopt(level, opt, _group_req(self.ifindex, group, source))
        except OSError as exc:
            what = f"{source}@{group}" if source else str(group)
            raise JoinError(f"cannot join {what} on {self.ifname}: {exc.strerror}") from None
        s.sources.setdefault(group, set())
        if source is not None:
            s.sources[group].add(source)
        self._where[(group, source)] = s

    def leave(self, group, source=None) -> None:
        group = ipaddress.ip_address(group)
        source = None if source is None else ipaddress.ip_address(source)
        s = self._where.pop((group, source), None)
        if s is None:
            return
        level = socket.IPPROTO_IP if group.version == 4 else socket.IPPROTO_IPV6
        opt = MCAST_LEAVE_GROUP if source is None else MCAST_LEAVE_SOURCE_GROUP
        try:
            s.sock.setsockopt(level, opt, _group_req(self.ifindex, group, source))
        except OSError:
            pass  # the interface may be gone; closing the socket leaves anyway
        held = s.sources.get(group, set())
        held.discard(source)
        if not held:
            s.sources.pop(group, None)

    def close(self) -> None:
        """Leave every group: closing a socket drops its memberships."""
        for socks in self._socks.values():
            for s in socks:
                s.sock.close()
            socks.clear()
        self._where.clear()


IP_FREEBIND, IPV6_FREEBIND = 15, 78


def claim(ifname: str, address, port: int) -> tuple[socket.socket, bool]:
    """A unicast input's counterpart of a join: a UDP socket bound to the
    input's (address, port), so the host stack treats that port as taken.
    Another program already there is an error (the relay would take its
    traffic); where a copy of the stream reaches the host (userspace mode)
    the socket's drop-all filter discards it, where an unbound port would
    answer every datagram with an ICMP port unreachable. SO_REUSEPORT lets a
    successor claim it before this relay lets go (a restart without a gap);
    IP_FREEBIND, an address the host does not have (yet). Returns the
    socket and whether the address is the host's."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    local = True
    try:
        _drop_all_filter(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        try:
            sock.bind((str(address), port))
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            local = False
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            sock.bind((str(address), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise JoinError(f"{address}:{port} on {ifname} is in use by another program: a rule for it would "
                            "take that program's traffic") from None
        raise JoinError(f"cannot claim {address}:{port} on {ifname}: {exc.strerror}") from None
    return sock, local
