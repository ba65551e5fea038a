"""A bounded multicast generator for users (`mcr-xdp gen`).

Checks everything it can before the first packet (group, port, interface,
size, rate, TTL), then sends sequence-numbered payloads through
mcr_xdp.lab.traffic, the same payloads `python -m mcr_xdp.lab.traffic
recv`, the demo and the tests verify: a receiver can tell lost, duplicated,
reordered and corrupted packets apart. Library code: raises McrError, never
prints.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import signal
import socket
import threading
import time

from .errors import InterfaceError, McrError, UsageError
from .lab import traffic

# The largest UDP payload of one datagram (65535 - IP - UDP headers).
MAX_SIZE = {4: 65535 - 20 - 8, 6: 65535 - 40 - 8}
MAX_COUNT = 1_000_000_000


class SendError(McrError):
    """The kernel refused a packet: no route, full queue, interface down."""


@dataclasses.dataclass(frozen=True)
class GenSpec:
    group: str
    port: int
    count: int
    rate: float = 1000.0  # packets per second; 0 = as fast as possible
    size: int = 64  # UDP payload bytes
    iface: str | None = None
    ttl: int = 16
    first_seq: int = 0


@dataclasses.dataclass(frozen=True)
class GenResult:
    spec: GenSpec
    sent: int
    seconds: float
    interrupted: bool = False

    @property
    def pps(self) -> float:
        """Achieved rate: packets after the first over the time they took
        (a paced run of N packets spans N - 1 intervals)."""
        if self.sent < 2 or self.seconds <= 0:
            return 0.0
        return (self.sent - 1) / self.seconds

    @property
    def payload_bytes(self) -> int:
        return self.sent * self.spec.size

    @property
    def last_seq(self) -> int | None:
        return self.spec.first_seq + self.sent - 1 if self.sent else None

    def as_dict(self) -> dict:
        return {
            "group": self.spec.group,
            "port": self.spec.port,
            "iface": self.spec.iface,
            "sent": self.sent,
            "requested": self.spec.count,
            "size": self.spec.size,
            "ttl": self.spec.ttl,
            "rate": self.spec.rate,
            "first_seq": self.spec.first_seq,
            "last_seq": self.last_seq,
            "seconds": round(self.seconds, 6),
            "pps": round(self.pps, 1),
            "interrupted": self.interrupted,
        }


def validate(spec: GenSpec) -> GenSpec:
    """Raise UsageError / InterfaceError naming the bad option."""
    try:
        group = ipaddress.ip_address(spec.group)
    except ValueError:
        raise UsageError(f"--group {spec.group!r} is not an IP address") from None
    if not group.is_multicast:
        raise UsageError(f"--group {group} is not a multicast group (224.0.0.0/4 or ff00::/8)")
    if not 1 <= spec.port <= 65535:
        raise UsageError(f"--port {spec.port} is not a number from 1 to 65535")
    if not 1 <= spec.count <= MAX_COUNT:
        raise UsageError(f"--count {spec.count} must be 1 to {MAX_COUNT}")
    if not spec.rate >= 0:
        raise UsageError(f"--rate {spec.rate} must be 0 (as fast as possible) or more packets per second")
    if not traffic.MIN_PAYLOAD <= spec.size <= MAX_SIZE[group.version]:
        raise UsageError(
            f"--size {spec.size} must be {traffic.MIN_PAYLOAD} to {MAX_SIZE[group.version]} bytes "
            f"(the payload carries a {traffic.MIN_PAYLOAD}-byte sequence header and digest)"
        )
    if not 1 <= spec.ttl <= 255:
        raise UsageError(f"--ttl {spec.ttl} must be 1 to 255")
    if spec.first_seq < 0:
        raise UsageError(f"--first-seq {spec.first_seq} must not be negative")
    if spec.iface is not None:
        try:
            socket.if_nametoindex(spec.iface)
        except OSError:
            raise InterfaceError(f"interface {spec.iface!r} does not exist") from None
    return dataclasses.replace(spec, group=str(group))


_ERRNO_HINTS = {
    errno.ENETUNREACH: "no route to the group: give --iface, or add a multicast route",
    errno.EHOSTUNREACH: "no route to the group: give --iface, or add a multicast route",
    errno.EADDRNOTAVAIL: "the interface has no address of the group's family",
    errno.ENOBUFS: "the interface queue is full: lower --rate",
    errno.EMSGSIZE: "the datagram is larger than the interface allows: lower --size",
    errno.ENETDOWN: "the interface is down",
}
_IFACE_HINTS = {
    errno.ENETUNREACH: "the interface has no route for the group's family, or is down",
    errno.EHOSTUNREACH: "the interface has no route for the group's family, or is down",
}


def endpoint(group: str, port: int) -> str:
    return f"[{group}]:{port}" if ":" in group else f"{group}:{port}"


def run(spec: GenSpec, sender=traffic.send) -> GenResult:
    """Send spec.count packets. Ctrl-C (SIGINT) stops early and still
    returns what was sent (interrupted=True); kernel refusals raise
    SendError.

    In the main thread SIGINT only raises a flag the sender checks between
    packets: a KeyboardInterrupt raised between a packet's sendto() and its
    progress call would leave the count one short of what a receiver got
    (a receiver comparing against "sent" would see an extra datagram)."""
    spec = validate(spec)
    sent = 0
    interrupted = False

    def progress(n: int) -> None:
        nonlocal sent
        sent = n

    def on_sigint(signum, frame) -> None:
        nonlocal interrupted
        interrupted = True

    own_handler = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if own_handler else None
    start = time.perf_counter()
    try:
        sender(spec.group, spec.port, spec.count, spec.rate, spec.size, spec.iface, spec.ttl, spec.first_seq,
               progress=progress, stop=lambda: interrupted)
    except KeyboardInterrupt:
        return GenResult(spec, sent, time.perf_counter() - start, interrupted=True)
    except OSError as exc:
        hint = (_IFACE_HINTS.get(exc.errno) if spec.iface else None) or _ERRNO_HINTS.get(exc.errno, "")
        where = f" on {spec.iface}" if spec.iface else ""
        raise SendError(
            f"sending to {endpoint(spec.group, spec.port)}{where} failed after {sent} packet(s): "
            f"{exc.strerror or exc}" + (f" ({hint})" if hint else "")
        ) from None
    finally:
        if own_handler:
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    return GenResult(spec, sent, time.perf_counter() - start, interrupted=interrupted)
