"""Errors the client raises: terminal ones, and refused channel requests.

Everything else (connection refused, a dead gateway, a drain, an overloaded cluster) is handled
inside the client by reconnecting and resuming; the application only sees these::

    SwitchboardError            base class: catch this to catch them all
    ├── AuthError               the token was refused (HTTP 401 or close 4001) and no
    │                           token_provider could supply an accepted one
    ├── Forbidden               HTTP 403 (origin not allowed) or close 4003
    ├── SessionError            close 4004: the session id belongs to another user
    ├── TerminalClose           any other terminal close code (4000-4099)
    └── RequestError            a channel request failed; NOT terminal, the client goes on
        ├── SubscribeError      subscribe or unsubscribe refused (forbidden, ...)
        └── PublishError        publish refused, or its outcome is unknown (disconnected)

The terminal ones are raised from ``async with Client(...)`` when the first connection fails
for good, and from the ``async for`` loop when a later connection does. Request errors are
raised from the ``subscribe``/``unsubscribe``/``publish`` call they answer.
"""

from __future__ import annotations


class SwitchboardError(Exception):
    """Base class of the errors the client raises instead of reconnecting."""


class AuthError(SwitchboardError):
    """The gateway refused the token (HTTP 401 or close code 4001).

    ``code`` is the HTTP status or the close code that refused it.
    """

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class Forbidden(SwitchboardError):
    """The gateway refused this client (HTTP 403, e.g. origin not allowed, or close 4003)."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class SessionError(SwitchboardError):
    """Close 4004: the session being resumed is unknown to this user."""


class TerminalClose(SwitchboardError):
    """The gateway closed with a terminal code (4000-4099) the client has no special rule for."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by the gateway with terminal code {code}: {reason or '-'}")
        self.code = code
        self.reason = reason


class RequestError(SwitchboardError):
    """A channel request failed. Not terminal: the connection and the client go on.

    ``code`` is the gateway's error code (``forbidden``, ``bad_request``,
    ``already_subscribed``, ``too_many_channels``, ``unavailable``, ...) or one the client
    decided locally (``already_subscribed``, ``not_subscribed``, ``disconnected``).
    """

    def __init__(self, code: str, message: str, *, channel: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.channel = channel


class SubscribeError(RequestError):
    """A subscribe was refused (the channel is not subscribed), or an unsubscribe was pointless
    (``not_subscribed``)."""


class PublishError(RequestError):
    """A publish was refused, so the message was not stored.

    Except for code ``disconnected``: the connection ended after the publish was sent and
    before the gateway confirmed it, so the message may or may not have been stored (the
    client does not resend it, to never store it twice).
    """
