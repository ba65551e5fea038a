"""Offsets of kernel struct members, read from the running kernel's BTF
(/sys/kernel/btf/vmlinux) through libbpf.

bcc compiles against the kernel headers it finds, and on a kernel that
ships none (setup links Debian's 6.1 headers) a struct's layout in them
is not the running kernel's: the loss tracer reads struct net_device and
struct net at these offsets instead (bpf/trace.c).
"""

from __future__ import annotations

import ctypes

from . import libbpf
from .errors import McrError

BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_or_type", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


def _declare(lib) -> None:
    lib.btf__load_vmlinux_btf.restype = ctypes.c_void_p
    lib.btf__load_vmlinux_btf.argtypes = []
    lib.btf__free.argtypes = [ctypes.c_void_p]
    lib.btf__free.restype = None
    lib.btf__find_by_name_kind.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
    lib.btf__find_by_name_kind.restype = ctypes.c_int32
    lib.btf__type_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.btf__type_by_id.restype = ctypes.POINTER(_BtfType)
    lib.btf__resolve_type.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.btf__resolve_type.restype = ctypes.c_int32
    lib.btf__name_by_offset.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.btf__name_by_offset.restype = ctypes.c_char_p


class KernelBtf:
    """The running kernel's BTF; offsets() answers member paths."""

    def __init__(self):
        self._lib = libbpf.lib()
        _declare(self._lib)
        self._btf = self._lib.btf__load_vmlinux_btf()
        if not self._btf:
            raise McrError("the kernel has no BTF (/sys/kernel/btf/vmlinux): CONFIG_DEBUG_INFO_BTF is off")

    def close(self) -> None:
        if self._btf:
            self._lib.btf__free(self._btf)
            self._btf = None

    def __enter__(self) -> KernelBtf:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def offset(self, struct: str, path: str) -> int:
        """Byte offset of path ("nd_net.net", dots into nested structs) in
        struct STRUCT; McrError if the kernel has no such member."""
        type_id = self._lib.btf__find_by_name_kind(self._btf, struct.encode(), BTF_KIND_STRUCT)
        if type_id <= 0:
            raise McrError(f"the kernel's BTF has no struct {struct}")
        total = 0
        for name in path.split("."):
            found = self._member(type_id, name)
            if found is None:
                raise McrError(f"the kernel's struct {struct} has no member {path}")
            bits, type_id = found
            total += bits
        if total % 8:
            raise McrError(f"{struct}.{path} is a bit field")
        return total // 8

    def _member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of member name of the struct or union
        type_id, looking into its anonymous members too."""
        type_id = self._lib.btf__resolve_type(self._btf, type_id)
        t = self._lib.btf__type_by_id(self._btf, type_id)
        kind, vlen, kflag = (t.contents.info >> 24) & 0x1F, t.contents.info & 0xFFFF, t.contents.info >> 31
        if kind not in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            return None
        members = ctypes.cast(ctypes.addressof(t.contents) + ctypes.sizeof(_BtfType), ctypes.POINTER(_BtfMember))
        for i in range(vlen):
            m = members[i]
            bits = m.offset & 0xFFFFFF if kflag else m.offset
            member_name = self._lib.btf__name_by_offset(self._btf, m.name_off) or b""
            if member_name.decode() == name:
                return bits, m.type
            if not member_name:  # an anonymous struct or union: its members are this one's
                inner = self._member(m.type, name)
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None
