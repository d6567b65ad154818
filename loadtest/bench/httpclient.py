"""A tiny keep-alive HTTP/1.1 client for publishing to the router at thousands of requests/s.

httpx's AsyncClient costs a few hundred microseconds of client CPU per request; at 2,000
publishes/s that would take most of a core away from the router and gateways it measures on
this 2-core machine. This client does only what publishing needs: POST a JSON body on a
persistent connection and read one ``Content-Length`` (or chunked) answer. Response-head
parsing is pure and unit-tested.
"""

from __future__ import annotations

import asyncio


class HttpError(Exception):
    """The server's answer was not HTTP we understand, or the connection dropped."""


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a response head (without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def request_bytes(method: str, host: str, path: str, body: bytes,
                  headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpConnection:
    """One persistent connection; one request at a time (no pipelining)."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.headers = {"Content-Type": "application/json", **headers}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        reader, writer = await self._open()
        writer.write(request_bytes("POST", f"{self.host}:{self.port}", path, body,
                                   self.headers))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status, headers = parse_head(head[:-4])
            if headers.get("transfer-encoding", "").lower() == "chunked":
                payload = await _read_chunked(reader)
            else:
                payload = await reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.close()
            raise HttpError(f"connection dropped: {exc}") from exc
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, payload

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
