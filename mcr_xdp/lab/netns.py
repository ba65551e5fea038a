"""Throw-away network namespace topologies over veth, for the demo, the
end-to-end tests and the benchmarks.

Everything is created inside namespaces whose names carry a unique prefix,
so deleting the namespaces removes every veth (and any XDP program on them);
close() does that and is safe to call after a partial build.

Namespaces, links and addresses are made over netlink (pyroute2). What runs
inside a namespace (sysctl, ethtool, the relay, the traffic tools) goes
through `ip netns exec`: pyroute2 has no exec, and both bind-mount a
namespace at /run/netns/NAME, so each finds the other's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from ..errors import TopologyError

# What a failed netlink call or namespace mount raises.
_LAB_ERRORS = (NetlinkError, OSError)


def _reason(exc: Exception) -> str:
    # NetlinkError's str() is a tuple, "(17, 'File exists')": keep the words.
    return exc.args[-1] if isinstance(exc, NetlinkError) and exc.args else str(exc)


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:  # the command itself is missing: ethtool, say
        raise TopologyError(f"{' '.join(cmd)}: {exc.strerror}") from None
    if check and proc.returncode != 0:
        raise TopologyError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def existing_namespaces() -> set[str]:
    """The names `ip netns list` shows."""
    return set(pr_netns.listnetns())


@contextlib.contextmanager
def _rtnl(ns: str, what: str) -> Iterator[IPRoute]:
    """A netlink socket inside ns; a failure of the calls made on it
    becomes a TopologyError saying what was being done.

    This thread steps into ns to open the socket (which stays in the
    namespace it was opened in) and straight back. IPRoute(netns=ns) would
    fork a child to open it instead and stop that child with SIGTERM; a
    forked copy of this process runs our Python signal handlers, and the
    demo's turns SIGTERM into KeyboardInterrupt, which would unwind the
    child through the demo's own cleanup. flags=0: a name that does not
    exist fails, rather than being created."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            pr_netns.setns(ns, flags=0)
            ipr = IPRoute()
        finally:
            pr_netns.setns(home)
        with ipr:
            yield ipr
    except _LAB_ERRORS as exc:
        raise TopologyError(f"{what}: {_reason(exc)}") from None
    finally:
        os.close(home)


@dataclasses.dataclass(frozen=True)
class Veth:
    ns: str
    name: str
    address: str  # "10.200.1.1/24"
    address6: str | None = None  # "fd00:200:1::1/64"

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


class Topology:
    """A set of namespaces joined by veth pairs."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.namespaces: list[str] = []

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def add_ns(self, role: str) -> str:
        name = self.ns(role)
        if name in existing_namespaces():
            raise TopologyError(f"network namespace {name} exists already")
        # Listed before it exists: a create that fails half way (the mount
        # point made, the mount not) still leaves close() something to remove.
        self.namespaces.append(name)
        try:
            pr_netns.create(name)
        except _LAB_ERRORS as exc:
            raise TopologyError(f"creating network namespace {name}: {_reason(exc)}") from None
        with _rtnl(name, f"setting lo up in {name}") as ipr:
            ipr.link("set", index=1, state="up")  # lo is ifindex 1 in every namespace
        # Multicast from an off-subnet source must not trip reverse-path checks.
        for conf in ("all", "default"):
            self.exec(name, "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
        return name

    def link(self, a: Veth, b: Veth) -> None:
        """A veth pair between two namespaces, addressed and up, ready for
        XDP redirects either way: GRO on both ends (a veth only accepts
        redirected frames when its peer runs NAPI) and TX checksum offload
        off (a local sender's partial checksums would be wrong after an XDP
        rewrite)."""
        with _rtnl(a.ns, f"adding veth {a.name} in {a.ns}, peer {b.name} in {b.ns}") as ipr:
            ipr.link("add", ifname=a.name, kind="veth", peer={"ifname": b.name, "net_ns_fd": b.ns})
        for end in (a, b):
            with _rtnl(end.ns, f"addressing {end.name} in {end.ns}") as ipr:
                index = ipr.link_lookup(ifname=end.name)[0]
                address, prefixlen = end.address.split("/")
                ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen))
                if end.address6:
                    address6, prefixlen6 = end.address6.split("/")
                    # NODAD: usable at once, no tentative period.
                    ipr.addr("add", index=index, address=address6, prefixlen=int(prefixlen6), flags=IFA_F_NODAD)
                ipr.link("set", index=index, state="up")
            self.exec(end.ns, "ethtool", "-K", end.name, "gro", "on", "tx", "off")
            self.exec(end.ns, "sysctl", "-qw", f"net.ipv4.conf.{end.name}.rp_filter=0")

    def exec(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run("ip", "netns", "exec", ns, *cmd, check=check)

    def popen(self, ns: str, *cmd: str, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)

    def python(self, ns: str, *args: str, **kwargs) -> subprocess.Popen:
        """This interpreter, inside ns (the venv comes along)."""
        return self.popen(ns, sys.executable, *args, **kwargs)

    def snmp6(self, ns: str) -> dict[str, int]:
        """/proc/net/snmp6 (Udp6InCsumErrors, ...)."""
        return {k: int(v) for k, v in (line.split() for line in self.exec(ns, "cat", "/proc/net/snmp6").stdout
                                       .splitlines() if line.strip())}

    def snmp(self, ns: str, proto: str = "Udp") -> dict[str, int]:
        """A row of /proc/net/snmp (Udp: InDatagrams, InCsumErrors, ...)."""
        rows = [line.split()[1:] for line in self.exec(ns, "cat", "/proc/net/snmp").stdout.splitlines()
                if line.startswith(f"{proto}:")]
        return {k: int(v) for k, v in zip(rows[0], rows[1])}

    def igmp_groups(self, ns: str, iface: str) -> set[str]:
        """IPv4 groups joined on iface in ns, from /proc/net/igmp."""
        groups, current = set(), None
        for line in self.exec(ns, "cat", "/proc/net/igmp").stdout.splitlines()[1:]:
            if not line.startswith(("\t", " ")):
                fields = line.split()
                current = fields[1].rstrip(":") if len(fields) > 1 else None
            elif current == iface:
                hexaddr = line.split()[0]
                groups.add(".".join(str(b) for b in bytes.fromhex(hexaddr)[::-1]))
        return groups

    def close(self) -> None:
        """Remove every namespace of this topology, whatever state a build
        left it in. Nothing is raised (this runs in finalizers, often after
        a failure): callers that must know check existing_namespaces().
        As with `ip netns del`, a process still inside keeps its namespace
        alive, unnamed, until it ends."""
        for name in reversed(self.namespaces):
            with contextlib.suppress(OSError):  # already gone, or never made
                pr_netns.remove(name)
        self.namespaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Chain(Topology):
    """src --veth-- relay --veth-- sink: the relay's input is `in0`, its
    output `out0`; the sender uses `veth0` in src, the receiver `veth0` in
    sink."""

    IN, OUT = "in0", "out0"

    def __init__(self, prefix: str, outputs: int = 1, inputs: int = 1):
        super().__init__(prefix)
        self.outputs = outputs
        # Input i > 0: its own sender namespace src<i> behind relay interface in<i>.
        self.srcs = [Veth(self.ns(f"src{i}" if i else "src"), "veth0", f"10.200.{1 + i}.1/24",
                          f"fd00:200:{1 + i}::1/64") for i in range(inputs)]
        self.relay_ins = [Veth(self.ns("relay"), f"in{i}", f"10.200.{1 + i}.2/24", f"fd00:200:{1 + i}::2/64")
                          for i in range(inputs)]
        self.src, self.relay_in = self.srcs[0], self.relay_ins[0]
        self.relay_out = [Veth(self.ns("relay"), f"out{i}", f"10.201.{i}.1/24", f"fd00:201:{i}::1/64")
                          for i in range(outputs)]
        self.sink = [Veth(self.ns(f"sink{i}" if outputs > 1 else "sink"), "veth0", f"10.201.{i}.2/24",
                          f"fd00:201:{i}::2/64") for i in range(outputs)]

    def build(self) -> Chain:
        try:
            for end in [*self.srcs, self.relay_in, *self.sink]:
                self.add_ns(end.ns[len(self.prefix) + 1:])
            for src, relay_in in zip(self.srcs, self.relay_ins):
                self.link(src, relay_in)
            for out, sink in zip(self.relay_out, self.sink):
                self.link(out, sink)
        except BaseException:
            self.close()
            raise
        return self


def remove_orphans(tags=("mcrt", "mcrd", "mcr-demo", "mcrx", "mcrb")) -> list[str]:
    """Delete namespaces that a killed process of ours left behind: names
    carry the creating pid (unique_prefix), so those whose pid is gone are
    orphans. Returns what was removed."""
    removed = []
    rx = re.compile(rf"^(?:{'|'.join(map(re.escape, tags))})-(\d+)-\d+-")
    for name in sorted(existing_namespaces()):
        m = rx.match(name)
        if m and not Path(f"/proc/{m[1]}").exists():
            with contextlib.suppress(OSError):
                pr_netns.remove(name)
            removed.append(name)
    return removed


def unique_prefix(tag: str = "mcr") -> str:
    """Short and unique per process and call: namespace names show in
    `ip netns list`, so keep them recognisable."""
    unique_prefix.counter = getattr(unique_prefix, "counter", 0) + 1
    return f"{tag}-{os.getpid()}-{unique_prefix.counter}"
