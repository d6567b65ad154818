"""Published data in history answers: as published, rendered for JSON as gateways do."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from gateway.wire import dumps_json
from router.render import dumps, json_bytes, respond_bytes


@pytest.mark.parametrize(
    "value",
    [
        None, True, 0, -1, 2**63 - 1, 1.5, "", "héllo ✓ \u2028", [], {}, [1, [2, [3]]],
        {"a": {"b": [None, False]}}, {"raw": b"\x00\xff"}, [bytearray(b"ab")],
        {1: "int key", None: "null key"}, {"x": msgpack.ExtType(5, b"e")},
    ],
)
def test_rendered_as_a_gateway_renders_it_for_json_clients(value: Any) -> None:
    expected = json.loads(dumps_json(value))
    assert json.loads(json_bytes(value)) == expected
    assert json.loads(dumps(value)) == expected  # the fallback agrees with the fast path


def test_what_orjson_refuses_still_renders() -> None:
    assert json.loads(json_bytes({b"\x00": 1, "deep": [[[]]]})) == {"AA==": 1, "deep": [[[]]]}
    deep: Any = "bottom"
    for _ in range(1024):  # as deep as a msgpack body may nest; past orjson and json
        deep = [deep]
    text = json_bytes({"data": deep})
    assert text.startswith(b'{"data":' + b"[" * 1024 + b'"bottom"')
    assert text.endswith(b"]" * 1024 + b"}")


def test_msgpack_answers_keep_binary() -> None:
    body, media = respond_bytes({"data": b"\x01"}, "application/msgpack")
    assert media == "application/msgpack"
    assert msgpack.unpackb(body) == {"data": b"\x01"}
    body, media = respond_bytes({"data": b"\x01"}, "application/json, */*")
    assert (media, json.loads(body)) == ("application/json", {"data": "AQ=="})
