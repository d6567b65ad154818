"""The proxy's pure decisions: signatures, the circuit breaker, what an answer means."""

from __future__ import annotations

import hashlib
import hmac
import json
import math

import orjson
import pytest

from gateway import proxyrules
from gateway.proxyrules import (
    Allowed,
    BadAnswer,
    Breaker,
    ConnectGrant,
    Denied,
    ProxyClaims,
    Refreshed,
)
from switchboard.auth import Claims

SECRET = b"proxy-secret"


# -- signing ----------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"event":"connect"}'
    header = proxyrules.sign(SECRET, 1700000000, body)
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert proxyrules.verify(SECRET, header, body, now=1700000010)


def test_a_tampered_body_an_other_secret_or_an_old_timestamp_do_not_verify() -> None:
    body = b'{"event":"publish","data":1}'
    header = proxyrules.sign(SECRET, 1700000000, body)
    assert not proxyrules.verify(SECRET, header, body.replace(b"1", b"2"), now=1700000000)
    assert not proxyrules.verify(b"other", header, body, now=1700000000)
    assert not proxyrules.verify(SECRET, header, body, now=1700000000 + 301)
    assert not proxyrules.verify(SECRET, "garbage", body, now=1700000000)
    assert not proxyrules.verify(SECRET, "t=x,v1=00", body, now=1700000000)


def test_a_non_ascii_or_malformed_signature_is_refused_not_an_error() -> None:
    body = b'{"event":"connect"}'
    good = proxyrules.sign(SECRET, 1700000000, body)
    mac = good.rpartition("v1=")[2]
    for header in ("t=1700000000,v1=\u00e9" + mac[1:], "t=1700000000,v1=\u00e9",
                   "t=\u0661\u0667,v1=" + mac, "t=1700000000,v1=" + mac.upper(),
                   "t=1700000000,v1=" + mac + "0"):
        assert not proxyrules.verify(SECRET, header, body, now=1700000000)
    assert proxyrules.verify(SECRET, "t=1700000000,v1=\u00e9,v1=" + mac, body,
                             now=1700000000)


def test_request_bodies_encode_whatever_a_client_sent() -> None:
    # a lone surrogate (JSON text can spell one), binary data of a msgpack client, big ints
    body = {"data": ["\ud800", b"\x00\xff", 2**70]}
    decoded = json.loads(proxyrules.encode(body))
    assert decoded["data"][0] == "\ud800"
    assert decoded["data"][1] == "AP8="
    assert decoded["data"][2] == 2**70


def test_what_no_json_encoder_can_write_is_a_value_error() -> None:
    deep: object = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError):
        proxyrules.encode({"data": deep})


def test_connect_body_leaves_out_the_token() -> None:
    claims = Claims(user="alice", expires=1e9, channels=("a*",))
    body = proxyrules.connect_body(
        gateway="gw", transport="ws", remote_addr="127.0.0.1", origin=None,
        user_agent="ua", headers={"cookie": "sid=1"},
        params={"token": "secret.jwt.here", "channels": "a"}, claims=claims)
    assert body["params"] == {"channels": "a"}
    assert body["claims"] == {"user": "alice", "exp": 1000000000, "channels": ["a*"],
                              "publish": [], "presence": []}
    assert body["headers"] == {"cookie": "sid=1"}


def test_forwarded_headers_are_the_allow_listed_ones_present() -> None:
    headers = {"Cookie": "sid=1", "X-Other": "no"}
    got = proxyrules.forwarded_headers(("Cookie", "X-Forwarded-For"), headers.get)
    assert got == {"cookie": "sid=1"}


# -- breaker ----------------------------------------------------------------------------------


def test_breaker_opens_after_n_consecutive_failures_and_refuses_during_the_cooldown() -> None:
    b = Breaker(failures=3, cooldown=5.0)
    for t in range(2):
        ticket = b.allow(t)
        assert ticket is not None
        b.failure(ticket, t)
    ticket = b.allow(2.0)
    assert ticket is not None
    b.success(ticket)  # a success resets the count
    for t in range(3):
        ticket = b.allow(t)
        assert ticket is not None
        b.failure(ticket, t)
    assert b.is_open
    assert b.allow(3.0) is None
    assert b.allow(6.9) is None


def test_after_the_cooldown_one_probe_goes_through_and_decides() -> None:
    b = Breaker(failures=1, cooldown=5.0)
    first = b.allow(0.0)
    assert first is not None
    b.failure(first, 0.0)
    probe = b.allow(5.0)
    assert probe is not None and probe.probe
    assert b.allow(5.1) is None  # others wait for it
    b.failure(probe, 5.5)  # the probe failed: open again for a whole cool-down
    assert b.allow(10.0) is None
    probe = b.allow(10.5)
    assert probe is not None
    b.success(probe)
    assert not b.is_open
    assert b.allow(10.6) and b.allow(10.7)


def test_a_cancelled_probe_lets_another_one_through() -> None:
    b = Breaker(failures=1, cooldown=1.0)
    first = b.allow(0.0)
    assert first is not None
    b.failure(first, 0.0)
    probe = b.allow(2.0)
    assert probe is not None
    b.release(probe)
    assert b.allow(2.1) is not None


def test_only_the_probe_decides_the_half_open_state() -> None:
    # Calls started while the breaker was closed end while the probe is out: a cancelled
    # one must not let a second probe through, and late outcomes must not decide.
    b = Breaker(failures=1, cooldown=1.0)
    old = [b.allow(0.0) for _ in range(4)]
    assert all(t is not None for t in old)
    first, cancelled, late_ok, late_fail = old
    assert first and cancelled and late_ok and late_fail
    b.failure(first, 0.0)
    assert b.is_open
    probe = b.allow(2.0)
    assert probe is not None
    b.release(cancelled)
    assert b.allow(2.1) is None  # still one probe out
    b.success(late_ok)
    assert b.is_open  # an old call's success does not close it
    b.failure(late_fail, 2.2)
    assert b.allow(2.3) is None and b.opened_at == 0.0  # nor does its failure reopen it
    b.success(probe)
    assert not b.is_open
    b.failure(late_fail, 2.4)  # and once closed, an old failure does not count
    assert b.failures == 0


# -- answers ----------------------------------------------------------------------------------


def answer(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_connect_grant_widens_the_token_claims() -> None:
    grant = proxyrules.parse_connect(answer(
        allow=True, channels=["room-*"], publish=["room-1"], join=["news"],
        info={"name": "Alice"}, expire_at=2000000000, presence=["room-*"]))
    assert isinstance(grant, ConnectGrant)
    token = Claims(user="alice", expires=1e9, channels=("a",), publish=(), presence=("a",))
    claims = grant.claims(token)
    assert isinstance(claims, ProxyClaims)
    assert claims.user == "alice"
    assert claims.channels == ("a", "room-*")
    assert claims.publish == ("room-1",)
    assert claims.presence == ("a", "room-*")
    assert claims.expires == 2000000000
    assert claims.info == {"name": "Alice"}
    assert grant.join == ("news",)


def test_a_token_less_connect_needs_the_backend_to_name_the_user() -> None:
    grant = proxyrules.parse_connect(answer(allow=True))
    assert isinstance(grant, ConnectGrant)
    with pytest.raises(BadAnswer):
        grant.claims(None)
    named = proxyrules.parse_connect(answer(allow=True, user="bob"))
    assert isinstance(named, ConnectGrant)
    claims = named.claims(None)
    assert claims.user == "bob" and math.isinf(claims.expires) and claims.channels == ()


def test_connect_refusals_carry_a_reason_and_401_or_403() -> None:
    assert proxyrules.parse_connect(answer(allow=False, reason="banned")) == Denied(
        "banned", 403)
    assert proxyrules.parse_connect(answer(allow=False, status=401)) == Denied("", 401)
    with pytest.raises(BadAnswer):
        proxyrules.parse_connect(answer(allow=False, status=200))


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b'"yes"', b"{}", answer(allow="yes"), answer(allow=1),
    answer(allow=True, user=""), answer(allow=True, user="a b"), answer(allow=True, user=5),
    answer(allow=True, join=["bad name"]), answer(allow=True, join="news"),
    answer(allow=True, channels=[1]), answer(allow=True, info=[1]),
    answer(allow=True, expire_at="soon"), answer(allow=True, expire_at=True),
    answer(allow=False, reason=5), answer(allow=True, presence=True),
    answer(allow=True, presence=[""]),
    b'{"allow": true, "pad": "' + b"x" * proxyrules.MAX_ANSWER_BYTES + b'"}',
])
def test_malformed_connect_answers_are_bad_answers(body: bytes) -> None:
    with pytest.raises(BadAnswer):
        proxyrules.parse_connect(body)


def nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = {"k": value}
    return value


def granted_info(event: str, answer: bytes) -> object:
    if event == "refresh":
        return proxyrules.parse_refresh(answer.replace(b"{", b'{"expire_at": 9, ', 1))
    return proxyrules.parse_connect(answer)


@pytest.mark.parametrize("event", ["connect", "refresh"])
def test_an_info_later_calls_could_not_encode_is_a_bad_answer(event: str) -> None:
    # ~1000 levels parse (orjson reads up to 1024) but no encoder writes them back into a
    # body: every later call about the connection would fail before reaching the backend.
    deep = b'{"allow": true, "user": "u", "info": ' + b'{"k":' * 1000 + b"1" + b"}" * 1001
    assert isinstance(orjson.loads(deep), dict)  # it does parse
    assert len(deep) < proxyrules.MAX_ANSWER_BYTES
    with pytest.raises(BadAnswer):
        granted_info(event, deep)
    too_deep = {"allow": True, "user": "u", "info": nested(proxyrules.MAX_INFO_DEPTH + 1)}
    with pytest.raises(BadAnswer):
        granted_info(event, json.dumps(too_deep).encode())
    fine = {"allow": True, "user": "u", "info": nested(proxyrules.MAX_INFO_DEPTH)}
    info = getattr(granted_info(event, json.dumps(fine).encode()), "info", None)
    assert isinstance(info, dict)
    claims = ProxyClaims(user="u", expires=math.inf, info=info)
    proxyrules.encode(proxyrules.connection_body(
        "subscribe", gateway="gw", claims=claims, conn_id="c", session="s", channel="x"))


def test_subscribe_and_publish_verdicts() -> None:
    assert proxyrules.parse_subscribe(answer(allow=True)) == Allowed()
    assert proxyrules.parse_subscribe(answer(allow=True, presence=True)) == Allowed(
        presence=True)
    assert proxyrules.parse_subscribe(answer(allow=True, presence=False)) == Allowed(
        presence=False)
    for bad in ("yes", 1, ["room"]):
        with pytest.raises(BadAnswer):
            proxyrules.parse_subscribe(answer(allow=True, presence=bad))
    assert proxyrules.parse_subscribe(answer(allow=False, reason="members only")) == Denied(
        "members only")
    assert proxyrules.parse_publish(answer(allow=True)) == Allowed()
    rewritten = proxyrules.parse_publish(answer(allow=True, data={"text": "***"}))
    assert rewritten == Allowed(rewritten=True, data={"text": "***"})
    assert proxyrules.parse_publish(answer(allow=True, data=None)) == Allowed(True, None)
    long = proxyrules.parse_subscribe(answer(allow=False, reason="x" * 1000))
    assert isinstance(long, Denied) and len(long.reason) == proxyrules.MAX_REASON
    with pytest.raises(BadAnswer):
        proxyrules.parse_publish(b'{"allow": null}')


def test_refresh_extends_and_may_replace_claims_and_info() -> None:
    old = ProxyClaims(user="alice", expires=100.0, channels=("a",), publish=("a",),
                      info={"v": 1})
    kept = proxyrules.parse_refresh(answer(allow=True, expire_at=200))
    assert isinstance(kept, Refreshed)
    assert kept.claims(old) == ProxyClaims(user="alice", expires=200.0, channels=("a",),
                                           publish=("a",), info={"v": 1})
    changed = proxyrules.parse_refresh(answer(allow=True, expire_at=300, channels=[],
                                              info={"v": 2}))
    assert isinstance(changed, Refreshed)
    new = changed.claims(Claims(user="alice", expires=100.0, channels=("a",)))
    assert new.channels == () and new.info == {"v": 2} and new.expires == 300.0
    watching = proxyrules.parse_refresh(answer(allow=True, expire_at=300, presence=["b"]))
    assert isinstance(watching, Refreshed)
    assert watching.claims(old).presence == ("b",)
    assert kept.claims(Claims(user="a", expires=1.0, presence=("c",))).presence == ("c",)
    assert proxyrules.parse_refresh(answer(allow=False, reason="logged out")) == Denied(
        "logged out", 401)
    with pytest.raises(BadAnswer):
        proxyrules.parse_refresh(answer(allow=True))  # expire_at is required


def test_refresh_is_asked_ahead_of_expiry() -> None:
    assert proxyrules.refresh_lead(0.1) == 1.0
    assert proxyrules.refresh_lead(2.0) == 6.0


def test_the_verification_snippet_in_the_operations_doc_accepts_our_signatures() -> None:
    import re
    import time
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    section = doc.split("### Verifying the signature", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)
    assert snippet is not None
    namespace: dict[str, object] = {}
    exec(snippet.group(1), namespace)
    verify = namespace["verify"]
    assert callable(verify)
    body = b'{"event":"subscribe","channel":"room"}'
    header = proxyrules.sign(SECRET, int(time.time()), body)
    assert verify(SECRET, header, body)
    assert not verify(SECRET, header, body + b" ")
    assert not verify(b"other", header, body)
    assert not verify(SECRET, proxyrules.sign(SECRET, int(time.time()) - 3600, body), body)
    mac = header.rpartition("v1=")[2]
    t = header.split(",")[0]
    for forged in (f"{t},v1=\u00e9{mac[1:]}", f"{t},v1=\u00e9", "t=\u0661,v1=" + mac,
                   f"{t},v1={mac.upper()}", t, "v1=" + mac, ""):
        assert verify(SECRET, forged, body) is False  # refused, never a TypeError
