/* SPDX-License-Identifier: GPL-2.0 */
/*
 * health.h - stream health of a rule's packets (;health=rtp|mpegts): RTP
 * sequence numbers and MPEG-TS continuity counters, tracked in mcr_health
 * (struct mcr_health says how). Part of the datapath's one translation
 * unit (loader.DATAPATH_SOURCES), after forward.h: bcc rewrites the map
 * calls here. Rules without the option never get past the flag test.
 */
#ifndef MCR_HEALTH_H
#define MCR_HEALTH_H

#define MCR_RTP_HLEN 12

/* One RTP sequence number (state locked by the caller); 1 when it was seen
 * before (a duplicate). */
static __always_inline int rtp_track(struct mcr_health *h, __u16 seq, __u32 ssrc)
{
	__u64 ext, bit;
	__s16 delta = 0;
	__u32 w, epoch;

	if (!(h->state & MCR_HEALTH_STARTED) || ssrc != h->ssrc) {
		if (h->state & MCR_HEALTH_STARTED) {
			/* A new stream: what the old one lost stays lost. */
			h->ssrc_changes++;
			h->lost_before += h->max - h->first + 1 - h->unique;
		}
		/* Two epochs on from the last: no word of the old stream is valid. */
		ext = (((h->max >> 16) + 2) << 16) | seq;
		h->ssrc = ssrc;
		h->first = ext;
		h->max = ext;
		h->unique = 0;
		h->state |= MCR_HEALTH_STARTED;
	} else {
		delta = (__s16)(seq - (__u16)h->max);
		ext = h->max + (__s64)delta;
		if (delta > 0)
			h->max = ext;
		else if (ext < h->first)
			h->first = ext;
	}
	w = (ext >> 6) & (MCR_HEALTH_WORDS - 1);
	epoch = ext >> 16;
	bit = 1ULL << (ext & 63);
	if (h->epoch[w] != epoch) {
		h->epoch[w] = epoch;
		h->seen[w] = 0;
	}
	if (h->seen[w] & bit) {
		h->duplicates++;
		return 1;
	}
	h->seen[w] |= bit;
	h->unique++;
	if (delta < 0)
		h->reordered++;
	return 0;
}

/* The TS packets of a datagram, from ts (state locked by the caller). */
static __always_inline void ts_check(struct mcr_health *h, __u8 *ts, void *end)
{
	__u8 *t, st, cc, afc;
	__u32 pid;
	int i;

#pragma unroll
	for (i = 0; i < MCR_TS_PER_DATAGRAM; i++) {
		t = ts + i * MCR_TS_PACKET;
		if ((void *)(t + MCR_TS_PACKET) > end)
			break;
		if (t[0] != 0x47) {
			h->invalid++;
			break;
		}
		h->ts_packets++;
		pid = ((t[1] & 0x1f) << 8) | t[2];
		afc = (t[3] >> 4) & 3;
		cc = t[3] & 0xf;
		/* Null packets carry no continuity; nor does a packet without
		 * payload advance it. */
		if (pid == 0x1fff || !(afc & 1))
			continue;
		/* 6.1's verifier loses the bounds of an OR, and clang drops a C
		 * mask it can prove changes nothing: bound the index in asm. */
		asm volatile("%0 &= 0x1fff" : "+r"(pid));
		st = h->cc[pid];
		/* A set discontinuity_indicator (adaptation field present, not
		 * empty) allows any counter. */
		if ((st & MCR_TS_SEEN) && !((afc & 2) && t[4] && (t[5] & 0x80))) {
			if (cc == (st & 0xf)) {
				/* One repeat is a duplicate packet; a second is an error. */
				if (st & MCR_TS_DUP)
					h->cc_errors++;
				h->cc[pid] = MCR_TS_SEEN | MCR_TS_DUP | cc;
				continue;
			}
			if (cc != ((st + 1) & 0xf))
				h->cc_errors++;
		}
		h->cc[pid] = MCR_TS_SEEN | cc;
	}
}

/* What the merge made of a leg's datagram (merge_check), for the leg's counts. */
#define MCR_MERGE_NONE 0     /* not a merge leg, or not forwarded for another reason */
#define MCR_MERGE_FIRST 1    /* the first copy: forwarded */
#define MCR_MERGE_COPY 2     /* a later copy: dropped */
#define MCR_MERGE_INVALID 3  /* no RTP header: dropped */

/* Track one matched datagram of a rule with MCR_RULE_HEALTH_*. pl: its
 * UDP payload, end: the end of the data the program can read; merged:
 * MCR_MERGE_*, what the merge made of it (a leg's). Every byte is read
 * once, right after its bounds check: the verifier does not know that a
 * flag set after a check covers a later read. */
static __always_inline void health_check(const struct mcr_rule *rule, __u8 *pl, void *end, int merged)
{
	__u32 id = rule->id, ssrc = 0, xlen, xoff;
	struct mcr_health *h = mcr_health.lookup(&id);
	__u8 *ts = pl, b0 = 0;
	__u16 seq = 0;
	int rtp = 0;

	if (!h)
		return;
	/* An RTP v2 header: the stream for rtp; for mpegts, in front of the
	 * TS packets or not (a TS sync byte, 0x47, is no RTP v2 first byte). */
	if ((void *)(pl + MCR_RTP_HLEN) <= end) {
		b0 = pl[0];
		if ((b0 >> 6) == 2) {
			rtp = 1;
			seq = (pl[2] << 8) | pl[3];
			ssrc = *(__u32 *)(pl + 8);
			ts = pl + MCR_RTP_HLEN + 4 * (b0 & 0xf);  /* after the CSRCs */
		}
	}
	/* An extension header: 4 bytes and its length in words. */
	xlen = 0;
	if (rtp && (b0 & 0x10)) {
		if ((void *)(ts + 4) > end)
			xlen = 0xffff;
		else
			xlen = (ts[2] << 8) | ts[3];
	}
	if (xlen && xlen <= 256) {
		xoff = 4 + 4 * xlen;
		/* A bound on the very register added (clang would drop a C mask). */
		asm volatile("%0 &= 0x7ff" : "+r"(xoff));
		ts += xoff;
		if ((void *)ts > end)
			xlen = 0xffff;  /* longer than the datagram */
	}
	bpf_spin_lock(&h->lock);
	h->received++;
	if (merged == MCR_MERGE_FIRST)
		h->first_copies++;
	else if (merged == MCR_MERGE_COPY)
		h->suppressed++;
	if (rtp)
		rtp_track(h, seq, ssrc);
	else if (rule->flags & MCR_RULE_HEALTH_RTP)
		h->invalid++;
	if (xlen > 256)  /* past the datagram, or a length no datagram can have */
		h->invalid++;
	else if (rule->flags & MCR_RULE_HEALTH_TS)
		ts_check(h, ts, end);
	bpf_spin_unlock(&h->lock);
}

/*
 * Seamless protection (;merge=rtp): a leg's datagram goes on only if no
 * leg brought its RTP sequence number before. The window is the merged
 * stream's, under its lock: legs handled by two CPUs at the same moment
 * still pass one copy. Without the stream's entry (not written yet) the
 * packet goes on: a merge never loses what it cannot judge.
 */
static __always_inline int merge_check(const struct mcr_rule *rule, __u8 *pl, void *end)
{
	__u32 id = rule->merge, ssrc = 0;
	struct mcr_health *m = mcr_merge.lookup(&id);
	__u64 now;
	__u16 seq = 0;
	int rtp = 0, merged;

	if (!m)
		return MCR_MERGE_FIRST;
	if ((void *)(pl + MCR_RTP_HLEN) <= end && (pl[0] >> 6) == 2) {
		rtp = 1;
		seq = (pl[2] << 8) | pl[3];
		ssrc = *(__u32 *)(pl + 8);
	}
	now = bpf_ktime_get_ns();
	bpf_spin_lock(&m->lock);
	m->received++;
	if (!rtp) {
		m->invalid++;
		merged = MCR_MERGE_INVALID;
	} else if (rtp_track(m, seq, ssrc)) {
		merged = MCR_MERGE_COPY;
		/* Copies alone for longer than any path delay: the sender
		 * started its sequence over. What the old one lost stays lost;
		 * the next packet starts the window again. The clock was read
		 * before the lock: another CPU may have stored a later one. */
		if (now > m->last_ns && now - m->last_ns > MCR_MERGE_RESYNC_NS) {
			m->resyncs++;
			m->lost_before += m->max - m->first + 1 - m->unique;
			m->state &= ~MCR_HEALTH_STARTED;
		}
	} else {
		if (now > m->last_ns)
			m->last_ns = now;
		merged = MCR_MERGE_FIRST;
	}
	bpf_spin_unlock(&m->lock);
	return merged;
}

/*
 * The XDP programs check on the way out of forward(), not where the rule
 * is found: the verifier walks the check once per way out instead of once
 * per way in (twice the instructions, close to its limit). Where the
 * payload is goes from one to the other through a per-CPU scratch word,
 * as its distance from the end of the frame (a tag removed on the way
 * moves the start, not the end); a value read from a map is one the
 * verifier does not track, so it does not split the paths in between.
 */
static __always_inline void health_mark(__u32 from_end)
{
	__u32 zero = 0;
	struct mcr_scratch *scratch = mcr_scratch.lookup(&zero);

	if (scratch)
		scratch->from_end = from_end;
}

/* The payload the mark points at, NULL if none. */
static __always_inline __u8 *payload_at_mark(void *data, void *end)
{
	__u32 zero = 0;
	struct mcr_scratch *scratch = mcr_scratch.lookup(&zero);
	__u64 off;

	if (!scratch)
		return NULL;
	/* The payload starts at most 86 bytes in (Ethernet, a tag, IPv4 with
	 * options, UDP); the mask bounds the very register the verifier sees
	 * added (clang would drop a C mask after the comparison). */
	off = (__u64)(end - data) - scratch->from_end;
	if (off > 128)
		return NULL;
	asm volatile("%0 &= 0xff" : "+r"(off));
	return data + off;
}

static __always_inline void health_at_mark(const struct mcr_rule *rule, void *data, void *end, int merged)
{
	__u8 *pl = payload_at_mark(data, end);

	if (pl)
		health_check(rule, pl, end, merged);
}

/* A merge leg's packet on its way out: MCR_MERGE_FIRST to send it. */
static __always_inline int merge_at_mark(const struct mcr_rule *rule, void *data, void *end)
{
	__u8 *pl = payload_at_mark(data, end);

	return pl ? merge_check(rule, pl, end) : MCR_MERGE_FIRST;
}

#endif /* MCR_HEALTH_H */
