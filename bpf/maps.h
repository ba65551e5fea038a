/* SPDX-License-Identifier: GPL-2.0 */
/*
 * maps.h - map definitions, BPF side only. Names must match the MCR_MAP_*
 * strings in mcr_abi.h (bcc needs bare identifiers here).
 */
#ifndef MCR_MAPS_H
#define MCR_MAPS_H

#include "mcr_abi.h"

/* Allocated per entry (no preallocation): 65,536 rules of ~900 bytes
 * would take 60 MB before the first rule. */
BPF_F_TABLE("hash", struct mcr_rule_key, struct mcr_rule, mcr_rules, MCR_MAX_RULES, BPF_F_NO_PREALLOC);
BPF_LPM_TRIE(mcr_ranges, struct mcr_range_key, struct mcr_rule, MCR_MAX_RULES);
BPF_ARRAY(mcr_config, struct mcr_config, 1);

/* One output per slot for single-output rules. bcc's BPF_DEVMAP has a
 * 4-byte value; this form carries a program slot too (mcr_egress, as every
 * output does: see struct mcr_meta). */
BPF_XDP_REDIRECT_MAP("devmap", struct mcr_devmap_val, mcr_tx_ports, MCR_MAX_PORTS);

/* Fan-out: rule id -> a devmap of that rule's outputs, each entry carrying
 * the egress program mcr_egress. The control plane creates the inner maps
 * like this template. */
BPF_XDP_REDIRECT_MAP("devmap", struct mcr_devmap_val, mcr_fanout_inner, MCR_MAX_OUTPUTS);
BPF_ARRAY_OF_MAPS(mcr_fanout, "mcr_fanout_inner", MCR_MAX_RULES);

/* The counters. A relay started again after its process was killed
 * (same instance, same ABI version) is compiled with MCR_ADOPT_DIR, the
 * killed relay's pin directory, and uses these very maps: its counters go
 * on from where they were, not one packet lost in between (the old program
 * counts into them until the new one replaces it). */
#ifdef MCR_ADOPT_DIR
#define MCR_COUNTERS(name, leaf, n) BPF_TABLE_PINNED("percpu_array", int, leaf, name, n, MCR_ADOPT_DIR "/" #name)
#else
#define MCR_COUNTERS(name, leaf, n) BPF_PERCPU_ARRAY(name, leaf, n)
#endif
MCR_COUNTERS(mcr_verdicts, struct mcr_counter, MCR_V_MAX);
MCR_COUNTERS(mcr_rule_stats, struct mcr_rule_counters, MCR_MAX_RULES);
MCR_COUNTERS(mcr_output_stats, struct mcr_counter, MCR_MAX_RULE_OUTPUTS);

/* Stream health (;health=...): rule id -> its tracking state, one entry for
 * every CPU (a lock in each). Preallocated: 256 entries of ~20 KiB. Kept
 * across a restart like the counters. */
#ifdef MCR_ADOPT_DIR
BPF_TABLE_PINNED("hash", __u32, struct mcr_health, mcr_health, MCR_MAX_HEALTH, MCR_ADOPT_DIR "/mcr_health");
#else
BPF_TABLE("hash", __u32, struct mcr_health, mcr_health, MCR_MAX_HEALTH);
#endif

/* Merged streams (a|b=...;merge=rtp): mcr_rule.merge -> the first-copy
 * window its legs share, one for every CPU. Kept across a restart. */
#ifdef MCR_ADOPT_DIR
BPF_TABLE_PINNED("hash", __u32, struct mcr_health, mcr_merge, MCR_MAX_MERGES, MCR_ADOPT_DIR "/mcr_merge");
#else
BPF_TABLE("hash", __u32, struct mcr_health, mcr_merge, MCR_MAX_MERGES);
#endif

/* Policers (;police=...): rule id -> its token bucket, one for every CPU.
 * Kept across a restart like the counters. */
#ifdef MCR_ADOPT_DIR
BPF_TABLE_PINNED("hash", __u32, struct mcr_police, mcr_police, MCR_MAX_POLICED, MCR_ADOPT_DIR "/mcr_police");
#else
BPF_TABLE("hash", __u32, struct mcr_police, mcr_police, MCR_MAX_POLICED);
#endif

/* The relay's own output MACs (the loop guard). */
BPF_HASH(mcr_own_macs, struct mcr_mac, __u32, MCR_MAX_PORTS);

/* What forward() learns on the way in and uses on the way out, kept here
 * rather than in a register the verifier would track (and split its paths
 * by): see bpf/health.h. */
struct mcr_scratch {
	__u32 from_end;  /* the payload's distance from the end of the frame (health) */
};
BPF_PERCPU_ARRAY(mcr_scratch, struct mcr_scratch, 1);

/* Egress: which copy of a packet comes next, for one interface used by
 * several outputs of a rule (key: the mcr_output.stat of the first such
 * output), per CPU. The control plane only zeroes it. */
struct mcr_egress_state {
	__u32 seq;   /* mcr_meta.seq of the packet whose copies are being placed */
	__u32 next;  /* rank of the next copy among that interface's outputs */
};
BPF_PERCPU_ARRAY(mcr_egress_rr, struct mcr_egress_state, MCR_MAX_RULE_OUTPUTS);

/* CPU steering (--steer-cpus): the ingress program hashes a flow to entry
 * i < mcr_config.steer_cpus of mcr_steer, a CPU id, and redirects the frame
 * to that CPU's mcr_cpumap entry, whose program (mcr_cpu_relay) forwards
 * it. A cpumap may not have more entries than the kernel has CPUs
 * (NR_CPUS): the loader passes the number of possible CPUs. */
#ifndef MCR_NR_CPUS
#define MCR_NR_CPUS 64
#endif
BPF_ARRAY(mcr_steer, __u32, MCR_MAX_CPUS);
BPF_XDP_REDIRECT_MAP("cpumap", struct mcr_cpumap_val, mcr_cpumap, MCR_NR_CPUS);

#endif /* MCR_MAPS_H */
