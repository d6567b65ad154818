"""When to tell the gateway what the application processed (delivery receipts).

An ack is cumulative: "everything up to OFFSET of my user stream, in EPOCH, is processed".
So only the newest matters, and the client sends one at most every :data:`EVERY` messages or
:data:`INTERVAL` seconds after the first one it holds, whichever comes first, and at close.
"""

from __future__ import annotations

from typing import Any

EVERY = 50
INTERVAL = 1.0


class Acks:
    __slots__ = ("_count", "_epoch", "_offset")

    def __init__(self) -> None:
        self._epoch: str | None = None
        self._offset = 0
        self._count = 0

    @property
    def pending(self) -> bool:
        return self._epoch is not None

    def processed(self, epoch: str, offset: int) -> bool:
        """Note a processed user-stream message; True when an ack should go out now."""
        self._count = self._count + 1 if epoch == self._epoch else 1
        self._epoch, self._offset = epoch, offset
        return self._count >= EVERY

    def take(self) -> dict[str, Any] | None:
        """The ack frame to send (None: nothing processed since the last)."""
        if self._epoch is None:
            return None
        frame = {"type": "ack", "stream": "user", "epoch": self._epoch, "offset": self._offset}
        self._epoch, self._count = None, 0
        return frame

    def put_back(self, frame: dict[str, Any]) -> None:
        """An ack that could not be sent (the connection closed): sent on the next one, unless
        a newer one was noted meanwhile."""
        if self._epoch is None:
            self._epoch, self._offset = frame["epoch"], frame["offset"]
