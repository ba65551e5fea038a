"""Small helpers the benchmark needs beyond mcr_xdp.lab.netns: running code of
this process inside a network namespace (BPF_PROG_TEST_RUN resolves the
context's ingress_ifindex, and netlink attaches its ifindex, in the
caller's namespace), threaded NAPI, and CPU accounting from /proc."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def netns(name: str):
    """Run the calling thread inside network namespace name, then return it
    to the namespace it came from (Python 3.11 has no os.setns)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def ifindex(ns: str, dev: str) -> int:
    with netns(ns):
        import socket

        return socket.if_nametoindex(dev)


def link_drops(ns: str, dev: str) -> tuple[int, int]:
    """(rx_dropped, tx_dropped) of dev in ns: a veth counts there what its
    peer's ring or the backlog had no room for."""
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["rx"]["dropped"], stats["tx"]["dropped"]


def mac(ns: str, dev: str) -> bytes:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/address"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return bytes.fromhex(out.replace(":", ""))


# -- threaded NAPI ---------------------------------------------------------

def napi_threads(dev: str) -> dict[int, str]:
    """pid -> comm of every NAPI kthread serving a device called dev, in any
    namespace (kthread names carry the device name, not the namespace)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(f"napi/{dev}-"):
            found[int(entry.name)] = comm
    return found


def set_threaded(ns: str, dev: str, cpu: int | None) -> list[int]:
    """Switch dev's NAPI to a kthread pinned to cpu (None: back to softirq).
    Returns the pids of the new kthreads. Other namespaces may own devices
    of the same name, so the kthreads are told apart by appearing now."""
    before = napi_threads(dev)
    path = f"/sys/class/net/{dev}/threaded"
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {0 if cpu is None else 1} > {path}"],
                   check=True, capture_output=True)
    if cpu is None:
        return []
    new = [pid for pid in napi_threads(dev) if pid not in before]
    if not new:
        raise RuntimeError(f"enabling threaded NAPI on {ns}/{dev} created no kthread")
    for pid in new:
        os.sched_setaffinity(pid, {cpu})
    return new


# -- CPU accounting --------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy() -> dict[int, float]:
    """Seconds each CPU spent busy (everything but idle and iowait) since
    boot, from /proc/stat."""
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                busy[int(name[3:])] = (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    return busy


def proc_cpu(pid: int) -> float:
    """User + system seconds of one process or kthread (0 if it is gone)."""
    return proc_cpu_path(Path(f"/proc/{pid}/stat"))


def kthreads(*prefixes: str) -> list[int]:
    """pids of kernel threads whose name starts with one of prefixes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith(prefixes):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def thread_cpu(tid: int | None) -> float:
    """User + system seconds of one thread of this process."""
    if tid is None:
        return 0.0
    return proc_cpu_path(Path(f"/proc/self/task/{tid}/stat"))


def proc_cpu_path(path: Path) -> float:
    try:
        text = path.read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_pids(pid: int) -> list[int]:
    """pid and its descendants (ip netns exec -> taskset -> socat chains)."""
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for kid in kids:
        out += children_pids(int(kid))
    return out
