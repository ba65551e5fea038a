"""ctypes mirror of bpf/mcr_abi.h. No logic here.

tests/unit/test_abi.py compiles a probe against the C header and compares
every size, offset and constant below, so the two cannot drift apart.
"""

import ctypes
import enum

ABI_VERSION = 15

MAX_RULES = 65536
MAX_OUTPUTS = 16
MAX_RULE_OUTPUTS = 131072
MAX_PORTS = 256
MAX_CPUS = 256
CPUMAP_QSIZE = 2048
MAX_HEALTH = 256
MAX_POLICED = 4096
MAX_MERGES = 128
FAST_RULES = 4096
FAST_BUCKETS = 65536
FAST_HASH = 0x7FFFFFFF
FAST_MUL = 0x61C88647
MAC_FILTER = 256

MAP_RULES = "mcr_rules"
MAP_FAST_INDEX = "mcr_fast_index"
MAP_FAST_RULES = "mcr_fast_rules"
MAP_RANGES = "mcr_ranges"
MAP_TX_PORTS = "mcr_tx_ports"
MAP_TX_DIRECT = "mcr_tx_direct"
MAP_VERDICTS = "mcr_verdicts"
MAP_RULE_STATS = "mcr_rule_stats"
MAP_OUTPUT_STATS = "mcr_output_stats"
MAP_FANOUT = "mcr_fanout"
MAP_CONFIG = "mcr_config"
MAP_EGRESS_RR = "mcr_egress_rr"
MAP_STEER = "mcr_steer"
MAP_CPUMAP = "mcr_cpumap"
MAP_HEALTH = "mcr_health"
MAP_POLICE = "mcr_police"
MAP_OWN_MACS = "mcr_own_macs"
MAP_MAC_FILTER = "mcr_mac_filter"
MAP_MERGE = "mcr_merge"
MAP_LOSS = "mcr_loss"
MAP_LOSS_PROGS = "mcr_loss_progs"
MAP_LOSS_MAPS = "mcr_loss_maps"
MAP_LOSS_STEER = "mcr_loss_steer"

PROG_RELAY = "mcr_relay"
PROG_RELAY_GENERIC = "mcr_relay_skb"
PROG_EGRESS = "mcr_egress"
PROG_CPU = "mcr_cpu_relay"
PROG_TC = "mcr_tc_relay"
PROG_TC_COMPANION = "mcr_tc_companion"

META_DONE = 0x4D435231
META_EGRESS = 0x4D435232
META_STEER = 0x4D435233

FAMILY_IPV4 = 4
FAMILY_IPV6 = 6


class Verdict(enum.IntEnum):
    PASS_NOT_IP = 0
    PASS_NOT_UDP = 1
    PASS_NOT_MULTICAST = 2
    PASS_FRAGMENT = 3
    PASS_NO_RULE = 4
    PASS_MALFORMED = 5
    PASS_IPV6_EXT = 6
    DROP_TTL = 7
    DROP_NO_OUTPUT = 8
    REDIRECT = 9
    REDIRECT_MULTI = 10
    EGRESS_DROP = 11
    DROP_NO_NEIGH = 12
    DROP_POLICED = 13
    DROP_LOOP = 14
    DROP_MERGED = 15


VERDICT_MAX = 16


class RuleKey(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad0", ctypes.c_uint8),
        ("source", ctypes.c_uint8 * 16),
        ("group", ctypes.c_uint8 * 16),
    ]


class RangeKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("family", ctypes.c_uint8),
        ("pad0", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("group", ctypes.c_uint8 * 16),
        ("source", ctypes.c_uint8 * 16),
    ]


RANGE_FIXED_BITS = 64


class Output(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("stat", ctypes.c_uint32),
        ("eth", ctypes.c_uint8 * 12),
        ("port", ctypes.c_uint16),
        ("ttl", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("group", ctypes.c_uint8 * 16),
        ("ip_csum_delta", ctypes.c_uint32),
        ("l4_csum_delta", ctypes.c_uint32),
        ("pseudo_csum_delta", ctypes.c_uint32),
    ]


RULE_VIA_TC = 0x1  # Rule.flags: native XDP passes the frame to the TC program on its input
RULE_RANGE = 0x2  # Rule.flags: from mcr_ranges; outputs keep the packet's host bits (host_mask)
RULE_HEALTH_RTP = 0x4  # Rule.flags: ;health=rtp, tracked in mcr_health under the rule id
RULE_HEALTH_TS = 0x8  # Rule.flags: ;health=mpegts (and RTP, when the TS packets follow an RTP header)
RULE_HEALTH = RULE_HEALTH_RTP | RULE_HEALTH_TS
RULE_POLICE = 0x10  # Rule.flags: ;police=RATE, a token bucket in mcr_police under the rule id
RULE_MERGE = 0x20  # Rule.flags: a leg of a merged stream, its window in mcr_merge under Rule.merge
OUT_UNRESOLVED = 0x1  # Output.flags: a unicast receiver without a known next-hop MAC: copies dropped
OUT_UNICAST = 0x2  # Output.flags: a unicast receiver: its MAC is the next hop's, not the group's


class Rule(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("n_outputs", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("merge", ctypes.c_uint32),
        ("host_mask", ctypes.c_uint8 * 16),
        ("out", Output * MAX_OUTPUTS),
    ]


class FastRule(ctypes.Structure):
    _fields_ = [
        ("key", RuleKey),
        ("rule", Rule),
    ]


class Config(ctypes.Structure):
    _fields_ = [
        ("abi_version", ctypes.c_uint32),
        ("ssm_rules", ctypes.c_uint32),
        ("steer_cpus", ctypes.c_uint32),
        ("range_rules", ctypes.c_uint32),
        ("any_port_rules", ctypes.c_uint32),
        ("unicast_rules", ctypes.c_uint32),
        ("own_macs", ctypes.c_uint32),
    ]


class Mac(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint8 * 6),
        ("pad", ctypes.c_uint8 * 2),
    ]


class Counter(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


class RuleCounters(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("forwarded", ctypes.c_uint64),
        ("dropped", ctypes.c_uint64),
        ("fast_packets", ctypes.c_uint64),
        ("fast_bytes", ctypes.c_uint64),
    ]


HEALTH_WORDS = 1024
TS_PIDS = 8192
TS_PACKET = 188
TS_PER_DATAGRAM = 8
TS_SEEN = 0x80
TS_DUP = 0x40
HEALTH_STARTED = 0x1
MERGE_RESYNC_NS = 1_000_000_000


class Health(ctypes.Structure):
    _fields_ = [
        ("lock", ctypes.c_uint32),  # struct bpf_spin_lock
        ("ssrc", ctypes.c_uint32),
        ("state", ctypes.c_uint32),
        ("pad0", ctypes.c_uint32),
        ("first", ctypes.c_uint64),
        ("max", ctypes.c_uint64),
        ("received", ctypes.c_uint64),
        ("unique", ctypes.c_uint64),
        ("lost_before", ctypes.c_uint64),
        ("duplicates", ctypes.c_uint64),
        ("reordered", ctypes.c_uint64),
        ("ssrc_changes", ctypes.c_uint64),
        ("invalid", ctypes.c_uint64),
        ("ts_packets", ctypes.c_uint64),
        ("cc_errors", ctypes.c_uint64),
        ("epoch", ctypes.c_uint32 * HEALTH_WORDS),
        ("seen", ctypes.c_uint64 * HEALTH_WORDS),
        ("cc", ctypes.c_uint8 * TS_PIDS),
        ("last_ns", ctypes.c_uint64),
        ("resyncs", ctypes.c_uint64),
        ("first_copies", ctypes.c_uint64),
        ("suppressed", ctypes.c_uint64),
    ]


POLICE_BITS = 0x1
NSEC = 1_000_000_000


class Police(ctypes.Structure):
    _fields_ = [
        ("lock", ctypes.c_uint32),  # struct bpf_spin_lock
        ("flags", ctypes.c_uint32),
        ("rate", ctypes.c_uint64),
        ("burst", ctypes.c_uint64),
        ("fill_ns", ctypes.c_uint64),
        ("tokens", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("passed", ctypes.c_uint64),
        ("dropped", ctypes.c_uint64),
    ]


class LossKey(ctypes.Structure):
    _fields_ = [
        ("from_ifindex", ctypes.c_uint32),
        ("to_ifindex", ctypes.c_uint32),
    ]


class Loss(ctypes.Structure):
    _fields_ = [
        ("xmit_drops", ctypes.c_uint64),
        ("redirect_errors", ctypes.c_uint64),
    ]


class CpumapVal(ctypes.Structure):
    _fields_ = [
        ("qsize", ctypes.c_uint32),
        ("prog_fd", ctypes.c_int32),
    ]


class Meta(ctypes.Structure):
    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("seq", ctypes.c_uint32),
    ]


class DevmapVal(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("prog_fd", ctypes.c_int32),
    ]


# Every struct mirrored above, by its C name: the ABI test walks this.
STRUCTS = {
    "mcr_rule_key": RuleKey,
    "mcr_range_key": RangeKey,
    "mcr_output": Output,
    "mcr_rule": Rule,
    "mcr_fast_rule": FastRule,
    "mcr_counter": Counter,
    "mcr_rule_counters": RuleCounters,
    "mcr_config": Config,
    "mcr_devmap_val": DevmapVal,
    "mcr_cpumap_val": CpumapVal,
    "mcr_loss_key": LossKey,
    "mcr_loss": Loss,
    "mcr_meta": Meta,
    "mcr_health": Health,
    "mcr_police": Police,
    "mcr_mac": Mac,
}
