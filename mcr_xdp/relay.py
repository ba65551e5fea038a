"""The facade the CLI and the control socket call: one relay = one loaded
datapath, the input interfaces it is attached to, its rules and its group
memberships.

Every change is checked in full before it touches the kernel, and applied in
an order that never disturbs other rules: a new rule's fan-out map and group
join exist before its map entry makes it live; a deleted rule stops matching
before its outputs and joins go. start() writes every rule before it
attaches, so the first packet already sees them, and undoes what it did if a
later step fails; stop() is idempotent and safe after a partial start.
"""

from __future__ import annotations

import dataclasses
import os
import time

from . import abi, encode, features, libbpf, loader, pins, stats
from .control import instance_name
from .errors import BusyError, McrError, RuleError
from .igmp import JoinPool
from .links import Link, lookup
from .links import counters as link_counters
from .loader import Attachment, Datapath, XdpMode
from .rules import Rule, diff, validate


@dataclasses.dataclass
class RelayConfig:
    interfaces: list[str]
    rules: list[Rule]
    xdp_mode: XdpMode = XdpMode.AUTO
    instance: str | None = None  # pin directory name; None: this namespace's (control.instance_name)


@dataclasses.dataclass(frozen=True)
class InstalledRule:
    rule_id: int
    rule: Rule
    ifindex: int  # of the input interface, as the map key holds it


class Relay:
    def __init__(self, config: RelayConfig):
        self.config = config
        self.datapath: Datapath | None = None
        self.attachments: dict[str, Attachment] = {}
        self.rules: dict[int, InstalledRule] = {}
        self.joins: dict[str, JoinPool] = {}
        self.started_at: float | None = None
        self.tracer = None
        self.tracer_notice = ""
        self.pinned: str | None = None  # pins.pin_dir of this relay, once pinned
        self.pin_notice = ""
        self._slots: dict[int, int] = {}  # output ifindex -> devmap slot (single-output rules)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> list[Attachment]:
        features.require_root("attaching the relay")
        cfg = self.config
        links = self._check(cfg.rules, cfg.interfaces)
        for name in cfg.interfaces:
            self._check_free(links[name])
        features.require_toolchain()
        features.require_kernel()
        try:
            self.datapath = Datapath()
            self._start_tracer()
            for rule in cfg.rules:
                self._install(rule, links)
            for name in cfg.interfaces:
                self._attach(links[name])
            self.started_at = time.monotonic()
            self._pin()
        except BaseException:
            self.stop()
            raise
        return list(self.attachments.values())

    def stop(self) -> None:
        """Detach, leave the groups, free the datapath. Safe to call twice."""
        errors = []
        for att in self.attachments.values():
            try:
                loader.detach(att.ifindex, att.ifname, only_prog_id=att.prog_id)
            except McrError as exc:
                errors.append(exc)
        self.attachments.clear()
        for pool in self.joins.values():
            pool.close()
        self.joins.clear()
        self.rules.clear()
        self._slots.clear()
        if self.datapath is not None:
            self.datapath.close()
            self.datapath = None
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None
        if self.pinned is not None:
            pins.remove(self.instance)
            self.pinned = None
        if errors:
            raise errors[0]

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def inputs(self) -> list[str]:
        return list(self.attachments)

    # -- checks ------------------------------------------------------------

    def _check(self, rules: list[Rule], inputs: list[str], existing: list[Rule] = ()) -> dict[str, Link]:
        """Validate rules (with the rules already installed) against the
        interfaces of this namespace and the relay's inputs."""
        for rule in rules:
            if rule.iface not in inputs:
                raise RuleError(f"rule {rule} is for {rule.iface}, which is not an input of this relay "
                                f"(inputs: {', '.join(inputs) or 'none'})")
        names = dict.fromkeys(inputs)
        for rule in [*existing, *rules]:
            names.update(dict.fromkeys([rule.iface, *(o.iface for o in rule.outputs)]))
        links = lookup(names)
        validate([*existing, *rules], {n: link.ifindex for n, link in links.items()})
        return links

    def _check_free(self, link: Link) -> None:
        current = loader.attached(link.ifindex)
        if current is not None:
            raise BusyError(
                f"{link.name} already has an XDP program (id {current.prog_id}, {current.name or 'unnamed'}); "
                f"a relay may be running there: stop it or run `mcr-xdp detach {link.name}`"
            )

    def _attach(self, link: Link) -> Attachment:
        att = loader.attach(link.ifindex, link.name, self.datapath.prog_fd, self.config.xdp_mode)
        self.attachments[link.name] = att
        return att

    # -- rules -------------------------------------------------------------

    def add_rules(self, rules: list[Rule]) -> list[InstalledRule]:
        """Add rules to the running relay, all or none."""
        links = self._check(rules, self.inputs, [r.rule for r in self.rules.values()])
        done = []
        try:
            for rule in rules:
                done.append(self._install(rule, links))
        except BaseException:
            for installed in done:
                self._uninstall(installed.rule_id)
            raise
        return done

    def delete_rule(self, rule_id: int) -> InstalledRule:
        if rule_id not in self.rules:
            raise RuleError(f"no rule with id {rule_id}")
        return self._uninstall(rule_id)

    def find_rule(self, rule: Rule) -> InstalledRule | None:
        return next((r for r in self.rules.values() if r.rule.key == rule.key), None)

    def replace_rules(self, rules: list[Rule]) -> tuple[list[Rule], list[Rule], list[Rule]]:
        """Make the rule set equal to rules, touching only the difference
        (SIGHUP). Returns (removed, added, changed)."""
        current = [r.rule for r in self.rules.values()]
        removed, added, changed = diff(current, rules)
        links = self._check(rules, self.inputs)
        for rule in removed:
            self._uninstall(self.find_rule(rule).rule_id)
        for rule in changed:
            self._install(rule, links, rule_id=self.find_rule(rule).rule_id)
        for rule in added:
            self._install(rule, links)
        return removed, added, changed

    def _slot(self, ifindex: int) -> int:
        if ifindex not in self._slots:
            slot = len(self._slots)
            self.datapath.maps.set_port(slot, ifindex)
            self._slots[ifindex] = slot
        return self._slots[ifindex]

    def _free_id(self) -> int:
        return next(i for i in range(len(self.rules) + 1) if i not in self.rules)

    def _install(self, rule: Rule, links: dict[str, Link], rule_id: int | None = None) -> InstalledRule:
        """Write one rule; with rule_id, replace that rule's outputs in place
        (same key, same counters)."""
        maps = self.datapath.maps
        replacing = rule_id is not None
        rule_id = self._free_id() if rule_id is None else rule_id
        n = len(rule.outputs)
        outputs = []
        for i, out in enumerate(rule.outputs):
            link = links[out.iface]
            slot = self._slot(link.ifindex) if n == 1 else i
            outputs.append(encode.output_value(rule, out, link.ifindex, slot, link.mac))
        if not replacing:
            maps.reset_rule_counters(rule_id)
        if n > 1:
            maps.set_fanout(rule_id, [(o.ifindex, self.datapath.egress_fd) for o in outputs])
        if not replacing:
            self._join(rule, links[rule.iface])
        installed = InstalledRule(rule_id, rule, links[rule.iface].ifindex)
        try:
            maps.put_rule(encode.rule_key(rule, installed.ifindex), encode.rule_value(rule, rule_id, outputs))
        except BaseException:
            if not replacing:
                self._leave(rule)
            raise
        if n == 1:
            maps.clear_fanout(rule_id)
        self.rules[rule_id] = installed
        self._watch_outputs(rule, links)
        self._update_config()
        return installed

    def _uninstall(self, rule_id: int) -> InstalledRule:
        installed = self.rules.pop(rule_id)
        rule = installed.rule
        maps = self.datapath.maps
        maps.delete_rule(encode.rule_key(rule, installed.ifindex))
        maps.clear_fanout(rule_id)
        self._leave(rule)
        self._update_config()
        return installed

    def _update_config(self) -> None:
        self.datapath.maps.set_config(ssm_rules=sum(1 for r in self.rules.values() if r.rule.source is not None))
        if self.pinned is not None:
            pins.write_state(self.instance, self.pin_state())

    # -- pins --------------------------------------------------------------

    @property
    def instance(self) -> str:
        return self.config.instance or instance_name()

    def pin_state(self) -> dict:
        return {
            "version": 1,
            "pid": os.getpid(),
            "started": time.time() - self.uptime,
            "inputs": {a.ifname: {"ifindex": a.ifindex, "prog_id": a.prog_id, "mode": a.mode}
                       for a in self.attachments.values()},
            "rules": {str(i): str(r.rule) for i, r in self.rules.items()},
        }

    def _pin(self) -> None:
        """Pin the maps so stats stay readable if this process is killed;
        a relay that can't pin still relays, and says so."""
        try:
            self.pinned = str(pins.pin(self.instance, self.datapath.maps.fds, self.pin_state()))
        except (McrError, OSError) as exc:
            self.pin_notice = f"maps not pinned, stats need the running relay: {exc}"

    def _join(self, rule: Rule, link: Link) -> None:
        pool = self.joins.get(link.name)
        if pool is None:
            pool = self.joins[link.name] = JoinPool(link.ifindex, link.name)
        pool.join(rule.group, rule.source)

    def _leave(self, rule: Rule) -> None:
        still_needed = any(
            (r.rule.iface, r.rule.group, r.rule.source) == (rule.iface, rule.group, rule.source)
            for r in self.rules.values()
        )
        pool = self.joins.get(rule.iface)
        if pool is not None and not still_needed:
            pool.leave(rule.group, rule.source)

    # -- observation -------------------------------------------------------

    def _start_tracer(self) -> None:
        """Count losses after redirect where tracepoints allow; without them
        the relay still runs and status says it is blind to those."""
        from .trace import LossTracer

        try:
            self.tracer = LossTracer([self.datapath.prog_id, libbpf.prog_id(self.datapath.egress_fd)])
            self.tracer_notice = ""
        except McrError as exc:
            self.tracer = None
            self.tracer_notice = f"losses after redirect are not counted: {exc}"

    def _watch_outputs(self, rule: Rule, links: dict[str, Link]) -> None:
        if self.tracer is not None:
            for out in rule.outputs:
                self.tracer.watch(links[rule.iface].ifindex, links[out.iface].ifindex)

    def snapshot(self) -> stats.Snapshot:
        rules = {i: r.rule for i, r in self.rules.items()}
        names = dict.fromkeys([*self.inputs, *(o.iface for r in rules.values() for o in r.outputs)])
        return stats.collect(
            self.datapath.maps,
            rules,
            losses=self.tracer.read() if self.tracer is not None else None,
            links=link_counters(names),
        )

    @property
    def uptime(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def status(self) -> dict:
        return {
            "abi_version": abi.ABI_VERSION,
            "uptime": round(self.uptime, 1),
            "interfaces": [
                {
                    "name": a.ifname,
                    "ifindex": a.ifindex,
                    "mode": f"xdp-{a.mode}",
                    "prog_id": a.prog_id,
                    "notice": a.notice,
                    "rules": sum(1 for r in self.rules.values() if r.rule.iface == a.ifname),
                    "joins": len(self.joins[a.ifname].memberships) if a.ifname in self.joins else 0,
                }
                for a in self.attachments.values()
            ],
            "rules": [{"id": i, "rule": str(r.rule)} for i, r in sorted(self.rules.items())],
            "loss_tracer": self.tracer is not None,
            "notices": [n for n in [self.tracer_notice, self.pin_notice,
                                    *(a.notice for a in self.attachments.values())] if n],
            "pinned": self.pinned,
            "cpus": self.datapath.maps.ncpus if self.datapath is not None else 0,
        }
