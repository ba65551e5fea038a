/* SPDX-License-Identifier: GPL-2.0 */
/*
 * rewrite.h - header rewrite and incremental checksum helpers. The control
 * plane precomputes each output's checksum deltas (mcr_output), so the XDP
 * datapath only adds them: no per-packet helper calls, no loops.
 */
#ifndef MCR_REWRITE_H
#define MCR_REWRITE_H

#include "mcr_abi.h"

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'); delta holds sum(~m + m'). */
static __always_inline __u16 csum_apply(__u16 check, __u32 delta)
{
	return ~csum_fold((__u32)(__u16)~check + delta);
}

/* The IPv4 header checksum delta of the TTL going from old_ttl to new_ttl:
 * the TTL and protocol (UDP) word, loaded as the datapath loads words. */
static __always_inline __u32 ttl_delta(__u8 old_ttl, __u8 new_ttl)
{
	__u8 old_word[2] = { old_ttl, 17 }, new_word[2] = { new_ttl, 17 };
	__u16 o, n;

	__builtin_memcpy(&o, old_word, sizeof(o));
	__builtin_memcpy(&n, new_word, sizeof(n));
	return (__u16)~o + n;
}

/* The TTL an output sends with: its own (;ttl=N), or one less than hops. */
static __always_inline __u8 out_ttl(const struct mcr_output *out, __u8 hops)
{
	return out->ttl ? out->ttl : hops - 1;
}

/* The destination port an output sends to: its own, or (0: a range rule's
 * output that keeps the port) received, the port as received. */
static __always_inline __be16 out_port(const struct mcr_output *out, __be16 received)
{
	return out->port ? out->port : received;
}

/* The fields an output changes, checksums aside: Ethernet header, group,
 * port, TTL (hops: the TTL as received, so rewriting one packet for several
 * outputs in turn still lowers it by one). The XDP rewrites below add the
 * checksum deltas themselves; the TC program leaves them to the kernel's
 * csum helpers, which also keep a partial (offloaded) checksum right.
 *
 * A range rule's outputs (MCR_RULE_RANGE) send to their prefix with the
 * packet's host bits, to that group's MAC (RFC 1112 6.4, RFC 2464 7);
 * a unicast receiver (MCR_OUT_UNICAST, in a rule for any port or a
 * source range: no host bits) to its next hop's, as written.
 * port: the destination port as received (out_port, as hops for out_ttl). */
static __always_inline void write_fields_ipv4(void *eth, struct iphdr *iph, struct udphdr *udp,
					      const struct mcr_rule *rule, const struct mcr_output *out,
					      __u8 hops, __be16 port)
{
	__u8 *mac = eth;

	__builtin_memcpy(eth, out->eth, sizeof(out->eth));
	if (rule->flags & MCR_RULE_RANGE) {
		iph->daddr = *(const __be32 *)out->group | (iph->daddr & *(const __be32 *)rule->host_mask);
		if (!(out->flags & MCR_OUT_UNICAST)) {
			__builtin_memcpy(mac + 3, (__u8 *)&iph->daddr + 1, 3);
			mac[3] &= 0x7f;
		}
	} else {
		iph->daddr = *(const __be32 *)out->group;
	}
	iph->ttl = out_ttl(out, hops);
	udp->dest = out_port(out, port);
}

static __always_inline void write_fields_ipv6(void *eth, struct ipv6hdr *ip6h, struct udphdr *udp,
					      const struct mcr_rule *rule, const struct mcr_output *out,
					      __u8 hops, __be16 port)
{
	__u32 *daddr = (__u32 *)&ip6h->daddr;
	const __u32 *group = (const __u32 *)out->group, *keep = (const __u32 *)rule->host_mask;
	__u8 *mac = eth;
	int i;

	__builtin_memcpy(eth, out->eth, sizeof(out->eth));
	if (rule->flags & MCR_RULE_RANGE) {
#pragma unroll
		for (i = 0; i < 4; i++)
			daddr[i] = group[i] | (daddr[i] & keep[i]);
		if (!(out->flags & MCR_OUT_UNICAST))
			__builtin_memcpy(mac + 2, &daddr[3], 4);
	} else {
		__builtin_memcpy(&ip6h->daddr, out->group, sizeof(out->group));
	}
	ip6h->hop_limit = out_ttl(out, hops);
	udp->dest = out_port(out, port);
}

/* The UDP checksum delta of one output: a range rule's covers the prefix
 * only, and the port's change is added here. */
static __always_inline __u32 l4_delta(struct udphdr *udp, const struct mcr_rule *rule,
				      const struct mcr_output *out)
{
	__u32 delta = out->l4_csum_delta;

	if ((rule->flags & MCR_RULE_RANGE) && out->port)
		delta += (__u16)~udp->dest + out->port;
	return delta;
}

/* Rewrite an IPv4/UDP packet for one output. The caller has checked the
 * TTL (or the output sets its own). A zero UDP checksum means "none" in
 * IPv4 and stays zero; a computed zero is sent as 0xffff (RFC 768). */
static __always_inline void rewrite_ipv4(struct ethhdr *eth, struct iphdr *iph,
					 struct udphdr *udp, const struct mcr_rule *rule,
					 const struct mcr_output *out)
{
	__u16 check;
	__u32 delta = out->ip_csum_delta;

	if (out->ttl)
		delta += ttl_delta(iph->ttl, out->ttl);
	iph->check = csum_apply(iph->check, delta);
	if (udp->check) {
		check = csum_apply(udp->check, l4_delta(udp, rule, out));
		udp->check = check ? check : 0xffff;
	}
	write_fields_ipv4(eth, iph, udp, rule, out, iph->ttl, udp->dest);
}

/* Rewrite an IPv6/UDP packet for one output. IPv6 has no header checksum;
 * the UDP checksum is mandatory and always updated (the caller refuses a
 * zero one). */
static __always_inline void rewrite_ipv6(struct ethhdr *eth, struct ipv6hdr *ip6h,
					 struct udphdr *udp, const struct mcr_rule *rule,
					 const struct mcr_output *out)
{
	__u16 check;

	check = csum_apply(udp->check, l4_delta(udp, rule, out));
	udp->check = check ? check : 0xffff;
	write_fields_ipv6(eth, ip6h, udp, rule, out, ip6h->hop_limit, udp->dest);
}

#endif /* MCR_REWRITE_H */
