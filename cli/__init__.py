"""mcr-xdp command line (installed as mcr_xdp_cli)."""
