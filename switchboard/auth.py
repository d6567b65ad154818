"""Client tokens: JWT verification (gateway) and minting (CLI, tests).

The algorithm is pinned by configuration and never taken from the token header, which rules
out ``alg: none`` and HS/RS key confusion. ``sub`` and ``exp`` are required.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

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

    def may_subscribe(self, channel: str) -> bool:
        return matches(channel, self.channels)

    def may_publish(self, channel: str) -> bool:
        return matches(channel, self.publish)


def _str_list(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError(f"claim {name!r} must be a list of strings")
    return tuple(value)


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
            if self.algorithm not in ("HS256", "HS384", "HS512"):
                raise ValueError(f"algorithm {self.algorithm} does not use a shared secret")
        else:
            raise ValueError("a JWT secret or public key is required unless auth is disabled")

    def verify(self, token: str) -> Claims:
        if not token:
            raise TokenError("missing token")
        try:
            payload = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from exc
        user = payload.get("sub")
        if not streams.valid_user(user):
            raise TokenError("claim 'sub' is not a valid user id")
        assert isinstance(user, str)
        return Claims(
            user=user,
            expires=float(payload["exp"]),
            channels=_str_list(payload.get("channels"), "channels"),
            publish=_str_list(payload.get("publish"), "publish"),
        )


def mint(
    secret: str,
    user: str,
    *,
    ttl: float = 3600.0,
    channels: list[str] | None = None,
    publish: list[str] | None = None,
    algorithm: str = "HS256",
) -> str:
    """Sign a client token (dev tooling and tests; production tokens come from your backend)."""
    payload: dict[str, object] = {"sub": user, "exp": int(time.time() + ttl)}
    if channels:
        payload["channels"] = channels
    if publish:
        payload["publish"] = publish
    return jwt.encode(payload, secret, algorithm=algorithm)
