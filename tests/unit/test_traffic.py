"""The lab's receiver sockets: room to queue every frame a test expects."""

from __future__ import annotations

import socket

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
