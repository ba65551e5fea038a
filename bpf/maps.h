/* SPDX-License-Identifier: GPL-2.0 */
/*
 * maps.h - map definitions, BPF side only. Names must match the MCR_MAP_*
 * strings in mcr_abi.h (bcc needs bare identifiers here).
 */
#ifndef MCR_MAPS_H
#define MCR_MAPS_H

#include "mcr_abi.h"

BPF_HASH(mcr_rules, struct mcr_rule_key, struct mcr_rule, MCR_MAX_RULES);

/* Entries carry a program slot so later ABI versions can attach a
 * per-output egress program; bcc's BPF_DEVMAP has a 4-byte value and can't. */
struct mcr_devmap_val {
	u32 ifindex;
	int prog_fd;
};
BPF_XDP_REDIRECT_MAP("devmap", struct mcr_devmap_val, mcr_tx_ports, MCR_MAX_PORTS);

BPF_PERCPU_ARRAY(mcr_verdicts, struct mcr_counter, MCR_V_MAX);
BPF_PERCPU_ARRAY(mcr_rule_stats, struct mcr_rule_counters, MCR_MAX_RULES);

#endif /* MCR_MAPS_H */
