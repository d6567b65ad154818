"""The asyncio transport a gateway connection writes to, without a socket.

What the gateway writes goes to :meth:`FakeTcp.received` (subclasses record or parse it);
closing schedules ``connection_lost`` on the next loop iteration, as asyncio's transports do.
Used by the in-process fuzz test and the unit tests that drive real connections.
"""

from __future__ import annotations

import asyncio
from typing import Any


class FakeTcp:
    def __init__(self, protocol: asyncio.BaseProtocol,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.protocol = protocol
        self.loop = loop
        self.closing = False
        self.aborted = False
        self.buffer_size = 0  # what the kernel would not take (a stalled reader)

    def received(self, data: bytes) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        if not self.closing:
            self.received(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            loop = self.loop or asyncio.get_running_loop()
            loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
