"""The ingress program (bpf/relay.c) run through BPF_PROG_TEST_RUN against
the packet table of tests/fixtures/xdp_table.py: for each input frame, the
XDP action, the exact output frame, the verdict counted and the rule
counters moved. A test run does not transmit, it only returns the action.
"""

from __future__ import annotations

import errno

import pytest

from mcr_xdp import abi, encode, libbpf, loader
from mcr_xdp.rules import parse_rule
from tests.fixtures.xdp_table import (
    CASES,
    IN,
    LO,
    RULES,
    SLOT_LO,
    TAGGED,
    ZERO_SUM,
    ZERO_SUM6,
    check_case,
    install,
    rewritten,
    rewritten6,
    udp_check,
    verdict_counts,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def relay(datapath):
    """RULES installed, slot SLOT_LO -> lo; returns the maps."""
    maps = datapath.maps
    for rule_id, (text, slot) in RULES.items():
        install(maps, text, rule_id, slot)
    maps.set_port(SLOT_LO, LO, datapath.egress_fd)
    maps.set_config(**encode.rule_kinds(parse_rule(text, "in") for text, _ in RULES.values()))
    return maps


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_relay(datapath, relay, case):
    check_case(relay, datapath.prog_fd, case)


def test_cases_are_what_they_claim():
    """Guards on the table itself."""
    assert len(TAGGED.build()) == len(IN.build()) + 4
    for pkt, rewrite in ((ZERO_SUM, rewritten), (ZERO_SUM6, rewritten6)):
        assert udp_check(rewrite(pkt)) == b"\xff\xff"
        assert udp_check(pkt.build()) not in (b"\x00\x00", b"\xff\xff")
    assert len(rewritten(TAGGED)) == len(TAGGED.build()) - 4
    assert len({case.desc for case in CASES}) == len(CASES)


def test_kernel_refuses_runt(relay, run_xdp):
    """Frames shorter than an Ethernet header never reach the program under
    BPF_PROG_TEST_RUN (EINVAL), so the table cannot test them; on a real
    interface no driver delivers them either."""
    verdicts = verdict_counts(relay)
    with pytest.raises(OSError) as exc:
        run_xdp(IN.build()[:13], LO)
    assert exc.value.errno == errno.EINVAL
    assert verdict_counts(relay) == verdicts


# Maps of the loss tracer (bpf/trace.c), a separate object.
TRACER_MAPS = {abi.MAP_LOSS, abi.MAP_LOSS_PROGS, abi.MAP_LOSS_MAPS, abi.MAP_LOSS_STEER}


def test_map_and_program_names(datapath):
    """Every MCR_MAP_* name (mirrored as abi.MAP_*) is a map of the compiled
    datapath, or of the loss tracer, and the loader opens all the
    datapath's; the program has its ABI name."""
    names = {value for key, value in vars(abi).items() if key.startswith("MAP_")}
    assert set(loader.MAP_NAMES) == names - TRACER_MAPS
    for name in names - TRACER_MAPS:
        assert libbpf.map_info(datapath.maps._fd[name])["name"] == name[:15]
    assert libbpf.prog_name(datapath.prog_id) == abi.PROG_RELAY


def test_tracer_map_names():
    from mcr_xdp.trace import LossTracer

    tracer = LossTracer()
    try:
        for name in TRACER_MAPS:
            assert libbpf.map_info(tracer._obj.map_fd(name))["name"] == name
    finally:
        tracer.close()
