/* SPDX-License-Identifier: GPL-2.0 */
/*
 * bench_gen.c - in-kernel traffic generator for the benchmarks, run through
 * BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (Linux 5.18+): every
 * run turns one page of the test's page pool into an IPv4/UDP multicast
 * frame and redirects it out of the source veth, so the relay under test
 * receives real frames at a rate no socket sender reaches.
 *
 * Recycled pages are not re-initialised: the relay under test rewrote the
 * headers of the frame this page carried last time (MACs, group, port, TTL,
 * checksums), so every header byte is written here on every run. The
 * payload after the sequence number is never written by anyone and keeps
 * what bench/livegen.py put there.
 *
 * bench/livegen.py compiles this once per configuration with -D:
 *   GEN_IFINDEX     veth to redirect out of (the source end of the chain)
 *   GEN_STREAMS     number of streams; stream i goes to GEN_GROUP + i
 *   GEN_GROUP       first group, host order
 *   GEN_SADDR       source address, host order
 *   GEN_SPORT, GEN_DPORT, GEN_TTL, GEN_IP_LEN (IP total length)
 *   GEN_SMAC_HI, GEN_SMAC_LO  source MAC as 16 + 32 bits, host order
 *   GEN_IP_SUM      folded ones'-complement sum of the IP header words that
 *                   do not change (all but checksum and destination)
 *   GEN_UDP_SUM     the same for pseudo header + UDP header + payload,
 *                   with destination, checksum and sequence number as zero
 *   GEN_RTP         1: the payload starts with an RTP header (RFC 3550,
 *                   one SSRC) whose sequence number is the frame's low 16
 *                   bits, for the relay's stream checks (;health=, ;merge=)
 * Constants fold into the program. Two small maps steer a running test:
 *   gen_ctl[0]    (array, set by Python)  interval_ns: 0 = flat out, else
 *                 one frame per interval (a token bucket on bpf_ktime);
 *                 limit: stop sending after this many frames (0 = never).
 *   gen_state[0]  (per-CPU)  sent: frames redirected (also the sequence
 *                 number); next_ns: when the next frame is due.
 * Paced runs cannot sleep in BPF: a run whose frame is not due yet drops
 * its page straight back to the pool (cheap) and the test run spins on.
 * That is also why the rate is paced here at all: every BPF_PROG_TEST_RUN
 * call costs a fixed ~24 ms to set up and tear down its page pool on this
 * kernel, so bench/livegen.py makes one long call and interrupts it.
 * bench/livegen.py mirrors both structs (GenCtl, GenState).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#include "bench_csum.h"

#ifndef GEN_RTP
#define GEN_RTP 0
#endif
#define GEN_PAYLOAD_OFF (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))
#define GEN_RTP_LEN (GEN_RTP ? 12 : 0)
#define GEN_MAGIC_LEN 4
#define GEN_MIN_FRAME (GEN_PAYLOAD_OFF + GEN_RTP_LEN + GEN_MAGIC_LEN + 8)

/* Behind a frame that is not due yet the token bucket allows at most this
 * much catching up, so a stall never turns into a long line-rate burst. */
#define GEN_MAX_LAG_NS 1000000ULL

struct gen_ctl {
	__u64 interval_ns;
	__u64 limit;
};

struct gen_state {
	__u64 sent;
	__u64 next_ns;
};

BPF_ARRAY(gen_ctl, struct gen_ctl, 1);
BPF_PERCPU_ARRAY(gen_state, struct gen_state, 1);

static __always_inline __u32 add16(__u32 v)
{
	return (v >> 16) + (v & 0xffff);
}

int bench_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct udphdr *udp = (void *)(iph + 1);
	__be32 *seqp = data + GEN_PAYLOAD_OFF + GEN_RTP_LEN + GEN_MAGIC_LEN;
	__be16 *rtp_seq = data + GEN_PAYLOAD_OFF + 2;
	__u32 zero = 0, group, seq_hi, seq_lo, rtp = 0;
	struct gen_state *st;
	struct gen_ctl *ctl;
	__u64 seq, now;
	__u16 check;

	if (data + GEN_MIN_FRAME > end)
		return XDP_ABORTED;
	ctl = gen_ctl.lookup(&zero);
	st = gen_state.lookup(&zero);
	if (!ctl || !st)
		return XDP_ABORTED;
	if (ctl->limit && st->sent >= ctl->limit)
		return XDP_DROP;
	if (ctl->interval_ns) {
		now = bpf_ktime_get_ns();
		if (now < st->next_ns)
			return XDP_DROP;
		st->next_ns = st->next_ns + GEN_MAX_LAG_NS < now ? now - GEN_MAX_LAG_NS : st->next_ns;
		st->next_ns += ctl->interval_ns;
	}
	seq = st->sent++;
	group = GEN_GROUP + (__u32)(GEN_STREAMS > 1 ? seq % GEN_STREAMS : 0);

	/* 01:00:5e + low 23 bits of the group (RFC 1112 6.4). */
	eth->h_dest[0] = 0x01;
	eth->h_dest[1] = 0x00;
	eth->h_dest[2] = 0x5e;
	eth->h_dest[3] = (group >> 16) & 0x7f;
	eth->h_dest[4] = group >> 8;
	eth->h_dest[5] = group;
	*(__be16 *)&eth->h_source[0] = bpf_htons(GEN_SMAC_HI);
	*(__be32 *)&eth->h_source[2] = bpf_htonl(GEN_SMAC_LO);
	eth->h_proto = bpf_htons(ETH_P_IP);

	iph->version = 4;
	iph->ihl = 5;
	iph->tos = 0;
	iph->tot_len = bpf_htons(GEN_IP_LEN);
	iph->id = 0;
	iph->frag_off = 0;
	iph->ttl = GEN_TTL;
	iph->protocol = IPPROTO_UDP;
	iph->saddr = bpf_htonl(GEN_SADDR);
	iph->daddr = bpf_htonl(group);
	iph->check = bpf_htons((__u16)~fold(GEN_IP_SUM + add16(group)));

	seq_hi = seq >> 32;
	seq_lo = (__u32)seq;
	seqp[0] = bpf_htonl(seq_hi);
	seqp[1] = bpf_htonl(seq_lo);
	if (GEN_RTP) {
		rtp = (__u16)seq;
		*rtp_seq = bpf_htons(rtp);
	}
	udp->source = bpf_htons(GEN_SPORT);
	udp->dest = bpf_htons(GEN_DPORT);
	udp->len = bpf_htons(GEN_IP_LEN - sizeof(struct iphdr));
	check = ~fold(GEN_UDP_SUM + add16(group) + add16(seq_hi) + add16(seq_lo) + rtp);
	udp->check = bpf_htons(check ? check : 0xffff);

	return bpf_redirect(GEN_IFINDEX, 0);
}
