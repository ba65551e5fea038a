"""Backends: what moves a relay's packets. One protocol for all of them,
so the relay (mcr_xdp.relay) holds no branch per datapath.

- backends.bpf.BpfBackend: the compiled datapath (XDP native and generic,
  TC), its maps, devmap slots, the loss tracer and the pinned maps;
- backends.userspace.UserspaceBackend: the PACKET_FANOUT workers.

A relay opens a backend the first time an input tries one of its modes,
hands it every rule it has, and from then on every rule change; an input
attaches to exactly one backend. Several backends can run at once (inputs
in different modes): their counters share the relay's rule indexes and
are summed by stats.collect over CounterSource.

A backend keys a rule by its index (InstalledRule.index), where the
datapath keeps it (mcr_rule.id: its slot in the per-rule arrays, its key in
the per-rule hashes), below abi.MAX_RULES and reused once the rule is gone;
its id, never reused, is only for what the backend shows (status,
relay.RuleIds).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol

from ..errors import RuleError
from ..logs import Event
from ..modes import Mode

if TYPE_CHECKING:
    from .. import abi
    from ..links import Link
    from ..relay import RelayConfig
    from ..rules import Rule


@dataclasses.dataclass(frozen=True)
class Attachment:
    """One input as it runs."""

    ifindex: int
    ifname: str
    mode: Mode
    prog_id: int  # 0 in userspace mode
    notice: str = ""  # why the mode differs from the one asked for, or what it cannot do
    tried: tuple[tuple[Mode, str], ...] = ()  # (mode, why it was not used), in ladder order


@dataclasses.dataclass(frozen=True)
class InstalledRule:
    rule_id: int  # what people see (stats, Prometheus, `rule del`): never reused in a relay's life
    index: int  # where the backends keep it (< abi.MAX_RULES): reused once the rule is gone
    rule: Rule
    ifindex: int  # of the input interface, as the map key holds it
    outputs: tuple[int, ...] = ()  # ifindexes of its outputs when written, in rule order
    next_hops: tuple[bytes | None, ...] = ()  # per output: a unicast receiver's next-hop MAC (None: unknown)

    def next_hop(self, i: int) -> bytes | None:
        """Output i's next-hop MAC (encode.output_value's next_hop)."""
        return self.next_hops[i] if i < len(self.next_hops) else None


class MergeAllocator:
    """Keys in mcr_merge, one per merged stream (Rule.merge_name), held
    while any of its legs is installed. A killed relay's legs, taken over
    with its maps, keep the keys their entries name (and the windows there)."""

    def __init__(self, size: int):
        self._free = set(range(size))
        self._keys: dict[str, int] = {}  # merge name -> key
        self._legs: dict[str, set[int]] = {}  # merge name -> its legs' rule indexes
        self._left: dict[int, int] = {}  # a killed relay's legs' rule indexes -> their keys

    def adopt(self, left: dict[int, int]) -> None:
        self._left = {index: key for index, key in left.items() if key in self._free}

    def take(self, index: int, name: str) -> tuple[int, bool]:
        """(name's key, whether its window is new: to be written empty)."""
        key = self._keys.get(name)
        if key is not None:
            self._legs[name].add(index)
            return key, False
        key = self._left.pop(index, None)
        new = key is None or key not in self._free
        if new:
            if not self._free:
                raise RuleError(f"more than {len(self._keys)} merged streams")
            key = min(self._free - set(self._left.values()) or self._free)
        self._free.discard(key)
        self._keys[name] = key
        self._legs[name] = {index}
        return key, new

    def key(self, name: str) -> int | None:
        return self._keys.get(name)

    def release(self, index: int, name: str) -> int | None:
        """index leaves name's legs: the key, if that was its last leg (to be cleared)."""
        legs = self._legs.get(name)
        if legs is None or index not in legs:
            return None
        legs.discard(index)
        if legs:
            return None
        del self._legs[name]
        key = self._keys.pop(name)
        self._free.add(key)
        return key


@dataclasses.dataclass(frozen=True)
class Losses:
    """Frames lost outside the datapath's own verdicts."""

    after_redirect: dict[int, int] = dataclasses.field(default_factory=dict)  # output ifindex -> frames
    steering: int = 0  # in CPU-steering (cpumap) queues
    ring: dict[str, int] = dataclasses.field(default_factory=dict)  # input name -> frames a full ring dropped


class CounterSource(Protocol):
    """Counters laid out as the datapath's maps: verdicts, per rule, per
    rule output; each summed over the CPUs or workers that wrote them."""

    def verdicts(self) -> list[abi.Counter]: ...

    def rule_and_outputs(self, index: int, n_outputs: int) -> tuple[abi.RuleCounters, list[abi.Counter]]:
        """A rule's counters and its first n_outputs outputs', each map
        entry read once."""

    def cpu_totals(self) -> list[tuple[int, int]]:
        """(packets seen, packets forwarded) per CPU; [] when the source
        does not count per CPU."""

    # Optional: health_counts(index, kind) -> health.Counts | None, the
    # stream health of a rule with ;health= or of a merge leg;
    # merge_counts(index, kind, legs) -> health.MergeCounts | None, a merge
    # leg's stream at its output; policed(index) -> int | None, what a
    # rule's policer dropped (the kernel datapath's).


class Backend(Protocol):
    modes: tuple[Mode, ...]  # the modes an input can run in on this backend
    counters: CounterSource
    outlives: bool  # its inputs forward on after the process ends (kernel programs), for a successor

    @classmethod
    def open(cls, config: RelayConfig, left: dict | None = None) -> Backend:
        """Load the backend; McrError (with the reason) if it can't. left:
        the state a killed relay of the same instance left (pins.left_behind),
        whose counters the backend continues where it can."""

    @staticmethod
    def check_free(link: Link) -> object | None:
        """BusyError if another relay's program holds link; what a killed
        relay left there, which attach takes over, else None."""

    @staticmethod
    def release(link: Link, found: object) -> None:
        """Remove what check_free found (link runs in another mode now)."""

    def attach(self, link: Link, mode: Mode, last_resort: bool, takeover: object | None = None) -> Attachment:
        """Relay link's traffic in mode. last_resort: no later mode of the
        ladder is left, so a mode with a known limit runs (with a notice)
        rather than fail. takeover: what check_free found, in this mode:
        replaced in one step."""

    def detach(self, att: Attachment) -> None: ...

    def put_rule(self, installed: InstalledRule, links: dict[str, Link], fresh: bool) -> None:
        """Install or replace (same index) a rule; fresh: a new rule, whose
        counters start at zero. links: every interface the rule names."""

    def delete_rule(self, installed: InstalledRule) -> None: ...

    def refresh_outputs(self, links: dict[str, Link]) -> list[int]:
        """Re-check what depends on the outputs' state (up, MTU); returns
        the ids of the rules changed."""

    def heal(self) -> list[Event]:
        """Restart what of the backend died on its own (userspace workers);
        an event for each thing done."""

    def losses(self) -> Losses: ...

    def status(self) -> dict:
        """This backend's part of the relay's status (status.document):
        some of cpus, steering, loss_tracer, pinned, userspace, notices."""

    def pin(self, instance: str, state: dict) -> str | None:
        """Keep the counters readable after the process dies; returns where,
        or None if this backend has nothing that outlives it."""

    def save_state(self, state: dict) -> None:
        """The pinned state changed (rules, inputs)."""

    def close(self, keep: bool = False) -> None:
        """Release everything; keep: leave what forwards in the kernel (the
        programs on their inputs, the pins) for the next relay to take over."""


def backend_class(mode: Mode) -> type:
    """The backend that runs mode."""
    if mode.is_bpf:
        from .bpf import BpfBackend

        return BpfBackend
    from .userspace import UserspaceBackend

    return UserspaceBackend
