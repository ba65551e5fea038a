"""Typed access to the datapath's maps through their file descriptors.

Keys and values are the ctypes structs of abi.py; per-CPU values are summed
over every possible CPU here, nowhere else.
"""

from __future__ import annotations

import ctypes
import os
import struct

from . import abi, health, libbpf


def possible_cpus() -> int:
    """Number of possible CPUs: the length of every per-CPU map value."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """"0,1" or "0-3,6" -> CPU ids, in order, each once."""
    cpus: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list like 0,1 or 0-3")
        for cpu in range(int(lo), int(hi if sep else lo) + 1):
            if cpu in cpus:
                raise ValueError(f"{text!r} names CPU {cpu} twice")
            cpus.append(cpu)
    if not cpus:
        raise ValueError(f"{text!r} names no CPU")
    return tuple(cpus)


def _sum_percpu(values) -> ctypes.Structure:
    total = type(values[0])()
    for name, _ in total._fields_:
        setattr(total, name, sum(getattr(v, name) for v in values))
    return total


def fast_bucket(key: abi.RuleKey) -> int:
    """mcr_fast_bucket (bpf/mcr_abi.h): the entry of mcr_fast_index for key."""
    h = 0
    for (word,) in struct.iter_unpack("=I", bytes(key)):
        h = (h + word) * abi.FAST_MUL & 0xFFFFFFFF
    h ^= h >> 16
    h = h * 0x85EBCA6B & 0xFFFFFFFF
    h ^= h >> 13
    return h % abi.FAST_BUCKETS


def ipv4_key_sound(key: abi.RuleKey) -> bool:
    """Whether an IPv4 key has its addresses' unused bytes zero, as the
    fast path's IPv4 lookup (bpf/forward.h fast_lookup_ipv4) takes them to
    be; any other family's key is."""
    return key.family != abi.FAMILY_IPV4 or not any(bytes(key.source)[4:] + bytes(key.group)[4:])


def mac_bucket(mac: bytes) -> int:
    """The loop guard filter's entry for a MAC (bpf/police.h own_mac)."""
    return mac[4] ^ mac[5]


class FastRules:
    """The exact rules' fast path (bpf/mcr_abi.h): which rule has its copy
    in which entry of mcr_fast_rules, and what each bucket of
    mcr_fast_index says. Kept beside mcr_rules, which holds every exact
    rule: a rule goes there first and leaves it last."""

    def __init__(self, index_fd: int, rules_fd: int):
        self._index_fd, self._rules_fd = index_fd, rules_fd
        self._entry: dict[bytes, int] = {}  # key -> the entry holding its copy
        self._owner: dict[int, bytes] = {}  # bucket -> the key whose entry it names
        self._others: dict[int, set[bytes]] = {}  # bucket -> keys in mcr_rules alone
        self._free = list(range(abi.FAST_RULES - 1, -1, -1))  # popped from the end: 0 first
        self._retired: list[int] = []  # entries the datapath may still read (until a grace period)

    @property
    def copies(self) -> int:
        """Rules with a copy in the fast path."""
        return len(self._entry)

    def put(self, key: abi.RuleKey, value: abi.Rule) -> None:
        """After mcr_rules has key's new value: its copy, written to an
        entry no reader can be in, then named by the bucket."""
        raw, bucket = bytes(key), fast_bucket(key)
        owner = self._owner.get(bucket)
        if not ipv4_key_sound(key):  # never matched by a packet: mcr_rules alone may hold it
            self._others.setdefault(bucket, set()).add(raw)
            self._write_index(bucket)
            return
        if owner is not None and owner != raw:
            self._others.setdefault(bucket, set()).add(raw)  # found in mcr_rules after a key compare
            return
        entry = self._take(new=owner is None)
        if entry is None:  # none left: this key's lookups go to mcr_rules
            self._others.setdefault(bucket, set()).add(raw)
            if owner is not None:
                self._retire(raw, bucket)  # writes the bucket
            else:
                self._write_index(bucket)
            return
        libbpf.map_update(self._rules_fd, ctypes.c_uint32(entry), abi.FastRule(key=key, rule=value))
        libbpf.map_update(self._index_fd, ctypes.c_uint32(bucket), ctypes.c_uint32(entry + 1))
        if owner is not None:
            self._retired.append(self._entry[raw])
        others = self._others.get(bucket)
        if others is not None:
            others.discard(raw)
        self._entry[raw], self._owner[bucket] = entry, raw

    def delete(self, key: abi.RuleKey) -> None:
        """Before mcr_rules loses key: the bucket no longer names its copy."""
        raw, bucket = bytes(key), fast_bucket(key)
        if self._owner.get(bucket) == raw:
            self._retire(raw, bucket)
            return
        others = self._others.get(bucket, set())
        others.discard(raw)
        if not others:
            self._others.pop(bucket, None)
        self._write_index(bucket)

    def _retire(self, raw: bytes, bucket: int) -> None:
        del self._owner[bucket]
        self._retired.append(self._entry.pop(raw))
        self._write_index(bucket)

    def _write_index(self, bucket: int) -> None:
        """A bucket without an owner: MCR_FAST_HASH while it has other
        rules, else 0."""
        if bucket in self._owner:
            return
        value = abi.FAST_HASH if self._others.get(bucket) else 0
        libbpf.map_update(self._index_fd, ctypes.c_uint32(bucket), ctypes.c_uint32(value))

    def _take(self, new: bool) -> int | None:
        """A free entry; the retired ones become free after a grace period
        (every program that could have read them has returned). A new key
        gets one only while half the entries are left for changes to the
        keys that have one: a change of every copy then costs one grace
        period, not one each."""
        if new and len(self._entry) >= abi.FAST_RULES // 2:
            return None
        if not self._free and self._retired:
            libbpf.rcu_grace_period()
            self._free, self._retired = self._retired[::-1], []
        return self._free.pop() if self._free else None


class Maps:
    """The maps of one loaded datapath, by fd (bcc owns the fds)."""

    def __init__(self, fds: dict[str, int]):
        self._fd = fds
        self.ncpus = possible_cpus()
        self.fast = FastRules(fds[abi.MAP_FAST_INDEX], fds[abi.MAP_FAST_RULES]) if abi.MAP_FAST_INDEX in fds else None
        self._mac_filter = [0] * abi.MAC_FILTER  # as mcr_mac_filter holds it
        # rule index -> its outputs' keys in mcr_output_stats (mcr_output.stat),
        # in rule order: what the control plane gave out, or, for a relay
        # that is gone, what its rule entries say (read_output_slots).
        self.output_slots: dict[int, tuple[int, ...]] = {}
        # rule index -> its merged stream's key in mcr_merge (merge legs only)
        self.merge_keys: dict[int, int] = {}

    @property
    def fds(self) -> dict[str, int]:
        """Map name -> fd (for pinning)."""
        return dict(self._fd)

    def _rule_map(self, key: abi.RuleKey | abi.RangeKey) -> int:
        return self._fd[abi.MAP_RANGES if isinstance(key, abi.RangeKey) else abi.MAP_RULES]

    def put_rule(self, key: abi.RuleKey | abi.RangeKey, value: abi.Rule) -> None:
        libbpf.map_update(self._rule_map(key), key, value)
        if self.fast is not None and isinstance(key, abi.RuleKey):
            self.fast.put(key, value)

    def delete_rule(self, key: abi.RuleKey | abi.RangeKey) -> bool:
        if self.fast is not None and isinstance(key, abi.RuleKey):
            self.fast.delete(key)
        return libbpf.map_delete(self._rule_map(key), key)

    def set_port(self, slot: int, ifindex: int, prog_fd: int) -> None:
        """tx_ports[slot]: ifindex, with the egress program prog_fd."""
        val = abi.DevmapVal(ifindex=ifindex, prog_fd=prog_fd)
        libbpf.map_update(self._fd[abi.MAP_TX_PORTS], ctypes.c_uint32(slot), val)

    def clear_port(self, slot: int) -> None:
        self.clear_direct(slot)
        libbpf.map_delete(self._fd[abi.MAP_TX_PORTS], ctypes.c_uint32(slot))

    def set_direct(self, slot: int, ifindex: int) -> None:
        """tx_direct[slot]: ifindex, without a program."""
        libbpf.map_update(self._fd[abi.MAP_TX_DIRECT], ctypes.c_uint32(slot), abi.DevmapVal(ifindex=ifindex))

    def clear_direct(self, slot: int) -> None:
        libbpf.map_delete(self._fd[abi.MAP_TX_DIRECT], ctypes.c_uint32(slot))

    rule_kinds = {"ssm_rules": 0, "range_rules": 0, "any_port_rules": 0, "unicast_rules": 0}  # as mcr_config holds them
    _steer_cpus = 0

    def set_config(self, ssm_rules: int, range_rules: int = 0, any_port_rules: int = 0, unicast_rules: int = 0) -> None:
        """How many rules of each kind the lookups past the exact one have
        (0 skips a lookup; unicast_rules 0 passes unicast packets unlooked-at)."""
        self.rule_kinds = {"ssm_rules": ssm_rules, "range_rules": range_rules, "any_port_rules": any_port_rules,
                           "unicast_rules": unicast_rules}
        self._write_config()

    own_macs: frozenset[bytes] = frozenset()  # as mcr_own_macs holds them

    def set_own_macs(self, macs: frozenset[bytes]) -> None:
        """The MACs the relay sends from (the loop guard drops frames from
        them arriving at an input); an empty set turns the guard off."""
        if macs == self.own_macs:
            return
        fd = self._fd[abi.MAP_OWN_MACS]
        for mac in macs - self.own_macs:  # in the hash before the filter sends lookups there
            libbpf.map_update(fd, abi.Mac((ctypes.c_uint8 * 6)(*mac)), ctypes.c_uint32(1))
            self._count_mac(mac, 1)
        for mac in self.own_macs - macs:
            self._count_mac(mac, -1)
            libbpf.map_delete(fd, abi.Mac((ctypes.c_uint8 * 6)(*mac)))
        self.own_macs = macs
        self._write_config()

    def _count_mac(self, mac: bytes, step: int) -> None:
        bucket = mac_bucket(mac)
        self._mac_filter[bucket] += step
        libbpf.map_update(self._fd[abi.MAP_MAC_FILTER], ctypes.c_uint32(bucket),
                          ctypes.c_uint32(self._mac_filter[bucket]))

    def _write_config(self) -> None:
        cfg = abi.Config(abi_version=abi.ABI_VERSION, steer_cpus=self._steer_cpus, own_macs=len(self.own_macs),
                         **self.rule_kinds)
        libbpf.map_update(self._fd[abi.MAP_CONFIG], ctypes.c_uint32(0), cfg)

    def set_steering(self, cpus: tuple[int, ...], prog_fd: int) -> None:
        """Steering entries: mcr_steer[i] = cpus[i], and a cpumap entry
        running prog_fd on each of those CPUs."""
        for cpu in cpus:
            val = abi.CpumapVal(qsize=abi.CPUMAP_QSIZE, prog_fd=prog_fd)
            libbpf.map_update(self._fd[abi.MAP_CPUMAP], ctypes.c_uint32(cpu), val)
        for i, cpu in enumerate(cpus):
            libbpf.map_update(self._fd[abi.MAP_STEER], ctypes.c_uint32(i), ctypes.c_uint32(cpu))

    def set_steer_count(self, n: int) -> None:
        """How many mcr_steer entries the datapath hashes over (0: off)."""
        self._steer_cpus = n
        self._write_config()

    def set_fanout(self, index: int, outputs: list[tuple[int, int]]) -> None:
        """Give the rule of index a devmap of its outputs: entry i = (ifindex, egress
        program fd). The outer map holds its own reference, so the fd is
        closed here."""
        fd = libbpf.devmap_create(f"mcr_fo_{index}", abi.MAX_OUTPUTS, ctypes.sizeof(abi.DevmapVal))
        try:
            for i, (ifindex, prog_fd) in enumerate(outputs):
                libbpf.map_update(fd, ctypes.c_uint32(i), abi.DevmapVal(ifindex=ifindex, prog_fd=prog_fd))
            libbpf.map_update(self._fd[abi.MAP_FANOUT], ctypes.c_uint32(index), ctypes.c_uint32(fd))
        finally:
            os.close(fd)

    def clear_fanout(self, index: int) -> None:
        libbpf.map_delete(self._fd[abi.MAP_FANOUT], ctypes.c_uint32(index))

    def _percpu(self, map_name: str, index: int, vtype):
        values = (vtype * self.ncpus)()
        libbpf.map_lookup(self._fd[map_name], ctypes.c_uint32(index), values)
        return values

    def verdicts(self) -> list[abi.Counter]:
        """Packet and byte counts per verdict (index: abi.Verdict), all CPUs."""
        return [_sum_percpu(self._percpu(abi.MAP_VERDICTS, v, abi.Counter)) for v in range(abi.VERDICT_MAX)]

    def verdicts_per_cpu(self) -> list[list[abi.Counter]]:
        """[cpu][verdict] packet and byte counts."""
        per_verdict = [self._percpu(abi.MAP_VERDICTS, v, abi.Counter) for v in range(abi.VERDICT_MAX)]
        return [[per_verdict[v][cpu] for v in range(abi.VERDICT_MAX)] for cpu in range(self.ncpus)]

    def cpu_totals(self) -> list[tuple[int, int]]:
        """(packets seen, packets forwarded) per CPU (backends.CounterSource)."""
        forward = (abi.Verdict.REDIRECT, abi.Verdict.REDIRECT_MULTI)
        return [(sum(c.packets for c in per), sum(per[v].packets for v in forward))
                for per in self.verdicts_per_cpu()]

    def rule_counters(self, index: int) -> abi.RuleCounters:
        """A rule's counters, all CPUs, with the frames the fast path sent
        (fast_packets, fast_bytes: bpf/mcr_abi.h) in packets, bytes and
        forwarded too."""
        return self.rule_and_outputs(index, 0)[0]

    def output_counters(self, index: int, n_outputs: int) -> list[abi.Counter]:
        """A rule's per-output counters, all CPUs; output 0's with the
        frames the fast path sent (counted in the rule's only)."""
        return self.rule_and_outputs(index, n_outputs)[1]

    def rule_and_outputs(self, index: int, n_outputs: int) -> tuple[abi.RuleCounters, list[abi.Counter]]:
        """Both of the above from one read of the rule's entry."""
        c = _sum_percpu(self._percpu(abi.MAP_RULE_STATS, index, abi.RuleCounters))
        slots = self.output_slots.get(index, ())
        outs = [_sum_percpu(self._percpu(abi.MAP_OUTPUT_STATS, slots[i], abi.Counter)) if i < len(slots)
                else abi.Counter() for i in range(n_outputs)]
        if outs and slots:
            outs[0].packets += c.fast_packets
            outs[0].bytes += c.fast_bytes
        c.packets += c.fast_packets
        c.bytes += c.fast_bytes
        c.forwarded += c.fast_packets
        return c, outs

    def reset_rule_counters(self, index: int, output_slots: tuple[int, ...] = ()) -> None:
        """Zero a rule's counters before its index is (re)used, and those of
        output_slots (see reset_output_counters)."""
        libbpf.map_update(self._fd[abi.MAP_RULE_STATS], ctypes.c_uint32(index), (abi.RuleCounters * self.ncpus)())
        self.reset_output_counters(output_slots)

    def reset_output_counters(self, slots) -> None:
        """Zero the per-output counters (and egress rotation state) at
        slots before an output takes them."""
        zero = (abi.Counter * self.ncpus)()
        zero_rr = (ctypes.c_uint64 * self.ncpus)()  # per-CPU values are 8-byte aligned
        for slot in slots:
            key = ctypes.c_uint32(slot)
            libbpf.map_update(self._fd[abi.MAP_OUTPUT_STATS], key, zero)
            libbpf.map_update(self._fd[abi.MAP_EGRESS_RR], key, zero_rr)

    def health(self, index: int) -> abi.Health | None:
        """The stream health state of a rule with ;health= (None: none)."""
        value = abi.Health()
        return value if libbpf.map_lookup(self._fd[abi.MAP_HEALTH], ctypes.c_uint32(index), value) else None

    def health_counts(self, index: int, kind: str) -> health.Counts | None:
        """backends.CounterSource: a rule's stream health, if it is checked here."""
        state = self.health(index)
        return health.from_state(state, kind) if state is not None else None

    def start_health(self, index: int) -> None:
        """Track the stream of the rule of index from nothing (a new rule, or another kind)."""
        libbpf.map_update(self._fd[abi.MAP_HEALTH], ctypes.c_uint32(index), abi.Health())

    def stop_health(self, index: int) -> None:
        libbpf.map_delete(self._fd[abi.MAP_HEALTH], ctypes.c_uint32(index))

    def merge(self, key: int) -> abi.Health | None:
        """A merged stream's window (None: none under key)."""
        value = abi.Health()
        return value if libbpf.map_lookup(self._fd[abi.MAP_MERGE], ctypes.c_uint32(key), value) else None

    def start_merge(self, key: int) -> None:
        """A merged stream from nothing: every sequence number new."""
        libbpf.map_update(self._fd[abi.MAP_MERGE], ctypes.c_uint32(key), abi.Health())

    def stop_merge(self, key: int) -> None:
        libbpf.map_delete(self._fd[abi.MAP_MERGE], ctypes.c_uint32(key))

    def merge_counts(self, index: int, kind: str, legs: int) -> health.MergeCounts | None:
        """backends.CounterSource: a merge leg's stream, if it is merged here."""
        key = self.merge_keys.get(index)
        state = self.merge(key) if key is not None else None
        return health.merge_from_state(state, kind, legs) if state is not None else None

    def police(self, index: int) -> abi.Police | None:
        value = abi.Police()
        return value if libbpf.map_lookup(self._fd[abi.MAP_POLICE], ctypes.c_uint32(index), value) else None

    def set_police(self, index: int, value: abi.Police) -> None:
        libbpf.map_update(self._fd[abi.MAP_POLICE], ctypes.c_uint32(index), value)

    def stop_police(self, index: int) -> None:
        libbpf.map_delete(self._fd[abi.MAP_POLICE], ctypes.c_uint32(index))

    def policed(self, index: int) -> int | None:
        """backends.CounterSource: packets the policer of the rule of index dropped (None: none here)."""
        state = self.police(index)
        return state.dropped if state is not None else None

    def read_output_slots(self) -> dict[int, tuple[int, ...]]:
        """rule index -> its outputs' mcr_output_stats keys, from the rule
        entries themselves (a relay that is gone left them in its maps)."""
        return {value.id: tuple(value.out[i].stat for i in range(min(value.n_outputs, abi.MAX_OUTPUTS)))
                for value in self._rule_values()}

    def read_merge_keys(self) -> dict[int, int]:
        """rule index -> its merged stream's mcr_merge key, for the merge legs
        among the rule entries (as read_output_slots)."""
        return {value.id: value.merge for value in self._rule_values() if value.flags & abi.RULE_MERGE}

    def _rule_values(self):
        for name, key_type in ((abi.MAP_RULES, abi.RuleKey), (abi.MAP_RANGES, abi.RangeKey)):
            for key in libbpf.map_keys(self._fd[name], key_type):
                value = abi.Rule()
                if libbpf.map_lookup(self._fd[name], key, value):
                    yield value
