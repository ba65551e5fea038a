"""The benchmark's own BPF programs: bench/bpf/*.c, kept with the benchmark
so they stay out of the wheel (everything in bpf/ ships as package data).
They compile with two include directories, their own and the relay's
(bench_lookup.c includes mcr_abi.h)."""

from __future__ import annotations

from pathlib import Path

from mcr_xdp.loader import bpf_dir

ROOT = Path(__file__).resolve().parent.parent  # the checkout
BPF_DIR = ROOT / "bench" / "bpf"


def source(name: str) -> Path:
    """bench/bpf/NAME."""
    return BPF_DIR / name


def include_flags() -> list[str]:
    return [f"-I{BPF_DIR}", f"-I{bpf_dir()}"]
