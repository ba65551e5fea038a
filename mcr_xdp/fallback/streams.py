"""Stream checks in userspace mode: the same struct mcr_health the kernel
datapath keeps (bpf/health.h), one per rule with ;health= or a merge leg
and one per merged stream, in a shared memory file the relay creates and
every worker maps.

A stream may reach several workers (fanout by CPU or load, or a merged
stream's legs on two inputs), so each state is changed under a lock: an
fcntl record lock on its first byte, which the kernel drops with a worker
that dies holding it. The relay reads without a lock, as it reads the
datapath's maps.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import time

from .. import abi, health

SLOT = ctypes.sizeof(abi.Health)
HEALTH_SLOTS = abi.MAX_HEALTH  # slots 0..: rules' own (;health=, merge legs)
SLOTS = HEALTH_SLOTS + abi.MAX_MERGES  # then the merged streams', by mcr_merge key
SIZE = -(-SLOT * SLOTS // mmap.PAGESIZE) * mmap.PAGESIZE


def create() -> int:
    """A zeroed state file (pages are allocated as they are written); its fd."""
    fd = os.memfd_create("mcr-xdp-streams", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    return fd


def merge_slot(key: int) -> int:
    return HEALTH_SLOTS + key


class States:
    """The state file mapped: struct mcr_health views by slot, and their locks."""

    def __init__(self, fd: int):
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor = ctypes.c_char.from_buffer(self._map)  # one export, released by close()
        self._base = ctypes.addressof(self._anchor)

    def state(self, slot: int) -> abi.Health:
        """Slot's struct, in the shared memory itself (valid until close)."""
        return abi.Health.from_address(self._base + slot * SLOT)

    def copy(self, slot: int) -> abi.Health:
        return abi.Health.from_buffer_copy(self._map, slot * SLOT)

    def lock(self, slot: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, slot * SLOT)

    def unlock(self, slot: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, slot * SLOT)

    def reset(self, slot: int) -> None:
        """Start slot's stream from nothing."""
        self.lock(slot)
        try:
            ctypes.memset(self._base + slot * SLOT, 0, SLOT)
        finally:
            self.unlock(slot)

    def close(self) -> None:
        del self._anchor
        self._map.close()


class Stream:
    """One rule's checks in a worker: its own health (tracker, in slot
    health_slot) and its merged stream's window (merge, in merge_slot)."""

    __slots__ = ("states", "tracker", "health_slot", "merge", "merge_slot")

    def __init__(self, states: States, kind: str | None, health_slot: int | None, merge: int | None):
        self.states = states
        self.health_slot = health_slot
        self.tracker = health.Tracker(kind, states.state(health_slot)) if health_slot is not None else None
        self.merge_slot = merge_slot(merge) if merge is not None else None
        self.merge = states.state(self.merge_slot) if merge is not None else None

    def check(self, payload: bytes, forward: bool) -> int:
        """Check one datagram; forward: nothing else stops it. Returns what
        a merge made of it (health.MERGE_*; MERGE_NONE for no merge)."""
        states = self.states
        merged = health.MERGE_NONE
        if self.merge is not None and forward:
            states.lock(self.merge_slot)
            try:
                merged = health.merge_check(self.merge, payload, time.monotonic_ns())
            finally:
                states.unlock(self.merge_slot)
        if self.tracker is not None:
            states.lock(self.health_slot)
            try:
                self.tracker.datagram(payload, merged)
            finally:
                states.unlock(self.health_slot)
        return merged
