"""AF_PACKET plumbing for the fallback: receive sockets on a TPACKET_V3
ring in one PACKET_FANOUT group, and the ring's block walk.

Constants and layouts are those of linux/if_packet.h; Python's socket
module has none of them.
"""

from __future__ import annotations

import ctypes
import mmap
import socket
import struct

from . import cbpf

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
ETH_P_ALL = 0x0003

FANOUT = {"hash": 0, "lb": 1, "cpu": 2}
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_CSUMNOTREADY = 1 << 3  # partial checksum: only the pseudo header is summed

# Ring geometry: 512 blocks of 32 KiB. The kernel hands a block over when
# it is full or RETIRE_MS after its first frame, which bounds the latency a
# quiet stream sees but also spends a whole block per timeout: at low rates
# the ring holds BLOCK_NR * RETIRE_MS (0.5 s) of traffic, however few
# packets that is, and a worker the scheduler keeps off the CPU longer than
# that loses frames. (16 blocks of 1 MiB, 32 ms, lost 0.5% under load.)
# A block's frames leave as one burst per output (sendmmsg), so the timer
# also bounds the bursts: a veth whose peer runs NAPI takes 256 frames at a
# time and drops the rest when another CPU drains it (4 ms blocks of 60 kpps
# lost a few copies in tests/e2e/test_shared_outputs.py; 1 ms never did).
BLOCK_SIZE = 1 << 15
BLOCK_NR = 512
FRAME_SIZE = 2048
RETIRE_MS = 1
PACKET_STATISTICS = 6
_STATS3 = struct.Struct("=III")  # struct tpacket_stats_v3: packets, drops, freeze_q_cnt

# struct tpacket_req3
_REQ3 = struct.Struct("=7I")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
# block_status (8), num_pkts (12), offset_to_first_pkt (16)
BLOCK_STATUS = 8
BLOCK_HEAD = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt at 8
# struct tpacket3_hdr: tp_next_offset, (sec, nsec), tp_snaplen, tp_len, tp_status, tp_mac
PKT_HEAD = struct.Struct("=I8xIIIH")


def ring_size() -> int:
    return BLOCK_SIZE * BLOCK_NR


def open_rx(ifindex: int) -> socket.socket:
    """A receive socket on ifindex with a V3 ring, ignoring outgoing frames,
    filtering everything out until the caller installs the rule filter
    (so joining a fanout group never duplicates a frame in between)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing yet
    try:
        cbpf.attach(sock, cbpf.drop_all())
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        req = _REQ3.pack(BLOCK_SIZE, BLOCK_NR, FRAME_SIZE, BLOCK_SIZE // FRAME_SIZE * BLOCK_NR, RETIRE_MS, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        sock.bind((socket.if_indextoname(ifindex), ETH_P_ALL))
    except BaseException:
        sock.close()
        raise
    return sock


def ring_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped for want of ring space since the last call
    (PACKET_STATISTICS reads and clears)."""
    _packets, drops, _freeze = _STATS3.unpack(sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size))
    return drops


def join_fanout(socks: list[socket.socket], mode: str) -> int:
    """Put socks in one new fanout group (the kernel picks an id no other
    group in this network namespace has); returns the id."""
    kind = FANOUT[mode]
    socks[0].setsockopt(SOL_PACKET, PACKET_FANOUT, (kind | PACKET_FANOUT_FLAG_UNIQUEID) << 16)
    group = socks[0].getsockopt(SOL_PACKET, PACKET_FANOUT) & 0xFFFF
    for sock in socks[1:]:
        join_group(sock, group, mode)
    return group


def join_group(sock: socket.socket, group: int, mode: str) -> None:
    """Put sock in the existing fanout group group (join_fanout made it)."""
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, group | FANOUT[mode] << 16)


class Ring:
    """The mmap'ed V3 ring of one receive socket, walked block by block."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.map = mmap.mmap(sock.fileno(), ring_size(), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.block = 0
        self._export: ctypes.c_char | None = None  # the map as C sees it (address())

    def address(self) -> int:
        """Where the ring is mapped, for the compiled inner loop."""
        if self._export is None:
            self._export = ctypes.c_char.from_buffer(self.map)
        return ctypes.addressof(self._export)

    def ready(self) -> int | None:
        """The offset of the next block the kernel has handed over, if any."""
        base = self.block * BLOCK_SIZE
        return base if BLOCK_HEAD.unpack_from(self.map, base + BLOCK_STATUS)[0] & TP_STATUS_USER else None

    def frames(self, base: int, offsets) -> list[tuple[bytes, int, int]]:
        """The frames whose headers are at these offsets of the block at
        base, as (data, tp_status, tp_len)."""
        m, frames = self.map, []
        for rel in offsets:
            off = base + rel
            _nxt, snap, length, st, mac = PKT_HEAD.unpack_from(m, off)
            frames.append((m[off + mac: off + mac + snap], st, length))
        return frames

    def release(self) -> None:
        """Give the current block back to the kernel and move to the next."""
        struct.pack_into("=I", self.map, self.block * BLOCK_SIZE + BLOCK_STATUS, TP_STATUS_KERNEL)
        self.block = (self.block + 1) % BLOCK_NR

    def blocks(self):
        """Yield the frames of each block the kernel has handed over, in ring
        order, as lists of (data, tp_status, tp_len); the block goes back to
        the kernel as soon as its frames are copied out. At most one ring's
        worth per call, so a flood cannot starve the worker's other fds."""
        m = self.map
        for _ in range(BLOCK_NR):
            base = self.block * BLOCK_SIZE
            status, num, first = BLOCK_HEAD.unpack_from(m, base + BLOCK_STATUS)
            if not status & TP_STATUS_USER:
                return
            frames = []
            off = base + first
            for _ in range(num):
                nxt, snap, length, st, mac = PKT_HEAD.unpack_from(m, off)
                frames.append((m[off + mac: off + mac + snap], st, length))
                off += nxt
            self.release()
            yield frames

    def close(self) -> None:
        self._export = None
        self.map.close()
