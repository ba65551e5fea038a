"""Rule syntax, per-rule checks and rule-set validation (mcr_xdp.rules)."""

from __future__ import annotations

import re
from ipaddress import ip_address
from pathlib import Path

import pytest

from mcr_xdp import abi
from mcr_xdp.errors import InterfaceError, RuleError
from mcr_xdp.rules import Output, Rule, RuleSet, diff, input_of, parse_rule, parse_rules, validate

IFINDEX = {"eth0": 2, "eth1": 3, "eth2": 4}
README = Path(__file__).resolve().parents[2] / "README.md"
MANY_OUTPUTS = ",".join(f"o{i}" for i in range(abi.MAX_OUTPUTS + 1))


def ip(text):
    return ip_address(text)


VALID = [
    # (rule text, input interface, expected Rule)
    pytest.param(
        "239.1.1.1:5001=eth1",
        "eth0",
        Rule("eth0", ip("239.1.1.1"), 5001, (Output("eth1"),)),
        id="keep-group-and-port",
    ),
    pytest.param(
        "239.1.1.1:5001=eth1/239.2.2.2:5002",
        "eth0",
        Rule("eth0", ip("239.1.1.1"), 5001, (Output("eth1", ip("239.2.2.2"), 5002),)),
        id="rewrite",
    ),
    pytest.param(
        "[ff3e::1]:5001=eth1/[ff3e::2]:5002",
        "eth0",
        Rule("eth0", ip("ff3e::1"), 5001, (Output("eth1", ip("ff3e::2"), 5002),)),
        id="ipv6-brackets",
    ),
    pytest.param(
        "192.0.2.1@232.1.1.1:5001=eth1",
        "eth0",
        Rule("eth0", ip("232.1.1.1"), 5001, (Output("eth1"),), source=ip("192.0.2.1")),
        id="ssm-source",
    ),
    pytest.param(
        "239.1.1.1:5001= eth1 , eth2/239.2.2.2:5002",
        "eth0",
        Rule("eth0", ip("239.1.1.1"), 5001, (Output("eth1"), Output("eth2", ip("239.2.2.2"), 5002))),
        id="fan-out-with-blanks",
    ),
    pytest.param(
        "239.0.0.251:65535=eth1",
        "eth0",
        Rule("eth0", ip("239.0.0.251"), 65535, (Output("eth1"),)),
        id="port-65535",
    ),
    pytest.param(
        "239.1.1.1:1=eth1",
        "eth0",
        Rule("eth0", ip("239.1.1.1"), 1, (Output("eth1"),)),
        id="port-1",
    ),
    pytest.param(
        "eth0/239.1.1.1:5001=eth1/239.2.2.2:5002",
        None,
        Rule("eth0", ip("239.1.1.1"), 5001, (Output("eth1", ip("239.2.2.2"), 5002),)),
        id="input-in-rule",
    ),
    pytest.param(
        "eth0/239.1.1.1:5001=eth1",
        "eth0",
        Rule("eth0", ip("239.1.1.1"), 5001, (Output("eth1"),)),
        id="input-in-rule-and-given",
    ),
]


RANGES = [
    # (rule text, key, spelled back as, what the input joins)
    pytest.param("239.1.0.0/16:5001=eth1", ("eth0", None, None, ip("239.1.0.0"), 16, 5001),
                 "eth0/239.1.0.0/16:5001=eth1", None, id="group-prefix"),
    pytest.param("239.1.1.1:*=eth1/239.2.2.2:6000", ("eth0", None, None, ip("239.1.1.1"), None, 0),
                 "eth0/239.1.1.1:*=eth1/239.2.2.2:6000", (ip("239.1.1.1"), None), id="any-port"),
    pytest.param("10.0.0.0/8@239.1.1.1:5001=eth1", ("eth0", ip("10.0.0.0"), 8, ip("239.1.1.1"), None, 5001),
                 "eth0/10.0.0.0/8@239.1.1.1:5001=eth1", (ip("239.1.1.1"), None), id="source-prefix-joins-asm"),
    pytest.param("eth0/239.1.0.0/16:*=eth1/239.2.0.0/16:*", ("eth0", None, None, ip("239.1.0.0"), 16, 0),
                 "eth0/239.1.0.0/16:*=eth1/239.2.0.0/16:*", None, id="prefix-onto-prefix-with-input"),
    pytest.param("[ff3e::/96]:*=eth1/[ff3e:1::/96]:7000", ("eth0", None, None, ip("ff3e::"), 96, 0),
                 "eth0/[ff3e::/96]:*=eth1/[ff3e:1::/96]:7000", None, id="ipv6-prefix"),
    pytest.param("[2001:db8::/32]@[ff3e::1]:5001=eth1", ("eth0", ip("2001:db8::"), 32, ip("ff3e::1"), None, 5001),
                 "eth0/2001:db8::/32@[ff3e::1]:5001=eth1", (ip("ff3e::1"), None), id="ipv6-source-prefix"),
    pytest.param("239.1.1.1/32:5001=eth1", ("eth0", None, None, ip("239.1.1.1"), None, 5001),
                 "eth0/239.1.1.1:5001=eth1", (ip("239.1.1.1"), None), id="full-length-prefix-is-exact"),
    pytest.param("192.0.2.1/32@232.1.1.1:5001=eth1", ("eth0", ip("192.0.2.1"), None, ip("232.1.1.1"), None, 5001),
                 "eth0/192.0.2.1@232.1.1.1:5001=eth1", (ip("232.1.1.1"), ip("192.0.2.1")), id="full-source-is-ssm"),
]


@pytest.mark.parametrize("text, key, spelled, joins", RANGES)
def test_parse_ranges(text, key, spelled, joins):
    rule = parse_rule(text, "eth0")
    assert (rule.key, str(rule), rule.joins) == (key, spelled, joins)
    assert rule.ranged == (rule.group_len is not None or rule.source_len is not None or rule.port == 0)
    assert parse_rule(str(rule)) == rule
    assert validate([rule], IFINDEX) == [rule]


@pytest.mark.parametrize("text, name", [("eth0/239.1.0.0/16:*=eth1", "eth0"), ("239.1.0.0/16:*=eth1", None),
                                        ("10.0.0.0/8@239.1.1.1:5=eth1", None), ("[ff3e::/96]:*=eth1", None),
                                        ("239.1.1.1:5=eth1/239.2.2.2:6", None), ("x/10.0.0.0/8@239.1.1.1:5=y", "x")])
def test_input_of(text, name):
    assert input_of(text) == name


VALID_OPTIONS = [
    pytest.param("239.1.1.1:5001=eth1;ttl=8", Rule("eth0", ip("239.1.1.1"), 5001, (Output("eth1"),), ttl=8),
                 id="ttl"),
    pytest.param("239.1.1.1:5001=eth1 ; ttl = 255", Rule("eth0", ip("239.1.1.1"), 5001, (Output("eth1"),), ttl=255),
                 id="ttl-blanks"),
    pytest.param("224.0.0.251:5353=eth1;ttl=255", Rule("eth0", ip("224.0.0.251"), 5353, (Output("eth1"),), ttl=255),
                 id="link-local-with-ttl"),
    pytest.param("[ff02::fb]:5353=eth1;ttl=255", Rule("eth0", ip("ff02::fb"), 5353, (Output("eth1"),), ttl=255),
                 id="ipv6-link-local-with-ttl"),
]


@pytest.mark.parametrize("text, expected", VALID_OPTIONS)
def test_parse_options(text, expected):
    rule = parse_rule(text, "eth0")
    assert rule == expected
    assert str(rule).endswith(f";ttl={expected.ttl}")
    assert parse_rule(str(rule)) == rule  # its own spelling parses back


@pytest.mark.parametrize("text, health, spelled", [
    ("239.1.1.1:5001=eth1;health=rtp", "rtp", "eth0/239.1.1.1:5001=eth1;health=rtp"),
    ("[ff3e::1]:5001=eth1 ; health = mpegts ; ttl=4", "mpegts", "eth0/[ff3e::1]:5001=eth1;ttl=4;health=mpegts"),
])
def test_parse_health(text, health, spelled):
    rule = parse_rule(text, "eth0")
    assert rule.health == health
    assert str(rule) == spelled
    assert parse_rule(str(rule)) == rule


@pytest.mark.parametrize("text, per_second, unit, spelled", [
    ("20kpps", 20_000, "pps", "20kpps"), ("1.5gbit", 1_500_000_000, "bit", "1500mbit"),
    ("500pps", 500, "pps", "500pps"),
    ("100Mbit", 100_000_000, "bit", "100mbit"), ("1234bit", 1234, "bit", "1234bit"),
])
def test_parse_police(text, per_second, unit, spelled):
    rule = parse_rule(f"239.1.1.1:5001=eth1;police={text}", "eth0")
    assert (rule.police.per_second, rule.police.unit, str(rule.police)) == (per_second, unit, spelled)
    assert parse_rule(str(rule)) == rule


def test_health_rules_have_a_limit():
    ruleset = RuleSet()
    for i in range(abi.MAX_HEALTH):
        ruleset.add(parse_rule(f"239.1.{i // 250}.{i % 250 + 1}:5001=eth1;health=rtp", "eth0"))
    ifindex = {"eth0": 1, "eth1": 2}
    ruleset.check([parse_rule("239.9.9.9:5001=eth1", "eth0")], ifindex)  # without: fine
    with pytest.raises(RuleError, match=f"{abi.MAX_HEALTH + 1} rules with ;health= or merge legs; the limit is "
                                        f"{abi.MAX_HEALTH}"):
        ruleset.check([parse_rule("239.9.9.9:5001=eth1;health=mpegts", "eth0")], ifindex)
    ruleset.remove(parse_rule("239.1.0.1:5001=eth1;health=rtp", "eth0"))
    ruleset.check([parse_rule("239.9.9.9:5001=eth1;health=mpegts", "eth0")], ifindex)


def test_a_changed_ttl_is_a_changed_rule():
    """The options are not part of the key: SIGHUP changes the rule in place."""
    old, new = parse_rule("239.1.1.1:5001=eth1", "eth0"), parse_rule("239.1.1.1:5001=eth1;ttl=3", "eth0")
    assert old.key == new.key
    assert diff([old], [new]) == ([], [], [new])


@pytest.mark.parametrize("text, iface, expected", VALID)
def test_parse_valid(text, iface, expected):
    rule = parse_rule(text, iface)
    assert rule == expected
    # The rule's own spelling (with its input) parses back to the same rule.
    assert parse_rule(str(rule)) == rule


def test_keep_output_uses_input_group_and_port():
    rule = parse_rule("239.1.1.1:5001=eth1", "eth0")
    out = rule.outputs[0]
    assert (rule.out_group(out), rule.out_port(out)) == (ip("239.1.1.1"), 5001)
    assert rule.family == abi.FAMILY_IPV4
    assert parse_rule("[ff3e::1]:5001=eth1", "eth0").family == abi.FAMILY_IPV6


UNICAST = [
    # (rule text, unicast input, unicast outputs, what the input joins)
    ("239.1.1.1:5001=eth1/10.0.2.5:6000", False, [True], ("239.1.1.1", None)),
    ("239.1.1.1:5001=eth1/10.0.2.5:6000,eth2/239.2.2.2:5002", False, [True, False], ("239.1.1.1", None)),
    ("239.1.1.1:*=eth1/10.0.2.5:*", False, [True], ("239.1.1.1", None)),
    ("10.0.1.2:5001=eth1/239.2.2.2:5002", True, [False], None),
    ("10.0.1.2:5001=eth1/10.0.2.5:6000", True, [True], None),
    ("[2001:db8::2]:5001=eth1/[ff3e::1]:5002", True, [False], None),
    ("[ff3e::1]:5001=eth1/[2001:db8::5]:6000;ttl=9", False, [True], ("ff3e::1", None)),
]


@pytest.mark.parametrize("text, unicast, outputs, joins", UNICAST)
def test_parse_unicast(text, unicast, outputs, joins):
    rule = parse_rule(text, "eth0")
    assert rule.unicast is unicast
    assert [o.unicast for o in rule.outputs] == outputs
    assert rule.joins == (None if joins is None else (ip_address(joins[0]), None))
    assert parse_rule(str(rule)) == rule  # its text parses back to itself


INVALID = [
    # (rule text, input interface, text the message must contain)
    pytest.param("10.0.0.1:5001=eth1", "eth0", "10.0.0.1 is not a multicast group", id="unicast-group"),
    pytest.param("239.1.1.1:5001=eth1/255.255.255.255:5002", "eth0", "nor a unicast address a host can have",
                 id="broadcast-output"),
    pytest.param("239.1.1.1:5001=eth1/0.0.0.0:5002", "eth0", "nor a unicast address", id="unspecified-output"),
    pytest.param("127.0.0.1:5001=eth1/239.1.1.1:5001", "eth0", "nor a unicast address", id="loopback-input"),
    pytest.param("10.0.0.1:*=eth1/239.1.1.1:5001", "eth0", "a unicast input takes one port, not *",
                 id="unicast-input-any-port"),
    pytest.param("10.0.0.1:5001=eth1/239.1.1.1:5001,eth2", "eth0", "gives each output its destination",
                 id="unicast-input-output-kept"),
    pytest.param("239.1.0.0/16:5001=eth1/10.0.0.5:6000", "eth0", "a unicast receiver takes one group's stream",
                 id="unicast-output-of-a-range"),
    pytest.param("[ff3e::1]:5001=eth1/10.0.0.5:6000", "eth0", "changes the IP version", id="unicast-output-v4-of-v6"),
    pytest.param("nowhere:5001=eth1", "eth0", "'nowhere' is not an IP address", id="group-not-an-address"),
    pytest.param("239.1.1.1:0=eth1", "eth0", "port '0'", id="port-0"),
    pytest.param("239.1.1.1:65536=eth1", "eth0", "port '65536'", id="port-65536"),
    pytest.param("239.1.1.1:abc=eth1", "eth0", "port 'abc'", id="port-abc"),
    pytest.param("239.1.1.1:-1=eth1", "eth0", "port '-1'", id="port-negative"),
    pytest.param("239.1.1.1:5001=eth1/239.2.2.2:0", "eth0", "port '0'", id="output-port-0"),
    pytest.param("239.1.1.1=eth1", "eth0", "'239.1.1.1' is not GROUP:PORT", id="no-port"),
    pytest.param("239.1.1.1:5001", "eth0", "has no outputs", id="missing-equals"),
    pytest.param("239.1.1.1:5001=", "eth0", "has no outputs", id="empty-outputs"),
    pytest.param("239.1.1.1:5001=eth0", "eth0", "input interface eth0", id="same-iface-in-and-out"),
    pytest.param(f"239.1.1.1:5001={MANY_OUTPUTS}", "eth0", f"limit is {abi.MAX_OUTPUTS}", id="too-many-outputs"),
    pytest.param("239.1.1.1:5001=eth1,eth1", "eth0", "eth1 appears twice", id="same-output-twice"),
    pytest.param("239.9.9.9@239.1.1.1:5001=eth1", "eth0", "source 239.9.9.9 is not a unicast", id="multicast-source"),
    pytest.param("0.0.0.0@239.1.1.1:5001=eth1", "eth0", "source 0.0.0.0 is not a unicast", id="unspecified-source"),
    pytest.param("127.0.0.1@239.1.1.1:5001=eth1", "eth0", "source 127.0.0.1 is not a unicast", id="loopback-source"),
    pytest.param("255.255.255.255@239.1.1.1:5001=eth1", "eth0", "source 255.255.255.255 is not a unicast",
                 id="broadcast-source"),
    pytest.param("240.0.0.1@239.1.1.1:5001=eth1", "eth0", "source 240.0.0.1 is not a unicast", id="reserved-source"),
    pytest.param("::1@[ff3e::1]:5001=eth1", "eth0", "source ::1 is not a unicast", id="ipv6-loopback-source"),
    pytest.param("::@[ff3e::1]:5001=eth1", "eth0", "source :: is not a unicast", id="ipv6-unspecified-source"),
    pytest.param("224.0.0.1:5001=eth1", "eth0", "224.0.0.1 is a link-local group", id="link-local-group"),
    pytest.param("224.0.0.251:5353=eth1", "eth0", "224.0.0.251 is a link-local group", id="mdns-group"),
    pytest.param("[ff02::1]:5001=eth1", "eth0", "ff02::1 is a link-local group", id="ipv6-link-local-group"),
    pytest.param("[ff12::fb]:5001=eth1", "eth0", "ff12::fb is a link-local group", id="ipv6-link-local-transient"),
    pytest.param("[ff01::1]:5001=eth1", "eth0", "ff01::1 is a link-local group", id="ipv6-interface-local-group"),
    pytest.param("239.1.1.1:5001=eth1/224.0.0.9:520", "eth0", "224.0.0.9 is a link-local group",
                 id="link-local-output-group"),
    pytest.param("239.1.1.1:5001=eth1;ttl=0", "eth0", "ttl='0': expected a TTL from 1 to 255", id="ttl-0"),
    pytest.param("239.1.1.1:5001=eth1;ttl=256", "eth0", "ttl='256'", id="ttl-256"),
    pytest.param("239.1.1.1:5001=eth1;ttl=x", "eth0", "ttl='x'", id="ttl-not-a-number"),
    pytest.param("239.1.1.1:5001=eth1;ttl", "eth0", "ttl=''", id="ttl-without-value"),
    pytest.param("239.1.1.1:5001=eth1;ttl=4;ttl=5", "eth0", "option ttl given twice", id="ttl-twice"),
    pytest.param("239.1.1.1:5001=eth1;bogus=1", "eth0",
                 "unknown option 'bogus' (options: ttl=N, health=rtp|mpegts, police=RATE, merge=rtp)",
                 id="unknown-option"),
    pytest.param("239.1.1.1:5001|eth2/239.1.1.2:5001=eth1", "eth0", "joined by |: that is a merged stream, which "
                 "needs ;merge=rtp", id="legs-without-merge"),
    pytest.param("239.1.1.1:5001|239.1.1.1:5001=eth1;merge=rtp", "eth0", "leg eth0/239.1.1.1:5001 appears twice",
                 id="leg-twice"),
    pytest.param("239.1.0.0/16:5001|eth2/239.1.1.2:5001=eth1;merge=rtp", "eth0",
                 "leg eth0/239.1.0.0/16:5001 is a range", id="range-leg"),
    pytest.param("239.1.1.1:*|eth2/239.1.1.2:5001=eth1;merge=rtp", "eth0", "is a range", id="any-port-leg"),
    pytest.param("239.1.1.1:5001|eth1/239.1.1.2:5001=eth1;merge=rtp", "eth0",
                 "output eth1 is the input interface eth1", id="leg-on-the-output"),
    pytest.param("239.1.1.1:5001|eth2/[ff3e::1]:5001=eth1/239.3.3.3:5001;merge=rtp", "eth0",
                 "changes the IP version", id="legs-of-two-families"),
    pytest.param("239.1.1.1:5001|eth2/239.1.1.2:5001=eth1;merge=rtp", "eth0",
                 "output eth1 keeps each leg's group and port, and the legs differ: give it the merged stream's, "
                 "e.g. eth1/239.1.1.1:5001", id="merged-output-keeps-the-group"),
    pytest.param("239.1.1.1:5001=eth1;merge=mpegts", "eth0", "merge='mpegts': expected rtp", id="merge-kind"),
    pytest.param("|".join(f"239.1.1.{i}:5001" for i in range(1, 10)) + "=eth1;merge=rtp", "eth0",
                 "merges 9 legs; the limit is 8", id="too-many-legs"),
    pytest.param("239.1.1.1:5001=eth1;health=smpte", "eth0", "health='smpte': expected one of rtp, mpegts",
                 id="unknown-health-kind"),
    pytest.param("239.1.1.1:5001=eth1;health=rtp;health=rtp", "eth0", "option health given twice",
                 id="health-twice"),
    pytest.param("239.1.1.1:5001=eth1;police=20kbps", "eth0", "police='20kbps': '20kbps' is not a rate like",
                 id="police-unit"),
    pytest.param("239.1.1.1:5001=eth1;police=0pps", "eth0", "out of range", id="police-zero"),
    pytest.param("239.1.1.1:5001=eth1;police=200gbit", "eth0", "out of range", id="police-too-fast"),
    pytest.param("239.1.1.1:5001=eth1;police=0.5kpps5", "eth0", "not a rate", id="police-garbage"),
    pytest.param("239.1.1.1:5001=eth1;", "eth0", "unknown option ''", id="empty-option"),
    pytest.param("2001:db8::1@239.1.1.1:5001=eth1", "eth0", "different IP versions", id="source-other-family"),
    pytest.param("ff3e::1:5001=eth1", "eth0", "write IPv6 groups in brackets", id="v6-no-brackets"),
    pytest.param("[239.1.1.1]:5001=eth1", "eth0", "brackets are for IPv6", id="v4-in-brackets"),
    pytest.param("239.1.1.1:5001=eth1/[ff3e::1]:5001", "eth0", "changes the IP version", id="output-other-family"),
    pytest.param("239.1.1.1:5001=eth 1", "eth0", "output interface 'eth 1'", id="bad-output-name"),
    pytest.param("239.1.1.1:5001=eth1", "name-too-long-16", "input interface 'name-too-long-16'", id="bad-input-name"),
    pytest.param("239.1.1.1:5001=eth1", None, "does not say its input interface", id="no-input"),
    pytest.param("eth2/239.1.1.1:5001=eth1", "eth0", "names input 'eth2' but is given for 'eth0'", id="other-input"),
    pytest.param("239.1.1.0/16:5001=eth1", "eth0", "has bits set past its prefix length: the range is 239.1.0.0/16",
                 id="range-host-bits"),
    pytest.param("239.1.0.0/33:5001=eth1", "eth0", "is not an IP address or prefix", id="range-too-long"),
    pytest.param("192.0.0.0/2:5001=eth1", "eth0", "192.0.0.0/2 is not a range of multicast groups",
                 id="range-beyond-multicast"),
    pytest.param("224.0.0.0/16:5001=eth1", "eth0", "group range 224.0.0.0/16 holds link-local groups",
                 id="range-holding-link-local"),
    pytest.param("[ff00::/8]:5001=eth1", "eth0", "group range ff00::/8 holds link-local groups",
                 id="ipv6-range-all-scopes"),
    pytest.param("[ff10::/12]:5001=eth1", "eth0", "holds link-local groups", id="ipv6-range-scope-free"),
    pytest.param("10.0.0.1@239.1.0.0/16:5001=eth1", "eth0", "needs one group, not the range 239.1.0.0/16",
                 id="source-with-group-range"),
    pytest.param("10.0.0.0/8@239.1.0.0/16:*=eth1", "eth0", "needs one group", id="source-range-with-group-range"),
    pytest.param("0.0.0.0/0@239.1.1.1:5001=eth1", "eth0", "source range 0.0.0.0/0 is not a range of unicast",
                 id="source-range-everything"),
    pytest.param("120.0.0.0/5@239.1.1.1:5001=eth1", "eth0", "is not a range of unicast", id="source-range-loopback"),
    pytest.param("239.1.0.0/16:5001=eth1/239.2.0.0/24:5001", "eth0", "maps onto a prefix of the same length (/16",
                 id="range-onto-other-length"),
    pytest.param("239.1.0.0/16:5001=eth1/239.2.2.2:5001", "eth0", "maps onto a prefix of the same length",
                 id="range-onto-one-group"),
    pytest.param("239.1.1.1:5001=eth1/239.2.0.0/16:5001", "eth0", "sends to one group, not a range",
                 id="one-group-onto-range"),
    pytest.param("239.1.1.1:**=eth1", "eth0", "port '**'", id="bad-wildcard"),
]


@pytest.mark.parametrize("text, iface, message", INVALID)
def test_parse_invalid(text, iface, message):
    with pytest.raises(RuleError, match=re.escape(message)):
        parse_rule(text, iface)


def test_valid_set():
    ruleset = [parse_rule("239.1.1.1:5001=eth1", "eth0"), parse_rule("239.1.1.1:5002=eth0", "eth1")]
    assert validate(ruleset, IFINDEX) == ruleset


INVALID_SETS = [
    # (rules as (text, input iface), error type, text the message must contain)
    pytest.param([("239.1.1.1:5001=eth9", "eth0")], InterfaceError, "interface 'eth9'", id="unknown-output"),
    pytest.param([("239.1.1.1:5001=eth1", "eth7")], InterfaceError, "interface 'eth7'", id="unknown-input"),
    pytest.param(
        [("239.1.1.1:5001=eth1", "eth0"), ("239.1.1.1:5001=eth2", "eth0")],
        RuleError,
        "duplicate rule for eth0 239.1.1.1:5001",
        id="duplicate-rule",
    ),
    pytest.param(
        [(f"239.1.1.{1 + i // 60000}:{1 + i % 60000}=eth1", "eth0") for i in range(abi.MAX_RULES + 1)],
        RuleError,
        f"{abi.MAX_RULES + 1} rules; the limit is {abi.MAX_RULES}",
        id="too-many-rules",
    ),
    pytest.param(
        [(f"239.1.1.1:{port}=o{port}", "eth0") for port in range(1, abi.MAX_PORTS + 2)],
        RuleError,
        f"{abi.MAX_PORTS + 1} output interfaces; the limit is {abi.MAX_PORTS}",
        id="too-many-output-interfaces",
    ),
]


@pytest.mark.parametrize("specs, error, message", INVALID_SETS)
def test_validate_invalid(specs, error, message):
    ruleset = [parse_rule(text, iface) for text, iface in specs]
    known = IFINDEX | {f"o{i}": 100 + i for i in range(abi.MAX_PORTS + 2)}
    with pytest.raises(error, match=re.escape(message)):
        validate(ruleset, known)


# Every shape the datapath relays since ABI 2 (IPv6, SSM, fan-out, one
# interface twice with two groups) passes whole-set validation.
ACCEPTED_SETS = [
    pytest.param("239.1.1.1:5001=eth1", id="keep"),
    pytest.param("239.1.1.1:5001=eth1/239.2.2.2:5002", id="rewrite"),
    pytest.param("[ff3e::1]:5001=eth1/[ff3e::2]:5002", id="ipv6"),
    pytest.param("192.0.2.1@232.1.1.1:5001=eth1", id="ssm"),
    pytest.param("2001:db8::1@[ff3e::1]:5001=eth1", id="ipv6-ssm"),
    pytest.param("224.0.1.1:123=eth1", id="just-above-the-link-local-block"),
    pytest.param("[ff05::1:3]:547=eth1", id="ipv6-site-local-scope"),
    pytest.param("239.1.1.1:5001=eth1,eth2", id="fan-out"),
    pytest.param("239.1.1.1:5001=eth1/239.2.2.2:5002,eth1/239.3.3.3:5002", id="same-iface-two-groups"),
]


@pytest.mark.parametrize("text", ACCEPTED_SETS)
def test_validate_accepts(text):
    rule = parse_rule(text, "eth0")
    assert validate([rule], IFINDEX) == [rule]


@pytest.mark.parametrize("text", ["239.1.1.1:5001=lo", "239.1.1.1:5001=eth1,lo"])
def test_loopback_interfaces_are_refused(text):
    rule = parse_rule(text, "eth0")
    with pytest.raises(InterfaceError, match="'lo' is a loopback device"):
        validate([rule], IFINDEX | {"lo": 1}, loopback=["lo"])


def test_a_loopback_input_is_refused():
    rule = parse_rule("239.1.1.1:5001=eth1", "lo")
    with pytest.raises(InterfaceError, match="'lo' is a loopback device"):
        validate([rule], IFINDEX | {"lo": 1}, loopback=["lo"])


def test_every_rule_of_the_readme_table_is_valid():
    """The README's rule table: each example is a rule this relay takes."""
    examples = re.findall(r"^\| `([^`]+=[^`]+)` \|", README.read_text(), re.M)
    assert len(examples) >= 13 and any("/16:*" in e for e in examples)
    for text in examples:
        rules = parse_rules(text.replace("\\|", "|"), "eth0")  # a | in a table cell is written \|
        assert validate(rules, IFINDEX) == rules
        for rule in rules:
            assert parse_rule(str(rule)) == rule


def test_merge_legs_each_a_rule_naming_the_others():
    legs = parse_rules("eth0/239.1.1.1:5001|eth1/10.0.0.1@239.1.1.2:5001|239.1.1.3:5001=eth2/239.3.3.3:5003;merge=rtp")
    assert [(r.iface, str(r.group), r.source) for r in legs] == [
        ("eth0", "239.1.1.1", None), ("eth1", "239.1.1.2", ip_address("10.0.0.1")),
        ("eth0", "239.1.1.3", None)]  # a leg without INPUT/ takes the rule's
    assert legs[1].merge_with == ("eth0/239.1.1.1:5001", "eth0/239.1.1.3:5001")
    assert len({r.merge_name for r in legs}) == 1  # one stream
    assert {r.merge for r in legs} == {"rtp"} and {r.health_kind for r in legs} == {"rtp"}
    # Each leg's text parses back to that leg (the state file and restart go by it).
    for leg in legs:
        assert parse_rule(str(leg)) == leg
        assert str(leg).startswith(leg.leg + "|")
    assert parse_rules("eth0/239.1.1.1:5001=eth2;merge=rtp;health=mpegts")[0].health_kind == "mpegts"


def test_merged_streams_count_their_legs_against_the_limits():
    ruleset = RuleSet()
    ifindex = {"eth0": 1, "eth1": 2, "eth2": 3}
    for i in range(abi.MAX_MERGES):  # one leg: a stream whose duplicates are dropped
        ruleset.add(parse_rule(f"eth0/239.1.{i // 250}.{i % 250 + 1}:5001=eth2;merge=rtp"))
    assert ruleset.health == abi.MAX_MERGES  # a leg tracks its own arrivals
    with pytest.raises(RuleError, match=f"{abi.MAX_MERGES + 1} merged streams; the limit is {abi.MAX_MERGES}"):
        ruleset.check(parse_rules("eth0/239.9.9.9:5001=eth2;merge=rtp"), ifindex)
    with pytest.raises(RuleError, match="duplicate rule for eth0 239.1.0.1:5001"):
        ruleset.check(parse_rules("eth0/239.1.0.1:5001=eth2"), ifindex)
    for i in range(abi.MAX_MERGES):
        ruleset.remove(parse_rule(f"eth0/239.1.{i // 250}.{i % 250 + 1}:5001=eth2;merge=rtp"))
    for i in range(abi.MAX_HEALTH // 2):
        for leg in parse_rules(f"eth0/239.2.{i // 250}.{i % 250 + 1}:5001|eth1/239.2.{i // 250}.{i % 250 + 1}:5001"
                               "=eth2;merge=rtp"):
            ruleset.add(leg)
    with pytest.raises(RuleError, match=f"{abi.MAX_HEALTH + 2} rules with ;health= or merge legs"):
        ruleset.check(parse_rules("eth0/239.9.9.9:5001|eth1/239.9.9.9:5001=eth2;merge=rtp"), ifindex)
