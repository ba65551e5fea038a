"""Prometheus text exposition of a snapshot, and a small HTTP server for
it that the relay's event loop drives (no threads).

    mcr-xdp attach eth0 --rule ... --metrics-addr 127.0.0.1:9477
    curl http://127.0.0.1:9477/metrics
"""

from __future__ import annotations

import socket

from .errors import UsageError
from .stats import RuleStats, Snapshot, merged_stream

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_TIMEOUT = 1.0


def _labels(**labels) -> str:
    def esc(v) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}" if labels else ""


class _Doc:
    def __init__(self):
        self.lines: list[str] = []
        self._seen: set[str] = set()

    def metric(self, name: str, type_: str, help_: str, value, **labels) -> None:
        if name not in self._seen:
            self._seen.add(name)
            self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {type_}"]
        self.lines.append(f"{name}{_labels(**labels)} {value}")


HEALTH_METRICS = (
    ("received", "Datagrams of the rule's stream checked (;health=)."),
    ("duplicates", "RTP sequence numbers seen again."),
    ("reordered", "RTP packets that came after a later one."),
    ("ssrc_changes", "Times a new RTP SSRC took over the rule's stream."),
    ("invalid", "Datagrams not of the kind checked (no RTP v2 header, no MPEG-TS sync byte)."),
    ("ts_packets", "MPEG-TS packets checked."),
    ("cc_errors", "MPEG-TS continuity counter errors."),
    ("first_copies", "A merge leg's packets forwarded: the first copy of their RTP sequence number."),
    ("suppressed", "A merge leg's packets dropped: another leg's copy came first."),
)
MERGE_METRICS = (
    ("received", "Datagrams of a merged stream, from every leg (;merge=rtp)."),
    ("forwarded", "Packets of a merged stream forwarded: the first copy of each RTP sequence number."),
    ("copies", "Later copies of a merged stream's packets, dropped."),
    ("reordered", "Packets of a merged stream forwarded after a later one."),
    ("invalid", "Datagrams of a merged stream without an RTP header, dropped."),
    ("resyncs", "Times a merged stream's sender started its RTP sequence over."),
)


def exposition(snap: Snapshot, status: dict) -> str:
    """Pure: the snapshot in the Prometheus text format, version 0.0.4."""
    d = _Doc()
    d.metric("mcr_xdp_uptime_seconds", "gauge", "Seconds since the relay attached.", status.get("uptime", 0))
    d.metric("mcr_xdp_rules", "gauge", "Rules installed.", len(snap.rules))
    for name, (packets, _) in snap.verdicts.items():
        d.metric("mcr_xdp_verdict_packets_total", "counter", "Packets by datapath verdict.", packets, reason=name)
    for name, (_, nbytes) in snap.verdicts.items():
        d.metric("mcr_xdp_verdict_bytes_total", "counter", "Bytes by datapath verdict.", nbytes, reason=name)
    for field, help_ in (("packets", "Packets matching the rule."), ("bytes", "Bytes matching the rule."),
                         ("forwarded", "Packets of the rule handed to its outputs."),
                         ("dropped", "Packets of the rule dropped (TTL, missing output).")):
        for r in snap.rules:
            d.metric(f"mcr_xdp_rule_{field}_total", "counter", help_, getattr(r, field),
                     rule_id=r.rule_id, rule=r.rule, interface=r.iface)
    for field in ("packets", "bytes"):
        for r in snap.rules:
            for o in r.outputs:
                d.metric(f"mcr_xdp_output_{field}_total", "counter", f"{field.capitalize()} sent to the output.",
                         getattr(o, field), rule_id=r.rule_id, output=o.output, interface=o.iface)
    for r in snap.rules:
        if r.policed is not None:
            d.metric("mcr_xdp_rule_policed_total", "counter", "Packets of the rule its policer dropped (;police=).",
                     r.policed, rule_id=r.rule_id, rule=r.rule, interface=r.iface)
    checked = [r for r in snap.rules if r.health is not None]
    for field, help_ in HEALTH_METRICS:
        for r in checked:
            d.metric(f"mcr_xdp_rule_health_{field}_total", "counter", help_, getattr(r.health, field),
                     rule_id=r.rule_id, rule=r.rule, interface=r.iface, kind=r.health.kind)
    # Not a counter: a late packet takes its loss back.
    for r in checked:
        d.metric("mcr_xdp_rule_health_lost", "gauge", "RTP sequence numbers of the rule's stream never seen.",
                 r.health.lost, rule_id=r.rule_id, rule=r.rule, interface=r.iface, kind=r.health.kind)
    # A merged stream once (every leg shows it), labelled by its legs.
    streams: dict[str, RuleStats] = {}
    for r in snap.rules:
        if r.merge is not None:
            streams.setdefault(merged_stream(r.rule), r)
    for field, help_ in MERGE_METRICS:
        for name, r in streams.items():
            d.metric(f"mcr_xdp_merge_{field}_total", "counter", help_, getattr(r.merge, field), stream=name,
                     kind=r.merge.kind)
    for name, r in streams.items():
        d.metric("mcr_xdp_merge_lost", "gauge", "RTP sequence numbers of a merged stream no leg brought.",
                 r.merge.lost, stream=name, kind=r.merge.kind)
    d.metric("mcr_xdp_steering_lost_total", "counter", "Frames a full CPU-steering queue dropped.",
             snap.steering_lost)
    for c in snap.cpus:
        d.metric("mcr_xdp_cpu_packets_total", "counter", "Packets the datapath saw per CPU.", c.packets, cpu=c.cpu)
    for c in snap.cpus:
        d.metric("mcr_xdp_cpu_forwarded_total", "counter", "Packets forwarded per CPU.", c.forwarded, cpu=c.cpu)
    for field, help_ in (("rx_packets", "Interface receive packets."), ("rx_dropped", "Interface receive drops."),
                         ("tx_packets", "Interface transmit packets."), ("tx_dropped", "Interface transmit drops."),
                         ("lost_after_redirect", "Frames the kernel dropped after XDP redirected them here."),
                         ("lost_in_ring", "Input frames a full userspace-mode ring had no room for.")):
        for i in snap.interfaces.values():
            d.metric(f"mcr_xdp_interface_{field}_total", "counter", help_, getattr(i, field), interface=i.name)
    return "\n".join(d.lines) + "\n"


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics-addr {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """Answers GET /metrics with render(); call serve() when the listening
    socket is readable."""

    def __init__(self, addr: str, render):
        host, port = parse_addr(addr)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise UsageError(f"cannot serve metrics on {addr}: {exc.strerror}") from None
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        self._render = render

    def serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                request = conn.recv(8192).decode("latin-1")
                path = request.split(" ", 2)[1] if request.count(" ") >= 2 else ""
                if not request.startswith("GET "):
                    status, body = "405 Method Not Allowed", "only GET\n"
                elif path.split("?")[0] not in ("/metrics", "/"):
                    status, body = "404 Not Found", "try /metrics\n"
                else:
                    status, body = "200 OK", self._render()
                data = body.encode()
                conn.sendall(f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                             f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            except (OSError, IndexError):
                pass

    def close(self) -> None:
        self.sock.close()
