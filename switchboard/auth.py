"""Client tokens: JWT verification (gateway) and minting (CLI, tests).

The algorithm is pinned by configuration and never taken from the token header, which rules
out ``alg: none`` and HS/RS key confusion. ``sub`` and ``exp`` are required.

Verification is on every connect's path, so a reconnect storm pays for it once per client:
PyJWT spends ~60 µs on a token, most of it on generality (key checks, header and claim
options). Shared-secret tokens in the shape Switchboard issues and documents are checked by a
narrow fast path instead (~10 µs: one HMAC, two base64 and two JSON decodes); anything it
does not positively accept goes to PyJWT, which has the last word and the error messages.
(Verified tokens are not remembered: a cache cost ~0.5 KiB per connection to save ~10 µs on a
reconnect to the same gateway, and a storm's clients come to gateways that never saw them.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from switchboard import streams


class TokenError(Exception):
    """Missing, malformed, forged, expired or otherwise unacceptable token (HTTP 401)."""


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Exact channel names, or ``prefix*`` patterns (``*`` alone allows every channel)."""
    for pattern in patterns:
        if pattern == name or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    expires: float
    channels: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    # Channels whose joins and leaves this connection announces and receives (opt-in: each
    # announcement is a pub/sub message every gateway of the channel decodes).
    presence: tuple[str, ...] = ()

    def may_subscribe(self, channel: str) -> bool:
        return matches(channel, self.channels)

    def may_publish(self, channel: str) -> bool:
        return matches(channel, self.publish)

    def wants_presence(self, channel: str) -> bool:
        return matches(channel, self.presence)


def _str_list(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError(f"claim {name!r} must be a list of strings")
    return tuple(value)


_DIGESTS: dict[str, Callable[[], Any]] = {
    "HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
# What the fast path takes as it is; other header fields or claims go to PyJWT.
_FAST_HEADER = frozenset({"alg", "typ"})
_FAST_CLAIMS = frozenset({"sub", "exp", "iat", "nbf", "channels", "publish",
                           "presence"})


_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")  # unpadded base64url, what PyJWT's tokens use


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _int_claim(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Verifier:
    def __init__(self, *, secret: str = "", public_key: str = "", algorithm: str = "") -> None:
        if public_key:
            self.key: str = public_key
            self.algorithm = algorithm or "RS256"
            if self.algorithm not in ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512"):
                raise ValueError(f"algorithm {self.algorithm} does not use a public key")
        elif secret:
            self.key = secret
            self.algorithm = algorithm or "HS256"
            if self.algorithm not in _DIGESTS:
                raise ValueError(f"algorithm {self.algorithm} does not use a shared secret")
        else:
            raise ValueError("a JWT secret or public key is required unless auth is disabled")
        # Refused here, not for every token later: PyJWT refuses secrets that look like PEM
        # or SSH keys, and a public key it cannot parse would refuse every token.
        what = "public key" if public_key else "secret"
        try:
            jwt.get_algorithm_by_name(self.algorithm).prepare_key(self.key)
        except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise ValueError(f"the JWT {what} cannot be used for {self.algorithm}: {exc}"
                             ) from None
        self._digest = _DIGESTS.get(self.algorithm) if not public_key else None
        self._secret = self.key.encode()

    def verify(self, token: str) -> Claims:
        if not token:
            raise TokenError("missing token")
        claims = self._fast(token)
        return claims if claims is not None else self._pyjwt(token)

    def _fast(self, token: str) -> Claims | None:
        """The claims of a well-formed, correctly signed, current shared-secret token of the
        usual shape; None for anything else (PyJWT decides)."""
        if self._digest is None:
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return None
        head, body, sig = parts
        if not (_SEGMENT.fullmatch(head) and _SEGMENT.fullmatch(body)):
            return None  # padding, or characters base64url has not: PyJWT decides
        try:
            mac = hmac.new(self._secret, f"{head}.{body}".encode(), self._digest).digest()
            # The signature must be exactly the canonical encoding: a lenient decode would
            # take altered forms of it (extra padding, other characters) that PyJWT refuses.
            if not hmac.compare_digest(base64.urlsafe_b64encode(mac).rstrip(b"="),
                                       sig.encode()):
                return None
            header = json.loads(_b64(head))
            payload = json.loads(_b64(body))
        except (ValueError, binascii.Error, UnicodeError):
            return None
        if not (isinstance(header, dict) and header.get("alg") == self.algorithm
                and header.keys() <= _FAST_HEADER):
            return None
        if not (isinstance(payload, dict) and payload.keys() <= _FAST_CLAIMS
                and all(_int_claim(payload.get(c, 0)) for c in ("exp", "iat", "nbf"))):
            return None
        now = time.time()
        exp = payload.get("exp")
        if (exp is None or exp <= now or payload.get("iat", 0) > now
                or payload.get("nbf", 0) > now or "sub" not in payload):
            return None
        try:
            return _claims(payload)
        except TokenError:
            return None

    def _pyjwt(self, token: str) -> Claims:
        try:
            payload = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired") from exc
        except jwt.PyJWTError as exc:  # InvalidTokenError, and key errors (public keys)
            raise TokenError(f"invalid token: {exc}") from exc
        return _claims(payload)


def _claims(payload: dict[str, Any]) -> Claims:
    user = payload.get("sub")
    if not streams.valid_user(user):
        raise TokenError("claim 'sub' is not a valid user id")
    assert isinstance(user, str)
    return Claims(
        user=user,
        expires=float(payload["exp"]),
        channels=_str_list(payload.get("channels"), "channels"),
        publish=_str_list(payload.get("publish"), "publish"),
        presence=_str_list(payload.get("presence"), "presence"),
    )


def mint(
    secret: str,
    user: str,
    *,
    ttl: float = 3600.0,
    channels: list[str] | None = None,
    publish: list[str] | None = None,
    presence: list[str] | None = None,
    algorithm: str = "HS256",
) -> str:
    """Sign a client token (dev tooling and tests; production tokens come from your backend)."""
    payload: dict[str, object] = {"sub": user, "exp": int(time.time() + ttl)}
    if channels:
        payload["channels"] = channels
    if publish:
        payload["publish"] = publish
    if presence:
        payload["presence"] = presence
    return jwt.encode(payload, secret, algorithm=algorithm)
