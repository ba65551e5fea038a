"""The fallback workers' compiled inner loop (fastpath.c): built once from
the C beside this file, loaded with ctypes.

A worker in Python spends ~4 us of CPU on each packet it relays (parse,
rewrite, one send() per copy); fastpath.c relays the common frame in a
fraction of that and sends each output's copies of a ring block with one
sendmmsg(). Python stays the model and the control plane: the worker puts
its rules into the C table as forward.Table holds them, and handles every
frame the C leaves to it (forward.py's other verdicts: no rule, range
rules, stream checks, policers, the loop guard, malformed frames).

The library is named by a digest of the source and the build, like the
datapath object (objfile.py): `make setup` builds it, a worker in a
checkout whose source changed builds it at start, the Debian package ships
it. Without it (no compiler, a build error) the workers relay in Python,
and `status` says so (userspace.inner_loop).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import abi, objfile
from .packet import BLOCK_SIZE

SOURCE = Path(__file__).resolve().with_name("fastpath.c")
# Bump when the build changes: the digest then names a new library. CFLAGS,
# CPPFLAGS and LDFLAGS from the environment (a package build's hardening)
# are added to these but do not name it.
BUILD = "1 -O2 -shared -fPIC -Wall -Werror"
COMPILERS = ("cc", "gcc", "clang", *(f"clang-{v}" for v in range(20, 13, -1)))
MAX_DEFER = BLOCK_SIZE // 16  # > the frames one ring block can hold (48-byte headers at least)


def digest(source: Path = SOURCE) -> str:
    h = hashlib.sha256(f"{BUILD} {os.uname().machine}".encode())
    h.update(source.read_bytes())
    return h.hexdigest()[:16]


def library_path(source: Path = SOURCE, stamp: str | None = None) -> Path:
    """Where the library for source is: build/fastpath-DIGEST.so, which
    the Debian package's dh_python3 renames with the interpreter's tag
    (fastpath-DIGEST.cpython-311-x86_64-linux-gnu.so)."""
    stamp = stamp or digest(source)
    plain = source.parent / "build" / f"fastpath-{stamp}.so"
    return plain if plain.is_file() else next(plain.parent.glob(f"fastpath-{stamp}.*.so"), plain)


def find_compiler() -> str | None:
    for name in (os.environ.get("CC") or "", *COMPILERS):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


class BuildError(Exception):
    pass


def build(source: Path = SOURCE, out_dir: Path | None = None) -> Path:
    """Compile the library unless it is there; returns its path. out_dir:
    where it goes (default: build/ beside the source). Raises BuildError."""
    stamp = digest(source)
    out = (out_dir or source.parent / "build") / f"fastpath-{stamp}.so"
    if out.is_file():
        return out
    cc = find_compiler()
    if cc is None:
        raise BuildError("no C compiler to build the userspace inner loop with (Debian package clang or gcc)")
    extra = [f for var in ("CPPFLAGS", "CFLAGS", "LDFLAGS") for f in os.environ.get(var, "").split()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mcr-xdp-build.") as tmp:
            partial = Path(tmp) / "fastpath.so"
            proc = subprocess.run([cc, *BUILD.split()[1:], *extra, str(source), "-o", str(partial)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BuildError(f"{Path(cc).name} could not build {source.name}:\n{proc.stderr.strip()}")
            objfile.install(partial, out)
    except OSError as exc:
        raise BuildError(f"cannot write the userspace inner loop to {out.parent}: {exc.strerror}") from None
    for old in out.parent.glob("fastpath-*.so"):
        if old != out:
            old.unlink(missing_ok=True)  # built from a source since changed
    return out


class Out(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int32), ("counter", ctypes.c_uint32), ("ip_delta", ctypes.c_uint32),
                ("l4_delta", ctypes.c_uint32), ("eth", ctypes.c_uint8 * 12), ("group", ctypes.c_uint8 * 16),
                ("port", ctypes.c_uint8 * 2), ("ttl", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


class Rule(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("ifindex", ctypes.c_uint32), ("counter", ctypes.c_uint32),
                ("unresolved", ctypes.c_uint16), ("addr_len", ctypes.c_uint8), ("has_source", ctypes.c_uint8),
                ("slow", ctypes.c_uint8), ("unicast", ctypes.c_uint8), ("n_out", ctypes.c_uint8),
                ("port", ctypes.c_uint8 * 2), ("source", ctypes.c_uint8 * 16), ("group", ctypes.c_uint8 * 16),
                ("out", Out * abi.MAX_OUTPUTS)]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, u32 = ctypes.c_void_p, ctypes.c_uint32
    for name, args, res in (
        ("mcr_fast_new", [vp, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint], vp),
        ("mcr_fast_free", [vp], None),
        ("mcr_fast_put", [vp, ctypes.POINTER(Rule)], ctypes.c_int),
        ("mcr_fast_delete", [vp, u32], ctypes.c_int),
        ("mcr_fast_own_macs", [vp, ctypes.c_char_p, u32], ctypes.c_int),
        ("mcr_fast_block", [vp, vp, u32, ctypes.POINTER(u32), u32], u32),
        ("mcr_fast_abi", [], u32),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


_lib: ctypes.CDLL | None = None


def load(source: Path = SOURCE) -> ctypes.CDLL | None:
    """The library for the source as it is (built now in a checkout whose
    source changed, when a compiler is there), or None: the workers relay
    in Python."""
    global _lib
    if os.environ.get("MCR_XDP_INNER_LOOP") == "python":  # tests and benchmarks compare the two
        return None
    if _lib is not None:
        return _lib
    path = library_path(source)
    if not path.is_file():
        if not (source.parents[2] / "pyproject.toml").is_file():
            return None  # an installed package ships its library: none here means none
        try:
            build(source)
        except BuildError:
            return None
    try:
        lib = _declare(ctypes.CDLL(str(path)))
    except (OSError, AttributeError):
        return None
    if lib.mcr_fast_abi() != ctypes.sizeof(Rule) << 16 | ctypes.sizeof(Out):
        return None  # a library from other sources than this Python's: never trust its layout
    _lib = lib
    return lib


class Fast:
    """One worker's C relay: its rule table, and the ring blocks it walks.
    counters: the worker's counter block (a writable buffer of u64)."""

    def __init__(self, lib: ctypes.CDLL, counters, verdicts: tuple[int, int, int, int]):
        self.lib = lib
        self._counters = ctypes.c_char.from_buffer(counters)  # keeps the buffer exported while C writes it
        self._ptr = lib.mcr_fast_new(ctypes.addressof(self._counters), *verdicts)
        if not self._ptr:
            raise MemoryError("the userspace inner loop's table")
        self.defer = (ctypes.c_uint32 * MAX_DEFER)()

    def put(self, entry, msg: dict, fds: dict[int, int]) -> None:
        """A forward.Table entry (an exact rule's; range rules stay
        Python's) with its message; fds: output ifindex -> send socket."""
        r = Rule(id=entry.index, ifindex=msg["ifindex"], counter=entry.counter, unresolved=entry.unresolved,
                 slow=entry.stream is not None or entry.bucket is not None, unicast=bool(msg.get("unicast")),
                 n_out=len(entry.outputs))
        group, source = bytes.fromhex(msg["group"]), bytes.fromhex(msg["source"])
        r.addr_len, r.has_source = len(group), bool(source)
        ctypes.memmove(r.group, group, len(group))
        ctypes.memmove(r.source, source, len(source))
        ctypes.memmove(r.port, msg["port"].to_bytes(2, "big"), 2)
        for i, out in enumerate(entry.outputs):
            o = r.out[i]
            o.fd, o.counter, o.ttl = fds.get(out.ifindex, -1), out.counter, out.ttl
            o.ip_delta, o.l4_delta = out.ip_delta, out.l4_delta
            ctypes.memmove(o.eth, out.eth, 12)
            ctypes.memmove(o.group, out.group, len(out.group))
            ctypes.memmove(o.port, out.port, 2)
        if self.lib.mcr_fast_put(self._ptr, ctypes.byref(r)) != 0:
            raise MemoryError(f"the userspace inner loop's table: rule {entry.index}")

    def delete(self, index: int) -> None:
        self.lib.mcr_fast_delete(self._ptr, index)

    def own_macs(self, macs) -> None:
        data = b"".join(macs)
        if self.lib.mcr_fast_own_macs(self._ptr, data, len(data) // 6) != 0:
            raise MemoryError("the userspace inner loop's loop guard")

    def block(self, address: int, ifindex: int) -> list[int]:
        """Relay the ring block at address; the offsets of the frames left
        to Python, in ring order."""
        n = self.lib.mcr_fast_block(self._ptr, address, ifindex, self.defer, MAX_DEFER)
        return self.defer[:n]

    def close(self) -> None:
        if self._ptr:
            self.lib.mcr_fast_free(self._ptr)
            self._ptr = None
        self._counters = None  # releases the buffer export


def main(argv: list[str]) -> int:
    """python -m mcr_xdp.fallback.native [DIR]: build the library (make
    setup; the Debian package's build, for the package directory DIR: into
    DIR/build) and print its path."""
    try:
        print(build(out_dir=Path(argv[0]) / "build" if argv else None))
    except BuildError as exc:
        print(f"mcr_xdp.fallback.native: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
