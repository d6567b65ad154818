"""Published data in an HTTP answer, as a gateway renders it for its clients.

Data comes back as it was published: any JSON value, or for msgpack-published data, what
msgpack carried. An answer in msgpack (``Accept: application/msgpack``) keeps binary as
binary. A JSON answer renders it the way a gateway renders it for its JSON clients
(:mod:`gateway.wire`): binary (msgpack ``bin``) as a base64 string, map keys that are not
strings as JSON text (``1`` -> ``"1"``, binary keys as base64), anything else JSON has no
word for (msgpack extension types) as its Python text.

orjson does the work; what it refuses (binary map keys, nesting past its 254 levels, which a
msgpack body may reach) goes through :func:`dumps`, which needs no recursion, so no
published message is ever a 500.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import msgpack
import orjson

from router import validation

_OPTIONS = orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def json_bytes(payload: Any) -> bytes:
    """``payload`` as JSON, published data in it rendered as for a gateway's JSON clients."""
    try:
        return orjson.dumps(payload, default=_default, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        return dumps(payload).encode()


def respond_bytes(payload: dict[str, Any], accept: str | None) -> tuple[bytes, str]:
    """``payload`` as msgpack when ``Accept`` prefers it, else JSON; with its media type."""
    if validation.wants_msgpack(accept):
        return bytes(msgpack.packb(payload, use_bin_type=True)), validation.MSGPACK_TYPE
    return json_bytes(payload), validation.JSON_TYPE


class _Text(str):
    """Output already rendered (punctuation, a key), as opposed to a value still to render."""

    __slots__ = ()


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(key)).decode("ascii")
    if key is None or isinstance(key, bool | int | float):
        return _scalar(key)
    return str(key)


def _scalar(value: bool | int | float | None) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "null"  # never stored (publishes refuse it), and JSON has no word for it
    return json.dumps(value)


def dumps(value: Any) -> str:
    """JSON text of ``value`` without recursion (any depth), rendered as :func:`json_bytes`
    renders it; ASCII only, so no string can fail to encode."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Text:
            out.append(item)
        elif isinstance(item, str):
            out.append(json.dumps(item))
        elif item is None or isinstance(item, bool | int | float):
            out.append(_scalar(item))
        elif isinstance(item, dict):
            stack.append(_Text("}"))
            entries = list(item.items())
            for i in range(len(entries) - 1, -1, -1):
                key, inner = entries[i]
                stack.append(inner)
                stack.append(_Text(("," if i else "") + json.dumps(_key(key)) + ":"))
            stack.append(_Text("{"))
        elif type(item) in (list, tuple):
            stack.append(_Text("]"))
            for i in range(len(item) - 1, -1, -1):
                stack.append(item[i])
                if i:
                    stack.append(_Text(","))
            stack.append(_Text("["))
        else:
            out.append(json.dumps(_default(item)))
    return "".join(out)
