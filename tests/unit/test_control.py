"""The control socket (mcr_xdp.control): server and client, no kernel.

A ControlServer runs in a thread of the test with a fake handler (the
relay's Service is not involved); requests go through the real client,
control.request(), or raw bytes over the socket where the client would not
send them. Server and client run as the same user, which the server lets
in; peers of another user are refused (tests/e2e/test_control_peers.py,
which needs root to be another user).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from mcr_xdp import control
from mcr_xdp.control import MAX_REQUEST, PROTOCOL_VERSION, ControlError, ControlServer
from mcr_xdp.errors import BusyError
from tests.fixtures.control import Served, fake_handler, raw, read_reply, req


@pytest.fixture
def sock_dir():
    """A short path (sun_path holds 108 bytes) that nobody may traverse:
    pytest's tmp_path is 0700 and long."""
    path = tempfile.mkdtemp(prefix="mcr-ctl-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path)


@pytest.fixture
def serve(sock_dir):
    """serve() -> a running server on sock_dir/ctl.sock; stopped afterwards."""
    started: list[Served] = []

    def start(handler=fake_handler, name: str = "ctl.sock") -> Served:
        served = Served(str(sock_dir / name), handler)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


# -- requests and replies ---------------------------------------------------------


def test_ok_request(serve):
    served = serve()

    assert control.request("echo", {"x": [1, 2]}, served.path) == {"x": [1, 2]}
    assert raw(served.path, req("echo", {"y": 1})) == {"version": PROTOCOL_VERSION, "ok": True, "result": {"y": 1}}
    assert served.calls == [("echo", {"x": [1, 2]}), ("echo", {"y": 1})]


def test_request_ended_by_eof_instead_of_newline(serve):
    served = serve()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(served.path)
        sock.sendall(req("echo", {"z": 1}).rstrip(b"\n"))
        sock.shutdown(socket.SHUT_WR)
        assert read_reply(sock)["result"] == {"z": 1}


BAD_REQUESTS = [
    # (description, bytes sent, part of the error reply)
    ("unknown op", req("frobnicate"), "unknown operation 'frobnicate'"),
    ("handler refuses", req("refuse"), "no rule with id 7"),
    ("handler crashes", req("crash"), "internal error: ZeroDivisionError: division by zero"),
    ("malformed JSON", b'{"version": 1, "op": \n', "malformed request: expected one JSON object on one line"),
    ("not UTF-8", b"\xff\xfe\n", "malformed request"),
    ("empty line", b"\n", "malformed request"),
    ("JSON array", b"[1, 2]\n", "malformed request"),
    ("JSON string", b'"status"\n', "malformed request"),
    ("JSON number", b"1\n", "malformed request"),
    ("JSON null", b"null\n", "malformed request"),
    ("op not a string", req(None), "'op' must be a string"),
    ("args not an object", json.dumps({"version": 1, "op": "echo", "args": [1]}).encode() + b"\n",
     "'args' an object"),
    ("protocol version 2", req("echo", version=2), "unsupported protocol version 2 (this relay speaks 1)"),
    ("protocol version as text", req("echo", version="1"), "unsupported protocol version '1'"),
    ("no protocol version", b'{"op": "echo", "args": {}}\n', "unsupported protocol version None"),
    ("oversized", b'{"version": 1, "op": "echo", "args": {"pad": "' + b"x" * MAX_REQUEST + b'"}}\n',
     f"request larger than {MAX_REQUEST} bytes"),
    ("oversized, no newline", b"x" * (4 * MAX_REQUEST), f"request larger than {MAX_REQUEST} bytes"),
]


@pytest.mark.parametrize("data, message", [(d, m) for _, d, m in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_error_reply_and_server_goes_on(serve, data, message):
    served = serve()

    reply = raw(served.path, data)

    assert reply["version"] == PROTOCOL_VERSION
    assert reply["ok"] is False
    assert message in reply["error"]
    assert "\n" not in reply["error"]
    assert control.request("echo", {"next": True}, served.path) == {"next": True}


def test_client_raises_the_error_reply(serve):
    served = serve()
    with pytest.raises(ControlError, match="^unknown operation 'frobnicate'$"):
        control.request("frobnicate", {}, served.path)
    with pytest.raises(ControlError, match="^no rule with id 7$"):
        control.request("refuse", {}, served.path)


@pytest.mark.parametrize("op, code", [("refuse", 2), ("frobnicate", 2), ("crash", 1)])
def test_a_refusal_exits_with_its_own_code(serve, op, code):
    """The reply carries the refusal's exit code (a bad rule is 2, as the
    README says), so `mcr-xdp rule add` exits as attach would have."""
    served = serve()
    reply = raw(served.path, req(op))
    assert reply.get("exit_code", 1) == code
    with pytest.raises(ControlError) as caught:
        control.request(op, {}, served.path)
    assert caught.value.exit_code == code


def padded_request(size: int) -> bytes:
    """An echo request of exactly size bytes, newline included."""
    empty = req("echo", {"pad": ""})
    return req("echo", {"pad": "x" * (size - len(empty))})


def test_request_size_limit_is_exact(serve):
    served = serve()
    assert len(padded_request(MAX_REQUEST)) == MAX_REQUEST

    assert raw(served.path, padded_request(MAX_REQUEST))["ok"] is True
    reply = raw(served.path, padded_request(MAX_REQUEST + 1))
    assert reply["ok"] is False and "request larger than" in reply["error"]


def test_client_reports_oversized_request(serve):
    """The server answers before it has read everything: the client must
    still read that answer rather than fail on the broken pipe."""
    served = serve()
    for _ in range(5):
        with pytest.raises(ControlError, match=f"^request larger than {MAX_REQUEST} bytes$"):
            control.request("echo", {"pad": "x" * (4 * MAX_REQUEST)}, served.path)
    assert control.request("echo", {}, served.path) == {}


def test_idle_client_times_out_without_blocking_others(serve, monkeypatch):
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 1.0)
    served = serve()
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        idle.settimeout(10)
        slow.settimeout(10)
        idle.connect(served.path)
        slow.connect(served.path)
        slow.sendall(req("echo")[:10])  # half a request, then nothing
        t0 = time.monotonic()

        for i in range(3):
            assert control.request("echo", {"i": i}, served.path, timeout=0.9) == {"i": i}
        assert time.monotonic() - t0 < 1.0  # served while the others hang

        for sock in (idle, slow):
            reply = read_reply(sock)
            assert reply == {"version": PROTOCOL_VERSION, "ok": False, "error": "request timed out"}
        assert 1.0 <= time.monotonic() - t0 < 5.0
    finally:
        idle.close()
        slow.close()
    assert control.request("echo", {}, served.path) == {}
    assert [op for op, _ in served.calls] == ["echo"] * 4


def test_many_clients_in_turn(serve):
    served = serve()
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(10)]  # < listen backlog
    try:
        for sock in socks:
            sock.settimeout(10)
            sock.connect(served.path)
        for i, sock in reversed(list(enumerate(socks))):
            sock.sendall(req("echo", {"i": i}))
        assert [read_reply(sock)["result"] for sock in socks] == [{"i": i} for i in range(len(socks))]
    finally:
        for sock in socks:
            sock.close()


# -- the socket file ---------------------------------------------------------------


def test_socket_file_mode_0600(serve):
    served = serve()
    st = os.lstat(served.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


def test_socket_directory_created(sock_dir):
    path = sock_dir / "run" / "mcr-xdp" / "ctl.sock"
    served = Served(str(path))
    try:
        assert stat.S_IMODE(os.stat(path.parent).st_mode) & 0o022 == 0
        assert control.request("echo", {}, str(path)) == {}
    finally:
        served.stop()


def test_close_removes_the_socket_file(sock_dir):
    served = Served(str(sock_dir / "ctl.sock"))
    served.stop()
    assert not (sock_dir / "ctl.sock").exists()


def test_stale_socket_file_is_replaced(sock_dir):
    path = str(sock_dir / "ctl.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # a socket file nobody listens on: its relay was killed
    dead.close()
    with pytest.raises(ControlError, match="is stale"):
        control.request("echo", {}, path)

    served = Served(path)
    try:
        assert control.request("echo", {"ok": 1}, path) == {"ok": 1}
    finally:
        served.stop()


def test_live_socket_is_busy(serve):
    served = serve()

    with pytest.raises(BusyError, match=f"another relay serves {served.path}"):
        ControlServer(served.path, fake_handler)

    assert control.request("echo", {"still": "here"}, served.path) == {"still": "here"}
    assert os.path.exists(served.path)


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_other_file_in_the_way_is_left_alone(sock_dir, kind):
    """--socket pointing at something that is not a socket must not delete it."""
    path = sock_dir / "ctl.sock"
    if kind == "file":
        path.write_text("precious\n")
    else:
        path.mkdir()

    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(str(path), fake_handler)

    assert path.read_text() == "precious\n" if kind == "file" else path.is_dir()


@pytest.mark.parametrize("where, message, client", [
    ("file", "cannot create the control socket .*: .*/plain is not a directory", "Not a directory"),
    ("long", "cannot create the control socket .*: AF_UNIX path too long", "AF_UNIX path too long"),
])
def test_a_socket_path_that_cannot_be_is_one_clear_error(sock_dir, where, message, client):
    """--socket under a file, or longer than a Unix socket address holds:
    an error naming the path and why, for the relay and for a client."""
    if where == "file":
        (sock_dir / "plain").write_text("")
        path = str(sock_dir / "plain" / "ctl.sock")
    else:
        path = str(sock_dir / ("a" * 120 + ".sock"))
    with pytest.raises(ControlError, match=message):
        ControlServer(path, fake_handler)
    with pytest.raises(ControlError, match=f"cannot reach the relay at .*: {client}"):
        control.request("status", {}, path)


def test_no_relay(sock_dir):
    with pytest.raises(ControlError, match="^no relay is running here"):
        control.request("status", {}, str(sock_dir / "ctl.sock"))


def test_instance_for_a_socket_of_its_own(monkeypatch):
    """Relays with sockets of their own get instances of their own (pins,
    state); the usual socket keeps the namespace's instance."""
    monkeypatch.delenv(control.SOCKET_ENV, raising=False)
    base = control.instance_name()
    assert control.instance_for(None) == base
    assert control.instance_for(control.default_path()) == base
    a, b = control.instance_for("/run/mcr-xdp/a.sock"), control.instance_for("/tmp/x/a.sock")
    assert a != b and a.startswith(f"{base}@a-") and b.startswith(f"{base}@a-")
    assert control.instance_for("/run/mcr-xdp/a.sock") == a  # stable
    assert control.in_this_namespace(a) and control.in_this_namespace(base)
    assert not control.in_this_namespace("netns-other") and not control.in_this_namespace(f"{base}x")
    assert "/" not in control.instance_for("/tmp/we ird/s o c k.sock")
