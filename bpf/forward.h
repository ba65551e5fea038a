/* SPDX-License-Identifier: GPL-2.0 */
/*
 * forward.h - what every datapath program does the same way, whatever its
 * hook: parse a frame into struct pkt, find its rule, count. Used by the XDP
 * programs (relay.c) and the TC program (tc_relay.c); the helpers take plain
 * data pointers and an ifindex, not a context, so both hooks share them.
 */
#ifndef MCR_FORWARD_H
#define MCR_FORWARD_H

#include <uapi/linux/in.h>

#include "mcr_abi.h"
#include "maps.h"
#include "parsing.h"
#include "rewrite.h"

#define VLAN_HLEN 4
#define MCR_MATCH MCR_V_MAX /* parse_packet: multicast UDP, key filled in */

struct pkt {
	struct ethhdr *eth;
	struct iphdr *iph;      /* one of iph / ip6h is set */
	struct ipv6hdr *ip6h;
	struct udphdr *udp;
	void *end;              /* of the frame: bounds the IPv4 options' checksum */
	int tagged;
	int unicast;            /* to a unicast address (a unicast input's rule, if any) */
	__u8 hops;              /* TTL or hop limit */
	struct mcr_rule_key key;
};

/* Parse up to UDP and fill in the lookup key (source left zero). Returns
 * MCR_MATCH, or the PASS verdict that says why the packet is not ours.
 * unicast: a unicast destination may be ours (a unicast input's rule). */
static __always_inline __u32 parse_headers(void *data, void *data_end, __u32 ifindex, struct pkt *p, int unicast)
{
	struct cursor cur = { .pos = data, .end = data_end };
	__be16 proto;
	__u32 ulen;

	p->end = data_end;
	p->eth = parse_eth(&cur, &proto, &p->tagged);
	if (!p->eth)
		return MCR_V_PASS_MALFORMED;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = parse_ipv4(&cur);

		if (!iph)
			return MCR_V_PASS_MALFORMED;
		if ((iph->daddr & bpf_htonl(0xf0000000)) != bpf_htonl(0xe0000000)) {
			if (!unicast)
				return MCR_V_PASS_NOT_MULTICAST;
			p->unicast = 1;
		}
		if (iph->frag_off & bpf_htons(MCR_IP_MF | MCR_IP_OFFSET))
			return MCR_V_PASS_FRAGMENT;
		if (iph->protocol != IPPROTO_UDP)
			return MCR_V_PASS_NOT_UDP;
		p->iph = iph;
		p->hops = iph->ttl;
		p->key.family = MCR_FAMILY_IPV4;
		*(__be32 *)p->key.group = iph->daddr;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = parse_ipv6(&cur);

		if (!ip6h)
			return MCR_V_PASS_MALFORMED;
		if (ip6h->daddr.s6_addr[0] != 0xff) {
			if (!unicast)
				return MCR_V_PASS_NOT_MULTICAST;
			p->unicast = 1;
		}
		if (ip6h->nexthdr != IPPROTO_UDP)
			return ip6h->nexthdr == IPPROTO_TCP || ip6h->nexthdr == IPPROTO_ICMPV6 ?
			       MCR_V_PASS_NOT_UDP : MCR_V_PASS_IPV6_EXT;
		p->ip6h = ip6h;
		p->hops = ip6h->hop_limit;
		p->key.family = MCR_FAMILY_IPV6;
		__builtin_memcpy(p->key.group, &ip6h->daddr, sizeof(p->key.group));
	} else {
		return MCR_V_PASS_NOT_IP;
	}
	p->udp = parse_udp(&cur);
	if (!p->udp)
		return MCR_V_PASS_MALFORMED;
	/* The UDP length covers its header and stays inside the IP packet (not
	 * in Ethernet padding, not past it): receivers drop a datagram that
	 * lies about it, and fan-out would multiply it. */
	ulen = bpf_ntohs(p->udp->len);
	if (ulen < sizeof(struct udphdr))
		return MCR_V_PASS_MALFORMED;
	if (p->iph && ulen > (__u32)bpf_ntohs(p->iph->tot_len) - p->iph->ihl * 4)
		return MCR_V_PASS_MALFORMED;
	if (p->ip6h && ulen > bpf_ntohs(p->ip6h->payload_len))
		return MCR_V_PASS_MALFORMED;
	/* IPv6 requires a UDP checksum: a zero one can't be updated, and the
	 * receiving stack would drop the packet anyway. */
	if (p->ip6h && !p->udp->check)
		return MCR_V_PASS_MALFORMED;
	p->key.ifindex = ifindex;
	p->key.port = p->udp->dest;
	return MCR_MATCH;
}

/* parse_headers, with every unicast packet that is not a rule's candidate
 * counted as what it is to the relay: not multicast, the host's. */
static __always_inline __u32 parse_packet(void *data, void *data_end, __u32 ifindex, struct pkt *p, int unicast)
{
	__u32 verdict = parse_headers(data, data_end, ifindex, p, unicast);

	return p->unicast && verdict != MCR_MATCH ? MCR_V_PASS_NOT_MULTICAST : verdict;
}

static __always_inline struct mcr_config *config(void)
{
	__u32 zero = 0;

	return mcr_config.lookup(&zero);
}

/* Whether a unicast packet can be a rule's (a unicast input exists). */
static __always_inline int unicast_rules(struct mcr_config *cfg)
{
	return cfg && cfg->unicast_rules;
}

static __always_inline void copy_source(__u8 *to, struct pkt *p)
{
	if (p->iph)
		*(__be32 *)to = p->iph->saddr;
	else if (p->ip6h)
		__builtin_memcpy(to, &p->ip6h->saddr, 16);
}

/* mcr_fast_bucket (mcr_abi.h): the Horner sum written as ten independent
 * products with the powers of MCR_FAST_MUL, which the compiler folds. */
#define MCR_M1 ((__u32)MCR_FAST_MUL)
#define MCR_M2 (MCR_M1 * MCR_M1)
#define MCR_M4 (MCR_M2 * MCR_M2)
#define MCR_M8 (MCR_M4 * MCR_M4)

/* The end of mcr_fast_bucket: mix the sum's bits, take a bucket. */
static __always_inline __u32 fast_mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	return h & (MCR_FAST_BUCKETS - 1);
}

static __always_inline __u32 fast_bucket(const struct mcr_rule_key *k)
{
	const __u32 *w = (const __u32 *)k;

	return fast_mix(w[0] * (MCR_M8 * MCR_M2) + w[1] * (MCR_M8 * MCR_M1) + w[2] * MCR_M8 +
			w[3] * (MCR_M4 * MCR_M2 * MCR_M1) + w[4] * (MCR_M4 * MCR_M2) + w[5] * (MCR_M4 * MCR_M1) +
			w[6] * MCR_M4 + w[7] * (MCR_M2 * MCR_M1) + w[8] * MCR_M2 + w[9] * MCR_M1);
}

/* Word by word: the key on the stack is only 4-byte aligned. */
static __always_inline int same_key(const struct mcr_rule_key *a, const struct mcr_rule_key *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	__u32 diff = 0;
	int i;

#pragma unroll
	for (i = 0; i < (int)(sizeof(*a) / sizeof(__u32)); i++)
		diff |= x[i] ^ y[i];
	return !diff;
}

/* The copy mcr_fast_index points bucket at, or NULL: with *none set, no
 * exact rule has a key in the bucket. */
static __always_inline struct mcr_fast_rule *fast_entry(__u32 bucket, int *none)
{
	__u32 entry, *index;

	*none = 0;
	index = mcr_fast_index.lookup(&bucket);
	if (!index)
		return NULL;
	entry = *index;
	if (!entry) {
		*none = 1;
		return NULL;
	}
	entry--;
	return mcr_fast_rules.lookup(&entry);
}

/* The fast path's copy of key's rule (mcr_abi.h), or NULL: with *none
 * set, no exact rule has this key; else it may have one in mcr_rules. */
static __always_inline struct mcr_rule *fast_lookup(const struct mcr_rule_key *key, int *none)
{
	struct mcr_fast_rule *fast = fast_entry(fast_bucket(key), none);

	if (fast && same_key(&fast->key, key))
		return &fast->rule;
	return NULL;
}

/* Word 1 of an IPv4 key (port, family, pad0) as fast_bucket loads it. */
static __always_inline __u32 ipv4_key_word(__be16 port)
{
	union {
		struct {
			__be16 port;
			__u8 family;
			__u8 pad0;
		} f;
		__u32 w;
	} u = { .f = { port, MCR_FAMILY_IPV4, 0 } };

	return u.w;
}

/* fast_lookup of an IPv4 key given by its four words that can be non-zero
 * (ifindex, port and family, the source's first, the group's first): the
 * others add nothing to the bucket's sum, and an IPv4 key in the fast path
 * has them zero (mcr_abi.h), so they are not compared either. */
static __always_inline struct mcr_rule *fast_lookup_ipv4(__u32 ifindex, __u32 word1, __be32 source, __be32 group,
							 int *none)
{
	struct mcr_fast_rule *fast;
	const __u32 *w;

	fast = fast_entry(fast_mix(ifindex * (MCR_M8 * MCR_M2) + word1 * (MCR_M8 * MCR_M1) + source * MCR_M8 +
				   group * MCR_M4), none);
	if (!fast)
		return NULL;
	w = (const __u32 *)&fast->key;
	if (((w[0] ^ ifindex) | (w[1] ^ word1) | (w[2] ^ source) | (w[6] ^ group)) == 0)
		return &fast->rule;
	return NULL;
}

/* The longest range rule for the packet's input, group and source, with
 * port (the packet's, or 0: the rules for any port). */
static __always_inline struct mcr_rule *lookup_range(struct pkt *p, __u16 port)
{
	struct mcr_range_key k = {};

	k.prefixlen = MCR_RANGE_FIXED_BITS + 8 * (sizeof(k.group) + sizeof(k.source));
	k.ifindex = p->key.ifindex;
	k.family = p->key.family;
	k.port = port;
	__builtin_memcpy(k.group, p->key.group, sizeof(k.group));
	copy_source(k.source, p);
	return mcr_ranges.lookup(&k);
}

/* The first of: exact (source, group, port), exact (group, port), the
 * longest range rule for the port, the longest range rule for any port.
 * Each lookup past the second is skipped while no rule of its kind exists,
 * so exact rules cost what they did before ranges. */
static __always_inline struct mcr_rule *lookup_rule(struct mcr_config *cfg, struct pkt *p)
{
	struct mcr_rule *rule;

	if (cfg && cfg->ssm_rules) {
		copy_source(p->key.source, p);
		rule = mcr_rules.lookup(&p->key);
		__builtin_memset(p->key.source, 0, sizeof(p->key.source));
		if (rule)
			return rule;
	}
	rule = mcr_rules.lookup(&p->key);
	if (rule || !cfg)
		return rule;
	if (cfg->range_rules) {
		rule = lookup_range(p, p->key.port);
		if (rule)
			return rule;
	}
	if (cfg->any_port_rules)
		return lookup_range(p, 0);
	return NULL;
}

/* The rule of a parsed packet (verdict MCR_MATCH), or NULL with the
 * verdict that says why not: the start every ingress program shares. The
 * IPv4 header checksum is verified here, after the lookup, so traffic the
 * relay does not relay never pays for it. */
static __always_inline struct mcr_rule *match_rule(struct mcr_config *cfg, struct pkt *p, __u32 *verdict)
{
	struct mcr_rule *rule;

	if (*verdict != MCR_MATCH)
		return NULL;
	rule = lookup_rule(cfg, p);
	if (!rule) {
		*verdict = p->unicast ? MCR_V_PASS_NOT_MULTICAST : MCR_V_PASS_NO_RULE;
		return NULL;
	}
	if (p->iph && !ipv4_checksum_ok(p->iph, p->end)) {
		*verdict = MCR_V_PASS_MALFORMED;
		return NULL;
	}
	return rule;
}

/* The header fields of one output, written in place (eth: where the new
 * Ethernet header goes). Checksums are the caller's: XDP adds the deltas
 * itself (rewrite_ipv4/6), TC leaves them to the kernel's helpers. The
 * TTL and port as received are p->hops and p->key.port. */
static __always_inline void rewrite_fields(struct pkt *p, void *eth, const struct mcr_rule *rule,
					   const struct mcr_output *out)
{
	if (p->iph)
		write_fields_ipv4(eth, p->iph, p->udp, rule, out, p->hops, p->key.port);
	else if (p->ip6h)
		write_fields_ipv6(eth, p->ip6h, p->udp, rule, out, p->hops, p->key.port);
}

/* Fields and checksums, from the original headers (XDP). */
static __always_inline void rewrite(struct pkt *p, void *eth, const struct mcr_rule *rule,
				    const struct mcr_output *out)
{
	if (p->iph)
		rewrite_ipv4(eth, p->iph, p->udp, rule, out);
	else if (p->ip6h)
		rewrite_ipv6(eth, p->ip6h, p->udp, rule, out);
}

static __always_inline void count(void *map_lookup_result, __u64 bytes)
{
	struct mcr_counter *c = map_lookup_result;

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void count_verdict(__u32 verdict, __u64 bytes)
{
	count(mcr_verdicts.lookup(&verdict), bytes);
}

/* A rule's counters in two steps: matched (the packet count doubles as the
 * rule's per-CPU packet number, struct mcr_meta.seq), then the outcome. */
static __always_inline struct mcr_rule_counters *count_match(__u32 id, __u64 bytes)
{
	struct mcr_rule_counters *c = mcr_rule_stats.lookup(&id);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
	return c;
}

static __always_inline void count_outcome(struct mcr_rule_counters *c, int forwarded)
{
	if (!c)
		return;
	if (forwarded)
		c->forwarded++;
	else
		c->dropped++;
}

/* A frame the fast path sent: its only rule counter update (mcr_abi.h,
 * struct mcr_rule_counters); the reader derives the output's. */
static __always_inline void count_fast(__u32 id, __u64 bytes)
{
	struct mcr_rule_counters *c = mcr_rule_stats.lookup(&id);

	if (c) {
		c->fast_packets++;
		c->fast_bytes += bytes;
	}
}

static __always_inline void count_rule(__u32 id, __u64 bytes, int forwarded)
{
	count_outcome(count_match(id, bytes), forwarded);
}

static __always_inline void count_output(const struct mcr_output *out, __u64 bytes)
{
	__u32 stat = out->stat;

	count(mcr_output_stats.lookup(&stat), bytes);
}

/* A flow hash of (source, group, port): every packet of one stream gets
 * the same value, so steering never splits (and reorders) a stream. */
static __always_inline __u32 flow_hash(struct pkt *p)
{
	__u32 h = p->key.port * 0x9e3779b1;
	const __u32 *w;
	int i;

	if (p->iph) {
		h ^= p->iph->saddr * 0x85ebca6b;
		h ^= p->iph->daddr * 0xc2b2ae35;
	} else if (p->ip6h) {
		w = (const __u32 *)&p->ip6h->saddr;
#pragma unroll
		for (i = 0; i < 8; i++)   /* saddr then daddr: adjacent in the header */
			h = (h ^ w[i]) * 0x01000193;
	}
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	return h;
}

#endif /* MCR_FORWARD_H */
