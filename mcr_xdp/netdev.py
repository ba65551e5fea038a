"""What an interface can do with XDP, as the kernel says it: the netdev
generic netlink family (Linux 6.3+), its xdp-features per device.

The one question the relay asks: can a native XDP redirect reach this
output (NETDEV_XDP_ACT_NDO_XMIT)? VXLAN, bridges, tun/tap, macvlan,
WireGuard and GRE devices have no XDP transmit; a veth has one only while
its peer runs NAPI (GRO or an XDP program on the peer). Kernels before 6.3
have no such family: then the answer comes from the device kind.
"""

from __future__ import annotations

import socket
import struct

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX = 1
NETDEV_A_DEV_XDP_FEATURES = 3
NETDEV_XDP_ACT_NDO_XMIT = 1 << 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

# Kernels without the netdev family: kinds that have an XDP transmit
# (physical NICs, whose kind is "", assumed to: most drivers with XDP do).
XMIT_KINDS = ("", "veth", "virtio_net")


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("HH", size, kind) + payload + bytes(-size % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    found, offset = {}, 0
    while offset + 4 <= len(data):
        size, kind = struct.unpack_from("HH", data, offset)
        if size < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + size]
        offset += (size + 3) & ~3
    return found


class _Genl:
    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.settimeout(2.0)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, family: int, cmd: int, attrs: bytes, flags: int) -> list[dict[int, bytes]]:
        """The attributes of each reply message; OSError on a netlink error."""
        self.seq += 1
        body = struct.pack("BBH", cmd, 1, 0) + attrs
        self.sock.send(struct.pack("IHHII", 16 + len(body), family, flags | NLM_F_REQUEST, self.seq, 0) + body)
        replies = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                size, kind, _, seq, _ = struct.unpack_from("IHHII", data, offset)
                if size < 16:
                    return replies
                payload = data[offset + 16:offset + size]
                offset += (size + 3) & ~3
                if seq != self.seq:
                    continue
                if kind == NLMSG_ERROR:
                    error = struct.unpack_from("i", payload)[0]
                    if error:
                        raise OSError(-error, "netlink")
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append(_attrs(payload[4:]))
            if not flags & NLM_F_DUMP:
                return replies

    def family(self, name: str) -> int | None:
        try:
            [reply] = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                                   _attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"), 0)
        except (OSError, ValueError):
            return None
        return struct.unpack("H", reply[CTRL_ATTR_FAMILY_ID][:2])[0]


def xdp_features() -> dict[int, int] | None:
    """ifindex -> NETDEV_XDP_ACT_* bits, for every device of this network
    namespace; None where the kernel has no netdev family (before 6.3)."""
    try:
        genl = _Genl()
    except OSError:
        return None
    try:
        family = genl.family("netdev")
        if family is None:
            return None
        found = {}
        for reply in genl.request(family, NETDEV_CMD_DEV_GET, b"", NLM_F_DUMP):
            if NETDEV_A_DEV_IFINDEX in reply and NETDEV_A_DEV_XDP_FEATURES in reply:
                ifindex = struct.unpack("I", reply[NETDEV_A_DEV_IFINDEX][:4])[0]
                raw = reply[NETDEV_A_DEV_XDP_FEATURES]
                found[ifindex] = struct.unpack("Q" if len(raw) == 8 else "I", raw)[0]
        return found
    except (OSError, socket.timeout):
        return None
    finally:
        genl.close()


def xdp_xmit(ifindex: int, kind: str, features: dict[int, int] | None) -> bool:
    """Whether a native XDP redirect can reach ifindex (a device of kind);
    features: xdp_features(), or None to judge by the kind."""
    if features is not None and ifindex in features:
        return bool(features[ifindex] & NETDEV_XDP_ACT_NDO_XMIT)
    return kind in XMIT_KINDS
