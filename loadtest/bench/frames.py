"""Minimal RFC 6455 client framing, free of I/O.

The bench holds 20,000+ sockets from a few processes, so it cannot afford a full WebSocket
client object per connection. This module is the part of a client that is pure computation:
the HTTP upgrade request, the check of the 101 answer, a parser for server frames and a
builder for (masked) client frames. The asyncio adapter lives in :mod:`loadtest.bench.client`.

What we deliberately leave out: extensions (we never offer permessage-deflate, so RSV bits
must be clear, RFC 6455 5.2), and UTF-8 validation of text frames (the bench decodes JSON, which
fails loudly on bad UTF-8 anyway).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# RFC 6455 1.3: the server proves it read our key by hashing it with this GUID.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024  # an upgrade answer larger than this is not a gateway's


class ProtocolError(Exception):
    """The server broke RFC 6455 (or the handshake failed); the connection must be dropped."""


class HandshakeError(ProtocolError):
    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds, from a 429/503 Retry-After header


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def handshake_request(host: str, port: int, target: str, key: str,
                      subprotocol: str | None = None) -> bytes:
    """The GET that asks for an upgrade; ``target`` is the path with its query string."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def split_head(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(HTTP head, bytes after it) once the head is complete, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise HandshakeError(0, "handshake answer too large")
        return None
    return buffer[:end], buffer[end + 4:]


def check_handshake(head: bytes, key: str) -> None:
    """Raise :class:`HandshakeError` unless ``head`` is a valid 101 answer to ``key``."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HandshakeError(0, f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status != 101:
        retry = headers.get("retry-after", "")
        raise HandshakeError(status, f"upgrade refused with {status}",
                             float(retry) if retry.isdigit() else None)
    if headers.get("sec-websocket-accept") != accept_for(key):
        raise HandshakeError(status, "wrong Sec-WebSocket-Accept")


def client_frame(opcode: int, payload: bytes = b"", mask: bytes | None = None) -> bytes:
    """One final frame from a client; RFC 6455 5.3 requires clients to mask every frame."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        # XOR with the repeated key through one big int: much faster than a per-byte loop.
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    else:
        masked = b""
    return head + mask + masked


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a close frame; 1005 when it carries no code (RFC 6455 7.1.5)."""
    if len(payload) < 2:
        return 1005, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode(errors="replace")


class FrameParser:
    """Turns the server's byte stream into ``(opcode, payload)`` messages.

    Data messages come out reassembled (fragments joined, opcode of the first fragment);
    control frames come out as they arrive, even between fragments, as RFC 6455 5.4 allows.
    """

    __slots__ = ("_buffer", "_fragment_opcode", "_fragments", "max_size")

    def __init__(self, max_size: int = 16 * 1024 * 1024) -> None:
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self.max_size = max_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buffer + data if self._buffer else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b1 & 0x80:
                raise ProtocolError("server frames must not be masked (RFC 6455 5.1)")
            if b0 & 0x70:
                raise ProtocolError("reserved bits set but no extension was negotiated")
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if length > self.max_size:
                raise ProtocolError(f"frame of {length} bytes is over the {self.max_size} limit")
            end = pos + head + length
            if end > n:
                break
            payload = buf[pos + head:end]
            pos = end
            self._frame(b0 & 0x80, b0 & 0x0F, payload, out)
        self._buffer = buf[pos:] if pos < n else b""
        return out

    def skim(self, data: bytes) -> int:
        """Count ``data``'s messages without materializing them, or -1 to say "use feed".

        The fan-out fast path: most reads are whole, final, unmasked text or binary frames and
        most connections only count them. Anything else (a partial frame, a control frame,
        a fragment, leftovers from an earlier read) returns -1 and consumes nothing.
        """
        if self._buffer or self._fragments:
            return -1
        pos, n, count = 0, len(data), 0
        while pos < n:
            if n - pos < 2 or data[pos] not in (0x81, 0x82):
                return -1
            length = data[pos + 1]
            if length < 126:
                pos += 2 + length
            elif length == 126 and n - pos >= 4:
                pos += 4 + ((data[pos + 2] << 8) | data[pos + 3])
            else:
                return -1  # masked, 64-bit length or cut short: let feed decide
            count += 1
        return count if pos == n else -1

    def _frame(self, fin: int, opcode: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        if opcode >= OP_CLOSE:
            if not fin or len(payload) > 125:
                raise ProtocolError("control frames must be final and at most 125 bytes")
            out.append((opcode, payload))
        elif opcode == OP_CONT:
            if not self._fragments:
                raise ProtocolError("continuation frame without a message to continue")
            self._fragments.append(payload)
            if fin:
                out.append((self._fragment_opcode, b"".join(self._fragments)))
                self._fragments = []
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments:
                raise ProtocolError("new data frame while a fragmented message is open")
            if fin:
                out.append((opcode, payload))
            else:
                self._fragments = [payload]
                self._fragment_opcode = opcode
        else:
            raise ProtocolError(f"reserved opcode {opcode:#x}")
