"""Range rules end to end: a group prefix mapped onto another (host bits
kept), any port, a source prefix, IPv6, in every mode; the precedence of
exact rules over ranges; joins (a range joins nothing; join = "none").
Concurrent streams, exact counts at socket receivers on the output network,
TTL as asked and no checksum error there."""

from __future__ import annotations

import json

import pytest

from mcr_xdp.lab.proc import Proc
from tests.fixtures.relay import SCALE, relay_cli, send, start_receiver, start_relay

pytestmark = pytest.mark.e2e

MODES = {"xdp-native": ("--mode", "xdp-native"), "xdp-generic": ("--mode", "xdp-generic"),
         "tc": ("--mode", "tc"), "userspace": ("--mode", "userspace", "--workers", "2")}
COUNT = 2000


def _streams(chain, cmd: str, dests: list[str], *args: str, ns: str | None = None, iface: str | None = None) -> Proc:
    """lab.traffic CMD with one --dest per stream (GROUP:PORT, [V6]:PORT)."""
    dest_args = [a for d in dests for a in ("--dest", d)]
    proc = Proc(chain.python(ns, "-m", "mcr_xdp.lab.traffic", cmd, *dest_args, "--iface", iface, "--count",
                             str(COUNT), *args))
    chain.procs.append(proc)
    return proc


def relay_streams(chain, sent: list[str], expected: list[str], source: str | None = None) -> dict:
    """COUNT packets to each of sent, all at once (2 kpps each); what the
    output network's receiver got for each of expected."""
    receiver = _streams(chain, "recv", expected, "--idle-timeout", "2", ns=chain.sink[0].ns,
                        iface=chain.sink[0].name)
    receiver.wait_for("ready")
    csum = chain.snmp(chain.sink[0].ns)["InCsumErrors"], chain.snmp6(chain.sink[0].ns).get("Udp6InCsumErrors", 0)
    sender = _streams(chain, "send", sent, "--rate", "2000", "--ttl", "16",
                      *(("--source", source) if source else ()), ns=chain.src.ns, iface=chain.src.name)
    sender.wait_for('"sent"', timeout=(COUNT / 2000 + 60) * SCALE)
    got = json.loads(receiver.wait_for('"received"', timeout=120 * SCALE))
    after = chain.snmp(chain.sink[0].ns)["InCsumErrors"], chain.snmp6(chain.sink[0].ns).get("Udp6InCsumErrors", 0)
    assert after == csum, "checksum errors at the receiver"
    return got


def assert_exact(got: dict, expected: list[str], ttl: int = 15) -> None:
    for dest in expected:
        one = got[dest.replace("[", "").replace("]", "")]  # the receiver's keys: GROUP:PORT
        assert (one["unique"], one["duplicates"], one["ttls"]) == (COUNT, 0, {str(ttl): COUNT}), (dest, one)


@pytest.mark.parametrize("mode", MODES)
def test_a_group_range_maps_onto_another_prefix(chain, mode):
    """239.1.0.0/16 onto 239.2.0.0/16 for any port, and an exact rule inside
    the range that beats it: three streams at once, each where it belongs."""
    start_relay(chain, chain.IN, "--rule", f"239.1.0.0/16:*={chain.OUT}/239.2.0.0/16:*",
                "--rule", f"239.1.0.7:5001={chain.OUT}/239.9.9.9:5009", *MODES[mode])
    expected = ["239.2.0.1:5001", "239.2.200.3:6000", "239.9.9.9:5009"]
    got = relay_streams(chain, ["239.1.0.1:5001", "239.1.200.3:6000", "239.1.0.7:5001"], expected)
    assert_exact(got, expected)
    # The exact rule joined its group; the range joined nothing, and says so.
    assert "239.1.0.7" in chain.igmp_groups(chain.relay_in.ns, chain.IN)
    joined = chain.igmp_groups(chain.relay_in.ns, chain.IN)
    assert not {g for g in joined if g.startswith("239.1.") and g != "239.1.0.7"}, joined
    status = json.loads(relay_cli(chain, "status", "--json").stdout)
    unjoined = "239.1.0.0/16 is a group range: no group of it is joined"
    assert any(unjoined in n for n in status["notices"]), status


@pytest.mark.parametrize("mode", ["xdp-native", "userspace"])
def test_a_source_range_then_the_groups_any_port_rule(chain, mode):
    """10.200.1.0/28@239.3.3.3:5001 for its senders; another sender of the
    group falls to 239.3.3.3:* (any source, any port)."""
    chain.exec(chain.src.ns, "ip", "addr", "add", "10.200.1.100/24", "dev", chain.src.name)
    start_relay(chain, chain.IN, "--rule", f"10.200.1.0/28@239.3.3.3:5001={chain.OUT}/239.4.4.4:5004",
                "--rule", f"239.3.3.3:*={chain.OUT}/239.5.5.5:*", *MODES[mode])
    assert "239.3.3.3" in chain.igmp_groups(chain.relay_in.ns, chain.IN)  # joined from any source
    got = relay_streams(chain, ["239.3.3.3:5001"], ["239.4.4.4:5004"], source="10.200.1.1")
    assert_exact(got, ["239.4.4.4:5004"])
    got = relay_streams(chain, ["239.3.3.3:5001"], ["239.5.5.5:5001"], source="10.200.1.100")
    assert_exact(got, ["239.5.5.5:5001"])


@pytest.mark.parametrize("mode", ["xdp-native", "tc", "userspace"])
def test_an_ipv6_range(chain, mode):
    start_relay(chain, chain.IN, "--rule", f"[ff3e::/96]:*={chain.OUT}/[ff3e:1::/96]:*", *MODES[mode])
    expected = ["[ff3e:1::1:5]:5001", "[ff3e:1::a:b]:7000"]
    got = relay_streams(chain, ["[ff3e::1:5]:5001", "[ff3e::a:b]:7000"], expected)
    assert_exact(got, expected)


def test_join_none_joins_nothing_and_still_relays(chain):
    """An input whose traffic arrives unasked (static joins upstream) can
    join nothing: the relay still relays what reaches it."""
    start_relay(chain, chain.IN, "--rule", f"239.6.6.6:5001={chain.OUT}", "--join", "none")
    assert "239.6.6.6" not in chain.igmp_groups(chain.relay_in.ns, chain.IN)
    receiver = start_receiver(chain, "239.6.6.6", 5001, 500, idle=2.0)
    send(chain, "239.6.6.6", 5001, 500, rate=2000)
    got = json.loads(receiver.wait_for('"received"', timeout=120 * SCALE))
    assert (got["unique"], got["duplicates"]) == (500, 0), got
