"""The loss tracer: frames dropped after a successful XDP redirect, counted
per output interface (bpf/trace.c).

The relay works without it; where tracepoints are unavailable it runs
blind to those losses and says so in `status`.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

from . import abi, libbpf
from .errors import McrError
from .maps import possible_cpus

TRACEFS = Path("/sys/kernel/tracing")


def ensure_tracefs() -> Path:
    """tracefs, mounted if needed (`ip netns exec` gives a fresh /sys
    without it; the mount lives and dies with that mount namespace)."""
    if not (TRACEFS / "events").is_dir():
        proc = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True, text=True)
        if proc.returncode != 0 or not (TRACEFS / "events").is_dir():
            raise McrError(f"tracefs is not available at {TRACEFS}: {proc.stderr.strip()}")
    return TRACEFS


def _offsets() -> list[str]:
    """The struct offsets trace.c reads devices at, from the kernel's BTF."""
    from .btf import KernelBtf

    with KernelBtf() as btf:
        return [f"-DMCR_OFF_DEV_IFINDEX={btf.offset('net_device', 'ifindex')}",
                f"-DMCR_OFF_DEV_NET={btf.offset('net_device', 'nd_net.net')}",
                f"-DMCR_OFF_NET_INUM={btf.offset('net', 'ns.inum')}"]


class LossTracer:
    """prog_ids: this relay's XDP programs (redirect errors); map_ids: its
    cpumaps (steering queue drops)."""

    def __init__(self, prog_ids: list[int], map_ids: list[int] = ()):
        ensure_tracefs()
        from bcc import BPF

        from .objfile import bpf_dir

        src = bpf_dir() / "trace.c"
        # Drops count only on devices of this network namespace (trace.c).
        cflags = [f"-I{src.parent}", f"-DMCR_NETNS_INUM={os.stat('/proc/self/ns/net').st_ino}u", *_offsets()]
        if (TRACEFS / "events/xdp/xdp_redirect_map_err").is_dir():
            cflags.append("-DMCR_HAVE_REDIRECT_MAP_ERR")
        try:
            self._bpf = BPF(src_file=str(src).encode(), cflags=cflags)
        except Exception as exc:  # bcc: bare Exception on compile/attach errors
            raise McrError(f"cannot load the loss tracer: {exc}") from None
        self._loss_fd = self._bpf[abi.MAP_LOSS.encode()].map_fd
        self._progs_fd = self._bpf[abi.MAP_LOSS_PROGS.encode()].map_fd
        self._steer_fd = self._bpf[abi.MAP_LOSS_STEER.encode()].map_fd
        self.ncpus = possible_cpus()
        for prog_id in prog_ids:
            libbpf.map_update(self._progs_fd, ctypes.c_uint32(prog_id), ctypes.c_uint8(1))
        maps_fd = self._bpf[abi.MAP_LOSS_MAPS.encode()].map_fd
        for map_id in map_ids:
            libbpf.map_update(maps_fd, ctypes.c_uint32(map_id), ctypes.c_uint8(1))
        self.watched: set[int] = set()

    def watch(self, from_ifindex: int, to_ifindex: int) -> None:
        """Count losses of frames from input from_ifindex to output to_ifindex."""
        pair = (from_ifindex, to_ifindex)
        if pair not in self.watched:
            libbpf.map_update(self._loss_fd, abi.LossKey(*pair), (abi.Loss * self.ncpus)())
            self.watched.add(pair)

    def read(self) -> dict[int, tuple[int, int]]:
        """Output ifindex -> (xmit drops, redirect errors), all CPUs and inputs."""
        result: dict[int, tuple[int, int]] = {}
        for pair in self.watched:
            values = (abi.Loss * self.ncpus)()
            if libbpf.map_lookup(self._loss_fd, abi.LossKey(*pair), values):
                drops, errors = result.get(pair[1], (0, 0))
                result[pair[1]] = (drops + sum(v.xmit_drops for v in values),
                                   errors + sum(v.redirect_errors for v in values))
        return result

    def watch_prog(self, prog_id: int) -> None:
        """Count redirect errors of this program too (the cpumap program)."""
        libbpf.map_update(self._progs_fd, ctypes.c_uint32(prog_id), ctypes.c_uint8(1))

    def steering_drops(self) -> int:
        """Frames this relay's full cpumap queues dropped, all CPUs."""
        values = (ctypes.c_uint64 * self.ncpus)()
        libbpf.map_lookup(self._steer_fd, ctypes.c_uint32(0), values)
        return sum(values)

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
