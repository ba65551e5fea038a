"""The datapath compiled ahead of time: an object clang built from bpf/,
loaded with libbpf.

bcc compiles the datapath at every start: ~3 s of a relay's ~3.5 s to
"relaying", and as much again in every test that starts one. The same
sources also build as a plain BPF object (clang -target bpf -DMCR_OBJECT,
BTF from -g), once, when they change: `make setup` builds it, a relay in a
checkout whose sources changed builds it at start, and the Debian package
ships it. A start then only loads it (libbpf: maps, BTF, the verifier).
The loss tracer (bpf/trace.c, libbpf C only) is built beside it.

Only two things differ between the builds, both in bpf/maps.h: the map
declarations (MCR_MAP and friends expand to bcc's table macros or to BTF
map definitions) and each program's section (MCR_PROG, which tells libbpf
the program type). bcc's map calls (mcr_rules.lookup(&key)) cannot hide
behind a macro ("cannot use map function inside a macro"), so this build
turns them into the helper calls bcc makes of them (source_text).

The object is named by a digest of the sources it was built from: an
edited source is never served by an old object. Without clang the relay
compiles with bcc as before (loader.Datapath).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from . import libbpf
from .errors import AttachError, SetupError

# Bump when the build itself changes (flags, the rewrite below): the digest
# then names a new object.
BUILD = "3 -O2 -g -target bpf -DMCR_OBJECT"
CLANGS = ("clang", *(f"clang-{v}" for v in range(20, 13, -1)))

# The datapath is one bcc object: the XDP programs (relay.c) and the TC
# program (tc_relay.c) share its maps. bcc rewrites map calls (map.lookup())
# only in the file it compiles, never in headers it includes, so the code
# both programs share (forward.h) is compiled as part of that one text, in
# this order; `#line` keeps compiler messages pointing at the real files.
DATAPATH_SOURCES = ("forward.h", "health.h", "police.h", "relay.c", "tc_relay.c")


def bpf_dir() -> Path:
    """Where the datapath sources are: mcr_xdp/bpf/ in an installed wheel
    (package data), bpf/ beside the package in a source checkout (editable
    installs map only top-level packages)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "bpf", here.parent / "bpf"):
        if (candidate / "relay.c").is_file():
            return candidate
    raise SetupError(f"the datapath sources (bpf/relay.c) are not installed beside {here}: reinstall mcr-xdp")


def datapath_text(directory: Path | None = None) -> str:
    """The datapath's translation unit (see DATAPATH_SOURCES)."""
    directory = directory or bpf_dir()
    return "".join(f'#line 1 "{directory / name}"\n' + (directory / name).read_text() + "\n"
                   for name in DATAPATH_SOURCES)


_MAP_CALL = re.compile(r"\b(mcr_\w+)\.(lookup|redirect_map)\(")
_HELPER = {"lookup": "bpf_map_lookup_elem", "redirect_map": "bpf_redirect_map"}
_PRELUDE = """#define MCR_OBJECT 1
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
char _license[] SEC("license") = "GPL";  /* bcc's default too */
"""


def source_text(directory: Path) -> str:
    """The translation unit clang compiles: the one bcc compiles, its map
    calls written as the helper calls bcc makes of them."""
    text = _MAP_CALL.sub(lambda m: f"{_HELPER[m[2]]}(&{m[1]}, ", datapath_text(directory))
    left = re.search(r"\bmcr_\w+\.\w+\(", text)
    if left:
        raise AttachError(f"the datapath has a map call this build cannot turn into a helper call: {left[0]}")
    return _PRELUDE + text


def digest(directory: Path) -> str:
    """What names an object: the sources' contents and the build."""
    h = hashlib.sha256(BUILD.encode())
    for path in sorted(directory.glob("*.[ch]")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


OBJECTS = ("datapath", "trace")  # the datapath (DATAPATH_SOURCES) and the loss tracer (trace.c)


def object_path(directory: Path, name: str = "datapath", stamp: str | None = None) -> Path:
    """stamp: digest(directory), when the caller has it already."""
    return directory / "build" / f"{name}-{stamp or digest(directory)}.o"


def find_clang() -> str | None:
    for name in CLANGS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _text(directory: Path, name: str) -> str:
    if name == "datapath":
        return source_text(directory)
    return _PRELUDE + f'#line 1 "{directory / "trace.c"}"\n' + (directory / "trace.c").read_text()


def build(directory: Path, clang: str | None = None) -> Path:
    """Compile the objects for these sources unless they are there; returns
    the datapath's path. Raises AttachError (no clang, a compile error, a
    place it cannot write)."""
    stamp = digest(directory)  # read the sources once for both names
    outs = {name: object_path(directory, name, stamp) for name in OBJECTS}
    if all(out.is_file() for out in outs.values()):
        return outs["datapath"]
    clang = clang or find_clang()
    if clang is None:
        raise AttachError("no clang to build the datapath object with (Debian package clang-14)")
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    place = outs["datapath"].parent
    try:
        place.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mcr-xdp-build.") as tmp:
            # The sources include <uapi/linux/...> as bcc wants (the kernel
            # tree's layout); the installed UAPI headers serve them here.
            os.symlink("/usr/include", f"{tmp}/uapi")
            for name, out in outs.items():
                partial = Path(tmp) / f"{name}.o"
                proc = subprocess.run(
                    [clang, *BUILD.split()[1:], f"-I{tmp}", f"-I{directory}", "-idirafter",
                     f"/usr/include/{multiarch}", "-Wno-unused-function", "-Werror=implicit-function-declaration",
                     "-x", "c", "-", "-c", "-o", str(partial)],
                    input=_text(directory, name), capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise AttachError(f"clang could not build the {name} object:\n{proc.stderr.strip()}")
                install(partial, out)
    except OSError as exc:
        raise AttachError(f"cannot write the datapath object to {place}: {exc.strerror}") from None
    for old in place.glob("*-*.o"):
        if old not in outs.values():
            old.unlink(missing_ok=True)  # built from sources since changed
    return outs["datapath"]


def install(built: Path, out: Path) -> None:
    """Put a build product at out whole or not at all, also with two
    builders at once (a staged copy beside it, then a rename)."""
    fd, staged = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}-", suffix=out.suffix)
    os.close(fd)
    shutil.copyfile(built, staged)
    os.chmod(staged, 0o644)
    os.replace(staged, out)


def image(name: str, directory: Path | None = None) -> bytes | None:
    """The object for the sources as they are (built now in a checkout
    whose sources changed since `make setup`, when clang is there; an
    installed package ships its own), or None: there is none."""
    directory = directory or bpf_dir()
    path = object_path(directory, name)
    if not path.is_file():
        if not (directory.parent / "pyproject.toml").is_file() or find_clang() is None:
            return None
        try:
            build(directory)
        except AttachError:
            return None  # a build error: bcc says what is wrong, if anything
    try:
        data = path.read_bytes()
    except OSError:
        return None
    # An object is one byte order (EI_DATA: 1 little, 2 big endian): the
    # package's is little-endian, like the machines it is built on.
    return data if data[5:6] == (b"\x01" if sys.byteorder == "little" else b"\x02") else None


class _OpenOpts(ctypes.Structure):
    # struct bpf_object_open_opts (libbpf 1.1).
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_unused", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_void_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


_declared = False
_LOG_SIZE = 4 << 20  # the verifier's log of a refused program (libbpf asks for it only then)


def _lib() -> ctypes.CDLL:
    global _declared
    lib = libbpf.lib()
    if not _declared:
        vp, cp, c_int = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, args, res in (
            ("bpf_object__open_mem", [vp, ctypes.c_size_t, vp], vp),
            ("bpf_object__load", [vp], c_int),
            ("bpf_object__close", [vp], None),
            ("bpf_object__find_map_by_name", [vp, cp], vp),
            ("bpf_object__find_program_by_name", [vp, cp], vp),
            ("bpf_object__next_program", [vp, vp], vp),
            ("bpf_program__name", [vp], cp),
            ("bpf_object__next_map", [vp, vp], vp),
            ("bpf_map__name", [vp], cp),
            ("bpf_program__set_autoload", [vp, ctypes.c_bool], c_int),
            ("bpf_program__fd", [vp], c_int),
            ("bpf_map__fd", [vp], c_int),
            ("bpf_map__reuse_fd", [vp, c_int], c_int),
            ("bpf_map__set_max_entries", [vp, ctypes.c_uint32], c_int),
            ("libbpf_set_print", [vp], vp),
            ("bpf_map__set_initial_value", [vp, vp, ctypes.c_size_t], c_int),
            ("bpf_program__attach", [vp], vp),
            ("bpf_link__destroy", [vp], c_int),
        ):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        lib.libbpf_set_print(None)  # its messages would go to stderr; errors come back as errnos and the log
        _declared = True
    return lib


class Object:
    """One load of the datapath object: the programs asked for, and the
    maps (new ones, or those given by fd)."""

    def __init__(self, image: bytes, programs: set[str], max_entries: dict[str, int] | None = None,
                 reuse: dict[str, int] | None = None, rodata: bytes | None = None, what: str = "the datapath"):
        """rodata: the object's read-only data (its `const volatile`
        globals), set before the verifier sees them as constants. what:
        the object, in errors."""
        lib = _lib()
        self._links: list[int] = []
        self._image = ctypes.create_string_buffer(image, len(image))  # libbpf keeps pointing into it
        self._log = ctypes.create_string_buffer(_LOG_SIZE)
        opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts), object_name=b"mcr_xdp",
                         kernel_log_buf=ctypes.cast(self._log, ctypes.c_void_p), kernel_log_size=_LOG_SIZE)
        self._obj = lib.bpf_object__open_mem(self._image, len(image), ctypes.byref(opts))
        err = ctypes.get_errno()
        if not self._obj:
            raise AttachError(f"libbpf cannot open {what}'s object: {os.strerror(err or 22)}")
        try:
            self._configure(programs, max_entries or {}, reuse or {})
            if rodata is not None:
                _check(lib.bpf_map__set_initial_value(self._map(".rodata"), rodata, len(rodata)), "set .rodata")
            ret = lib.bpf_object__load(self._obj)
            if ret < 0:
                raise AttachError(f"could not load {what}: {os.strerror(-ret)}{self._log_tail()}")
        except BaseException:
            self.close()
            raise
        self._log = None  # written only while loading: 4 MiB back

    def _configure(self, programs: set[str], max_entries: dict[str, int], reuse: dict[str, int]) -> None:
        lib = _lib()
        prog = lib.bpf_object__next_program(self._obj, None)
        while prog:
            lib.bpf_program__set_autoload(prog, lib.bpf_program__name(prog).decode() in programs)
            prog = lib.bpf_object__next_program(self._obj, prog)
        for name, n in max_entries.items():
            _check(lib.bpf_map__set_max_entries(self._map(name), n), f"size map {name}")
        for name, fd in reuse.items():
            _check(lib.bpf_map__reuse_fd(self._map(name), fd), f"take over map {name}")

    def _map(self, name: str) -> int:
        found = _lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not found:
            raise AttachError(f"the datapath object has no map {name}: rebuild it (make setup)")
        return found

    def _log_tail(self, lines: int = 12) -> str:
        text = self._log.value.decode(errors="replace").strip()
        return ("\n" + "\n".join(text.splitlines()[-lines:])) if text else ""

    def map_names(self) -> list[str]:
        lib, names = _lib(), []
        found = lib.bpf_object__next_map(self._obj, None)
        while found:
            names.append(lib.bpf_map__name(found).decode())
            found = lib.bpf_object__next_map(self._obj, found)
        return names

    def map_fd(self, name: str) -> int:
        return _check(_lib().bpf_map__fd(self._map(name)), f"map {name}")

    def prog_fd(self, name: str) -> int:
        prog = _lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise AttachError(f"the datapath object has no program {name}: rebuild it (make setup)")
        return _check(_lib().bpf_program__fd(prog), f"program {name}")

    def attach(self, name: str) -> None:
        """Attach a tracing program where its section says (a tracepoint)."""
        prog = _lib().bpf_object__find_program_by_name(self._obj, name.encode())
        link = _lib().bpf_program__attach(prog) if prog else None
        if not link:
            raise AttachError(f"cannot attach {name}: {os.strerror(ctypes.get_errno() or 22)}")
        self._links.append(link)

    def close(self) -> None:
        for link in self._links:
            _lib().bpf_link__destroy(link)
        self._links.clear()
        if self._obj:
            _lib().bpf_object__close(self._obj)
            self._obj = None


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise AttachError(f"libbpf: {what}: {os.strerror(-ret)}")
    return ret


def main(argv: list[str]) -> int:
    """python -m mcr_xdp.objfile [DIR]: build the object (make setup, the
    Debian package's build) and print its path."""
    directory = Path(argv[0]) if argv else bpf_dir()
    try:
        print(build(directory))
    except AttachError as exc:
        print(f"mcr_xdp.objfile: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
