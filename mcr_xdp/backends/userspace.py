"""The PACKET_FANOUT workers (mcr_xdp.fallback) as a backend: for inputs no
BPF mode can take. Nothing of it outlives the relay: its workers end with
it, and there are no pins."""

from __future__ import annotations

from .. import encode
from ..fallback import Fallback
from ..links import Link
from ..logs import Event
from ..modes import Mode
from . import Attachment, InstalledRule, Losses


class UserspaceBackend:
    modes = (Mode.USERSPACE,)
    outlives = False

    def __init__(self, workers: int | None = None, fanout: str = "hash"):
        fallback = Fallback(workers, fanout)
        fallback.start()
        self.fallback = fallback
        self.counters = fallback.counters

    @classmethod
    def open(cls, config, left=None) -> UserspaceBackend:
        return cls(config.workers, config.fanout)

    @staticmethod
    def check_free(link: Link) -> None:
        """A second userspace relay on link is refused when it attaches
        (fallback's per-input lock)."""

    @staticmethod
    def release(link: Link, found) -> None:
        pass  # check_free finds nothing to take over

    def attach(self, link: Link, mode: Mode, last_resort: bool, takeover=None) -> Attachment:
        self.fallback.add_input(link.ifindex, link.name)
        return Attachment(link.ifindex, link.name, Mode.USERSPACE, 0)

    def detach(self, att: Attachment) -> None:
        self.fallback.remove_input(att.ifindex)

    def put_rule(self, installed: InstalledRule, links: dict[str, Link], fresh: bool) -> None:
        rule = installed.rule
        outputs = [encode.output_value(rule, o, links[o.iface].ifindex, 0, links[o.iface].mac,
                                       next_hop=installed.next_hop(i)) for i, o in enumerate(rule.outputs)]
        police = encode.police_value(rule.police) if rule.police is not None else None
        self.fallback.put_rule(installed.index, installed.ifindex, rule, outputs, fresh, police)

    def delete_rule(self, installed: InstalledRule) -> None:
        self.fallback.delete_rule(installed.index)

    def refresh_outputs(self, links: dict[str, Link]) -> list[int]:
        return []  # a worker's send to a dead output fails alone

    def heal(self) -> list[Event]:
        return self.fallback.heal()

    def losses(self) -> Losses:
        return Losses(ring=self.fallback.ring_drops())

    def status(self) -> dict:
        return {"userspace": self.fallback.status()}

    def pin(self, instance: str, state: dict) -> str | None:
        return None

    def save_state(self, state: dict) -> None:
        pass

    def close(self, keep: bool = False) -> None:
        self.fallback.close()  # nothing of it can outlive the process
