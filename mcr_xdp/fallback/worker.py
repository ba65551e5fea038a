"""One fallback worker process: `python -m mcr_xdp.fallback.worker INDEX
CONTROL_FD COUNTERS_FD STATES_FD RELAY_PID`, started by the relay
(mcr_xdp.fallback.Fallback), never by hand.

It owns, per input interface, one receive socket of that input's fanout
group (sent by the relay over the control socket, with the filter already
on it) and, per output interface, one packet socket it sends rewritten
frames through. Everything runs in one thread: a poll over the rings and
the control socket. It ends when the relay says so or goes away.

Each ring block goes to the compiled inner loop first (native.py,
fastpath.c), which relays the common frames and leaves the rest to the
Python below (forward.Table); without the library, Python relays them all.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import sys

from .. import logs
from . import counters as cnt
from . import native
from .forward import DROP_NO_NEIGH, DROP_NO_OUTPUT, REDIRECT, REDIRECT_MULTI, Table
from .packet import BLOCK_NR, TP_STATUS_CSUMNOTREADY, Ring
from .streams import States

PR_SET_PDEATHSIG = 1
MAX_MSG = 1 << 16
MAX_FDS = 4


class Worker:
    def __init__(self, index: int, control: socket.socket, counters_fd: int, states_fd: int):
        self.index = index
        self.control = control
        self._map, self.c = cnt.open_block(counters_fd, index)
        os.close(counters_fd)
        self.states = States(states_fd)
        self.table = Table(self.states)
        lib = native.load()
        self.fast = native.Fast(lib, self._map, (REDIRECT, REDIRECT_MULTI, DROP_NO_OUTPUT, DROP_NO_NEIGH)) \
            if lib is not None else None
        self.messages: dict[int, dict] = {}  # rule id -> its put message (the C table is rebuilt from them)
        self.rings: dict[int, tuple[int, Ring]] = {}  # socket fd -> (input ifindex, ring)
        self.tx: dict[int, socket.socket] = {}  # output ifindex -> socket
        self.poll = select.poll()
        self.poll.register(control.fileno(), select.POLLIN)
        self.running = True

    # -- control -----------------------------------------------------------

    def on_control(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MAX_MSG, MAX_FDS)
        except BlockingIOError:
            return
        if not data:
            self.running = False  # the relay is gone
            return
        msg = json.loads(data)
        op = msg["op"]
        if op == "put":
            entry = self.table.put(msg)
            fresh = [self._tx(out.ifindex) for out in entry.outputs]
            self.messages[msg["id"]] = msg
            if self.fast is not None:
                self._fast_put(*([msg["id"]] if not any(fresh) else self.messages))
        elif op == "del":
            self.table.delete(msg["id"])
            self.messages.pop(msg["id"], None)
            if self.fast is not None:
                self.fast.delete(msg["id"])
                self.fast.own_macs(self.table.own_macs)
        elif op == "input":
            sock = socket.socket(fileno=fds[0])
            self.rings[sock.fileno()] = (msg["ifindex"], Ring(sock))
            self.poll.register(sock.fileno(), select.POLLIN | select.POLLERR)
        elif op == "drop-input":
            for fd, (ifindex, ring) in list(self.rings.items()):
                if ifindex == msg["ifindex"]:
                    self.poll.unregister(fd)
                    ring.close()
                    ring.sock.close()
                    del self.rings[fd]
        elif op == "sync":
            self.control.send(json.dumps({"seq": msg["seq"], "worker": self.index}).encode())
        elif op == "exit":
            self.running = False

    def _fast_put(self, *ids: int) -> None:
        """These rules into the C table as the Python table holds them
        (range rules stay Python's), with the send sockets there are."""
        fds = {ifindex: sock.fileno() for ifindex, sock in self.tx.items()}
        for index in ids:
            self.fast.delete(index)
            entry = self.table.entry(index)
            if entry is not None and entry.host_mask is None:
                self.fast.put(entry, self.messages[index], fds)
        self.fast.own_macs(self.table.own_macs)

    def _tx(self, ifindex: int) -> bool:
        """A send socket on an output; an output that went away before its
        rule arrived simply gets none (its copies count as not sent).
        Whether a socket was opened now."""
        if ifindex in self.tx:
            return False
        # Protocol 0: a send-only socket, it receives nothing.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.bind((socket.if_indextoname(ifindex), 0))
        except OSError as exc:
            # In the relay's log format (inherited through the environment).
            logs.from_env().warning(f"userspace worker {self.index}: cannot send on ifindex {ifindex}: "
                                    f"{exc.strerror}")
            sock.close()
            return False
        self.tx[ifindex] = sock
        return True

    # -- packets -----------------------------------------------------------

    def drain(self, ifindex: int, ring: Ring) -> None:
        """Relay every frame the kernel has handed over on one ring (at
        most a ring's worth, so a flood cannot starve the control socket)."""
        fast = self.fast
        if fast is None:
            for frames in ring.blocks():
                self.relay(frames, ifindex)
            return
        address = ring.address()
        for _ in range(BLOCK_NR):
            base = ring.ready()
            if base is None:
                return
            left = fast.block(address + base, ifindex)
            if left:
                self.relay(ring.frames(base, left), ifindex)
            ring.release()

    def relay(self, frames, ifindex: int) -> None:
        """Relay frames, a list of (data, tp_status, tp_len), in Python.
        The hot loop: locals only, counters by precomputed index."""
        c = self.c
        handle = self.table.handle
        tx = self.tx
        redirect, redirect_multi, no_output, no_neigh = REDIRECT, REDIRECT_MULTI, DROP_NO_OUTPUT, DROP_NO_NEIGH << 1
        for frame, status, length in frames:
            verdict, entry, sends = handle(frame, ifindex, status & TP_STATUS_CSUMNOTREADY)
            if sends:
                if entry.unresolved:  # copies for unicast receivers without a next-hop MAC
                    c[no_neigh] += entry.unresolved
                    c[no_neigh + 1] += entry.unresolved * length
                sent = 0
                for out, buf in sends:
                    try:
                        tx[out.ifindex].send(buf)
                    except (OSError, KeyError):
                        continue  # the output went away or is down: this copy is lost
                    sent += 1
                    o = out.counter
                    c[o] += 1
                    c[o + 1] += length
                if not sent:
                    verdict = no_output
            v = verdict << 1
            c[v] += 1
            c[v + 1] += length
            if entry is not None:
                r = entry.counter
                c[r] += 1
                c[r + 1] += length
                c[r + 2 if verdict == redirect or verdict == redirect_multi else r + 3] += 1

    def run(self) -> None:
        while self.running:
            for fd, _ in self.poll.poll():
                if fd == self.control.fileno():
                    self.on_control()
                    if not self.running:
                        break
                elif fd in self.rings:
                    self.drain(*self.rings[fd])

    def close(self) -> None:
        for _, ring in self.rings.values():
            ring.close()
            ring.sock.close()
        for sock in self.tx.values():
            sock.close()
        if self.fast is not None:
            self.fast.close()
        self.c.release()
        self._map.close()
        self.table = None  # its streams' views into the state file
        self.states.close()
        self.control.close()


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the relay died before prctl
        os._exit(1)


def main(argv: list[str]) -> int:
    index, control_fd, counters_fd, states_fd, parent = (int(a) for a in argv)
    _die_with_parent(parent)
    # Ctrl-C reaches the whole process group: the relay decides when workers end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    worker = Worker(index, control, counters_fd, states_fd)
    control.send(json.dumps({"ready": index, "inner_loop": "python" if worker.fast is None else "compiled"}).encode())
    try:
        worker.run()
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
