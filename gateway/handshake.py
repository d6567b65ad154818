"""Deciding a connect (``/ws`` or ``/sse``), free of I/O: refused, or accepted with what the
client asked for.

The order is part of the contract and cheap checks come first: 405 not GET, 403 origin, then
admission (503 not ready or full, 429 over the accept rate) *before* the token, so refusing a
flood costs no signature check per attempt, then 401 token, then 400 for malformed resume
parameters (session, cursor, channels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import HandshakeRefused
from gateway.http import OriginPolicy
from gateway.ports import Accepted, ConnectRequest
from switchboard import streams
from switchboard.auth import Claims, TokenError


@dataclass(frozen=True, slots=True)
class Attempt:
    """The parts of an HTTP request a handshake decision reads."""

    method: str
    params: dict[str, str]
    origin: str | None = None
    host: str | None = None
    last_event_id: str | None = None  # EventSource's own resume header


def decide(attempt: Attempt, *, origins: OriginPolicy,
           admit: Callable[[], HandshakeRefused | None],
           authenticate: Callable[[], Claims], max_channels: int) -> Accepted:
    """Raises :class:`HandshakeRefused` with the status the client gets."""
    admit_attempt(attempt, origins, admit)
    try:
        claims = authenticate()
    except TokenError as exc:
        raise unauthorized(str(exc)) from None
    return Accepted(claims, connect_request(attempt, max_channels))


def defer(attempt: Attempt, *, origins: OriginPolicy,
          admit: Callable[[], HandshakeRefused | None],
          authenticate: Callable[[], Claims | None],
          max_channels: int) -> tuple[Claims | None, ConnectRequest]:
    """The same checks in the same order for a connect the connect proxy decides, except
    that the token is optional (``authenticate`` returns None without one); a token that is
    sent must be valid. The proxy is asked only after all of them passed."""
    admit_attempt(attempt, origins, admit)
    try:
        claims = authenticate()
    except TokenError as exc:
        raise unauthorized(str(exc)) from None
    return claims, connect_request(attempt, max_channels)


def admit_attempt(attempt: Attempt, origins: OriginPolicy,
                  admit: Callable[[], HandshakeRefused | None]) -> None:
    if attempt.method != "GET":
        raise HandshakeRefused(405, "method_not_allowed", "use GET", [("Allow", "GET")])
    if not origins.allows(attempt.origin, attempt.host):
        raise HandshakeRefused(403, "origin_forbidden",
                               f"origin {attempt.origin!r} is not allowed")
    refusal = admit()
    if refusal is not None:
        raise refusal


def unauthorized(message: str) -> HandshakeRefused:
    return HandshakeRefused(401, "unauthorized", message,
                            [("WWW-Authenticate", 'Bearer realm="switchboard"')])


def connect_request(attempt: Attempt, max_channels: int) -> ConnectRequest:
    params = attempt.params
    session = params.get("session") or None
    if session is not None and not streams.EPOCH_RE.fullmatch(session):
        raise HandshakeRefused(400, "bad_session", "session must be 1-32 letters or digits")
    # EventSource resends the last event id by itself on its own reconnects, to the URL it
    # was created with: that header is always newer than a cursor in that URL.
    cursor_text = attempt.last_event_id or params.get("cursor") or ""
    try:
        cursor = streams.parse_cursor(cursor_text)
    except streams.CursorError as exc:
        raise HandshakeRefused(400, "bad_cursor", str(exc)) from None
    names = [n for n in params.get("channels", "").split(",") if n]
    bad = [n for n in names if not streams.valid_channel(n)]
    if bad:
        raise HandshakeRefused(400, "bad_channel", f"invalid channel name {bad[0]!r}")
    if len(set(names)) > max_channels:
        raise HandshakeRefused(400, "too_many_channels",
                               f"at most {max_channels} channels per connection")
    return ConnectRequest(session, cursor, tuple(dict.fromkeys(names)))
