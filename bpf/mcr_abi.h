/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mcr_abi.h - the only header shared by the datapath (bpf/) and the Python
 * control plane (mcr_xdp/abi.py mirrors it with ctypes; tests/unit/test_abi.py
 * compiles a probe against this file and compares sizes, offsets and values).
 *
 * Rules: fixed-width fields only, explicit padding, no pointers, no bitfields.
 * Addresses and ports are stored in network byte order, exactly as they sit
 * in the packet, so the datapath compares and copies them without swapping.
 * Bump MCR_ABI_VERSION on any change to this file.
 */
#ifndef MCR_ABI_H
#define MCR_ABI_H

#include <linux/types.h>
#ifndef __KERNEL__  /* bcc's datapath has it from uapi/linux/bpf.h */
#include <linux/bpf.h>  /* struct bpf_spin_lock */
#endif

#define MCR_ABI_VERSION 15

/* Limits (map sizes). */
#define MCR_MAX_RULES   65536 /* rules across all input interfaces */
#define MCR_MAX_OUTPUTS 16   /* outputs of one rule */
#define MCR_MAX_RULE_OUTPUTS 131072 /* outputs across all rules (per-output counters) */
#define MCR_MAX_PORTS   256  /* distinct output interfaces (devmap slots) */
#define MCR_MAX_CPUS    256  /* entries of a steering list (--steer-cpus) */
#define MCR_CPUMAP_QSIZE 2048 /* frames queued per steering CPU */
#define MCR_MAX_HEALTH  256  /* rules with a stream health check (;health=...) */
#define MCR_MAX_POLICED 4096 /* rules with a policer (;police=...) */
#define MCR_MAX_MERGES  128  /* merged streams (legs a|b=...;merge=rtp) */
#define MCR_FAST_RULES  4096 /* entries of MCR_MAP_FAST_RULES: copies of exact rules (new in ABI 14) */
#define MCR_FAST_BUCKETS 65536 /* entries of MCR_MAP_FAST_INDEX: a power of two */
#define MCR_FAST_HASH   0x7fffffff /* MCR_MAP_FAST_INDEX: the bucket's rules are in MCR_MAP_RULES only */
#define MCR_MAC_FILTER  256  /* entries of MCR_MAP_MAC_FILTER */

/* Map names, as bcc knows them (tests/bpf/test_relay_prog.py checks each exists). */
#define MCR_MAP_RULES     "mcr_rules"     /* hash: mcr_rule_key -> mcr_rule */
#define MCR_MAP_FAST_INDEX "mcr_fast_index" /* array: mcr_fast_bucket(key) -> 0, MCR_FAST_HASH or entry + 1 */
#define MCR_MAP_FAST_RULES "mcr_fast_rules" /* array: entry -> mcr_fast_rule, a copy of an exact rule */
#define MCR_MAP_RANGES    "mcr_ranges"    /* LPM trie: mcr_range_key -> mcr_rule (range rules) */
#define MCR_MAP_TX_PORTS  "mcr_tx_ports"  /* devmap: slot -> output ifindex, with the egress program */
#define MCR_MAP_TX_DIRECT "mcr_tx_direct" /* devmap: the same slots, no program (frames rewritten at ingress) */
#define MCR_MAP_VERDICTS  "mcr_verdicts"  /* percpu array: verdict -> mcr_counter */
#define MCR_MAP_RULE_STATS "mcr_rule_stats" /* percpu array: rule id -> mcr_rule_counters */
#define MCR_MAP_OUTPUT_STATS "mcr_output_stats" /* percpu array: mcr_output.stat -> mcr_counter */
#define MCR_MAP_FANOUT    "mcr_fanout"    /* array of devmaps: rule id -> that rule's outputs */
#define MCR_MAP_CONFIG    "mcr_config"    /* array[1]: mcr_config */
#define MCR_MAP_EGRESS_RR "mcr_egress_rr" /* percpu array: rotating index, one interface in several outputs */
#define MCR_MAP_STEER     "mcr_steer"     /* array: i < mcr_config.steer_cpus -> CPU id */
#define MCR_MAP_CPUMAP    "mcr_cpumap"    /* cpumap: CPU id -> mcr_cpumap_val (program mcr_cpu_relay) */
#define MCR_MAP_HEALTH    "mcr_health"    /* hash: rule id -> mcr_health (rules with ;health=...) */
#define MCR_MAP_POLICE    "mcr_police"    /* hash: rule id -> mcr_police (rules with ;police=...) */
#define MCR_MAP_OWN_MACS  "mcr_own_macs"  /* hash: mcr_mac -> 1, the MACs the relay sends from (loop guard) */
#define MCR_MAP_MAC_FILTER "mcr_mac_filter" /* array: mcr_mac_bucket(mac) -> own MACs there (loop guard) */
#define MCR_MAP_MERGE     "mcr_merge"     /* hash: mcr_rule.merge -> mcr_health, one per merged stream */

/* Loss tracer (bpf/trace.c, a separate object): frames the kernel dropped
 * after the datapath redirected them, per output ifindex. */
#define MCR_MAP_LOSS      "mcr_loss"      /* percpu hash: mcr_loss_key -> mcr_loss */
#define MCR_MAP_LOSS_PROGS "mcr_loss_progs" /* hash: prog id of this relay -> 1 */
#define MCR_MAP_LOSS_MAPS "mcr_loss_maps" /* hash: map id of this relay's cpumap -> 1 */
#define MCR_MAP_LOSS_STEER "mcr_loss_steer" /* percpu array[1]: u64 frames a full cpumap queue dropped */

/* Program names (function names in relay.c). */
#define MCR_PROG_RELAY "mcr_relay"
#define MCR_PROG_RELAY_GENERIC "mcr_relay_skb" /* the same, for generic (skb) XDP */
#define MCR_PROG_EGRESS "mcr_egress"  /* devmap egress program of every output */
#define MCR_PROG_CPU "mcr_cpu_relay"  /* cpumap program: forwards steered frames on their CPU */
#define MCR_PROG_TC "mcr_tc_relay"    /* clsact ingress program (tc_relay.c), --mode tc */
#define MCR_PROG_TC_COMPANION "mcr_tc_companion" /* the same beside native XDP: MCR_RULE_VIA_TC rules only */

/* Address families as stored in mcr_rule_key.family. */
#define MCR_FAMILY_IPV4 4
#define MCR_FAMILY_IPV6 6

/*
 * Every packet the ingress program sees ends in exactly one verdict.
 * PASS_* hand the frame to the host stack untouched, DROP_* discard it,
 * REDIRECT forwarded it to an output.
 */
enum mcr_verdict {
	MCR_V_PASS_NOT_IP = 0,       /* ethertype is neither IPv4 nor IPv6 */
	MCR_V_PASS_NOT_UDP = 1,      /* IP, but not UDP */
	MCR_V_PASS_NOT_MULTICAST = 2,/* destination is not a multicast group */
	MCR_V_PASS_FRAGMENT = 3,     /* IPv4 fragment: ports unknown or unreliable */
	MCR_V_PASS_NO_RULE = 4,      /* multicast UDP without a matching rule */
	MCR_V_PASS_MALFORMED = 5,    /* truncated or inconsistent headers */
	MCR_V_PASS_IPV6_EXT = 6,     /* IPv6 with extension headers before UDP */
	MCR_V_DROP_TTL = 7,          /* matched, but TTL / hop limit <= 1 */
	MCR_V_DROP_NO_OUTPUT = 8,    /* matched, but the output is missing */
	MCR_V_REDIRECT = 9,          /* forwarded to one output */
	MCR_V_REDIRECT_MULTI = 10,   /* forwarded to several outputs (one count per input packet) */
	MCR_V_EGRESS_DROP = 11,      /* a copy the egress program could not place (its rule or
				      * output vanished, or more copies than outputs) */
	MCR_V_DROP_NO_NEIGH = 12,    /* a copy for a unicast receiver whose next hop has no
				      * known MAC (MCR_OUT_UNRESOLVED): one count per copy */
	MCR_V_DROP_POLICED = 13,     /* over its rule's rate (;police=..., MCR_RULE_POLICE) */
	MCR_V_DROP_LOOP = 14,        /* matched, but sent from a MAC of the relay's own outputs
				      * (MCR_MAP_OWN_MACS): its own copy come back, a loop */
	MCR_V_DROP_MERGED = 15,      /* a merged stream's packet (;merge=rtp) already sent from
				      * another leg (or without an RTP header) (new in ABI 12) */
	MCR_V_MAX = 16,
};

/* Rule lookup key. IPv4 addresses use the first 4 bytes of the 16. */
struct mcr_rule_key {
	__u32 ifindex;     /* input interface */
	__u16 port;        /* UDP destination port, network order */
	__u8 family;       /* MCR_FAMILY_* */
	__u8 pad0;
	__u8 source[16];   /* SSM source; all zero for any-source rules */
	__u8 group[16];    /* destination group */
};

/*
 * Range rule key (LPM trie): a group prefix, any port, a source prefix.
 * The trie matches the longest prefix of the bytes after prefixlen, in
 * order: the input, family and port always (MCR_RANGE_FIXED_BITS), then
 * the group's bits (IPv4 in the first 4 of the 16 bytes, the rest zero),
 * then the source's. So one key holds a group prefix (any source) or one
 * group with a source prefix; a rule for any port has port 0, found by a
 * second lookup after the one with the packet's port.
 */
struct mcr_range_key {
	__u32 prefixlen;   /* bits of what follows that must match */
	__u32 ifindex;     /* input interface */
	__u8 family;       /* MCR_FAMILY_* */
	__u8 pad0;
	__u16 port;        /* UDP destination port, network order; 0: any */
	__u8 group[16];
	__u8 source[16];
};
#define MCR_RANGE_FIXED_BITS 64  /* ifindex, family, pad0, port */

/*
 * One output of a rule, with everything the datapath writes precomputed by
 * the control plane: the Ethernet header, the new group and port, and the
 * ones'-complement deltas that turn the old checksums into the new ones
 * (RFC 1624, eqn. 3). The deltas are sums of 16-bit words in host order as
 * the datapath loads them; ip_csum_delta includes the TTL decrement.
 */
struct mcr_output {
	__u32 ifindex;       /* output interface */
	__u32 slot;          /* key in MCR_MAP_TX_PORTS */
	__u32 stat;          /* key in MCR_MAP_OUTPUT_STATS and MCR_MAP_EGRESS_RR, given out
			      * by the control plane (new in ABI 8: was rule id *
			      * MCR_MAX_OUTPUTS + i, 16 counters a rule on every CPU) */
	__u8 eth[12];        /* destination MAC then source MAC */
	__u16 port;          /* new UDP destination port, network order */
	__u8 ttl;            /* outgoing TTL / hop limit (rule option ;ttl=N, the same
			      * in every output of a rule); 0: the received one minus
			      * one. Set, a TTL of 1 or less is forwarded, not dropped,
			      * and ip_csum_delta leaves the TTL out (new in ABI 7) */
	__u8 flags;          /* MCR_OUT_* (new in ABI 9) */
	__u8 group[16];      /* new destination group, or a unicast receiver's address */
	__u32 ip_csum_delta; /* IPv4 header checksum delta */
	__u32 l4_csum_delta; /* UDP checksum delta (pseudo header + port) */
	__u32 pseudo_csum_delta; /* UDP checksum delta of the pseudo header alone
				  * (TC: a partial checksum covers only that) */
};

/* mcr_output.flags */
#define MCR_OUT_UNRESOLVED 0x1 /* a unicast receiver whose next hop's MAC the kernel does
				* not know (yet): its copies are dropped and counted
				* (MCR_V_DROP_NO_NEIGH), never sent to a guessed address */
#define MCR_OUT_UNICAST 0x2    /* a unicast receiver (group holds its address): the
				* destination MAC is its next hop's, never the group's */

/* mcr_rule.flags */
#define MCR_RULE_VIA_TC 0x1  /* an output has no XDP transmit (ndo_xdp_xmit: VXLAN,
			      * bridge, tun, ...): native XDP passes the frame on,
			      * uncounted, to the TC program on the same input, which
			      * forwards and counts it (new in ABI 6) */
#define MCR_RULE_RANGE 0x2   /* from mcr_ranges: each output's group is its prefix
			      * (mcr_output.group) with the packet's host bits
			      * (mcr_rule.host_mask), and its destination MAC the
			      * group's; a port of 0 keeps the packet's. The checksum
			      * deltas cover the prefix change, which is the same
			      * whatever the host bits; the datapath adds the port's
			      * (new in ABI 8) */
#define MCR_RULE_HEALTH_RTP 0x4 /* ;health=rtp: RTP sequence numbers tracked in
				 * MCR_MAP_HEALTH under the rule id (new in ABI 10) */
#define MCR_RULE_HEALTH_TS 0x8  /* ;health=mpegts: MPEG-TS continuity counters per PID,
				 * after an RTP header if there is one (whose
				 * sequence numbers are tracked too) (new in ABI 10) */
#define MCR_RULE_HEALTH (MCR_RULE_HEALTH_RTP | MCR_RULE_HEALTH_TS)
#define MCR_RULE_POLICE 0x10    /* ;police=RATE: a token bucket in MCR_MAP_POLICE under the
				 * rule id; packets over it are dropped (MCR_V_DROP_POLICED)
				 * (new in ABI 11) */
#define MCR_RULE_MERGE 0x20     /* a leg of a merged stream (a|b=...;merge=rtp): only the
				 * first copy of each RTP sequence number, on whichever
				 * leg, is forwarded; the state is MCR_MAP_MERGE's entry
				 * mcr_rule.merge, shared by the legs. A leg has
				 * MCR_RULE_HEALTH_RTP too: its own arrivals, in its own
				 * mcr_health entry (new in ABI 12) */

struct mcr_rule {
	__u32 id;            /* index into MCR_MAP_RULE_STATS and MCR_MAP_FANOUT */
	__u16 n_outputs;     /* 1: rewrite and redirect at ingress; more: broadcast */
	__u16 flags;         /* MCR_RULE_* */
	__u32 merge;         /* MCR_RULE_MERGE: the key of its stream in MCR_MAP_MERGE (new in ABI 12) */
	__u8 host_mask[16];  /* MCR_RULE_RANGE: the group bits a packet keeps */
	struct mcr_output out[MCR_MAX_OUTPUTS];
};

/* The exact rules' fast path (new in ABI 14). A hash map lookup costs
 * ~40 ns on its own (the key's jhash, the bucket walk, a call whose return
 * goes through the CPU's return thunk); two array lookups, which the
 * verifier inlines, and a key compare cost a few. So the control plane
 * keeps a copy of up to MCR_FAST_RULES / 2 exact rules in
 * MCR_MAP_FAST_RULES, each with its key (the other half takes changed
 * copies while the old ones may still be read), and MCR_MAP_FAST_INDEX
 * says, per bucket of keys (mcr_fast_bucket), where to look: 0, no exact
 * rule has a key in the bucket; entry + 1, that entry (a rule of the
 * bucket without a copy is in MCR_MAP_RULES, looked up when the keys
 * differ); MCR_FAST_HASH, the bucket's rules are in MCR_MAP_RULES alone.
 * MCR_MAP_RULES holds every exact rule either way.
 *
 * An IPv4 key in MCR_MAP_FAST_RULES has the unused bytes of its source and
 * group zero (as every key a packet can match has): the IPv4 lookup
 * (bpf/forward.h fast_lookup_ipv4) compares only the other four words.
 *
 * An entry is never written while the datapath may read it: a changed rule
 * goes to a free entry, the bucket is pointed at it, and the old entry is
 * used again only after an RCU grace period.
 *
 * mcr_fast_bucket: the key's ten 32-bit words w[0..9] (host order, as in
 * memory) hashed as h = (..((w[0] * M + w[1]) * M + w[2]) * M .. + w[9]) * M
 * (mod 2^32, M = MCR_FAST_MUL), then h ^= h >> 16, h *= 0x85ebca6b,
 * h ^= h >> 13, and h % MCR_FAST_BUCKETS (bpf/forward.h computes the same
 * sum as independent products, mcr_xdp/maps.py as written here). */
#define MCR_FAST_MUL 0x61c88647

struct mcr_fast_rule {
	struct mcr_rule_key key;
	struct mcr_rule rule;
};

/* The loop guard's filter (new in ABI 14): MCR_MAP_MAC_FILTER[mcr_mac_bucket]
 * counts the relay's own MACs in that bucket (mac[4] ^ mac[5]); a frame's
 * source MAC is looked up in MCR_MAP_OWN_MACS only where it is not 0. */

struct mcr_config {
	__u32 abi_version;
	__u32 ssm_rules;     /* number of source-specific rules: 0 skips that lookup */
	__u32 steer_cpus;    /* CPUs in MCR_MAP_STEER: 0 forwards on the receiving CPU */
	__u32 range_rules;   /* range rules for one port in MCR_MAP_RANGES: 0 skips that lookup */
	__u32 any_port_rules; /* range rules for any port: 0 skips that lookup */
	__u32 unicast_rules; /* rules for a unicast destination (unicast inputs): 0 passes
			      * every unicast packet before any lookup (new in ABI 9) */
	__u32 own_macs;      /* entries in MCR_MAP_OWN_MACS: 0 turns the loop guard off
			      * (new in ABI 11) */
};

/* Key of MCR_MAP_OWN_MACS. */
struct mcr_mac {
	__u8 addr[6];
	__u8 pad[2];
};

struct mcr_counter {
	__u64 packets;
	__u64 bytes;
};

/*
 * A rule's counters. Since ABI 15 the fast path (mcr_fast_rules) counts a
 * frame it sent in fast_packets and fast_bytes alone (and its verdict):
 * one map update where it made two, the rule's and its output's, and two
 * fields where it made five. Such a frame is in no other field of this
 * struct and in no MCR_MAP_OUTPUT_STATS slot: readers add fast_packets and
 * fast_bytes to packets, bytes and forwarded, and to the counters of the
 * rule's output 0 (the fast path serves one-output rules only; that slot
 * is reset with the rule's counters). mcr_xdp/maps.py rule_counters and
 * output_counters do.
 */
struct mcr_rule_counters {
	__u64 packets;       /* matched, but for fast_packets */
	__u64 bytes;         /* matched, frame bytes as received, but for fast_bytes */
	__u64 forwarded;     /* handed to the output(s) by bpf_redirect_map, but for fast_packets */
	__u64 dropped;       /* matched but dropped (TTL, missing output) */
	__u64 fast_packets;  /* matched and sent to output 0 by the fast path (new in ABI 15) */
	__u64 fast_bytes;    /* their frame bytes as received */
};

/*
 * Stream health of one rule (MCR_MAP_HEALTH, new in ABI 10): one entry for
 * all CPUs, updated under its lock, because one stream's packets may be
 * handled by several CPUs (a sender that moves, RSS, steering). The
 * control plane creates the entry zeroed and only reads it afterwards.
 *
 * RTP (RFC 3550): sequence numbers are extended to 64 bits around the
 * highest seen (16-bit wrap); seen[] holds one bit per sequence number of
 * the last 65,536, a word of 64 valid while its epoch[] equals the
 * number's bits 16 and up. lost = (max - first + 1) - unique, plus what
 * earlier SSRCs lost: a late packet that fills a gap takes its loss back.
 *
 * MPEG-TS (ISO/IEC 13818-1 2.4.3.3): cc[pid] is MCR_TS_SEEN | MCR_TS_DUP |
 * the last continuity counter of a packet with payload. A counter that is
 * not the last + 1 is an error, except one repeat (a duplicate packet), a
 * packet without payload (its counter does not advance), the null PID and
 * a set discontinuity_indicator.
 *
 * A merged stream (MCR_MAP_MERGE, new in ABI 12) has the same struct: its
 * RTP window over every leg's packets is the first-copy test (a sequence
 * number seen before is a copy: dropped), received counts every leg's
 * datagrams, unique what was forwarded, duplicates the copies dropped,
 * lost what no leg brought. last_ns is when it last forwarded: copies
 * alone for longer than MCR_MERGE_RESYNC_NS mean the sender started its
 * sequence over (same SSRC), and the next packet starts tracking again
 * (resyncs). A leg's own entry counts first_copies and suppressed.
 */
#define MCR_HEALTH_WORDS 1024  /* 64 sequence numbers each: all 65,536 */
#define MCR_TS_PIDS 8192
#define MCR_TS_PACKET 188
#ifndef MCR_TS_PER_DATAGRAM
#define MCR_TS_PER_DATAGRAM 8  /* TS packets checked per datagram (7 fit in 1,500 bytes) */
#endif
#define MCR_TS_SEEN 0x80
#define MCR_TS_DUP 0x40
#define MCR_HEALTH_STARTED 0x1 /* mcr_health.state: an RTP packet was seen */
#ifndef MCR_MERGE_RESYNC_NS
#define MCR_MERGE_RESYNC_NS 1000000000 /* 1 s: longer than any path's delay */
#endif

struct mcr_health {
	struct bpf_spin_lock lock;
	__u32 ssrc;          /* of the stream being tracked */
	__u32 state;         /* MCR_HEALTH_* */
	__u32 pad0;
	__u64 first;         /* lowest extended sequence number since the SSRC took over */
	__u64 max;           /* highest */
	__u64 received;      /* datagrams checked */
	__u64 unique;        /* distinct sequence numbers since the SSRC took over */
	__u64 lost_before;   /* lost by the SSRCs before it */
	__u64 duplicates;    /* a sequence number seen before */
	__u64 reordered;     /* arrived after a later one */
	__u64 ssrc_changes;  /* a new SSRC took over (tracking restarted) */
	__u64 invalid;       /* not the kind checked: no RTP v2 header (rtp), no TS sync byte (mpegts) */
	__u64 ts_packets;    /* TS packets checked */
	__u64 cc_errors;     /* continuity counter errors */
	__u32 epoch[MCR_HEALTH_WORDS];
	__u64 seen[MCR_HEALTH_WORDS];
	__u8 cc[MCR_TS_PIDS];
	__u64 last_ns;       /* merged stream: bpf_ktime_get_ns() when it last forwarded */
	__u64 resyncs;       /* merged stream: tracking started over (see above) */
	__u64 first_copies;  /* a merge leg: its packets forwarded (the first copy) */
	__u64 suppressed;    /* a merge leg: its copies dropped (another leg's came first) */
};

/*
 * A rule's policer (MCR_MAP_POLICE, new in ABI 11): a token bucket shared by
 * every CPU, under its lock. Tokens are in units * 10^9 (a unit is a
 * packet, or a bit of the frame as received with MCR_POLICE_BITS), so that
 * nanoseconds * rate (units per second) adds them without a division. The
 * control plane writes rate, burst and fill_ns (burst / rate: after that
 * long the bucket is full whatever came before); the datapath the rest.
 */
#define MCR_POLICE_BITS 0x1  /* mcr_police.flags: rate in bits per second, else packets */
#define MCR_NSEC 1000000000  /* ns a second: tokens per unit */

struct mcr_police {
	struct bpf_spin_lock lock;
	__u32 flags;         /* MCR_POLICE_* */
	__u64 rate;          /* units per second */
	__u64 burst;         /* bucket size, units * 10^9 */
	__u64 fill_ns;       /* burst / rate, in ns */
	__u64 tokens;        /* units * 10^9 */
	__u64 last_ns;       /* bpf_ktime_get_ns() of the last refill */
	__u64 passed;        /* packets within the rate */
	__u64 dropped;       /* packets over it */
};

/* Tracepoints are global and ifindexes are per network namespace: keying by
 * the (input, output) pair of a relay's own rules keeps other namespaces'
 * traffic out far better than the output alone. */
struct mcr_loss_key {
	__u32 from_ifindex;  /* input interface the frames arrived on */
	__u32 to_ifindex;    /* output interface that refused them */
};

struct mcr_loss {
	__u64 xmit_drops;    /* xdp:xdp_devmap_xmit: the driver refused frames */
	__u64 redirect_errors; /* xdp:xdp_redirect_err: the redirect itself failed */
};

/*
 * XDP metadata: what the ingress program tells the egress program about a
 * frame it redirected. In native XDP the kernel runs ONE devmap egress
 * program per device queue flush, the one of the flush's first frame, on
 * frames of every rule and input that share the device; so every devmap
 * entry carries mcr_egress, and each frame says what it needs. It sits at
 * the front of the metadata area (anything already there stays behind it)
 * and the egress program removes it. Generic XDP and drivers without
 * metadata support carry none: the egress program then works from the
 * original headers and the context's ingress interface.
 */
#define MCR_META_DONE   0x4d435231 /* rewritten at ingress (one output): pass it */
#define MCR_META_EGRESS 0x4d435232 /* original headers: rewrite for the egress interface */
#define MCR_META_STEER  0x4d435233 /* native XDP handed it to a steering CPU */

struct mcr_meta {
	__u32 magic;         /* MCR_META_* */
	__u32 ifindex;       /* input interface (the rule key's), MCR_META_EGRESS */
	__u32 seq;           /* per-CPU packet number of the rule: copies of one
			      * packet share it (MCR_META_EGRESS) */
};

/* Value of MCR_MAP_CPUMAP (struct bpf_cpumap_val). */
struct mcr_cpumap_val {
	__u32 qsize;         /* frames the CPU's queue holds */
	__s32 prog_fd;       /* mcr_cpu_relay */
};

/* Value of MCR_MAP_TX_PORTS and of each fan-out devmap. */
struct mcr_devmap_val {
	__u32 ifindex;
	__s32 prog_fd;       /* egress program (fan-out), -1 for none */
};

#endif /* MCR_ABI_H */
