"""The benchmark's floor relay, bench_rewrite (bench/bpf/bench_sink.c):
the least a rewriting relay does. Its output must be exactly what mcr-xdp
would send for the same rule (checksums from scratch in
tests/fixtures/packets.py), or its paired rate would price less work than
a relay's."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.sink import Sink
from mcr_xdp import libbpf
from tests.fixtures.packets import Udp4, Udp6, ipv4_multicast_mac

pytestmark = pytest.mark.root

GROUP, PORT = "239.130.2.2", 5002  # the MAC keeps 23 bits: the group's bit 23 must vanish
LO = 1


@pytest.fixture(scope="module")
def prog_fd():
    sink = Sink(redirect_to=LO, rewrite_to=(GROUP, PORT))
    try:
        yield sink.prog_fd
    finally:
        sink.close()


@pytest.mark.parametrize("pkt", [Udp4(), Udp4(udp_checksum=False), Udp4(ttl=2, payload=bytes(1300))],
                         ids=["udp checksum", "no udp checksum", "ttl 2, 1316 B"])
def test_a_multicast_frame_leaves_rewritten_with_valid_checksums(prog_fd, pkt):
    action, out, _ = libbpf.test_run(prog_fd, pkt.build())
    assert action == libbpf.XDP_REDIRECT
    assert out == replace(pkt, dst=GROUP, dport=PORT, ttl=pkt.ttl - 1, eth_dst=ipv4_multicast_mac(GROUP)).build()


@pytest.mark.parametrize("pkt", [Udp4(dst="192.0.2.7"), Udp4(ttl=1), Udp4(options=bytes(4)), Udp6()],
                         ids=["unicast", "ttl 1", "ip options", "ipv6"])
def test_anything_else_is_passed_unchanged(prog_fd, pkt):
    frame = pkt.build()
    assert libbpf.test_run(prog_fd, frame)[:2] == (libbpf.XDP_PASS, frame)
