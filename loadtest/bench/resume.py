"""Client-side resume bookkeeping for the bench, free of I/O.

A bench client keeps what a real client keeps (docs/protocol.md): its session and, per stream,
the position (epoch, offset) it has reached, which becomes the ``cursor`` of its next connect.
On top of that it keeps an *account* per stream so the storm scenario can prove exactly-once
delivery: every offset above the first position must arrive once, none twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

NEW, DUPLICATE, GAP = "new", "duplicate", "gap"


@dataclass(slots=True)
class StreamAccount:
    epoch: str
    offset: int  # last offset delivered (or the position the welcome gave)
    first: int  # where accounting started: offsets above this must all arrive
    received: int = 0
    duplicates: int = 0
    missing: int = 0  # offsets skipped: live gaps, recovered:false jumps
    epoch_changes: int = 0


@dataclass(slots=True)
class ResumeState:
    session: str | None = None
    streams: dict[str, StreamAccount] = field(default_factory=dict)
    welcomes: int = 0
    unrecovered: int = 0  # resume welcomes that said recovered:false

    def on_welcome(self, welcome: dict[str, Any]) -> None:
        """Take the session and stream positions of a ``welcome``.

        On a resume the gateway positions a recovered stream at our cursor; anything else (a
        later offset, a new epoch) means messages we will never see, which we count.
        """
        resuming = self.welcomes > 0
        self.welcomes += 1
        self.session = str(welcome["session"])
        if resuming and not welcome.get("recovered", False):
            self.unrecovered += 1
        for name, pos in welcome.get("streams", {}).items():
            epoch, offset = str(pos["epoch"]), int(pos["offset"])
            acc = self.streams.get(name)
            if acc is None:
                self.streams[name] = StreamAccount(epoch, offset, first=offset)
            elif epoch != acc.epoch:
                acc.epoch_changes += 1
                acc.epoch, acc.offset = epoch, offset
            elif offset > acc.offset:
                acc.missing += offset - acc.offset
                acc.offset = offset
            # offset below ours: the server will resend what we have; those count as duplicates

    def on_message(self, stream: str, epoch: str, offset: int) -> str:
        """Account one ``message``; returns NEW, DUPLICATE or GAP (new, after a hole)."""
        acc = self.streams.get(stream)
        if acc is None:
            # not announced in a welcome: start accounting just below it
            self.streams[stream] = StreamAccount(epoch, offset, first=offset - 1, received=1)
            return NEW
        if epoch != acc.epoch:
            acc.epoch_changes += 1
            acc.missing += offset - 1
            acc.epoch, acc.offset = epoch, offset
            acc.received += 1
            return GAP
        if offset <= acc.offset:
            acc.duplicates += 1
            return DUPLICATE
        hole = offset - acc.offset - 1
        acc.offset = offset
        acc.received += 1
        if hole:
            acc.missing += hole
            return GAP
        return NEW

    def cursor(self) -> str:
        return ",".join(f"{name}:{a.epoch}:{a.offset}" for name, a in self.streams.items())

    def resume_query(self) -> str:
        """``session=..&cursor=..`` for the next connect, or "" before the first welcome."""
        if self.session is None:
            return ""
        return f"session={quote(self.session)}&cursor={quote(self.cursor(), safe=':,')}"

    def audit(self, stream: str, top: int) -> dict[str, int]:
        """Exactly-once check against the stream's final ``top`` offset.

        ``lost`` counts offsets in (first, top] that never arrived, ``duplicates`` offsets that
        arrived more than once; both must be 0.
        """
        acc = self.streams.get(stream)
        if acc is None:
            return {"lost": 0, "duplicates": 0, "received": 0, "epoch_changes": 0}
        behind = max(0, top - acc.offset) if acc.epoch_changes == 0 else 0
        return {
            "lost": acc.missing + behind,
            "duplicates": acc.duplicates,
            "received": acc.received,
            "epoch_changes": acc.epoch_changes,
        }
