"""Benchmarks: namespace chain, live-frames generator, XDP sink, relays, report (python -m bench)."""
