"""The userspace fallback (--mode userspace): worker processes reading
AF_PACKET rings in one PACKET_FANOUT group per input interface.

The relay process creates every socket itself: a ring, a drop-all filter,
the binding, the fanout group (an id the kernel makes unique), and only
then the filter that admits the input's rule traffic, so no frame is ever
delivered to two sockets. It hands each worker its socket of every input
(SCM_RIGHTS over the worker's control socket) and keeps its own copy to
change the filter when rules change. Fanout delivers each frame to exactly
one socket and a worker sends exactly one frame per output: one copy out
per packet in, whatever the number of workers.

Workers are started once, at the first userspace input; rule changes reach
them as messages over their control sockets, acknowledged before the relay
goes on (a new rule is in every worker before the filter admits its
traffic; a deleted one leaves the filter before the workers forget it).
Counters live in shared memory, one block per worker, in the datapath's
layout (counters.Counters is the Maps-like object stats.collect reads).

A worker that dies (killed, out of memory) costs only the frames in its
rings: its sockets leave their fanout groups, so the others take its share
at once, and heal() starts a new worker in its place (new sockets joined to
the same groups, every rule, then the filter), counting on in the same
counter block.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import socket
import subprocess
import sys
import time

from .. import abi
from ..backends import MergeAllocator
from ..errors import AttachError, BusyError, RuleError, UsageError
from ..logs import Event, Level
from . import cbpf, packet, streams
from . import counters as cnt
from .forward import entry_message

FANOUT_MODES = tuple(packet.FANOUT)
SYNC_TIMEOUT = 10.0  # seconds a worker may take to start or acknowledge
RESTART_GAP = 1.0  # seconds between two starts of one worker: one that dies at once does not loop


@dataclasses.dataclass
class _Input:
    ifindex: int
    ifname: str
    group: int  # fanout group id
    socks: list[socket.socket]  # one per worker, the relay's copies
    endpoints: set  # (group, port) of its rules: the filter
    lock: socket.socket  # keeps a second userspace relay off this input
    ring_drops: int = 0  # frames the kernel found no ring space for, all workers


@dataclasses.dataclass
class _Rule:
    ifindex: int
    endpoint: tuple[str, int]
    message: dict
    merge_name: str | None = None


class Fallback:
    def __init__(self, workers: int | None = None, fanout: str = "hash"):
        if fanout not in packet.FANOUT:
            raise UsageError(f"--fanout {fanout!r}: expected one of {', '.join(FANOUT_MODES)}")
        n = workers if workers is not None else len(os.sched_getaffinity(0))
        if n < 1:
            raise UsageError("--workers must be at least 1")
        self.nworkers = n
        self.fanout = fanout
        self.inputs: dict[int, _Input] = {}
        self.rules: dict[int, _Rule] = {}
        self.procs: list[subprocess.Popen] = []
        self.controls: list[socket.socket] = []
        self.dead: set[int] = set()
        self.counters: cnt.Counters | None = None
        self._counters_fd: int | None = None  # kept to hand a restarted worker its block
        self.states: streams.States | None = None  # the stream checks' state (health, merges)
        self._free_health = set(range(streams.HEALTH_SLOTS))
        self._merges = MergeAllocator(abi.MAX_MERGES)
        self._seq = 0
        self.restarts = 0
        self._started: dict[int, float] = {}  # worker index -> when last restarted (monotonic)
        # worker index -> what relays its frames: "compiled" (native.py) or "python"
        self.inner_loops: dict[int, str] = {}

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the workers (once)."""
        self._counters_fd = cnt.create(self.nworkers)
        try:
            self.states = streams.States(streams.create())
            self.counters = cnt.Counters(self._counters_fd, self.nworkers, self.states)
            for i in range(self.nworkers):
                proc, control = self._spawn(i)
                self.procs.append(proc)
                self.controls.append(control)
            for i in range(self.nworkers):
                self.inner_loops[i] = self._expect(i, "ready").get("inner_loop", "python")
        except BaseException:
            self.close()
            raise

    def _spawn(self, i: int) -> tuple[subprocess.Popen, socket.socket]:
        """Worker i's process, with its control socket and counter block."""
        fd, states = self._counters_fd, self.states.fd
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mcr_xdp.fallback.worker", str(i), str(theirs.fileno()), str(fd),
                 str(states), str(os.getpid())],
                pass_fds=(theirs.fileno(), fd, states), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return proc, mine

    def heal(self) -> list[Event]:
        """Start a new worker in place of each that died; an event for each."""
        self.reap()
        events = []
        for i in sorted(self.dead):
            if time.monotonic() - self._started.get(i, -RESTART_GAP) < RESTART_GAP:
                continue  # the next heal() tries again
            self._started[i] = time.monotonic()
            old = self.procs[i].pid
            try:
                self._restart(i)
            except (OSError, AttachError) as exc:
                events.append(Event(Level.ERROR, f"userspace worker {i} (pid {old}) died; starting another failed: "
                                                 f"{exc}"))
                continue
            self.restarts += 1
            events.append(Event(Level.WARNING, f"userspace worker {i} (pid {old}) died: worker {i} runs again "
                                f"(pid {self.procs[i].pid}), the other workers carried its share meanwhile"))
        return events

    def _restart(self, i: int) -> None:
        """Worker i again: a new process on the same counter block, a new
        socket in each input's fanout group (filtering everything until the
        worker has every rule), then the inputs' filters."""
        self.procs[i].wait()
        self.controls[i].close()
        self.procs[i], self.controls[i] = self._spawn(i)
        socks = {}
        try:
            self.inner_loops[i] = self._expect(i, "ready").get("inner_loop", "python")
            for ifindex, inp in self.inputs.items():
                socks[ifindex] = packet.open_rx(ifindex)
                packet.join_group(socks[ifindex], inp.group, self.fanout)
                socket.send_fds(self.controls[i], [json.dumps({"op": "input", "ifindex": ifindex}).encode()],
                                [socks[ifindex].fileno()])
            for r in self.rules.values():
                self.controls[i].send(json.dumps(r.message).encode())
            self._seq += 1
            self.controls[i].send(json.dumps({"op": "sync", "seq": self._seq}).encode())
            self._expect(i, "seq", self._seq)
        except BaseException:
            for sock in socks.values():
                sock.close()
            self.procs[i].kill()  # still dead: the next heal() tries again
            raise
        for ifindex, sock in socks.items():
            self.inputs[ifindex].socks[i] = sock
        self.dead.discard(i)
        for inp in self.inputs.values():
            self._refilter(inp)

    def close(self) -> None:
        """Stop the workers and close every socket. Safe to call twice."""
        for control in self.controls:
            try:
                control.send(json.dumps({"op": "exit"}).encode())
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for control in self.controls:
            control.close()
        self.procs.clear()
        self.controls.clear()
        for inp in self.inputs.values():
            for sock in inp.socks:
                sock.close()
            _unlock(inp.lock)
        self.inputs.clear()
        if self.counters is not None:
            self.counters.close()
            self.counters = None
        if self._counters_fd is not None:
            os.close(self._counters_fd)
            self._counters_fd = None
        if self.states is not None:
            self.states.close()
            os.close(self.states.fd)
            self.states = None

    # -- worker messages ---------------------------------------------------

    def _send(self, msg: dict, fds: dict[int, int] | None = None) -> None:
        """msg to every live worker; fds: worker index -> fd to pass along."""
        data = json.dumps(msg).encode()
        for i, control in enumerate(self.controls):
            if i in self.dead:
                continue
            try:
                if fds is not None:
                    socket.send_fds(control, [data], [fds[i]])
                else:
                    control.send(data)
            except OSError:
                self._lost(i)

    def _expect(self, i: int, key: str, value=None) -> dict:
        """Worker i's next message with key (and value); {} if it died."""
        control = self.controls[i]
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([control], [], [], left)[0]:
                raise AttachError(f"userspace worker {i} did not answer within {SYNC_TIMEOUT:.0f} s")
            try:
                data = control.recv(4096)
            except OSError:  # reset: the worker died (SIGTERM to the whole group, OOM)
                data = b""
            if not data:
                if key == "ready":
                    raise AttachError(f"userspace worker {i} exited at start (see its message above)")
                self._lost(i)
                return {}
            msg = json.loads(data)
            if key in msg and (value is None or msg[key] == value):
                return msg

    def _sync(self) -> None:
        """Wait until every live worker has handled every message so far."""
        self._seq += 1
        self._send({"op": "sync", "seq": self._seq})
        for i in range(self.nworkers):
            if i not in self.dead:
                self._expect(i, "seq", self._seq)

    def _lost(self, i: int) -> None:
        """A worker died: close the relay's copies of its sockets, so its
        share of each fanout group goes to the others."""
        if i in self.dead:
            return
        self.dead.add(i)
        for inp in self.inputs.values():
            inp.socks[i].close()

    def reap(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                self._lost(i)

    # -- inputs ------------------------------------------------------------

    def add_input(self, ifindex: int, ifname: str) -> int:
        """Start relaying ifindex; returns its fanout group id."""
        lock = _lock(ifindex, ifname)
        socks = []
        try:
            socks = [packet.open_rx(ifindex) for _ in range(self.nworkers)]
            group = packet.join_fanout(socks, self.fanout)
        except OSError as exc:
            for sock in socks:
                sock.close()
            _unlock(lock)
            raise AttachError(f"cannot relay from {ifname} through packet sockets: {exc.strerror}") from None
        inp = _Input(ifindex, ifname, group, socks, set(), lock)
        self.inputs[ifindex] = inp
        self._send({"op": "input", "ifindex": ifindex}, {i: s.fileno() for i, s in enumerate(socks)})
        self._sync()
        for r in self.rules.values():
            if r.ifindex == ifindex:
                inp.endpoints.add(r.endpoint)
        self._refilter(inp)
        return group

    def remove_input(self, ifindex: int) -> None:
        inp = self.inputs.pop(ifindex, None)
        if inp is None:
            return
        for sock in inp.socks:
            if sock.fileno() != -1:
                cbpf.attach(sock, cbpf.drop_all())
        self._send({"op": "drop-input", "ifindex": ifindex})
        self._sync()
        for sock in inp.socks:
            sock.close()
        _unlock(inp.lock)

    def _refilter(self, inp: _Input) -> None:
        prog = cbpf.rule_filter(inp.endpoints) if inp.endpoints else cbpf.drop_all()
        for i, sock in enumerate(inp.socks):
            if i not in self.dead:
                cbpf.attach(sock, prog)

    # -- rules -------------------------------------------------------------

    def put_rule(self, index: int, ifindex: int, rule, outputs, fresh: bool, police=None) -> None:
        """Install or replace the rule of index (rules.Rule, its encoded
        outputs and policer, an abi.Police); fresh: a new rule, whose
        counters start at zero."""
        msg = entry_message(index, ifindex, rule, outputs, police)
        if fresh:
            self.counters.reset_rule(index)
        old = self.rules.get(index)
        was = (old.message.get("health") or {}).get("kind") if old is not None else None
        msg["health"] = self._health_slot(index, rule.health_kind, fresh or was != rule.health_kind)
        msg["merge"] = self._merge_key(index, rule.merge_name, old.merge_name if old is not None else None)
        self._send(msg)
        self._sync()
        endpoint = (str(rule.groups), rule.port)
        self.rules[index] = _Rule(ifindex, endpoint, msg, rule.merge_name)
        inp = self.inputs.get(ifindex)
        if inp is not None and endpoint not in inp.endpoints:
            inp.endpoints.add(endpoint)
            self._refilter(inp)

    def delete_rule(self, index: int) -> None:
        r = self.rules.pop(index, None)
        if r is None:
            return
        inp = self.inputs.get(r.ifindex)
        if inp is not None and not any(o.ifindex == r.ifindex and o.endpoint == r.endpoint
                                       for o in self.rules.values()):
            inp.endpoints.discard(r.endpoint)
            self._refilter(inp)
        self._send({"op": "del", "id": index})
        self._sync()
        self._health_slot(index, None, False)
        self._merge_key(index, None, r.merge_name)

    def _health_slot(self, index: int, kind: str | None, new: bool) -> dict | None:
        """The health state of the rule of index (kind: None for none), from
        nothing when new; the slots given out are the counters' health_slots."""
        slots = self.counters.health_slots
        slot = slots.get(index)
        if kind is None:
            if slot is not None:
                del slots[index]
                self._free_health.add(slot)
            return None
        if slot is None:
            if not self._free_health:
                raise RuleError(f"more than {streams.HEALTH_SLOTS} rules with ;health= or merge legs")
            slot = slots[index] = min(self._free_health)
            self._free_health.discard(slot)
            new = True
        if new:
            self.states.reset(slot)
        return {"kind": kind, "slot": slot}

    def _merge_key(self, index: int, name: str | None, old_name: str | None) -> int | None:
        """The key of the merged stream of the rule of index (name: None for
        none; old_name: the one it had); the window starts empty with the
        stream's first leg."""
        if old_name is not None and old_name != name:
            self.counters.merge_keys.pop(index, None)
            self._merges.release(index, old_name)
        if name is None:
            return None
        key, new = self._merges.take(index, name)
        if new:
            self.states.reset(streams.merge_slot(key))
        self.counters.merge_keys[index] = key
        return key

    # -- observation -------------------------------------------------------

    def ring_drops(self) -> dict[str, int]:
        """Per input: frames lost because a worker's ring was full (the
        worker fell behind), which no worker could count."""
        for inp in self.inputs.values():
            for sock in inp.socks:
                if sock.fileno() != -1:
                    inp.ring_drops += packet.ring_drops(sock)
        return {inp.ifname: inp.ring_drops for inp in self.inputs.values()}

    def status(self) -> dict:
        self.reap()
        return {
            "ring_drops": self.ring_drops(),
            "workers": [
                {"worker": i, "pid": p.pid, "alive": i not in self.dead, **self.counters.worker_totals(i)}
                for i, p in enumerate(self.procs)
            ],
            "restarts": self.restarts,
            # The workers' inner loop: "compiled" (fallback/native.py), else "python" (slower, ~0.15 Mpps).
            "inner_loop": "compiled" if self.inner_loops and all(v == "compiled" for v in self.inner_loops.values())
            else "python",
            "fanout": self.fanout,
            "fanout_groups": {inp.ifname: inp.group for inp in self.inputs.values()},
        }


def _lock(ifindex: int, ifname: str) -> socket.socket:
    """An exclusive claim on an input of this network namespace: two
    userspace relays on one input would both send every packet. An
    abstract Unix socket name is per network namespace and goes away with
    its process, however that ends: nothing to clean up."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(f"\0mcr-xdp/userspace/{ifindex}")
    except OSError:
        sock.close()
        raise BusyError(f"another userspace relay reads {ifname}: stop it first") from None
    return sock


def _unlock(lock: socket.socket) -> None:
    lock.close()
