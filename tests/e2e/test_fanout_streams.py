"""Fan-out, many streams, 1000 rules, runtime rule changes, SSM and IPv6,
end to end through the XDP relay."""

from __future__ import annotations

import ipaddress

import pytest

from tests.fixtures.relay import (
    SCALE,
    relay_cli,
    relay_streams,
    result,
    send,
    start_receiver,
    start_relay,
    start_sender,
)

pytestmark = pytest.mark.e2e


def assert_intact(got: dict, count: int, dest: str | None = None) -> None:
    assert got["unique"] == count, got
    assert got["missing"] == 0, got
    assert got["duplicates"] == 0, got
    assert got["corrupt"] == 0, got
    if dest is not None:
        assert got["destinations"] == {dest: count}, got


@pytest.mark.parametrize("chain", [3], indirect=True)
def test_one_rule_three_outputs(chain):
    count = 3000
    outs = [("239.3.3.1", 6001), ("239.3.3.2", 6002), ("239.3.3.3", 6003)]
    rule = "239.1.1.1:5001=" + ",".join(f"out{i}/{g}:{p}" for i, (g, p) in enumerate(outs))
    relay = start_relay(chain, chain.IN, "--rule", rule, "--interval", "1")
    receivers = [start_receiver(chain, g, p, count, sink=i) for i, (g, p) in enumerate(outs)]
    before = [chain.snmp(s.ns) for s in chain.sink]
    send(chain, "239.1.1.1", 5001, count, rate=3000, size=300)
    for i, (g, p) in enumerate(outs):
        assert_intact(result(receivers[i]), count, f"{g}:{p}")
        after = chain.snmp(chain.sink[i].ns)
        assert after["InCsumErrors"] == before[i]["InCsumErrors"]
    assert relay.stop() == 0


def test_one_output_interface_twice_with_two_groups(chain):
    count = 2000
    start_relay(chain, chain.IN, "--rule", "239.1.1.1:5001=out0/239.4.4.1:7001,out0/239.4.4.2:7002")
    first = start_receiver(chain, "239.4.4.1", 7001, count)
    second = start_receiver(chain, "239.4.4.2", 7002, count)
    send(chain, "239.1.1.1", 5001, count, rate=2000)
    assert_intact(result(first), count, "239.4.4.1:7001")
    assert_intact(result(second), count, "239.4.4.2:7002")


@pytest.mark.parametrize("streams", [1, 2, 5, 50])
def test_concurrent_streams_no_loss(chain, streams):
    """The predecessor lost everything once two groups were joined."""
    for got in relay_streams(chain, streams, 2000).values():
        assert_intact(got, 2000)


@pytest.mark.parametrize("mode", [[], ["--mode", "userspace", "--workers", "2"]], ids=["xdp", "userspace"])
def test_thousand_rules_and_memberships(chain, tmp_path, mode):
    """In userspace mode the packet filter holds at most 815 exact IPv4
    pairs: 1000 rules take its wider form, and the workers the rest."""
    n = 1000
    in_first, out_first = ipaddress.ip_address("239.30.0.1"), ipaddress.ip_address("239.40.0.1")
    lines = [f'  "{in_first + i}:5001={chain.OUT}/{out_first + i}:5002",' for i in range(n)]
    cfg = tmp_path / "relay.toml"
    cfg.write_text("[inputs.in0]\nrules = [\n" + "\n".join(lines) + "\n]\n")
    relay = start_relay(chain, "--config", str(cfg), *mode)
    assert relay.wait_for("more rules")
    joined = chain.igmp_groups(chain.relay_in.ns, chain.IN)
    assert {str(in_first + i) for i in range(n)} <= joined
    listed = relay_cli(chain, "rule", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"rule"') == n
    # A sample: the first and the last five streams.
    for start in (0, n - 5):
        receiver = start_receiver(chain, str(out_first + start), 5002, 300, streams=5)
        send(chain, str(in_first + start), 5001, 300, rate=1000, streams=5)
        got = result(receiver)
        for i in range(5):
            assert_intact(got[f"{out_first + start + i}:5002"], 300)


@pytest.mark.parametrize("mode", [[], ["--mode", "userspace", "--workers", "2"]], ids=["xdp", "userspace"])
def test_rules_change_while_traffic_flows(chain, mode):
    """In XDP a change is a map update; in userspace mode it has to reach
    every worker: either way the untouched stream loses nothing."""
    steady, extra = ("239.1.1.1", "239.2.2.2"), ("239.1.1.5", "239.2.2.5")
    count = 6000
    start_relay(chain, chain.IN, "--rule", f"{steady[0]}:5001={chain.OUT}/{steady[1]}:5002", *mode)
    steady_rx = start_receiver(chain, steady[1], 5002, count)
    extra_rx = start_receiver(chain, extra[1], 5002, 400, idle=4.0)
    flow = start_sender(chain, steady[0], 5001, count, rate=2000)

    added = relay_cli(chain, "rule", "add", f"{extra[0]}:5001={chain.OUT}/{extra[1]}:5002")
    assert added.returncode == 0, added.stderr
    rule_id = added.stdout.split()[2].rstrip(":")
    send(chain, extra[0], 5001, 200, rate=1000)
    deleted = relay_cli(chain, "rule", "del", rule_id)
    assert deleted.returncode == 0, deleted.stderr
    send(chain, extra[0], 5001, 200, rate=1000, first_seq=200)
    flow.wait_for('"sent"', timeout=60 * SCALE)

    got = result(steady_rx)
    assert_intact(got, count)
    assert got["received"] == count, got  # no strays
    got = result(extra_rx)
    assert got["unique"] == 200 and got["received"] == 200, got  # seqs 0..199 only
    assert got["missing"] == 200  # 200..399 were sent after the rule was deleted


def test_ssm_forwards_only_the_named_source(chain):
    chain.exec(chain.src.ns, "ip", "addr", "add", "10.200.1.3/24", "dev", chain.src.name)
    start_relay(chain, chain.IN, "--rule", f"10.200.1.1@232.1.1.1:5001={chain.OUT}")
    mcfilter = chain.exec(chain.relay_in.ns, "cat", "/proc/net/mcfilter").stdout
    assert "0xe8010101 0x0ac80101" in mcfilter, mcfilter
    receiver = start_receiver(chain, "232.1.1.1", 5001, 500, idle=2.0)
    send(chain, "232.1.1.1", 5001, 500, rate=2000, source="10.200.1.1")
    send(chain, "232.1.1.1", 5001, 500, rate=2000, source="10.200.1.3", first_seq=500)
    got = result(receiver)
    assert got["received"] == 500, got
    assert got["missing"] == 0  # seqs 0..499: the named source's


def test_ipv6_stream_relayed_with_valid_checksums(chain):
    count = 3000
    start_relay(chain, chain.IN, "--rule", f"[ff3e::1]:5001={chain.OUT}/[ff3e::2]:5002")
    igmp6 = chain.exec(chain.relay_in.ns, "cat", "/proc/net/igmp6").stdout
    assert any(line.split()[1] == chain.IN and line.split()[2] == "ff3e0000000000000000000000000001"
               for line in igmp6.splitlines())
    receiver = start_receiver(chain, "ff3e::2", 5002, count)
    before = chain.snmp6(chain.sink[0].ns)
    send(chain, "ff3e::1", 5001, count, rate=3000, size=500)
    got = result(receiver)
    after = chain.snmp6(chain.sink[0].ns)
    assert_intact(got, count, "ff3e::2:5002")
    assert after["Udp6InCsumErrors"] == before["Udp6InCsumErrors"]
    assert after["Udp6InErrors"] == before["Udp6InErrors"]
