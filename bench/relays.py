"""Every relay the benchmark compares, behind one small interface: start it
on a chain for some number of streams, say where stream i comes out, stop
it, and tell which processes do its work (for CPU accounting).

Stream i enters as group IN_GROUP + i, port IN_PORT. Relays that can
rewrite send it out as OUT_GROUP + i, port OUT_PORT; smcroute cannot and
keeps the group and port.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
import time

from mcr_xdp import libbpf
from mcr_xdp.errors import McrError, TopologyError
from mcr_xdp.lab.netns import Chain
from mcr_xdp.lab.proc import Proc, venv_bin

from .sink import Sink

IN_GROUP, IN_PORT = "239.1.0.1", 5001
OUT_GROUP, OUT_PORT = "239.2.0.1", 5002
READY_TIMEOUT = 120.0


class NotAvailable(Exception):
    """This relay (or this scenario for it) cannot run here; the message
    says why and goes into the table."""


def group(base: str, i: int) -> str:
    return str(ipaddress.IPv4Address(base) + i)


class Relay:
    key = ""  # short id used in JSON
    label = ""  # name in the table
    max_streams = 1 << 16
    max_outputs = 1
    userspace = False  # does the relay's work run in its own processes?
    rtp = False  # are its input frames RTP (the generator in RTP mode)?
    # One native XDP program on the input does all its work, so a swapped
    # block can take turns with it by replacing programs (xdp_program).
    swappable = False
    attaches_itself = False  # its program is attached by start(), whatever attach says
    untraced = False  # runs without the loss tracer a user's relay has (McrXdp in a swapped block)

    def __init__(self):
        self.topo: Chain | None = None
        self.procs: list[Proc] = []
        self.streams = 0
        self.outputs = 1
        self.attach_input = True  # start() attaches its input program (False: loaded only, for swapping)
        self.swapped = False  # started for a swapped block (start(attach=False))

    def unavailable(self) -> str | None:
        """Why this relay cannot run on this machine, or None."""
        return None

    def start(self, topo: Chain, streams: int, outputs: int = 1, attach: bool = True) -> None:
        """attach=False, for swappable relays that can wait: load the input
        program without attaching it (xdp_program is then its fd)."""
        if streams > self.max_streams:
            raise NotAvailable(f"{self.label} is measured with up to {self.max_streams} stream(s)")
        if outputs > self.max_outputs:
            raise NotAvailable(f"{self.label}: fan-out to {outputs} outputs is not available")
        self.topo, self.streams, self.outputs = topo, streams, outputs
        self.attach_input = attach or not self.swappable or self.attaches_itself
        self.swapped = not attach
        self._start()

    def xdp_program(self) -> int | None:
        """A swappable relay's input program (an fd it owns), once started."""
        return None

    def enter(self) -> None:
        """A swapped block's turn of this relay begins (its program is on)."""

    def leave(self) -> None:
        """... and ends, before the next relay's program goes on."""

    def _start(self) -> None:
        raise NotImplementedError

    def out_endpoint(self, i: int = 0) -> tuple[str, int]:
        return group(OUT_GROUP, i), OUT_PORT

    def own_counter(self):
        """A counter function when the relay itself is where packets are
        counted (the ceiling); None to count at the sinks."""
        return None

    def pids(self) -> list[int]:
        """Processes doing the relay's forwarding work (userspace relays)."""
        return []

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def _popen(self, *cmd: str, cpu: int | None = None, **kwargs) -> Proc:
        if cpu is not None:
            cmd = ("taskset", "-c", str(cpu), *cmd)
        proc = Proc(self.topo.popen(self.topo.relay_in.ns, *cmd, **kwargs))
        self.procs.append(proc)
        return proc


class Ceiling(Relay):
    """XDP_DROP at the relay's input: what the generator and the input veth
    deliver when relaying costs nothing."""

    key, label = "ceiling", "ceiling (XDP_DROP at input)"

    def __init__(self):
        super().__init__()
        self.sink: Sink | None = None

    def _start(self) -> None:
        self.sink = Sink()
        self.sink.attach(self.topo.relay_in.ns, self.topo.IN)

    def own_counter(self):
        return lambda: self.sink.count()[0]

    def stop(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None


class BareRedirect(Relay):
    """Reference: an XDP program that sends every frame straight to the
    output, no parsing, no rewrite. What the second veth hop costs."""

    key, label = "bare-redirect", "bare XDP redirect (reference)"
    swappable = True

    def __init__(self):
        super().__init__()
        self.prog: Sink | None = None

    def out_endpoint(self, i: int = 0) -> tuple[str, int]:
        return group(IN_GROUP, i), IN_PORT

    def _start(self) -> None:
        from .nsutil import ifindex

        out = self.topo.relay_out[0]
        self.prog = Sink(redirect_to=ifindex(out.ns, out.name))
        if self.attach_input:
            self.prog.attach(self.topo.relay_in.ns, self.topo.IN)

    def xdp_program(self) -> int | None:
        return None if self.prog is None else self.prog.prog_fd

    def stop(self) -> None:
        if self.prog is not None:
            self.prog.close()
            self.prog = None


class RewriteRedirect(BareRedirect):
    """Reference: the least a rewriting relay does (parse, rewrite group,
    port, MAC and TTL with both checksums, redirect), no lookup, no
    counter. What a rewrite costs on top of the bare redirect: the floor
    under mcr-xdp's program."""

    key, label = "rewrite-redirect", "rewrite + redirect, no lookup (floor)"
    max_streams = 1  # one output group

    def out_endpoint(self, i: int = 0) -> tuple[str, int]:
        return Relay.out_endpoint(self, i)

    def _start(self) -> None:
        from .nsutil import ifindex

        out = self.topo.relay_out[0]
        self.prog = Sink(redirect_to=ifindex(out.ns, out.name), rewrite_to=(OUT_GROUP, OUT_PORT))
        if self.attach_input:
            self.prog.attach(self.topo.relay_in.ns, self.topo.IN)


class TracedBareRedirect(BareRedirect):
    """Reference: the bare redirect with one more mcr-xdp loss tracer on
    the xdp_devmap_xmit tracepoint during its turns (bpf/trace.c's
    per-packet part: its other programs fire on errors and cpumap
    enqueues only). Paired with the bare redirect in a swapped block, what
    the tracer costs: there mcr-xdp runs without its own (McrXdp.untraced),
    so no other turn pays one. Loaded once; a turn attaches it, its end
    detaches it."""

    key, label = "bare-redirect-traced", "bare XDP redirect + a loss tracer"
    TRACEPOINT, PROG = "xdp_devmap_xmit", "mcr_trace_xmit"

    def __init__(self):
        super().__init__()
        self.tracer = None  # the loaded object
        self.link: int | None = None  # attached while its turn lasts

    def _start(self) -> None:
        from mcr_xdp import objfile, trace

        super()._start()
        try:
            image = objfile.image("trace")
            if image is None:
                raise NotAvailable("the loss tracer's object is not built (bpf/trace.c): run `sudo make setup`")
            trace.ensure_tracefs()
            self.tracer = objfile.Object(image, {self.PROG}, rodata=bytes(trace._config()), what="the loss tracer")
        except (McrError, NotAvailable) as exc:
            self.stop()
            raise NotAvailable(str(exc)) from None
        if self.attach_input:  # measured on its own: the tracer is on for the whole run
            self.enter()

    def enter(self) -> None:
        self.link = libbpf.raw_tracepoint_open(self.TRACEPOINT, self.tracer.prog_fd(self.PROG))

    def leave(self) -> None:
        if self.link is not None:
            os.close(self.link)
            self.link = None

    def stop(self) -> None:
        self.leave()
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None
        super().stop()


class McrXdp(Relay):
    """mcr-xdp through its CLI, as a user starts it."""

    max_outputs = 8

    def __init__(self, mode: str = "native", cli_mode: str | None = None, steer_cpus: str | None = None,
                 option: str | None = None):
        """option: a rule option its rules carry (health=rtp, merge=rtp):
        the generator then sends RTP."""
        super().__init__()
        self.mode, self.cli_mode, self.steer_cpus, self.option = mode, cli_mode, steer_cpus, option
        self.key = f"mcr-xdp-{mode}" + ("-steer" if steer_cpus else "") + (
            f"-{option.partition('=')[0]}" if option else "")
        self.userspace = mode == "userspace"
        self.rtp = option is not None
        self.label = f"mcr-xdp {mode}" + (" XDP" if cli_mode is None else "") + (
            f", steering to CPUs {steer_cpus}" if steer_cpus else "") + (f", ;{option}" if option else "")
        self.prog_id: int | None = None
        self.swappable = self.attaches_itself = mode == "native" and cli_mode is None and not steer_cpus
        self._prog_fd: int | None = None

    def unavailable(self) -> str | None:
        if self.cli_mode is not None and not has_mode_option():
            return f"not available yet (mcr-xdp attach has no --mode; {self.mode} mode has not landed)"
        if self.steer_cpus and "--steer-cpus" not in attach_options():
            return "not available yet (mcr-xdp attach has no --steer-cpus; CPU steering has not landed)"
        return None

    def rules(self) -> list[str]:
        outs = [self.topo.relay_out[o].name for o in range(self.outputs)]
        rules = []
        for i in range(self.streams):
            targets = ",".join(f"{name}/{group(OUT_GROUP, i)}:{OUT_PORT}" for name in outs)
            option = f";{self.option}" if self.option else ""
            rules += ["--rule", f"{group(IN_GROUP, i)}:{IN_PORT}={targets}{option}"]
        return rules

    def _start(self) -> None:
        mode = ["--mode", self.cli_mode] if self.cli_mode else ["--xdp-mode", self.mode]
        if self.steer_cpus:
            mode += ["--steer-cpus", self.steer_cpus]
        # A control socket of its own, so it never meets a relay someone else runs.
        sock = ["--socket", f"/run/mcr-bench-{os.getpid()}-{self.key}.sock"] if "--socket" in attach_options() else []
        # Without its loss tracer (--no-loss-tracer) in a swapped block: its
        # daemon runs through every relay's turns, so its tracer would be
        # paid by all of them; the block measures a tracer apart.
        self.untraced = self.swapped and "--no-loss-tracer" in attach_options()
        untraced = ["--no-loss-tracer"] if self.untraced else []
        proc = self._popen(venv_bin("mcr-xdp"), "attach", self.topo.IN, *self.rules(), *mode, *sock, *untraced,
                           "--interval", "3600")
        try:
            proc.wait_for("relaying", timeout=READY_TIMEOUT)
        except TopologyError as exc:
            self.stop()
            raise NotAvailable(_first_error(str(exc))) from None
        for line in proc.lines:
            if m := re.search(r"program id (\d+)", line):
                self.prog_id = int(m[1])
            if "XDP" in line and self.cli_mode is None and f"{self.mode} mode" not in line:
                self.stop()
                raise NotAvailable(f"asked for {self.mode} XDP, got: {line}")

    def pids(self) -> list[int]:
        # The attach process and its children: the control plane (idle while
        # measuring) and, in userspace mode, the forwarding workers.
        return [p.popen.pid for p in self.procs]

    def xdp_program(self) -> int | None:
        if self._prog_fd is None and self.prog_id is not None:
            self._prog_fd = libbpf.prog_fd_by_id(self.prog_id)
        return self._prog_fd

    def stop(self) -> None:
        if self._prog_fd is not None:
            os.close(self._prog_fd)
            self._prog_fd = None
        super().stop()


class Socat(Relay):
    """The predecessor's reference baseline: one socat per stream, receiving
    on a socket joined to the group and sending to the new group."""

    key, label = "socat", "socat"
    max_streams = 1
    userspace = True

    def __init__(self, cpu: int = 1):
        super().__init__()
        self.cpu = cpu

    def unavailable(self) -> str | None:
        return None if shutil.which("socat") else "socat is not installed (apt-get install socat)"

    def _start(self) -> None:
        out = self.topo.relay_out[0]
        recv = f"UDP4-RECV:{IN_PORT},ip-add-membership={IN_GROUP}:{self.topo.IN},reuseaddr"
        send = f"UDP4-SENDTO:{OUT_GROUP}:{OUT_PORT},ip-multicast-if={out.ip},ip-multicast-ttl=16"
        self._popen("socat", "-u", recv, send, cpu=self.cpu, stderr=subprocess.STDOUT)
        _wait_udp_socket(self.topo, IN_PORT, self.procs[-1])

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self.procs]


class Smcroute(Relay):
    """Kernel multicast routing, set up by smcrouted: (S,G)-less (*,G)
    routes from the input to the outputs. It cannot rewrite the group, so
    it is measured same-group."""

    key, label = "smcroute", "kernel mroute (smcroute)"
    max_outputs = 8

    def __init__(self):
        super().__init__()
        self.tmp: str | None = None

    def unavailable(self) -> str | None:
        if not (shutil.which("smcrouted") and shutil.which("smcroutectl")):
            return "smcroute is not installed (apt-get install smcroute)"
        return None

    def out_endpoint(self, i: int = 0) -> tuple[str, int]:
        return group(IN_GROUP, i), IN_PORT

    def _start(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="mcr-bench-smcroute-")
        outs = " ".join(self.topo.relay_out[o].name for o in range(self.outputs))
        lines = [f"phyint {self.topo.IN} enable"]
        lines += [f"phyint {self.topo.relay_out[o].name} enable" for o in range(self.outputs)]
        lines += [f"mroute from {self.topo.IN} group {group(IN_GROUP, i)} to {outs}" for i in range(self.streams)]
        conf = os.path.join(self.tmp, "smcroute.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        ident = os.path.basename(self.tmp)
        self.sock = os.path.join(self.tmp, "smcroute.sock")
        self._popen("smcrouted", "-n", "-N", "-f", conf, "-i", ident, "-u", self.sock,
                    "-P", os.path.join(self.tmp, "smcroute.pid"), "-l", "err", stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            show = self.topo.exec(self.topo.relay_in.ns, "smcroutectl", "-u", self.sock, "show", "routes",
                                  check=False)
            if show.returncode == 0 and show.stdout.count(group(IN_GROUP, self.streams - 1)) >= 1:
                return
            if self.procs[-1].popen.poll() is not None or time.monotonic() > deadline:
                err = " ".join(self.procs[-1].lines).strip()
                self.stop()
                raise NotAvailable(f"smcrouted did not install its routes: {err or show.stderr.strip()}")
            time.sleep(0.2)

    def stop(self) -> None:
        super().stop()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _wait_udp_socket(topo: Chain, port: int, proc: Proc, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = topo.exec(topo.relay_in.ns, "ss", "-Hlun", f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        if proc.popen.poll() is not None:
            raise NotAvailable(f"{proc.popen.args[3:]} exited: {' '.join(proc.lines).strip()}")
        time.sleep(0.1)
    raise NotAvailable(f"no socket on UDP port {port} after {timeout:g} s")


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower():
            return line.strip().split("error: ", 1)[-1]
    return text.strip().splitlines()[-1] if text.strip() else "failed to start"


_ATTACH_OPTIONS: set[str] | None = None


def attach_options() -> set[str]:
    """The long options `mcr-xdp attach` offers (--mode, --socket appear as
    those features land)."""
    global _ATTACH_OPTIONS
    if _ATTACH_OPTIONS is None:
        env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
        text = subprocess.run([venv_bin("mcr-xdp"), "attach", "--help"], capture_output=True, text=True,
                              env=env).stdout
        _ATTACH_OPTIONS = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", text))
    return _ATTACH_OPTIONS


def has_mode_option() -> bool:
    """Whether `mcr-xdp attach` offers --mode (the TC and userspace modes)."""
    return "--mode" in attach_options()


def all_relays(socat_cpu: int = 1) -> list[Relay]:
    """In measurement order: the ceiling first, since fixed-rate points of
    the others are fractions of it."""
    return [Ceiling(), BareRedirect(), RewriteRedirect(), TracedBareRedirect(), McrXdp("native"),
            McrXdp("native", steer_cpus="0,1"),
            McrXdp("generic"), McrXdp("tc", cli_mode="tc"), McrXdp("userspace", cli_mode="userspace"),
            Socat(socat_cpu), Smcroute(),
            McrXdp("native", option="health=rtp"), McrXdp("native", option="merge=rtp")]
