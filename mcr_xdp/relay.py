"""The facade the CLI calls: one relay = one loaded datapath, the input
interfaces it is attached to, its rules and its group memberships.

start() checks everything it can before it changes anything (root, names,
rules, busy interfaces, toolchain, kernel), writes the maps before it
attaches so the first packet already sees every rule, and undoes what it did
if a later step fails. stop() is idempotent and safe after a partial start.
"""

from __future__ import annotations

import dataclasses
import socket
import time

from . import encode, features, loader, rules as rules_mod, stats
from .errors import BusyError, McrError
from .igmp import JoinPool
from .links import Link, lookup
from .loader import Attachment, Datapath, XdpMode
from .rules import Rule


@dataclasses.dataclass
class RelayConfig:
    interfaces: list[str]
    rules: list[Rule]
    xdp_mode: XdpMode = XdpMode.AUTO


@dataclasses.dataclass(frozen=True)
class InstalledRule:
    rule_id: int
    rule: Rule


class Relay:
    def __init__(self, config: RelayConfig):
        self.config = config
        self.datapath: Datapath | None = None
        self.attachments: list[Attachment] = []
        self.rules: dict[int, InstalledRule] = {}
        self.joins: dict[str, JoinPool] = {}
        self.started_at: float | None = None
        self._slots: dict[int, int] = {}  # output ifindex -> devmap slot

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> list[Attachment]:
        features.require_root("attaching the relay")
        cfg = self.config
        for rule in cfg.rules:
            if rule.iface not in cfg.interfaces:
                raise rules_mod.RuleError(f"rule {rule} is for {rule.iface}, which is not an input of this relay")
        names = dict.fromkeys(cfg.interfaces)
        for rule in cfg.rules:
            names.update(dict.fromkeys(o.iface for o in rule.outputs))
        links = lookup(names)
        rules_mod.validate(cfg.rules, {n: link.ifindex for n, link in links.items()})
        for name in cfg.interfaces:
            current = loader.attached(links[name].ifindex)
            if current is not None:
                raise BusyError(
                    f"{name} already has an XDP program (id {current.prog_id}, {current.name or 'unnamed'}); "
                    f"a relay may be running there: stop it or run `mcr-xdp detach {name}`"
                )
        features.require_toolchain()
        features.require_kernel()
        try:
            self.datapath = Datapath()
            for rule in cfg.rules:
                self._install(rule, links)
            for name in cfg.interfaces:
                link = links[name]
                self.attachments.append(loader.attach(link.ifindex, name, self.datapath.prog_fd, cfg.xdp_mode))
            for installed in self.rules.values():
                self._join(installed.rule, links[installed.rule.iface])
        except BaseException:
            self.stop()
            raise
        self.started_at = time.monotonic()
        return self.attachments

    def stop(self) -> None:
        """Detach, leave the groups, free the datapath. Safe to call twice."""
        errors = []
        for att in self.attachments:
            try:
                loader.detach(att.ifindex, att.ifname, only_prog_id=att.prog_id)
            except McrError as exc:
                errors.append(exc)
        self.attachments = []
        for pool in self.joins.values():
            pool.close()
        self.joins.clear()
        if self.datapath is not None:
            self.datapath.close()
            self.datapath = None
        if errors:
            raise errors[0]

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- rules -------------------------------------------------------------

    def _slot(self, ifindex: int) -> int:
        if ifindex not in self._slots:
            slot = len(self._slots)
            self.datapath.maps.set_port(slot, ifindex)
            self._slots[ifindex] = slot
        return self._slots[ifindex]

    def _install(self, rule: Rule, links: dict[str, Link]) -> InstalledRule:
        maps = self.datapath.maps
        rule_id = next(i for i in range(len(self.rules) + 1) if i not in self.rules)
        outputs = []
        for out in rule.outputs:
            link = links[out.iface]
            outputs.append(encode.output_value(rule, out, link.ifindex, self._slot(link.ifindex), link.mac))
        maps.reset_rule_counters(rule_id)
        maps.put_rule(encode.rule_key(rule, links[rule.iface].ifindex), encode.rule_value(rule, rule_id, outputs))
        installed = InstalledRule(rule_id, rule)
        self.rules[rule_id] = installed
        return installed

    def _join(self, rule: Rule, link: Link) -> None:
        family = socket.AF_INET if rule.group.version == 4 else socket.AF_INET6
        pool = self.joins.get((link.name, family))
        if pool is None:
            pool = self.joins[(link.name, family)] = JoinPool(link.ifindex, link.name, family)
        pool.join(rule.group)

    # -- counters ----------------------------------------------------------

    def snapshot(self) -> stats.Snapshot:
        return stats.collect(self.datapath.maps, {i: str(r.rule) for i, r in self.rules.items()})

    @property
    def uptime(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at
