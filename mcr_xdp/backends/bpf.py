"""The kernel datapath as a backend: one compiled object (loader.Datapath)
serving XDP native, XDP generic and TC inputs, its maps, the devmap slots
of single-output rules, the loss tracer and the pinned maps.

Rule writes keep the datapath's invariants (docs/architecture.md): a
fan-out rule's devmap exists before the rule entry that reaches it; a
single-output rule's slot is in mcr_tx_ports before the entry that names
it, and leaves only after no entry names it.
"""

from __future__ import annotations

import collections
import concurrent.futures

from .. import abi, encode, features, libbpf, loader, pins
from ..errors import AttachError, McrError, RuleError
from ..links import Link, generic_xdp_vlan_blind
from ..logs import Event
from ..modes import BPF_MODES, Mode, ladder
from . import Attachment, InstalledRule, Losses, MergeAllocator

# Generic XDP never steers (bpf/relay.c mcr_relay_skb): the kernel's cpumap
# runs its program on only the first skb of each batch and hands the rest
# to the host, unrelayed and uncounted (docs/architecture.md, Steering).
GENERIC_NO_STEERING = ("{}: generic XDP forwards on the receiving CPU, --steer-cpus steers native XDP only (the "
                       "kernel's cpumap runs its program on only the first of each batch of generic XDP frames)")


class SlotAllocator:
    """Slots of mcr_tx_ports (abi.MAX_PORTS): one per output interface of
    single-output rules, shared by every rule that outputs there and freed
    with the last of them, so churn through many interfaces (re-created
    VPN or container links get new ifindexes) never runs out."""

    def __init__(self, size: int = abi.MAX_PORTS):
        self.size = size
        self._slot: dict[int, int] = {}  # ifindex -> slot
        self._users: dict[int, set[int]] = {}  # ifindex -> rule indexes

    def acquire(self, index: int, ifindex: int) -> tuple[int, bool]:
        """ifindex's slot, with the rule of index among its users; and whether the slot
        is new (its devmap entry must be written)."""
        if ifindex in self._slot:
            self._users[ifindex].add(index)
            return self._slot[ifindex], False
        used = set(self._slot.values())
        slot = next((s for s in range(self.size) if s not in used), None)
        if slot is None:
            raise RuleError(f"more than {self.size} output interfaces in single-output rules")
        self._slot[ifindex] = slot
        self._users[ifindex] = {index}
        return slot, True

    def release(self, index: int, keep: tuple[int, ...] = ()) -> list[int]:
        """The rule of index no longer outputs anywhere but keep (ifindexes); returns
        the slots no rule uses any more."""
        freed = []
        for ifindex in [i for i, users in self._users.items() if index in users and i not in keep]:
            users = self._users[ifindex]
            users.discard(index)
            if not users:
                del self._users[ifindex]
                freed.append(self._slot.pop(ifindex))
        return freed

    def held(self, index: int) -> tuple[int, ...]:
        """The ifindexes whose slots the rule of index uses."""
        return tuple(i for i, users in self._users.items() if index in users)

    @property
    def in_use(self) -> dict[int, int]:
        """ifindex -> slot."""
        return dict(self._slot)


class StatAllocator:
    """Keys of the per-output counters (mcr_output_stats, abi.MAX_RULE_OUTPUTS):
    a rule holds one per output, in rule order, and keeps them while its
    outputs change (output i counts on, as its rule index does), so per-CPU
    counter memory follows the outputs that exist, not 16 a possible rule."""

    def __init__(self, size: int = abi.MAX_RULE_OUTPUTS, held: dict[int, tuple[int, ...]] | None = None):
        """held: the dict to keep rule index -> its keys in (Maps.output_slots,
        where the counters are read by them)."""
        self._free = set(range(size))
        self._held = {} if held is None else held  # rule index -> its keys
        self._left: dict[int, tuple[int, ...]] = {}  # rule index -> a killed relay's keys for it (adopt)

    def adopt(self, left: dict[int, tuple[int, ...]]) -> None:
        """A killed relay's keys by rule index: a rule installed under one of
        its indexes gets its keys back (its counters go on), while they are free."""
        self._left = dict(left)

    def take(self, index: int, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(the n keys of the rule of index, those new to it: their counters start at 0)."""
        held = self._held.get(index)
        if held is None:
            left = self._left.pop(index, ())
            held = left if left and set(left) <= self._free else ()
            self._free -= set(held)
        if n <= len(held):
            self._free |= set(held[n:])
            self._held[index] = held[:n]
            return held[:n], ()
        if n - len(held) > len(self._free):
            raise RuleError(f"more than {abi.MAX_RULE_OUTPUTS} outputs across all rules")
        new = tuple(self._free.pop() for _ in range(n - len(held)))
        self._held[index] = held + new
        return held + new, new

    def restore(self, index: int, held: tuple[int, ...] | None) -> None:
        """Undo take: the rule of index holds held again (None: nothing)."""
        self._free |= set(self._held.pop(index, ()))
        if held is not None:
            self._free -= set(held)
            self._held[index] = held

    def held(self, index: int) -> tuple[int, ...] | None:
        return self._held.get(index)

    def release(self, index: int) -> None:
        self._free |= set(self._held.pop(index, ()))


def delivery_order(rule, links: dict[str, Link]) -> tuple[int, ...]:
    """The ifindexes of rule's outputs as its fan-out devmap lists them: up
    before down, then by MTU, largest first; a stable sort, so outputs on
    one interface keep the rule's order (BpfBackend._set_fanout)."""
    outs = [links[o.iface] for o in rule.outputs]
    return tuple(link.ifindex for link in sorted(outs, key=lambda link: (not link.up, -link.mtu)))


# Said in status and at start when the operator turned the tracer off.
TRACER_OFF = ("losses after redirect are not counted: the loss tracer is off (--no-loss-tracer, "
              "loss_tracer = false)")


def _new_tracer(wanted: bool = True):
    """(the loss tracer, "") or (None, why there is none)."""
    from ..trace import LossTracer

    if not wanted:
        return None, TRACER_OFF
    try:
        return LossTracer(), ""
    except McrError as exc:
        return None, f"losses after redirect are not counted: {exc}"


# The programs a relay whose first kernel mode is this one is sure to load:
# loaded with the datapath, where the verifier runs them in parallel.
_PRELOAD = {Mode.XDP_GENERIC: (abi.PROG_RELAY_GENERIC,), Mode.TC: (abi.PROG_TC,)}


class BpfBackend:
    modes = BPF_MODES
    outlives = True

    def __init__(self, steer_cpus: tuple[int, ...] = (), left: dict | None = None, loss_tracer: bool = True,
                 preload: tuple[str, ...] = ()):
        features.require_kernel()
        self.adopt_notice = ""
        # The loss tracer loads (~0.1 s) while the datapath does.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mcr-tracer") as pool:
            tracing = pool.submit(_new_tracer, loss_tracer)
            try:
                adopt = self._adoptable(left)
                try:
                    self.datapath = loader.Datapath(adopt=adopt, preload=preload)
                except AttachError:
                    if adopt is None:
                        raise
                    # Maps the loader would not take (changed by hand, a layout
                    # the ABI check missed): relay all the same, counting from zero.
                    self.adopt_notice = "counters start again: the killed relay's pinned maps could not be taken over"
                    self.datapath = loader.Datapath(preload=preload)
                    adopt = None
            except BaseException:
                tracer, _ = tracing.result()
                if tracer is not None:
                    tracer.close()
                raise
        self.counters = self.datapath.maps
        self._slots = SlotAllocator()
        self._stats = StatAllocator(held=self.datapath.maps.output_slots)
        self._merges = MergeAllocator(abi.MAX_MERGES)
        if adopt is not None:  # its rules' output counters are where its entries say
            slots, merge_keys = _left_entries(left["instance"])
            self._stats.adopt(slots)
            self._merges.adopt(merge_keys)
        self._fanout_order: dict[int, tuple[int, ...]] = {}  # rule index -> its devmap's ifindexes, in key order
        self._direct: dict[int, int] = {}  # mcr_tx_direct: slot -> ifindex (see _undirect)
        self._rules: dict[int, InstalledRule] = {}
        # The loop guard: rule index -> its outputs' MACs, and MAC -> how many
        # rules send from it (kept as rules come and go: a relay adding
        # 65,536 rules must not walk all of them for each).
        self._out_macs: dict[int, frozenset[bytes]] = {}
        self._mac_users: collections.Counter[bytes] = collections.Counter()
        # ifindex -> remove its clsact qdisc with the filter: True (this
        # backend added it), None (if then empty: a killed relay's, taken over)
        self._tc_qdiscs: dict[int, bool | None] = {}
        self._inputs: dict[int, Attachment] = {}  # ifindex -> this backend's inputs
        # Rules with an output native XDP can't reach (MCR_RULE_VIA_TC), and
        # the native inputs that carry the TC companion program for them:
        # ifindex -> remove its clsact qdisc with it (as _tc_qdiscs).
        self._via_tc: set[int] = set()
        self._companions: dict[int, bool | None] = {}
        self.tracer = None
        self.tracer_notice = ""
        self.instance: str | None = None
        self.pinned: str | None = None
        self.pin_notice = ""
        try:
            self._start_tracer(*tracing.result())
            if steer_cpus:
                self.datapath.set_steering(steer_cpus)
                if self.tracer is not None:
                    self.tracer.watch_prog(libbpf.prog_id(self.datapath.cpu_fd))
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, config, left: dict | None = None) -> BpfBackend:
        first = next((m for m in ladder(config.mode, config.xdp_mode) if m.is_bpf), None)
        return cls(config.steer_cpus, left, config.loss_tracer, preload=_PRELOAD.get(first, ()))

    def _adoptable(self, left: dict | None):
        """The pin directory of the killed relay whose counter maps this
        datapath takes over (same instance, same ABI version), or None."""
        if left is None or not left.get("instance"):
            return None
        instance = left["instance"]
        directory = pins.pin_dir(instance)
        if not all((directory / name).exists() for name in loader.ADOPTED_MAPS):
            return None  # it pinned nothing (or not these): nothing to go on from
        try:
            pins.check_abi(left, pins.shown(instance))
        except pins.AbiMismatch:
            self.adopt_notice = (f"counters start again: the maps the killed relay (pid {left.get('pid')}) pinned "
                                 f"are of datapath ABI version {left.get('abi_version')}, this mcr-xdp's is "
                                 f"{abi.ABI_VERSION}")
            return None
        self.adopt_notice = f"counters go on from the maps the killed relay (pid {left.get('pid')}) pinned"
        return directory

    @staticmethod
    def check_free(link: Link) -> loader.Attached | None:
        """Nothing of another relay on link: BusyError for a running relay's
        program or TC filter, or a program that is not mcr-xdp's. The XDP
        program a killed relay left is returned: attach swaps it for this
        relay's in one step (no frame goes unrelayed, none twice)."""
        from ..errors import BusyError

        try:
            current = loader.attached(link.ifindex)
        except McrError:
            current = None  # no libbpf: no BPF mode will load either
        if current is not None:
            owner = pins.owner(link.ifindex)
            if current.name in (abi.PROG_RELAY, abi.PROG_RELAY_GENERIC) and current.mode is not None \
                    and owner is None:
                return current
            who = f"the relay pid {owner['pid']} runs there" if owner else "a relay may be running there"
            raise BusyError(
                f"{link.name} already has an XDP program (id {current.prog_id}, {current.name or 'unnamed'}); "
                f"{who}: stop it or run `mcr-xdp detach {link.name}`"
            )
        if (tc := loader.tc_attached(link.ifindex)) is not None:
            owner = pins.owner(link.ifindex)
            if owner is None:
                return tc
            raise BusyError(f"{link.name} already has the relay's TC filter; the relay pid {owner['pid']} runs "
                            f"there: stop it or run `mcr-xdp detach {link.name}`")
        return None

    @staticmethod
    def release(link: Link, found: loader.Attached | loader.TcFilter) -> None:
        """Remove what check_free found, when this relay runs link in
        another mode (a short gap: the swap needs the same mode)."""
        if isinstance(found, loader.TcFilter):
            loader.tc_detach(link.ifindex, link.name)
        else:
            loader.detach(link.ifindex, link.name, only_prog_id=found.prog_id)

    # -- inputs --------------------------------------------------------------

    def attach(self, link: Link, mode: Mode, last_resort: bool, takeover=None) -> Attachment:
        att = self._attach(link, mode, last_resort, takeover)
        self._inputs[att.ifindex] = att
        return att

    def _attach(self, link: Link, mode: Mode, last_resort: bool, takeover=None) -> Attachment:
        if mode.is_xdp:
            notice = ""
            if mode == Mode.XDP_GENERIC and (blind := generic_xdp_vlan_blind(link)):
                if not last_resort:  # a later mode of the ladder removes every tag
                    raise AttachError(f"generic XDP can't remove a VLAN tag held in skb metadata: {blind}")
                notice = (f"{link.name}: generic XDP relays a frame whose VLAN tag is in skb metadata with the "
                          f"tag still on ({blind}); --mode xdp-native or tc removes it")
            if mode == Mode.XDP_GENERIC and self.datapath.steer_cpus:
                notice = "; ".join(filter(None, [notice, GENERIC_NO_STEERING.format(link.name)]))
            fd = self.datapath.xdp_fd(mode)
            if mode == Mode.XDP_GENERIC and self.tracer is not None:
                self.tracer.watch_prog(self.datapath.generic_prog_id)
            companion = mode == Mode.XDP_NATIVE and any(
                r.ifindex == link.ifindex and i in self._via_tc for i, r in self._rules.items())
            if companion:  # first: a frame the program passes on meets it
                self._add_companion(link.ifindex, link.name)
            try:
                loader.xdp_attach(link.ifindex, link.name, fd, mode, replace=takeover)
            except BaseException:
                if companion:
                    self._remove_companion(link.ifindex, link.name)
                raise
            if takeover is not None:
                notice = "; ".join(filter(None, [notice, f"{link.name}: took over from the program a killed relay "
                                                 f"left (id {takeover.prog_id}) in one step"]))
            return Attachment(link.ifindex, link.name, mode, libbpf.prog_id(fd), notice)
        fd = self.datapath.tc_fd
        if loader.tc_attach(link.ifindex, link.name, fd, replace=takeover):
            self._tc_qdiscs[link.ifindex] = True
        elif takeover is not None:
            self._tc_qdiscs[link.ifindex] = None  # the killed relay's qdisc, or someone's: removed if left empty
            return Attachment(link.ifindex, link.name, Mode.TC, libbpf.prog_id(fd),
                              f"{link.name}: took over from the TC filter a killed relay left, in one step")
        return Attachment(link.ifindex, link.name, Mode.TC, libbpf.prog_id(fd))

    def detach(self, att: Attachment) -> None:
        self._inputs.pop(att.ifindex, None)
        if att.mode.is_xdp:
            loader.detach(att.ifindex, att.ifname, only_prog_id=att.prog_id)
            self._remove_companion(att.ifindex, att.ifname)
        else:
            loader.tc_detach(att.ifindex, att.ifname, remove_qdisc=self._tc_qdiscs.pop(att.ifindex, False))

    def _add_companion(self, ifindex: int, ifname: str) -> None:
        """The TC companion on a native XDP input (once): it forwards the
        frames of MCR_RULE_VIA_TC rules the XDP program passes on. One a
        killed relay left there is replaced in place."""
        if ifindex in self._companions:
            return
        left = loader.tc_attached(ifindex, abi.PROG_TC_COMPANION)
        created = loader.tc_attach(ifindex, ifname, self.datapath.tc_companion_fd, replace=left,
                                   prog=abi.PROG_TC_COMPANION)
        self._companions[ifindex] = True if created else None

    def _remove_companion(self, ifindex: int, ifname: str) -> None:
        if ifindex in self._companions:
            try:
                loader.tc_detach(ifindex, ifname, remove_qdisc=self._companions.pop(ifindex),
                                 prog=abi.PROG_TC_COMPANION)
            except McrError:
                pass  # the device and what it carried may be gone

    # -- rules ---------------------------------------------------------------

    def put_rule(self, installed: InstalledRule, links: dict[str, Link], fresh: bool) -> None:
        maps = self.datapath.maps
        rule, index = installed.rule, installed.index
        kept = self._slots.held(index)
        kept_stats = self._stats.held(index)
        single = len(rule.outputs) == 1
        outputs = []
        try:
            stats, new_stats = self._stats.take(index, len(rule.outputs))
            for i, out in enumerate(rule.outputs):
                link = links[out.iface]
                slot = self._slot(index, link.ifindex) if single else i
                outputs.append(encode.output_value(rule, out, link.ifindex, slot, link.mac, stats[i],
                                                   installed.next_hop(i)))
            if fresh:
                maps.reset_rule_counters(index, stats)
            else:
                maps.reset_output_counters(new_stats)
            self._start_health(installed, fresh)
            self._start_police(installed, fresh)
            merge = self._start_merge(installed)
            if not single:
                self._set_fanout(index, rule, links)
            via_tc = not all(links[o.iface].xdp_xmit for o in rule.outputs)
            att = self._inputs.get(installed.ifindex)
            if via_tc and att is not None and att.mode == Mode.XDP_NATIVE:
                self._add_companion(att.ifindex, att.ifname)  # before the entry that passes frames to it
            maps.put_rule(encode.rule_key(rule, installed.ifindex),
                          encode.rule_value(rule, index, outputs, abi.RULE_VIA_TC if via_tc else 0, merge))
        except BaseException:
            self._free_slots(index, keep=kept)  # what this call acquired
            self._stats.restore(index, kept_stats)
            raise
        if single:
            maps.clear_fanout(index)
            if self._fanout_order.pop(index, None):
                self._redirect()
        self._free_slots(index, keep=_single_output(installed, links))
        previous = self._rules.get(index)
        if rule.health_kind is None and previous is not None and previous.rule.health_kind is not None:
            maps.stop_health(index)  # after the entry that no longer looks there
        if previous is not None and previous.rule.merge_name not in (None, rule.merge_name):
            self._stop_merge(index, previous.rule.merge_name)
        if rule.police is None and previous is not None and previous.rule.police is not None:
            maps.stop_police(index)
        self._rules[index] = installed
        if via_tc:
            self._via_tc.add(index)
        else:
            self._via_tc.discard(index)
        if self.tracer is not None:
            for out in rule.outputs:
                self.tracer.watch(installed.ifindex, links[out.iface].ifindex)
        self._count_kinds(previous.rule if previous is not None else None, rule)
        self._set_out_macs(index, frozenset(links[o.iface].mac for o in rule.outputs))

    def _set_out_macs(self, index: int, macs: frozenset[bytes]) -> None:
        """The rule of index now sends from macs (none: deleted); the datapath's set
        of own MACs follows when a MAC gains its first rule or loses its last."""
        old = self._out_macs.pop(index, frozenset())
        if macs:
            self._out_macs[index] = macs
        self._mac_users.update(macs - old)
        self._mac_users.subtract(old - macs)
        for mac in old - macs:
            if not self._mac_users[mac]:
                del self._mac_users[mac]
        if macs != old:
            self.datapath.maps.set_own_macs(frozenset(self._mac_users))

    def _start_health(self, installed: InstalledRule, fresh: bool) -> None:
        """A rule with ;health= gets its state before its entry says so: a
        new one (a new rule, another kind), or the one it has (the same rule
        changed, or a killed relay's, taken over with its maps)."""
        maps = self.datapath.maps
        index, health = installed.index, installed.rule.health_kind
        if health is None:
            return
        previous = self._rules.get(index)
        if fresh or (previous is not None and previous.rule.health_kind != health) or maps.health(index) is None:
            maps.start_health(index)

    def _start_merge(self, installed: InstalledRule) -> int:
        """A merge leg's stream key (0 for a rule that merges nothing), its
        window written empty when the stream is new here."""
        name = installed.rule.merge_name
        if name is None:
            return 0
        maps = self.datapath.maps
        key, new = self._merges.take(installed.index, name)
        if new or maps.merge(key) is None:
            maps.start_merge(key)
        maps.merge_keys[installed.index] = key
        return key

    def _stop_merge(self, index: int, name: str) -> None:
        """The rule of index is no leg of name any more; the window goes with its last leg."""
        maps = self.datapath.maps
        if maps.merge_keys.get(index) == self._merges.key(name):
            del maps.merge_keys[index]
        key = self._merges.release(index, name)
        if key is not None:
            maps.stop_merge(key)

    def _start_police(self, installed: InstalledRule, fresh: bool) -> None:
        """A rule with ;police= gets its bucket before its entry says so:
        full, for a new rule or another rate; else the one it has (the
        same rule changed otherwise, or a killed relay's, taken over)."""
        maps = self.datapath.maps
        index, rate = installed.index, installed.rule.police
        if rate is None:
            return
        value = encode.police_value(rate)
        now = maps.police(index)
        if fresh or now is None or (now.rate, now.flags, now.burst) != (value.rate, value.flags, value.burst):
            if now is not None and not fresh:  # the same rule at another rate: its counts go on
                value.passed, value.dropped = now.passed, now.dropped
            maps.set_police(index, value)

    def delete_rule(self, installed: InstalledRule) -> None:
        maps = self.datapath.maps
        maps.delete_rule(encode.rule_key(installed.rule, installed.ifindex))
        maps.stop_health(installed.index)
        maps.stop_police(installed.index)
        if installed.rule.merge_name is not None:
            self._stop_merge(installed.index, installed.rule.merge_name)
        self._set_out_macs(installed.index, frozenset())
        maps.clear_fanout(installed.index)
        self._free_slots(installed.index)
        if self._fanout_order.pop(installed.index, None):
            self._redirect()
        self._stats.release(installed.index)
        if self._rules.pop(installed.index, None) is not None:
            self._count_kinds(installed.rule, None)
        self._via_tc.discard(installed.index)

    def _slot(self, index: int, ifindex: int) -> int:
        slot, new = self._slots.acquire(index, ifindex)
        if new:
            try:
                self.datapath.maps.set_port(slot, ifindex, self.datapath.egress_fd)
                if ifindex not in self._fanned():  # no fan-out copy goes there: no batch to share
                    self.datapath.maps.set_direct(slot, ifindex)
                    self._direct[slot] = ifindex
            except BaseException:
                self._slots.release(index)
                raise
        return slot

    def _free_slots(self, index: int, keep: tuple[int, ...] = ()) -> None:
        """Slots no rule entry names any more: cleared, so a frame of a rule
        deleted meanwhile finds an empty slot rather than another output."""
        for slot in self._slots.release(index, keep):
            self.datapath.maps.clear_port(slot)
            self._direct.pop(slot, None)

    # Direct slots. A one-output frame the native ingress program rewrote
    # goes through mcr_tx_direct, whose entries carry no program, when its
    # interface has a slot there. The kernel runs the program of a device
    # batch's first frame on the whole batch (kernel/bpf/devmap.c
    # bq_enqueue), so an interface that also takes fan-out copies (which
    # need mcr_egress) must have no direct slot, and no batch may still
    # hold a direct frame when its first fan-out copy is queued, nor a
    # fan-out copy when a direct slot comes back: a grace period (every
    # NAPI poll, in which the batches live, has ended) separates the two.

    def _fanned(self) -> set[int]:
        return {ifindex for order in self._fanout_order.values() for ifindex in order}

    def _undirect(self, ifindexes) -> None:
        """Before fan-out copies go to ifindexes: their direct slots out,
        and the batches that could hold their frames gone."""
        gone = [slot for slot, ifindex in self._direct.items() if ifindex in ifindexes]
        for slot in gone:
            self.datapath.maps.clear_direct(slot)
            del self._direct[slot]
        if gone:
            libbpf.rcu_grace_period()

    def _redirect(self) -> None:
        """After fan-out copies stopped going somewhere: direct slots back
        for interfaces no fan-out rule uses, once their batches are gone."""
        fanned = self._fanned()
        back = {slot: ifindex for ifindex, slot in self._slots.in_use.items()
                if ifindex not in fanned and slot not in self._direct}
        if not back:
            return
        libbpf.rcu_grace_period()
        for slot, ifindex in back.items():
            self.datapath.maps.set_direct(slot, ifindex)
            self._direct[slot] = ifindex

    def _count_kinds(self, old, new) -> None:
        """Keep mcr_config's rule counts (which lookups run) as rule old
        becomes new (either None), without counting every rule again."""
        maps = self.datapath.maps
        kinds = dict(maps.rule_kinds)
        for rule, step in ((old, -1), (new, 1)):
            for kind in encode.rule_kind(rule) if rule is not None else ():
                kinds[kind] += step
        if kinds != maps.rule_kinds:
            maps.set_config(**kinds)

    def _set_fanout(self, index: int, rule, links: dict[str, Link]) -> None:
        """Write a fan-out rule's devmap with the outputs that can take a
        frame first: up before down, then by MTU, largest first. Generic
        XDP clones a broadcast entry by entry and gives up at the first
        entry that can't take the frame (down, or an MTU below the frame:
        kernel/bpf/devmap.c dev_map_redirect_multi), so a dead output
        listed first would take every later one with it. Outputs on one
        interface keep the rule's order (the egress program tells them apart
        by it)."""
        ifindexes = delivery_order(rule, links)
        self._undirect(set(ifindexes))
        self.datapath.maps.set_fanout(index, [(ifindex, self.datapath.egress_fd) for ifindex in ifindexes])
        before = self._fanout_order.get(index, ())
        self._fanout_order[index] = ifindexes
        if set(before) - set(ifindexes):
            self._redirect()

    def refresh_outputs(self, links: dict[str, Link]) -> list[int]:
        """Re-order fan-out devmaps whose outputs went up, down or changed
        MTU since they were written (see _set_fanout); rewrite rules whose
        outputs gained or lost their XDP transmit (a veth's peer turned GRO
        on or off)."""
        changed = []
        for index, installed in list(self._rules.items()):
            rule = installed.rule
            if any(o.iface not in links for o in rule.outputs) or \
                    tuple(links[o.iface].ifindex for o in rule.outputs) != installed.outputs:
                continue  # gone or re-created: the relay rewrites the rule itself
            if all(links[o.iface].xdp_xmit for o in rule.outputs) == (index in self._via_tc):
                self.put_rule(installed, links, fresh=False)
                changed.append(installed.rule_id)
        for index, order in list(self._fanout_order.items()):
            rule = self._rules[index].rule
            if any(o.iface not in links for o in rule.outputs):
                continue
            now = delivery_order(rule, links)
            if sorted(now) != sorted(order):
                continue  # an output was re-created under a new ifindex: the rule itself needs rewriting
            if now != order:
                self._set_fanout(index, rule, links)
                changed.append(self._rules[index].rule_id)
        return changed

    def heal(self) -> list[Event]:
        return []  # the kernel's programs do not die on their own

    def verify_all(self, modes) -> list[str]:
        """Load the programs of the datapath that load on first use too (TC,
        cpumap), for attach --dry-run: the names of all loaded."""
        dp = self.datapath
        loaded = {abi.PROG_RELAY: dp.prog_fd, abi.PROG_RELAY_GENERIC: dp.generic_fd, abi.PROG_EGRESS: dp.egress_fd}
        if Mode.TC in modes:
            loaded[abi.PROG_TC] = dp.tc_fd
        if Mode.XDP_NATIVE in modes:  # the TC companion, and the steering program (--steer-cpus)
            loaded[abi.PROG_TC_COMPANION] = dp.tc_companion_fd
            loaded[abi.PROG_CPU] = dp.cpu_fd
        return list(loaded)

    # -- observation ---------------------------------------------------------

    def _start_tracer(self, tracer, notice: str) -> None:
        """Count losses after redirect of this datapath's programs, where
        tracepoints allow; without them the relay still runs and status
        says it is blind to those."""
        self.tracer, self.tracer_notice = tracer, notice
        if tracer is not None:
            dp = self.datapath
            for prog_id in (dp.prog_id, libbpf.prog_id(dp.egress_fd)):  # generic XDP's when loaded
                tracer.watch_prog(prog_id)
            tracer.watch_map(libbpf.obj_id(dp.maps.fds[abi.MAP_CPUMAP]))

    def losses(self) -> Losses:
        if self.tracer is None:
            return Losses()
        return Losses({ifindex: drops + errors for ifindex, (drops, errors) in self.tracer.read().items()},
                      self.tracer.steering_drops())

    def status(self) -> dict:
        dp = self.datapath
        via_tc = []
        for installed in sorted((self._rules[index] for index in self._via_tc), key=lambda r: r.rule_id):
            att = self._inputs.get(installed.ifindex)
            if att is not None and att.mode == Mode.XDP_NATIVE:
                via_tc.append({"rule": installed.rule_id, "input": att.ifname,
                               "outputs": list(dict.fromkeys(o.iface for o in installed.rule.outputs))})
        notices = [f"rule {v['rule']}: an output has no XDP transmit (ndo_xdp_xmit), so native XDP can't reach it: "
                   f"the TC program beside XDP on {v['input']} forwards this rule" for v in via_tc]
        return {
            "via_tc": via_tc,
            "cpus": dp.maps.ncpus,
            "steering": {"cpus": list(dp.steer_cpus)} if dp.steer_cpus else None,
            "loss_tracer": self.tracer is not None,
            "pinned": self.pinned,
            "notices": [n for n in (self.adopt_notice, self.tracer_notice, self.pin_notice) if n] + notices,
        }

    # -- pins ----------------------------------------------------------------

    def pin(self, instance: str, state: dict) -> str | None:
        """Pin the maps so stats stay readable if this process is killed;
        a relay that can't pin still relays, and says so."""
        try:
            self.pinned = pins.pin(instance, self.datapath.maps.fds, state)
            self.instance = instance
        except (McrError, OSError) as exc:
            self.pin_notice = f"maps not pinned, stats need the running relay: {exc}"
            return None
        if pins.bpffs().private:
            self.pin_notice = (f"maps pinned on {pins.bpffs().where}: no other mount namespace's bpffs was "
                               "reachable, so the pins go with this relay")
        return self.pinned

    def save_state(self, state: dict) -> None:
        if self.pinned is not None:
            pins.write_state(self.instance, state)

    def close(self, keep: bool = False) -> None:
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None
        if self.datapath is not None:
            self.datapath.close()  # what is attached keeps its programs, and they their maps
            self.datapath = None
        if self.pinned is not None and not keep:
            pins.remove(self.instance)
        self.pinned = None


def _left_entries(instance: str) -> tuple[dict[int, tuple[int, ...]], dict[int, int]]:
    """The per-output counter keys and merged-stream keys a killed relay's
    rule entries name, from its pinned maps (empty when they can't be read:
    its counters and windows then start again)."""
    try:
        maps = pins.PinnedMaps(instance, (abi.MAP_RULES, abi.MAP_RANGES))
    except McrError:
        return {}, {}
    try:
        return maps.read_output_slots(), maps.read_merge_keys()
    except OSError:
        return {}, {}
    finally:
        maps.close()


def _single_output(installed: InstalledRule, links: dict[str, Link]) -> tuple[int, ...]:
    """The ifindex of a single-output rule's output (its slot), else ()."""
    outs = installed.rule.outputs
    return (links[outs[0].iface].ifindex,) if len(outs) == 1 else ()
