"""Outputs a native XDP redirect can't reach (no ndo_xdp_xmit): VXLAN, a
bridge, macvlan, tun. On a native XDP input, rules with such an output are
forwarded by the TC companion program beside XDP; the rest stay on XDP.
Every receiver gets every packet once, with valid checksums, in fan-out
rules that mix those outputs with a veth.

    src --veth-- relay in0   (native XDP)
                 relay out0 --veth-- sink0 veth0   (also vx0's underlay)
                 relay vx0  ~~vxlan~~ sink0 vx0
                 relay out1 --veth-- sink1 veth0
                 relay mv0 (macvlan on out1) --> sink1 veth0
                 relay br0 [brp] --veth-- sink1 veth1
                 relay tun0 --> a reader in the relay namespace
"""

from __future__ import annotations

import json

import pytest

from mcr_xdp.lab.proc import Proc
from tests.fixtures.relay import SCALE, relay_cli, result, send, start_relay

pytestmark = pytest.mark.e2e

COUNT = 2000
FANOUT = ("239.1.1.1:5001=out0/239.2.2.1:5002,vx0/239.2.2.2:5002,mv0/239.2.2.3:5002,br0/239.2.2.4:5002,"
          "tun0/239.2.2.5:5002")
SINGLE_VXLAN = "239.1.1.2:5001=vx0/239.2.3.2:5002"
PLAIN = "239.1.1.3:5001=out0/239.2.4.1:5002"


def _build(chain) -> None:
    relay, sink0, sink1 = chain.relay_in.ns, chain.sink[0].ns, chain.sink[1].ns
    run = chain.exec
    run(relay, "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", "10.201.0.1", "remote",
        "10.201.0.2", "dstport", "4789", "dev", "out0")
    run(sink0, "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", "10.201.0.2", "remote",
        "10.201.0.1", "dstport", "4789", "dev", "veth0")
    run(relay, "ip", "link", "add", "link", "out1", "name", "mv0", "type", "macvlan", "mode", "bridge")
    run(relay, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
    run(relay, "ip", "link", "add", "brp", "type", "veth", "peer", "name", "veth1", "netns", sink1)
    run(relay, "ip", "link", "set", "brp", "master", "br0")
    run(relay, "ip", "tuntap", "add", "tun0", "mode", "tun")
    for ns, iface, address in ((relay, "vx0", "10.250.0.1/24"), (sink0, "vx0", "10.250.0.2/24"),
                               (relay, "br0", "10.252.0.1/24"), (sink1, "veth1", "10.252.0.2/24"),
                               (relay, "tun0", "10.253.0.1/24")):
        run(ns, "ip", "addr", "add", address, "dev", iface)
    for ns, iface in ((relay, "vx0"), (sink0, "vx0"), (relay, "mv0"), (relay, "br0"), (relay, "brp"),
                      (sink1, "veth1"), (relay, "tun0")):
        run(ns, "ip", "link", "set", iface, "up")


def _receiver(chain, ns: str, iface: str, *dests: str, tun: bool = False) -> Proc:
    args = ["--iface", iface, "--count", str(COUNT), "--idle-timeout", str(3.0 * SCALE)]
    if tun:
        group, port = dests[0].split(":")
        args += ["--group", group, "--port", port, "--tun"]
    else:
        args += [a for d in dests for a in ("--dest", d)]
    proc = Proc(chain.python(ns, "-m", "mcr_xdp.lab.traffic", "recv", *args))
    chain.procs.append(proc)
    proc.wait_for("ready")
    return proc


@pytest.mark.parametrize("chain", [{"outputs": 2}], indirect=True)
def test_outputs_without_xdp_transmit_get_every_packet(chain):
    _build(chain)
    relay_ns, sink0, sink1 = chain.relay_in.ns, chain.sink[0].ns, chain.sink[1].ns
    relay = start_relay(chain, chain.IN, "--mode", "xdp-native", "--rule", FANOUT, "--rule", SINGLE_VXLAN,
                        "--rule", PLAIN)
    status = json.loads(relay_cli(chain, "status", "--json").stdout)
    assert status["interfaces"][0]["mode"] == "xdp-native"
    assert [(v["rule"], v["input"]) for v in status["via_tc"]] == [(0, "in0"), (1, "in0")], status["via_tc"]
    assert sum("the TC program beside XDP on in0 forwards this rule" in n for n in status["notices"]) == 2
    assert "mcr_tc_companion" in chain.exec(relay_ns, "tc", "filter", "show", "dev", "in0", "ingress").stdout

    csum = {ns: chain.snmp(ns)["InCsumErrors"] for ns in (sink0, sink1)}
    receivers = {
        "veth": _receiver(chain, sink0, "veth0", "239.2.2.1:5002", "239.2.4.1:5002"),
        "vxlan": _receiver(chain, sink0, "vx0", "239.2.2.2:5002", "239.2.3.2:5002"),
        "macvlan": _receiver(chain, sink1, "veth0", "239.2.2.3:5002"),
        "bridge": _receiver(chain, sink1, "veth1", "239.2.2.4:5002"),
    }
    tun = _receiver(chain, relay_ns, "tun0", "239.2.2.5:5002", tun=True)
    for group in ("239.1.1.1", "239.1.1.2", "239.1.1.3"):
        send(chain, group, 5001, COUNT, rate=2000 / SCALE)

    got = {dest: r for proc in receivers.values() for dest, r in result(proc).items()}
    got["tun"] = result(tun)
    assert sorted(got) == sorted(["239.2.2.1:5002", "239.2.4.1:5002", "239.2.2.2:5002", "239.2.3.2:5002",
                                  "239.2.2.3:5002", "239.2.2.4:5002", "tun"])
    for where, r in got.items():
        assert (r["unique"], r["duplicates"], r["corrupt"], r["missing"]) == (COUNT, 0, 0, 0), (where, r)
    assert {ns: chain.snmp(ns)["InCsumErrors"] for ns in (sink0, sink1)} == csum

    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    assert [(r["id"], r["packets"], r["forwarded"]) for r in stats["rules"]] == [
        (0, COUNT, COUNT), (1, COUNT, COUNT), (2, COUNT, COUNT)], stats["rules"]
    assert relay.stop() == 0
    assert "mcr_tc_companion" not in chain.exec(relay_ns, "tc", "filter", "show", "dev", "in0", "ingress").stdout
    assert "clsact" not in chain.exec(relay_ns, "tc", "qdisc", "show", "dev", "in0").stdout
