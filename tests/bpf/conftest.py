"""Fixtures for datapath tests: the program runs through BPF_PROG_TEST_RUN,
no interface is attached. Every test here is marked `root`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def datapath():
    """bpf/relay.c compiled and loaded once per module (about a second); each
    module gets fresh maps, so its rules and counters are its own."""
    from mcr_xdp import loader

    dp = loader.Datapath()
    yield dp
    dp.close()


@pytest.fixture(scope="module")
def run_xdp(datapath):
    """run_xdp(frame, ingress_ifindex) -> (XDP action, output frame)."""
    from tests.fixtures.xdp_table import run_frame

    def run(frame: bytes, ingress_ifindex: int):
        return run_frame(datapath.prog_fd, frame, ingress_ifindex)

    return run
