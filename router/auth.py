"""API keys: every ``/v1`` route and the admin page need one of the router's keys.

A key is presented as ``Authorization: Bearer KEY`` (services), or as the password of HTTP
Basic auth, any user name (browsers: a navigation cannot carry a Bearer header, but a browser
prompts for Basic credentials and then sends them with the page's same-origin requests; see
docs/admin.md). This module is the one place keys are checked.

Basic credentials are sent by the browser on its own, so a page of another origin could make
it send them (CSRF). A Basic-authenticated request that changes state (anything but GET and
HEAD) must therefore also carry ``X-Switchboard-Admin: 1``, a header no cross-origin page can
add without a CORS preflight the router does not grant (403 otherwise).

The presented key is compared with every configured key in constant time and the loop never
stops early, so response timing reveals neither a key's prefix nor which key matched.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBearer

from router.errors import Forbidden, Unauthorized

ADMIN_HEADER = "X-Switchboard-Admin"
ADMIN_REALM = "switchboard admin"
BASIC_CHALLENGE = f'Basic realm="{ADMIN_REALM}"'
SAFE_METHODS = frozenset({"GET", "HEAD"})

# Document the schemes in OpenAPI; auto_error=False so we answer 401 ourselves, as JSON.
bearer_scheme = HTTPBearer(auto_error=False, description="one of the router's API keys")


class _BasicDoc(HTTPBasic):
    """Documents Basic auth in OpenAPI; the credentials are read by :func:`presented_key`
    (HTTPBasic itself would answer a malformed header with its own 401)."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


basic_scheme = _BasicDoc(auto_error=False, realm=ADMIN_REALM, scheme_name="HTTPBasic",
                         description="any user name, one of the router's API keys as the "
                         "password (browsers; state-changing requests also need the "
                         f"header {ADMIN_HEADER}: 1)")


@dataclass(frozen=True, slots=True)
class Presented:
    key: str
    scheme: Literal["bearer", "basic"]


def bearer_credentials(authorization: str | None) -> str | None:
    """The credentials of ``Authorization: Bearer ...``, read as FastAPI's HTTPBearer reads
    them (scheme case-insensitive; None when absent, empty or another scheme)."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if not scheme or not credentials or scheme.lower() != "bearer":
        return None
    return credentials


def basic_password(authorization: str | None) -> str | None:
    """The password of ``Authorization: Basic BASE64(user:password)``; None when absent,
    another scheme, or not decodable (UTF-8, as browsers send it; RFC 7617)."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon and password else None


def presented_key(authorization: str | None) -> Presented | None:
    """The key a request presents, and how."""
    if (key := bearer_credentials(authorization)) is not None:
        return Presented(key, "bearer")
    if (key := basic_password(authorization)) is not None:
        return Presented(key, "basic")
    return None


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    given = presented.encode()
    matched = False
    for key in keys:
        # `|` rather than `or`: every key is compared, whatever the earlier results.
        matched |= hmac.compare_digest(given, key.encode())
    return matched


def refusal(presented: Presented | None, challenge_basic: bool = False) -> Unauthorized:
    """The 401 for a missing or unknown key. It challenges with Basic (a browser then
    prompts) when ``challenge_basic`` or when the request tried Basic; API clients get the
    Bearer challenge."""
    basic = challenge_basic or (presented is not None and presented.scheme == "basic")
    return Unauthorized(challenge=BASIC_CHALLENGE if basic else "Bearer")


def confirm_state_change(presented: Presented, method: str, admin_header: str | None) -> None:
    """403 for a Basic-authenticated state change without :data:`ADMIN_HEADER` (CSRF)."""
    if presented.scheme == "basic" and method.upper() not in SAFE_METHODS \
            and (admin_header or "").strip() != "1":
        raise Forbidden(f"a request authenticated with Basic credentials that changes state "
                        f"must carry the header '{ADMIN_HEADER}: 1'")


def authorize(authorization: str | None, keys: Sequence[str], *, method: str,
              admin_header: str | None, challenge_basic: bool = False) -> Presented:
    """Check a request's key: raises :class:`Unauthorized` (401) or :class:`Forbidden`
    (403); returns what it presented."""
    presented = presented_key(authorization)
    if presented is None or not key_matches(presented.key, keys):
        raise refusal(presented, challenge_basic)
    confirm_state_change(presented, method, admin_header)
    return presented


def require_key(
    keys: Sequence[str], *, challenge_basic: bool = False,
) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency refusing requests without a valid key (401, 403)."""
    frozen = tuple(keys)

    async def check(
        request: Request,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
        _basic: Annotated[None, Security(basic_scheme)],
    ) -> None:
        presented = presented_key(request.headers.get("authorization"))
        if presented is None or not key_matches(presented.key, frozen):
            raise refusal(presented, challenge_basic)
        confirm_state_change(presented, request.method, request.headers.get(ADMIN_HEADER))

    return check
