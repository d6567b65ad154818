"""Token algorithms and API keys: the gateway pins its JWT algorithm, the router its keys.

A gateway configured with an RS256 public key (inline PEM text, or ``@path``) must accept
only RS256 tokens signed by the matching private key, whatever the token's header claims:
``alg: none``, HS256 signed with the public key PEM as the HMAC secret (the classic HS/RS
confusion), ES256 and tokens without ``sub`` or ``exp`` are all refused with 401, in the
query string and in the ``Authorization: Bearer`` header alike.

The router compares API keys with :func:`hmac.compare_digest` against every configured key
without stopping early; that is checked by reading the code and by counting the comparisons,
and a key one character off is refused.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import inspect
import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from router import auth as router_auth
from tests.clients import WsClient
from tests.support import API_KEY, Proc, RedisServer, start_gateway, start_router

integration = pytest.mark.integration


# -- keys and tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    rsa_private: rsa.RSAPrivateKey
    rsa_public_pem: str
    other_rsa_private: rsa.RSAPrivateKey  # same algorithm, not the gateway's key
    ec_private: ec.EllipticCurvePrivateKey


def make_keys() -> Keys:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return Keys(
        rsa_private=private,
        rsa_public_pem=pem,
        other_rsa_private=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_private=ec.generate_private_key(ec.SECP256R1()),
    )


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(user: str, *, sub: bool = True, exp: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sub:
        out["sub"] = user
    if exp:
        out["exp"] = int(time.time()) + 600
    return out


def hs256_with_public_key(payload: dict[str, Any], public_pem: str) -> str:
    """HS256 signed with the RS256 public key's PEM text as the HMAC secret.

    PyJWT refuses to build this (it will not use a PEM as an HMAC secret), so it is signed by
    hand: exactly what an attacker who only has the public key would send.
    """
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    signing_input = f"{header}.{body}".encode()
    signature = hmac.new(public_pem.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


def bad_tokens(keys: Keys) -> dict[str, str]:
    """Every token the gateway must refuse, by name."""
    good_claims = claims("mallory")
    unsigned = jwt.encode(good_claims, None, algorithm="none")
    # `alg: none` with a signature part that is not empty, and with the alg in other cases
    header_none_upper = b64url(json.dumps({"alg": "NONE", "typ": "JWT"}).encode())
    body = b64url(json.dumps(good_claims).encode())
    return {
        "alg none": unsigned,
        "alg NONE": f"{header_none_upper}.{body}.",
        "alg none with signature": unsigned + "c2lnbmF0dXJl",
        "HS256 signed with the public key PEM": hs256_with_public_key(
            good_claims, keys.rsa_public_pem),
        "HS256 signed with the public key PEM, no trailing newline": hs256_with_public_key(
            good_claims, keys.rsa_public_pem.rstrip("\n")),
        "ES256 (algorithm pinned to RS256)": jwt.encode(good_claims, keys.ec_private,
                                                        algorithm="ES256"),
        "RS256 by another key": jwt.encode(good_claims, keys.other_rsa_private,
                                           algorithm="RS256"),
        "RS512 by the right key (algorithm pinned to RS256)": jwt.encode(
            good_claims, keys.rsa_private, algorithm="RS512"),
        "RS256 without sub": jwt.encode(claims("mallory", sub=False), keys.rsa_private,
                                        algorithm="RS256"),
        "RS256 without exp": jwt.encode(claims("mallory", exp=False), keys.rsa_private,
                                        algorithm="RS256"),
        "RS256 expired": jwt.encode({"sub": "mallory", "exp": int(time.time()) - 30},
                                    keys.rsa_private, algorithm="RS256"),
        "RS256 with a tampered payload": tamper(jwt.encode(good_claims, keys.rsa_private,
                                                           algorithm="RS256")),
        "garbage": "not.a.jwt",
    }


def tamper(token: str) -> str:
    """Swap the payload for another user's, keeping the original signature."""
    header, _, signature = token.split(".")
    evil = b64url(json.dumps(claims("admin")).encode())
    return f"{header}.{evil}.{signature}"


# -- gateway helpers ---------------------------------------------------------------------------


async def handshake(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a WebSocket handshake (101 when it opened)."""
    try:
        async with connect(url, additional_headers=headers, open_timeout=10):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_keys()


@pytest.fixture
def rs256_gateways(redis_server: RedisServer, logdir: Path, keys: Keys,
                   tmp_path: Path) -> Iterator[dict[str, Proc]]:
    """Two RS256 gateways: public key given as PEM text, and as ``@path``."""
    key_file = tmp_path / "jwt-public.pem"
    key_file.write_text(keys.rsa_public_pem)
    started: dict[str, Proc] = {}
    try:
        for name, value in (("inline PEM", keys.rsa_public_pem), ("@path", f"@{key_file}")):
            started[name] = start_gateway(redis_server, logdir, SWITCHBOARD_JWT_SECRET="",
                                          SWITCHBOARD_JWT_PUBLIC_KEY=value)
        yield started
    finally:
        for proc in started.values():
            proc.stop()


@integration
async def test_rs256_gateway_accepts_only_rs256_tokens_of_its_key(
    rs256_gateways: dict[str, Proc], keys: Keys
) -> None:
    valid = jwt.encode(claims("alice"), keys.rsa_private, algorithm="RS256")
    refused = bad_tokens(keys)
    for how, gw in rs256_gateways.items():
        base = f"ws://127.0.0.1:{gw.port}/ws"
        # A valid RS256 token connects, in the query string and in the header.
        for where, url, headers in (
            ("query", f"{base}?token={valid}", None),
            ("header", base, {"Authorization": f"Bearer {valid}"}),
        ):
            client = await WsClient(url, additional_headers=headers or {}).start()
            try:
                assert client.welcome is not None, f"{how}/{where}: no welcome"
                assert client.welcome["user"] == "alice"
            finally:
                await client.close()
        # Everything else is refused with 401, the same way in both places.
        outcomes: dict[str, tuple[int, int]] = {}
        for name, bad in refused.items():
            outcomes[name] = (
                await handshake(f"{base}?token={bad}"),
                await handshake(base, {"Authorization": f"Bearer {bad}"}),
            )
        wrong = {name: got for name, got in outcomes.items() if got != (401, 401)}
        assert not wrong, f"{how}: expected 401 in query and header, got {wrong}"
        # The SSE endpoint verifies tokens the same way.
        sse = httpx.get(f"http://127.0.0.1:{gw.port}/sse",
                        params={"token": refused["HS256 signed with the public key PEM"]},
                        timeout=10)
        assert sse.status_code == 401 and "message" in sse.json()
        assert "Traceback" not in gw.output(), gw.output()[-3000:]


# -- router API keys ---------------------------------------------------------------------------


def test_router_compares_api_keys_with_compare_digest_over_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # By inspection: the only comparison in key_matches is hmac.compare_digest, inside a loop
    # over every key with no break/return in its body, and no ==, `in` or any() shortcut.
    source = textwrap.dedent(inspect.getsource(router_auth.key_matches))
    tree = ast.parse(source)
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef)
    loops = [n for n in ast.walk(func) if isinstance(n, ast.For)]
    assert len(loops) == 1, "key_matches should loop over the configured keys once"
    loop = loops[0]
    assert not any(isinstance(n, ast.Break | ast.Return) for n in ast.walk(loop)), \
        "the loop over keys must not stop early"
    calls = [n for n in ast.walk(loop) if isinstance(n, ast.Call)]
    assert any(isinstance(c.func, ast.Attribute) and c.func.attr == "compare_digest"
               and isinstance(c.func.value, ast.Name) and c.func.value.id == "hmac"
               for c in calls), "keys must be compared with hmac.compare_digest"
    assert not any(isinstance(n, ast.Compare) for n in ast.walk(func)), \
        "no ==/in comparison of keys (not constant time)"
    assert not any(isinstance(n, ast.BoolOp) for n in ast.walk(loop)), \
        "no short-circuit and/or inside the loop"
    assert "require_key" in inspect.getsource(router_auth)
    assert "key_matches(" in inspect.getsource(router_auth.require_key)

    # By behaviour: every configured key is compared, whichever matches (first, last, none).
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(router_auth.hmac, "compare_digest", counting)
    configured = ("key-one-0123456789", "key-two-0123456789", "key-three-0123456789")
    for presented, expected in (("key-one-0123456789", True), ("key-three-0123456789", True),
                                ("key-one-012345678X", False), ("", False)):
        compared.clear()
        assert router_auth.key_matches(presented, configured) is expected
        assert [b for _, b in compared] == [k.encode() for k in configured], presented


@integration
def test_router_refuses_keys_that_are_almost_right(redis_server: RedisServer,
                                                    logdir: Path) -> None:
    router = start_router(redis_server, logdir)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as http:
            def status(key: str | None) -> int:
                headers = {} if key is None else {"Authorization": f"Bearer {key}"}
                return http.get("/v1/cluster", headers=headers).status_code

            assert status(API_KEY) == 200
            last = API_KEY[-1]
            near_misses = [
                API_KEY[:-1] + ("x" if last != "x" else "y"),  # differs only in its last char
                API_KEY[:-1],  # a prefix
                API_KEY + "x",  # an extension
                API_KEY.upper(),
                " " + API_KEY + "x",
            ]
            for key in near_misses:
                assert status(key) == 401, key
            assert status(None) == 401
            assert http.get("/v1/cluster", headers={"Authorization": "Bearer"}).status_code == 401
            resp = http.get("/v1/cluster", headers={"Authorization": f"Basic {API_KEY}"})
            assert resp.status_code == 401
            assert resp.headers.get("www-authenticate", "").lower().startswith("bearer")
            assert resp.json()["error"] == "unauthorized"
    finally:
        router.stop()
