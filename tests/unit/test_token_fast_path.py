"""The token fast path accepts exactly what PyJWT accepts, and nothing it would refuse.

Tokens are built by hand (any header, any claims, signed with the right or a wrong secret,
tampered) and checked twice: by the fast path and by PyJWT alone. Wherever the fast path
answers, its claims are PyJWT's; wherever PyJWT refuses, the fast path has no answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.auth import TokenError, Verifier, mint

SECRET = "s3cret-for-the-fast-path-tests-" + "0123456789" * 4  # 64+ bytes: long enough for HS512


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(header: dict[str, Any], payload: Any, secret: str = SECRET, digest: Any = hashlib.sha256,
          sig: str | None = None) -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    if sig is None:
        sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), digest).digest())
    return f"{head}.{body}.{sig}"


def outcome(check: Any, tok: str) -> Any:
    try:
        return check(tok)
    except TokenError:
        return "refused"


NOW = int(time.time())
times = st.one_of(st.integers(NOW - 10_000, NOW + 10_000), st.floats(NOW - 100, NOW + 100),
                  st.sampled_from(["", "12", str(NOW + 99)]), st.booleans(), st.none())
# Changes to a token that is valid to begin with: most examples stay close to valid, so the
# fast path answers often and each of its checks is exercised.
EDGES: list[tuple[str, Any]] = [
    ("exp", NOW - 5), ("exp", NOW + 99.5), ("exp", str(NOW + 99)), ("exp", True), ("exp", None),
    ("iat", NOW + 500), ("iat", NOW - 5), ("iat", "x"), ("iat", 1.5),
    ("nbf", NOW + 500), ("nbf", NOW - 5), ("nbf", "x"), ("nbf", False),
    ("sub", ""), ("sub", "a b"), ("sub", 7), ("sub", "x" * 300), ("sub", "bob"),
    ("channels", "room"), ("channels", [1]), ("publish", ["room"]), ("publish", None),
    ("aud", "someone"), ("jti", 7), ("jti", "j1"), ("iss", "me"), ("extra", {"a": 1}),
    ("presence", ["room*"]), ("presence", "room"), ("presence", [2])]
claim_changes = st.lists(st.one_of(st.sampled_from(EDGES),
                                   st.tuples(st.sampled_from(["exp", "iat", "nbf"]), times)),
                         max_size=2).map(dict)
header_changes = st.dictionaries(
    st.sampled_from(["alg", "typ", "kid", "crit"]),
    st.sampled_from(["HS512", "none", "RS256", "hs256", "JWT", 7, ["exp"]]), max_size=1)


@settings(max_examples=600, deadline=None)
@given(header_change=header_changes, claim_change=claim_changes,
       drop=st.sampled_from([None, None, None, "sub", "exp"]),
       as_list=st.integers(0, 20), wrong_secret=st.integers(0, 5),
       tamper=st.sampled_from(["", "", "", "", "sig", "body", "dots", "sig=", "sig==",
                               "sig!!", "sig+/", "body=", "head=", "body~"]))
def test_the_fast_path_never_accepts_what_pyjwt_refuses(
    header_change: dict[str, Any], claim_change: dict[str, Any], drop: str | None,
    as_list: int, wrong_secret: int, tamper: str
) -> None:
    v = Verifier(secret=SECRET)
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT", **header_change}
    payload: Any = {"sub": "alice", "exp": NOW + 3600, "channels": ["room"], **claim_change}
    if drop is not None:
        payload.pop(drop, None)
    if as_list == 0:
        payload = [payload]
    tok = token(header, payload, secret="other" if wrong_secret == 0 else SECRET)
    if tamper == "sig":
        tok = tok[:-2] + ("AA" if not tok.endswith("AA") else "BB")
    elif tamper == "body":
        head, body, sig = tok.split(".")
        tok = f"{head}.{body[:-1] + ('A' if body[-1] != 'A' else 'B')}.{sig}"
    elif tamper == "dots":
        tok = tok + ".x"
    elif tamper in ("sig=", "sig==", "sig!!"):  # the signature, decodable still, not canonical
        tok = tok + tamper[3:]
    elif tamper == "sig+/":
        head, body, sig = tok.split(".")
        tok = f"{head}.{body}.{sig.replace('-', '+').replace('_', '/')}"
    elif tamper in ("body=", "head=", "body~"):
        head, body, sig = tok.split(".")
        if tamper == "head=":
            head += "="
        else:
            body += tamper[4:]
        tok = f"{head}.{body}.{sig}"
    fast = v._fast(tok)
    slow = outcome(v._pyjwt, tok)
    if fast is not None:
        assert fast == slow
    # and the public entry point answers as PyJWT does, whichever path it took
    assert outcome(v.verify, tok) == slow


# ids by position, not by value: values hold the time of collection, and each pytest-xdist
# worker collects at its own moment (the workers must agree on the ids)
@pytest.mark.parametrize(("claim", "value"), EDGES,
                         ids=[f"{claim}-{n}" for n, (claim, _) in enumerate(EDGES)])
def test_each_edge_alone_is_answered_as_pyjwt_answers_it(claim: str, value: Any) -> None:
    v = Verifier(secret=SECRET)
    tok = token({"alg": "HS256", "typ": "JWT"},
                {"sub": "alice", "exp": NOW + 3600, "channels": ["room"], claim: value})
    fast = v._fast(tok)
    assert fast is None or fast == outcome(v._pyjwt, tok)
    assert outcome(v.verify, tok) == outcome(v._pyjwt, tok)


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_the_tokens_switchboard_mints_take_the_fast_path(algorithm: str) -> None:
    v = Verifier(secret=SECRET, algorithm=algorithm)
    tok = mint(SECRET, "alice", channels=["room"], publish=["room"], presence=["ro*"],
               algorithm=algorithm)
    claims = v._fast(tok)
    assert claims is not None and claims == v._pyjwt(tok)
    assert (claims.user, claims.channels, claims.publish) == ("alice", ("room",), ("room",))
    assert claims.presence == ("ro*",) and claims.wants_presence("room")
    assert not claims.wants_presence("other")
    # with iat and nbf (what backends commonly add) too
    now = int(time.time())
    assert v._fast(token({"alg": algorithm, "typ": "JWT"},
                         {"sub": "bob", "exp": now + 60, "iat": now, "nbf": now},
                         digest={"HS256": hashlib.sha256, "HS384": hashlib.sha384,
                                 "HS512": hashlib.sha512}[algorithm])) is not None


def test_a_token_of_another_algorithm_than_configured_is_refused() -> None:
    tok = mint(SECRET, "alice", algorithm="HS512")
    with pytest.raises(TokenError):
        Verifier(secret=SECRET, algorithm="HS256").verify(tok)


@pytest.mark.parametrize("suffix", ["=", "==", "====", "!!!!", "\n"])
def test_a_valid_signature_written_another_way_is_not_taken(suffix: str) -> None:
    v = Verifier(secret=SECRET)
    tok = mint(SECRET, "alice") + suffix
    assert v._fast(tok) is None
    assert outcome(v.verify, tok) == outcome(v._pyjwt, tok)


def test_a_secret_pyjwt_refuses_is_refused_at_start() -> None:
    pem = ("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n"
           "-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="cannot be used for HS256"):
        Verifier(secret=pem)


@pytest.mark.parametrize("key", ["not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n"
                                 "-----END PUBLIC KEY-----\n"])
def test_a_public_key_that_cannot_be_parsed_is_refused_at_start(key: str) -> None:
    # otherwise the gateway would start and refuse every token
    with pytest.raises(ValueError, match="public key cannot be used for RS256"):
        Verifier(public_key=key)
