/* The userspace fallback's inner loop, in C: a worker hands it one ring
 * block at a time (mcr_xdp/fallback/native.py loads it, worker.py calls
 * it). Python stays the model (forward.py): this file relays only the
 * frames whose outcome is certain to be forward.py's "forward to every
 * output", with the same bytes, and hands every other frame back to the
 * worker's Python (deferred), which gives it its verdict:
 *
 *   relayed here   IPv4/IPv6 UDP, well formed, not a fragment, a valid
 *                  header checksum, an exact rule (SSM first, then any
 *                  source) without stream checks or a policer, at least
 *                  one resolved output, a TTL that allows it;
 *   deferred       everything else: no rule, a range rule (their trie is
 *                  Python's), ;health=, merge legs, ;police=, a frame of
 *                  the relay's own (loop guard), malformed frames, TTL 1.
 *
 * A flow's frames all take one of the two ways (the way depends on its
 * rule, not on the frame), so deferring never reorders a stream.
 *
 * Copies are sent with sendmmsg(), one call per output socket per chunk of
 * frames: the rewritten headers from a scratch area, the payload straight
 * from the ring (the block goes back to the kernel only after the worker
 * is done with it). Counters are the worker's shared block, in the layout
 * forward.py and the datapath use (the worker passes each counter's index).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define MAX_OUTPUTS 16
#define MAX_RULES 65536
#define BUCKETS 65536
#define TP_STATUS_CSUMNOTREADY (1u << 3)
#define CHUNK 64                  /* frames relayed before their copies are sent and counted */
#define QUEUES 16                 /* output sockets one chunk may send on */
#define QUEUE 64                 /* copies per output socket per chunk */
#define HDR_MAX (14 + 60 + 8)     /* Ethernet, IPv4 with options, UDP (IPv6: 62) */

struct mcr_fast_out {
	int32_t fd;              /* the output's send socket; -1: none (the copy is lost) */
	uint32_t counter;        /* its packets counter (counters.output_base) */
	uint32_t ip_delta;       /* checksum deltas as forward.Out holds them */
	uint32_t l4_delta;
	uint8_t eth[12];         /* destination then source MAC */
	uint8_t group[16];       /* 4 or 16 bytes */
	uint8_t port[2];         /* network order */
	uint8_t ttl;             /* ;ttl=N, 0: the received TTL minus one */
	uint8_t pad;
};

struct mcr_fast_rule {
	uint32_t id;
	uint32_t ifindex;
	uint32_t counter;        /* the rule's packets counter (counters.rule_base) */
	uint16_t unresolved;     /* unicast receivers without a next-hop MAC: counted, not sent */
	uint8_t addr_len;        /* 4 or 16 */
	uint8_t has_source;      /* source-specific (SSM) */
	uint8_t slow;            /* stream checks or a policer: Python relays its frames */
	uint8_t unicast;         /* a rule of a unicast input */
	uint8_t n_out;           /* resolved outputs, in rule order */
	uint8_t port[2];         /* network order */
	uint8_t source[16];
	uint8_t group[16];
	struct mcr_fast_out out[MAX_OUTPUTS];
};

struct node {
	struct node *next;
	struct mcr_fast_rule r;
};

struct pending {                 /* a relayed frame whose copies are queued */
	struct mcr_fast_rule *rule;
	uint32_t len;            /* tp_len: what the byte counters count */
	uint16_t sent;
};

struct queue {
	int fd;
	unsigned n;
	struct mmsghdr msg[QUEUE];
	struct iovec iov[QUEUE][2];
	uint16_t frame[QUEUE];   /* index in pending */
	uint32_t counter[QUEUE]; /* the output's packets counter */
	uint8_t hdr[QUEUE][HDR_MAX];
};

struct fast {
	uint64_t *c;             /* the worker's counter block */
	unsigned v_redirect, v_multi, v_no_output, v_no_neigh;
	struct node *bucket[BUCKETS];
	struct node *by_id[MAX_RULES];
	unsigned unicast;        /* rules of unicast inputs */
	uint8_t (*macs)[6];      /* the relay's own output MACs (loop guard) */
	unsigned n_macs;
	struct pending pending[CHUNK];
	unsigned n_pending;
	struct queue q[QUEUES];
	unsigned n_queues;
};

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void put16(uint8_t *p, unsigned v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static unsigned fold(uint64_t v)
{
	while (v >> 16)
		v = (v & 0xFFFF) + (v >> 16);
	return (unsigned)v;
}

/* RFC 1624 eqn. 3 (forward._apply): check and delta folded. */
static unsigned apply(unsigned check, unsigned delta)
{
	unsigned s = (~check & 0xFFFF) + delta;
	return ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF;
}

/* Big-endian 16-bit words of p summed (an odd last byte padded with 0). */
static uint64_t words(const uint8_t *p, size_t n)
{
	uint64_t s = 0;
	size_t i;

	for (i = 0; i + 1 < n; i += 2)
		s += be16(p + i);
	if (n & 1)
		s += (uint64_t)p[n - 1] << 8;
	return s;
}

/* forward._udp_checksum: the full checksum of pseudo header + segment. */
static unsigned udp_full(uint64_t pseudo, const uint8_t *seg, const uint8_t *port, const uint8_t *payload,
			 size_t n)
{
	uint64_t s = pseudo + be16(seg) + be16(port) + be16(seg + 4) + words(payload, n);

	s %= 0xFFFF;
	s = ~(s ? s : 0xFFFF) & 0xFFFF;
	return s ? (unsigned)s : 0xFFFF;
}

static unsigned hash(uint32_t ifindex, unsigned len, const uint8_t *source, const uint8_t *group,
		     const uint8_t *port)
{
	uint32_t h = 2166136261u ^ ifindex;
	unsigned i;

	h = (h ^ len) * 16777619u;
	for (i = 0; i < len; i++)
		h = (h ^ source[i]) * 16777619u;
	for (i = 0; i < len; i++)
		h = (h ^ group[i]) * 16777619u;
	h = (h ^ port[0]) * 16777619u;
	h = (h ^ port[1]) * 16777619u;
	return h % BUCKETS;
}

static const uint8_t ANY[16];

static struct mcr_fast_rule *find(struct fast *f, uint32_t ifindex, unsigned len, const uint8_t *source,
				  const uint8_t *group, const uint8_t *port)
{
	struct node *n;

	for (n = f->bucket[hash(ifindex, len, source, group, port)]; n; n = n->next)
		if (n->r.ifindex == ifindex && n->r.addr_len == len && !memcmp(n->r.port, port, 2) &&
		    !memcmp(n->r.group, group, len) && !memcmp(n->r.source, source, len))
			return &n->r;
	return NULL;
}

/* forward.Table.lookup's exact part: (source, group, port), then (group, port). */
static struct mcr_fast_rule *lookup(struct fast *f, uint32_t ifindex, unsigned len, const uint8_t *source,
				    const uint8_t *group, const uint8_t *port)
{
	struct mcr_fast_rule *r = find(f, ifindex, len, source, group, port);

	return r ? r : find(f, ifindex, len, ANY, group, port);
}

static int own_mac(const struct fast *f, const uint8_t *mac)
{
	unsigned i;

	for (i = 0; i < f->n_macs; i++)
		if (!memcmp(f->macs[i], mac, 6))
			return 1;
	return 0;
}

/* Send every queued copy, then count each pending frame as forward.py's
 * worker does: its outputs' copies, its verdict, its rule. */
static void flush(struct fast *f)
{
	uint64_t *c = f->c;
	unsigned i, k;

	for (i = 0; i < f->n_queues; i++) {
		struct queue *q = &f->q[i];

		for (k = 0; k < q->n;) {
			int r = q->fd < 0 ? -1 : sendmmsg(q->fd, q->msg + k, q->n - k, 0);

			if (r < 0) {
				if (q->fd >= 0 && errno == EINTR)
					continue;
				k++;    /* this copy is lost: the output went away or is down */
				continue;
			}
			for (; r > 0; r--, k++) {
				struct pending *p = &f->pending[q->frame[k]];

				p->sent++;
				c[q->counter[k]] += 1;
				c[q->counter[k] + 1] += p->len;
			}
		}
		q->n = 0;
	}
	f->n_queues = 0;
	for (i = 0; i < f->n_pending; i++) {
		struct pending *p = &f->pending[i];
		struct mcr_fast_rule *r = p->rule;
		unsigned v = r->n_out == 1 ? f->v_redirect : f->v_multi;

		if (r->unresolved) {
			c[f->v_no_neigh << 1] += r->unresolved;
			c[(f->v_no_neigh << 1) + 1] += (uint64_t)r->unresolved * p->len;
		}
		if (!p->sent)
			v = f->v_no_output;
		c[v << 1] += 1;
		c[(v << 1) + 1] += p->len;
		c[r->counter] += 1;
		c[r->counter + 1] += p->len;
		c[r->counter + (v == f->v_no_output ? 3 : 2)] += 1;
	}
	f->n_pending = 0;
}

/* The queue of output fd, with room for one more copy; flushes the chunk
 * when none is left. */
static struct queue *queue_of(struct fast *f, int fd)
{
	unsigned i;

	for (i = 0; i < f->n_queues; i++)
		if (f->q[i].fd == fd)
			return &f->q[i];
	f->q[i].fd = fd;
	f->q[i].n = 0;
	f->n_queues++;
	return &f->q[i];
}

/* Room for a frame with n copies on these outputs: else flush first. */
static void make_room(struct fast *f, const struct mcr_fast_rule *r)
{
	unsigned i, k, fresh = 0;

	if (f->n_pending == CHUNK)
		goto full;
	for (i = 0; i < r->n_out; i++) {
		for (k = 0; k < f->n_queues; k++)
			if (f->q[k].fd == r->out[i].fd)
				break;
		if (k == f->n_queues)
			fresh++;
		else if (f->q[k].n + r->n_out > QUEUE)
			goto full;
	}
	if (f->n_queues + fresh <= QUEUES)
		return;
full:
	flush(f);
}

static void enqueue(struct fast *f, const struct mcr_fast_out *o, unsigned frame, unsigned hdr_len,
		    const uint8_t *rest, size_t rest_len, uint8_t **hdr)
{
	struct queue *q = queue_of(f, o->fd);
	unsigned k = q->n++;

	q->iov[k][0].iov_base = q->hdr[k];
	q->iov[k][0].iov_len = hdr_len;
	q->iov[k][1].iov_base = (void *)rest;
	q->iov[k][1].iov_len = rest_len;
	memset(&q->msg[k], 0, sizeof(q->msg[k]));
	q->msg[k].msg_hdr.msg_iov = q->iov[k];
	q->msg[k].msg_hdr.msg_iovlen = 2;
	q->frame[k] = (uint16_t)frame;
	q->counter[k] = o->counter;
	*hdr = q->hdr[k];
}

static struct pending *pend(struct fast *f, struct mcr_fast_rule *r, uint32_t len)
{
	struct pending *p;

	make_room(f, r);
	p = &f->pending[f->n_pending++];
	p->rule = r;
	p->len = len;
	p->sent = 0;
	return p;
}

/* forward.Table.handle's IPv4 forward path; 0: deferred. */
static int relay4(struct fast *f, const uint8_t *p, uint32_t n, uint32_t len, uint32_t ifindex, int partial)
{
	unsigned ihl, tot, frag, ttl, proto, l4, ulen, ucheck, set_ttl, extra, i;
	const uint8_t *group;
	struct mcr_fast_rule *r;
	uint64_t pseudo = 0;

	if (n < 34)
		return 0;
	ihl = (p[14] & 0x0F) << 2;
	tot = be16(p + 16);
	frag = be16(p + 20);
	ttl = p[22];
	proto = p[23];
	group = p + 30;
	if (p[14] >> 4 != 4 || ihl < 20 || tot < ihl || 14 + tot > n)
		return 0;
	if ((group[0] & 0xF0) != 0xE0 && !f->unicast)
		return 0;
	if (frag & 0x3FFF || proto != 17 || tot < ihl + 8)
		return 0;
	l4 = 14 + ihl;
	ulen = be16(p + l4 + 4);
	if (ulen < 8 || ulen > tot - ihl)
		return 0;
	r = lookup(f, ifindex, 4, p + 26, group, p + l4 + 2);
	if (!r || r->slow || !r->n_out)
		return 0;
	if (words(p + 14, ihl) % 0xFFFF)
		return 0;
	set_ttl = r->out[0].ttl;
	if (ttl <= 1 && !set_ttl)
		return 0;
	extra = set_ttl ? (~(ttl << 8 | 17) & 0xFFFF) + (set_ttl << 8 | 17) : 0;
	ucheck = be16(p + l4 + 6);
	if (partial)
		pseudo = words(p + 26, 4) + 17 + ulen;
	struct pending *pe = pend(f, r, len);
	unsigned frame = (unsigned)(pe - f->pending);

	for (i = 0; i < r->n_out; i++) {
		const struct mcr_fast_out *o = &r->out[i];
		unsigned check = 0;
		uint8_t *h;

		enqueue(f, o, frame, l4 + 8, p + l4 + 8, n - (l4 + 8), &h);
		memcpy(h, o->eth, 12);
		memcpy(h + 12, p + 12, 10);
		h[22] = (uint8_t)(set_ttl ? set_ttl : ttl - 1);
		h[23] = 17;
		put16(h + 24, apply(be16(p + 24), fold((uint64_t)o->ip_delta + extra)));
		memcpy(h + 26, p + 26, 4);
		memcpy(h + 30, o->group, 4);
		memcpy(h + 34, p + 34, ihl - 20);
		memcpy(h + l4, p + l4, 2);
		memcpy(h + l4 + 2, o->port, 2);
		memcpy(h + l4 + 4, p + l4 + 4, 2);
		if (partial)
			check = udp_full(pseudo + words(o->group, 4), p + l4, o->port, p + l4 + 8, 14 + tot - (l4 + 8));
		else if (ucheck && !(check = apply(ucheck, o->l4_delta)))
			check = 0xFFFF;
		put16(h + l4 + 6, check);
	}
	return 1;
}

/* forward.Table.handle's IPv6 forward path; 0: deferred. */
static int relay6(struct fast *f, const uint8_t *p, uint32_t n, uint32_t len, uint32_t ifindex, int partial)
{
	unsigned plen, nh, hops, ulen, ucheck, set_ttl, i;
	const uint8_t *group;
	struct mcr_fast_rule *r;
	uint64_t pseudo = 0;

	if (n < 62)
		return 0;
	plen = be16(p + 18);
	nh = p[20];
	hops = p[21];
	group = p + 38;
	if (p[14] >> 4 != 6 || 54 + plen > n)
		return 0;
	if (group[0] != 0xFF && !f->unicast)
		return 0;
	if (nh != 17 || plen < 8)
		return 0;
	ulen = be16(p + 58);
	ucheck = be16(p + 60);
	if (!ucheck || ulen < 8 || ulen > plen)
		return 0;
	r = lookup(f, ifindex, 16, p + 22, group, p + 56);
	if (!r || r->slow || !r->n_out)
		return 0;
	set_ttl = r->out[0].ttl;
	if (hops <= 1 && !set_ttl)
		return 0;
	if (partial)
		pseudo = words(p + 22, 16) + ulen + 17;
	struct pending *pe = pend(f, r, len);
	unsigned frame = (unsigned)(pe - f->pending);

	for (i = 0; i < r->n_out; i++) {
		const struct mcr_fast_out *o = &r->out[i];
		unsigned check;
		uint8_t *h;

		enqueue(f, o, frame, 62, p + 62, n - 62, &h);
		memcpy(h, o->eth, 12);
		memcpy(h + 12, p + 12, 9);
		h[21] = (uint8_t)(set_ttl ? set_ttl : hops - 1);
		memcpy(h + 22, p + 22, 16);
		memcpy(h + 38, o->group, 16);
		memcpy(h + 54, p + 54, 2);
		memcpy(h + 56, o->port, 2);
		memcpy(h + 58, p + 58, 2);
		if (partial)
			check = udp_full(pseudo + words(o->group, 16), p + 54, o->port, p + 62, 54 + plen - 62);
		else if (!(check = apply(ucheck, o->l4_delta)))
			check = 0xFFFF;
		put16(h + 60, check);
	}
	return 1;
}

/* One TPACKET_V3 block handed over by the kernel: relay what can be relayed
 * here, write the offsets (from the block's start) of the other frames'
 * tpacket3_hdr into defer (in ring order), and return how many there are.
 * Every copy of the relayed frames is sent and counted before it returns. */
uint32_t mcr_fast_block(struct fast *f, const uint8_t *block, uint32_t ifindex, uint32_t *defer, uint32_t max)
{
	uint32_t num, off, k, nd = 0;

	memcpy(&num, block + 12, 4);
	memcpy(&off, block + 16, 4);
	for (k = 0; k < num; k++) {
		const uint8_t *h = block + off;
		uint32_t next, snap, len, status;
		uint16_t mac;
		const uint8_t *p;
		int done = 0;

		memcpy(&next, h, 4);
		memcpy(&snap, h + 12, 4);
		memcpy(&len, h + 16, 4);
		memcpy(&status, h + 20, 4);
		memcpy(&mac, h + 24, 2);
		p = h + mac;
		if (snap >= 14 && !(p[0] & 1 && f->n_macs && own_mac(f, p + 6))) {
			if (p[12] == 0x08 && p[13] == 0x00)
				done = relay4(f, p, snap, len, ifindex, status & TP_STATUS_CSUMNOTREADY);
			else if (p[12] == 0x86 && p[13] == 0xDD)
				done = relay6(f, p, snap, len, ifindex, status & TP_STATUS_CSUMNOTREADY);
		}
		if (!done && nd < max)
			defer[nd++] = off;
		off += next;
	}
	flush(f);
	return nd;
}

struct fast *mcr_fast_new(uint64_t *counters, unsigned v_redirect, unsigned v_multi, unsigned v_no_output,
			  unsigned v_no_neigh)
{
	struct fast *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->c = counters;
	f->v_redirect = v_redirect;
	f->v_multi = v_multi;
	f->v_no_output = v_no_output;
	f->v_no_neigh = v_no_neigh;
	return f;
}

int mcr_fast_delete(struct fast *f, uint32_t id)
{
	struct node *n, **at;

	if (id >= MAX_RULES || !(n = f->by_id[id]))
		return 0;
	at = &f->bucket[hash(n->r.ifindex, n->r.addr_len, n->r.source, n->r.group, n->r.port)];
	while (*at != n)
		at = &(*at)->next;
	*at = n->next;
	f->by_id[id] = NULL;
	f->unicast -= n->r.unicast;
	free(n);
	return 1;
}

/* Install or replace a rule (by id); -1: no memory, -2: out of range. */
int mcr_fast_put(struct fast *f, const struct mcr_fast_rule *r)
{
	struct node *n;
	unsigned b;

	if (r->id >= MAX_RULES || (r->addr_len != 4 && r->addr_len != 16) || r->n_out > MAX_OUTPUTS)
		return -2;
	mcr_fast_delete(f, r->id);
	n = malloc(sizeof(*n));
	if (!n)
		return -1;
	n->r = *r;
	if (!n->r.has_source)
		memset(n->r.source, 0, sizeof(n->r.source));
	b = hash(n->r.ifindex, n->r.addr_len, n->r.source, n->r.group, n->r.port);
	n->next = f->bucket[b];
	f->bucket[b] = n;
	f->by_id[r->id] = n;
	f->unicast += n->r.unicast;
	return 0;
}

/* The relay's own output MACs (6 bytes each), for the loop guard. */
int mcr_fast_own_macs(struct fast *f, const uint8_t *macs, uint32_t n)
{
	uint8_t (*copy)[6] = n ? malloc((size_t)n * 6) : NULL;

	if (n && !copy)
		return -1;
	if (n)
		memcpy(copy, macs, (size_t)n * 6);
	free(f->macs);
	f->macs = copy;
	f->n_macs = n;
	return 0;
}

void mcr_fast_free(struct fast *f)
{
	uint32_t id;

	if (!f)
		return;
	for (id = 0; id < MAX_RULES; id++)
		if (f->by_id[id])
			mcr_fast_delete(f, id);
	free(f->macs);
	free(f);
}

/* The layout check: sizeof(struct mcr_fast_rule) << 16 | sizeof(struct mcr_fast_out). */
uint32_t mcr_fast_abi(void)
{
	return (uint32_t)(sizeof(struct mcr_fast_rule) << 16 | sizeof(struct mcr_fast_out));
}
