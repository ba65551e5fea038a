/* SPDX-License-Identifier: GPL-2.0 */
/*
 * relay.c - the XDP datapath.
 *
 * mcr_relay (ingress): parse -> look up the rule -> rewrite and redirect
 * (one output) or broadcast to the rule's devmap (several outputs), with
 * one exit that counts the verdict.
 *
 * mcr_egress (devmap egress): runs on each broadcast copy, parses the
 * still-original headers again, finds the same rule, and applies the
 * rewrite of the output that leaves through ctx->egress_ifindex (see
 * egress_output for one interface used by several outputs).
 *
 * Anything that is not multicast UDP with a rule is passed to the host
 * untouched: the relay never takes traffic it was not told to relay.
 */
#include <uapi/linux/bpf.h>
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
	int tagged;
	__u8 hops;              /* TTL or hop limit */
	struct mcr_rule_key key;
};

/* Parse up to UDP and fill in the lookup key (source left zero). Returns
 * MCR_MATCH, or the PASS verdict that says why the packet is not ours. */
static __always_inline __u32 parse_packet(struct xdp_md *ctx, struct pkt *p)
{
	struct cursor cur = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	__be16 proto;

	p->eth = parse_eth(&cur, &proto, &p->tagged);
	if (!p->eth)
		return MCR_V_PASS_MALFORMED;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = parse_ipv4(&cur);

		if (!iph)
			return MCR_V_PASS_MALFORMED;
		if ((iph->daddr & bpf_htonl(0xf0000000)) != bpf_htonl(0xe0000000))
			return MCR_V_PASS_NOT_MULTICAST;
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
		if (ip6h->daddr.s6_addr[0] != 0xff)
			return MCR_V_PASS_NOT_MULTICAST;
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
	/* The UDP header must lie inside the IP packet, not in Ethernet padding. */
	if (p->iph && bpf_ntohs(p->iph->tot_len) < p->iph->ihl * 4 + sizeof(struct udphdr))
		return MCR_V_PASS_MALFORMED;
	if (p->ip6h && bpf_ntohs(p->ip6h->payload_len) < sizeof(struct udphdr))
		return MCR_V_PASS_MALFORMED;
	/* IPv6 requires a UDP checksum: a zero one can't be updated, and the
	 * receiving stack would drop the packet anyway. */
	if (p->ip6h && !p->udp->check)
		return MCR_V_PASS_MALFORMED;
	p->key.ifindex = ctx->ingress_ifindex;
	p->key.port = p->udp->dest;
	return MCR_MATCH;
}

/* (source, group, port) takes precedence over (group, port); the first
 * lookup is skipped while no source-specific rule exists. */
static __always_inline struct mcr_rule *lookup_rule(struct pkt *p)
{
	__u32 zero = 0;
	struct mcr_config *cfg = mcr_config.lookup(&zero);
	struct mcr_rule *rule;

	if (cfg && cfg->ssm_rules) {
		if (p->iph)
			*(__be32 *)p->key.source = p->iph->saddr;
		else if (p->ip6h)
			__builtin_memcpy(p->key.source, &p->ip6h->saddr, sizeof(p->key.source));
		rule = mcr_rules.lookup(&p->key);
		__builtin_memset(p->key.source, 0, sizeof(p->key.source));
		if (rule)
			return rule;
	}
	return mcr_rules.lookup(&p->key);
}

static __always_inline void rewrite(struct pkt *p, void *eth, const struct mcr_output *out)
{
	if (p->iph)
		rewrite_ipv4(eth, p->iph, p->udp, out);
	else if (p->ip6h)
		rewrite_ipv6(eth, p->ip6h, p->udp, out);
}

static __always_inline void count(void *map_lookup_result, __u64 bytes)
{
	struct mcr_counter *c = map_lookup_result;

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void count_rule(__u32 id, __u64 bytes, int forwarded)
{
	struct mcr_rule_counters *c = mcr_rule_stats.lookup(&id);

	if (!c)
		return;
	c->packets++;
	c->bytes += bytes;
	if (forwarded)
		c->forwarded++;
	else
		c->dropped++;
}

static __always_inline void count_output(__u32 id, __u32 idx, __u64 bytes)
{
	__u32 slot = id * MCR_MAX_OUTPUTS + idx;

	count(mcr_output_stats.lookup(&slot), bytes);
}

int mcr_relay(struct xdp_md *ctx)
{
	__u64 bytes = ctx->data_end - ctx->data;
	struct pkt p = {};
	struct mcr_rule *rule = NULL;
	int action = XDP_PASS;
	__u32 verdict;
	void *fanout;

	verdict = parse_packet(ctx, &p);
	if (verdict != MCR_MATCH)
		goto out;
	rule = lookup_rule(&p);
	if (!rule) {
		verdict = MCR_V_PASS_NO_RULE;
		goto out;
	}
	action = XDP_DROP;
	if (p.hops <= 1) {
		verdict = MCR_V_DROP_TTL;
		goto out;
	}
	verdict = MCR_V_DROP_NO_OUTPUT;

	if (rule->n_outputs == 1) {
		/* A tag belongs to the input segment: the copy leaves untagged,
		 * its new Ethernet header written in front of the inner ethertype. */
		rewrite(&p, p.tagged ? (void *)p.eth + VLAN_HLEN : (void *)p.eth, &rule->out[0]);
		if (p.tagged && bpf_xdp_adjust_head(ctx, VLAN_HLEN))
			goto out;
		action = mcr_tx_ports.redirect_map(rule->out[0].slot, XDP_DROP);
		if (action == XDP_REDIRECT) {
			verdict = MCR_V_REDIRECT;
			count_output(rule->id, 0, bytes);
		}
		goto out;
	}

	/* Several outputs: every copy is rewritten by its egress program, so
	 * the headers stay original here; only the tag goes. adjust_head
	 * drops the first 4 bytes, so the MACs move over the tag first. */
	if (p.tagged) {
		__u8 macs[2 * ETH_ALEN];

		__builtin_memcpy(macs, p.eth, sizeof(macs));
		__builtin_memcpy((void *)p.eth + VLAN_HLEN, macs, sizeof(macs));
		if (bpf_xdp_adjust_head(ctx, VLAN_HLEN))
			goto out;
	}
	fanout = mcr_fanout.lookup(&rule->id);
	if (!fanout)
		goto out;
	action = bpf_redirect_map(fanout, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
	if (action == XDP_REDIRECT)
		verdict = MCR_V_REDIRECT_MULTI;
	else
		action = XDP_DROP;

out:
	count(mcr_verdicts.lookup(&verdict), bytes);
	if (rule)
		count_rule(rule->id, bytes, action == XDP_REDIRECT);
	return action;
}

/* Which output of rule a copy leaving through egress_ifindex is. Usually
 * one output uses that interface. When k > 1 do (one interface, several
 * groups), the copies are told apart by order: the broadcast enqueues them
 * in devmap key order and the device's queue runs them in that order on
 * this CPU, so a per-CPU rotating index hands out output 1, 2, .., k. (The
 * kernel runs one egress program per device and flush, not each entry's
 * own, so the program itself can't carry the index.) */
static __always_inline int egress_output(struct mcr_rule *rule, __u32 egress_ifindex)
{
	__u32 first = MCR_MAX_OUTPUTS, k = 0, pick, slot;
	__u32 *rr;
	int i;

	for (i = 0; i < MCR_MAX_OUTPUTS; i++) {
		if (i >= rule->n_outputs)
			break;
		if (rule->out[i].ifindex == egress_ifindex) {
			if (!k)
				first = i;
			k++;
		}
	}
	if (k <= 1)
		return k ? (int)first : -1;
	slot = rule->id * MCR_MAX_OUTPUTS + first;
	rr = mcr_egress_rr.lookup(&slot);
	if (!rr)
		return -1;
	pick = *rr % k;
	*rr = pick + 1;
	for (i = 0; i < MCR_MAX_OUTPUTS; i++) {
		if (i >= rule->n_outputs)
			break;
		if (rule->out[i].ifindex == egress_ifindex) {
			if (!pick)
				return i;
			pick--;
		}
	}
	return -1;
}

/* Rewrite one broadcast copy (original, untagged headers) for the output
 * of its rule that leaves through egress_ifindex. */
static __always_inline int egress(struct xdp_md *ctx, __u32 egress_ifindex)
{
	__u64 bytes = ctx->data_end - ctx->data;
	__u32 verdict = MCR_V_EGRESS_DROP;
	struct mcr_rule *rule;
	struct pkt p = {};
	int idx;

	if (parse_packet(ctx, &p) != MCR_MATCH || p.tagged)
		goto drop;
	rule = lookup_rule(&p);
	if (!rule)
		goto drop;
	idx = egress_output(rule, egress_ifindex);
	if (idx < 0 || idx >= MCR_MAX_OUTPUTS)
		goto drop;
	rewrite(&p, p.eth, &rule->out[idx]);
	count_output(rule->id, idx, bytes);
	return XDP_PASS;
drop:
	count(mcr_verdicts.lookup(&verdict), bytes);
	return XDP_DROP;
}

int mcr_egress(struct xdp_md *ctx)
{
	return egress(ctx, ctx->egress_ifindex);
}

#ifdef MCR_TEST_TWINS
/* Devmap egress programs cannot be test-run, and BPF_PROG_TEST_RUN takes
 * no egress ifindex: this plain-XDP twin runs the same code with the
 * egress interface taken from a map the test sets. */
BPF_ARRAY(mcr_twin_egress, __u32, 1);

int mcr_egress_twin(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *ifindex = mcr_twin_egress.lookup(&zero);

	return egress(ctx, ifindex ? *ifindex : 0);
}
#endif
