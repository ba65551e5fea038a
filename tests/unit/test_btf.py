"""Struct offsets from the running kernel's BTF (the loss tracer reads
devices at them, whatever headers bcc compiled against)."""

from __future__ import annotations

import pytest

from mcr_xdp.btf import KernelBtf
from mcr_xdp.errors import McrError


@pytest.fixture(scope="module")
def btf():
    with KernelBtf() as found:
        yield found


def test_the_offsets_the_loss_tracer_reads(btf):
    ifindex = btf.offset("net_device", "ifindex")
    net = btf.offset("net_device", "nd_net.net")
    inum = btf.offset("net", "ns.inum")
    assert ifindex % 4 == 0 and net % 8 == 0 and inum % 4 == 0
    assert ifindex != net
    # nd_net is possible_net_t, whose only member is the pointer.
    assert btf.offset("net_device", "nd_net") == net


def test_a_member_inside_an_anonymous_union_is_found(btf):
    # struct sk_buff keeps next/prev in an anonymous union at its start.
    assert btf.offset("sk_buff", "next") == 0


@pytest.mark.parametrize("struct, path, message", [
    ("net_device", "no_such_member", "has no member no_such_member"),
    ("no_such_struct_mcr", "x", "has no struct no_such_struct_mcr"),
    ("net_device", "ifindex.inner", "has no member ifindex.inner"),
])
def test_what_the_kernel_lacks_is_an_error(btf, struct, path, message):
    with pytest.raises(McrError, match=message):
        btf.offset(struct, path)
