"""Where mcr_relay's time goes, per source line: the real ingress program
forwards one frame over and over through BPF_PROG_TEST_RUN (a rule with
;ttl=64, so the frame never runs out of hops) while `perf record` samples
every CPU; each sample in the program's JIT image is charged to the source
line the kernel's line info places there (BPF_OBJ_GET_INFO_BY_FD:
line_info, jited_line_info and the program's BTF for the text).

    sudo .venv/bin/python -m bench lines [--rules N] [--seconds S]

Shares of the program's samples are what it prints: a line's share of the
body, not ns. A sample right after a helper call is the call's return
(on this CPU through srso_return_thunk)."""

from __future__ import annotations

import bisect
import collections
import ctypes
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from mcr_xdp import libbpf, loader
from mcr_xdp.errors import AttachError

from .lookup import GROUP, LO, _exact_rules, _install, frame

REPEAT = 2_000_000  # runs a test-run call: long calls, few dispatcher updates


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info (uapi/linux/bpf.h), up to the fields used here."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
                ("ifindex", ctypes.c_uint32), ("gpl_compatible", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("nr_jited_ksyms", ctypes.c_uint32),
                ("nr_jited_func_lens", ctypes.c_uint32), ("jited_ksyms", ctypes.c_uint64),
                ("jited_func_lens", ctypes.c_uint64), ("btf_id", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32), ("jited_line_info_rec_size", ctypes.c_uint32),
                ("rest", ctypes.c_uint8 * 64)]


class _LineInfo(ctypes.Structure):
    """struct bpf_line_info."""

    _fields_ = [("insn_off", ctypes.c_uint32), ("file_name_off", ctypes.c_uint32), ("line_off", ctypes.c_uint32),
                ("line_col", ctypes.c_uint32)]


def _info(prog_fd: int, info: _ProgInfo) -> _ProgInfo:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    ret = libbpf.lib().bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size))
    if ret < 0:
        raise OSError(-ret, "read BPF program info")
    return info


def _btf_strings(btf_id: int):
    """A function from a BTF string offset to its text (libbpf's btf__*)."""
    lib = libbpf.lib()
    lib.btf__load_from_kernel_by_id.restype = ctypes.c_void_p
    lib.btf__load_from_kernel_by_id.argtypes = [ctypes.c_uint32]
    lib.btf__name_by_offset.restype = ctypes.c_char_p
    lib.btf__name_by_offset.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.btf__free.argtypes = [ctypes.c_void_p]
    btf = lib.btf__load_from_kernel_by_id(btf_id)
    if not btf:
        raise AttachError(f"cannot read the program's BTF (id {btf_id})")
    return lambda off: (lib.btf__name_by_offset(btf, off) or b"").decode(errors="replace"), lambda: lib.btf__free(btf)


def line_table(prog_fd: int) -> list[tuple[int, str]]:
    """(offset in the JIT image, "file:line: source text"), by offset."""
    first = _info(prog_fd, _ProgInfo())
    n = first.nr_line_info
    if not n or first.nr_jited_line_info != n or not first.btf_id:
        raise AttachError("the program has no line info (built without BTF, or not JIT-compiled)")
    lines, addrs, ksyms = (_LineInfo * n)(), (ctypes.c_uint64 * n)(), (ctypes.c_uint64 * first.nr_jited_ksyms)()
    info = _ProgInfo(nr_line_info=n, line_info_rec_size=ctypes.sizeof(_LineInfo), line_info=ctypes.addressof(lines),
                     nr_jited_line_info=n, jited_line_info_rec_size=8, jited_line_info=ctypes.addressof(addrs),
                     nr_jited_ksyms=first.nr_jited_ksyms, jited_ksyms=ctypes.addressof(ksyms))
    _info(prog_fd, info)
    text, free = _btf_strings(first.btf_id)
    try:
        table = [(addrs[i] - ksyms[0], f"{Path(text(li.file_name_off)).name}:{li.line_col >> 10}: "
                  f"{text(li.line_off).strip()}") for i, li in enumerate(lines)]
    finally:
        free()
    return sorted(table)


def attribute(samples: dict[int, int], table: list[tuple[int, str]]) -> collections.Counter:
    """Samples by JIT offset -> samples by source line (the last line
    starting at or before each offset)."""
    starts = [off for off, _ in table]
    out: collections.Counter = collections.Counter()
    for off, n in samples.items():
        i = bisect.bisect_right(starts, off) - 1
        out[table[i][1] if i >= 0 else "(before the first line)"] += n
    return out


def _samples(data: Path) -> tuple[collections.Counter, collections.Counter]:
    """perf script: samples by symbol, and by offset inside mcr_relay."""
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym,symoff"], capture_output=True,
                          text=True, check=True).stdout
    syms: collections.Counter = collections.Counter()
    offsets: collections.Counter = collections.Counter()
    for line in text.splitlines():
        parts = line.split(None, 1)
        if not parts:
            continue
        sym, _, off = (parts[1] if len(parts) > 1 else "[unknown]").rpartition("+0x")
        sym = sym or "[unknown]"
        syms[sym] += 1
        if sym.endswith("_mcr_relay"):
            offsets[int(off, 16)] += 1
    return syms, offsets


def measure(rules: int = 1000, seconds: float = 8.0) -> dict:
    if not shutil.which("perf"):
        raise AttachError("perf is not installed: sudo make bench-deps")
    started = time.time()
    texts = _exact_rules(rules)
    texts[0] += ";ttl=64"  # every run rewrites the TTL to 64: the frame forwards forever
    tmp = Path(tempfile.mkdtemp(prefix="mcr-bench-lines-"))
    try:
        dp = loader.Datapath()
        stop, failed, worker = threading.Event(), [], None
        try:
            _install(dp, texts)
            table = line_table(dp.prog_fd)
            data = frame(GROUP, ttl=64)

            def loop():
                while not stop.is_set():
                    action = libbpf.test_run(dp.prog_fd, data, libbpf.XdpMd(ingress_ifindex=LO), repeat=REPEAT)[0]
                    if action != libbpf.XDP_REDIRECT:
                        failed.append(action)
                        return

            worker = threading.Thread(target=loop)
            worker.start()
            time.sleep(0.5)
            subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "20000", "-a", "-o",
                            str(tmp / "perf.data"), "--", "sleep", str(seconds)], capture_output=True, check=True)
        finally:
            stop.set()
            if worker is not None:
                worker.join()
            dp.close()
        syms, offsets = _samples(tmp / "perf.data")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        raise AttachError(f"mcr_relay returned {failed[0]}, not XDP_REDIRECT: it measured the wrong path")
    total, prog = sum(syms.values()), sum(offsets.values())
    return {"rules": rules, "seconds": seconds, "started": started, "samples": total, "program_samples": prog,
            "symbols": [[n / total, s] for s, n in syms.most_common(12)] if total else [],
            "lines": [[n / prog, line] for line, n in attribute(offsets, table).most_common()] if prog else []}


def render(doc: dict, limit: int = 40) -> str:
    rows = [f"mcr_relay forwarding one frame of one of {doc['rules']} rules, {doc['seconds']:g} s of perf "
            f"samples on every CPU ({doc['samples']:,}; the program {doc['program_samples']:,})", "",
            "| share of all samples | symbol |", "| ---: | --- |"]
    rows += [f"| {share * 100:.1f}% | {sym} |" for share, sym in doc["symbols"]]
    rows += ["", "| share of the program | source line |", "| ---: | --- |"]
    rows += ["| {:.1f}% | `{}` |".format(share * 100, line.replace("|", "\\|")) for share, line in doc["lines"][:limit]]
    return "\n".join(rows)
