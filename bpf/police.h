/* SPDX-License-Identifier: GPL-2.0 */
/*
 * police.h - what keeps a stream from flooding the networks behind the
 * relay: a rule's policer (;police=RATE), a token bucket in mcr_police
 * (struct mcr_police says how), one for all CPUs; and the loop guard.
 * Part of the datapath's one translation unit (loader.DATAPATH_SOURCES):
 * bcc rewrites the map calls here. Rules without a policer never get past
 * the flag test.
 */
#ifndef MCR_POLICE_H
#define MCR_POLICE_H

/* 1 when a packet of bytes is within its rule's rate (it takes its tokens),
 * 0 when over (counted, to be dropped). No state: within. */
static __always_inline int police_ok(const struct mcr_rule *rule, __u64 bytes)
{
	__u32 id = rule->id;
	struct mcr_police *pol = mcr_police.lookup(&id);
	__u64 now = bpf_ktime_get_ns(), elapsed, tokens, cost;
	int ok;

	if (!pol)
		return 1;
	bpf_spin_lock(&pol->lock);
	cost = (pol->flags & MCR_POLICE_BITS) ? bytes * 8 * MCR_NSEC : MCR_NSEC;
	/* Past fill_ns the bucket is full: no product can overflow. The
	 * clock was read before the lock: another CPU may have stored a
	 * later one (then nothing has elapsed, and last_ns stays). */
	elapsed = now > pol->last_ns ? now - pol->last_ns : 0;
	if (elapsed > pol->fill_ns)
		elapsed = pol->fill_ns;
	tokens = pol->tokens + elapsed * pol->rate;
	if (tokens > pol->burst)
		tokens = pol->burst;
	if (now > pol->last_ns)
		pol->last_ns = now;
	ok = tokens >= cost;
	if (ok) {
		tokens -= cost;
		pol->passed++;
	} else {
		pol->dropped++;
	}
	pol->tokens = tokens;
	bpf_spin_unlock(&pol->lock);
	return ok;
}

/*
 * The loop guard: a frame sent from one of the relay's own output MACs has
 * come back to an input, through a bridge or a loop in the network; relayed
 * again it would circle until its TTL runs out, multiplied by every fan-out
 * on the way. The control plane keeps mcr_own_macs and its filter
 * mcr_mac_filter; mcr_config.own_macs 0 (no output yet) skips the lookup.
 */
static __always_inline int own_mac(struct mcr_config *cfg, void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct mcr_mac key = {};
	__u32 bucket, *mine;

	/* Multicast frames only (the relay's own copies): the host's unicast
	 * traffic pays nothing. */
	if (!cfg || !cfg->own_macs || (void *)(eth + 1) > data_end || !(eth->h_dest[0] & 1))
		return 0;
	/* None of ours in the source's bucket: no hash lookup (~30 ns). */
	bucket = eth->h_source[4] ^ eth->h_source[5];
	mine = mcr_mac_filter.lookup(&bucket);
	if (mine && !*mine)
		return 0;
	__builtin_memcpy(key.addr, eth->h_source, sizeof(key.addr));
	return mcr_own_macs.lookup(&key) != NULL;
}

#endif /* MCR_POLICE_H */
