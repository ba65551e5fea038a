"""The running relay's Unix control socket: a small versioned JSON protocol.

One request per connection: a JSON object on one line,
    {"version": 1, "op": "rule.add", "args": {...}}
answered by one line,
    {"version": 1, "ok": true, "result": ...} or
    {"version": 1, "ok": false, "error": "...", "exit_code": N}
where exit_code is what the command line exits with for that refusal (2 a
bad rule or request, 77 not root, ...: mcr_xdp.errors), so a client shows
the same code as the relay would have.
The socket is mode 0600 and the server also checks the peer's uid with
SO_PEERCRED: only root, or the user the server runs as, may talk to it. A
relay runs as root, so for a relay that is root alone; admitting the
server's own user (whom the 0600 file lets connect anyway) makes the
protocol testable without root. Requests are capped at MAX_REQUEST bytes
and a few seconds; the server is single-threaded and non-blocking, driven
by the relay's own event loop (no thread per request).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

from .errors import BusyError, McrError, PrivilegeError

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 5.0
DEFAULT_SOCKET = "/run/mcr-xdp/mcr-xdp.sock"
SOCKET_ENV = "MCR_XDP_SOCKET"


class ControlError(McrError):
    """The relay could not be reached or refused a request; exit_code is
    the refusal's (the reply's exit_code), else McrError's."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class RequestError(McrError):
    """A request the relay could not parse or does not know (server side)."""

    exit_code = 2


def _netns_name() -> str | None:
    """The name `ip netns` knows the current network namespace by, if any."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        for name in sorted(os.listdir("/run/netns")):
            if os.stat(f"/run/netns/{name}").st_ino == mine:
                return name
    except OSError:
        pass
    return None


def instance_name() -> str:
    """The relay instance of this network namespace: "default", or
    "netns-NAME" inside a namespace `ip netns` knows as NAME. A relay and
    its clients in the same namespace meet without options; relays in
    different namespaces don't collide (control socket, pinned maps)."""
    name = _netns_name()
    return "default" if name is None else f"netns-{name}"


def default_path() -> str:
    """$MCR_XDP_SOCKET, else /run/mcr-xdp/mcr-xdp.sock, or
    /run/mcr-xdp/netns-NAME.sock inside network namespace NAME."""
    return os.environ.get(SOCKET_ENV) or _namespace_path()


def _namespace_path() -> str:
    name = instance_name()
    return DEFAULT_SOCKET if name == "default" else str(Path(DEFAULT_SOCKET).parent / f"{name}.sock")


def instance_for(socket_path: str | None) -> str:
    """The instance (pin directory, state file) of the relay serving
    socket_path: this namespace's instance for its usual socket; for any
    other socket that name, the socket's name and a hash of its path, so
    relays with sockets of their own never share (or remove) each other's
    pins and state."""
    base = instance_name()
    path = os.path.abspath(socket_path or default_path())
    if path == os.path.abspath(_namespace_path()):
        return base
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem)[:32]
    import hashlib  # here: OpenSSL takes milliseconds to load, and most calls never get here

    return f"{base}@{stem}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def in_this_namespace(instance: str) -> bool:
    """Whether an instance name (instance_for) is of this network namespace."""
    base = instance_name()
    return instance == base or instance.startswith(f"{base}@")


class _Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.deadline = time.monotonic() + REQUEST_TIMEOUT


class ControlServer:
    """Serves requests through handler(op, args) -> result; handler raises
    McrError for a refusal."""

    def __init__(self, path: str, handler: Callable[[str, dict], object]):
        self.path = path
        self.handler = handler
        self._peers = {0, os.geteuid()}
        self.sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._listen = self._bind(path)
        self.sel.register(self._listen, selectors.EVENT_READ, "listen")

    @staticmethod
    def _bind(path: str) -> socket.socket:
        parent = Path(path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        except (FileExistsError, NotADirectoryError):
            raise ControlError(f"cannot create the control socket {path}: {parent} is not a directory") from None
        except OSError as exc:  # a read-only tree, no permission
            raise ControlError(f"cannot create the control socket {path}: {exc.strerror or exc}") from None
        if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ControlError(f"{path} exists and is not a socket: remove it, or give --socket another path")
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(1)
                    probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: its relay is gone
            else:
                raise BusyError(f"another relay serves {path}: stop it, or give this one --socket PATH")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot create the control socket {path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def add_reader(self, fileobj, tag) -> None:
        """Also watch fileobj: when it is readable, poll() calls tag if it
        is callable (e.g. a metrics server), else returns it (e.g. a signal
        fd)."""
        self.sel.register(fileobj, selectors.EVENT_READ, tag)

    def poll(self, timeout: float) -> list[str]:
        """Serve until timeout; returns the tags of other readers that woke."""
        woke = []
        end = time.monotonic() + max(0.0, timeout)
        while True:
            left = end - time.monotonic()
            for key, _ in self.sel.select(max(0.0, min(left, 0.5))):
                if key.data == "listen":
                    self._accept()
                elif isinstance(key.data, _Conn):
                    self._read(key.data)
                elif callable(key.data):
                    key.data()
                else:
                    woke.append(key.data)
            self._expire()
            if woke or time.monotonic() >= end:
                return woke

    def _accept(self) -> None:
        try:
            sock, _ = self._listen.accept()
        except OSError:
            return
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid not in self._peers:
            self._reply(sock, {"ok": False, "error": "permission denied: the control socket is for root only",
                               "exit_code": PrivilegeError.exit_code})
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        self._conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        conn.buf += data
        if len(conn.buf) > MAX_REQUEST:
            self._finish(conn, {"ok": False, "error": f"request larger than {MAX_REQUEST} bytes"})
        elif b"\n" in conn.buf or not data:
            self._finish(conn, self._handle(conn.buf.split(b"\n", 1)[0]))

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline < now]:
            self._finish(conn, {"ok": False, "error": "request timed out"})

    def _handle(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError:
            return {"ok": False, "error": "malformed request: expected one JSON object on one line"}
        if req.get("version") != PROTOCOL_VERSION:
            return {"ok": False, "error": f"unsupported protocol version {req.get('version')!r} "
                                          f"(this relay speaks {PROTOCOL_VERSION})"}
        op, args = req.get("op"), req.get("args", {})
        if not isinstance(op, str) or not isinstance(args, dict):
            return {"ok": False, "error": "malformed request: 'op' must be a string, 'args' an object"}
        try:
            return {"ok": True, "result": self.handler(op, args)}
        except McrError as exc:
            return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        except Exception as exc:  # a bug must not take the relay down
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    def _finish(self, conn: _Conn, reply: dict) -> None:
        self.sel.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.setblocking(True)
        self._reply(conn.sock, reply)

    @staticmethod
    def _reply(sock: socket.socket, reply: dict) -> None:
        reply = {"version": PROTOCOL_VERSION, **reply}
        try:
            sock.settimeout(REQUEST_TIMEOUT)
            sock.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        finally:
            sock.close()

    def close(self) -> None:
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._conns.clear()
        self.sel.close()
        self._listen.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def remove_stale(path: str | None = None) -> bool:
    """Remove a control socket no relay answers on (left by a killed one)."""
    path = path or default_path()
    if not os.path.exists(path) or not stat.S_ISSOCK(os.lstat(path).st_mode):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(path)
            return False
        except OSError:
            pass
    os.unlink(path)
    return True


def request(op: str, args: dict | None = None, path: str | None = None, timeout: float = 10.0):
    """Send one request to the running relay; returns its result or raises
    ControlError with the relay's message."""
    path = path or default_path()
    msg = json.dumps({"version": PROTOCOL_VERSION, "op": op, "args": args or {}}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no relay is running here (no control socket at {path})") from None
        except ConnectionRefusedError:
            raise ControlError(f"no relay is running here ({path} is stale)") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as root", PrivilegeError.exit_code) from None
        except OSError as exc:  # a path too long for AF_UNIX has no errno
            raise ControlError(f"cannot reach the relay at {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(msg)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything (too large, not root): its reply waits below
        except OSError as exc:
            raise ControlError(f"the relay at {path} did not answer: {exc.strerror or exc}") from None
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise ControlError(f"the relay at {path} did not answer: {exc.strerror or exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the relay at {path} sent a malformed reply") from None
    if not reply.get("ok"):
        code = reply.get("exit_code")
        raise ControlError(reply.get("error", "request refused"), code if isinstance(code, int) else None)
    return reply.get("result")
