/* SPDX-License-Identifier: GPL-2.0 */
/*
 * relay.c - the XDP datapath.
 *
 * mcr_relay (ingress): parse -> look up the rule -> rewrite and redirect
 * (one output) or broadcast to the rule's devmap (several outputs), with
 * one exit that counts the verdict. With steering on, matched frames are
 * first handed to their flow's CPU, where mcr_cpu_relay (cpumap program)
 * does the same forwarding.
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

#include "mcr_abi.h"
#include "maps.h"
#include "forward.h"

#define MCR_STEERED (MCR_V_MAX + 1) /* handed to another CPU, which counts it */

/* The steering CPU of a flow, NULL when steering is off. */
static __always_inline __u32 *steer_cpu(struct mcr_config *cfg, struct pkt *p)
{
	__u32 idx;

	if (!cfg || !cfg->steer_cpus)
		return NULL;
	idx = flow_hash(p) % cfg->steer_cpus;
	return mcr_steer.lookup(&idx);
}

/* Parse, look up, then rewrite and redirect (one output) or broadcast to
 * the rule's devmap (several outputs); one exit counts the verdict. With
 * may_steer (the ingress program) and steering on, a matched frame goes to
 * its flow's CPU instead, where mcr_cpu_relay runs this again with
 * may_steer off: the frame is counted once, by the CPU that forwards it. */
static __always_inline int forward(struct xdp_md *ctx, int may_steer)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct mcr_config *cfg = config();
	struct pkt p = {};
	struct mcr_rule *rule = NULL;
	int action = XDP_PASS;
	__u32 verdict, *cpu;
	void *fanout;

	verdict = parse_packet(data, data_end, ctx->ingress_ifindex, &p);
	if (verdict != MCR_MATCH)
		goto out;
	rule = lookup_rule(cfg, &p);
	if (!rule) {
		verdict = MCR_V_PASS_NO_RULE;
		goto out;
	}
	if (may_steer) {
		cpu = steer_cpu(cfg, &p);
		/* A CPU without a cpumap entry: forward here rather than lose it. */
		if (cpu && mcr_cpumap.redirect_map(*cpu, 0) == XDP_REDIRECT) {
			verdict = MCR_STEERED;
			action = XDP_REDIRECT;
			goto out;
		}
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
	if (verdict == MCR_STEERED)
		return action;
	count_verdict(verdict, bytes);
	if (rule)
		count_rule(rule->id, bytes, action == XDP_REDIRECT);
	return action;
}

int mcr_relay(struct xdp_md *ctx)
{
	return forward(ctx, 1);
}

/* The cpumap program: the same forwarding, on the CPU steering chose. */
int mcr_cpu_relay(struct xdp_md *ctx)
{
	return forward(ctx, 0);
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
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct mcr_rule *rule;
	struct pkt p = {};
	int idx;

	if (parse_packet(data, data_end, ctx->ingress_ifindex, &p) != MCR_MATCH || p.tagged)
		goto drop;
	rule = lookup_rule(config(), &p);
	if (!rule)
		goto drop;
	idx = egress_output(rule, egress_ifindex);
	if (idx < 0 || idx >= MCR_MAX_OUTPUTS)
		goto drop;
	rewrite(&p, p.eth, &rule->out[idx]);
	count_output(rule->id, idx, bytes);
	return XDP_PASS;
drop:
	count_verdict(MCR_V_EGRESS_DROP, bytes);
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
