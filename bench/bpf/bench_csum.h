/* SPDX-License-Identifier: GPL-2.0 */
/* bench_csum.h - the benchmark programs' one's complement arithmetic. */
#ifndef BENCH_CSUM_H
#define BENCH_CSUM_H

/* A 32-bit one's complement sum folded to 16 bits. */
static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

#endif
