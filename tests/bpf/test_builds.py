"""The two builds of the datapath (mcr_xdp/objfile.py): the object clang
built ahead of time, loaded by libbpf, and the sources compiled by bcc at
start. Same maps, same programs; test_fuzz runs both against the model.
The object is named by its sources: an edit builds a new one."""

from __future__ import annotations

import shutil

import pytest

from mcr_xdp import abi, libbpf, loader, objfile
from mcr_xdp.errors import AttachError

pytestmark = pytest.mark.root


def _datapath(compiler: str) -> loader.Datapath:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MCR_XDP_DATAPATH", compiler)
        return loader.Datapath()


def test_the_object_is_what_a_relay_loads():
    """Where clang is (make setup installs it), a relay loads the object,
    built from the sources as they are now."""
    assert objfile.find_clang(), "clang is missing: run `sudo make setup`"
    dp = loader.Datapath()
    try:
        assert dp.compiler == "object"
        assert objfile.object_path(loader.bpf_dir()).is_file()
    finally:
        dp.close()


def _shape(dp: loader.Datapath) -> dict:
    maps = {}
    for name in loader.MAP_NAMES:
        info = libbpf.map_info(dp.maps._fd[name])
        del info["id"]
        maps[name] = info
    progs = [libbpf.prog_name(libbpf.prog_id(fd)) for fd in
             (dp.prog_fd, dp.generic_fd, dp.egress_fd, dp.tc_fd, dp.tc_companion_fd, dp.cpu_fd)]
    return {"maps": maps, "programs": progs}


def test_both_builds_have_the_same_maps_and_programs():
    shapes = {}
    for compiler in ("object", "bcc"):
        dp = _datapath(compiler)
        try:
            assert dp.compiler == compiler
            shapes[compiler] = _shape(dp)
        finally:
            dp.close()
    assert shapes["object"] == shapes["bcc"]
    assert shapes["object"]["programs"][:3] == [abi.PROG_RELAY, abi.PROG_RELAY_GENERIC, abi.PROG_EGRESS]


@pytest.fixture
def sources(tmp_path):
    """A copy of bpf/ to build from."""
    copy = tmp_path / "bpf"
    shutil.copytree(loader.bpf_dir(), copy, ignore=shutil.ignore_patterns("build"))
    return copy


def test_an_edited_source_builds_a_new_object(sources):
    first = objfile.build(sources)
    assert first == objfile.object_path(sources) and first.stat().st_size > 0
    assert objfile.build(sources) == first  # nothing changed: the same file, not built again
    relay_c = sources / "relay.c"
    relay_c.write_text(relay_c.read_text() + "\n/* an edit */\n")
    second = objfile.build(sources)
    assert second != first and second.is_file()
    assert not first.exists()  # the stale one is gone
    assert oct(second.stat().st_mode & 0o777) == "0o644"


def test_a_compile_error_says_what_clang_said(sources):
    (sources / "police.h").write_text((sources / "police.h").read_text() + "\nthis is not C;\n")
    with pytest.raises(AttachError, match="(?s)clang could not build the datapath object:.*police.h:"):
        objfile.build(sources)
    assert not list((sources / "build").glob("*.o"))


def test_a_map_call_the_build_cannot_rewrite_is_refused(sources):
    relay_c = sources / "relay.c"
    relay_c.write_text(relay_c.read_text() + "\nstatic void f(void) { mcr_rules.update(0, 0); }\n")
    with pytest.raises(AttachError, match=r"cannot turn into a helper call: mcr_rules\.update\("):
        objfile.build(sources)


def test_a_place_it_cannot_write_is_an_error_not_a_traceback(sources):
    (sources / "build").write_text("a file where the directory goes")  # root writes anywhere else
    with pytest.raises(AttachError, match="cannot write the datapath object"):
        objfile.build(sources)


def test_a_program_the_verifier_refuses_is_an_error_with_its_log(sources):
    """libbpf asks for the verifier's log only when a load fails: the error
    ends with its last lines."""
    relay_c = sources / "relay.c"
    relay_c.write_text(relay_c.read_text() + '\nMCR_PROG("xdp") int mcr_unchecked(struct xdp_md *ctx)\n'
                       "{\n\treturn *(int *)(long)ctx->data;  /* no bounds check */\n}\n")
    image = objfile.build(sources).read_bytes()
    refused = "(?s)could not load the datapath: Permission denied.*invalid access to packet"
    with pytest.raises(AttachError, match=refused):
        objfile.Object(image, {"mcr_unchecked"})


def test_preloaded_programs_are_there_before_first_use():
    """A TC relay's program is verified beside the ingress and egress
    programs, and first use takes that load instead of making another."""
    dp = loader.Datapath(preload=(abi.PROG_TC, abi.PROG_RELAY_GENERIC))
    try:
        loads = len(dp._objects)
        assert loads == 5  # the maps, then a load per program
        assert [libbpf.prog_name(libbpf.prog_id(fd)) for fd in (dp.tc_fd, dp.generic_fd)] == \
            [abi.PROG_TC, abi.PROG_RELAY_GENERIC]
        assert len(dp._objects) == loads
    finally:
        dp.close()


def test_a_preloaded_program_the_verifier_refuses_waits_for_its_first_use(sources):
    """A preload is a head start, not a condition: the datapath loads
    without it, and the program's first use says why it can't."""
    relay_c = sources / "relay.c"
    relay_c.write_text(relay_c.read_text() + '\nMCR_PROG("xdp") int mcr_unchecked(struct xdp_md *ctx)\n'
                       "{\n\treturn *(int *)(long)ctx->data;  /* no bounds check */\n}\n")
    dp = loader.Datapath(image=objfile.build(sources).read_bytes(), preload=("mcr_unchecked",))
    try:
        assert libbpf.prog_name(libbpf.prog_id(dp.prog_fd)) == abi.PROG_RELAY
        with pytest.raises(AttachError, match="invalid access to packet"):
            dp._load_program("mcr_unchecked")
    finally:
        dp.close()
