"""Bounded multicast sender and verifying receiver.

Payloads carry a magic, a sequence number and a hash of the whole payload,
so a receiver can tell lost, duplicated and corrupted packets apart. Used by
the demo, the end-to-end tests and the benchmarks; runnable as
`python -m mcr_xdp.lab.traffic send|recv ...` inside a namespace. A `recv`
of several streams (--dest, --streams) ends on its idle timeout once a
SIGUSR1 says the senders are done.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

from ..csum import checksum

MAGIC = b"MCRX"
_HEAD = struct.Struct("!4sQ")  # magic, sequence number
_DIGEST = 8
MIN_PAYLOAD = _HEAD.size + _DIGEST
IP_PKTINFO = 8
IP_RECVTTL, IP_TTL = 12, 2
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT = 51, 52
SO_RCVBUFFORCE = 33
# What one queued datagram may cost a receive buffer: a 64-byte frame the
# relay sent over veth in native XDP is charged ~1.1 KiB (a 16 MiB buffer
# queued 15,604); 2 KiB leaves room for the other paths. A receiver sizes its
# buffer to queue every frame it expects: one that falls behind its streams
# on a busy 2-CPU machine catches up instead of losing frames (seen: 1,372 of
# a stream lost at 8 MiB, four streams of 20 kpps into one receiver).
QUEUED_FRAME = 2048
RCVBUF_MIN, RCVBUF_MAX = 8 << 20, 256 << 20


_CYCLE = bytes(range(256))


def payload(seq: int, size: int) -> bytes:
    size = max(size, MIN_PAYLOAD)
    head = _HEAD.pack(MAGIC, seq)
    # body[i] = (seq + i) & 0xff, built by slicing (a generator expression
    # made 1316-byte payloads cost ~80 us each, capping senders near 12 kpps).
    n, start = size - MIN_PAYLOAD, seq & 0xFF
    body = ((_CYCLE[start:] + _CYCLE[:start]) * (n // 256 + 1))[:n]
    return head + body + hashlib.blake2b(head + body, digest_size=_DIGEST).digest()


RTP_SSRC = 0x6D637278  # "mcrx"


def rtp_header(seq: int, ssrc: int = RTP_SSRC) -> bytes:
    """An RTP v2 header (RFC 3550), dynamic payload type 96, 90 kHz clock."""
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, (seq * 90) & 0xFFFFFFFF, ssrc)


def check_payload(data: bytes) -> int | None:
    """The sequence number of an intact payload (after an RTP header, if
    the sender put one first), None if corrupt or foreign."""
    if data[12:16] == MAGIC and data[0] >> 6 == 2:
        data = data[12:]
    if len(data) < MIN_PAYLOAD or data[:4] != MAGIC:
        return None
    if hashlib.blake2b(data[:-_DIGEST], digest_size=_DIGEST).digest() != data[-_DIGEST:]:
        return None
    return _HEAD.unpack_from(data)[1]


def _ifindex(iface: str | None) -> int:
    return socket.if_nametoindex(iface) if iface else 0


def send(group: str, port: int, count: int, rate: float = 1000.0, size: int = 64, iface: str | None = None,
         ttl: int = 16, first_seq: int = 0, source_port: int = 0,
         progress: Callable[[int], None] | None = None, source: str | None = None,
         rtp: bool = False, skip: frozenset[int] = frozenset(),
         stop: Callable[[], bool] | None = None) -> float:
    """Send count packets at rate per second (0: as fast as possible).
    Returns the seconds it took. progress, if given, is called with the
    number sent so far after every packet (so an interrupted caller knows).
    stop, if given, is asked before every packet (and while pacing): when it
    says True the sender ends there, after a packet and its progress call,
    so the count is exact. rtp: each payload behind an RTP header whose
    sequence number is the payload's (16 bits); skip: sequence numbers left
    out (gaps), their time slots left empty."""
    with _open_sender(group, iface, ttl, source, source_port) as s:
        dest = (group, port)
        start = time.perf_counter()
        interval = 1.0 / rate if rate > 0 else 0.0
        for i in range(count):
            seq = first_seq + i
            if seq in skip:
                continue
            if interval:
                _pace(start + i * interval, stop)
            if stop is not None and stop():
                break
            data = payload(seq, size)
            s.sendto(rtp_header(seq) + data if rtp else data, dest)
            if progress is not None:
                progress(i + 1)
        return time.perf_counter() - start


def _pace(until: float, stop: Callable[[], bool] | None) -> None:
    """Sleep until perf_counter() reaches until, in slices short enough
    that a stop request is seen within 50 ms."""
    while (delay := until - time.perf_counter()) > 0:
        if stop is not None and stop():
            return
        time.sleep(min(delay, 0.05))


def parse_seqs(text: str) -> frozenset[int]:
    """"5,9,20-24" -> those sequence numbers."""
    seqs: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        seqs.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(seqs)


@dataclasses.dataclass
class Received:
    received: int = 0
    unique: int = 0
    duplicates: int = 0
    corrupt: int = 0
    out_of_order: int = 0
    destinations: dict = dataclasses.field(default_factory=dict)  # "group:port" -> packets
    ttls: dict = dataclasses.field(default_factory=dict)  # TTL / hop limit as received -> packets (receive())
    sequences: set = dataclasses.field(default_factory=set, repr=False)

    def missing(self, expected: int, first_seq: int = 0) -> int:
        return sum(1 for s in range(first_seq, first_seq + expected) if s not in self.sequences)

    def as_dict(self, expected: int | None = None) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "sequences"}
        if expected is not None:
            d["expected"] = expected
            d["missing"] = self.missing(expected)
        return d


def open_receiver(group: str, port: int, iface: str | None = None, expected: int = 0) -> socket.socket:
    """A socket joined to group on iface, with room to queue `expected`
    frames (QUEUED_FRAME each, within RCVBUF_MIN..RCVBUF_MAX)."""
    addr = ipaddress.ip_address(group)
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    room = min(max(RCVBUF_MIN, expected * QUEUED_FRAME), RCVBUF_MAX)
    try:  # root may go past net.core.rmem_max: bursts must not overflow the queue
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, room)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, room)
    if family == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        s.bind((group, port))
        if addr.is_multicast:  # else a unicast receiver: bound to its address
            mreqn = addr.packed + bytes(4) + struct.pack("i", _ifindex(iface))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        s.bind((group, port))
        if addr.is_multicast:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, addr.packed + struct.pack("I", _ifindex(iface)))
    return s


def receive(sock: socket.socket, expected: int, idle_timeout: float = 2.0, total_timeout: float = 120.0,
            first_timeout: float = 20.0) -> Received:
    """Count packets until expected arrived and the line went quiet, or the
    socket stayed idle for idle_timeout (first_timeout before the first)."""
    result = Received()
    port = sock.getsockname()[1]
    last_seq = -1
    deadline = time.monotonic() + total_timeout
    # Once everything expected is in, keep listening briefly for duplicates.
    sock.settimeout(first_timeout)
    while time.monotonic() < deadline:
        try:
            data, anc, _, _ = sock.recvmsg(65536, 256)
        except socket.timeout:
            break
        if result.received == 0:
            sock.settimeout(idle_timeout)
        result.received += 1
        dest = "?"
        for level, kind, value in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                dest = str(ipaddress.IPv4Address(value[8:12]))
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                dest = str(ipaddress.IPv6Address(value[:16]))
        _count_ttl(result, anc)
        key = f"{dest}:{port}"
        result.destinations[key] = result.destinations.get(key, 0) + 1
        seq = check_payload(data)
        if seq is None:
            result.corrupt += 1
            continue
        if seq in result.sequences:
            result.duplicates += 1
            continue
        if seq < last_seq:
            result.out_of_order += 1
        last_seq = seq
        result.sequences.add(seq)
        result.unique += 1
        if result.unique == expected:
            sock.settimeout(min(idle_timeout, 0.5))
    return result


def _count_ttl(result: Received, anc) -> None:
    """The TTL / hop limit a datagram came with (IP_RECVTTL,
    IPV6_RECVHOPLIMIT), counted in result.ttls."""
    for level, kind, value in anc:
        if (level, kind) in ((socket.IPPROTO_IP, IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT)):
            ttl = int.from_bytes(value[:4], sys.byteorder)
            result.ttls[ttl] = result.ttls.get(ttl, 0) + 1


def parse_dest(text: str) -> tuple[str, int]:
    """"239.1.1.1:5001" or "[ff3e::1]:5001" -> (group, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def stream_list(group: str, port: int, streams: int) -> list[tuple[str, int]]:
    """streams consecutive groups from group, all on port."""
    first = ipaddress.ip_address(group)
    return [(str(first + i), port) for i in range(streams)]


def _open_sender(group: str, iface: str | None, ttl: int, source: str | None = None,
                 source_port: int = 0) -> socket.socket:
    addr = ipaddress.ip_address(group)
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)  # to a unicast input
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        if iface:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, bytes(8) + struct.pack("i", _ifindex(iface)))
    else:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        if iface:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, _ifindex(iface))
    if source or source_port:
        s.bind((source or "", source_port))
    return s


def send_streams(streams: list[tuple[str, int]], count: int, rate: float, size: int = 64,
                 iface: str | None = None, ttl: int = 16, source: str | None = None) -> float:
    """count packets to each stream at rate per second each, interleaved
    round-robin (stream i gets sequence numbers 0..count-1). Payloads are
    built before the clock starts so pacing holds at high stream counts."""
    total_rate = rate * len(streams)
    payloads = [payload(seq, size) for seq in range(count)]
    # One socket per address family: IPv4 and IPv6 streams may mix.
    socks = {ipaddress.ip_address(g).version: g for g, _ in streams}
    with contextlib.ExitStack() as stack:
        by_version = {v: stack.enter_context(_open_sender(g, iface, ttl, source)) for v, g in socks.items()}
        targets = [(by_version[ipaddress.ip_address(g).version], (g, p)) for g, p in streams]
        start = time.perf_counter()
        interval = 1.0 / total_rate if total_rate > 0 else 0.0
        k = 0
        for seq in range(count):
            data = payloads[seq]
            for s, dest in targets:
                if interval:
                    delay = start + k * interval - time.perf_counter()
                    if delay > 0.0005:
                        time.sleep(delay)
                s.sendto(data, dest)
                k += 1
        return time.perf_counter() - start


def send_legs(legs: list[tuple[str, int]], count: int, rate: float, size: int = 64, iface: str | None = None,
              ttl: int = 16, skips: tuple[frozenset[int], ...] = (), lag: int = 0) -> tuple[float, list[int]]:
    """One RTP stream sent on each of legs (seamless protection, SMPTE ST
    2022-7 style): sequence numbers 0..count-1 on every leg, leg i leaving
    out skips[i] and running i * lag packets behind the first (a longer
    path). rate: steps per second, each step one packet per leg. Returns
    (seconds, packets sent per leg)."""
    payloads = [rtp_header(seq) + payload(seq, size) for seq in range(count)]
    skips = tuple(skips) + (frozenset(),) * (len(legs) - len(skips))
    sent = [0] * len(legs)
    with _open_sender(legs[0][0], iface, ttl) as s:
        start = time.perf_counter()
        interval = 1.0 / rate if rate > 0 else 0.0
        for step in range(count + lag * (len(legs) - 1)):
            if interval:
                delay = start + step * interval - time.perf_counter()
                if delay > 0.0005:
                    time.sleep(delay)
            for i, dest in enumerate(legs):
                seq = step - i * lag
                if 0 <= seq < count and seq not in skips[i]:
                    s.sendto(payloads[seq], dest)
                    sent[i] += 1
        return time.perf_counter() - start, sent


class SendersDone:
    """SIGUSR1 tells a receiver the senders are done: from then on it ends
    once the line has been quiet for its idle timeout, where a stream that
    must stay empty would otherwise wait out its whole first timeout. The
    signal wakes the receiver's selector through a socket
    (signal.set_wakeup_fd); main thread only, as signals are."""

    SIGNAL = signal.SIGUSR1

    def __init__(self):
        self.told = False
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._w.fileno())
        # A Python handler, so the signal neither kills the receiver nor
        # interrupts it mid-count: the wakeup byte carries it to the selector.
        self._old = signal.signal(self.SIGNAL, lambda *_: None)

    def fileno(self) -> int:
        return self._r.fileno()

    def read(self) -> None:
        """Take the wakeup bytes: told, if one of them is SIGNAL."""
        with contextlib.suppress(BlockingIOError):
            while data := self._r.recv(64):
                self.told |= self.SIGNAL in data

    def close(self) -> None:
        signal.signal(self.SIGNAL, self._old)
        signal.set_wakeup_fd(self._old_fd)
        self._r.close()
        self._w.close()


def receive_streams(streams: list[tuple[str, int]], expected: int, iface: str | None = None,
                    idle_timeout: float = 3.0, first_timeout: float = 20.0, ready=None,
                    senders_done: SendersDone | None = None) -> dict[str, Received]:
    """Receive several streams at once (one socket each, one selector);
    returns Received per "group:port". senders_done: end on the idle
    timeout once it is told, data or not."""
    import selectors

    sel = selectors.DefaultSelector()
    results: dict[str, Received] = {}
    socks = []
    try:
        if senders_done is not None:
            sel.register(senders_done, selectors.EVENT_READ, None)
        for group, port in streams:
            sock = open_receiver(group, port, iface, expected)
            sock.setblocking(False)
            socks.append(sock)
            key = f"{group}:{port}"
            results[key] = Received()
            sel.register(sock, selectors.EVENT_READ, key)
        if ready:
            ready()
        timeout = first_timeout
        done = 0
        last: dict[str, int] = {}  # stream -> highest sequence number so far
        while True:
            events = sel.select(timeout)
            if not events:
                break
            timeout = idle_timeout
            for key, _ in events:
                if key.data is None:
                    senders_done.read()
                    continue
                r = results[key.data]
                while True:
                    try:
                        data, anc, _, _ = key.fileobj.recvmsg(65536, 256)
                    except BlockingIOError:
                        break
                    r.received += 1
                    _count_ttl(r, anc)
                    r.destinations[key.data] = r.destinations.get(key.data, 0) + 1
                    seq = check_payload(data)
                    if seq is None:
                        r.corrupt += 1
                    elif seq in r.sequences:
                        r.duplicates += 1
                    else:
                        if seq < last.get(key.data, -1):
                            r.out_of_order += 1  # per stream, as receive() counts one stream
                        last[key.data] = seq
                        r.sequences.add(seq)
                        r.unique += 1
                        if r.unique == expected:
                            done += 1
            if done == len(streams):
                timeout = min(idle_timeout, 0.5)
    finally:
        for sock in socks:
            sock.close()
        sel.close()
    return results


TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def receive_tun(iface: str, group: str, port: int, expected: int, idle_timeout: float = 2.0,
                first_timeout: float = 20.0, ready: Callable[[], None] | None = None) -> Received:
    """Count the IPv4 UDP packets to group:port that leave through the tun
    device iface (created with `ip tuntap add IFACE mode tun`, read here as
    its queue); a bad IP or UDP checksum counts as corrupt."""
    import fcntl
    import os
    import select

    fd = os.open("/dev/net/tun", os.O_RDWR)
    result, last_seq = Received(), -1
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", iface.encode(), IFF_TUN | IFF_NO_PI))
        if ready:
            ready()
        timeout = first_timeout
        while select.select([fd], [], [], timeout)[0]:
            pkt = os.read(fd, 65536)
            timeout = idle_timeout
            if len(pkt) < 28 or pkt[0] >> 4 != 4 or pkt[9] != socket.IPPROTO_UDP:
                continue
            ihl = (pkt[0] & 0xF) * 4
            dst, dport = str(ipaddress.IPv4Address(pkt[16:20])), struct.unpack_from("!H", pkt, ihl + 2)[0]
            if (dst, dport) != (group, port):
                continue
            result.received += 1
            key = f"{dst}:{dport}"
            result.destinations[key] = result.destinations.get(key, 0) + 1
            udp = pkt[ihl:]
            pseudo = pkt[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_UDP, len(udp))
            ok = checksum(pkt[:ihl]) == 0 and (udp[6:8] == b"\0\0" or checksum(pseudo + udp) == 0)
            seq = check_payload(udp[8:]) if ok else None
            if seq is None:
                result.corrupt += 1
            elif seq in result.sequences:
                result.duplicates += 1
            else:
                result.out_of_order += seq < last_seq
                last_seq = seq
                result.sequences.add(seq)
                result.unique += 1
                if result.unique == expected:
                    timeout = min(idle_timeout, 0.5)
    finally:
        os.close(fd)
    return result


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcr_xdp.lab.traffic", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("send", "recv"):
        c = sub.add_parser(name)
        c.add_argument("--group")
        c.add_argument("--port", type=int)
        c.add_argument("--dest", action="append", default=[], metavar="GROUP:PORT",
                       help="a stream (repeatable; [v6]:port for IPv6), instead of --group/--port/--streams")
        c.add_argument("--iface")
        c.add_argument("--count", type=int, default=1000)
    for c in sub.choices.values():
        c.add_argument("--streams", type=int, default=1, help="consecutive groups from --group")
    s = sub.choices["send"]
    s.add_argument("--source", help="source address to send from")
    s.add_argument("--rate", type=float, default=1000.0)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--ttl", type=int, default=16)
    s.add_argument("--first-seq", type=int, default=0)
    s.add_argument("--rtp", action="store_true", help="an RTP header (sequence number = the packet's) first")
    s.add_argument("--skip", type=parse_seqs, default=frozenset(), metavar="SEQ[-SEQ],...",
                   help="sequence numbers not sent (gaps)")
    s.add_argument("--legs", action="store_true",
                   help="the --dest streams are legs of one RTP stream (send_legs); --skip is the first's gaps")
    s.add_argument("--leg-skip", type=parse_seqs, action="append", default=[], metavar="SEQ[-SEQ],...",
                   help="gaps of the next leg (repeatable)")
    s.add_argument("--lag", type=int, default=0, help="packets each leg runs behind the one before")
    r = sub.choices["recv"]
    r.add_argument("--idle-timeout", type=float, default=3.0)
    r.add_argument("--first-timeout", type=float, default=20.0, help="seconds to wait for the first packet")
    r.add_argument("--timeout", type=float, default=120.0)
    r.add_argument("--tun", action="store_true", help="read what leaves the tun device --iface (IPv4)")
    a = p.parse_args(argv)
    if a.dest:
        streams = [parse_dest(d) for d in a.dest]
    elif a.group is None or a.port is None:
        p.error("give --group and --port, or --dest")
    else:
        streams = stream_list(a.group, a.port, a.streams)
    if a.cmd == "send" and a.legs:
        took, sent = send_legs(streams, a.count, a.rate, a.size, a.iface, a.ttl, (a.skip, *a.leg_skip), a.lag)
        print(json.dumps({"sent": sum(sent), "legs": sent, "seconds": round(took, 3)}), flush=True)
        return 0
    if a.cmd == "send" and (len(streams) > 1 or a.dest):
        took = send_streams(streams, a.count, a.rate, a.size, a.iface, a.ttl, a.source)
        print(json.dumps({"sent": a.count * len(streams), "seconds": round(took, 3)}), flush=True)
        return 0
    if len(streams) > 1 or a.dest:
        told = SendersDone()
        try:
            res = receive_streams(streams, a.count, a.iface, a.idle_timeout, a.first_timeout,
                                  ready=lambda: print("ready", flush=True), senders_done=told)
        finally:
            told.close()
        print(json.dumps({k: r.as_dict(a.count) for k, r in res.items()}), flush=True)
        return 0
    if a.cmd == "send":
        took = send(a.group, a.port, a.count, a.rate, a.size, a.iface, a.ttl, a.first_seq, source=a.source,
                    rtp=a.rtp, skip=a.skip)
        skipped = sum(1 for seq in a.skip if a.first_seq <= seq < a.first_seq + a.count)
        print(json.dumps({"sent": a.count - skipped, "seconds": round(took, 3)}), flush=True)
        return 0
    if a.tun:
        result = receive_tun(a.iface, a.group, a.port, a.count, a.idle_timeout, a.first_timeout,
                             ready=lambda: print("ready", flush=True))
        print(json.dumps(result.as_dict(a.count)), flush=True)
        return 0
    sock = open_receiver(a.group, a.port, a.iface, a.count)
    print("ready", flush=True)
    result = receive(sock, a.count, a.idle_timeout, a.timeout, a.first_timeout)
    print(json.dumps(result.as_dict(a.count)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
