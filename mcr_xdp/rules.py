"""Rules: parsing, validation and diffing. Pure: no kernel, no I/O.

Syntax, everywhere (CLI, config, control socket):
    [INPUT/][SOURCE@]GROUP:PORT=OUT[,OUT...][;OPTION...]
    OUT = IFACE            keep group and port
        | IFACE/GROUP:PORT rewrite to a new group and port
    OPTION = ttl=N         send with TTL / hop limit N (1-255) instead of
                           the received one minus one
IPv6 addresses go in brackets: [ff3e::1]:5001. INPUT may be left out where
the input interface is given separately (one input interface).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping

from . import abi
from .errors import InterfaceError, RuleError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Longest name the kernel accepts (IFNAMSIZ - 1); no '/', ',', '=', blanks.
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:\[\]]+)):(?P<port>[^:]+)$")


@dataclasses.dataclass(frozen=True)
class Output:
    iface: str
    group: Address | None = None  # None: keep the input group
    port: int | None = None  # None: keep the input port

    def __str__(self) -> str:
        if self.group is None:
            return self.iface
        return f"{self.iface}/{_fmt_endpoint(self.group, self.port)}"


@dataclasses.dataclass(frozen=True)
class Rule:
    iface: str  # input interface
    group: Address
    port: int
    outputs: tuple[Output, ...]
    source: Address | None = None  # SSM source
    ttl: int | None = None  # ;ttl=N: the outgoing TTL / hop limit; None: the received one minus one

    @property
    def key(self) -> tuple:
        return (self.iface, self.source, self.group, self.port)

    @property
    def family(self) -> int:
        return abi.FAMILY_IPV4 if self.group.version == 4 else abi.FAMILY_IPV6

    def out_group(self, out: Output) -> Address:
        return self.group if out.group is None else out.group

    def out_port(self, out: Output) -> int:
        return self.port if out.port is None else out.port

    def spec(self) -> str:
        """The rule in RULE syntax, without the input interface."""
        src = f"{self.source}@" if self.source is not None else ""
        outs = ",".join(str(o) for o in self.outputs)
        options = f";ttl={self.ttl}" if self.ttl is not None else ""
        return f"{src}{_fmt_endpoint(self.group, self.port)}={outs}{options}"

    def __str__(self) -> str:
        return f"{self.iface}/{self.spec()}"


def _fmt_endpoint(group: Address, port: int | None) -> str:
    host = f"[{group}]" if group.version == 6 else str(group)
    return f"{host}:{port}"


def _parse_address(text: str, what: str) -> Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise RuleError(f"{what} {text!r} is not an IP address") from None


def _parse_port(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RuleError(f"{what} port {text!r} is not a number from 1 to 65535")
    return int(text)


def _parse_endpoint(text: str, what: str) -> tuple[Address, int]:
    m = _ENDPOINT.match(text.strip())
    if not m and "[" not in text and text.count(":") > 1:
        raise RuleError(f"{what} {text!r}: write IPv6 groups in brackets, e.g. [ff3e::1]:5001")
    if not m:
        raise RuleError(f"{what} {text!r} is not GROUP:PORT (IPv6 as [GROUP]:PORT)")
    if m["v6"] is not None:
        group = _parse_address(m["v6"], what)
        if group.version != 6:
            raise RuleError(f"{what} {text!r}: brackets are for IPv6 addresses only")
    else:
        group = _parse_address(m["v4"], what)
        if group.version != 4:
            raise RuleError(f"{what} {text!r}: write IPv6 groups in brackets, e.g. [ff3e::1]:5001")
    if not group.is_multicast:
        raise RuleError(f"{what} {group} is not a multicast group")
    return group, _parse_port(m["port"], what)


LINK_LOCAL = {4: "224.0.0.0/24", 6: "ff01::/16, ff02::/16 and their other flag values"}


def link_local(group: Address) -> bool:
    """224.0.0.0/24 (the Local Network Control Block), or an IPv6 group of
    interface- or link-local scope (ffX1::/16, ffX2::/16)."""
    if group.version == 4:
        return group in ipaddress.IPv4Network("224.0.0.0/24")
    return group.packed[1] & 0x0F in (1, 2)


def unicast_source(source: Address) -> bool:
    """A source a multicast sender can have: not multicast, unspecified,
    loopback, reserved (240.0.0.0/4) or the limited broadcast."""
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
    group, port = _parse_endpoint(endpoint, "output group")
    return Output(_parse_iface(iface), group, port)


def parse_rule(text: str, iface: str | None = None) -> Rule:
    """Parse RULE; iface is the input interface when the rule does not name
    one (INPUT/...). Checks syntax and the rule on its own (families,
    multicast, loops, output count, options). Raises RuleError naming the
    bad part."""
    body, *options = text.strip().split(";")
    match, sep, outs = body.strip().partition("=")
    if not sep or not outs.strip():
        raise RuleError(f"rule {text!r} has no outputs: expected GROUP:PORT=OUT[,OUT...]")
    if "/" in match:
        named, _, match = match.partition("/")
        if iface is not None and named != iface:
            raise RuleError(f"rule {text!r} names input {named!r} but is given for {iface!r}")
        iface = named
    if iface is None:
        raise RuleError(f"rule {text!r} does not say its input interface: write INPUT/{text.strip()}")
    if not _IFNAME.match(iface):
        raise RuleError(f"input interface {iface!r} is not a valid interface name")
    source = None
    if "@" in match:
        src_text, _, match = match.partition("@")
        src_text = src_text.strip()
        if src_text.startswith("[") and src_text.endswith("]"):
            src_text = src_text[1:-1]
        source = _parse_address(src_text, "source")
    group, port = _parse_endpoint(match, "group")
    outputs = tuple(_parse_output(o) for o in outs.split(","))
    rule = Rule(iface=iface, group=group, port=port, outputs=outputs, source=source,
                **_parse_options(options, text))
    _check_rule(rule)
    return rule


RULE_OPTIONS = "ttl=N"


def _parse_options(options: list[str], text: str) -> dict:
    """The ;key=value options of a rule, as Rule's fields."""
    found: dict = {}
    for option in options:
        key, sep, value = (part.strip() for part in option.partition("="))
        if key != "ttl":
            raise RuleError(f"rule {text!r}: unknown option {key!r} (options: {RULE_OPTIONS})")
        if key in found:
            raise RuleError(f"rule {text!r}: option {key} given twice")
        if not sep or not value.isdigit() or not 1 <= int(value) <= 255:
            raise RuleError(f"rule {text!r}: ttl={value!r}: expected a TTL from 1 to 255")
        found[key] = int(value)
    return found


def _check_rule(rule: Rule) -> None:
    if rule.source is not None:
        if rule.source.version != rule.group.version:
            raise RuleError(f"source {rule.source} and group {rule.group} are of different IP versions")
        if not unicast_source(rule.source):
            raise RuleError(f"source {rule.source} is not a unicast address a sender can have "
                            "(multicast, unspecified, loopback, reserved or broadcast)")
    if len(rule.outputs) > abi.MAX_OUTPUTS:
        raise RuleError(f"rule {rule.spec()} has {len(rule.outputs)} outputs; the limit is {abi.MAX_OUTPUTS}")
    for group in dict.fromkeys([rule.group, *(rule.out_group(o) for o in rule.outputs)]):
        if link_local(group) and rule.ttl is None:
            raise RuleError(f"group {group} is a link-local group ({LINK_LOCAL[group.version]}): its traffic is "
                            "for one link only (sent with TTL 1, never routed); add ;ttl=N to relay it with TTL N")
    seen = set()
    for out in rule.outputs:
        if out.iface == rule.iface:
            raise RuleError(f"output {out} is the input interface {rule.iface}: that would loop")
        group = rule.out_group(out)
        if group.version != rule.group.version:
            raise RuleError(f"output {out} changes the IP version of group {rule.group}")
        target = (out.iface, group, rule.out_port(out))
        if target in seen:
            raise RuleError(f"output {out} appears twice in rule {rule.spec()}")
        seen.add(target)


def validate(rules: Iterable[Rule], ifindex: Mapping[str, int], loopback: Iterable[str] = ()) -> list[Rule]:
    """Check a whole rule set against the interfaces that exist (name ->
    ifindex; loopback: the names of loopback devices): unknown interfaces,
    loopback ones, duplicates, the rule limit. attach and `config check`
    both run this."""
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
        if rule.key in seen:
            raise RuleError(f"duplicate rule for {rule.iface} {_fmt_endpoint(rule.group, rule.port)}: {rule.spec()}")
        seen[rule.key] = rule
    if len(rules) > abi.MAX_RULES:
        raise RuleError(f"{len(rules)} rules; the limit is {abi.MAX_RULES}")
    outputs = {o.iface for r in rules for o in r.outputs}
    if len(outputs) > abi.MAX_PORTS:
        raise RuleError(f"{len(outputs)} output interfaces; the limit is {abi.MAX_PORTS}")
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
