/* SPDX-License-Identifier: GPL-2.0 */
/*
 * trace.c - the loss tracer: counts frames the kernel drops *after* the
 * datapath returned XDP_REDIRECT, which the datapath's own counters can't
 * see (a veth whose peer runs no NAPI, an output that went down, a full
 * driver ring). Loaded as its own object, next to the datapath.
 *
 * Tracepoints are global: only the (input, output) interface pairs the
 * relay registered in mcr_loss are counted, redirect errors only for its
 * own programs (program ids are global), steering drops only for its own
 * cpumap (map ids too). Interface indexes repeat across network
 * namespaces, and the xdp_devmap_xmit tracepoint's format carries only
 * indexes: the raw tracepoint gets the devices themselves, and a drop
 * counts only when the output device is in this relay's namespace
 * (MCR_NETNS_INUM, the inode of its /proc/self/ns/net).
 *
 * The devices are read at offsets from the running kernel's BTF
 * (MCR_OFF_*, mcr_xdp/btf.py), not through the kernel headers' structs:
 * bcc compiles against whatever headers it finds, and on a kernel that
 * ships none the linked ones are another kernel's layout.
 */
#include "mcr_abi.h"

BPF_PERCPU_HASH(mcr_loss, struct mcr_loss_key, struct mcr_loss, MCR_MAX_RULES);
BPF_HASH(mcr_loss_progs, __u32, __u8, 64);
BPF_HASH(mcr_loss_maps, __u32, __u8, 8);
BPF_PERCPU_ARRAY(mcr_loss_steer, __u64, 1);

static __always_inline __u32 netns_inum(const void *dev)
{
	const void *net = NULL;
	__u32 inum = 0;

	bpf_probe_read_kernel(&net, sizeof(net), (const char *)dev + MCR_OFF_DEV_NET);
	if (net)
		bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + MCR_OFF_NET_INUM);
	return inum;
}

/* TP_PROTO(const struct net_device *from_dev, const struct net_device
 * *to_dev, int sent, int drops, int err) */
RAW_TRACEPOINT_PROBE(xdp_devmap_xmit)
{
	const void *from = (const void *)ctx->args[0];
	const void *to = (const void *)ctx->args[1];
	int drops = (int)ctx->args[3];
	struct mcr_loss_key key = {};
	struct mcr_loss *loss;

	if (drops <= 0 || netns_inum(to) != MCR_NETNS_INUM)
		return 0;
	bpf_probe_read_kernel(&key.from_ifindex, sizeof(key.from_ifindex), (const char *)from + MCR_OFF_DEV_IFINDEX);
	bpf_probe_read_kernel(&key.to_ifindex, sizeof(key.to_ifindex), (const char *)to + MCR_OFF_DEV_IFINDEX);
	loss = mcr_loss.lookup(&key);
	if (loss)
		loss->xmit_drops += drops;
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
