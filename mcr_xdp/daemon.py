"""The relay as a running process: it starts the relay, serves the control
socket and the metrics endpoint, takes signals (SIGHUP reloads the config,
SIGINT and SIGTERM stop, SIGQUIT ends leaving the programs forwarding for
a successor, SIGCHLD restarts a dead worker), and every interval re-checks
the outputs and hands a counter snapshot to whoever shows it (a Reporter:
counter lines, the live view). The CLI only parses options and renders.

Signals arrive through a wakeup fd polled with the sockets, so a handler
never runs relay code in the middle of another operation.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from typing import Protocol

from . import stats
from .control import ControlServer
from .errors import McrError
from .logs import Event, Level
from .metrics import MetricsServer, exposition
from .neighbours import touched_by
from .relay import Relay
from .service import Service

WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Their default action would end the process and leave the programs
# attached without the relay: taken, logged and otherwise ignored.
IGNORED = (signal.SIGUSR1, signal.SIGUSR2)
# A child ended: a userspace worker that died is replaced at once
# (Relay.heal), not at the next tick, while its share goes unread.
CHILD = signal.SIGCHLD
# Leave the programs forwarding and exit, for a successor started with the
# same command to take over (Relay.leave): a restart or upgrade without a gap.
HANDOVER = signal.SIGQUIT
STATE_EVERY = 0.1  # seconds: the state file is written at most this often (Relay.flush_state)


class Reporter(Protocol):
    def tick(self, prev: stats.Snapshot | None, cur: stats.Snapshot, status: dict) -> None:
        """A snapshot every interval (prev None: the first, at start)."""

    def reloaded(self, result: dict | None, error: Exception | None) -> None:
        """A SIGHUP reload's outcome (Service.reload's result, or why it
        failed and the rules are unchanged)."""

    def event(self, event: Event) -> None:
        """Something the relay did or met on its own (an interface went
        down, a worker was restarted), with its level."""

    def wants_quit(self, woke: list[str]) -> bool:
        """Whether one of the readers the reporter added (Daemon.add_reader)
        asked to stop."""


class Daemon:
    def __init__(self, relay: Relay, socket_path: str, config_path: str | None = None,
                 metrics_addr: str | None = None, interval: float = 5.0, fixed_interval: bool = False):
        """interval: seconds between ticks; a reload applies the file's new
        one unless fixed_interval (given on the command line)."""
        self.relay = relay
        self.service = Service(relay, config_path)
        self.socket_path = socket_path
        self.metrics_addr = metrics_addr
        self.interval = interval
        self.fixed_interval = fixed_interval
        self.server: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self._wake: socket.socket | None = None  # readable when a signal came
        self._link_events = None  # pyroute2 IPRoute bound to link events, when available
        self._hop_events = None  # and one bound to neighbour and route events
        self._stack = contextlib.ExitStack()
        self.handover = False  # SIGQUIT came: leave the programs forwarding
        self.left_forwarding: list[str] = []  # the inputs left so, once closed

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Signals first (a SIGTERM during start stops the relay cleanly
        once it is up), then the relay, then the servers; each undone in
        reverse by close(), also after a partial start."""
        stack = self._stack = contextlib.ExitStack()
        try:
            wake_r, wake_w = socket.socketpair()
            stack.callback(wake_w.close)
            stack.callback(wake_r.close)
            wake_r.setblocking(False)
            wake_w.setblocking(False)
            self._wake = wake_r
            previous = {sig: signal.signal(sig, lambda *_: None) for sig in (*WATCHED, *IGNORED, CHILD, HANDOVER)}
            old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
            stack.callback(_restore_signals, previous, old_wakeup)
            stack.callback(self._end_relay)
            self.relay.start()
            # Ctrl-C while it started (a compile takes seconds): undo the
            # start and say so (exit 130), as at any other command. SIGTERM
            # (systemctl stop) stops it cleanly once up, in run().
            pending = self._signals()
            if signal.SIGINT in pending:
                raise KeyboardInterrupt
            if pending:
                wake_w.send(pending)
            self.server = ControlServer(self.socket_path, self.service.handle)
            stack.callback(self.server.close)
            self.server.add_reader(wake_r, "signal")
            if self.metrics_addr:
                self.metrics = MetricsServer(self.metrics_addr,
                                             lambda: exposition(self.relay.snapshot(), self.service.status()))
                stack.callback(self.metrics.close)
                self.server.add_reader(self.metrics.sock, self.metrics.serve)
            self._watch_links(stack)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop serving, detach the relay (or leave it forwarding, after
        SIGQUIT), restore the signal handlers."""
        self._stack.close()

    def _end_relay(self) -> None:
        if self.handover:
            self.left_forwarding = self.relay.leave()
        else:
            self.relay.stop()

    def _watch_links(self, stack: contextlib.ExitStack) -> None:
        """Netlink link events wake the loop, so an interface that comes,
        goes, or goes down is followed at once rather than at the next tick
        (which still checks, should events be lost)."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH

        try:
            events = IPRoute()
        except OSError:
            return
        stack.callback(events.close)
        try:
            events.bind(groups=RTMGRP_LINK)
        except OSError:
            return
        self._link_events = events
        self.server.add_reader(events, "links")
        # Neighbour and route changes move unicast receivers' next hops
        # (Relay.follow_next_hops): a socket of their own, so the link
        # dump of a refresh is not paid for every neighbour event.
        try:
            hops = IPRoute()
        except OSError:
            return
        stack.callback(hops.close)
        try:
            hops.bind(groups=RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        except OSError:
            return
        self._hop_events = hops
        self.server.add_reader(hops, "hops")

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_reader(self, fileobj, tag: str) -> None:
        """Wake the loop when fileobj is readable (Reporter.wants_quit sees tag)."""
        self.server.add_reader(fileobj, tag)

    # -- the loop ------------------------------------------------------------

    def run(self, report: Reporter) -> None:
        """Serve the control socket and signals; every interval re-check the
        outputs and report a snapshot, until SIGINT, SIGTERM or the reporter
        wants to quit."""
        prev = self.relay.snapshot()
        self.service.sampled(prev)
        report.tick(None, prev, self.service.status())
        deadline = time.monotonic() + self.interval
        flushed = 0.0
        while True:
            # The state file, after the replies: what they (or links, heal)
            # changed, for a successor; at most every STATE_EVERY seconds,
            # so a burst of rule changes writes it once, not once a rule.
            wait = deadline - time.monotonic()
            if self.relay.state_dirty:
                if time.monotonic() - flushed >= STATE_EVERY:
                    self.relay.flush_state()
                    flushed = time.monotonic()
                else:
                    wait = min(wait, STATE_EVERY)
            woke = self.server.poll(max(0.0, wait))
            if report.wants_quit(woke):
                return
            if "signal" in woke:
                signums = self._signals()
                for sig in IGNORED:
                    if sig in signums:
                        report.event(Event(Level.WARNING, f"{signal.Signals(sig).name} ignored (SIGHUP reloads, "
                                                          "SIGINT and SIGTERM stop)"))
                if signal.SIGHUP in signums:
                    self._reload(report)
                if CHILD in signums:
                    self._heal(report)
                if HANDOVER in signums:
                    self.handover = True
                    return
                if signal.SIGINT in signums or signal.SIGTERM in signums:
                    return
            if "links" in woke:
                self._follow_links(report)
            if "hops" in woke:
                self._follow_next_hops(report)
            if time.monotonic() < deadline:
                continue
            deadline += self.interval
            try:
                prev = self._tick(report, prev)
            except Exception as exc:  # a bug in reporting must not stop the forwarding
                report.event(Event(Level.ERROR, f"internal error, relaying on: {_what(exc)}"))

    def _heal(self, report: Reporter) -> None:
        """A child ended: if it was a worker, replace it now, before anything
        else (until its sockets close, its share of the traffic is lost)."""
        try:
            for event in self.relay.heal():
                report.event(event)
        except Exception as exc:  # a bug: the tick tries again
            report.event(Event(Level.ERROR, f"could not restart a worker: {_what(exc)}"))

    def _follow_links(self, report: Reporter) -> None:
        """Follow the interfaces now (a link event), not at the next tick."""
        try:
            self._link_events.get()  # the batch that woke us: its content is read again by refresh
            for event in self.relay.refresh():
                report.event(event)
        except Exception as exc:  # netlink trouble or a bug: the tick checks again
            report.event(Event(Level.WARNING, f"could not follow the interfaces: {_what(exc)}"))

    def _follow_next_hops(self, report: Reporter) -> None:
        """Neighbours or routes changed: the unicast receivers they touch
        are resolved again now."""
        try:
            touched = touched_by(self._hop_events.get())
            for event in self.relay.follow_next_hops(touched):
                report.event(event)
        except Exception as exc:  # netlink trouble or a bug: the tick checks again
            report.event(Event(Level.WARNING, f"could not follow the next hops: {_what(exc)}"))

    def _tick(self, report: Reporter, prev: stats.Snapshot) -> stats.Snapshot:
        try:
            for event in self.relay.refresh():
                report.event(event)
        except (McrError, OSError) as exc:  # netlink trouble: keep relaying, try again next time
            report.event(Event(Level.WARNING, f"could not re-check the outputs: {exc}"))
        cur = self.relay.snapshot()
        self.service.sampled(cur)
        report.tick(prev, cur, self.service.status())
        return cur

    def _signals(self) -> bytes:
        try:
            return self._wake.recv(64)
        except BlockingIOError:
            return b""

    def _reload(self, report: Reporter) -> None:
        try:
            result = self.service.reload()
        except McrError as exc:
            report.reloaded(None, exc)
            return
        except Exception as exc:  # a bug: the rules stay as they were, the relay runs on
            report.reloaded(None, RuntimeError(f"internal error: {_what(exc)}"))
            return
        report.reloaded(result, None)
        wanted = result.get("interval")
        if wanted and wanted != self.interval:
            if self.fixed_interval:
                report.event(Event(Level.WARNING, f"interval {wanted:g} s in the file: --interval "
                                                  f"{self.interval:g} is kept"))
            else:
                report.event(Event(Level.NOTICE, f"interval now {wanted:g} s (was {self.interval:g})"))
                self.interval = wanted


def _what(exc: Exception) -> str:
    """An unexpected exception in one line: type, message, where it was raised."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" ({tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb is not None else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _restore_signals(previous: dict, old_wakeup: int) -> None:
    signal.set_wakeup_fd(old_wakeup)
    for sig, handler in previous.items():
        signal.signal(sig, handler)
