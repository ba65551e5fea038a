"""python -m bench packet-tx: would a TX ring speed up the userspace
fallback's sends? The fallback sends each relayed frame with one send() on
an AF_PACKET socket; a PACKET_TX_RING lets Python write frames into shared
memory and hand the kernel many at once. This sends the same 64 B
multicast frames into a veth pair in a throw-away namespace three ways:

  send       one send() per frame, as mcr_xdp/fallback/worker.py does
  tx-ring    TPACKET_V2 TX ring, a send() per BATCH frames to flush
  ring-only  the TX ring's Python side alone (frames written, never sent)

and counts what the peer received, so a way that loses frames shows.
"""

from __future__ import annotations

import mmap
import socket
import struct
import time

from mcr_xdp.lab.netns import Topology, Veth, unique_prefix

from .lookup import frame
from .nsutil import netns

SOL_PACKET = 263
PACKET_VERSION = 10
PACKET_TX_RING = 13
TPACKET_V2 = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_WRONG_FORMAT = 4
FRAME_SIZE = 2048
BLOCK_SIZE = 1 << 16
BLOCK_NR = 64
FRAMES = BLOCK_SIZE // FRAME_SIZE * BLOCK_NR
DATA_OFF = 32  # TPACKET2_HDRLEN - sizeof(struct sockaddr_ll): where a TX frame's data starts
BATCH = 64
_LENS = struct.Struct("=II")  # tp_len, tp_snaplen after tp_status


def _rx_packets(topo: Topology, ns: str, dev: str) -> int:
    # Through `ip netns exec`: it mounts the namespace's own /sys.
    return int(topo.exec(ns, "cat", f"/sys/class/net/{dev}/statistics/rx_packets").stdout)


class _TxRing:
    def __init__(self, dev: str):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            self.sock.setsockopt(SOL_PACKET, PACKET_TX_RING,
                                 struct.pack("=4I", BLOCK_SIZE, BLOCK_NR, FRAME_SIZE, FRAMES))
            self.sock.bind((dev, 0))
            self.map = mmap.mmap(self.sock.fileno(), BLOCK_SIZE * BLOCK_NR, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            self.sock.close()
            raise
        self.next = 0

    def put(self, data: bytes, flush: bool = True) -> None:
        m, off = self.map, self.next * FRAME_SIZE
        if m[off] != TP_STATUS_AVAILABLE:
            if not flush:  # ring-only: take the slot back without sending
                m[off] = TP_STATUS_AVAILABLE
            while m[off] not in (TP_STATUS_AVAILABLE, TP_STATUS_WRONG_FORMAT):
                self.sock.send(b"")
            if m[off] == TP_STATUS_WRONG_FORMAT:
                raise OSError("the kernel refused a TX ring frame (TP_STATUS_WRONG_FORMAT)")
        m[off + DATA_OFF: off + DATA_OFF + len(data)] = data
        _LENS.pack_into(m, off + 4, len(data), len(data))
        m[off] = TP_STATUS_SEND_REQUEST
        self.next = (self.next + 1) % FRAMES

    def close(self) -> None:
        self.map.close()
        self.sock.close()


def _send(dev: str, data: bytes, n: int) -> float:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.bind((dev, 0))
        t = time.perf_counter()
        for _ in range(n):
            sock.send(data)
        return time.perf_counter() - t


def _ring(dev: str, data: bytes, n: int, flush: bool) -> float:
    ring = _TxRing(dev)
    try:
        t = time.perf_counter()
        for i in range(n):
            ring.put(data, flush)
            if flush and i % BATCH == BATCH - 1:
                ring.sock.send(b"")
        if flush:
            ring.sock.send(b"")
        elapsed = time.perf_counter() - t
        if not flush:  # nothing may leave afterwards
            for k in range(FRAMES):
                ring.map[k * FRAME_SIZE] = TP_STATUS_AVAILABLE
        return elapsed
    finally:
        ring.close()


def measure(n: int = 200_000, rounds: int = 3) -> dict:
    topo = Topology(unique_prefix("mcrb"))
    try:
        a, b = topo.add_ns("a"), topo.add_ns("b")
        topo.link(Veth(a, "txa", "10.251.0.1/24"), Veth(b, "txb", "10.251.0.2/24"))
        # No router solicitations or MLD reports in the peer's count.
        topo.exec(a, "sysctl", "-qw", "net.ipv6.conf.txa.disable_ipv6=1")
        data = frame()
        ways = {"send": lambda: _send("txa", data, n), "tx-ring": lambda: _ring("txa", data, n, True),
                "ring-only": lambda: _ring("txa", data, n, False)}
        out = {}
        for name, way in ways.items():
            runs, received = [], []
            for _ in range(rounds):
                before = _rx_packets(topo, b, "txb")
                with netns(a):
                    runs.append(way())
                time.sleep(0.2)
                received.append(_rx_packets(topo, b, "txb") - before)
            out[name] = {"us_per_frame": min(runs) / n * 1e6, "received": min(received), "sent": n}
        return {"frames": n, "rounds": rounds, "batch": BATCH, "size": len(data), "started": time.time(),
                "ways": out}
    finally:
        topo.close()


def render(doc: dict) -> str:
    lines = [f"{doc['frames']:,} frames of {doc['size']} B into a veth, best of {doc['rounds']}", "",
             "| way | us per frame | received by the peer |", "| --- | ---: | ---: |"]
    for name, w in doc["ways"].items():
        lines.append(f"| {name} | {w['us_per_frame']:.2f} | {w['received']:,} of {w['sent']:,} |")
    return "\n".join(lines)
