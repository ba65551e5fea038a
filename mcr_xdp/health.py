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
import sys

from . import abi

FIELDS = ("received", "lost", "duplicates", "reordered", "ssrc_changes", "invalid", "ts_packets", "cc_errors",
          "first_copies", "suppressed")


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
    first_copies: int = 0  # a merge leg: its packets forwarded (the first copy of their number)
    suppressed: int = 0  # a merge leg: its copies dropped (another leg's came first)

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
                  state.cc_errors, state.first_copies, state.suppressed)


@dataclasses.dataclass(frozen=True)
class MergeCounts:
    """A merged stream (;merge=rtp) at its output, over every leg."""

    kind: str  # rules.MERGE_KINDS
    legs: int  # legs of the stream
    received: int = 0  # datagrams from every leg
    forwarded: int = 0  # the first copy of each sequence number
    copies: int = 0  # later copies, dropped
    lost: int = 0  # sequence numbers no leg brought
    reordered: int = 0  # forwarded after a later one
    invalid: int = 0  # without an RTP header, dropped
    ssrc: int | None = None
    ssrc_changes: int = 0
    resyncs: int = 0  # copies alone for MERGE_RESYNC_NS: the sender's sequence started over

    def as_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> MergeCounts:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def merge_from_state(state: abi.Health, kind: str, legs: int) -> MergeCounts:
    """MergeCounts from a merged stream's struct mcr_health (read as from_state)."""
    counts = from_state(state, kind)
    return MergeCounts(kind, legs, counts.received, counts.received - counts.duplicates - counts.invalid,
                       counts.duplicates, counts.lost, counts.reordered, counts.invalid, counts.ssrc,
                       counts.ssrc_changes, state.resyncs)


RTP_HEADER = 12
TS_SYNC = 0x47
NULL_PID = 0x1FFF


MERGE_NONE, MERGE_FIRST, MERGE_COPY, MERGE_INVALID = 0, 1, 2, 3  # bpf/health.h MCR_MERGE_*


def rtp_track(h: abi.Health, seq: int, ssrc: int) -> bool:
    """bpf/health.h rtp_track on a struct mcr_health (ssrc as the datapath
    keeps it, the header's bytes in host order): True for a duplicate."""
    delta = 0
    if not h.state & abi.HEALTH_STARTED or ssrc != h.ssrc:
        if h.state & abi.HEALTH_STARTED:
            h.ssrc_changes += 1
            h.lost_before += h.max - h.first + 1 - h.unique
        ext = (((h.max >> 16) + 2) << 16) | seq
        h.ssrc, h.first, h.max, h.unique = ssrc, ext, ext, 0
        h.state |= abi.HEALTH_STARTED
    else:
        delta = (seq - h.max) & 0xFFFF
        delta = delta - 0x10000 if delta >= 0x8000 else delta
        ext = h.max + delta
        if delta > 0:
            h.max = ext
        elif ext < h.first:
            h.first = ext
    word, epoch, bit = (ext >> 6) % abi.HEALTH_WORDS, (ext >> 16) & 0xFFFFFFFF, 1 << (ext & 63)
    if h.epoch[word] != epoch:
        h.epoch[word], h.seen[word] = epoch, 0
    if h.seen[word] & bit:
        h.duplicates += 1
        return True
    h.seen[word] |= bit
    h.unique += 1
    if delta < 0:
        h.reordered += 1
    return False


def rtp_header(payload: bytes) -> tuple[int, int] | None:
    """(sequence number, SSRC as the datapath keeps it) of an RTP v2 header."""
    if len(payload) < RTP_HEADER or payload[0] >> 6 != 2:
        return None
    return (payload[2] << 8) | payload[3], int.from_bytes(payload[8:12], sys.byteorder)


def merge_check(m: abi.Health, payload: bytes, now: int) -> int:
    """bpf/health.h merge_check on a merged stream's window (locked by the
    caller): MERGE_FIRST to forward the datagram, else why not. now: ns."""
    m.received += 1
    header = rtp_header(payload)
    if header is None:
        m.invalid += 1
        return MERGE_INVALID
    if rtp_track(m, *header):
        if now > m.last_ns and now - m.last_ns > abi.MERGE_RESYNC_NS:
            m.resyncs += 1
            m.lost_before += m.max - m.first + 1 - m.unique
            m.state &= ~abi.HEALTH_STARTED
        return MERGE_COPY
    m.last_ns = max(m.last_ns, now)  # a worker's clock may lag the one that wrote it
    return MERGE_FIRST


class Tracker:
    """bpf/health.h in Python: one rule's stream, datagram by datagram,
    in a struct mcr_health of its own."""

    def __init__(self, kind: str, state: abi.Health | None = None):
        self.kind = kind
        self.state = state if state is not None else abi.Health()

    def counts(self) -> Counts:
        return from_state(self.state, self.kind)

    def datagram(self, payload: bytes, merged: int = MERGE_NONE) -> None:
        """Check one UDP payload; merged: what a merge made of it (a leg's)."""
        h = self.state
        h.received += 1
        if merged == MERGE_FIRST:
            h.first_copies += 1
        elif merged == MERGE_COPY:
            h.suppressed += 1
        header = rtp_header(payload)
        ts = 0
        bad_extension = False
        if header is not None:
            rtp_track(h, *header)
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
            h.invalid += 1
        if bad_extension:
            h.invalid += 1
        elif self.kind == "mpegts":
            self._ts(payload, ts)

    def _ts(self, payload: bytes, start: int) -> None:
        h = self.state
        for i in range(abi.TS_PER_DATAGRAM):
            t = start + i * abi.TS_PACKET
            if t + abi.TS_PACKET > len(payload):
                break
            if payload[t] != TS_SYNC:
                h.invalid += 1
                break
            h.ts_packets += 1
            pid = ((payload[t + 1] & 0x1F) << 8) | payload[t + 2]
            afc, cc = (payload[t + 3] >> 4) & 3, payload[t + 3] & 0xF
            if pid == NULL_PID or not afc & 1:
                continue
            st = h.cc[pid]
            discontinuity = bool(afc & 2 and payload[t + 4] and payload[t + 5] & 0x80)
            if st & abi.TS_SEEN and not discontinuity:
                if cc == st & 0xF:
                    if st & abi.TS_DUP:
                        h.cc_errors += 1
                    h.cc[pid] = abi.TS_SEEN | abi.TS_DUP | cc
                    continue
                if cc != (st + 1) & 0xF:
                    h.cc_errors += 1
            h.cc[pid] = abi.TS_SEEN | cc
