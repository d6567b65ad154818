"""What the client does after a connection ends or its handshake is refused, without I/O.

Close codes and HTTP refusals map to a :class:`Next` step in one place (DESIGN 5: the code
ranges tell clients what to do); :func:`retry_after` reads the server's delay hint.
"""

from __future__ import annotations

import enum
import math
import time
from email.utils import parsedate_to_datetime

# Upper bound of the delay before reconnecting when the server moved us away without a hint.
JITTER_MAX = 1.0


class Next(enum.Enum):
    BACKOFF = "backoff"  # reconnect after a backoff delay (or the server's hint), resume
    JITTER = "jitter"  # the server moved us: reconnect after after_ms or a short jitter
    NEW_TOKEN = "new_token"  # fetch a new token and reconnect; AuthError without a provider
    FORBIDDEN = "forbidden"  # raise Forbidden
    SESSION_UNKNOWN = "session_unknown"  # raise SessionError
    TERMINAL = "terminal"  # raise TerminalClose


ABNORMAL_CLOSURE = 1006  # no close frame: the TCP connection died


def after_close(code: int | None) -> Next:
    """What to do after the connection closed with ``code`` (None: no close frame).

    1000/1001/1006/1009/1011/1013 and 4100-4199 (slow consumer, rate limited): backoff.
    1012 (service restart) and 4200-4299 (rebalance, disconnected by API): jitter.
    4000-4099 are terminal; 4001 only until a fresh token is at hand. Codes the protocol does
    not define are treated like 1011: keep trying, politely.
    """
    if code is None:
        code = ABNORMAL_CLOSURE
    if code == 1012 or 4200 <= code <= 4299:
        return Next.JITTER
    if code == 4001:
        return Next.NEW_TOKEN
    if code == 4003:
        return Next.FORBIDDEN
    if code == 4004:
        return Next.SESSION_UNKNOWN
    if 4000 <= code <= 4099:
        return Next.TERMINAL
    return Next.BACKOFF


def after_refusal(status: int) -> Next:
    """What to do after the handshake was refused with an HTTP ``status``.

    401: a new token; 403: forbidden; anything else (429 and 503 with Retry-After, 5xx, ...):
    back off and retry.
    """
    if status == 401:
        return Next.NEW_TOKEN
    if status == 403:
        return Next.FORBIDDEN
    return Next.BACKOFF


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), if valid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))

