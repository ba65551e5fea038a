"""The benchmark's generator: bench/bpf/bench_gen.c driven through
BPF_PROG_TEST_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES, Linux
5.18+). The kernel runs the program once per frame of a page pool and
really redirects each frame out of the source veth, so the relay receives
frames at rates no socket sender reaches on this machine.

The call runs on the calling CPU and, in the default layout, so does the
whole chain behind it: veth receive work runs in the softirq the sender
raises. LiveGen pins its thread to one CPU so that is known.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import ipaddress
import os
import signal
import struct
import threading
import time

from mcr_xdp import libbpf
from mcr_xdp.errors import AttachError, NotSupported
from mcr_xdp.features import require_toolchain
from mcr_xdp.maps import possible_cpus

from .nsutil import netns
from .sources import include_flags, source

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
MAX_BATCH = 256  # TEST_XDP_MAX_BATCH in net/bpf/test_run.c
MAGIC = b"MCRB"
HEADERS = 14 + 20 + 8
MIN_PAYLOAD = len(MAGIC) + 8  # magic + sequence number
RTP_SSRC = 0x6D637278  # of the RTP header in front, in RTP mode
PROG = "bench_gen"


@dataclasses.dataclass(frozen=True)
class GenConfig:
    ns: str  # namespace the source veth lives in
    ifindex: int  # the source veth (frames leave through it)
    src_mac: bytes
    saddr: str
    group: str  # first group; stream i goes to group + i
    port: int
    size: int = 64  # UDP payload bytes
    streams: int = 1
    ttl: int = 16
    sport: int = 40000
    rtp: bool = False  # an RTP header first (its sequence number the frame's low 16 bits)

    @property
    def ip_len(self) -> int:
        return 20 + 8 + self.size


def _words(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def payload_template(size: int, rtp: bool = False) -> bytes:
    """Magic, a zero sequence number (the program writes it) and a fixed
    pattern nobody rewrites; rtp: behind an RTP header whose sequence
    number (zero here) the program writes too."""
    head = struct.pack("!BBHII", 0x80, 96, 0, 0, RTP_SSRC) if rtp else b""
    size = max(size, MIN_PAYLOAD + len(head))
    return head + MAGIC + bytes(8) + bytes((i * 7 + 3) & 0xFF for i in range(size - MIN_PAYLOAD - len(head)))


def frame_template(cfg: GenConfig) -> bytes:
    """The frame the test run starts every page with; the program rewrites
    all of its headers anyway (recycled pages keep the relay's edits)."""
    group = ipaddress.IPv4Address(cfg.group)
    dst_mac = bytes([1, 0, 0x5E]) + (int(group) & 0x7FFFFF).to_bytes(3, "big")
    eth = dst_mac + cfg.src_mac + struct.pack("!H", 0x0800)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, cfg.ip_len, 0, 0, cfg.ttl, 17, 0,
                     ipaddress.IPv4Address(cfg.saddr).packed, group.packed)
    udp = struct.pack("!HHHH", cfg.sport, cfg.port, 8 + cfg.size, 0)
    return eth + ip + udp + payload_template(cfg.size, cfg.rtp)


def checksum_bases(cfg: GenConfig) -> tuple[int, int]:
    """Folded sums of every checksummed word the program does not change:
    destination address, checksum fields and sequence number count as 0."""
    saddr = ipaddress.IPv4Address(cfg.saddr).packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, cfg.ip_len, 0, 0, cfg.ttl, 17, 0, saddr, bytes(4))
    udp_len = 8 + cfg.size
    pseudo = saddr + bytes(4) + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", cfg.sport, cfg.port, udp_len, 0) + payload_template(cfg.size, cfg.rtp)
    return _fold(_words(ip)), _fold(_words(pseudo + udp))


def cflags(cfg: GenConfig) -> list[str]:
    if not 1 <= cfg.streams <= 1 << 16:
        raise ValueError(f"streams {cfg.streams} out of range")
    least = MIN_PAYLOAD + (12 if cfg.rtp else 0)
    if cfg.size < least or HEADERS + cfg.size > 3500:
        raise ValueError(f"payload size {cfg.size} must be {least}..{3500 - HEADERS} bytes for live frames")
    ip_sum, udp_sum = checksum_bases(cfg)
    smac = int.from_bytes(cfg.src_mac, "big")
    values = {
        "GEN_IFINDEX": cfg.ifindex,
        "GEN_STREAMS": cfg.streams,
        "GEN_GROUP": int(ipaddress.IPv4Address(cfg.group)),
        "GEN_SADDR": int(ipaddress.IPv4Address(cfg.saddr)),
        "GEN_SPORT": cfg.sport,
        "GEN_DPORT": cfg.port,
        "GEN_TTL": cfg.ttl,
        "GEN_IP_LEN": cfg.ip_len,
        "GEN_SMAC_HI": smac >> 32,
        "GEN_SMAC_LO": smac & 0xFFFFFFFF,
        "GEN_IP_SUM": ip_sum,
        "GEN_UDP_SUM": udp_sum,
        "GEN_RTP": int(cfg.rtp),
    }
    return [f"-D{k}={v}u" for k, v in values.items()]


class GenCtl(ctypes.Structure):
    """struct gen_ctl in bench/bpf/bench_gen.c."""

    _fields_ = [("interval_ns", ctypes.c_uint64), ("limit", ctypes.c_uint64)]


class GenState(ctypes.Structure):
    """struct gen_state in bench/bpf/bench_gen.c (per CPU)."""

    _fields_ = [("sent", ctypes.c_uint64), ("next_ns", ctypes.c_uint64)]


# One test run is told to go on this long; stop() interrupts it.
ENDLESS = 0xFFFFFFFF
_WAKE = signal.SIGUSR1


class LiveGen:
    """One compiled generator. start() runs it in a thread (pinned to a CPU,
    inside the source namespace) until stop(); sent() reads how many frames
    it has redirected so far.

    One long BPF_PROG_TEST_RUN call, not many short ones: each call costs a
    fixed ~24 ms (page pool set-up and tear-down) on this kernel, which would
    dominate any pacing done from userspace. The program paces itself."""

    def __init__(self, cfg: GenConfig, batch: int = 64, cpu: int = 0):
        require_toolchain()
        from bcc import BPF

        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch {batch} must be 1..{MAX_BATCH}")
        self.cfg, self.batch, self.cpu = cfg, batch, cpu
        src = source("bench_gen.c")
        try:
            self._bpf = BPF(src_file=str(src).encode(), cflags=include_flags() + cflags(cfg))
            self.prog_fd = self._bpf.load_func(PROG.encode(), BPF.XDP).fd
        except Exception as exc:  # bcc raises bare Exception
            raise AttachError(f"could not compile or load {src.name}: {exc}") from None
        self._ctl_fd = self._bpf[b"gen_ctl"].map_fd
        self._state_fd = self._bpf[b"gen_state"].map_fd
        self._ncpus = possible_cpus()
        self._frame = frame_template(cfg)
        self._data = ctypes.create_string_buffer(self._frame, len(self._frame))
        self._ctx = libbpf.XdpMd(data=0, data_end=len(self._frame), ingress_ifindex=cfg.ifindex)
        self._thread: threading.Thread | None = None
        self.tid: int | None = None  # kernel id of the running generator thread
        self._stop = threading.Event()
        self._error: BaseException | None = None
        if signal.getsignal(_WAKE) in (signal.SIG_DFL, None):
            signal.signal(_WAKE, lambda *_: None)  # only to interrupt the syscall (EINTR)

    def close(self) -> None:
        self.stop()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> LiveGen:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- maps ----------------------------------------------------------------

    def _set_ctl(self, interval_ns: int, limit: int) -> None:
        libbpf.map_update(self._ctl_fd, ctypes.c_uint32(0), GenCtl(interval_ns, limit))

    def _states(self):
        values = (GenState * self._ncpus)()
        libbpf.map_lookup(self._state_fd, ctypes.c_uint32(0), values)
        return values

    def sent(self) -> int:
        """Frames redirected so far, over all runs."""
        return sum(v.sent for v in self._states())

    # -- running -------------------------------------------------------------

    def sample(self, n: int = 3) -> list[bytes]:
        """n frames as the program writes them, through an ordinary (not
        live) test run: for checking headers and checksums."""
        self._set_ctl(0, 0)
        out = []
        for _ in range(n):
            _, data, _ = libbpf.test_run(self.prog_fd, self._frame, out_size=len(self._frame) + 256)
            out.append(data)
        return out

    def start(self, rate: float | None = None, limit: int = 0) -> None:
        """Start generating: flat out (rate None) or rate frames per second;
        with limit, stop sending after limit more frames."""
        if self._thread is not None:
            raise RuntimeError("the generator is running already")
        interval = 0 if rate is None else max(1, round(1e9 / rate))
        states = self._states()
        # The program compares its own CPU's counter with the limit (sample()
        # may have run frames on another CPU).
        self._set_ctl(interval, states[self.cpu].sent + limit if limit else 0)
        for v in states:
            v.next_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns
        libbpf.map_update(self._state_fd, ctypes.c_uint32(0), states)
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._loop, name="bench-gen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        while thread.is_alive():
            signal.pthread_kill(thread.ident, _WAKE)
            thread.join(0.05)
        if self._error is not None:
            raise self._error

    def wait_sent(self, target: int, timeout: float) -> bool:
        """Wait until sent() reaches target (a limited run is done)."""
        deadline = time.monotonic() + timeout
        while self.sent() < target:
            if time.monotonic() > deadline or (self._thread is not None and not self._thread.is_alive()):
                return False
            time.sleep(0.01)
        return True

    def _loop(self) -> None:
        self.tid = threading.get_native_id()  # for CPU accounting
        # Process-directed signals (Ctrl-C, SIGTERM) belong to the main thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            os.sched_setaffinity(0, {self.cpu})
            with netns(self.cfg.ns):
                while not self._stop.is_set():
                    self._run(ENDLESS)
        except BaseException as exc:  # handed to stop()
            self._error = exc

    def _run(self, frames: int) -> None:
        opts = libbpf.TestRunOpts(sz=ctypes.sizeof(libbpf.TestRunOpts))
        opts.data_in = ctypes.cast(self._data, ctypes.c_void_p)
        opts.data_size_in = len(self._frame)
        opts.ctx_in = ctypes.cast(ctypes.pointer(self._ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(self._ctx)
        opts.repeat = frames
        opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
        opts.batch_size = self.batch
        ret = libbpf.lib().bpf_prog_test_run_opts(self.prog_fd, ctypes.byref(opts))
        if ret < 0 and -ret != errno.EINTR:
            if -ret == errno.EINVAL:
                raise NotSupported("BPF_F_TEST_XDP_LIVE_FRAMES", "5.18", os.strerror(-ret))
            raise OSError(-ret, f"BPF_PROG_TEST_RUN (live frames): {os.strerror(-ret)}")
