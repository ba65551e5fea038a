/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tc_relay.c - the TC datapath (--mode tc): a clsact ingress program over
 * the same rule maps, parse and lookup as the XDP programs (forward.h).
 *
 * For interfaces where XDP is unavailable, and for packets that must stay
 * skbs: a local sender's packet may arrive with its UDP checksum still
 * partial (CHECKSUM_PARTIAL, tx offload on), holding only the pseudo-header
 * sum. Deltas added blindly would corrupt it, so the checksums go through
 * bpf_l3_csum_replace / bpf_l4_csum_replace, which know the skb's checksum
 * state: the pseudo-header part with BPF_F_PSEUDO_HDR, the port without it
 * (a partial checksum does not cover the port yet; the device will).
 *
 * Each output but the last gets a clone (bpf_clone_redirect) of the packet
 * rewritten for it; the last output takes the packet itself (bpf_redirect).
 * The packet is rewritten output after output: output i's checksum change
 * is the difference between its deltas and output i-1's.
 *
 * The same code, as mcr_tc_companion, runs beside native XDP on an input
 * with a rule whose outputs native XDP can't reach (MCR_RULE_VIA_TC): the
 * XDP program passes those frames on uncounted, this one forwards and
 * counts them. Every other frame it leaves alone and uncounted: the XDP
 * program counted it already.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "mcr_abi.h"
#include "maps.h"
#include "forward.h"
#include "health.h"
#include "police.h"

/* Ethernet + tag + IPv4 with options + UDP: every header the program reads
 * or writes, made linear and private (not shared with a clone) by
 * bpf_skb_pull_data before each rewrite. */
#define MCR_TC_HEADERS (ETH_HLEN + VLAN_HLEN + 60 + 8)

/* a - b in ones' complement, for 16-bit folded deltas. */
static __always_inline __u32 csum_sub16(__u32 a, __u32 b)
{
	return a + (0xffff ^ (b & 0xffff));
}

/* Linear, writable headers, parsed again: every helper that may move packet
 * data (pull, csum_replace, clone_redirect, vlan_pop) invalidates the
 * pointers of the previous parse. */
static __always_inline int reparse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 len = skb->len < MCR_TC_HEADERS ? skb->len : MCR_TC_HEADERS;

	if (bpf_skb_pull_data(skb, len))
		return -1;
	__builtin_memset(p, 0, sizeof(*p));
	/* Any destination: a unicast receiver's address after a rewrite. */
	if (parse_packet((void *)(long)skb->data, (void *)(long)skb->data_end, skb->ingress_ifindex, p, 1) != MCR_MATCH)
		return -1;
	return 0;
}

/* Rewrite the packet, which holds the headers of prev (NULL: as received),
 * for out. hops and port: the TTL and destination port as received. */
static __always_inline int tc_rewrite(struct __sk_buff *skb, const struct mcr_rule *rule,
				      const struct mcr_output *out, const struct mcr_output *prev,
				      __u8 hops, __be16 port)
{
	struct pkt p;
	__u32 l3, l4, ip_diff, pseudo_diff;
	__be16 old_port;

	if (reparse(skb, &p))
		return -1;
	/* The IP header follows the Ethernet header and its one tag, if any
	 * (no pointer arithmetic on iph / ip6h: clang merges the two into a
	 * subtraction the verifier refuses when it sees both NULL). */
	l3 = ETH_HLEN + (p.tagged ? VLAN_HLEN : 0);
	l4 = (void *)p.udp - (void *)p.eth;
	old_port = p.udp->dest;
	/* The frame as received, TTL and all: p.hops and p.key.port are the
	 * original ones only before the first rewrite, so the caller's values
	 * are used. (A range rule's group keeps the host bits of the packet
	 * as it is: no rewrite changes them.) */
	p.hops = hops;
	p.key.port = port;
	rewrite_fields(&p, p.eth, rule, out);

	ip_diff = prev ? csum_sub16(out->ip_csum_delta, prev->ip_csum_delta) : out->ip_csum_delta;
	/* ;ttl=N: the first rewrite sets it; later ones find it set (every
	 * output of a rule has the same). */
	if (!prev && out->ttl)
		ip_diff += ttl_delta(hops, out->ttl);
	pseudo_diff = prev ? csum_sub16(out->pseudo_csum_delta, prev->pseudo_csum_delta) : out->pseudo_csum_delta;
	if (p.iph && bpf_l3_csum_replace(skb, l3 + __builtin_offsetof(struct iphdr, check), 0, ip_diff, 0))
		return -1;
	/* A zero IPv4 UDP checksum means none and stays zero; a computed zero
	 * is sent as 0xffff (BPF_F_MARK_MANGLED_0 does both). */
	if (bpf_l4_csum_replace(skb, l4 + __builtin_offsetof(struct udphdr, check), 0, pseudo_diff,
				BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0))
		return -1;
	if (bpf_l4_csum_replace(skb, l4 + __builtin_offsetof(struct udphdr, check), old_port,
				out_port(out, port), BPF_F_MARK_MANGLED_0 | sizeof(__u16)))
		return -1;
	return 0;
}

static __always_inline int tc_forward(struct __sk_buff *skb, int companion)
{
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	__u64 bytes = skb->len;
	struct mcr_config *cfg = config();
	struct mcr_rule *rule = NULL;
	const struct mcr_output *prev = NULL;
	int action = TC_ACT_UNSPEC;  /* not ours: on to the next filter, then the host */
	struct pkt p = {};
	__u32 verdict, n, i;
	int merged = MCR_MERGE_NONE;
	__be16 port;
	__u8 hops;

	/* The relay's own copy come back (a loop); beside native XDP, the XDP
	 * program has dropped it already. */
	if (!companion && own_mac(cfg, data, data_end)) {
		count_verdict(MCR_V_DROP_LOOP, bytes);
		return TC_ACT_SHOT;
	}
	verdict = parse_packet(data, data_end, skb->ingress_ifindex, &p, unicast_rules(cfg));
	/* Two tags (QinQ): the kernel took the outer one into skb metadata
	 * before this hook. The XDP programs see both and pass such a frame
	 * as not IP; so does this one. */
	if (verdict == MCR_MATCH && p.tagged && skb->vlan_present)
		verdict = MCR_V_PASS_NOT_IP;
	rule = match_rule(cfg, &p, &verdict);
	if (companion && (!rule || !(rule->flags & MCR_RULE_VIA_TC)))
		return TC_ACT_UNSPEC;
	if (!rule)
		goto out;
	action = TC_ACT_SHOT;
	if (p.hops <= 1 && !rule->out[0].ttl)  /* ;ttl=N forwards it with TTL N */
		verdict = MCR_V_DROP_TTL;
	else if ((rule->flags & MCR_RULE_POLICE) && !police_ok(rule, bytes))
		verdict = MCR_V_DROP_POLICED;
	/* The whole datagram linear, for the checks that read past the
	 * headers (if the pull fails, they check what is linear). */
	if (rule->flags & (MCR_RULE_HEALTH | MCR_RULE_MERGE)) {
		bpf_skb_pull_data(skb, skb->len);
		if (reparse(skb, &p)) {
			verdict = MCR_V_DROP_NO_OUTPUT;
			goto out;
		}
		/* A merge leg: the first copy of each sequence number goes on. */
		if (verdict == MCR_MATCH && (rule->flags & MCR_RULE_MERGE)) {
			merged = merge_check(rule, (__u8 *)(p.udp + 1), (void *)(long)skb->data_end);
			if (merged != MCR_MERGE_FIRST)
				verdict = MCR_V_DROP_MERGED;
		}
		if (rule->flags & MCR_RULE_HEALTH)
			health_check(rule, (__u8 *)(p.udp + 1), (void *)(long)skb->data_end, merged);
	}
	if (verdict != MCR_MATCH)
		goto out;
	hops = p.hops;
	port = p.key.port;
	verdict = MCR_V_DROP_NO_OUTPUT;
	/* A tag belongs to the input segment, whether the device kept it in
	 * the frame or took it into skb metadata. */
	if ((p.tagged || skb->vlan_present) && bpf_skb_vlan_pop(skb))
		goto out;

	n = rule->n_outputs;
	/* A unicast receiver whose next hop has no known MAC: counted, not
	 * sent to a guessed one (as a verdict of its own per copy). */
	if (n == 1 && (rule->out[0].flags & MCR_OUT_UNRESOLVED)) {
		verdict = MCR_V_DROP_NO_NEIGH;
		goto out;
	}
	for (i = 0; i < MCR_MAX_OUTPUTS; i++) {
		const struct mcr_output *out;

		if (i >= n)
			break;
		/* clang merges the two bounds into i < min(n, 16) and the 6.1
		 * verifier then knows i only below 65,536: bound it again where
		 * it indexes, out of the compiler's sight. */
		MCR_OPAQUE(i);
		if (i >= MCR_MAX_OUTPUTS)
			break;
		out = &rule->out[i];
		if (out->flags & MCR_OUT_UNRESOLVED) {
			count_verdict(MCR_V_DROP_NO_NEIGH, bytes);
			/* The last output: the copies before it went. */
			if (i + 1 == n && prev)
				verdict = MCR_V_REDIRECT_MULTI;
			continue;
		}
		if (tc_rewrite(skb, rule, out, prev, hops, port))
			goto out;
		prev = out;
		if (i + 1 == n) {
			/* The last output takes the packet itself. */
			action = bpf_redirect(out->ifindex, 0);
			if (action == TC_ACT_REDIRECT) {
				verdict = n == 1 ? MCR_V_REDIRECT : MCR_V_REDIRECT_MULTI;
				count_output(out, bytes);
			} else {
				action = TC_ACT_SHOT;
			}
			break;
		}
		if (bpf_clone_redirect(skb, out->ifindex, 0) == 0)
			count_output(out, bytes);
	}

out:
	count_verdict(verdict, bytes);
	if (rule)
		count_rule(rule->id, bytes, action == TC_ACT_REDIRECT || verdict == MCR_V_REDIRECT_MULTI);
	return action;
}

MCR_PROG("tc") int mcr_tc_relay(struct __sk_buff *skb)
{
	return tc_forward(skb, 0);
}

MCR_PROG("tc") int mcr_tc_companion(struct __sk_buff *skb)
{
	return tc_forward(skb, 1);
}
