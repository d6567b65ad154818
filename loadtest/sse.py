"""An incremental ``text/event-stream`` parser (the WHATWG rules we need), free of I/O.

Used by the locust SSE users: they read whatever bytes the socket has (never waiting for a
fixed chunk size, which would add latency) and feed them here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # "message" when the event had no 'event:' field
    data: str
    id: str | None


class SseParser:
    def __init__(self) -> None:
        self._pending = b""
        self._type = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Events completed by ``chunk`` (a blank line ends an event; comments are skipped)."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()  # the last piece has no newline yet
        out: list[Event] = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if self._data:
                    out.append(Event(self._type or "message", "\n".join(self._data), self._id))
                self._type, self._data = "", []
                continue
            if line.startswith(":"):
                continue  # a comment, e.g. the gateway's keepalive ': ping'
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                self._type = value
            elif field == "data":
                self._data.append(value)
            elif field == "id":
                self._id = value
        return out
