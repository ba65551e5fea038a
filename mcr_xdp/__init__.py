"""mcr-xdp: a multicast relay whose forwarding runs in the kernel (XDP)."""

__version__ = "0.1.0"
