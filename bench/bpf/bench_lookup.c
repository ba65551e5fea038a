/* SPDX-License-Identifier: GPL-2.0 */
/*
 * bench_lookup.c - micro-benchmarks of the pieces of the datapath's
 * per-packet work, run through BPF_PROG_TEST_RUN (python -m bench lookup).
 * Each program does one thing on a fixed key, so the difference of its run
 * time and bl_empty's is that thing's cost:
 *
 *   bl_key40   the rule lookup as relay.c does it (struct mcr_rule_key)
 *   bl_key12   the same rule behind a 12-byte key (ifindex, group, port)
 *   bl_key8    ... behind an 8-byte key (group, port, 16-bit ifindex)
 *   bl_count1  one per-CPU counter update
 *   bl_count3  three, as relay.c does for a forwarded packet
 *
 * bench/lookup.py fills each hash map with as many rules as the relay is
 * timed with, the key looked up among them.
 */
#include <uapi/linux/bpf.h>

#include "mcr_abi.h"

#define BL_IFINDEX 3
#define BL_GROUP 0x010101efU /* 239.1.1.1 as it sits in the packet (little-endian load) */
#define BL_PORT 0x8913U      /* 5001, network order */

struct bl_key12 {
	__u32 ifindex;
	__u32 group;
	__u16 port;
	__u16 pad;
};

struct bl_key8 {
	__u32 group;
	__u16 port;
	__u16 ifindex;
};

BPF_HASH(bl_rules40, struct mcr_rule_key, struct mcr_rule, MCR_MAX_RULES);
BPF_HASH(bl_rules12, struct bl_key12, struct mcr_rule, MCR_MAX_RULES);
BPF_HASH(bl_rules8, struct bl_key8, struct mcr_rule, MCR_MAX_RULES);
BPF_PERCPU_ARRAY(bl_counters, struct mcr_counter, 3);

/* The verdict says whether the lookup found the rule, so a benchmark that
 * measured a miss is caught. */
static __always_inline int found(void *value)
{
	return value ? XDP_DROP : XDP_ABORTED;
}

int bl_empty(struct xdp_md *ctx)
{
	return XDP_DROP;
}

int bl_key40(struct xdp_md *ctx)
{
	struct mcr_rule_key key = {};

	key.ifindex = BL_IFINDEX;
	key.port = BL_PORT;
	key.family = MCR_FAMILY_IPV4;
	*(__u32 *)key.group = BL_GROUP;
	return found(bl_rules40.lookup(&key));
}

int bl_key12(struct xdp_md *ctx)
{
	struct bl_key12 key = { .ifindex = BL_IFINDEX, .group = BL_GROUP, .port = BL_PORT };

	return found(bl_rules12.lookup(&key));
}

int bl_key8(struct xdp_md *ctx)
{
	struct bl_key8 key = { .group = BL_GROUP, .port = BL_PORT, .ifindex = BL_IFINDEX };

	return found(bl_rules8.lookup(&key));
}

static __always_inline void bump(__u32 i, __u64 bytes)
{
	struct mcr_counter *c = bl_counters.lookup(&i);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

int bl_count1(struct xdp_md *ctx)
{
	bump(0, ctx->data_end - ctx->data);
	return XDP_DROP;
}

int bl_count3(struct xdp_md *ctx)
{
	__u64 bytes = ctx->data_end - ctx->data;

	bump(0, bytes);
	bump(1, bytes);
	bump(2, bytes);
	return XDP_DROP;
}
