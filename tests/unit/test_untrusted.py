"""switchboard.untrusted, and the error paths of the router and the gateway that use it."""

from __future__ import annotations

import json
import math

import msgpack
import pytest

from gateway import commands
from router import bodies, errors
from switchboard.untrusted import finite, quotable


@pytest.mark.parametrize(("text", "quoted"), [
    ("plain", "plain"),
    ("ünïcödé \U0001f600", "ünïcödé \U0001f600"),  # UTF-8 carries it: unchanged
    ("\ud800", "\\ud800"),
    ("a\udcffb\ud83d", "a\\udcffb\\ud83d"),
    ("\ud83d\ude00", "\\ud83d\\ude00"),  # a pair spelled as two escapes is still two halves
])
def test_quotable_escapes_only_what_utf8_cannot_carry(text: str, quoted: str) -> None:
    assert quotable(text) == quoted
    quotable(text).encode()  # never raises


@pytest.mark.parametrize(("data", "ok"), [
    (None, True), (1, True), (1.5, True), ("NaN", True), ({"a": [1, {"b": 2.0}]}, True),
    (math.nan, False), (math.inf, False), (-math.inf, False),
    ({"a": [1, {"b": math.nan}]}, False), ([[[(math.inf,)]]], False),
])
def test_finite_looks_everywhere_in_the_data(data: object, ok: bool) -> None:
    assert finite(data) is ok


def test_router_error_bodies_always_encode() -> None:
    err = errors.InvalidField("unknown field '\\ud800'", field="messages[0].\ud800")
    body = err.body()
    assert body["field"] == "messages[0].\\ud800"
    assert json.loads(bodies.json_bytes(body)) == body


def test_gateway_echo_quotes_strings_it_repeats() -> None:
    assert commands.echo("\ud800") == "\\ud800"
    assert commands.echo("room") == "room"
    assert commands.echo(7) == 7
    msgpack.packb({"channel": commands.echo("x\udfff")})  # never raises
