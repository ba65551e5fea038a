/* SPDX-License-Identifier: GPL-2.0 */
/*
 * trace.c - the loss tracer: counts frames the kernel drops *after* the
 * datapath returned XDP_REDIRECT, which the datapath's own counters can't
 * see (a veth whose peer runs no NAPI, an output that went down, a full
 * driver ring). Loaded as its own object, next to the datapath.
 *
 * Tracepoints are global: only the (input, output) interface pairs the
 * relay registered in mcr_loss are counted, and redirect errors only for
 * its own programs. Interface indexes are per network namespace, so two
 * relays in different namespaces with equal pairs of ifindexes would still
 * see each other's losses (the tracepoints carry no namespace).
 */
#include "mcr_abi.h"

BPF_PERCPU_HASH(mcr_loss, struct mcr_loss_key, struct mcr_loss, MCR_MAX_RULES);
BPF_HASH(mcr_loss_progs, __u32, __u8, 64);
BPF_HASH(mcr_loss_maps, __u32, __u8, 8);
BPF_PERCPU_ARRAY(mcr_loss_steer, __u64, 1);

TRACEPOINT_PROBE(xdp, xdp_devmap_xmit)
{
	struct mcr_loss_key key = {
		.from_ifindex = args->from_ifindex,
		.to_ifindex = args->to_ifindex,
	};
	struct mcr_loss *loss;

	if (args->drops <= 0)
		return 0;
	loss = mcr_loss.lookup(&key);
	if (loss)
		loss->xmit_drops += args->drops;
	return 0;
}

static __always_inline void redirect_error(__u32 prog_id, __u32 from, __u32 to)
{
	struct mcr_loss_key key = { .from_ifindex = from, .to_ifindex = to };
	struct mcr_loss *loss;

	if (!mcr_loss_progs.lookup(&prog_id))
		return;
	loss = mcr_loss.lookup(&key);
	if (loss)
		loss->redirect_errors++;
}

TRACEPOINT_PROBE(xdp, xdp_redirect_err)
{
	redirect_error(args->prog_id, args->ifindex, args->to_ifindex);
	return 0;
}

/* Steering: frames a full cpumap queue dropped (only this relay's cpumap,
 * by map id). */
TRACEPOINT_PROBE(xdp, xdp_cpumap_enqueue)
{
	__u32 map_id = args->map_id, zero = 0;
	__u64 *drops;

	if (!args->drops || !mcr_loss_maps.lookup(&map_id))
		return 0;
	drops = mcr_loss_steer.lookup(&zero);
	if (drops)
		*drops += args->drops;
	return 0;
}

#ifdef MCR_HAVE_REDIRECT_MAP_ERR
/* Kernels before 6.4 report map redirect failures separately. */
TRACEPOINT_PROBE(xdp, xdp_redirect_map_err)
{
	redirect_error(args->prog_id, args->ifindex, args->to_ifindex);
	return 0;
}
#endif
