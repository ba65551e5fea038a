"""mcr-xdp gen: send a bounded, sequence-numbered multicast stream."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional

import typer

from .console import err, out

if TYPE_CHECKING:
    from mcr_xdp import gen as gen_mod


def gen(
    group: str = typer.Option(..., "--group", "-g", help="Multicast group to send to (IPv4 or IPv6).",
                              show_default=False),
    port: int = typer.Option(..., "--port", "-p", help="UDP destination port.", show_default=False),
    iface: Optional[str] = typer.Option(None, "--iface", "-i", help="Interface to send from (default: the route's).",
                                        show_default=False),
    rate: float = typer.Option(1000.0, "--rate", help="Packets per second; 0 sends as fast as possible."),
    count: int = typer.Option(1000, "--count", "-n", help="Packets to send, then stop."),
    size: int = typer.Option(64, "--size", help="UDP payload bytes (sequence header and digest included)."),
    ttl: int = typer.Option(16, "--ttl", help="IP TTL / hop limit; a relay needs 2 or more."),
    first_seq: int = typer.Option(0, "--first-seq", help="Sequence number of the first packet."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Send COUNT packets to GROUP:PORT at RATE, then print a summary.

    Payloads carry a sequence number and a digest: a receiver
    (python -m mcr_xdp.lab.traffic recv) counts lost, duplicated, reordered and
    corrupted packets. Needs no root. Ctrl-C stops early and still prints
    what was sent.

    Example: mcr-xdp gen --group 239.1.1.1 --port 5001 --iface eth0 --rate 5000 --count 50000
    """
    from mcr_xdp import gen as gen_mod

    spec = gen_mod.GenSpec(group=group, port=port, count=count, rate=rate, size=size, iface=iface, ttl=ttl,
                           first_seq=first_seq)
    spec = gen_mod.validate(spec)
    pace = "as fast as possible" if spec.rate == 0 else f"at {spec.rate:g} pps"
    err.print(f"mcr-xdp: sending {spec.count} packet(s) of {spec.size} B to {gen_mod.endpoint(spec.group, spec.port)} "
              f"{pace}{f' via {spec.iface}' if spec.iface else ''}", markup=False)
    result = gen_mod.run(spec)
    if as_json:
        print(json.dumps(result.as_dict()), flush=True)
    else:
        out.print(summary(result), markup=False)
    if result.interrupted:
        raise typer.Exit(130)


def summary(result: gen_mod.GenResult) -> str:
    from mcr_xdp import gen as gen_mod

    s = result.spec
    via = f" via {s.iface}" if s.iface else ""
    seqs = f"sequence {s.first_seq}..{result.last_seq}" if result.sent else "nothing sent"
    head = "interrupted: sent" if result.interrupted else "sent"
    return (f"{head} {result.sent} of {s.count} packets ({result.payload_bytes} payload bytes) to "
            f"{gen_mod.endpoint(s.group, s.port)}{via} in {result.seconds:.3f} s, {result.pps:.0f} pps; {seqs}")
