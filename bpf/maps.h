/* SPDX-License-Identifier: GPL-2.0 */
/*
 * maps.h - map definitions, BPF side only. Names must match the MCR_MAP_*
 * strings in mcr_abi.h (bcc needs bare identifiers here).
 */
#ifndef MCR_MAPS_H
#define MCR_MAPS_H

#include "mcr_abi.h"

/*
 * The datapath is built two ways from these same sources: by bcc at start
 * (its table macros, its map.lookup() calls), or ahead of time by clang
 * -target bpf as an object libbpf loads (MCR_OBJECT: mcr_xdp/objfile.py,
 * which also turns the map calls into helper calls). The maps are declared
 * once, with these macros, for both.
 */
#ifdef MCR_OBJECT
#define MCR_MAP(kind, k, v, name, n, flags) \
	struct { \
		__uint(type, BPF_MAP_TYPE_##kind); \
		__type(key, k); \
		__type(value, v); \
		__uint(max_entries, n); \
		__uint(map_flags, flags); \
	} name SEC(".maps")
#define MCR_REDIRECT_MAP(kind, v, name, n) MCR_MAP(kind, __u32, v, name, n, 0)
/* A pinned map: the loader gives the object the killed relay's map (by its
 * fd) instead of making one. */
#define MCR_PINNED_MAP(kind, k, v, name, n) MCR_MAP(kind, k, v, name, n, 0)
/* The control plane makes the inner devmaps (maps.py): the template here
 * only gives the outer map their shape. */
#define MCR_DEVMAP_ARRAY(name, inner, n) \
	struct { \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); \
		__uint(key_size, sizeof(__u32)); \
		__uint(max_entries, n); \
		__array(values, struct inner##_def); \
	} name SEC(".maps")
#define MCR_DEVMAP_TEMPLATE(v, name, n) \
	struct name##_def { \
		__uint(type, BPF_MAP_TYPE_DEVMAP); \
		__type(key, __u32); \
		__type(value, v); \
		__uint(max_entries, n); \
	}
#else
#define MCR_KIND_HASH "hash"
#define MCR_KIND_ARRAY "array"
#define MCR_KIND_PERCPU_ARRAY "percpu_array"
#define MCR_KIND_LPM_TRIE "lpm_trie"
#define MCR_KIND_DEVMAP "devmap"
#define MCR_KIND_CPUMAP "cpumap"
#define MCR_MAP(kind, k, v, name, n, flags) BPF_F_TABLE(MCR_KIND_##kind, k, v, name, n, flags)
#define MCR_REDIRECT_MAP(kind, v, name, n) BPF_XDP_REDIRECT_MAP(MCR_KIND_##kind, v, name, n)
#define MCR_PINNED_MAP(kind, k, v, name, n) \
	BPF_TABLE_PINNED(MCR_KIND_##kind, k, v, name, n, MCR_ADOPT_DIR "/" #name)
#define MCR_DEVMAP_ARRAY(name, inner, n) BPF_ARRAY_OF_MAPS(name, #inner, n)
#define MCR_DEVMAP_TEMPLATE(v, name, n) BPF_XDP_REDIRECT_MAP("devmap", v, name, n)
#endif

/* The compiler forgets what it knows of var: a bound check right after it
 * stays where the verifier needs it (libbpf's barrier_var). */
#define MCR_OPAQUE(var) asm volatile("" : "+r"(var))

/* A program, and the section that tells libbpf its type. */
#ifdef MCR_OBJECT
#define MCR_PROG(section) SEC(section)
#else
#define MCR_PROG(section)
#endif

/* A map a restarted relay takes over from the killed one (MCR_ADOPT_DIR,
 * its pin directory; bcc opens the pins, libbpf is given their fds). */
#if defined(MCR_ADOPT_DIR) || defined(MCR_OBJECT)
#define MCR_KEPT_MAP(kind, k, v, name, n) MCR_PINNED_MAP(kind, k, v, name, n)
#else
#define MCR_KEPT_MAP(kind, k, v, name, n) MCR_MAP(kind, k, v, name, n, 0)
#endif

/* Allocated per entry (no preallocation): 65,536 rules of ~900 bytes
 * would take 60 MB before the first rule. */
MCR_MAP(HASH, struct mcr_rule_key, struct mcr_rule, mcr_rules, MCR_MAX_RULES, BPF_F_NO_PREALLOC);
/* The exact rules' fast path (mcr_abi.h): ~4 MB for 4,096 copies. */
MCR_MAP(ARRAY, __u32, __u32, mcr_fast_index, MCR_FAST_BUCKETS, 0);
MCR_MAP(ARRAY, __u32, struct mcr_fast_rule, mcr_fast_rules, MCR_FAST_RULES, 0);
MCR_MAP(LPM_TRIE, struct mcr_range_key, struct mcr_rule, mcr_ranges, MCR_MAX_RULES, BPF_F_NO_PREALLOC);
MCR_MAP(ARRAY, __u32, struct mcr_config, mcr_config, 1, 0);

/* One output per slot for single-output rules. bcc's BPF_DEVMAP has a
 * 4-byte value; this form carries a program slot too (mcr_egress, as every
 * output does: see struct mcr_meta). */
MCR_REDIRECT_MAP(DEVMAP, struct mcr_devmap_val, mcr_tx_ports, MCR_MAX_PORTS);
/* The same slots without the program, for frames the native ingress
 * program rewrote (one output): the kernel then runs no program per frame
 * at the flush (~55 ns a frame, docs/benchmarks.md). Only slots of
 * interfaces no fan-out rule uses are here (the control plane keeps it so:
 * backends/bpf.py, Direct slots). */
MCR_REDIRECT_MAP(DEVMAP, struct mcr_devmap_val, mcr_tx_direct, MCR_MAX_PORTS);

/* Fan-out: rule id -> a devmap of that rule's outputs, each entry carrying
 * the egress program mcr_egress. The control plane creates the inner maps
 * like this template. */
MCR_DEVMAP_TEMPLATE(struct mcr_devmap_val, mcr_fanout_inner, MCR_MAX_OUTPUTS);
MCR_DEVMAP_ARRAY(mcr_fanout, mcr_fanout_inner, MCR_MAX_RULES);

/* The counters. A relay started again after its process was killed
 * (same instance, same ABI version) is compiled with MCR_ADOPT_DIR, the
 * killed relay's pin directory, and uses these very maps: its counters go
 * on from where they were, not one packet lost in between (the old program
 * counts into them until the new one replaces it). */
MCR_KEPT_MAP(PERCPU_ARRAY, __u32, struct mcr_counter, mcr_verdicts, MCR_V_MAX);
MCR_KEPT_MAP(PERCPU_ARRAY, __u32, struct mcr_rule_counters, mcr_rule_stats, MCR_MAX_RULES);
MCR_KEPT_MAP(PERCPU_ARRAY, __u32, struct mcr_counter, mcr_output_stats, MCR_MAX_RULE_OUTPUTS);

/* Stream health (;health=...): rule id -> its tracking state, one entry for
 * every CPU (a lock in each). Preallocated: 256 entries of ~20 KiB. Kept
 * across a restart like the counters. */
MCR_KEPT_MAP(HASH, __u32, struct mcr_health, mcr_health, MCR_MAX_HEALTH);

/* Merged streams (a|b=...;merge=rtp): mcr_rule.merge -> the first-copy
 * window its legs share, one for every CPU. Kept across a restart. */
MCR_KEPT_MAP(HASH, __u32, struct mcr_health, mcr_merge, MCR_MAX_MERGES);

/* Policers (;police=...): rule id -> its token bucket, one for every CPU.
 * Kept across a restart like the counters. */
MCR_KEPT_MAP(HASH, __u32, struct mcr_police, mcr_police, MCR_MAX_POLICED);

/* The relay's own output MACs (the loop guard), and their filter (mcr_abi.h). */
MCR_MAP(HASH, struct mcr_mac, __u32, mcr_own_macs, MCR_MAX_PORTS, 0);
MCR_MAP(ARRAY, __u32, __u32, mcr_mac_filter, MCR_MAC_FILTER, 0);

/* What forward() learns on the way in and uses on the way out, kept here
 * rather than in a register the verifier would track (and split its paths
 * by): see bpf/health.h. */
struct mcr_scratch {
	__u32 from_end;  /* the payload's distance from the end of the frame (health) */
};
MCR_MAP(PERCPU_ARRAY, __u32, struct mcr_scratch, mcr_scratch, 1, 0);

/* Egress: which copy of a packet comes next, for one interface used by
 * several outputs of a rule (key: the mcr_output.stat of the first such
 * output), per CPU. The control plane only zeroes it. */
struct mcr_egress_state {
	__u32 seq;   /* mcr_meta.seq of the packet whose copies are being placed */
	__u32 next;  /* rank of the next copy among that interface's outputs */
};
MCR_MAP(PERCPU_ARRAY, __u32, struct mcr_egress_state, mcr_egress_rr, MCR_MAX_RULE_OUTPUTS, 0);

/* CPU steering (--steer-cpus): the ingress program hashes a flow to entry
 * i < mcr_config.steer_cpus of mcr_steer, a CPU id, and redirects the frame
 * to that CPU's mcr_cpumap entry, whose program (mcr_cpu_relay) forwards
 * it. A cpumap may not have more entries than the kernel has CPUs
 * (NR_CPUS): the loader passes the number of possible CPUs. */
#ifndef MCR_NR_CPUS
#define MCR_NR_CPUS 64
#endif
MCR_MAP(ARRAY, __u32, __u32, mcr_steer, MCR_MAX_CPUS, 0);
MCR_REDIRECT_MAP(CPUMAP, struct mcr_cpumap_val, mcr_cpumap, MCR_NR_CPUS);

#endif /* MCR_MAPS_H */
