"""The control socket keeps other users out: a server run as root, and a
client process of another user (nobody) that must be refused twice, by the
socket file's mode and by the server's SO_PEERCRED check. Needs root to
become that other user, so it lives here and not with the protocol's unit
tests (tests/unit/test_control.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile

import pytest

from mcr_xdp import control
from tests.fixtures.control import Served, raw, req

pytestmark = pytest.mark.root

NOBODY = 65534


@pytest.fixture
def served():
    """A server on a short path (sun_path holds 108 bytes) in a directory
    nobody may traverse (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="mcr-ctl-")
    os.chmod(path, 0o755)
    server = Served(f"{path}/ctl.sock")
    yield server
    server.stop()
    shutil.rmtree(path)


def as_nobody(fn) -> tuple[str, str]:
    """Run fn() in a child process as uid/gid 65534; returns ("ok", repr of
    its result) or (exception type name, message)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                out = ("ok", repr(fn()))
            except Exception as exc:  # reported to the parent
                out = (type(exc).__name__, str(exc) if not isinstance(exc, OSError) else errno.errorcode[exc.errno])
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return tuple(json.loads(data))


def test_non_root_peer_is_refused(served):
    os.chmod(served.path, 0o666)  # let nobody connect: the peer check must still refuse

    kind, result = as_nobody(lambda: raw(served.path, req("echo", {"x": 1})))
    assert kind == "ok"
    assert "'ok': False" in result and "permission denied" in result

    kind, message = as_nobody(lambda: control.request("echo", {"x": 1}, served.path))
    assert (kind, message) == ("ControlError", "permission denied: the control socket is for root only")

    assert served.calls == []
    assert control.request("echo", {"root": True}, served.path) == {"root": True}


def test_mode_0600_keeps_others_out(served):
    def connect():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(served.path)

    assert as_nobody(connect) == ("PermissionError", "EACCES")
    assert as_nobody(lambda: control.request("echo", {}, served.path)) == (
        "ControlError", f"permission denied on {served.path}: run as root")
    assert served.calls == []
