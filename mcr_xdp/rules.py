"""Rules: parsing, validation and diffing. Pure: no kernel, no I/O.

Syntax, everywhere (CLI, config, control socket):
    [INPUT/][SOURCE@]GROUP:PORT=OUT[,OUT...][;OPTION...]
    OUT = IFACE            keep group and port
        | IFACE/GROUP:PORT rewrite to a new group and port
        | IFACE/ADDR:PORT  send to a unicast receiver (its next hop's MAC
                           from the kernel's neighbour table)
    OPTION = ttl=N         send with TTL / hop limit N (1-255) instead of
                           the received one minus one
           | health=rtp    count the stream's RTP sequence gaps, duplicates,
                           reordering and SSRC changes in the datapath
           | health=mpegts count MPEG-TS continuity errors per PID (and the
                           RTP sequence, when an RTP header comes first)
           | police=RATE   drop what goes over RATE: 20kpps, 500pps,
                           100mbit, 1.5gbit (bits of the frames as received)
           | merge=rtp     seamless protection: the left side lists the legs
                           that carry one RTP stream, [INPUT/][SOURCE@]GROUP:PORT
                           joined by |, and only the first copy of each RTP
                           sequence number, from whichever leg, goes on
IPv6 addresses go in brackets: [ff3e::1]:5001. INPUT may be left out where
the input interface is given separately (one input interface).

Ranges: GROUP may be a prefix (239.1.0.0/16, [ff3e::/96]), PORT may be *
(any port), SOURCE may be a prefix (10.0.0.0/8) when GROUP is one group.
An output of a group range keeps the group, or maps the range onto another
prefix of the same length (host bits kept); an output port * keeps the
port. A packet takes the first of: the exact (source, group, port) rule,
the exact (group, port) rule, the range rule of its port with the longest
prefix, the any-port rule with the longest prefix.

Unicast inputs: GROUP may be a unicast address of the input interface
(10.0.1.2:5001): the relay takes the UDP stream sent there and sends it
on; such a rule gives every output its destination.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping

from . import abi
from .errors import InterfaceError, RuleError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Longest name the kernel accepts (IFNAMSIZ - 1); no '/', ',', '=', blanks.
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:\[\]]+)):(?P<port>[^:]+)$")


ANY_PORT = 0  # Rule.port of a rule for every port (written *)


@dataclasses.dataclass(frozen=True)
class Output:
    iface: str
    group: Address | None = None  # None: keep the input group
    port: int | None = None  # None: keep the input port
    group_len: int | None = None  # the prefix a group range maps onto; None: one group

    def __str__(self) -> str:
        if self.group is None:
            return self.iface
        return f"{self.iface}/{_fmt_endpoint(self.group, self.port, self.group_len)}"

    @property
    def unicast(self) -> bool:
        """A unicast receiver (head-end replication): sent to its next hop's MAC."""
        return self.group is not None and not self.group.is_multicast


@dataclasses.dataclass(frozen=True)
class Rate:
    """A policer's rate (;police=RATE): per second, packets or bits (of
    frames as received, Ethernet header included)."""

    per_second: int
    unit: str  # "pps" or "bit"

    @property
    def bits(self) -> bool:
        return self.unit == "bit"

    def __str__(self) -> str:
        for prefix, factor in (("g", 10**9), ("m", 10**6), ("k", 10**3)):
            if self.per_second % factor == 0:
                return f"{self.per_second // factor}{prefix}{self.unit}"
        return f"{self.per_second}{self.unit}"


_RATE = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<prefix>[kmg]?)(?P<unit>pps|bit)$")
_PREFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
MAX_PPS = 1_000_000_000  # 10^9 packets or 10^11 bits a second: past any one stream, and the
MAX_BITS = 100_000_000_000  # datapath's token arithmetic (units * 10^9, 64 bits) stays exact


def parse_rate(text: str) -> Rate:
    """"20kpps", "100mbit", "1.5gbit" -> Rate; ValueError if not a rate."""
    m = _RATE.match(text.strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not a rate like 20kpps or 100mbit")
    value = float(m["n"]) * _PREFIX[m["prefix"]]
    if value != int(value):
        raise ValueError(f"{text!r} is not a whole number of {m['unit']} a second")
    rate = Rate(int(value), m["unit"])
    if not 1 <= rate.per_second <= (MAX_BITS if rate.bits else MAX_PPS):
        raise ValueError(f"{text!r} is out of range (1pps to 1gpps, 1bit to 100gbit)")
    return rate


@dataclasses.dataclass(frozen=True)
class Rule:
    iface: str  # input interface
    group: Address
    port: int
    outputs: tuple[Output, ...]
    source: Address | None = None  # SSM source (the network address of a source range)
    ttl: int | None = None  # ;ttl=N: the outgoing TTL / hop limit; None: the received one minus one
    group_len: int | None = None  # prefix length of a group range; None: one group
    source_len: int | None = None  # prefix length of a source range; None: one source (or any)
    health: str | None = None  # ;health=KIND: a HEALTH_KINDS stream check in the datapath
    police: Rate | None = None  # ;police=RATE: a token bucket in the datapath
    merge: str | None = None  # ;merge=KIND: a leg of a merged stream (MERGE_KINDS)
    merge_with: tuple[str, ...] = ()  # the stream's other legs, as INPUT/[SOURCE@]GROUP:PORT

    @property
    def key(self) -> tuple:
        return (self.iface, self.source, self.source_len, self.group, self.group_len, self.port)

    @property
    def ranged(self) -> bool:
        """A range rule (group or source prefix, or any port): the datapath
        finds it by longest prefix match, after the exact rules."""
        return self.group_len is not None or self.source_len is not None or self.port == ANY_PORT

    @property
    def groups(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The rule's group range (a full-length prefix for one group)."""
        return _network(self.group, self.group_len)

    @property
    def unicast(self) -> bool:
        """A unicast input: the rule takes UDP sent to an address of the input."""
        return not self.group.is_multicast

    @property
    def joins(self) -> tuple[Address, Address | None] | None:
        """The (group, source) an input joins for this rule; None for a
        group range (nobody joins 65,536 groups: see docs/user-guide.md)
        and a unicast input. A source range joins the group from any source."""
        if self.group_len is not None or self.unicast:
            return None
        return self.group, (self.source if self.source_len is None else None)

    @property
    def family(self) -> int:
        return abi.FAMILY_IPV4 if self.group.version == 4 else abi.FAMILY_IPV6

    @property
    def leg(self) -> str:
        """What this rule takes, as a merge leg is written: INPUT/[SOURCE@]GROUP:PORT."""
        return f"{self.iface}/{self._match()}"

    @property
    def merge_name(self) -> str | None:
        """What the legs of one merged stream share (their own legs, in
        order): the stream's identity; None for a rule that merges nothing."""
        if self.merge is None:
            return None
        return "|".join(sorted((self.leg, *self.merge_with)))

    @property
    def health_kind(self) -> str | None:
        """The stream check the datapath runs: ;health=, or RTP for a merge
        leg (its own arrivals, the leg's counts)."""
        return self.health if self.health is not None else self.merge

    def _match(self) -> str:
        src = ""
        if self.source is not None:
            src = f"{self.source}/{self.source_len}@" if self.source_len is not None else f"{self.source}@"
        return f"{src}{self.endpoint()}"

    def out_group(self, out: Output) -> Address:
        return self.group if out.group is None else out.group

    def out_port(self, out: Output) -> int:
        return self.port if out.port is None else out.port

    def spec(self) -> str:
        """The rule in RULE syntax, without the input interface (a merge
        leg's own first, then its other legs)."""
        match = "|".join((self._match(), *self.merge_with))
        outs = ",".join(str(o) for o in self.outputs)
        options = f";ttl={self.ttl}" if self.ttl is not None else ""
        if self.health is not None:
            options += f";health={self.health}"
        if self.police is not None:
            options += f";police={self.police}"
        if self.merge is not None:
            options += f";merge={self.merge}"
        return f"{match}={outs}{options}"

    def endpoint(self) -> str:
        """GROUP:PORT as written: 239.1.0.0/16:*, [ff3e::1]:5001."""
        return _fmt_endpoint(self.group, self.port, self.group_len)

    @functools.cached_property
    def text(self) -> str:
        """INPUT/RULE, computed once (a relay of 10,000 rules writes them all
        to its state file after each change)."""
        return f"{self.iface}/{self.spec()}"

    def __str__(self) -> str:
        return self.text


def _fmt_endpoint(group: Address, port: int | None, group_len: int | None = None) -> str:
    host = str(group) if group_len is None else f"{group}/{group_len}"
    if group.version == 6:
        host = f"[{host}]"
    return f"{host}:{'*' if port in (None, ANY_PORT) else port}"


def _parse_address(text: str, what: str) -> Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise RuleError(f"{what} {text!r} is not an IP address") from None


def _parse_port(text: str, what: str) -> int:
    if text.strip() == "*":
        return ANY_PORT
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RuleError(f"{what} port {text!r} is not a number from 1 to 65535, or * for any port")
    return int(text)


def _parse_prefix(text: str, what: str) -> tuple[Address, int | None]:
    """ADDRESS or ADDRESS/LEN: (address, None) for one address and for a
    full-length prefix, else (network address, LEN)."""
    if "/" not in text:
        return _parse_address(text, what), None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RuleError(f"{what} {text!r} is not an IP address or prefix (ADDRESS/LENGTH)") from None
    if net.network_address != ipaddress.ip_address(text.partition("/")[0]):
        raise RuleError(f"{what} {text!r} has bits set past its prefix length: the range is {net}")
    if net.prefixlen == net.max_prefixlen:
        return net.network_address, None
    return net.network_address, net.prefixlen


def _network(addr: Address, length: int | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen if length is None else length}")


def _parse_endpoint(text: str, what: str) -> tuple[Address, int, int | None]:
    """GROUP:PORT -> (group, port, group prefix length or None). GROUP may
    be one unicast address (_check_rule says where that fits)."""
    m = _ENDPOINT.match(text.strip())
    if not m and "[" not in text and text.count(":") > 1:
        raise RuleError(f"{what} {text!r}: write IPv6 groups in brackets, e.g. [ff3e::1]:5001")
    if not m:
        raise RuleError(f"{what} {text!r} is not GROUP:PORT (IPv6 as [GROUP]:PORT)")
    if m["v6"] is not None:
        group, length = _parse_prefix(m["v6"], what)
        if group.version != 6:
            raise RuleError(f"{what} {text!r}: brackets are for IPv6 addresses only")
    else:
        group, length = _parse_prefix(m["v4"], what)
        if group.version != 4:
            raise RuleError(f"{what} {text!r}: write IPv6 groups in brackets, e.g. [ff3e::1]:5001")
    if length is not None and not _network(group, length).is_multicast:
        raise RuleError(f"{what} {group}/{length} is not a range of multicast groups")
    if length is None and not group.is_multicast and not unicast_source(group):
        raise RuleError(f"{what} {group} is not a multicast group, nor a unicast address a host can have "
                        "(unspecified, loopback, reserved or broadcast)")
    return group, _parse_port(m["port"], what), length


LINK_LOCAL = {4: "224.0.0.0/24", 6: "ff01::/16, ff02::/16 and their other flag values"}


def link_local(group: Address, length: int | None = None) -> bool:
    """224.0.0.0/24 (the Local Network Control Block), or an IPv6 group of
    interface- or link-local scope (ffX1::/16, ffX2::/16); with length, a
    group range that holds any such group."""
    if group.version == 4:
        return _network(group, length).overlaps(ipaddress.IPv4Network("224.0.0.0/24"))
    # The scope is the low 4 bits of byte 1 (bits 12-15): those a prefix
    # fixes must allow scope 1 or 2.
    fixed = 4 if length is None else max(0, min(4, length - 12))
    mask = (0xF << (4 - fixed)) & 0xF
    return any((scope & mask) == (group.packed[1] & mask) for scope in (1, 2))


def unicast_source(source: Address, length: int | None = None) -> bool:
    """A source a multicast sender can have: not multicast, unspecified,
    loopback, reserved (240.0.0.0/4) or the limited broadcast; with length,
    a source range that holds none of those (they sit at either end of any
    prefix that holds them) and is not everything (/0: write no source)."""
    if length is not None:
        net = _network(source, length)
        return length > 0 and unicast_source(net.network_address) and unicast_source(net.broadcast_address)
    return not (source.is_multicast or source.is_unspecified or source.is_loopback
                or (source.version == 4 and source.is_reserved))


def _parse_iface(text: str) -> str:
    if not _IFNAME.match(text):
        raise RuleError(f"output interface {text!r} is not a valid interface name")
    return text


def _parse_output(text: str) -> Output:
    text = text.strip()
    if "/" not in text:
        return Output(_parse_iface(text))
    iface, _, endpoint = text.partition("/")
    group, port, length = _parse_endpoint(endpoint, "output group")
    return Output(_parse_iface(iface), group, port or None, length)


def input_of(text: str) -> str | None:
    """The input interface a rule's text names (INPUT/...), if any."""
    match = text.partition("=")[0]
    head = match.partition("/")[0]
    return head.strip() if "/" in match and _names_input(head) else None


def _names_input(head: str) -> bool:
    """Whether the text before a rule's first '/' is an input interface
    name rather than the address of a prefix (10.0.0.0/8@..., 239.1.0.0/16:*,
    [ff3e::/96]:*)."""
    head = head.strip()
    if head.startswith("["):
        return False
    for part in (head, head.partition("@")[0]):  # GROUP/LEN, SOURCE@GROUP/LEN
        try:
            ipaddress.ip_address(part.strip("[] "))
        except ValueError:
            continue
        return False
    return True


def parse_rule(text: str, iface: str | None = None) -> Rule:
    """Parse RULE; iface is the input interface when the rule does not name
    one (INPUT/...). Checks syntax and the rule on its own (families,
    multicast, loops, output count, options). Raises RuleError naming the
    bad part. A merged stream (legs a|b=...;merge=rtp) gives its first leg
    (parse_rules gives every leg)."""
    return parse_rules(text, iface)[0]


MAX_LEGS = 8  # legs of one merged stream


def parse_rules(text: str, iface: str | None = None) -> list[Rule]:
    """parse_rule, for every leg of a merged stream: one rule per leg, each
    with the others in merge_with (one rule for text without legs)."""
    body, *options = text.strip().split(";")
    match, sep, outs = body.strip().partition("=")
    if not sep or not outs.strip():
        raise RuleError(f"rule {text!r} has no outputs: expected GROUP:PORT=OUT[,OUT...]")
    legs = [_parse_leg(leg, iface, text) for leg in match.split("|")]
    if iface is None:
        iface = legs[0][0]
    legs = [(leg_iface or iface, *rest) for leg_iface, *rest in legs]
    if legs[0][0] is None:
        raise RuleError(f"rule {text!r} does not say its input interface: write INPUT/{text.strip()}")
    outputs = tuple(_parse_output(o) for o in outs.split(","))
    found = _parse_options(options, text)
    if len(legs) > 1 and "merge" not in found:
        raise RuleError(f"rule {text!r} lists {len(legs)} inputs joined by |: that is a merged stream, "
                        "which needs ;merge=rtp")
    if len(legs) > MAX_LEGS:
        raise RuleError(f"rule {text!r} merges {len(legs)} legs; the limit is {MAX_LEGS}")
    rules = [Rule(iface=leg_iface, group=group, port=port, outputs=outputs, source=source,
                  group_len=group_len, source_len=source_len, **found)
             for leg_iface, source, source_len, group, port, group_len in legs]
    for rule in rules:
        _check_rule(rule)
    if "merge" in found:
        _check_merge(rules, text)
        names = [r.leg for r in rules]
        rules = [dataclasses.replace(r, merge_with=tuple(names[:i] + names[i + 1:])) for i, r in enumerate(rules)]
    return rules


def _parse_leg(text: str, iface: str | None, rule_text: str) -> tuple:
    """[INPUT/][SOURCE@]GROUP:PORT -> (input or None, source, source_len,
    group, port, group_len)."""
    named = None
    if "/" in text and _names_input(text.partition("/")[0]):
        named, _, text = text.partition("/")
        named = named.strip()
        if iface is not None and named != iface and "|" not in rule_text:
            raise RuleError(f"rule {rule_text!r} names input {named!r} but is given for {iface!r}")
    leg_iface = named or iface
    if leg_iface is not None and not _IFNAME.match(leg_iface):
        raise RuleError(f"input interface {leg_iface!r} is not a valid interface name")
    source = source_len = None
    if "@" in text:
        src_text, _, text = text.partition("@")
        src_text = src_text.strip()
        if src_text.startswith("[") and src_text.endswith("]"):
            src_text = src_text[1:-1]
        source, source_len = _parse_prefix(src_text, "source")
    group, port, group_len = _parse_endpoint(text, "group")
    return leg_iface, source, source_len, group, port, group_len


def _check_merge(legs: list[Rule], text: str) -> None:
    """The legs of a merged stream: each one exact stream, none twice."""
    for leg in legs:
        if leg.ranged:
            raise RuleError(f"rule {text!r}: leg {leg.leg} is a range; a merged stream's legs are each one "
                            "stream (one group, one port)")
    seen = set()
    for leg in legs:
        if leg.key in seen:
            raise RuleError(f"rule {text!r}: leg {leg.leg} appears twice")
        seen.add(leg.key)
        if leg.family != legs[0].family:
            raise RuleError(f"rule {text!r}: legs {legs[0].leg} and {leg.leg} are of different IP versions")
    # One stream out: an output that keeps the group (port) would send
    # each leg's packets to its own.
    for out in legs[0].outputs:
        if len({leg.out_group(out) for leg in legs}) > 1 or len({leg.out_port(out) for leg in legs}) > 1:
            example = f"{out.iface}/{_fmt_endpoint(legs[0].group, legs[0].port)}"
            raise RuleError(f"rule {text!r}: output {out} keeps each leg's group and port, and the legs differ: "
                            f"give it the merged stream's, e.g. {example}")


HEALTH_KINDS = ("rtp", "mpegts")
MERGE_KINDS = ("rtp",)
RULE_OPTIONS = "ttl=N, health=" + "|".join(HEALTH_KINDS) + ", police=RATE, merge=" + "|".join(MERGE_KINDS)


def _parse_options(options: list[str], text: str) -> dict:
    """The ;key=value options of a rule, as Rule's fields."""
    found: dict = {}
    for option in options:
        key, sep, value = (part.strip() for part in option.partition("="))
        if key not in ("ttl", "health", "police", "merge"):
            raise RuleError(f"rule {text!r}: unknown option {key!r} (options: {RULE_OPTIONS})")
        if key in found:
            raise RuleError(f"rule {text!r}: option {key} given twice")
        if key == "ttl":
            if not sep or not value.isdigit() or not 1 <= int(value) <= 255:
                raise RuleError(f"rule {text!r}: ttl={value!r}: expected a TTL from 1 to 255")
            found[key] = int(value)
        elif key == "health":
            if value not in HEALTH_KINDS:
                raise RuleError(f"rule {text!r}: health={value!r}: expected one of {', '.join(HEALTH_KINDS)}")
            found[key] = value
        elif key == "merge":
            if value not in MERGE_KINDS:
                raise RuleError(f"rule {text!r}: merge={value!r}: expected {', '.join(MERGE_KINDS)} (the legs carry "
                                "one RTP stream, told apart by its sequence numbers)")
            found[key] = value
        else:
            try:
                found[key] = parse_rate(value)
            except ValueError as exc:
                raise RuleError(f"rule {text!r}: police={value!r}: {exc}") from None
    return found


def _check_rule(rule: Rule) -> None:
    if rule.source is not None:
        source = rule.source if rule.source_len is None else f"range {rule.source}/{rule.source_len}"
        if rule.source.version != rule.group.version:
            raise RuleError(f"source {source} and group {rule.group} are of different IP versions")
        if not unicast_source(rule.source, rule.source_len):
            what = "a unicast address" if rule.source_len is None else "a range of unicast addresses"
            raise RuleError(f"source {source} is not {what} a sender can have "
                            "(multicast, unspecified, loopback, reserved or broadcast)")
        if rule.group_len is not None:
            raise RuleError(f"rule {rule.spec()}: a source (or source range) needs one group, not the range "
                            f"{rule.group}/{rule.group_len}: write one rule per group, or leave the source out")
    if rule.unicast:
        _check_unicast_input(rule)
    if len(rule.outputs) > abi.MAX_OUTPUTS:
        raise RuleError(f"rule {rule.spec()} has {len(rule.outputs)} outputs; the limit is {abi.MAX_OUTPUTS}")
    lengths = [(rule.group, rule.group_len),
               *((o.group, o.group_len) if o.group is not None else (rule.group, rule.group_len) for o in rule.outputs)]
    for group, length in dict.fromkeys(lengths):
        if group.is_multicast and link_local(group, length) and rule.ttl is None:
            what = f"group {group} is a link-local group" if length is None else \
                f"group range {group}/{length} holds link-local groups"
            raise RuleError(f"{what} ({LINK_LOCAL[group.version]}): their traffic is for one link only "
                            "(sent with TTL 1, never routed); add ;ttl=N to relay it with TTL N")
    seen = set()
    for out in rule.outputs:
        if out.iface == rule.iface:
            raise RuleError(f"output {out} is the input interface {rule.iface}: that would loop")
        group = rule.out_group(out)
        if group.version != rule.group.version:
            raise RuleError(f"output {out} changes the IP version of group {rule.group}")
        if out.unicast and rule.group_len is not None:
            raise RuleError(f"output {out}: a unicast receiver takes one group's stream, not the range "
                            f"{rule.group}/{rule.group_len}: write a rule per group for it")
        if out.group is not None and out.group_len != rule.group_len:
            if rule.group_len is None:
                raise RuleError(f"output {out}: a rule for one group sends to one group, not a range")
            raise RuleError(f"output {out}: the range {rule.group}/{rule.group_len} maps onto a prefix of the "
                            f"same length (/{rule.group_len}, host bits kept), or keeps its groups (write "
                            f"{out.iface} alone)")
        target = (out.iface, group, rule.out_port(out))
        if target in seen:
            raise RuleError(f"output {out} appears twice in rule {rule.spec()}")
        seen.add(target)


def _check_unicast_input(rule: Rule) -> None:
    """A rule for a unicast address of its input: one address, one port,
    and a destination for every output (the address is the input's own)."""
    if rule.port == ANY_PORT:
        raise RuleError(f"rule {rule.spec()}: a unicast input takes one port, not * (that would take every UDP "
                        f"datagram sent to {rule.group}, the host's own traffic too)")
    for out in rule.outputs:
        if out.group is None:
            raise RuleError(f"group {rule.group} is not a multicast group: a rule for a unicast address "
                            f"(a unicast input) gives each output its destination, e.g. "
                            f"{out.iface}/{'239.1.1.1' if rule.group.version == 4 else '[ff3e::1]'}:{rule.port}")


def validate(rules: Iterable[Rule], ifindex: Mapping[str, int], loopback: Iterable[str] = ()) -> list[Rule]:
    """Check a whole rule set against the interfaces that exist (name ->
    ifindex; loopback: the names of loopback devices): unknown interfaces,
    loopback ones, duplicates, the limits. attach and `config check` both
    run this."""
    return RuleSet().check(rules, ifindex, loopback)


class RuleSet:
    """Rules validated together, with what the limits count (keys, outputs,
    output interfaces), so rules added to a relay of 10,000 are checked
    against them without going over every rule again."""

    def __init__(self):
        self.keys: dict[tuple, Rule] = {}
        self.outputs = 0
        self.health = 0  # rules with ;health=
        self.policed = 0  # rules with ;police=
        self.merges: dict[str, int] = {}  # merged stream (Rule.merge_name) -> its legs here
        self.ifaces: dict[str, int] = {}  # output interface -> rules that use it

    def add(self, rule: Rule) -> None:
        self.keys[rule.key] = rule
        self.outputs += len(rule.outputs)
        self.health += rule.health_kind is not None
        self.policed += rule.police is not None
        if rule.merge is not None:
            self.merges[rule.merge_name] = self.merges.get(rule.merge_name, 0) + 1
        for name in {o.iface for o in rule.outputs}:
            self.ifaces[name] = self.ifaces.get(name, 0) + 1

    def remove(self, rule: Rule) -> None:
        if self.keys.pop(rule.key, None) is None:
            return
        self.outputs -= len(rule.outputs)
        self.health -= rule.health_kind is not None
        self.policed -= rule.police is not None
        if rule.merge is not None:
            self.merges[rule.merge_name] -= 1
            if not self.merges[rule.merge_name]:
                del self.merges[rule.merge_name]
        for name in {o.iface for o in rule.outputs}:
            self.ifaces[name] -= 1
            if not self.ifaces[name]:
                del self.ifaces[name]

    def check(self, rules: Iterable[Rule], ifindex: Mapping[str, int], loopback: Iterable[str] = ()) -> list[Rule]:
        """Check rules as additions to this set (which does not change):
        their interfaces (name -> ifindex of those that exist; loopback:
        the loopback ones), duplicates, the limits."""
        rules = list(rules)
        loopback = set(loopback)
        seen: dict[tuple, Rule] = {}
        for rule in rules:
            names = [rule.iface, *(o.iface for o in rule.outputs)]
            for name in names:
                if name not in ifindex:
                    raise InterfaceError(f"interface {name!r} does not exist (rule {rule})")
            for name in names:
                if name in loopback:
                    raise InterfaceError(f"interface {name!r} is a loopback device: nothing arrives there from a "
                                         f"network and nothing sent there leaves the host (rule {rule})")
            if rule.key in seen or rule.key in self.keys:
                raise RuleError(f"duplicate rule for {rule.iface} {rule.endpoint()}: {rule.spec()}")
            seen[rule.key] = rule
        total = len(self.keys) + len(rules)
        if total > abi.MAX_RULES:
            raise RuleError(f"{total} rules; the limit is {abi.MAX_RULES}")
        outputs = self.outputs + sum(len(r.outputs) for r in rules)
        if outputs > abi.MAX_RULE_OUTPUTS:
            raise RuleError(f"{outputs} outputs across all rules; the limit is {abi.MAX_RULE_OUTPUTS}")
        health = self.health + sum(r.health_kind is not None for r in rules)
        if health > abi.MAX_HEALTH:
            raise RuleError(f"{health} rules with ;health= or merge legs; the limit is {abi.MAX_HEALTH}")
        merges = set(self.merges) | {r.merge_name for r in rules if r.merge is not None}
        if len(merges) > abi.MAX_MERGES:
            raise RuleError(f"{len(merges)} merged streams; the limit is {abi.MAX_MERGES}")
        policed = self.policed + sum(r.police is not None for r in rules)
        if policed > abi.MAX_POLICED:
            raise RuleError(f"{policed} rules with ;police=; the limit is {abi.MAX_POLICED}")
        ifaces = set(self.ifaces) | {o.iface for r in rules for o in r.outputs}
        if len(ifaces) > abi.MAX_PORTS:
            raise RuleError(f"{len(ifaces)} output interfaces; the limit is {abi.MAX_PORTS}")
        return rules


def diff(old: Iterable[Rule], new: Iterable[Rule]) -> tuple[list[Rule], list[Rule], list[Rule]]:
    """(removed, added, changed) going from old to new, matched by key; a
    changed rule keeps its key with other outputs."""
    before = {r.key: r for r in old}
    after = {r.key: r for r in new}
    removed = [r for k, r in before.items() if k not in after]
    added = [r for k, r in after.items() if k not in before]
    changed = [r for k, r in after.items() if k in before and before[k] != r]
    return removed, added, changed
