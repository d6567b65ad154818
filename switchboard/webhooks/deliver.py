"""Posting one batch of events: the request, its signature, and what counts as delivered."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx

from switchboard import streams
from switchboard.signing import SIGNATURE_HEADER, sign_all

BATCH_HEADER = "X-Switchboard-Batch"


def body_of(events: list[dict[str, Any]]) -> bytes:
    return json.dumps({"time_ms": int(time.time() * 1000), "events": events},
                      separators=(",", ":"), ensure_ascii=False).encode()


async def post(client: httpx.AsyncClient, url: str, secrets: tuple[bytes, ...],
               events: list[dict[str, Any]]) -> str:
    """Post ``events``; the outcome: ``ok`` (any 2xx), ``status`` (another status),
    ``timeout`` or ``error`` (no answer)."""
    body = body_of(events)
    headers = {"Content-Type": "application/json", BATCH_HEADER: streams.random_id()}
    if secrets:
        headers[SIGNATURE_HEADER] = sign_all(secrets, int(time.time()), body)
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError:
        return "error"
    return "ok" if 200 <= response.status_code < 300 else "status"


def backoff(failures: int, longest: float) -> float:
    """Seconds before retry number ``failures``: full jitter over ``min(longest, 2**n)``."""
    return random.uniform(0, min(longest, 0.5 * 2 ** min(failures, 16)))
