"""Packet builders for tests: Ethernet, 802.1Q, IPv4 (with options), UDP.

Built with struct and a checksum of its own (RFC 1071), never with mcr_xdp
code: the datapath tests compare its output with frames built here, so this
module must not share a bug with the code under test.

Every header field can be overridden (version, ihl, tot_len, checksums) so
malformed frames are built the same way as good ones; truncated frames are
slices of good ones.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17

IP_DF = 0x4000
IP_MF = 0x2000


def inet_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum, as the 16-bit value stored in a header."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    assert len(raw) == 6, text
    return raw


def ipv4_multicast_mac(group: str) -> bytes:
    """01:00:5e followed by the low 23 bits of the group (RFC 1112 6.4)."""
    low23 = int(ipaddress.IPv4Address(group)) & 0x7FFFFF
    return bytes([0x01, 0x00, 0x5E]) + low23.to_bytes(3, "big")


def ethernet(dst: bytes, src: bytes, ethertype: int, vlan: int | None = None, tpid: int = ETH_P_8021Q) -> bytes:
    """Ethernet header; with vlan, a tag (tpid, PCP 0, this VID) carrying
    ethertype."""
    if vlan is None:
        return dst + src + struct.pack("!H", ethertype)
    return dst + src + struct.pack("!HHH", tpid, vlan & 0xFFF, ethertype)


def ipv4(
    src: str,
    dst: str,
    payload: bytes,
    *,
    proto: int = IPPROTO_UDP,
    ttl: int = 64,
    options: bytes = b"",
    frag: int = 0,
    ident: int = 0x1234,
    tos: int = 0,
    version: int = 4,
    ihl: int | None = None,
    tot_len: int | None = None,
    check: int | None = None,
) -> bytes:
    """IPv4 header + payload. options must be a multiple of 4 bytes; frag is
    the whole flags/fragment-offset word. ihl, tot_len and check default to
    the correct values."""
    assert len(options) % 4 == 0, "pad IPv4 options to 4 bytes"
    if ihl is None:
        ihl = 5 + len(options) // 4
    if tot_len is None:
        tot_len = 20 + len(options) + len(payload)
    fixed = struct.pack(
        "!BBHHHBBH4s4s",
        (version << 4) | ihl,
        tos,
        tot_len,
        ident,
        frag,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = fixed + options
    if check is None:
        check = inet_checksum(header)
    return header[:10] + struct.pack("!H", check) + header[12:] + payload


def ipv6(src: str, dst: str, payload: bytes, *, nexthdr: int = IPPROTO_UDP, hop_limit: int = 64,
         version: int = 6, payload_len: int | None = None) -> bytes:
    """Fixed IPv6 header (no extension headers) + payload."""
    if payload_len is None:
        payload_len = len(payload)
    return (
        struct.pack("!IHBB", version << 28, payload_len, nexthdr, hop_limit)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes, *, checksum: bool = True) -> bytes:
    """UDP header + payload for src -> dst (IPv4 or IPv6 addresses: the
    pseudo header follows). checksum=False sends 0 ("no checksum", IPv4
    only in valid traffic); a computed 0 is sent as 0xffff (RFC 768)."""
    length = 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    if not checksum:
        return header + payload
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", length, IPPROTO_UDP)
    check = inet_checksum(pseudo + header + payload) or 0xFFFF
    return header[:6] + struct.pack("!H", check) + payload


@dataclasses.dataclass(frozen=True)
class Udp4:
    """A whole Ethernet/[802.1Q]/IPv4/UDP frame as data: tests derive the
    expected output of a rewrite with dataclasses.replace(). proto other than
    UDP puts payload right after the IP header."""

    dst: str = "239.1.1.1"
    src: str = "192.0.2.1"
    dport: int = 5001
    sport: int = 40000
    payload: bytes = b"mcr-xdp test payload"
    ttl: int = 64
    options: bytes = b""
    frag: int = IP_DF
    proto: int = IPPROTO_UDP
    udp_checksum: bool = True
    vlan: int | None = None
    tpid: int = ETH_P_8021Q
    eth_dst: bytes | None = None  # None: the group's multicast MAC
    eth_src: bytes = mac("02:00:00:00:00:01")
    # Header overrides for malformed frames (None: correct value).
    version: int = 4
    ihl: int | None = None
    tot_len: int | None = None

    def build(self) -> bytes:
        if self.proto == IPPROTO_UDP:
            l4 = udp(self.src, self.dst, self.sport, self.dport, self.payload, checksum=self.udp_checksum)
        else:
            l4 = self.payload
        ip = ipv4(
            self.src,
            self.dst,
            l4,
            proto=self.proto,
            ttl=self.ttl,
            options=self.options,
            frag=self.frag,
            version=self.version,
            ihl=self.ihl,
            tot_len=self.tot_len,
        )
        dst_mac = self.eth_dst if self.eth_dst is not None else ipv4_multicast_mac(self.dst)
        return ethernet(dst_mac, self.eth_src, ETH_P_IP, self.vlan, self.tpid) + ip


def arp_request(sender: str = "192.0.2.1", target: str = "192.0.2.2", src: bytes = mac("02:00:00:00:00:01")) -> bytes:
    body = struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        ETH_P_IP,
        6,
        4,
        1,
        src,
        ipaddress.IPv4Address(sender).packed,
        bytes(6),
        ipaddress.IPv4Address(target).packed,
    )
    return ethernet(b"\xff" * 6, src, ETH_P_ARP) + body


def ipv6_multicast_mac(group: str) -> bytes:
    """33:33 followed by the low 32 bits of the group (RFC 2464 section 7)."""
    return b"\x33\x33" + ipaddress.IPv6Address(group).packed[-4:]


@dataclasses.dataclass(frozen=True)
class Udp6:
    """Ethernet/[802.1Q]/IPv6/UDP, like Udp4. nexthdr other than UDP puts
    payload right after the fixed header."""

    dst: str = "ff3e::1:1"
    src: str = "2001:db8::1"
    dport: int = 5001
    sport: int = 40000
    payload: bytes = b"mcr-xdp test payload"
    hop_limit: int = 64
    nexthdr: int = IPPROTO_UDP
    udp_checksum: bool = True
    vlan: int | None = None
    tpid: int = ETH_P_8021Q
    eth_dst: bytes | None = None  # None: the group's multicast MAC
    eth_src: bytes = mac("02:00:00:00:00:01")
    version: int = 6
    payload_len: int | None = None

    def build(self) -> bytes:
        if self.nexthdr == IPPROTO_UDP:
            l4 = udp(self.src, self.dst, self.sport, self.dport, self.payload, checksum=self.udp_checksum)
        else:
            l4 = self.payload
        ip = ipv6(self.src, self.dst, l4, nexthdr=self.nexthdr, hop_limit=self.hop_limit, version=self.version,
                  payload_len=self.payload_len)
        dst_mac = self.eth_dst if self.eth_dst is not None else ipv6_multicast_mac(self.dst)
        return ethernet(dst_mac, self.eth_src, ETH_P_IPV6, self.vlan, self.tpid) + ip
