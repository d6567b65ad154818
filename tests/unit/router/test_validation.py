"""Router request parsing and validation, without a server or Redis."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from router import errors, models, validation
from router.validation import (
    DisconnectRequest,
    PublishRequest,
    body_format,
    check_declared_length,
    decode_body,
    parse_batch,
    parse_disconnect,
    parse_publish,
    parse_user,
    wants_msgpack,
)
from switchboard.store import Target


def invalid(exc: pytest.ExceptionInfo[errors.ApiError]) -> tuple[int, str | None, str]:
    return exc.value.status, exc.value.field, exc.value.message


# -- media types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("application/json", "json"),
        ("Application/JSON; charset=utf-8", "json"),
        ("application/merge-patch+json", "json"),
        ("application/msgpack", "msgpack"),
        ("application/x-msgpack", "msgpack"),
        ("application/vnd.msgpack", "msgpack"),
    ],
)
def test_body_format_accepts_json_and_msgpack(header: str, expected: str) -> None:
    assert body_format(header) == expected


@pytest.mark.parametrize("header", [None, "", "text/plain", "application/x-www-form-urlencoded"])
def test_body_format_refuses_other_types_with_415(header: str | None) -> None:
    with pytest.raises(errors.UnsupportedMediaType) as exc:
        body_format(header)
    assert exc.value.status == 415
    assert "application/msgpack" in exc.value.message


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("application/msgpack", True),
        ("application/x-msgpack", True),
        ("application/json, application/msgpack", True),
        ("application/json;q=1, application/msgpack;q=0.5", False),
        ("application/msgpack;q=0", False),
        ("application/msgpack;q=nonsense", False),
    ],
)
def test_wants_msgpack_follows_accept(accept: str | None, expected: bool) -> None:
    assert wants_msgpack(accept) is expected


def test_declared_length_over_the_limit_is_413_before_reading() -> None:
    check_declared_length(None, 10)
    check_declared_length("10", 10)
    with pytest.raises(errors.BodyTooLarge) as exc:
        check_declared_length("11", 10)
    assert exc.value.status == 413


@pytest.mark.parametrize("header", ["-1", "ten", "1e3", ""])
def test_declared_length_that_is_not_a_number_is_400(header: str) -> None:
    with pytest.raises(errors.MalformedBody):
        check_declared_length(header, 10)


# -- decoding ---------------------------------------------------------------------------------


def test_decode_body_reads_json_and_msgpack_objects() -> None:
    doc = {"broadcast": True, "data": [1, "two", None]}
    assert decode_body(json.dumps(doc).encode(), "json") == doc
    assert decode_body(msgpack.packb(doc), "msgpack") == doc


@pytest.mark.parametrize(
    ("raw", "fmt"),
    [
        (b"{", "json"),
        (b"", "json"),
        (b'{"data": NaN, "broadcast": true}', "json"),
        (b'{"a": 1} trailing', "json"),
        (b"\xff\xfe", "json"),
        (b"\xc1", "msgpack"),
        (msgpack.packb({"a": 1}) + b"\x01", "msgpack"),
        (b"", "msgpack"),
        (b"[" * 100_000 + b"]" * 100_000, "json"),
    ],
)
def test_undecodable_bodies_are_400(raw: bytes, fmt: validation.BodyFormat) -> None:
    with pytest.raises(errors.MalformedBody) as exc:
        decode_body(raw, fmt)
    assert exc.value.status == 400
    assert exc.value.code == "malformed_body"


@pytest.mark.parametrize("value", [[], "text", 3, None, True])
def test_a_body_that_is_not_an_object_is_400(value: Any) -> None:
    with pytest.raises(errors.MalformedBody, match="must be a json object"):
        decode_body(json.dumps(value).encode(), "json")
    with pytest.raises(errors.MalformedBody, match="must be a msgpack object"):
        decode_body(msgpack.packb(value), "msgpack")


# -- publish ----------------------------------------------------------------------------------


def test_each_target_kind_is_parsed() -> None:
    assert parse_publish({"user": "alice", "data": 1}) == PublishRequest(Target("u", "alice"), 1)
    assert parse_publish({"channel": "news", "data": "x"}) == PublishRequest(
        Target("c", "news"), "x"
    )
    assert parse_publish({"broadcast": True, "data": {}}) == PublishRequest(Target("b"), {})


def test_explicit_null_data_is_a_message() -> None:
    assert parse_publish({"broadcast": True, "data": None}).data is None


def test_idempotency_key_is_kept_and_null_means_none() -> None:
    req = parse_publish({"broadcast": True, "data": 1, "idempotency_key": "order-17"})
    assert req.idempotency_key == "order-17"
    assert parse_publish({"broadcast": True, "data": 1, "idempotency_key": None}) == (
        PublishRequest(Target("b"), 1)
    )


def test_a_missing_target_is_422_naming_the_target_fields() -> None:
    with pytest.raises(errors.InvalidField) as exc:
        parse_publish({"data": 1})
    status, _, message = invalid(exc)
    assert status == 422
    assert all(name in message for name in ("'user'", "'channel'", "'broadcast'"))


@pytest.mark.parametrize(
    "doc",
    [
        {"user": "a", "channel": "b", "data": 1},
        {"user": "a", "broadcast": True, "data": 1},
        {"channel": "b", "broadcast": True, "data": 1},
    ],
)
def test_two_targets_are_422_naming_both(doc: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidField) as exc:
        parse_publish(doc)
    given = [name for name in ("user", "channel", "broadcast") if name in doc]
    assert all(f"'{name}'" in exc.value.message for name in given)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"user": "", "data": 1}, "user"),
        ({"user": "a b", "data": 1}, "user"),
        ({"user": "a:b", "data": 1}, "user"),
        ({"user": "x" * 129, "data": 1}, "user"),
        ({"user": 7, "data": 1}, "user"),
        ({"user": None, "data": 1}, "user"),
        ({"channel": "a.b", "data": 1}, "channel"),
        ({"channel": "x" * 65, "data": 1}, "channel"),
        ({"channel": ["news"], "data": 1}, "channel"),
        ({"broadcast": False, "data": 1}, "broadcast"),
        ({"broadcast": "yes", "data": 1}, "broadcast"),
        ({"broadcast": True}, "data"),
        ({"broadcast": True, "data": 1, "idempotency_key": ""}, "idempotency_key"),
        ({"broadcast": True, "data": 1, "idempotency_key": "k" * 129}, "idempotency_key"),
        ({"broadcast": True, "data": 1, "idempotency_key": "a\nb"}, "idempotency_key"),
        ({"broadcast": True, "data": 1, "idempotency_key": 5}, "idempotency_key"),
        ({"broadcast": True, "data": 2**64}, "data"),
        ({"broadcast": True, "data": {"x": [float("nan")]}}, "data"),
        ({"broadcast": True, "data": 1, "chanel": "typo"}, "chanel"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidField) as exc:
        parse_publish(doc)
    status, got_field, message = invalid(exc)
    assert status == 422
    assert got_field == field
    assert f"'{field}'" in message


def test_the_longest_names_and_keys_are_accepted() -> None:
    assert parse_publish({"user": "u" * 128, "data": 1}).target == Target("u", "u" * 128)
    assert parse_publish({"channel": "c" * 64, "data": 1}).target == Target("c", "c" * 64)
    req = parse_publish({"broadcast": True, "data": 1, "idempotency_key": "k" * 128})
    assert req.idempotency_key == "k" * 128


def test_error_bodies_carry_code_message_and_field() -> None:
    with pytest.raises(errors.InvalidField) as exc:
        parse_publish({"broadcast": True})
    assert exc.value.body() == {
        "error": "invalid",
        "message": exc.value.message,
        "field": "data",
    }


# -- batch ------------------------------------------------------------------------------------


def test_batch_keeps_the_order_of_messages() -> None:
    reqs = parse_batch(
        {"messages": [{"user": "a", "data": 1}, {"broadcast": True, "data": 2}]}, max_batch=10
    )
    assert [r.target for r in reqs] == [Target("u", "a"), Target("b")]


def test_one_invalid_message_rejects_the_batch_naming_its_index() -> None:
    doc = {"messages": [{"broadcast": True, "data": 1}, {"broadcast": True}]}
    with pytest.raises(errors.InvalidField) as exc:
        parse_batch(doc, max_batch=10)
    assert exc.value.index == 1
    assert exc.value.field == "messages[1].data"
    assert exc.value.message.startswith("messages[1]: ")


def test_a_batch_item_that_is_not_an_object_is_422() -> None:
    with pytest.raises(errors.InvalidField) as exc:
        parse_batch({"messages": [{"broadcast": True, "data": 1}, 3]}, max_batch=10)
    assert exc.value.index == 1


@pytest.mark.parametrize(
    "doc", [{}, {"messages": {}}, {"messages": []}, {"messages": [], "extra": 1}]
)
def test_a_batch_without_messages_is_422(doc: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidField):
        parse_batch(doc, max_batch=10)


def test_a_batch_over_max_batch_is_413() -> None:
    doc = {"messages": [{"broadcast": True, "data": i} for i in range(3)]}
    assert len(parse_batch(doc, max_batch=3)) == 3
    with pytest.raises(errors.BatchTooLarge) as exc:
        parse_batch(doc, max_batch=2)
    assert exc.value.status == 413


# -- users ------------------------------------------------------------------------------------


def test_user_path_parameter_is_validated() -> None:
    assert parse_user("team/alice") == "team/alice"
    with pytest.raises(errors.InvalidField) as exc:
        parse_user("a b")
    assert exc.value.field == "user"


def test_disconnect_defaults_to_4201_without_a_body() -> None:
    assert parse_disconnect(None) == DisconnectRequest(4201, "")
    assert parse_disconnect({}) == DisconnectRequest(4201, "")


@pytest.mark.parametrize("code", [4000, 4099, 4200, 4299])
def test_disconnect_accepts_terminal_and_reconnect_codes(code: int) -> None:
    assert parse_disconnect({"code": code, "reason": "bye"}) == DisconnectRequest(code, "bye")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"code": 1000}, "code"),
        ({"code": 4108}, "code"),
        ({"code": 4300}, "code"),
        ({"code": "4201"}, "code"),
        ({"code": True}, "code"),
        ({"reason": "r" * 121}, "reason"),
        ({"reason": "é" * 62}, "reason"),  # 62 characters, but 124 UTF-8 bytes
        ({"reason": 5}, "reason"),
        ({"reason": "line\nbreak"}, "reason"),
        ({"reason": "\ud800"}, "reason"),  # JSON can spell it; UTF-8 cannot carry it
        ({"cod": 4201}, "cod"),
    ],
)
def test_invalid_disconnect_bodies_are_422(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidField) as exc:
        parse_disconnect(doc)
    assert exc.value.field == field
    assert f"'{field}'" in exc.value.message


# -- the OpenAPI models describe what is validated ---------------------------------------------


def test_documented_publish_fields_are_the_validated_ones() -> None:
    assert set(models.PublishRequest.model_fields) == validation.PUBLISH_FIELDS
    assert set(models.DisconnectRequest.model_fields) == {"code", "reason"}
    assert set(models.BatchRequest.model_fields) == {"messages"}


def test_component_schemas_cover_every_decoded_body() -> None:
    schemas = models.component_schemas()
    assert {"PublishRequest", "BatchRequest", "DisconnectRequest"} <= set(schemas)
    assert "$defs" not in json.dumps(schemas)
