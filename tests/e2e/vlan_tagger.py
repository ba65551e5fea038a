"""Tag every frame a veth sends: `python vlan_tagger.py IFACE VID [VID]`,
run inside the sender's namespace.

A clsact egress program pushes the tags with bpf_skb_vlan_push, which puts
the outermost tag into skb metadata (what a NIC with VLAN receive offload
hands the stack): with the interface's tx-vlan-offload on, a veth delivers
it to its peer that way; with it off, the kernel writes it into the frame
before transmit. Two VIDs make a double-tagged (QinQ) frame, the first VID
outermost. The filter lives as long as the interface; the script exits.
"""

from __future__ import annotations

import sys

from bcc import BPF
from pyroute2 import IPRoute

PROGRAM = r"""
#include <uapi/linux/pkt_cls.h>
int tag(struct __sk_buff *skb)
{
	if (INNER && bpf_skb_vlan_push(skb, bpf_htons(0x8100), INNER))
		return TC_ACT_SHOT;
	if (bpf_skb_vlan_push(skb, bpf_htons(OUTER_TPID), OUTER))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
"""


def main(iface: str, outer: int, inner: int = 0) -> None:
    tpid = 0x88A8 if inner else 0x8100
    bpf = BPF(text=PROGRAM, cflags=[f"-DOUTER={outer}", f"-DINNER={inner}", f"-DOUTER_TPID={tpid}"])
    fn = bpf.load_func(b"tag", BPF.SCHED_CLS)
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=iface)[0]
        ipr.tc("add", "clsact", index)
        ipr.tc("add-filter", "bpf", index, ":1", fd=fn.fd, name=fn.name, parent="ffff:fff3", classid=1,
               direct_action=True)
    print("tagging", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *(int(v) for v in sys.argv[2:]))
