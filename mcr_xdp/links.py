"""Interfaces of the current network namespace, through netlink (pyroute2)."""

from __future__ import annotations

import dataclasses

from pyroute2 import IPRoute

from . import netdev
from .encode import parse_mac
from .errors import InterfaceError

IFF_LOOPBACK = 0x8


@dataclasses.dataclass(frozen=True)
class Link:
    name: str
    ifindex: int
    mac: bytes
    kind: str  # "veth", "dummy", ... ("" for physical NICs)
    up: bool
    mtu: int = 1500
    xdp_xmit: bool = True  # a native XDP redirect reaches it (netdev.xdp_xmit)
    loopback: bool = False  # IFF_LOOPBACK


def _link(msg, features: dict[int, int] | None = None) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
    address = msg.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00"
    return Link(
        name=msg.get_attr("IFLA_IFNAME"),
        ifindex=msg["index"],
        mac=parse_mac(address),
        kind=kind or "",
        up=bool(msg["flags"] & 1),
        mtu=msg.get_attr("IFLA_MTU") or 0,
        xdp_xmit=netdev.xdp_xmit(msg["index"], kind or "", features),
        loopback=bool(msg["flags"] & IFF_LOOPBACK),
    )


def all_links() -> dict[str, Link]:
    features = netdev.xdp_features()
    with IPRoute() as ipr:
        return {link.name: link for link in (_link(msg, features) for msg in ipr.get_links())}


def lookup(names) -> dict[str, Link]:
    """Links by name; InterfaceError naming the first that does not exist."""
    links = all_links()
    for name in names:
        if name not in links:
            raise InterfaceError(f"interface {name!r} does not exist")
    return {name: links[name] for name in names}


VLAN_RX_FEATURES = ("rx-vlan-hw-parse", "rx-vlan-stag-hw-parse")  # ethtool -k: rx-vlan-offload, ...


def generic_xdp_vlan_blind(link: Link) -> str:
    """Why generic XDP on link may miss a frame's VLAN tag ("" when it sees
    every tag). Generic XDP runs on the skb before the kernel takes a tag
    out of the frame, but a tag already in skb metadata it can neither see
    nor remove, and the relayed frame leaves with it (docs/architecture.md)."""
    if link.kind == "veth":
        return ("a veth hands over the tags its peer sends with tx VLAN offload in skb metadata, whatever its "
                "own offload settings")
    try:
        from pyroute2.ethtool import Ethtool

        ethtool = Ethtool()
        try:
            features = ethtool.get_features(link.name).features
        finally:
            ethtool.close()
    except Exception:  # noqa: BLE001 - no ethtool answer: nothing known against generic XDP
        return ""
    on = [name for name in VLAN_RX_FEATURES if name in features and features[name].enable]
    if not on:
        return ""
    return (f"receive VLAN offload is on ({', '.join(on)}), so tags arrive in skb metadata; "
            f"`ethtool -K {link.name} rxvlan off rx-vlan-stag-hw-parse off` keeps them in the frame")


STAT_FIELDS = ("rx_packets", "rx_bytes", "rx_dropped", "tx_packets", "tx_bytes", "tx_dropped")


def counters(names) -> dict[str, tuple[int, dict[str, int]]]:
    """name -> (ifindex, kernel interface counters) for the names that exist."""
    wanted = set(names)
    result = {}
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            name = msg.get_attr("IFLA_IFNAME")
            if name in wanted:
                st = msg.get_attr("IFLA_STATS64") or {}
                result[name] = (msg["index"], {k: int(st.get(k, 0)) for k in STAT_FIELDS})
    return result
