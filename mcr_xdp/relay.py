"""The facade the CLI and the control socket call: one relay = one loaded
datapath, the input interfaces it is attached to, its rules and its group
memberships.

Each input runs in the first mode of the ladder (loader.LADDER: native XDP,
generic XDP, TC, userspace) that loads there; the three BPF modes share one
compiled object and its maps, the userspace mode is a set of worker
processes (mcr_xdp.fallback) that get the same rules. Rules go to every
datapath the relay runs, so an input in any mode sees them all.

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
from .errors import AttachError, BusyError, McrError, RuleError, UsageError
from .igmp import JoinPool
from .links import Link, generic_xdp_vlan_blind, lookup
from .links import counters as link_counters
from .loader import Attachment, Datapath, Mode, XdpMode
from .rules import Rule, diff, validate


@dataclasses.dataclass
class RelayConfig:
    interfaces: list[str]
    rules: list[Rule]
    xdp_mode: XdpMode = XdpMode.AUTO
    instance: str | None = None  # pin directory name; None: this namespace's (control.instance_name)
    mode: Mode | None = None  # None: from xdp_mode (loader.ladder)
    steer_cpus: tuple[int, ...] = ()  # XDP: hash flows over these CPUs (cpumap)
    workers: int | None = None  # userspace: worker processes (None: one per CPU)
    fanout: str = "hash"  # userspace: PACKET_FANOUT mode (hash, cpu, lb)


@dataclasses.dataclass(frozen=True)
class InstalledRule:
    rule_id: int
    rule: Rule
    ifindex: int  # of the input interface, as the map key holds it


def _delivery_order(rule: Rule, links: dict[str, Link]) -> tuple[int, ...]:
    """The ifindexes of rule's outputs as its fan-out devmap lists them: up
    before down, then by MTU, largest first; a stable sort, so outputs on
    one interface keep the rule's order (Relay._set_fanout)."""
    outs = [links[o.iface] for o in rule.outputs]
    return tuple(link.ifindex for link in sorted(outs, key=lambda link: (not link.up, -link.mtu)))


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
        self._fanout_order: dict[int, tuple[int, ...]] = {}  # rule id -> its devmap's ifindexes, in key order
        self.ladder: tuple[Mode, ...] = ()
        self.bpf_error = ""  # why the BPF modes can't be used, when the datapath failed to load
        self.fallback = None  # fallback.Fallback, once an input runs in userspace mode
        self._tc_qdiscs: set[int] = set()  # ifindexes whose clsact qdisc this relay added

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> list[Attachment]:
        features.require_root("attaching the relay")
        cfg = self.config
        links = self._check(cfg.rules, cfg.interfaces)
        self.ladder = loader.ladder(cfg.mode, cfg.xdp_mode)
        self._check_options()
        for name in cfg.interfaces:
            self._check_free(links[name])
        try:
            self._load_datapath()
            for rule in cfg.rules:
                self._install(rule, links)
            for name in cfg.interfaces:
                self._attach(links[name])
            self._drop_unused_datapath()
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
                self._detach(att)
            except McrError as exc:
                errors.append(exc)
        self.attachments.clear()
        if self.fallback is not None:
            self.fallback.close()
            self.fallback = None
        for pool in self.joins.values():
            pool.close()
        self.joins.clear()
        self.rules.clear()
        self._slots.clear()
        self._fanout_order.clear()
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

    def _check_options(self) -> None:
        cfg = self.config
        if cfg.steer_cpus and not any(m in (Mode.XDP_NATIVE, Mode.XDP_GENERIC) for m in self.ladder):
            raise UsageError("--steer-cpus steers XDP: it does not apply to --mode "
                             + "/".join(m.value for m in self.ladder))
        online = os.sched_getaffinity(0) | set(range(os.cpu_count() or 1))
        for cpu in cfg.steer_cpus:
            if cpu not in online or cpu >= abi.MAX_CPUS:
                raise UsageError(f"--steer-cpus: CPU {cpu} does not exist (CPUs: 0-{(os.cpu_count() or 1) - 1})")
        if len(set(cfg.steer_cpus)) != len(cfg.steer_cpus):
            raise UsageError("--steer-cpus names a CPU twice")
        if (cfg.workers is not None or cfg.fanout != "hash") and Mode.USERSPACE not in self.ladder:
            raise UsageError("--workers and --fanout are for the userspace mode: they do not apply to --mode "
                             + "/".join(m.value for m in self.ladder))

    def _check_free(self, link: Link) -> None:
        """Nothing of a relay on link yet: an XDP program or the relay's TC
        filter (a running relay's, or one a killed relay left behind)."""
        if not any(m in loader.BPF_MODES for m in self.ladder):
            return
        try:
            current = loader.attached(link.ifindex)
        except McrError:
            current = None  # no libbpf: no BPF mode will load either
        if current is not None:
            raise BusyError(
                f"{link.name} already has an XDP program (id {current.prog_id}, {current.name or 'unnamed'}); "
                f"a relay may be running there: stop it or run `mcr-xdp detach {link.name}`"
            )
        if loader.tc_attached(link.ifindex) is not None:
            raise BusyError(f"{link.name} already has the relay's TC filter; a relay may be running there: "
                            f"stop it or run `mcr-xdp detach {link.name}`")

    def _load_datapath(self) -> None:
        """The BPF datapath, if the ladder has a BPF mode. If it can't load,
        those modes are out and the reason goes with each attachment; with
        no other mode left, that is the error."""
        if not any(m in loader.BPF_MODES for m in self.ladder):
            return
        try:
            features.require_toolchain()
            features.require_kernel()
            self.datapath = Datapath()
        except McrError as exc:
            if Mode.USERSPACE not in self.ladder:
                raise
            self.bpf_error = str(exc)
            return
        self._start_tracer()
        if self.config.steer_cpus:
            self.datapath.set_steering(self.config.steer_cpus)
            if self.tracer is not None and self.config.steer_cpus:
                self.tracer.watch_prog(libbpf.prog_id(self.datapath.cpu_fd))

    def _attach(self, link: Link) -> Attachment:
        """Try the ladder's modes in order on link; the first that loads
        wins, and the attachment says why each earlier one did not."""
        tried: list[tuple[str, str]] = []
        failing = loader.failing_modes()
        for mode in self.ladder:
            try:
                if mode.value in failing:
                    raise AttachError(f"disabled by {loader.FAIL_MODES_ENV} (testing)")
                att = self._attach_mode(link, mode)
            except BusyError:
                raise
            except McrError as exc:
                tried.append((mode.value, str(exc)))
                continue
            notice = att.notice
            if tried:
                why = "; ".join(f"{m}: {reason}" for m, reason in tried)
                notice = f"{link.name} runs in {att.mode_name} mode ({why})"
            att = dataclasses.replace(att, notice=notice, tried=tuple(tried))
            self.attachments[link.name] = att
            return att
        why = "; ".join(f"{m}: {reason}" for m, reason in tried)
        raise AttachError(f"no mode could relay on {link.name}: {why}")

    def _attach_mode(self, link: Link, mode: Mode) -> Attachment:
        if mode in loader.BPF_MODES and self.datapath is None:
            raise AttachError(self.bpf_error or "the BPF datapath is not loaded")
        if mode in (Mode.XDP_NATIVE, Mode.XDP_GENERIC):
            notice = ""
            if mode == Mode.XDP_GENERIC and (blind := generic_xdp_vlan_blind(link)):
                if mode != self.ladder[-1]:  # a later mode of the ladder removes every tag
                    raise AttachError(f"generic XDP can't remove a VLAN tag held in skb metadata: {blind}")
                notice = (f"{link.name}: generic XDP relays a frame whose VLAN tag is in skb metadata with the "
                          f"tag still on ({blind}); --mode xdp-native or tc removes it")
            xdp_mode = mode.value.removeprefix("xdp-")
            att = loader.xdp_attach(link.ifindex, link.name, self.datapath.xdp_fd(xdp_mode), xdp_mode)
            return dataclasses.replace(att, notice=notice)
        if mode == Mode.TC:
            att, created = loader.tc_attach(link.ifindex, link.name, self.datapath.tc_fd)
            if created:
                self._tc_qdiscs.add(link.ifindex)
            return att
        fallback = self._ensure_fallback()
        fallback.add_input(link.ifindex, link.name)
        return Attachment(link.ifindex, link.name, "userspace", 0)

    def _drop_unused_datapath(self) -> None:
        """Every input fell through to userspace: the BPF object (and the
        loss tracer) would only hold memory and shadow the workers' counters."""
        if self.datapath is None or any(a.mode != "userspace" for a in self.attachments.values()):
            return
        self.datapath.close()
        self.datapath = None
        self._slots.clear()
        self._fanout_order.clear()
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None
            self.tracer_notice = ""

    def _detach(self, att: Attachment) -> None:
        if att.mode in ("native", "generic"):
            loader.detach(att.ifindex, att.ifname, only_prog_id=att.prog_id)
        elif att.mode == "tc":
            loader.tc_detach(att.ifindex, att.ifname, remove_qdisc=att.ifindex in self._tc_qdiscs)
            self._tc_qdiscs.discard(att.ifindex)
        elif att.mode == "userspace" and self.fallback is not None:
            self.fallback.remove_input(att.ifindex)

    def _ensure_fallback(self):
        """The userspace workers, started at the first userspace input with
        every rule installed so far."""
        if self.fallback is None:
            from .fallback import Fallback

            fallback = Fallback(self.config.workers, self.config.fanout)
            fallback.start()
            self.fallback = fallback
            try:
                for installed in self.rules.values():
                    self._put_fallback(installed, fresh=True)
            except BaseException:
                self.fallback = None
                fallback.close()
                raise
        return self.fallback

    def _put_fallback(self, installed: InstalledRule, fresh: bool, outputs=None) -> None:
        if outputs is None:
            links = lookup([o.iface for o in installed.rule.outputs])
            outputs = [encode.output_value(installed.rule, o, links[o.iface].ifindex, 0, links[o.iface].mac)
                       for o in installed.rule.outputs]
        self.fallback.put_rule(installed.rule_id, installed.ifindex, installed.rule, outputs, fresh)

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
        if self.datapath is None:
            return 0
        if ifindex not in self._slots:
            slot = len(self._slots)
            self.datapath.maps.set_port(slot, ifindex, self.datapath.egress_fd)
            self._slots[ifindex] = slot
        return self._slots[ifindex]

    def _free_id(self) -> int:
        return next(i for i in range(len(self.rules) + 1) if i not in self.rules)

    def _install(self, rule: Rule, links: dict[str, Link], rule_id: int | None = None) -> InstalledRule:
        """Write one rule; with rule_id, replace that rule's outputs in place
        (same key, same counters)."""
        maps = self.datapath.maps if self.datapath is not None else None
        replacing = rule_id is not None
        rule_id = self._free_id() if rule_id is None else rule_id
        n = len(rule.outputs)
        outputs = []
        for i, out in enumerate(rule.outputs):
            link = links[out.iface]
            slot = self._slot(link.ifindex) if n == 1 else i
            outputs.append(encode.output_value(rule, out, link.ifindex, slot, link.mac))
        if not replacing and maps is not None:
            maps.reset_rule_counters(rule_id)
        if n > 1 and maps is not None:
            self._set_fanout(rule_id, rule, links)
        if not replacing:
            self._join(rule, links[rule.iface])
        installed = InstalledRule(rule_id, rule, links[rule.iface].ifindex)
        try:
            if self.fallback is not None:
                self._put_fallback(installed, fresh=not replacing, outputs=outputs)
            if maps is not None:
                maps.put_rule(encode.rule_key(rule, installed.ifindex), encode.rule_value(rule, rule_id, outputs))
        except BaseException:
            if not replacing:
                if self.fallback is not None:
                    self.fallback.delete_rule(rule_id)
                self._leave(rule)
            raise
        if n == 1 and maps is not None:
            maps.clear_fanout(rule_id)
            self._fanout_order.pop(rule_id, None)
        self.rules[rule_id] = installed
        self._watch_outputs(rule, links)
        self._update_config()
        return installed

    def _set_fanout(self, rule_id: int, rule: Rule, links: dict[str, Link]) -> None:
        """Write a fan-out rule's devmap with the outputs that can take a
        frame first: up before down, then by MTU, largest first. Generic
        XDP clones a broadcast entry by entry and gives up at the first
        entry that can't take the frame (down, or an MTU below the frame:
        kernel/bpf/devmap.c dev_map_redirect_multi), so a dead output
        listed first would take every later one with it. Outputs on one
        interface keep the rule's order (the egress program tells them apart
        by it)."""
        ifindexes = _delivery_order(rule, links)
        self.datapath.maps.set_fanout(rule_id, [(ifindex, self.datapath.egress_fd) for ifindex in ifindexes])
        self._fanout_order[rule_id] = ifindexes

    def refresh_outputs(self) -> list[int]:
        """Re-order fan-out devmaps whose outputs went up, down or changed
        MTU since they were written (see _set_fanout). Returns the rule ids
        rewritten."""
        if self.datapath is None or not self._fanout_order:
            return []
        from .links import all_links

        links = all_links()
        changed = []
        for rule_id, installed in self.rules.items():
            rule = installed.rule
            if rule_id not in self._fanout_order or any(o.iface not in links for o in rule.outputs):
                continue
            order = _delivery_order(rule, links)
            if sorted(order) != sorted(self._fanout_order[rule_id]):
                continue  # an output was re-created under a new ifindex: the rule itself needs rewriting
            if order != self._fanout_order[rule_id]:
                self._set_fanout(rule_id, rule, links)
                changed.append(rule_id)
        return changed

    def _uninstall(self, rule_id: int) -> InstalledRule:
        installed = self.rules.pop(rule_id)
        rule = installed.rule
        if self.datapath is not None:
            maps = self.datapath.maps
            maps.delete_rule(encode.rule_key(rule, installed.ifindex))
            maps.clear_fanout(rule_id)
            self._fanout_order.pop(rule_id, None)
        if self.fallback is not None:
            self.fallback.delete_rule(rule_id)
        self._leave(rule)
        self._update_config()
        return installed

    def _update_config(self) -> None:
        if self.datapath is not None:
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
        if self.datapath is None:
            return  # userspace only: its counters live in the workers' shared memory
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
            self.tracer = LossTracer([self.datapath.prog_id, self.datapath.generic_prog_id,
                                      libbpf.prog_id(self.datapath.egress_fd)],
                                     [libbpf.obj_id(self.datapath.maps.fds[abi.MAP_CPUMAP])])
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
            self.counters(),
            rules,
            losses=self.tracer.read() if self.tracer is not None else None,
            links=link_counters(names),
            steering_lost=self.tracer.steering_drops() if self.tracer is not None else 0,
            ring_drops=self.fallback.ring_drops() if self.fallback is not None else None,
        )

    def counters(self):
        """The Maps-like object stats.collect reads: the datapath's maps,
        the userspace workers' counters, or both summed (inputs in different
        modes share the rule ids)."""
        if self.fallback is None:
            return self.datapath.maps
        if self.datapath is None:
            return self.fallback.counters
        from .fallback.counters import Combined

        return Combined(self.datapath.maps, self.fallback.counters)

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
                    "mode": a.mode_name,
                    "prog_id": a.prog_id,
                    "notice": a.notice,
                    "not_used": [{"mode": m, "reason": why} for m, why in a.tried],
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
            "modes_tried": [m.value for m in self.ladder],
            "steering": {"cpus": list(self.datapath.steer_cpus)} if self.datapath is not None
            and self.datapath.steer_cpus else None,
            "userspace": self.fallback.status() if self.fallback is not None else None,
        }
