/* SPDX-License-Identifier: GPL-2.0 */
/*
 * parsing.h - cursor-style header parsers. Each takes the cursor, checks the
 * header fits before data_end, advances past it and returns a pointer to it
 * (NULL when the frame is too short). The caller decides what a NULL means.
 */
#ifndef MCR_PARSING_H
#define MCR_PARSING_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>

struct cursor {
	void *pos;
	void *end;
};

struct mcr_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

#define MCR_IP_MF 0x2000
#define MCR_IP_OFFSET 0x1fff

static __always_inline void *cursor_take(struct cursor *c, __u32 len)
{
	void *hdr = c->pos;

	if (c->pos + len > c->end)
		return NULL;
	c->pos += len;
	return hdr;
}

/* Ethernet with at most one 802.1Q/802.1ad tag. Sets *proto (network order)
 * and *tagged; returns NULL when truncated. */
static __always_inline struct ethhdr *parse_eth(struct cursor *c, __be16 *proto, int *tagged)
{
	struct ethhdr *eth = cursor_take(c, sizeof(*eth));
	struct mcr_vlan_hdr *vlan;

	if (!eth)
		return NULL;
	*proto = eth->h_proto;
	*tagged = 0;
	if (*proto == bpf_htons(ETH_P_8021Q) || *proto == bpf_htons(ETH_P_8021AD)) {
		vlan = cursor_take(c, sizeof(*vlan));
		if (!vlan)
			return NULL;
		*proto = vlan->encap_proto;
		*tagged = 1;
	}
	return eth;
}

/* IPv4 header including options. NULL when truncated or not a sane IPv4
 * header (version, IHL, total length beyond the frame). */
static __always_inline struct iphdr *parse_ipv4(struct cursor *c)
{
	struct iphdr *iph = c->pos;
	__u32 hlen;

	if ((void *)(iph + 1) > c->end)
		return NULL;
	if (iph->version != 4 || iph->ihl < 5)
		return NULL;
	hlen = iph->ihl * 4;
	/* Compared as lengths: 6.1's verifier refuses pointer + unbounded
	 * length ("math between pkt pointer and register with unbounded min"). */
	if (bpf_ntohs(iph->tot_len) > c->end - c->pos || bpf_ntohs(iph->tot_len) < hlen)
		return NULL;
	if (!cursor_take(c, hlen))
		return NULL;
	return iph;
}

/* Fixed IPv6 header. NULL when truncated, not version 6, or the payload
 * length runs past the frame. */
static __always_inline struct ipv6hdr *parse_ipv6(struct cursor *c)
{
	struct ipv6hdr *ip6h = cursor_take(c, sizeof(*ip6h));

	if (!ip6h || ip6h->version != 6)
		return NULL;
	if (bpf_ntohs(ip6h->payload_len) > c->end - c->pos)
		return NULL;
	return ip6h;
}

/* RFC 1071: a valid IPv4 header, options included, sums to 0xffff in
 * ones' complement. The fixed 20 bytes are summed unrolled (a few ns); the
 * options word by word, each checked against end (unrolled too, without a
 * break, which clang could not unroll). */
static __always_inline int ipv4_checksum_ok(struct iphdr *iph, void *end)
{
	__u16 *w = (__u16 *)iph;
	__u32 sum = 0, words;
	int i;

	if ((void *)(iph + 1) > end)
		return 0;
	words = iph->ihl * 2;
#pragma unroll
	for (i = 0; i < 10; i++)
		sum += w[i];
#pragma unroll
	for (i = 10; i < 30; i++) {
		if (i < words) {
			if ((void *)(w + i + 1) > end)
				return 0;
			sum += w[i];
		}
	}
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

/* ipv4_checksum_ok for a header without options (IHL 5), the usual one:
 * five 32-bit words summed in 64 bits, then folded (RFC 1071 allows any
 * word size: the carries come back in the folds). */
static __always_inline int ipv4_checksum_ok_short(struct iphdr *iph, void *end)
{
	__u32 *w = (__u32 *)iph;
	__u64 sum;

	if ((void *)(iph + 1) > end)
		return 0;
	sum = (__u64)w[0] + w[1] + w[2] + w[3] + w[4];
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

static __always_inline struct udphdr *parse_udp(struct cursor *c)
{
	return cursor_take(c, sizeof(struct udphdr));
}

#endif /* MCR_PARSING_H */
