"""Reading request bodies under a size limit and answering in the format the client wants.

The size limit is enforced twice: by the declared ``Content-Length`` before reading anything,
and by the bytes actually read, so a chunked or lying request cannot push the router past
``max_body`` of memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgpack
from fastapi import Request, Response

from router import validation
from router.errors import BodyTooLarge, UnsupportedMediaType


async def collect(chunks: AsyncIterator[bytes], declared_length: str | None,
                  limit: int) -> bytes:
    """The body from its chunks, refused (413) by its declared length or by what arrives."""
    validation.check_declared_length(declared_length, limit)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is larger than the limit of {limit} bytes")
    return bytes(body)


async def read_limited(request: Request, limit: int) -> bytes:
    return await collect(request.stream(), request.headers.get("content-length"), limit)


async def read_object(request: Request, limit: int) -> dict[str, Any]:
    """A required JSON or msgpack object body (415, 413, 400 otherwise)."""
    fmt = validation.body_format(request.headers.get("content-type"))
    return validation.decode_body(await read_limited(request, limit), fmt)


async def read_optional_object(request: Request, limit: int) -> dict[str, Any] | None:
    """Like :func:`read_object`, but an empty body is None whatever its Content-Type."""
    content_type = request.headers.get("content-type")
    raw = await read_limited(request, limit)
    if not raw:
        return None
    if content_type is None:
        raise UnsupportedMediaType(
            f"a body needs a Content-Type: {validation.JSON_TYPE} or {validation.MSGPACK_TYPE}"
        )
    return validation.decode_body(raw, validation.body_format(content_type))


def encode(payload: dict[str, Any], accept: str | None) -> tuple[bytes, str]:
    """``payload`` as msgpack when ``Accept`` asks for it, JSON (as Starlette writes it)
    otherwise; with its media type."""
    if validation.wants_msgpack(accept):
        return bytes(msgpack.packb(payload, use_bin_type=True)), validation.MSGPACK_TYPE
    return json_bytes(payload), validation.JSON_TYPE


def json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()


def respond(request: Request, payload: dict[str, Any]) -> Response:
    """``payload`` in the format the client asks for (``Accept``): msgpack or JSON."""
    body, media = encode(payload, request.headers.get("accept"))
    return Response(body, media_type=media, headers={"Vary": "Accept"})
