"""The few libbpf (libbpf.so.1) calls bcc 0.26 does not wrap, through ctypes.

libbpf 1.x returns -errno from these calls; every wrapper turns that into
OSError with the errno set, so callers catch one kind of error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct

_lib = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            _lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            from .errors import SetupError

            raise SetupError("libbpf (libbpf1) is missing: run `sudo make setup`") from None
        _declare(_lib)
    return _lib


class XdpQueryOpts(ctypes.Structure):
    # struct bpf_xdp_query_opts as of libbpf 1.1 (sz first, outputs after).
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
    ]


class TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts (libbpf 1.1).
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    # struct xdp_md, the XDP context as BPF_PROG_TEST_RUN takes it.
    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


# XDP attach flags and modes (uapi/linux/if_link.h).
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW, XDP_ATTACHED_MULTI = range(5)

# XDP actions (uapi/linux/bpf.h).
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

# struct bpf_prog_info: id at byte 4, name at byte 64 (uapi/linux/bpf.h).
_PROG_INFO_ID_OFFSET = 4
_PROG_INFO_NAME_OFFSET = 64
_PROG_INFO_SIZE = 256


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_u32, vp = ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p
    for name, args in {
        "bpf_xdp_attach": [c_int, c_int, c_u32, vp],
        "bpf_xdp_detach": [c_int, c_u32, vp],
        "bpf_xdp_query": [c_int, c_int, vp],
        "bpf_prog_get_fd_by_id": [c_u32],
        "bpf_prog_get_next_id": [c_u32, vp],
        "bpf_obj_get_info_by_fd": [c_int, vp, vp],
        "bpf_prog_test_run_opts": [c_int, vp],
        "bpf_map_lookup_elem": [c_int, vp, vp],
        "bpf_map_update_elem": [c_int, vp, vp, ctypes.c_uint64],
        "bpf_map_delete_elem": [c_int, vp],
        "bpf_map_get_next_key": [c_int, vp, vp],
        "bpf_map_create": [c_int, ctypes.c_char_p, c_u32, c_u32, c_u32, vp],
        "bpf_obj_pin": [c_int, ctypes.c_char_p],
        "bpf_obj_get": [ctypes.c_char_p],
        "bpf_raw_tracepoint_open": [ctypes.c_char_p, c_int],
    }.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = c_int


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def xdp_attach(ifindex: int, prog_fd: int, flags: int) -> None:
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, flags, None), "attach XDP program")


XDP_FLAGS_REPLACE = 1 << 4


class XdpAttachOpts(ctypes.Structure):
    """struct bpf_xdp_attach_opts (libbpf.h)."""

    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int), ("_pad", ctypes.c_int)]


def xdp_replace(ifindex: int, prog_fd: int, old_prog_id: int, flags: int) -> None:
    """Swap the attached program old_prog_id for prog_fd in one step
    (XDP_FLAGS_REPLACE): no frame meets an interface without a program;
    fails if another program is attached by then."""
    old_fd = prog_fd_by_id(old_prog_id, "open the attached XDP program")
    try:
        xdp_swap(ifindex, prog_fd, old_fd, flags)
    finally:
        os.close(old_fd)


def xdp_swap(ifindex: int, prog_fd: int, old_prog_fd: int, flags: int) -> None:
    """xdp_replace with the attached program given by an fd."""
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=old_prog_fd)
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, flags | XDP_FLAGS_REPLACE, ctypes.byref(opts)),
           "replace the XDP program")


def prog_fd_by_id(prog_id: int, what: str = "open a BPF program by id") -> int:
    """A new fd of a loaded program (the caller closes it)."""
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), what)


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    """Attach a raw tracepoint program; closing the returned fd detaches it."""
    return _check(lib().bpf_raw_tracepoint_open(name.encode(), prog_fd), f"attach to raw tracepoint {name}")


def xdp_detach(ifindex: int, flags: int) -> None:
    _check(lib().bpf_xdp_detach(ifindex, flags, None), "detach XDP program")


def xdp_query(ifindex: int) -> XdpQueryOpts:
    opts = XdpQueryOpts(sz=ctypes.sizeof(XdpQueryOpts))
    _check(lib().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), "query XDP program")
    return opts


def _prog_info(prog_fd: int) -> bytes:
    buf = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    size = ctypes.c_uint32(_PROG_INFO_SIZE)
    _check(lib().bpf_obj_get_info_by_fd(prog_fd, buf, ctypes.byref(size)), "read BPF program info")
    return buf.raw


def prog_id(prog_fd: int) -> int:
    """Kernel id of the program behind prog_fd."""
    return obj_id(prog_fd)


def obj_id(fd: int) -> int:
    """Kernel id of the program or map behind fd: both info structs start
    with a u32 type and a u32 id."""
    return struct.unpack_from("=I", _prog_info(fd), _PROG_INFO_ID_OFFSET)[0]


_MEMBARRIER = {"x86_64": 324, "aarch64": 283}  # syscall numbers
MEMBARRIER_CMD_GLOBAL = 1


def rcu_grace_period() -> None:
    """Wait until every CPU has passed a quiescent state: every BPF program
    and NAPI poll running now has ended (membarrier(MEMBARRIER_CMD_GLOBAL)
    is synchronize_rcu()). Where it is refused (nohz_full CPUs, another
    architecture), 50 ms, far longer than a NAPI poll."""
    import platform
    import time

    nr = _MEMBARRIER.get(platform.machine())
    if nr is not None and ctypes.CDLL(None, use_errno=True).syscall(nr, MEMBARRIER_CMD_GLOBAL, 0) == 0:
        return
    time.sleep(0.05)


def map_info(map_fd: int) -> dict:
    """The kernel's description of a map (struct bpf_map_info: type, id,
    key_size, value_size, max_entries, map_flags, name)."""
    raw = _prog_info(map_fd)
    kind, id_, key, value, entries, flags = struct.unpack_from("=6I", raw)
    return {"type": kind, "id": id_, "key_size": key, "value_size": value, "max_entries": entries,
            "map_flags": flags, "name": raw[24:40].split(b"\0", 1)[0].decode(errors="replace")}


def prog_ids() -> list[int]:
    """Ids of every BPF program loaded on the machine."""
    ids, current, nxt = [], 0, ctypes.c_uint32()
    while lib().bpf_prog_get_next_id(current, ctypes.byref(nxt)) == 0:
        current = nxt.value
        ids.append(current)
    return ids


def prog_name(prog_id: int) -> str:
    """Name of a loaded BPF program by id; '' if it is gone, or if opening
    it by id is not allowed (BPF_PROG_GET_FD_BY_ID needs CAP_SYS_ADMIN,
    which a relay under systemd may run without)."""
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd in (-errno.ENOENT, -errno.EPERM):
        return ""
    _check(fd, f"open BPF program {prog_id}")
    try:
        raw = _prog_info(fd)[_PROG_INFO_NAME_OFFSET : _PROG_INFO_NAME_OFFSET + 16]
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


BPF_MAP_TYPE_DEVMAP = 14


def devmap_create(name: str, max_entries: int, value_size: int) -> int:
    """A new devmap; returns its fd (the caller closes it)."""
    return _check(
        lib().bpf_map_create(BPF_MAP_TYPE_DEVMAP, name.encode()[:15], 4, value_size, max_entries, None),
        "create devmap",
    )


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def obj_get(path: str) -> int:
    """fd of a pinned object (the caller closes it)."""
    return _check(lib().bpf_obj_get(path.encode()), f"open pinned {path}")


def map_lookup(map_fd: int, key: ctypes._SimpleCData | ctypes.Structure, value) -> bool:
    ret = lib().bpf_map_lookup_elem(map_fd, ctypes.byref(key), ctypes.byref(value))
    if ret == -errno.ENOENT:
        return False
    _check(ret, "BPF map lookup")
    return True


def map_keys(map_fd: int, key_type) -> list:
    """Every key of a map (hash, LPM trie), as key_type structs."""
    keys, prev = [], None
    while True:
        key = key_type()
        ret = lib().bpf_map_get_next_key(map_fd, None if prev is None else ctypes.byref(prev), ctypes.byref(key))
        if ret == -errno.ENOENT:
            return keys
        _check(ret, "BPF map iteration")
        keys.append(key)
        prev = key


def map_update(map_fd: int, key, value, flags: int = 0) -> None:
    _check(lib().bpf_map_update_elem(map_fd, ctypes.byref(key), ctypes.byref(value), flags), "BPF map update")


def map_delete(map_fd: int, key) -> bool:
    ret = lib().bpf_map_delete_elem(map_fd, ctypes.byref(key))
    if ret == -errno.ENOENT:
        return False
    _check(ret, "BPF map delete")
    return True


def test_run_meta(prog_fd: int, data: bytes, ctx: XdpMd | None = None, repeat: int = 1,
                  out_size: int = 4096, meta: bytes = b"") -> tuple[int, bytes, bytes, int]:
    """BPF_PROG_TEST_RUN: run prog_fd once on data, with meta in front of it
    as XDP metadata (needs an XdpMd ctx). Returns (retval, metadata out, frame out,
    duration in ns)."""
    if meta and ctx is None:
        raise ValueError("XDP metadata needs a context")
    buf = meta + data
    data_in = ctypes.create_string_buffer(buf, len(buf))
    data_out = ctypes.create_string_buffer(out_size)
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts))
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(buf)
    opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
    opts.data_size_out = out_size
    opts.repeat = repeat
    ctx_out = XdpMd()
    if isinstance(ctx, XdpMd):
        ctx = XdpMd.from_buffer_copy(ctx)
        ctx.data, ctx.data_end = len(meta), len(buf)
        # The frame out starts with the metadata; ctx_out.data is its length.
        opts.ctx_out = ctypes.cast(ctypes.pointer(ctx_out), ctypes.c_void_p)
        opts.ctx_size_out = ctypes.sizeof(ctx_out)
    if ctx is not None:  # an XdpMd or a TC program's struct __sk_buff
        opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    out = data_out.raw[: opts.data_size_out]
    return opts.retval, out[: ctx_out.data], out[ctx_out.data:], opts.duration


def test_run(prog_fd: int, data: bytes, ctx: XdpMd | None = None, repeat: int = 1, out_size: int = 4096):
    """BPF_PROG_TEST_RUN: run prog_fd once on data. Returns (retval, output
    frame without metadata, duration in ns)."""
    retval, _, out, duration = test_run_meta(prog_fd, data, ctx, repeat, out_size)
    return retval, out, duration
