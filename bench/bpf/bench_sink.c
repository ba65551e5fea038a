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
 *
 * bench_rewrite is the least a rewriting relay does, and nothing more: it
 * parses Ethernet, IPv4 (no options) and UDP to a multicast group, writes
 * the output group BENCH_OUT_GROUP (host order), its MAC and port
 * BENCH_OUT_PORT, lowers the TTL, updates both checksums and redirects
 * like bench_redirect. No rule lookup, no counter, no checksum check: the
 * floor under any relay with a rewrite, between bare redirect and mcr-xdp.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#include "bench_csum.h"

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

#ifndef BENCH_OUT_GROUP
#define BENCH_OUT_GROUP 0xef020001
#endif
#ifndef BENCH_OUT_PORT
#define BENCH_OUT_PORT 5002
#endif

/* RFC 1624: a checksum over 32 bits that change from old to new (raw
 * memory order: the one's complement sum does not care). */
static __always_inline __u32 delta32(__u32 old, __u32 new)
{
	return (__u16)~old + (__u16)~(old >> 16) + (new & 0xffff) + (new >> 16);
}

int bench_rewrite(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct udphdr *udp = (void *)(iph + 1);
	__u32 group = bpf_htonl(BENCH_OUT_GROUP), old, d;
	__u16 port = bpf_htons(BENCH_OUT_PORT), word, check;

	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || iph->ihl != 5 ||
	    iph->protocol != IPPROTO_UDP || (iph->daddr & bpf_htonl(0xf0000000)) != bpf_htonl(0xe0000000) ||
	    iph->ttl <= 1)
		return XDP_PASS;
	eth->h_dest[0] = 0x01;
	eth->h_dest[1] = 0x00;
	eth->h_dest[2] = 0x5e;
	eth->h_dest[3] = (BENCH_OUT_GROUP >> 16) & 0x7f;
	eth->h_dest[4] = (BENCH_OUT_GROUP >> 8) & 0xff;
	eth->h_dest[5] = BENCH_OUT_GROUP & 0xff;
	old = iph->daddr;
	d = delta32(old, group);
	iph->daddr = group;
	word = *(__u16 *)&iph->ttl;
	iph->ttl--;
	iph->check = ~fold((__u16)~iph->check + d + (__u16)~word + *(__u16 *)&iph->ttl);
	if (udp->check) {
		check = ~fold((__u16)~udp->check + d + (__u16)~udp->dest + port);
		udp->check = check ? check : 0xffff;
	}
	udp->dest = port;
	return bpf_redirect(BENCH_FWD_IFINDEX, 0);
}
