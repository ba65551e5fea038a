"""The lab's receiver sockets: room to queue every frame a test expects."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from mcr_xdp.lab import traffic


def _rcvbuf(expected: int) -> int:
    with traffic.open_receiver("127.0.0.1", 0, expected=expected) as sock:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


@pytest.mark.root  # SO_RCVBUFFORCE goes past net.core.rmem_max for root only
@pytest.mark.parametrize(("expected", "room"), [
    (0, traffic.RCVBUF_MIN),
    (20_000, 20_000 * traffic.QUEUED_FRAME),
    (10_000_000, traffic.RCVBUF_MAX),
])
def test_a_receiver_has_room_for_what_it_expects(expected, room):
    assert _rcvbuf(expected) == 2 * room  # the kernel doubles it for its own bookkeeping


def test_told_the_senders_are_done_a_receiver_ends_on_its_idle_timeout():
    """Streams that must stay empty end 0.3 s after SIGUSR1, not after their
    20 s first timeout; the signal's handler is put back after."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = signal.getsignal(traffic.SendersDone.SIGNAL)
    told = traffic.SendersDone()
    start = time.monotonic()
    try:
        def ready():
            threading.Timer(0.2, os.kill, (os.getpid(), traffic.SendersDone.SIGNAL)).start()

        got = traffic.receive_streams([("127.0.0.1", port), ("127.0.0.2", port)], 10, idle_timeout=0.3,
                                      first_timeout=20.0, ready=ready, senders_done=told)
    finally:
        told.close()
    assert time.monotonic() - start < 5
    assert told.told
    assert [r.received for r in got.values()] == [0, 0]
    assert signal.getsignal(traffic.SendersDone.SIGNAL) is before
