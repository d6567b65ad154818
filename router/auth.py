"""API keys: ``Authorization: Bearer KEY`` on every ``/v1`` route.

The presented key is compared with every configured key in constant time and the loop never
stops early, so response timing reveals neither a key's prefix nor which key matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from router.errors import Unauthorized

# Documents the scheme in OpenAPI; auto_error=False so we answer 401 ourselves, as JSON.
bearer_scheme = HTTPBearer(auto_error=False, description="one of the router's API keys")


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


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    given = presented.encode()
    matched = False
    for key in keys:
        # `|` rather than `or`: every key is compared, whatever the earlier results.
        matched |= hmac.compare_digest(given, key.encode())
    return matched


def require_key(
    keys: Sequence[str],
) -> Callable[[HTTPAuthorizationCredentials | None], Awaitable[None]]:
    """A FastAPI dependency refusing requests without a valid key (401)."""
    frozen = tuple(keys)

    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    ) -> None:
        if credentials is None or not key_matches(credentials.credentials, frozen):
            raise Unauthorized()

    return check
