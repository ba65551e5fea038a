/* SPDX-License-Identifier: GPL-2.0 */
/*
 * relay.c - ingress XDP program: parse -> look up the rule -> rewrite ->
 * redirect, with one exit that counts the verdict.
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

static __always_inline void count_verdict(__u32 verdict, __u64 bytes)
{
	struct mcr_counter *c = mcr_verdicts.lookup(&verdict);

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

int mcr_relay(struct xdp_md *ctx)
{
	struct cursor cur = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	__u64 bytes = cur.end - cur.pos;
	__u32 verdict = MCR_V_PASS_MALFORMED;
	int action = XDP_PASS;
	struct mcr_rule_key key = {};
	struct mcr_rule *rule = NULL;
	struct ethhdr *eth;
	struct iphdr *iph;
	struct udphdr *udp;
	__be16 proto;
	int tagged;

	eth = parse_eth(&cur, &proto, &tagged);
	if (!eth)
		goto out;
	if (proto == bpf_htons(ETH_P_IPV6)) {
		verdict = MCR_V_PASS_IPV6;
		goto out;
	}
	if (proto != bpf_htons(ETH_P_IP)) {
		verdict = MCR_V_PASS_NOT_IP;
		goto out;
	}
	iph = parse_ipv4(&cur);
	if (!iph)
		goto out;
	if ((iph->daddr & bpf_htonl(0xf0000000)) != bpf_htonl(0xe0000000)) {
		verdict = MCR_V_PASS_NOT_MULTICAST;
		goto out;
	}
	if (iph->frag_off & bpf_htons(MCR_IP_MF | MCR_IP_OFFSET)) {
		verdict = MCR_V_PASS_FRAGMENT;
		goto out;
	}
	if (iph->protocol != IPPROTO_UDP) {
		verdict = MCR_V_PASS_NOT_UDP;
		goto out;
	}
	udp = parse_udp(&cur);
	if (!udp)
		goto out;

	key.ifindex = ctx->ingress_ifindex;
	key.port = udp->dest;
	key.family = MCR_FAMILY_IPV4;
	*(__be32 *)key.group = iph->daddr;
	rule = mcr_rules.lookup(&key);
	if (!rule) {
		verdict = MCR_V_PASS_NO_RULE;
		goto out;
	}
	if (iph->ttl <= 1) {
		verdict = MCR_V_DROP_TTL;
		action = XDP_DROP;
		goto out;
	}

	/* A tag belongs to the input segment: the copy leaves untagged, its new
	 * Ethernet header written just in front of the inner ethertype. */
	rewrite_ipv4(tagged ? (void *)eth + VLAN_HLEN : (void *)eth, iph, udp, &rule->out);
	if (tagged && bpf_xdp_adjust_head(ctx, VLAN_HLEN)) {
		verdict = MCR_V_DROP_NO_OUTPUT;
		action = XDP_DROP;
		goto out;
	}
	action = mcr_tx_ports.redirect_map(rule->out.slot, XDP_DROP);
	verdict = action == XDP_REDIRECT ? MCR_V_REDIRECT : MCR_V_DROP_NO_OUTPUT;

out:
	count_verdict(verdict, bytes);
	if (rule)
		count_rule(rule->id, bytes, action == XDP_REDIRECT);
	return action;
}
