"""The facade the CLI and the control socket call: one relay = its input
interfaces, its rules, its group memberships and the backends that move
its packets (mcr_xdp.backends).

Each input runs in the first mode of the ladder (modes.LADDER: native XDP,
generic XDP, TC, userspace) that works there, on the backend of that mode;
the relay opens a backend when an input first tries one of its modes and
gives it every rule, so an input in any mode sees them all.

Every change is checked in full before it touches the kernel, and applied in
an order that never disturbs other rules: a new rule's group is joined before
any backend makes it live; a deleted rule stops matching before its joins go.
start() writes every rule before it attaches, so the first packet already
sees them, and undoes what it did if a later step fails; stop() is
idempotent and safe after a partial start.

A rule's id, which people and dashboards see, is never given twice in a
relay's life; where the backends keep it is another number (RuleIds).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

from . import abi, features, pins, stats
from .backends import Attachment, Backend, InstalledRule, Losses, backend_class
from .control import instance_name
from .errors import AttachError, BusyError, McrError, RuleError, SetupError, UsageError
from .igmp import JoinPool, claim
from .links import Link, all_links, lookup
from .links import counters as link_counters
from .logs import Event, Level
from .modes import FAIL_MODES_ENV, Mode, XdpMode, failing_modes, ladder
from .neighbours import NextHops
from .rules import Rule, RuleSet, diff, validate
from .status import InputStatus, document


@dataclasses.dataclass
class RelayConfig:
    interfaces: list[str]
    rules: list[Rule]
    xdp_mode: XdpMode = XdpMode.AUTO
    instance: str | None = None  # pin directory name; None: this namespace's (control.instance_name)
    control_socket: str | None = None  # recorded in the pinned state (who owns the inputs)
    mode: Mode | None = None  # None: from xdp_mode (modes.ladder)
    steer_cpus: tuple[int, ...] = ()  # XDP: hash flows over these CPUs (cpumap)
    workers: int | None = None  # userspace: worker processes (None: one per CPU)
    fanout: str = "hash"  # userspace: PACKET_FANOUT mode (hash, cpu, lb)
    no_join: frozenset[str] = frozenset()  # inputs that join no group (join = "none")
    loss_tracer: bool = True  # XDP: count losses after redirect (bpf/trace.c; off: --no-loss-tracer)


class RuleIds:
    """A relay's rule ids, and the indexes behind them.

    The id names a rule to people and to what they build on it (`rule del
    ID`, `rule list`, the stats JSON, the rule_id label of the Prometheus
    series): a new rule's is one never given before in this relay's life,
    which goes on through reloads and through a restart that takes over
    from the relay before it (SIGQUIT, or killed: the state file carries
    next_id). A rule keeps its id as long as it lives, changed in place
    included.

    The index is where the backends keep the rule (the datapath's
    mcr_rule.id: its slot in the per-rule counter and fan-out arrays, its key
    in the health and policer maps), below abi.MAX_RULES: the lowest free
    one, given again once its rule is gone (its counters zeroed first). So
    ids only go up, for ever, while the datapath's memory stays that of
    MAX_RULES rules.
    """

    def __init__(self, size: int = abi.MAX_RULES, next_id: int = 0):
        self.size = size
        self.next_id = next_id  # every id below it was given out in this relay's life
        self._taken: set[int] = set()  # indexes
        self._lowest_free = 0  # every index below it is taken: a relay of 10,000 rules adds one without a scan

    def take(self) -> tuple[int, int]:
        """A new rule's (id, index)."""
        index = self._lowest_free
        while index in self._taken:
            index += 1
        if index >= self.size:
            raise RuleError(f"more than {self.size} rules")
        self._taken.add(index)
        self._lowest_free = index + 1
        rule_id = self.next_id
        self.next_id += 1
        return rule_id, index

    def keep(self, rule_id: int, index: int) -> tuple[int, int]:
        """(rule_id, index) again, for a rule a killed relay gave them; ids
        it gave out are never given again."""
        if not 0 <= index < self.size or index in self._taken or rule_id < 0:
            raise RuleError(f"rule id {rule_id} at index {index} cannot be kept")
        self._taken.add(index)
        self.next_id = max(self.next_id, rule_id + 1)
        return rule_id, index

    def release(self, index: int) -> None:
        """index's rule is gone from every backend: the index may be given
        again (never its id)."""
        self._taken.discard(index)
        self._lowest_free = min(self._lowest_free, index)

    @property
    def in_use(self) -> int:
        return len(self._taken)


class Relay:
    def __init__(self, config: RelayConfig):
        self.config = config
        self.ladder: tuple[Mode, ...] = ()
        self.attachments: dict[str, Attachment] = {}
        self.rules: dict[int, InstalledRule] = {}  # by rule id
        self._ids = RuleIds()
        self._ruleset = RuleSet()  # self.rules' rules, for checking more against them (add_rules)
        self._joined_by: dict[tuple, int] = {}  # _need(rule) -> rules of self.rules that need it
        self._links: dict[str, Link] = {}  # the interfaces as last looked up
        self.joins: dict[str, JoinPool] = {}
        self.claims: dict[tuple, socket.socket] = {}  # _need(rule) of unicast inputs -> their claim
        self.next_hops = NextHops()  # of the unicast receivers
        self._not_local: set = set()  # unicast inputs' addresses the host did not have when claimed
        self.backends: dict[type, Backend] = {}  # backend class -> the open backend
        self._unavailable: dict[type, str] = {}  # backend class -> why it did not open
        self._runs_on: dict[str, Backend] = {}  # input name -> its backend
        self.started_at: float | None = None
        self.pinned: str | None = None  # where the pinned maps are, once pinned
        self._takeover: dict[str, tuple[type, object]] = {}  # input -> (backend class, what a killed relay left)
        self._left: dict | None = None  # the state a killed relay of this instance left (pins.left_behind)
        self._state_only = False  # the state file written without pins (removed by stop)
        self._state_notice = ""
        self.link_states: dict[str, str] = {}  # every interface of the relay: "up", "down" or "gone"

    # -- lifecycle ---------------------------------------------------------

    def _checked(self, doing: str) -> dict[str, Link]:
        """What start and dry_run check before anything changes: root, the
        rules against this host's interfaces, the options, the inputs free of
        other relays' programs (a killed relay's, to take over, go into
        _takeover). The links of the relay's interfaces."""
        features.require_root(doing)
        cfg = self.config
        links = self._check(cfg.rules, cfg.interfaces)
        self.ladder = ladder(cfg.mode, cfg.xdp_mode)
        self._check_options()
        for name in cfg.interfaces:
            for cls in dict.fromkeys(backend_class(m) for m in self.ladder):
                found = cls.check_free(links[name])
                if found is not None:
                    self._takeover[name] = (cls, found)
        return links

    def start(self) -> list[Attachment]:
        cfg = self.config
        links = self._checked("attaching the relay")
        left = pins.left_behind(self.instance)
        # Its rule ids and counters go on only where this relay takes over
        # every input it had: a program it left forwarding elsewhere would
        # count into the same maps under indexes that may mean other rules now.
        if left is not None and isinstance(left.get("inputs"), dict) and set(left["inputs"]) <= set(cfg.interfaces):
            self._left = left
        _more_files()  # a socket holds 20 joins: 65,536 groups take 3,277 of them
        try:
            # Groups first: a relay started again in place of a killed one
            # (whose memberships ended with it) joins within a fraction of a
            # second, not after the compile, so a snooping switch or router
            # upstream has no time to prune them while its program forwards.
            for rule in cfg.rules:
                self._join(rule, links[rule.iface])
            self._open_first()
            self._install_first(cfg.rules, links)
            for name in cfg.interfaces:
                self._attach(links[name])
            self._close_unused()
            self._link_states(links)
            self.started_at = time.monotonic()
            self._started_wall = time.time()
            self._pin()
            pins.sweep(keep=self.instance)
        except BaseException:
            self.stop()
            raise
        return list(self.attachments.values())

    def dry_run(self) -> dict:
        """attach --dry-run: every check start makes (root, the rules
        against this host's interfaces, the options, the inputs free of
        other programs) and the datapath of the kernel modes compiled and
        loaded into the kernel, every program of it (the verifier passes
        them), then unloaded: nothing attached, joined, pinned or sent."""
        cfg = self.config
        self._checked("checking the relay")
        inputs = {name: {"modes": [m.value for m in self.ladder], "takes_over": name in self._takeover}
                  for name in cfg.interfaces}
        programs = []
        kernel = [m for m in self.ladder if m != Mode.USERSPACE]
        if kernel:
            backend = backend_class(kernel[0]).open(self.config)  # compiles and loads the XDP programs
            try:
                programs = backend.verify_all(kernel)
            finally:
                backend.close()
        return {"inputs": inputs, "rules": [str(r) for r in cfg.rules], "programs": programs}

    def stop(self) -> None:
        """Detach, leave the groups, close the backends. Safe to call twice."""
        errors = []
        for name, att in self.attachments.items():
            try:
                self._runs_on[name].detach(att)
            except McrError as exc:
                errors.append(exc)
        self._release(keep=False)
        if self._state_only:
            pins.remove(self.instance)
            self._state_only = False
        if errors:
            raise errors[0]

    def leave(self) -> list[str]:
        """End, but leave each input whose program outlives this process
        (XDP, TC) forwarding with its rules, with the pins and the state
        file, for the next relay started with the same command to take over
        (SIGQUIT: a restart or an upgrade without a gap). Inputs of a
        backend that ends with the process (userspace) are detached; the
        group memberships end with it. Returns the inputs left forwarding."""
        kept = [name for name, backend in self._runs_on.items() if backend.outlives]
        if not kept:
            self.stop()
            return []
        for name in [n for n in self.attachments if n not in kept]:
            att = self.attachments.pop(name)
            try:
                self._runs_on.pop(name).detach(att)
            except McrError:
                pass  # it ends with the process anyway
        self._save_state()  # the inputs left, for the successor and `detach`
        self.flush_state()
        self._release(keep=True)
        self._state_only = False  # the state file stays: it names the inputs left forwarding
        return kept

    def _release(self, keep: bool) -> None:
        """Close the backends (keep: leave what forwards in the kernel), the
        group memberships, and forget inputs and rules."""
        self.attachments.clear()
        self._runs_on.clear()
        for backend in self.backends.values():
            backend.close(keep=keep)
        self.backends.clear()
        for pool in self.joins.values():
            pool.close()
        self.joins.clear()
        for sock in self.claims.values():
            sock.close()
        self.claims.clear()
        self.next_hops.close(keep=keep)
        self.rules.clear()
        self._ruleset = RuleSet()
        self._joined_by.clear()
        self.pinned = None

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def inputs(self) -> list[str]:
        return list(self.attachments)

    # -- checks ------------------------------------------------------------

    def _check(self, rules: list[Rule], inputs: list[str]) -> dict[str, Link]:
        """Validate a whole rule set against the interfaces of this
        namespace and the relay's inputs."""
        _check_inputs(rules, inputs)
        names = dict.fromkeys(inputs)
        for rule in rules:
            names.update(dict.fromkeys(_names(rule)))
        links = lookup(names)
        self._links.update(links)
        validate(rules, {n: link.ifindex for n, link in links.items()},
                 [n for n, link in links.items() if link.loopback])
        return links

    def _check_more(self, rules: list[Rule]) -> dict[str, Link]:
        """Validate rules to add to the installed ones: only theirs is
        checked, against what the installed ones count (RuleSet)."""
        _check_inputs(rules, self.inputs)
        links = self._known_links(dict.fromkeys(name for rule in rules for name in _names(rule)))
        self._ruleset.check(rules, {n: link.ifindex for n, link in links.items()},
                            [n for n, link in links.items() if link.loopback])
        return links

    def _known_links(self, names) -> dict[str, Link]:
        """Links by name: as last looked up while each name still has the
        same ifindex (an ioctl, where a netlink dump of every interface
        takes milliseconds), else looked up again."""
        try:
            if all(n in self._links and socket.if_nametoindex(n) == self._links[n].ifindex for n in names):
                return {n: self._links[n] for n in names}
        except OSError:
            pass  # one is gone: lookup says which
        links = lookup(names)
        self._links.update(links)
        return links

    def _check_options(self) -> None:
        cfg = self.config
        if cfg.steer_cpus and not any(m.is_xdp for m in self.ladder):
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

    # -- backends and inputs -----------------------------------------------

    def _open_first(self) -> None:
        """The backend of the ladder's first mode opens before any rule is
        written, so the first packet on an input already sees them all. If
        it can't, its modes are out and the reason goes with each input;
        with no other backend in the ladder, that is the error."""
        cls = backend_class(self.ladder[0])
        try:
            self._open(cls)
        except SetupError as exc:
            # A machine set up wrong (no bcc, no kernel headers) is an error
            # to fix, not a reason to relay 20 times slower in userspace
            # without being asked: that takes --mode userspace.
            raise SetupError(f"{exc}; or relay without the kernel datapath: --mode userspace") from None
        except McrError as exc:
            if all(backend_class(m) is cls for m in self.ladder):
                raise
            self._unavailable[cls] = str(exc)

    def _open(self, cls: type) -> Backend:
        """Open a backend and give it every rule installed so far."""
        backend = cls.open(self.config, self._left)
        try:
            if self.rules:
                links = lookup(dict.fromkeys(n for r in self.rules.values() for n in _names(r.rule)))
                for installed in self.rules.values():
                    backend.put_rule(installed, links, fresh=True)
        except BaseException:
            backend.close()
            raise
        self.backends[cls] = backend
        return backend

    def _backend_for(self, mode: Mode) -> Backend:
        cls = backend_class(mode)
        if cls in self.backends:
            return self.backends[cls]
        if cls in self._unavailable:
            raise AttachError(self._unavailable[cls])
        return self._open(cls)

    def _attach(self, link: Link) -> Attachment:
        """Try the ladder's modes in order on link; the first that loads
        wins, and the attachment says why each earlier one did not."""
        tried: list[tuple[Mode, str]] = []
        failing = failing_modes()
        for i, mode in enumerate(self.ladder):
            try:
                if mode.value in failing:
                    raise AttachError(f"disabled by {FAIL_MODES_ENV} (testing)")
                backend = self._backend_for(mode)
                takeover = self._takeover_for(link, mode)
                att = backend.attach(link, mode, last_resort=i == len(self.ladder) - 1, takeover=takeover)
                self._takeover.pop(link.name, None)
            except BusyError:
                raise
            except McrError as exc:
                tried.append((mode, str(exc)))
                continue
            notice = att.notice
            if tried:
                why = "; ".join(f"{m.value}: {reason}" for m, reason in tried)
                notice = f"{link.name} runs in {att.mode.value} mode ({why})"
            att = dataclasses.replace(att, notice=notice, tried=tuple(tried))
            self.attachments[link.name] = att
            self._runs_on[link.name] = backend
            return att
        why = "; ".join(f"{m.value}: {reason}" for m, reason in tried)
        raise AttachError(f"no mode could relay on {link.name}: {why}")

    def _takeover_for(self, link: Link, mode: Mode):
        """What a killed relay left on link, if mode can swap it in one step;
        else it goes first (never two relays' programs forwarding at once)."""
        if link.name not in self._takeover:
            return None
        cls, found = self._takeover[link.name]
        if backend_class(mode) is cls and getattr(found, "mode", None) == mode:
            return found
        cls.release(link, found)
        del self._takeover[link.name]
        return None

    def _close_unused(self) -> None:
        """A backend no input runs on (every input fell through past it)
        would only hold memory, and its counters would shadow the others."""
        used = {id(b) for b in self._runs_on.values()}
        for cls, backend in list(self.backends.items()):
            if id(backend) not in used:
                backend.close()
                del self.backends[cls]

    # -- rules -------------------------------------------------------------

    def add_rules(self, rules: list[Rule]) -> list[InstalledRule]:
        """Add rules to the running relay, all or none."""
        links = self._check_more(rules)
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
        """Delete a rule; a merge leg goes with every leg of its stream."""
        if rule_id not in self.rules:
            raise RuleError(f"no rule with id {rule_id}")
        name = self.rules[rule_id].rule.merge_name
        if name is not None:
            for other in [i for i, r in self.rules.items() if r.rule.merge_name == name and i != rule_id]:
                self._uninstall(other)
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

    def _install_first(self, rules: list[Rule], links: dict[str, Link]) -> None:
        """start's rules. Those a killed relay of this instance had too
        (self._left) keep their ids and indexes, and go first, so no new
        rule takes an index whose counters go on; the others get ids after
        every id it gave out."""
        old = self._old_ids(rules)
        self._ids = RuleIds(next_id=pins.next_id(self._left) if self._left is not None else 0)
        for rule in sorted(rules, key=lambda r: str(r) not in old):
            self._install(rule, links, adopt=old.get(str(rule)))
        self.rules = dict(sorted(self.rules.items()))

    def _old_ids(self, rules: list[Rule]) -> dict[str, tuple[int, int]]:
        """Rule text -> (id, index), for the rules a killed relay of this
        instance had too: they keep both, so dashboards go on under the same
        id and the counters taken over from it (pins.left_behind) under the
        same rule."""
        if self._left is None:
            return {}
        wanted = {str(r) for r in rules}
        return {text: (i, index) for i, (index, text) in pins.state_rules(self._left).items() if text in wanted}

    def _install(self, rule: Rule, links: dict[str, Link], rule_id: int | None = None,
                 adopt: tuple[int, int] | None = None) -> InstalledRule:
        """Join the rule's group, then write the rule to every backend under
        a new id and index; with rule_id, replace that rule in place (same
        id and index, same counters: other outputs, or an input that
        moved); with adopt, a new rule under the (id, index) a killed relay
        gave it (its counters go on)."""
        replacing = rule_id is not None
        if replacing:
            index = self.rules[rule_id].index
        elif adopt is not None:
            rule_id, index = self._ids.keep(*adopt)
        else:
            rule_id, index = self._ids.take()
        joined, done = False, []
        try:
            installed = InstalledRule(rule_id, index, rule, links[rule.iface].ifindex,
                                      tuple(links[o.iface].ifindex for o in rule.outputs), self._hops_for(rule, links))
            if not replacing:
                self._join(rule, links[rule.iface])
                joined = True
            for backend in self.backends.values():
                backend.put_rule(installed, links, fresh=not replacing and adopt is None)
                done.append(backend)
        except BaseException:
            if not replacing:
                for backend in done:
                    backend.delete_rule(installed)
                if joined:
                    self._leave(rule)
                self._ids.release(index)  # the id stays given: ids only go up
            raise
        if installed.rule_id in self.rules:
            self._forget(self.rules[installed.rule_id].rule)
        self.rules[installed.rule_id] = installed
        self._ruleset.add(rule)
        need = _need(rule)
        self._joined_by[need] = self._joined_by.get(need, 0) + 1
        self._save_state()
        return installed

    def _hops_for(self, rule: Rule, links: dict[str, Link]) -> tuple[bytes | None, ...]:
        """The next-hop MACs of rule's unicast receivers (None: unknown, or
        a multicast output); () when it has none."""
        if not any(o.unicast for o in rule.outputs):
            return ()
        return tuple(self.next_hops.lookup(links[o.iface].ifindex, o.group).mac if o.unicast else None
                     for o in rule.outputs)

    def follow_next_hops(self, touched: set | None = None) -> list[Event]:
        """Resolve the unicast receivers' next hops again (touched: only
        those whose next hop is one of these (ifindex, address) pairs, from
        neighbour events) and rewrite in place the rules whose hop changed.
        An event for each change: a notice, a warning when it lost its MAC."""
        if not self.next_hops.hops or not self.attachments:
            return []
        changed = self.next_hops.refresh(touched)
        events = []
        for rule_id, installed in list(self.rules.items()):
            if not installed.next_hops:
                continue
            outs = [(i, o) for i, o in enumerate(installed.rule.outputs)
                    if o.unicast and i < len(installed.outputs) and (installed.outputs[i], o.group) in changed]
            if not outs:
                continue
            links = self._known_links(_names(installed.rule))
            self._install(installed.rule, links, rule_id=rule_id)
            for i, o in outs:
                hop = changed[installed.outputs[i], o.group]
                events.append(Event(Level.NOTICE if hop.mac is not None else Level.WARNING,
                                    f"rule {rule_id}: output {o}: {hop.describe(o.group)}"))
        return events

    def _receivers(self):
        """(rule id, output, its Hop) for every unicast receiver, by rule id."""
        for rule_id, installed in sorted(self.rules.items()):
            if not installed.next_hops:
                continue
            for i, out in enumerate(installed.rule.outputs):
                hop = self.next_hops.hops.get((installed.outputs[i], out.group)) if out.unicast else None
                if hop is not None:
                    yield rule_id, out, hop

    def unresolved(self) -> list[str]:
        """A line for every unicast receiver whose copies are dropped for
        want of a next-hop MAC."""
        return [f"rule {rule_id}: output {out}: {hop.describe(out.group)}; its copies are dropped and counted "
                "(drop_no_neigh) until the kernel knows a MAC"
                for rule_id, out, hop in self._receivers() if hop.mac is None]

    def next_hop_status(self) -> list[dict]:
        """Every unicast receiver's next hop (status "next_hops")."""
        return [{"rule": rule_id, "output": str(out), "via": hop.via,
                 "mac": hop.mac.hex(":") if hop.mac is not None else None, "why": hop.why}
                for rule_id, out, hop in self._receivers()]

    def _forget(self, rule: Rule) -> None:
        """rule is no longer among self.rules (removed, or replaced)."""
        self._ruleset.remove(rule)
        need = _need(rule)
        self._joined_by[need] -= 1
        if not self._joined_by[need]:
            del self._joined_by[need]

    def _uninstall(self, rule_id: int) -> InstalledRule:
        installed = self.rules.pop(rule_id)
        self._forget(installed.rule)
        if installed.next_hops:
            self.next_hops.forget({(r.outputs[i], o.group) for r in self.rules.values() if r.next_hops
                                   for i, o in enumerate(r.rule.outputs) if o.unicast})
        for backend in self.backends.values():
            backend.delete_rule(installed)
        self._ids.release(installed.index)  # after every backend let go of it
        self._leave(installed.rule)
        self._save_state()
        return installed

    def refresh(self) -> list[Event]:
        """Follow the interfaces: inputs, then outputs; restart what of a
        backend died (userspace workers). Returns an event for each change:
        a warning for what went away or down, a notice for what came back."""
        if not self.attachments:
            return []
        events = self.heal()
        links = self._links = all_links()
        events += [*self._follow_inputs(links), *self._follow_outputs(links), *self._link_states(links)]
        for backend in self.backends.values():
            backend.refresh_outputs(links)
        return events + self.follow_next_hops()

    def heal(self) -> list[Event]:
        """Restart what of a backend died on its own (a userspace worker:
        at once, so its share of the traffic goes to the others). An event
        for each."""
        return [event for backend in self.backends.values() for event in backend.heal()]

    def _link_states(self, links: dict[str, Link]) -> list[Event]:
        """Up, down or gone, for every interface of the relay; an event for
        each interface that went up or down (gone and back have their own)."""
        names = dict.fromkeys([*self.attachments, *(n for r in self.rules.values() for n in _names(r.rule))])
        states = {n: ("gone" if n not in links else "up" if links[n].up else "down") for n in names}
        events = [Event(Level.NOTICE if state == "up" else Level.WARNING, f"interface {n} is {state}")
                  for n, state in states.items()
                  if state != "gone" and self.link_states.get(n, "up") != state
                  and not (state == "up" and self.link_states.get(n) == "gone")]
        self.link_states = states
        return events

    def _follow_inputs(self, links: dict[str, Link]) -> list[Event]:
        """An input whose interface was deleted is reported (a status
        notice) until an interface of that name exists again; then, or when
        it was re-created under a new ifindex, the relay attaches there as
        at start (the ladder again), with its rules and group joins."""
        events = []
        for name, att in list(self.attachments.items()):
            link = links.get(name)
            if link is None:
                if self.link_states.get(name) != "gone":
                    events.append(Event(Level.WARNING, _input_gone(name)))
                continue
            if link.ifindex == att.ifindex:
                continue
            self._reattach(link, links)
            joined = len(self.joins[name].memberships) if name in self.joins else 0
            events.append(Event(Level.NOTICE, f"input {name} is back: attached in "
                                f"{self.attachments[name].mode.value} mode, {joined} group(s) joined"))
        return events

    def _reattach(self, link: Link, links: dict[str, Link]) -> None:
        """The input link.name under its new ifindex: the old program went
        with the old device; the rules move to the new input key before the
        new program runs; the joins are made again."""
        old = self.attachments.pop(link.name)
        backend = self._runs_on.pop(link.name)
        try:
            backend.detach(old)
        except (McrError, OSError):
            pass  # the device and what it carried are gone
        pool = self.joins.pop(link.name, None)
        if pool is not None:
            pool.close()
        for rule_id, installed in list(self.rules.items()):
            if installed.rule.iface != link.name:
                continue
            for b in self.backends.values():
                b.delete_rule(installed)
            self._install(installed.rule, links, rule_id=rule_id)
            self._join(installed.rule, link)
        self._attach(link)

    def _follow_outputs(self, links: dict[str, Link]) -> list[Event]:
        """A rule whose output was deleted is reported (a status notice)
        until an interface of that name exists again; then, or when an
        output was re-created under a new ifindex (VPN and container
        interfaces are), the rule is rewritten in place for it (same id,
        same counters), without a command."""
        events = []
        for rule_id, installed in list(self.rules.items()):
            rule = installed.rule
            missing = _missing(rule, lambda name: name not in links)
            if any(self.link_states.get(name) != "gone" for name in missing):
                events.append(Event(Level.WARNING, _outputs_gone(rule_id, missing)))
            if missing or rule.iface not in links or links[rule.iface].ifindex != installed.ifindex:
                continue  # the input is followed by _follow_inputs
            now = tuple(links[o.iface].ifindex for o in rule.outputs)
            if now != installed.outputs:
                self._install(rule, links, rule_id=rule_id)
                events.append(Event(Level.NOTICE, f"rule {rule_id}: relaying to "
                                    f"{', '.join(o.iface for o in rule.outputs)} again (interface re-created)"))
        return events

    def _join(self, rule: Rule, link: Link) -> None:
        """Join what rule needs on its input: nothing for a group range, or
        on an input set to join = "none" (docs/user-guide.md, Ranges); a
        unicast input claims its port instead (igmp.claim)."""
        if rule.unicast:
            if _need(rule) not in self.claims:
                self.claims[_need(rule)], local = claim(link.name, rule.group, rule.port)
                if not local:
                    self._not_local.add(rule.group)
            return
        if rule.joins is None or link.name in self.config.no_join:
            return
        pool = self.joins.get(link.name)
        if pool is None:
            pool = self.joins[link.name] = JoinPool(link.ifindex, link.name)
        pool.join(*rule.joins)

    def _leave(self, rule: Rule) -> None:
        if _need(rule) in self._joined_by:
            return  # another rule needs it too
        if rule.unicast:
            sock = self.claims.pop(_need(rule), None)
            if sock is not None:
                sock.close()
            return
        if rule.joins is None:
            return
        pool = self.joins.get(rule.iface)
        if pool is not None:
            pool.leave(*rule.joins)

    # -- pins --------------------------------------------------------------

    @property
    def instance(self) -> str:
        return self.config.instance or instance_name()

    def pin_state(self) -> dict:
        return pins.make_state(os.getpid(), self._started_wall or time.time() - self.uptime,
                               {a.ifname: (a.ifindex, a.prog_id, a.mode) for a in self.attachments.values()},
                               {i: (r.index, r.rule) for i, r in self.rules.items()}, self._ids.next_id,
                               self.config.control_socket)

    def _pin(self) -> None:
        """Pins where a backend can; the state file in any case: it says
        which relay (pid, socket) owns the inputs, so neither `detach` nor
        a new relay takes them from a live one."""
        self._state_dirty = False  # what start installed is in what is written here
        for backend in self.backends.values():
            self.pinned = backend.pin(self.instance, self.pin_state()) or self.pinned
        if self.pinned is None:
            try:
                pins.write_state(self.instance, self.pin_state())
                self._state_only = True
            except OSError as exc:
                self._state_notice = f"no state file, other relays cannot see this one owns its inputs: {exc}"

    def _save_state(self) -> None:
        """The state file is out of date: flush_state writes it. The daemon
        flushes after each request it answered, so a rule change costs the
        requester nothing for it (10,000 rules make a file of ~1 MB)."""
        self._state_dirty = True

    _state_dirty = False
    _started_wall = 0.0  # time.time() at start: the state file's "started", the same in every write

    @property
    def state_dirty(self) -> bool:
        return self._state_dirty

    def flush_state(self) -> None:
        if not self._state_dirty:
            return
        self._state_dirty = False
        state = self.pin_state() if self.pinned is not None or self._state_only else None
        if self.pinned is not None:
            for backend in self.backends.values():
                backend.save_state(state)
        elif self._state_only:
            pins.write_state(self.instance, state)

    # -- observation -------------------------------------------------------

    def snapshot(self) -> stats.Snapshot:
        rules = {i: (r.index, r.rule) for i, r in self.rules.items()}
        names = dict.fromkeys([*self.inputs, *(o.iface for r in self.rules.values() for o in r.rule.outputs)])
        losses = [b.losses() for b in self.backends.values()]
        total = Losses({k: v for loss in losses for k, v in loss.after_redirect.items()},
                       sum(loss.steering for loss in losses),
                       {k: v for loss in losses for k, v in loss.ring.items()})
        return stats.collect([b.counters for b in self.backends.values()], rules, total, link_counters(names))

    @property
    def uptime(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def status(self) -> dict:
        inputs = [InputStatus(a.ifname, a.ifindex, a.mode, a.prog_id,
                              rules=sum(1 for r in self.rules.values() if r.rule.iface == a.ifname),
                              joins=len(self.joins[a.ifname].memberships) if a.ifname in self.joins else 0,
                              notice=a.notice, tried=a.tried)
                  for a in self.attachments.values()]
        gone = [_input_gone(name) for name in self.attachments if self.link_states.get(name) == "gone"]
        gone += [_outputs_gone(i, m) for i, r in sorted(self.rules.items())
                 if (m := _missing(r.rule, lambda name: self.link_states.get(name) == "gone"))]
        down = [f"interface {n} is down" for n, state in self.link_states.items() if state == "down"]
        unjoined = [_not_joined(i, r.rule) for i, r in sorted(self.rules.items())
                    if r.rule.group_len is not None and r.rule.iface not in self.config.no_join]
        foreign = [f"rule {i}: {r.rule.group} is not an address of this host: nothing is sent to it (and relayed) "
                   "until it is" for i, r in sorted(self.rules.items())
                   if r.rule.unicast and r.rule.group in self._not_local and not _is_local(r.rule.group)]
        health, unchecked = self.health()
        notices = [*gone, *down, *unjoined, *foreign, *self.unresolved(), *unchecked,
                   *([self._state_notice] if self._state_notice else [])]
        return document(self.uptime, inputs, {i: r.rule for i, r in self.rules.items()}, notices=notices,
                        modes_tried=self.ladder, links=self.link_states,
                        parts=[*(b.status() for b in self.backends.values()),
                               {"next_hops": self.next_hop_status(), "health": health}])

    def health(self) -> tuple[list[dict], list[str]]:
        """The stream health of the rules with ;health= and of merge legs
        (status "health", a leg's with its stream's "merge"), and a notice
        for each whose input's backend does not check it."""
        rows, notices = [], []
        for rule_id, installed in sorted(self.rules.items()):
            rule = installed.rule
            if rule.health_kind is None:
                continue
            source = getattr(self._runs_on.get(rule.iface), "counters", None)
            counts = source.health_counts(installed.index, rule.health_kind) \
                if hasattr(source, "health_counts") else None
            if counts is not None:
                merge = stats.merge_of([source], installed.index, rule)
                rows.append({"id": rule_id, "rule": str(rule), **counts.as_json(),
                             **({"merge": merge.as_json()} if merge is not None else {})})
            elif rule.iface in self.attachments:  # every backend checks; a notice should one not
                notices.append(f"rule {rule_id}: its stream is not checked: {rule.iface} runs in "
                               f"{self.attachments[rule.iface].mode.value} mode, whose backend keeps no stream state")
        return rows, notices


def _input_gone(name: str) -> str:
    return f"input {name} is gone; it is attached again when an interface of that name returns"


def _outputs_gone(rule_id: int, names: list[str]) -> str:
    return (f"rule {rule_id}: output {', '.join(names)} is gone; its copies are dropped until an interface of "
            "that name returns")


def _not_joined(rule_id: int, rule: Rule) -> str:
    return (f"rule {rule_id}: {rule.groups} is a group range: no group of it is joined on {rule.iface}; its "
            "traffic must reach the input unasked (a static join upstream, or IGMP/MLD snooping off: "
            "docs/user-guide.md, Ranges)")


def _missing(rule: Rule, gone) -> list[str]:
    """rule's output interfaces for which gone(name) holds, each once."""
    return list(dict.fromkeys(o.iface for o in rule.outputs if gone(o.iface)))


def _more_files() -> None:
    """Raise the soft limit of open files to the hard one (systemd's
    default soft limit is 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # what we have must do


def _check_inputs(rules: list[Rule], inputs: list[str]) -> None:
    for rule in rules:
        if rule.iface not in inputs:
            raise RuleError(f"rule {rule} is for {rule.iface}, which is not an input of this relay "
                            f"(inputs: {', '.join(inputs) or 'none'})")


def _is_local(address) -> bool:
    """Whether address is one of this host's (a bind without IP_FREEBIND)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((str(address), 0))
        except OSError:
            return False
    return True


def _need(rule: Rule) -> tuple:
    """What rule needs on its input besides its entry, shared by the rules
    that need the same: the group (and source) it joins, or the (address,
    port) a unicast input claims."""
    if rule.unicast:
        return (rule.iface, "claim", rule.group, rule.port)
    return (rule.iface, rule.joins)


def _names(rule: Rule) -> list[str]:
    return [rule.iface, *(o.iface for o in rule.outputs)]
