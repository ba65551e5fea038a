"""The fallback's counters: one block of u64 per worker in a shared memory
file, laid out like the datapath's maps (verdicts, rule counters, output
counters), so a reader sums workers exactly as it sums CPUs.

A worker writes only its own block; the relay only reads. Aligned 8-byte
stores are single instructions on every platform the relay runs on, so a
reader never sees a torn counter.
"""

from __future__ import annotations

import mmap
import os

from .. import abi, health

VERDICTS = 0
RULES = VERDICTS + abi.VERDICT_MAX * 2  # packets, bytes per verdict
OUTPUTS = RULES + abi.MAX_RULES * 4  # packets, bytes, forwarded, dropped per rule
WORDS = OUTPUTS + abi.MAX_RULES * abi.MAX_OUTPUTS * 2  # packets, bytes per output
BLOCK = -(-WORDS * 8 // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY  # a worker maps its own
STRIDE = BLOCK // 8  # words from one worker's block to the next


def rule_base(index: int) -> int:
    return RULES + index * 4


def output_base(index: int, output: int) -> int:
    return OUTPUTS + (index * abi.MAX_OUTPUTS + output) * 2


def create(workers: int) -> int:
    """A zeroed memory file for workers blocks; returns its fd."""
    fd = os.memfd_create("mcr-xdp-counters", os.MFD_CLOEXEC)
    os.ftruncate(fd, BLOCK * workers)
    return fd


def open_block(fd: int, worker: int) -> tuple[mmap.mmap, memoryview]:
    """A worker's block as (mapping, u64 view)."""
    m = mmap.mmap(fd, BLOCK, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=BLOCK * worker)
    return m, memoryview(m).cast("Q")


class Counters:
    """The relay's side: a backends.CounterSource summed over workers, plus
    per-worker totals."""

    def __init__(self, fd: int, workers: int, states=None):
        self.workers = workers
        self.states = states  # streams.States: the stream checks' state
        self.health_slots: dict[int, int] = {}  # rule index -> its health state's slot
        self.merge_keys: dict[int, int] = {}  # rule index -> its merged stream's key
        self._map = mmap.mmap(fd, BLOCK * workers, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._map).cast("Q")

    def _sum(self, index: int) -> int:
        v = self._view
        return sum(v[w * STRIDE + index] for w in range(self.workers))

    def verdicts(self) -> list[abi.Counter]:
        return [abi.Counter(self._sum(VERDICTS + 2 * i), self._sum(VERDICTS + 2 * i + 1))
                for i in range(abi.VERDICT_MAX)]

    def rule_counters(self, index: int) -> abi.RuleCounters:
        base = rule_base(index)
        return abi.RuleCounters(*(self._sum(base + i) for i in range(4)))

    def output_counters(self, index: int, n_outputs: int) -> list[abi.Counter]:
        return [abi.Counter(self._sum(output_base(index, i)), self._sum(output_base(index, i) + 1))
                for i in range(n_outputs)]

    def rule_and_outputs(self, index: int, n_outputs: int) -> tuple[abi.RuleCounters, list[abi.Counter]]:
        return self.rule_counters(index), self.output_counters(index, n_outputs)

    def health_counts(self, index: int, kind: str) -> health.Counts | None:
        slot = self.health_slots.get(index)
        return health.from_state(self.states.copy(slot), kind) if slot is not None else None

    def merge_counts(self, index: int, kind: str, legs: int) -> health.MergeCounts | None:
        from .streams import merge_slot

        key = self.merge_keys.get(index)
        return health.merge_from_state(self.states.copy(merge_slot(key)), kind, legs) if key is not None else None

    def cpu_totals(self) -> list[tuple[int, int]]:
        """Workers are not CPUs: their totals are in the backend's status
        (backends.CounterSource)."""
        return []

    def worker_totals(self, worker: int) -> dict[str, int]:
        """Packets a worker saw, and those it forwarded (every verdict summed,
        as the per-CPU view of the datapath)."""
        v = self._view
        base = worker * STRIDE
        seen = sum(v[base + VERDICTS + 2 * i] for i in range(abi.VERDICT_MAX))
        fwd = sum(v[base + VERDICTS + 2 * int(x)] for x in (abi.Verdict.REDIRECT, abi.Verdict.REDIRECT_MULTI))
        return {"packets": seen, "forwarded": fwd}

    def reset_rule(self, index: int) -> None:
        """Zero a rule's counters before its index is (re)used. Workers never
        count a rule they do not have, so nothing writes these meanwhile."""
        v = self._view
        for w in range(self.workers):
            base = w * STRIDE
            for i in range(4):
                v[base + rule_base(index) + i] = 0
            for i in range(abi.MAX_OUTPUTS * 2):
                v[base + output_base(index, 0) + i] = 0

    def close(self) -> None:
        self._view.release()
        self._map.close()
