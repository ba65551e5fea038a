"""The benchmark's sink: bench/bpf/bench_sink.c, an XDP program that counts
IPv4/UDP multicast frames and drops everything, attached in native mode so
the end of the chain is never what limits a measurement."""

from __future__ import annotations

import ctypes
import errno
import ipaddress

from mcr_xdp import libbpf
from mcr_xdp.errors import AttachError
from mcr_xdp.features import require_toolchain
from mcr_xdp.maps import possible_cpus

from .nsutil import ifindex, netns
from .sources import include_flags, source

PROG = "bench_sink"
PROG_REDIRECT = "bench_redirect"
PROG_REWRITE = "bench_rewrite"
MAP = "sink_count"


class _Counter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class Sink:
    """One loaded sink with its own counters."""

    def __init__(self, redirect_to: int | None = None, rewrite_to: tuple[str, int] | None = None):
        """With redirect_to (an ifindex), the attached program is instead
        bench_redirect: every frame out of that interface, uncounted; with
        rewrite_to (group, port) too, bench_rewrite: rewritten to them first."""
        require_toolchain()
        from bcc import BPF

        src = source("bench_sink.c")
        cflags = include_flags() + ([] if redirect_to is None else [f"-DBENCH_FWD_IFINDEX={redirect_to}"])
        prog = PROG if redirect_to is None else PROG_REDIRECT
        if redirect_to is not None and rewrite_to is not None:
            group, port = rewrite_to
            cflags += [f"-DBENCH_OUT_GROUP={int(ipaddress.IPv4Address(group)):#x}", f"-DBENCH_OUT_PORT={port}"]
            prog = PROG_REWRITE
        try:
            self._bpf = BPF(src_file=str(src).encode(), cflags=cflags)
            self.prog_fd = self._bpf.load_func(prog.encode(), BPF.XDP).fd
        except Exception as exc:  # bcc raises bare Exception
            raise AttachError(f"could not compile or load {src.name}: {exc}") from None
        self._map_fd = self._bpf[MAP.encode()].map_fd
        self._ncpus = possible_cpus()
        self.attached: list[tuple[str, int]] = []  # (namespace, ifindex)

    def attach(self, ns: str, dev: str) -> None:
        """Attach (native XDP) to one more device; all share the counters."""
        idx = ifindex(ns, dev)
        with netns(ns):
            try:
                libbpf.xdp_attach(idx, self.prog_fd, libbpf.XDP_FLAGS_DRV_MODE)
            except OSError as exc:
                raise AttachError(f"cannot attach the sink to {ns}/{dev}: {exc.strerror}") from None
        self.attached.append((ns, idx))

    def detach(self) -> None:
        while self.attached:
            ns, idx = self.attached.pop()
            try:
                with netns(ns):
                    libbpf.xdp_detach(idx, libbpf.XDP_FLAGS_DRV_MODE)
            except OSError as exc:  # the namespace or device may be gone already
                if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                    raise

    def count(self) -> tuple[int, int]:
        """(packets, bytes) counted so far, summed over CPUs."""
        values = (_Counter * self._ncpus)()
        key = ctypes.c_uint32(0)
        libbpf.map_lookup(self._map_fd, key, values)
        return sum(v.packets for v in values), sum(v.bytes for v in values)

    def close(self) -> None:
        try:
            self.detach()
        except OSError:
            pass
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
