/* SPDX-License-Identifier: GPL-2.0 */
/*
 * relay.c - the XDP datapath.
 *
 * mcr_relay (ingress, native XDP): parse -> look up the rule -> rewrite
 * and redirect (one output) or broadcast to the rule's devmap (several
 * outputs), with one exit that counts the verdict. Each redirected frame
 * carries a struct mcr_meta saying whether it is rewritten already. With
 * steering on, matched frames are first handed to their flow's CPU, where
 * mcr_cpu_relay (cpumap program) does the same forwarding.
 *
 * mcr_relay_skb (ingress, generic XDP): the same, but the egress
 * program cannot see metadata on the skb path, so every frame leaves the
 * ingress program with its original headers (only a VLAN tag goes); and
 * it never steers (see below).
 *
 * mcr_egress (devmap egress, on every output): passes frames rewritten at
 * ingress; any other frame it parses again, finds the same rule (the input
 * interface from the metadata, else from the context) and applies the
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
#include "health.h"
#include "police.h"

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

/* Our metadata, at the front of the metadata area; NULL when the frame has
 * none (it is reserved at ingress, and never visible on the skb path). */
static __always_inline struct mcr_meta *meta_of(struct xdp_md *ctx)
{
	struct mcr_meta *m = (void *)(long)ctx->data_meta;

	if ((void *)(m + 1) > (void *)(long)ctx->data)
		return NULL;
	return m;
}

static __always_inline void meta_set(struct xdp_md *ctx, __u32 magic, __u32 ifindex, __u32 seq)
{
	struct mcr_meta *m = meta_of(ctx);

	if (m) {
		m->magic = magic;
		m->ifindex = ifindex;
		m->seq = seq;
	}
}

static __always_inline int meta_ours(struct mcr_meta *m)
{
	return m && (m->magic == MCR_META_DONE || m->magic == MCR_META_EGRESS || m->magic == MCR_META_STEER);
}

/* Reserve room for struct mcr_meta (before the parse: the helper
 * invalidates packet pointers). 1 when there is room. A frame that carries
 * ours already keeps it (a test run repeats on one buffer; the egress
 * program removes ours before a frame leaves). */
static __always_inline int meta_reserve(struct xdp_md *ctx)
{
	if (meta_ours(meta_of(ctx)))
		return 1;
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct mcr_meta)))
		return 0;
	meta_set(ctx, MCR_META_STEER, 0, 0);
	return 1;
}

/* Whether the driver keeps metadata in front of the frame: it marks an
 * xdp_buff without that support with data_meta past data
 * (xdp_set_data_meta_invalid). */
static __always_inline int meta_supported(struct xdp_md *ctx)
{
	return (void *)(long)ctx->data_meta <= (void *)(long)ctx->data;
}

static __always_inline void meta_release(struct xdp_md *ctx)
{
	bpf_xdp_adjust_meta(ctx, (int)sizeof(struct mcr_meta));
}

/* Parse, look up, then redirect to the rule's output (one) or broadcast to
 * its devmap (several); one exit counts the verdict. With may_steer (the
 * ingress programs) and steering on, a matched frame goes to its flow's
 * CPU instead, where mcr_cpu_relay runs this again with may_steer off: the
 * frame is counted once, by the CPU that forwards it.
 *
 * has_meta: the frame carries a reserved struct mcr_meta that the egress
 * program will see (native XDP on a driver with metadata support). Then a
 * one-output frame is rewritten here (MCR_META_DONE) and every other one
 * leaves original (MCR_META_EGRESS, with its input and packet number).
 * Without it every frame leaves original, for the egress program to
 * rewrite from the context's ingress interface.
 *
 * native: a native XDP ingress program, whose redirect reaches only
 * devices with an XDP transmit; a rule with another output
 * (MCR_RULE_VIA_TC) is the TC program's. Generic XDP's redirect reaches
 * every device. */
static __always_inline int forward(struct xdp_md *ctx, int may_steer, int has_meta, int native)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct mcr_config *cfg = config();
	struct mcr_rule_counters *counters = NULL;
	struct pkt p = {};
	struct mcr_rule *rule = NULL;
	int action = XDP_PASS, done = 0, merged = MCR_MERGE_NONE;
	__u32 verdict, *cpu, seq = 0;
	void *fanout;

	/* The relay's own copy come back (a loop): dropped before anything
	 * else, where the verifier has one path to walk, not dozens. */
	if (own_mac(cfg, data, data_end)) {
		if (has_meta)
			meta_release(ctx);
		count_verdict(MCR_V_DROP_LOOP, bytes);
		return XDP_DROP;
	}
	verdict = parse_packet(data, data_end, ctx->ingress_ifindex, &p, unicast_rules(cfg));
	rule = match_rule(cfg, &p, &verdict);
	if (!rule)
		goto out;
	/* An output native XDP can't reach: the TC program on this input
	 * forwards the frame, and counts it (its verdict, its rule). */
	if (native && (rule->flags & MCR_RULE_VIA_TC)) {
		if (has_meta)
			meta_release(ctx);
		return XDP_PASS;
	}
	if (may_steer) {
		cpu = steer_cpu(cfg, &p);
		/* A CPU without a cpumap entry: forward here rather than lose it. */
		if (cpu) {
			if (has_meta)
				meta_set(ctx, MCR_META_STEER, 0, 0);
			if (mcr_cpumap.redirect_map(*cpu, 0) == XDP_REDIRECT) {
				verdict = MCR_STEERED;
				action = XDP_REDIRECT;
				goto out;
			}
		}
	}
	counters = count_match(rule->id, bytes);
	if (counters)
		seq = (__u32)counters->packets;
	if (rule->flags & MCR_RULE_HEALTH)
		health_mark(data_end - (void *)(p.udp + 1));
	action = XDP_DROP;
	if (p.hops <= 1 && !rule->out[0].ttl) {  /* ;ttl=N forwards it with TTL N */
		verdict = MCR_V_DROP_TTL;
		goto out;
	}
	/* A unicast receiver whose next hop has no known MAC: counted, not
	 * sent to a guessed one (a fan-out rule's copy: by the egress program). */
	if (rule->n_outputs == 1 && (rule->out[0].flags & MCR_OUT_UNRESOLVED)) {
		verdict = MCR_V_DROP_NO_NEIGH;
		goto out;
	}
	verdict = MCR_V_DROP_NO_OUTPUT;

	if (rule->n_outputs == 1 && has_meta) {
		/* A tag belongs to the input segment: the copy leaves untagged,
		 * its new Ethernet header written in front of the inner ethertype. */
		rewrite(&p, p.tagged ? (void *)p.eth + VLAN_HLEN : (void *)p.eth, rule, &rule->out[0]);
		done = 1;
	} else if (p.tagged) {
		/* Headers stay original for the egress program; only the tag
		 * goes. adjust_head drops the first 4 bytes, so the MACs move
		 * over the tag first. */
		__u8 macs[2 * ETH_ALEN];

		__builtin_memcpy(macs, p.eth, sizeof(macs));
		__builtin_memcpy((void *)p.eth + VLAN_HLEN, macs, sizeof(macs));
	}
	/* The metadata moves with adjust_head. */
	if (p.tagged && bpf_xdp_adjust_head(ctx, VLAN_HLEN))
		goto out;
	/* Rewritten, to an interface no fan-out rule uses: nothing for an
	 * egress program to do, so none runs (mcr_tx_direct) and the frame
	 * leaves without our metadata. Only from the native ingress program:
	 * the kernel runs the program of a batch's first frame on the whole
	 * batch of a device, and only there is every frame of a batch
	 * rewritten alike (a cpumap batch mixes inputs). */
	if (done && native) {
		action = mcr_tx_direct.redirect_map(rule->out[0].slot, XDP_PASS);
		if (action == XDP_REDIRECT) {
			meta_release(ctx);
			verdict = MCR_V_REDIRECT;
			goto out;
		}
	}
	if (has_meta)
		meta_set(ctx, done ? MCR_META_DONE : MCR_META_EGRESS, p.key.ifindex, seq);

	if (rule->n_outputs == 1) {
		action = mcr_tx_ports.redirect_map(rule->out[0].slot, XDP_DROP);
		if (action == XDP_REDIRECT)
			verdict = MCR_V_REDIRECT;
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
	/* Over the rule's rate: the redirect asked for is not done (the kernel
	 * acts on it only for XDP_REDIRECT). Decided here, not before the
	 * rewrite, for the verifier's sake (as health_at_mark below). */
	if (action == XDP_REDIRECT && (rule->flags & MCR_RULE_POLICE) && !police_ok(rule, bytes)) {
		action = XDP_DROP;
		verdict = MCR_V_DROP_POLICED;
	}
	/* A merge leg: the first copy of each sequence number goes on. */
	if (action == XDP_REDIRECT && (rule->flags & MCR_RULE_MERGE)) {
		merged = merge_at_mark(rule, (void *)(long)ctx->data, (void *)(long)ctx->data_end);
		if (merged != MCR_MERGE_FIRST) {
			action = XDP_DROP;
			verdict = MCR_V_DROP_MERGED;
		}
	}
	/* Rewritten here (one output): counted here; else the egress program counts it. */
	if (action == XDP_REDIRECT && done)
		count_output(&rule->out[0], bytes);
	/* Frames for the host leave as they came. */
	if (has_meta && action == XDP_PASS)
		meta_release(ctx);
	count_verdict(verdict, bytes);
	count_outcome(counters, action == XDP_REDIRECT);
	/* Past steering and the TC hand-over, a rule's frame is this CPU's. */
	if (rule && (rule->flags & MCR_RULE_HEALTH))
		health_at_mark(rule, (void *)(long)ctx->data, (void *)(long)ctx->data_end, merged);
	return action;
}

#define MCR_SLOW (-1)    /* fast_forward: forward() decides */
#define MCR_GENERIC (-2) /* fast_ipv4: not the frame it knows; fast_forward parses it */

/* Whether the fast path can send a frame of rule with hops (its TTL or hop
 * limit) as it is: one output, no stream check, policer, merge or range,
 * an output whose next hop is known and a TTL left. */
static __always_inline int fast_sendable(const struct mcr_rule *rule, __u8 hops)
{
	return rule->n_outputs == 1 && !rule->flags && !(rule->out[0].flags & MCR_OUT_UNRESOLVED) &&
	       (hops > 1 || rule->out[0].ttl);
}

/* The end of both fast paths: a frame of rule, rewritten for its one
 * output, goes through that output's direct slot, and is counted: a sent
 * frame in the rule's fast counters and its verdict only (the output's
 * count is derived from the rule's: mcr_abi.h). */
static __always_inline int fast_send(struct xdp_md *ctx, const struct mcr_rule *rule, __u32 ifindex, __u64 bytes)
{
	int action = mcr_tx_direct.redirect_map(rule->out[0].slot, XDP_PASS);

	if (action != XDP_REDIRECT) {
		/* No direct slot (fan-out copies use the interface too): the
		 * egress program sees the frame, told it is rewritten. */
		action = XDP_DROP;
		if (meta_reserve(ctx)) {
			meta_set(ctx, MCR_META_DONE, ifindex, 0);
			action = mcr_tx_ports.redirect_map(rule->out[0].slot, XDP_DROP);
		}
	}
	if (action != XDP_REDIRECT) {
		count_verdict(MCR_V_DROP_NO_OUTPUT, bytes);
		count_rule(rule->id, bytes, 0);
		/* Not what the helper returned: XDP_DROP is all it could mean,
		 * and the compiler and the verifier then know the caller's
		 * own codes (MCR_SLOW, MCR_GENERIC) never come from here. */
		return XDP_DROP;
	}
	count_fast(rule->id, bytes);
	count_verdict(MCR_V_REDIRECT, bytes);
	return XDP_REDIRECT;
}

/* The usual frame, before anything generic: untagged IPv4 without options,
 * UDP to a group, whole. Its header fields are read in place and its key
 * is four words (fast_lookup_ipv4), never built on the stack. Any other
 * frame, or one that fails a check parse_headers makes, returns
 * MCR_GENERIC untouched and uncounted: fast_forward's parse then says
 * what it is. From the lookup on, it does what fast_forward does. */
static __always_inline int fast_ipv4(struct xdp_md *ctx, struct mcr_config *cfg, void *data, void *data_end,
				     __u64 bytes)
{
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct udphdr *udp = (void *)(iph + 1);
	struct mcr_rule *rule = NULL;
	__u32 ifindex = ctx->ingress_ifindex, word1, tot_len, ulen;
	int none;

	if ((void *)(udp + 1) > data_end)
		return MCR_GENERIC;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || *(__u8 *)iph != 0x45 ||
	    (iph->daddr & bpf_htonl(0xf0000000)) != bpf_htonl(0xe0000000) ||
	    (iph->frag_off & bpf_htons(MCR_IP_MF | MCR_IP_OFFSET)) || iph->protocol != IPPROTO_UDP)
		return MCR_GENERIC;
	tot_len = bpf_ntohs(iph->tot_len);
	ulen = bpf_ntohs(udp->len);
	if (tot_len > data_end - (void *)iph || ulen < sizeof(*udp) || ulen + sizeof(*iph) > tot_len)
		return MCR_GENERIC;
	word1 = ipv4_key_word(udp->dest);
	if (cfg->ssm_rules) {
		rule = fast_lookup_ipv4(ifindex, word1, iph->saddr, iph->daddr, &none);
		if (!rule && !none)
			return MCR_SLOW;
	}
	if (!rule) {
		rule = fast_lookup_ipv4(ifindex, word1, 0, iph->daddr, &none);
		if (!rule) {
			if (!none || cfg->range_rules || cfg->any_port_rules)
				return MCR_SLOW;
			count_verdict(MCR_V_PASS_NO_RULE, bytes);
			return XDP_PASS;
		}
	}
	if (!fast_sendable(rule, iph->ttl) || !ipv4_checksum_ok_short(iph, data_end))
		return MCR_SLOW;  /* forward()'s, or a bad checksum (counted there) */
	rewrite_ipv4(eth, iph, udp, rule, &rule->out[0]);
	return fast_send(ctx, rule, ifindex, bytes);
}

/* The rules' common case, in the native ingress program before forward():
 * an untagged multicast frame whose rule has a copy in the fast path
 * (mcr_abi.h) and one output, no stream check, policer or merge, and
 * steering off. It is rewritten and sent through its output's direct slot
 * without any metadata work; the hash lookup and the two
 * bpf_xdp_adjust_meta calls forward() makes cost ~60 ns of its ~130 (calls
 * return through the CPU's return thunk here). Multicast that no rule can
 * match is passed and counted here too. Anything else returns MCR_SLOW
 * before it changed a byte or a counter, and forward() does it all again.
 * Only rule copies from mcr_fast_rules reach the code below the lookup,
 * and only rules from mcr_rules forward()'s: a pointer into either map
 * would make the verifier walk everything after it twice. */
static __always_inline int fast_forward(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct mcr_config *cfg = config();
	struct mcr_rule *rule = NULL;
	struct pkt p = {};
	__u32 verdict;
	int action, none;

	/* A unicast input's rules, steering, a driver that keeps no metadata
	 * (should the direct slot be missing, the egress program must be told
	 * the frame is rewritten): forward()'s. */
	if (!cfg || cfg->unicast_rules || cfg->steer_cpus || !meta_supported(ctx))
		return MCR_SLOW;
	if (own_mac(cfg, data, data_end))
		return MCR_SLOW;
	action = fast_ipv4(ctx, cfg, data, data_end, bytes);
	if (action != MCR_GENERIC)
		return action;
	verdict = parse_packet(data, data_end, ctx->ingress_ifindex, &p, 0);
	if (verdict != MCR_MATCH) {
		count_verdict(verdict, bytes);
		return XDP_PASS;
	}
	if (p.tagged)
		return MCR_SLOW;
	/* A source-specific rule first, as lookup_rule. */
	if (cfg->ssm_rules) {
		copy_source(p.key.source, &p);
		rule = fast_lookup(&p.key, &none);
		__builtin_memset(p.key.source, 0, sizeof(p.key.source));
		if (!rule && !none)
			return MCR_SLOW;
	}
	if (!rule) {
		rule = fast_lookup(&p.key, &none);
		if (!rule) {
			if (!none || cfg->range_rules || cfg->any_port_rules)
				return MCR_SLOW;
			count_verdict(MCR_V_PASS_NO_RULE, bytes);
			return XDP_PASS;
		}
	}
	if (!fast_sendable(rule, p.hops))
		return MCR_SLOW;
	if (p.iph && (p.iph->ihl != 5 || !ipv4_checksum_ok_short(p.iph, p.end)))
		return MCR_SLOW;  /* options, or a bad checksum (counted there) */
	rewrite(&p, p.eth, rule, &rule->out[0]);
	return fast_send(ctx, rule, p.key.ifindex, bytes);
}

/* Only a frame to a multicast MAC can be ours, unless a unicast input has
 * a rule: every other frame (the host's unicast traffic) goes on without
 * touching its metadata area. */
static __always_inline int may_be_ours(struct xdp_md *ctx)
{
	__u8 *dst = (void *)(long)ctx->data;

	if ((void *)(dst + 1) > (void *)(long)ctx->data_end)
		return 0;
	return (dst[0] & 1) || unicast_rules(config());
}

MCR_PROG("xdp") int mcr_relay(struct xdp_md *ctx)
{
	int ours = may_be_ours(ctx), action = ours ? fast_forward(ctx) : MCR_SLOW;

	if (action != MCR_SLOW)
		return action;
	return forward(ctx, 1, ours && meta_reserve(ctx), 1);
}

/* Generic XDP never steers: the kernel's cpumap runs its program on only
 * the first skb of each batch it dequeues (kernel/bpf/cpumap.c
 * cpu_map_bpf_prog_run_skb returns after the first redirect or drop, until
 * the skb-array rework of Linux 6.x) and hands the others to the host
 * stack unrelayed and uncounted: 2,000-14,000 of 40,000 frames in a 6.1
 * run (docs/architecture.md, Steering). */
MCR_PROG("xdp") int mcr_relay_skb(struct xdp_md *ctx)
{
	return forward(ctx, 0, 0, 0);
}

/* The cpumap program: the same forwarding, on the CPU steering chose. A
 * frame from native XDP brings the metadata its ingress program reserved
 * (MCR_META_STEER); on the skb path (generic XDP) none is visible, and
 * the egress program will see none either. */
MCR_PROG("xdp/cpumap") int mcr_cpu_relay(struct xdp_md *ctx)
{
	struct mcr_meta *m = meta_of(ctx);

	/* Never a frame of an MCR_RULE_VIA_TC rule from native XDP: those
	 * are passed before steering. */
	return forward(ctx, 0, m && m->magic == MCR_META_STEER, 0);
}

/* Which output of rule a copy leaving through egress_ifindex is. Usually
 * one output uses that interface. When k > 1 do (one interface, several
 * groups), the copies are told apart by order: the broadcast enqueues them
 * in devmap key order, the device's queue runs them in that order on this
 * CPU, and the control plane keeps those outputs in the rule's order. With
 * the packet number from the metadata the first copy of each packet is
 * output 1 again, whatever was lost before; without it (generic XDP, whose
 * copies are never dropped between two of an interface's outputs) a per-CPU
 * rotating index hands out 1, 2, .., k. */
static __always_inline int egress_output(struct mcr_rule *rule, __u32 egress_ifindex, struct mcr_meta *m)
{
	__u32 first = MCR_MAX_OUTPUTS, k = 0, pick, slot = 0;
	struct mcr_egress_state *st;
	int i;

	for (i = 0; i < MCR_MAX_OUTPUTS; i++) {
		if (i >= rule->n_outputs)
			break;
		if (rule->out[i].ifindex == egress_ifindex) {
			if (!k) {
				first = i;
				slot = rule->out[i].stat;  /* read here, at a constant i: the verifier
							   * explodes on out[first] after the loop */
			}
			k++;
		}
	}
	if (k <= 1)
		return k ? (int)first : -1;
	st = mcr_egress_rr.lookup(&slot);
	if (!st)
		return -1;
	if (m) {
		pick = st->seq == m->seq ? st->next : 0;
		st->seq = m->seq;
		if (pick >= k)
			return -1;  /* more copies than outputs: never sent twice */
	} else {
		pick = st->next % k;
	}
	st->next = pick + 1;
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

/* Place one redirected frame on egress_ifindex: pass it if the ingress
 * program rewrote it, else rewrite its original (untagged) headers for the
 * output of its rule that leaves there. Our metadata goes either way. */
static __always_inline int egress(struct xdp_md *ctx, __u32 egress_ifindex)
{
	struct mcr_meta meta = {}, *m = meta_of(ctx);
	__u32 ifindex = ctx->ingress_ifindex;
	struct mcr_config *cfg;
	struct mcr_rule *rule;
	struct pkt p = {};
	void *data, *data_end;
	__u64 bytes;
	int idx;

	if (meta_ours(m) && m->magic != MCR_META_STEER) {
		meta = *m;
		bpf_xdp_adjust_meta(ctx, (int)sizeof(meta));
		if (meta.magic == MCR_META_DONE)
			return XDP_PASS;
		ifindex = meta.ifindex;
		m = &meta;
	} else {
		m = NULL;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	bytes = data_end - data;
	cfg = config();
	if (parse_packet(data, data_end, ifindex, &p, unicast_rules(cfg)) != MCR_MATCH || p.tagged)
		goto drop;
	rule = lookup_rule(cfg, &p);
	if (!rule)
		goto drop;
	idx = egress_output(rule, egress_ifindex, m);
	if (idx < 0 || idx >= MCR_MAX_OUTPUTS)
		goto drop;
	if (rule->out[idx].flags & MCR_OUT_UNRESOLVED) {
		count_verdict(MCR_V_DROP_NO_NEIGH, bytes);
		return XDP_DROP;
	}
	rewrite(&p, p.eth, rule, &rule->out[idx]);
	count_output(&rule->out[idx], bytes);
	return XDP_PASS;
drop:
	count_verdict(MCR_V_EGRESS_DROP, bytes);
	return XDP_DROP;
}

MCR_PROG("xdp/devmap") int mcr_egress(struct xdp_md *ctx)
{
	return egress(ctx, ctx->egress_ifindex);
}

#ifdef MCR_TEST_TWINS
/* Devmap egress programs cannot be test-run, and BPF_PROG_TEST_RUN takes
 * no egress ifindex: this plain-XDP twin runs the same code with the
 * egress interface taken from a map the test sets. */
BPF_ARRAY(mcr_twin_egress, __u32, 1);

MCR_PROG("xdp") int mcr_egress_twin(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *ifindex = mcr_twin_egress.lookup(&zero);

	return egress(ctx, ifindex ? *ifindex : 0);
}
#endif
