/* SPDX-License-Identifier: GPL-2.0 */
/*
 * trace.c - the loss tracer: counts frames the kernel drops *after* the
 * datapath returned XDP_REDIRECT, which the datapath's own counters can't
 * see (a veth whose peer runs no NAPI, an output that went down, a full
 * driver ring). Its own object, next to the datapath, built ahead of time
 * with it (mcr_xdp/objfile.py) and loaded by libbpf (mcr_xdp/trace.py).
 *
 * Tracepoints are global: only the (input, output) interface pairs the
 * relay registered in mcr_loss are counted, redirect errors only for its
 * own programs (program ids are global), steering drops only for its own
 * cpumap (map ids too). Interface indexes repeat across network
 * namespaces, and the xdp_devmap_xmit tracepoint's format carries only
 * indexes: the raw tracepoint gets the devices themselves, and a drop
 * counts only when the output device is in this relay's namespace
 * (netns_inum, the inode of its /proc/self/ns/net).
 *
 * What differs between kernels is read at load time and set in
 * mcr_trace_cfg (read-only data: the verifier sees constants): the
 * devices' struct offsets from the running kernel's BTF (mcr_xdp/btf.py),
 * the tracepoints' field offsets from their tracefs formats.
 */
#include "mcr_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct mcr_loss_key);
	__type(value, struct mcr_loss);
	__uint(max_entries, MCR_MAX_RULES);
} mcr_loss SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 64);
} mcr_loss_progs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 8);
} mcr_loss_maps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} mcr_loss_steer SEC(".maps");

/* Set by the loader (mcr_xdp/trace.py TraceConfig mirrors it). */
struct mcr_trace_cfg {
	__u32 netns_inum;
	__u32 off_dev_ifindex;  /* struct net_device: ifindex */
	__u32 off_dev_net;      /* struct net_device: nd_net.net */
	__u32 off_net_inum;     /* struct net: ns.inum */
	__u32 err_prog_id;      /* xdp_redirect_err (and _map_err): prog_id, ifindex, to_ifindex */
	__u32 err_ifindex;
	__u32 err_to_ifindex;
	__u32 enq_map_id;       /* xdp_cpumap_enqueue: map_id, drops */
	__u32 enq_drops;
};
const volatile struct mcr_trace_cfg mcr_trace_cfg = {};

static __always_inline __u32 field(const void *ctx, __u32 offset)
{
	__u32 value = 0;

	bpf_probe_read_kernel(&value, sizeof(value), (const char *)ctx + offset);
	return value;
}

static __always_inline __u32 netns_inum(const void *dev)
{
	const void *net = NULL;
	__u32 inum = 0;

	bpf_probe_read_kernel(&net, sizeof(net), (const char *)dev + mcr_trace_cfg.off_dev_net);
	if (net)
		bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + mcr_trace_cfg.off_net_inum);
	return inum;
}

/* TP_PROTO(const struct net_device *from_dev, const struct net_device
 * *to_dev, int sent, int drops, int err) */
SEC("raw_tracepoint/xdp_devmap_xmit")
int mcr_trace_xmit(struct bpf_raw_tracepoint_args *ctx)
{
	const void *from = (const void *)ctx->args[0];
	const void *to = (const void *)ctx->args[1];
	int drops = (int)ctx->args[3];
	struct mcr_loss_key key = {};
	struct mcr_loss *loss;

	if (drops <= 0 || netns_inum(to) != mcr_trace_cfg.netns_inum)
		return 0;
	key.from_ifindex = field(from, mcr_trace_cfg.off_dev_ifindex);
	key.to_ifindex = field(to, mcr_trace_cfg.off_dev_ifindex);
	loss = bpf_map_lookup_elem(&mcr_loss, &key);
	if (loss)
		loss->xmit_drops += drops;
	return 0;
}

static __always_inline int redirect_error(const void *ctx)
{
	__u32 prog_id = field(ctx, mcr_trace_cfg.err_prog_id);
	struct mcr_loss_key key = {
		.from_ifindex = field(ctx, mcr_trace_cfg.err_ifindex),
		.to_ifindex = field(ctx, mcr_trace_cfg.err_to_ifindex),
	};
	struct mcr_loss *loss;

	if (!bpf_map_lookup_elem(&mcr_loss_progs, &prog_id))
		return 0;
	loss = bpf_map_lookup_elem(&mcr_loss, &key);
	if (loss)
		loss->redirect_errors++;
	return 0;
}

SEC("tracepoint/xdp/xdp_redirect_err")
int mcr_trace_redirect_err(void *ctx)
{
	return redirect_error(ctx);
}

/* Kernels before 6.4 report map redirect failures separately (the loader
 * leaves this one out where the tracepoint is gone). */
SEC("tracepoint/xdp/xdp_redirect_map_err")
int mcr_trace_redirect_map_err(void *ctx)
{
	return redirect_error(ctx);
}

/* Steering: frames a full cpumap queue dropped (only this relay's cpumap,
 * by map id). */
SEC("tracepoint/xdp/xdp_cpumap_enqueue")
int mcr_trace_enqueue(void *ctx)
{
	__u32 map_id = field(ctx, mcr_trace_cfg.enq_map_id), zero = 0;
	__u32 dropped = field(ctx, mcr_trace_cfg.enq_drops);
	__u64 *drops;

	if (!dropped || !bpf_map_lookup_elem(&mcr_loss_maps, &map_id))
		return 0;
	drops = bpf_map_lookup_elem(&mcr_loss_steer, &zero);
	if (drops)
		*drops += dropped;
	return 0;
}
