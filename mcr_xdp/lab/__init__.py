"""Throw-away labs for the demo, the end-to-end tests and the benchmarks:
network namespace topologies over veth (netns), processes run inside them
and read line by line (proc), and the verifying multicast sender and
receiver (traffic, also `python -m mcr_xdp.lab.traffic`).

None of it is the relay: the relay's modules never import this package,
except mcr_xdp.gen (`mcr-xdp gen`), which sends lab.traffic's payloads so
that its receiver can check them.
"""
