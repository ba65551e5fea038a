"""The loss tracer: frames dropped after a successful XDP redirect, counted
per output interface (bpf/trace.c, an object built ahead of time like the
datapath: mcr_xdp/objfile.py).

The relay works without it; where tracepoints are unavailable it runs
blind to those losses and says so in `status`.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from pathlib import Path

from . import abi, libbpf, objfile
from .errors import AttachError, McrError
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


class TraceConfig(ctypes.Structure):
    """struct mcr_trace_cfg (bpf/trace.c): what differs between kernels."""

    _fields_ = [(name, ctypes.c_uint32) for name in (
        "netns_inum", "off_dev_ifindex", "off_dev_net", "off_net_inum",
        "err_prog_id", "err_ifindex", "err_to_ifindex", "enq_map_id", "enq_drops")]


def _fields(event: str) -> dict[str, int]:
    """A tracepoint's field offsets, from its tracefs format."""
    text = (TRACEFS / "events/xdp" / event / "format").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"field:[^;]*?(\w+);\s*offset:(\d+);", text)}


def _config() -> TraceConfig:
    from .btf import KernelBtf

    with KernelBtf() as btf:
        offsets = (btf.offset("net_device", "ifindex"), btf.offset("net_device", "nd_net.net"),
                   btf.offset("net", "ns.inum"))
    try:
        err, enq = _fields("xdp_redirect_err"), _fields("xdp_cpumap_enqueue")
        # Drops count only on devices of this network namespace (trace.c).
        return TraceConfig(os.stat("/proc/self/ns/net").st_ino, *offsets, err["prog_id"], err["ifindex"],
                           err["to_ifindex"], enq["map_id"], enq["drops"])
    except (OSError, KeyError) as exc:
        raise McrError(f"the xdp tracepoints are not as expected: {exc}") from None


class LossTracer:
    """Counts for the programs (redirect errors) and cpumaps (steering
    queue drops) it is told to watch (watch_prog, watch_map)."""

    def __init__(self):
        ensure_tracefs()
        image = objfile.image("trace")
        if image is None:
            raise McrError("its object is not built (bpf/trace.c): run `sudo make setup`, which needs clang")
        programs = {"mcr_trace_xmit", "mcr_trace_redirect_err", "mcr_trace_enqueue"}
        if (TRACEFS / "events/xdp/xdp_redirect_map_err").is_dir():  # before Linux 6.4
            programs.add("mcr_trace_redirect_map_err")
        try:
            self._obj = objfile.Object(image, programs, rodata=bytes(_config()), what="the loss tracer")
        except AttachError as exc:
            raise McrError(str(exc)) from None
        try:
            for name in sorted(programs):
                self._obj.attach(name)
            self._loss_fd = self._obj.map_fd(abi.MAP_LOSS)
            self._progs_fd = self._obj.map_fd(abi.MAP_LOSS_PROGS)
            self._steer_fd = self._obj.map_fd(abi.MAP_LOSS_STEER)
            self._maps_fd = self._obj.map_fd(abi.MAP_LOSS_MAPS)
        except AttachError as exc:
            self._obj.close()
            raise McrError(str(exc)) from None
        self.ncpus = possible_cpus()
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
        """Count redirect errors of this program."""
        libbpf.map_update(self._progs_fd, ctypes.c_uint32(prog_id), ctypes.c_uint8(1))

    def watch_map(self, map_id: int) -> None:
        """Count the drops of this cpumap's full queues."""
        libbpf.map_update(self._maps_fd, ctypes.c_uint32(map_id), ctypes.c_uint8(1))

    def steering_drops(self) -> int:
        """Frames this relay's full cpumap queues dropped, all CPUs."""
        values = (ctypes.c_uint64 * self.ncpus)()
        libbpf.map_lookup(self._steer_fd, ctypes.c_uint32(0), values)
        return sum(values)

    def close(self) -> None:
        self._obj.close()
