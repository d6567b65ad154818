"""Parsing and validation of router requests: headers and bytes in, typed requests out.

Pure functions with no I/O and no web framework, so every rule is unit-tested without a
server. Failures raise :mod:`router.errors` exceptions: 400 when the body cannot be decoded or
is not an object, 413 when it is too large, 415 for an unsupported media type, and 422 when it
decodes but a field is missing, mistyped or invalid (the message and ``field`` name it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from router.errors import (
    BatchTooLarge,
    BodyTooLarge,
    InvalidField,
    MalformedBody,
    UnsupportedMediaType,
)
from switchboard import receipts, streams, untrusted
from switchboard.closecodes import Close
from switchboard.store import Target

BodyFormat = Literal["json", "msgpack"]

JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
# Older spellings clients still send; we answer with the registered application/msgpack.
MSGPACK_TYPES = frozenset({MSGPACK_TYPE, "application/x-msgpack", "application/vnd.msgpack"})

TARGETS = ("user", "channel", "broadcast")
PUBLISH_FIELDS = frozenset({*TARGETS, "data", "idempotency_key", "receipt"})
MAX_IDEMPOTENCY_KEY = 128

DISCONNECT_DEFAULT_CODE = int(Close.DISCONNECTED)
MAX_REASON_CHARS = 120
# RFC 6455 5.5: a control frame carries at most 125 bytes, two of them the close code.
MAX_REASON_BYTES = 123

USER_RULE = "1..128 characters, none of them whitespace, control characters, ',', ':', '{' or '}'"
CHANNEL_RULE = "1..64 characters from A-Z a-z 0-9 _ -"


@dataclass(frozen=True, slots=True)
class PublishRequest:
    target: Target
    data: Any
    idempotency_key: str | None = None
    receipt_ms: int | None = None  # a receipt deadline (docs/receipts.md)


@dataclass(frozen=True, slots=True)
class DisconnectRequest:
    code: int = DISCONNECT_DEFAULT_CODE
    reason: str = ""


# -- headers ----------------------------------------------------------------------------------


def media_type(header: str | None) -> str:
    """``Application/JSON; charset=utf-8`` -> ``application/json``; empty when absent."""
    return (header or "").split(";", 1)[0].strip().lower()


def body_format(content_type: str | None) -> BodyFormat:
    kind = media_type(content_type)
    if kind == JSON_TYPE or (kind.startswith("application/") and kind.endswith("+json")):
        return "json"
    if kind in MSGPACK_TYPES:
        return "msgpack"
    shown = f"'{kind}'" if kind else "no Content-Type"
    raise UnsupportedMediaType(
        f"{shown} is not supported; send {JSON_TYPE} or {MSGPACK_TYPE}"
    )


def wants_msgpack(accept: str | None) -> bool:
    """True when ``Accept`` names msgpack (with a non-zero q) and prefers it over JSON."""
    best: dict[str, float] = {}
    for part in (accept or "").split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = kind.lower()
        fmt = "msgpack" if kind in MSGPACK_TYPES else "json" if kind == JSON_TYPE else ""
        if fmt and q > 0:
            best[fmt] = max(best.get(fmt, 0.0), q)
    return "msgpack" in best and best["msgpack"] >= best.get("json", 0.0)


def check_declared_length(header: str | None, limit: int) -> None:
    """Refuse a body by its ``Content-Length`` before reading any of it."""
    if header is None:
        return
    text = header.strip()
    if not text.isdigit():
        raise MalformedBody("Content-Length is not a non-negative integer")
    if int(text) > limit:
        raise BodyTooLarge(f"the body is {int(text)} bytes; the limit is {limit}")


# -- bodies -----------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 6); browsers could not parse them back.
    raise ValueError(f"{name} is not valid JSON")


def decode_body(raw: bytes, fmt: BodyFormat) -> dict[str, Any]:
    """Decode a request body that must be an object; anything else is a 400."""
    try:
        if fmt == "json":
            value = json.loads(raw, parse_constant=_refuse_constant)
        else:
            value = msgpack.unpackb(raw, raw=False)
    except RecursionError:
        raise MalformedBody("the body is nested too deeply") from None
    except Exception as exc:  # json and msgpack raise several unrelated types
        raise MalformedBody(f"the body is not valid {fmt}: {_first_line(exc)}") from None
    if not isinstance(value, dict):
        raise MalformedBody(f"the body must be a {fmt} object, not {_kind(value)}")
    return value


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# -- publish ----------------------------------------------------------------------------------


def parse_publish(doc: dict[str, Any]) -> PublishRequest:
    """Validate one message: exactly one target, ``data`` present, a sane idempotency key."""
    for name in doc:
        if name not in PUBLISH_FIELDS:
            raise InvalidField(
                f"unknown field {str(name)[:64]!r}; expected user, channel or broadcast, "
                "data and optionally idempotency_key and receipt",
                field=str(name)[:64],
            )
    target = _target(doc)
    if "data" not in doc:
        raise InvalidField("'data' is required (send null explicitly for no payload)",
                           field="data")
    data = doc["data"]
    _check_encodable(data)
    return PublishRequest(target, data, _idempotency_key(doc.get("idempotency_key")),
                          _receipt(doc.get("receipt"), target) if "receipt" in doc else None)


def _receipt(value: object, target: Target) -> int:
    """``{"within_ms": N}``: the deadline of a receipt, for a user target only."""
    rule = (f"'receipt' must be {{\"within_ms\": {receipts.MIN_WITHIN_MS}.."
            f"{receipts.MAX_WITHIN_MS}}}")
    if not isinstance(value, dict) or set(value) != {"within_ms"}:
        raise InvalidField(rule, field="receipt")
    within = value["within_ms"]
    if isinstance(within, bool) or not isinstance(within, int) or not (
            receipts.MIN_WITHIN_MS <= within <= receipts.MAX_WITHIN_MS):
        raise InvalidField(rule, field="receipt.within_ms")
    if target.kind != "u":
        raise InvalidField("a receipt is for a message to a user (acks are per user stream)",
                           field="receipt")
    return within


def _target(doc: dict[str, Any]) -> Target:
    given = [name for name in TARGETS if name in doc]
    if not given:
        raise InvalidField("a target is required: one of 'user', 'channel' or 'broadcast'")
    if len(given) > 1:
        names = " and ".join(f"'{n}'" for n in given)
        raise InvalidField(f"exactly one target is allowed, got {names}", field=given[1])
    name = given[0]
    value = doc[name]
    if name == "user":
        if not streams.valid_user(value):
            raise InvalidField(f"'user' must be a string of {USER_RULE}", field="user")
        return Target("u", value)
    if name == "channel":
        if not streams.valid_channel(value):
            raise InvalidField(f"'channel' must be a string of {CHANNEL_RULE}", field="channel")
        return Target("c", value)
    if value is not True:
        raise InvalidField("'broadcast' must be true", field="broadcast")
    return Target("b")


IDEMPOTENCY_KEY_RE = re.compile(r"[\x20-\x7e]{1,128}")


def _idempotency_key(value: object) -> str | None:
    if value is None:
        return None
    # Printable ASCII: a rule the OpenAPI document can state exactly (IDEMPOTENCY_KEY_RE).
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise InvalidField(
            f"'idempotency_key' must be 1..{MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            field="idempotency_key",
        )
    return value


def _check_encodable(data: Any) -> None:
    """Refuse payloads the envelope cannot carry, before anything reaches Redis."""
    try:
        msgpack.packb(data, use_bin_type=True)
    except OverflowError:
        raise InvalidField("'data' holds an integer outside the 64-bit range",
                           field="data") from None
    except (ValueError, TypeError) as exc:
        raise InvalidField(f"'data' cannot be encoded: {_first_line(exc)}", field="data") from None
    _check_finite(data)


def _check_finite(data: Any) -> None:
    # msgpack bodies can carry NaN; gateways could not send it to JSON clients.
    if not untrusted.finite(data):
        raise InvalidField("'data' holds NaN or Infinity, which JSON clients cannot read",
                           field="data")


def parse_batch(doc: dict[str, Any], max_batch: int) -> list[PublishRequest]:
    """Validate every message first; one invalid message rejects the whole batch (422)."""
    for name in doc:
        if name != "messages":
            raise InvalidField(f"unknown field {str(name)[:64]!r}; expected 'messages'",
                               field=str(name)[:64])
    messages = doc.get("messages")
    if not isinstance(messages, list):
        raise InvalidField("'messages' must be an array of publish requests", field="messages")
    if not messages:
        raise InvalidField("'messages' must not be empty", field="messages")
    if len(messages) > max_batch:
        raise BatchTooLarge(
            f"'messages' holds {len(messages)} messages; the limit is {max_batch}",
            field="messages",
        )
    result: list[PublishRequest] = []
    for index, item in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise InvalidField(f"{where} must be an object, not {_kind(item)}",
                               field=where, index=index)
        try:
            result.append(parse_publish(item))
        except InvalidField as exc:
            field = f"{where}.{exc.field}" if exc.field else where
            raise InvalidField(f"{where}: {exc.message}", field=field, index=index) from None
        if "receipt" in item:
            # One message's full receipts (429) must not leave the batch half answered.
            raise InvalidField(f"{where}: a receipt is for POST /v1/publish only, not a batch",
                               field=f"{where}.receipt", index=index)
    return result


# -- users ------------------------------------------------------------------------------------


# Gateway ids the router API can name (the defaults are gw-RANDOM; Kubernetes pod names fit).
GATEWAY_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def parse_gateway_id(value: str) -> str:
    if GATEWAY_ID_RE.fullmatch(value) is None:
        raise InvalidField("'gateway_id' must match [A-Za-z0-9_.:-]{1,128}", field="gateway_id")
    return value


def parse_user(value: str) -> str:
    if not streams.valid_user(value):
        raise InvalidField(f"'user' must be {USER_RULE}", field="user")
    return value


def parse_channel(value: str) -> str:
    if not streams.valid_channel(value):
        raise InvalidField("'channel' must match [A-Za-z0-9_-]{1,64}", field="channel")
    return value


def parse_disconnect(doc: dict[str, Any] | None) -> DisconnectRequest:
    """An optional body ``{"code": 4201, "reason": "..."}``; absent means 4201 and no reason."""
    if doc is None:
        return DisconnectRequest()
    for name in doc:
        if name not in ("code", "reason"):
            raise InvalidField(f"unknown field {str(name)[:64]!r}; expected 'code' or 'reason'",
                               field=str(name)[:64])
    code = doc.get("code", DISCONNECT_DEFAULT_CODE)
    if isinstance(code, float) and code.is_integer():
        code = int(code)  # JSON Schema's "integer" includes 4201.0
    if not isinstance(code, int) or isinstance(code, bool) or not disconnect_code_allowed(code):
        raise InvalidField(
            "'code' must be an integer in 4200..4299 (reconnect) or 4000..4099 (terminal)",
            field="code",
        )
    reason = doc.get("reason", "")
    if (
        not isinstance(reason, str)
        or len(reason) > MAX_REASON_CHARS
        or not reason.isprintable()  # first: a lone surrogate is not, and cannot be encoded
        or len(reason.encode()) > MAX_REASON_BYTES
    ):
        raise InvalidField(
            f"'reason' must be a printable string of at most {MAX_REASON_CHARS} characters "
            f"and {MAX_REASON_BYTES} UTF-8 bytes (it travels in a WebSocket close frame)",
            field="reason",
        )
    return DisconnectRequest(code, reason)


def disconnect_code_allowed(code: int) -> bool:
    """Codes the router API may close with: terminal 4000-4099 or reconnect 4200-4299."""
    return 4000 <= code <= 4099 or 4200 <= code <= 4299


# -- history ----------------------------------------------------------------------------------

MAX_PAGE = 1000  # messages per page of the history API
DEFAULT_PAGE = 100
MAX_OFFSET_DIGITS = 18  # as in a client's cursor (switchboard.streams.parse_cursor)
# A position in one stream, as in a client's cursor entries without the stream name.
SINCE_RE = re.compile(rf"{streams.EPOCH_RE.pattern}:[0-9]{{1,{MAX_OFFSET_DIGITS}}}")
SINCE_RULE = "EPOCH:OFFSET (1..32 letters or digits, ':', 1..18 digits)"


def parse_since(value: str) -> streams.Position:
    """``since`` of a history read: a position ``EPOCH:OFFSET`` (a client's cursor entry
    ``STREAM:EPOCH:OFFSET`` without its stream, or a page's ``next``)."""
    if SINCE_RE.fullmatch(value) is None:
        raise InvalidField(f"'since' must be {SINCE_RULE}", field="since")
    epoch, _, offset = value.partition(":")
    return streams.Position(epoch, int(offset))
