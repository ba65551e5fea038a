"""Stream health (;health=rtp|mpegts): what the datapath counts, read into
plain numbers, and the same tracking in Python (Tracker), the model the
datapath's tests compare against. Pure: no kernel, no I/O.

The datapath's state and its rules are described at struct mcr_health in
bpf/mcr_abi.h; bpf/health.h is the code. Tracker follows it step by step.
"""

from __future__ import annotations

import dataclasses
import socket
import struct

from . import abi

FIELDS = ("received", "lost", "duplicates", "reordered", "ssrc_changes", "invalid", "ts_packets", "cc_errors")


@dataclasses.dataclass(frozen=True)
class Counts:
    """A rule's stream health, as stats and status show it."""

    kind: str  # rules.HEALTH_KINDS
    received: int = 0  # datagrams checked
    lost: int = 0  # RTP sequence numbers never seen (a late one takes its loss back)
    duplicates: int = 0  # RTP sequence numbers seen again
    reordered: int = 0  # RTP packets that came after a later one
    ssrc: int | None = None  # of the RTP stream tracked; None before the first
    ssrc_changes: int = 0  # a new SSRC took over (tracking restarted)
    invalid: int = 0  # datagrams not of the kind checked (no RTP v2 header, no TS sync byte)
    ts_packets: int = 0  # MPEG-TS packets checked
    cc_errors: int = 0  # MPEG-TS continuity counter errors

    def as_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Counts:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def __add__(self, other: Counts) -> Counts:
        """Two sources' counts of one rule (a rule runs in one backend, so
        one of them is usually all zero)."""
        summed = {name: getattr(self, name) + getattr(other, name) for name in FIELDS}
        return Counts(self.kind, ssrc=self.ssrc if self.ssrc is not None else other.ssrc,
                      **summed)


def from_state(state: abi.Health, kind: str) -> Counts:
    """Counts from the datapath's struct mcr_health. Read without its lock:
    a reading taken mid-update may be off by the packet in flight."""
    started = bool(state.state & abi.HEALTH_STARTED)
    ssrc = socket.ntohl(state.ssrc)  # the datapath keeps the header's bytes as they are
    current = state.max - state.first + 1 - state.unique if started else 0
    return Counts(kind, state.received, state.lost_before + max(0, current), state.duplicates, state.reordered,
                  ssrc if started else None, state.ssrc_changes, state.invalid, state.ts_packets,
                  state.cc_errors)


RTP_HEADER = 12
TS_SYNC = 0x47
NULL_PID = 0x1FFF


class Tracker:
    """bpf/health.h in Python: one rule's stream, datagram by datagram."""

    def __init__(self, kind: str):
        self.kind = kind
        self.ssrc = 0
        self.started = False
        self.first = self.max = 0
        self.unique = self.lost_before = 0
        self.received = self.duplicates = self.reordered = self.ssrc_changes = 0
        self.invalid = self.ts_packets = self.cc_errors = 0
        self.epoch = [0] * abi.HEALTH_WORDS
        self.seen = [0] * abi.HEALTH_WORDS
        self.cc = bytearray(abi.TS_PIDS)

    def counts(self) -> Counts:
        current = self.max - self.first + 1 - self.unique if self.started else 0
        return Counts(self.kind, self.received, self.lost_before + current, self.duplicates, self.reordered,
                      self.ssrc if self.started else None, self.ssrc_changes, self.invalid, self.ts_packets,
                      self.cc_errors)

    def datagram(self, payload: bytes) -> None:
        """Check one UDP payload."""
        self.received += 1
        rtp = len(payload) >= RTP_HEADER and payload[0] >> 6 == 2
        ts = 0
        bad_extension = False
        if rtp:
            seq, ssrc = struct.unpack_from("!H4xI", payload, 2)
            self._rtp(seq, ssrc)
            ts = RTP_HEADER + 4 * (payload[0] & 0xF)
            if payload[0] & 0x10:
                if ts + 4 > len(payload):
                    bad_extension = True
                else:
                    words = struct.unpack_from("!H", payload, ts + 2)[0]
                    if words > 256:
                        bad_extension = True
                    elif words:
                        ts += 4 + 4 * words
                        bad_extension = ts > len(payload)
        elif self.kind == "rtp":
            self.invalid += 1
        if bad_extension:
            self.invalid += 1
        elif self.kind == "mpegts":
            self._ts(payload, ts)

    def _rtp(self, seq: int, ssrc: int) -> None:
        delta = 0
        if not self.started or ssrc != self.ssrc:
            if self.started:
                self.ssrc_changes += 1
                self.lost_before += self.max - self.first + 1 - self.unique
            ext = (((self.max >> 16) + 2) << 16) | seq
            self.ssrc, self.first, self.max, self.unique, self.started = ssrc, ext, ext, 0, True
        else:
            delta = (seq - self.max) & 0xFFFF
            delta = delta - 0x10000 if delta >= 0x8000 else delta
            ext = self.max + delta
            if delta > 0:
                self.max = ext
            elif ext < self.first:
                self.first = ext
        word, epoch, bit = (ext >> 6) % abi.HEALTH_WORDS, (ext >> 16) & 0xFFFFFFFF, 1 << (ext & 63)
        if self.epoch[word] != epoch:
            self.epoch[word], self.seen[word] = epoch, 0
        if self.seen[word] & bit:
            self.duplicates += 1
            return
        self.seen[word] |= bit
        self.unique += 1
        if delta < 0:
            self.reordered += 1

    def _ts(self, payload: bytes, start: int) -> None:
        for i in range(abi.TS_PER_DATAGRAM):
            t = start + i * abi.TS_PACKET
            if t + abi.TS_PACKET > len(payload):
                break
            if payload[t] != TS_SYNC:
                self.invalid += 1
                break
            self.ts_packets += 1
            pid = ((payload[t + 1] & 0x1F) << 8) | payload[t + 2]
            afc, cc = (payload[t + 3] >> 4) & 3, payload[t + 3] & 0xF
            if pid == NULL_PID or not afc & 1:
                continue
            st = self.cc[pid]
            discontinuity = bool(afc & 2 and payload[t + 4] and payload[t + 5] & 0x80)
            if st & abi.TS_SEEN and not discontinuity:
                if cc == st & 0xF:
                    if st & abi.TS_DUP:
                        self.cc_errors += 1
                    self.cc[pid] = abi.TS_SEEN | abi.TS_DUP | cc
                    continue
                if cc != (st + 1) & 0xF:
                    self.cc_errors += 1
            self.cc[pid] = abi.TS_SEEN | cc
