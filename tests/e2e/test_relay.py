"""A real stream through the XDP relay over veth, checked at a socket."""

from __future__ import annotations

import subprocess

import pytest

from tests.fixtures.relay import mcr, result, send, start_receiver, start_relay, xdp_prog

pytestmark = pytest.mark.e2e

IN_GROUP, IN_PORT = "239.1.1.1", 5001
OUT_GROUP, OUT_PORT = "239.2.2.2", 5002


def test_stream_relayed_with_rewrite(chain):
    count = 10_000
    relay = start_relay(chain, chain.IN, "--rule", f"{IN_GROUP}:{IN_PORT}={chain.OUT}/{OUT_GROUP}:{OUT_PORT}",
                        "--interval", "1")
    assert "XDP native mode" in relay.wait_for("attached")
    assert IN_GROUP in chain.igmp_groups(chain.relay_in.ns, chain.IN)
    receiver = start_receiver(chain, OUT_GROUP, OUT_PORT, count)
    sink_ns = chain.sink[0].ns
    before = chain.snmp(sink_ns)
    send(chain, IN_GROUP, IN_PORT, count, rate=5000, size=200)
    got = result(receiver)
    after = chain.snmp(sink_ns)

    assert got["unique"] == count
    assert got["missing"] == 0
    assert got["duplicates"] == 0
    assert got["corrupt"] == 0
    assert got["destinations"] == {f"{OUT_GROUP}:{OUT_PORT}": count}
    assert after["InCsumErrors"] == before["InCsumErrors"]
    assert after["InErrors"] == before["InErrors"]

    assert relay.stop() == 0
    assert any(line.startswith(f"forwarded {count} ") for line in relay.lines), relay.lines
    assert xdp_prog(chain, chain.relay_in.ns, chain.IN) == ""
    assert IN_GROUP not in chain.igmp_groups(chain.relay_in.ns, chain.IN)


def test_ttl_one_is_dropped_not_forwarded(chain):
    start_relay(chain, chain.IN, "--rule", f"{IN_GROUP}:{IN_PORT}={chain.OUT}", "--interval", "1")
    receiver = start_receiver(chain, IN_GROUP, IN_PORT, 100, idle=1.0, first=3.0)  # nothing comes
    send(chain, IN_GROUP, IN_PORT, 100, rate=2000, ttl=1)
    got = result(receiver)
    assert got["received"] == 0


def test_second_attach_is_refused(chain):
    start_relay(chain, chain.IN, "--rule", f"{IN_GROUP}:{IN_PORT}={chain.OUT}")
    second = chain.exec(chain.relay_in.ns, mcr(), "attach", chain.IN, "--rule", f"{IN_GROUP}:{IN_PORT}={chain.OUT}",
                        check=False)
    assert second.returncode == 4
    assert "already has an XDP program" in second.stderr
    assert "Traceback" not in second.stderr


@pytest.mark.parametrize(
    "rule, message",
    [
        ("10.0.0.1:5001=out0", "not a multicast group"),
        ("239.1.1.1:0=out0", "port"),
        ("239.1.1.1:5001=nope9", "'nope9' does not exist"),
        ("239.1.1.1:5001=in0", "would loop"),
    ],
)
def test_bad_rule_exits_2_and_attaches_nothing(chain, rule, message):
    proc = chain.exec(chain.relay_in.ns, mcr(), "attach", chain.IN, "--rule", rule, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert xdp_prog(chain, chain.relay_in.ns, chain.IN) == ""


def test_unknown_input_interface(chain):
    proc = chain.exec(chain.relay_in.ns, mcr(), "attach", "nope0", "--rule", f"{IN_GROUP}:{IN_PORT}=out0",
                      check=False)
    assert proc.returncode == 2
    assert "'nope0' does not exist" in proc.stderr


def test_detach_removes_what_a_killed_relay_left(chain):
    relay = start_relay(chain, chain.IN, "--rule", f"{IN_GROUP}:{IN_PORT}={chain.OUT}")
    relay.stop(sig=9)
    assert "xdp" in xdp_prog(chain, chain.relay_in.ns, chain.IN)
    proc = chain.exec(chain.relay_in.ns, mcr(), "detach", chain.IN, check=False)
    assert proc.returncode == 0, proc.stderr
    assert xdp_prog(chain, chain.relay_in.ns, chain.IN) == ""
    again = chain.exec(chain.relay_in.ns, mcr(), "detach", chain.IN, check=False)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_not_root_gets_a_clear_message(chain):
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", mcr(), "attach",
                           "lo", "--rule", f"{IN_GROUP}:{IN_PORT}=eth9"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "needs root" in proc.stderr
    assert "Traceback" not in proc.stderr
