"""mcr-xdp gen for real: a fresh pair of namespaces joined by a veth, the
CLI sending in one, the verifying receiver of mcr_xdp.lab.traffic in the other;
every packet arrives once, intact, in order, at the rate asked for."""

from __future__ import annotations

import json

import pytest

from mcr_xdp.lab.netns import Topology, Veth, unique_prefix
from mcr_xdp.lab.proc import Proc, venv_bin
from tests.fixtures.relay import SCALE

pytestmark = [pytest.mark.root, pytest.mark.e2e]

GROUP, PORT = "239.7.7.7", 5007


@pytest.fixture
def pair():
    topo = Topology(unique_prefix("mcr-gen"))
    try:
        a, b = topo.add_ns("a"), topo.add_ns("b")
        left, right = Veth(a, "veth0", "10.210.0.1/24"), Veth(b, "veth0", "10.210.0.2/24")
        topo.link(left, right)
        yield topo, left, right
    finally:
        topo.close()


@pytest.mark.parametrize("count, rate, size", [(2000, 20000, 64), (500, 0, 1316)])
def test_every_packet_arrives_intact(pair, count, rate, size):
    topo, left, right = pair
    procs = []
    try:
        recv = Proc(topo.python(right.ns, "-m", "mcr_xdp.lab.traffic", "recv", "--group", GROUP, "--port", str(PORT),
                                "--iface", right.name, "--count", str(count), "--idle-timeout", "2"))
        procs.append(recv)
        recv.wait_for("ready", timeout=30 * SCALE)
        send = Proc(topo.popen(left.ns, venv_bin("mcr-xdp"), "gen", "--group", GROUP, "--port", str(PORT),
                               "--iface", left.name, "--count", str(count), "--rate", str(rate), "--size",
                               str(size), "--ttl", "2", "--json"))
        procs.append(send)
        summary = json.loads(send.wait_for('"sent"', timeout=60 * SCALE))
        assert send.popen.wait(10 * SCALE) == 0
        got = json.loads(recv.wait_for('"received"', timeout=60 * SCALE))
    finally:
        for p in procs:
            p.stop()
    assert summary["sent"] == count and summary["last_seq"] == count - 1 and not summary["interrupted"]
    if rate:
        # Paced: never faster than asked. A host SCALE times slower (make
        # vm-test: 20 kpps asked gives ~6.5 kpps under emulation) may fall
        # short by as much; the speed itself is the benchmark's business.
        assert rate * 0.8 / SCALE <= summary["pps"] <= rate * 1.2
    assert got["missing"] == 0 and got["duplicates"] == 0 and got["corrupt"] == 0
    assert got["unique"] == count and got["out_of_order"] == 0
    assert got["destinations"] == {f"{GROUP}:{PORT}": count}


def test_missing_interface_is_a_usage_error(pair):
    topo, left, _ = pair
    res = topo.exec(left.ns, venv_bin("mcr-xdp"), "gen", "--group", GROUP, "--port", str(PORT), "--iface", "nope0",
                    check=False)
    assert res.returncode == 2
    assert "interface 'nope0' does not exist" in res.stderr
