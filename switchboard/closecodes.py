"""Close codes, in one place.

The same values are used for WebSocket close frames, for the final SSE ``error`` event and as
metric labels, so their meaning cannot drift between transports. Ranges tell clients what to do
(see docs/protocol.md):

- 1000-1013: standard codes, reconnect with backoff (1012: after jitter, then resume)
- 4000-4099: terminal, do not reconnect (4001: only with a new token)
- 4100-4199: reconnect with backoff and resume
- 4200-4299: reconnect after jitter
"""

from __future__ import annotations

import enum


class Close(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006  # never sent on the wire: the TCP connection died
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    TOKEN_INVALID = 4001
    FORBIDDEN = 4003
    SESSION_UNKNOWN = 4004
    SLOW_CONSUMER = 4108
    RATE_LIMITED = 4129
    REBALANCE = 4200
    DISCONNECTED = 4201


REASONS: dict[int, str] = {
    Close.NORMAL: "normal",
    Close.GOING_AWAY: "going away",
    Close.PROTOCOL_ERROR: "protocol error",
    Close.UNSUPPORTED_DATA: "unsupported data",
    Close.ABNORMAL: "abnormal closure",
    Close.INVALID_DATA: "invalid data",
    Close.POLICY_VIOLATION: "policy violation",
    Close.MESSAGE_TOO_BIG: "message too big",
    Close.INTERNAL_ERROR: "internal error",
    Close.SERVICE_RESTART: "service restart",
    Close.TRY_AGAIN_LATER: "try again later",
    Close.TOKEN_INVALID: "token invalid",
    Close.FORBIDDEN: "forbidden",
    Close.SESSION_UNKNOWN: "session unknown",
    Close.SLOW_CONSUMER: "slow consumer",
    Close.RATE_LIMITED: "inbound rate limit",
    Close.REBALANCE: "rebalance",
    Close.DISCONNECTED: "disconnected",
}


def reason(code: int) -> str:
    return REASONS.get(code, "unknown")


def label(code: int | None) -> str:
    """Bounded metric label for a close code: known codes by number, the rest as 'other'."""
    if code is None:
        return str(int(Close.ABNORMAL))
    return str(code) if code in REASONS else "other"


def is_terminal(code: int) -> bool:
    """4000-4099: the client must not reconnect (4001 only with a fresh token)."""
    return 4000 <= code <= 4099
