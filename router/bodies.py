"""Reading request bodies under a size limit and answering in the format the client wants.

The size limit is enforced twice: by the declared ``Content-Length`` before reading anything,
and by the bytes actually read, so a chunked or lying request cannot push the router past
``max_body`` of memory.
"""

from __future__ import annotations

from typing import Any

import msgpack
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from router import validation
from router.errors import BodyTooLarge, UnsupportedMediaType


async def read_limited(request: Request, limit: int) -> bytes:
    validation.check_declared_length(request.headers.get("content-length"), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is larger than the limit of {limit} bytes")
    return bytes(body)


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


def respond(request: Request, payload: dict[str, Any]) -> Response:
    """``payload`` as msgpack when the client asks for it (``Accept``), JSON otherwise."""
    if validation.wants_msgpack(request.headers.get("accept")):
        return Response(
            bytes(msgpack.packb(payload, use_bin_type=True)),
            media_type=validation.MSGPACK_TYPE,
            headers={"Vary": "Accept"},
        )
    return JSONResponse(payload, headers={"Vary": "Accept"})
