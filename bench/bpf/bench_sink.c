/* SPDX-License-Identifier: GPL-2.0 */
/*
 * bench_sink.c - XDP counting sink for the benchmarks: counts IPv4/UDP
 * multicast frames and drops every frame, so the end of the chain costs
 * almost nothing and is never what limits a measurement. Attached at the
 * relay's input it is also the ceiling "relay" (XDP_DROP at the input).
 *
 * Only IPv4/UDP to a multicast group is counted, so the host's own IGMP,
 * ARP and IPv6 neighbour traffic on the veth does not inflate the figures.
 *
 * bench_redirect is the other reference "relay": every frame straight out
 * of BENCH_FWD_IFINDEX (-D at compile time), no parsing, no rewrite. It
 * prices the second veth hop every relay pays, so the gap between it and
 * mcr-xdp is what mcr-xdp's own processing costs.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>

struct sink_counter {
	__u64 packets;
	__u64 bytes;
};

BPF_PERCPU_ARRAY(sink_count, struct sink_counter, 1);

int bench_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct sink_counter *c;
	__u32 zero = 0;

	if ((void *)(iph + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		goto out;
	if (iph->protocol != IPPROTO_UDP || (iph->daddr & bpf_htonl(0xf0000000)) != bpf_htonl(0xe0000000))
		goto out;
	c = sink_count.lookup(&zero);
	if (c) {
		c->packets++;
		c->bytes += end - data;
	}
out:
	return XDP_DROP;
}

#ifndef BENCH_FWD_IFINDEX
#define BENCH_FWD_IFINDEX 0
#endif

int bench_redirect(struct xdp_md *ctx)
{
	return bpf_redirect(BENCH_FWD_IFINDEX, 0);
}
