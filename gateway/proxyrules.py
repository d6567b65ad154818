"""The proxy's decisions, free of I/O: signing, the circuit breaker, and what an answer means.

The gateway asks the application's backend over HTTP before it accepts a connect, a
subscribe or a client publish, and before a connection's claims expire
(:mod:`gateway.proxy` makes the calls). Everything here is pure and unit-tested: how a call
is signed (:func:`sign`, :func:`verify`, also what a backend runs), when the breaker lets a
call through (:class:`Breaker`), what a request body holds (``*_body``) and what an answer
means (``parse_*``, which raise :class:`BadAnswer` for anything else: a malformed answer is a
failed call, never a crash and never a yes).

Answers are JSON objects with a boolean ``allow``; docs/operations.md ("Proxy") lists the
fields of each event.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

from switchboard import streams
from switchboard.auth import Claims
from switchboard.config import GatewaySettings
from switchboard.signing import SIGNATURE_HEADER, SIGNATURE_TOLERANCE, sign, verify

EVENTS = ("connect", "subscribe", "publish", "refresh")
# the proxy's signature, kept importable from here
__all__ = ["SIGNATURE_HEADER", "SIGNATURE_TOLERANCE", "sign", "verify"]
MAX_ANSWER_BYTES = 64 * 1024
MAX_REASON = 200  # characters of a backend's reason repeated to a client
# An ``info`` object is sent back with every later call about its connection: it must encode
# (see :func:`_info`), within these bounds.
MAX_INFO_DEPTH = 32
MAX_INFO_BYTES = MAX_ANSWER_BYTES


def configured(settings: GatewaySettings) -> bool:
    """Is any proxy URL set?"""
    return any((settings.proxy_connect_url, settings.proxy_subscribe_url,
                settings.proxy_publish_url, settings.proxy_refresh_url))


class BadAnswer(ValueError):
    """The backend answered something that is not a valid answer for the event."""


# -- circuit breaker --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ticket:
    """A call the breaker let through: of which period (``generation``), and whether it is
    the half-open probe. Only the current period's calls change the breaker."""

    generation: int
    probe: bool = False


class Breaker:
    """Closed, open after ``failures`` consecutive failures, half-open after ``cooldown``.

    Open: every call is refused at once. After the cool-down one call (the probe) goes
    through; its success closes the breaker, its failure opens it for another cool-down.
    Other calls are refused while the probe is out. Time is passed in (``now``).

    :meth:`allow` hands each call a :class:`Ticket` that it returns with its outcome. Every
    opening and closing starts a new generation: a call started before (still out when the
    breaker opened, say) then changes nothing, and in the half-open state only the probe's
    outcome (or its cancellation) decides.
    """

    __slots__ = ("cooldown", "failures", "generation", "limit", "opened_at", "probing")

    def __init__(self, failures: int, cooldown: float) -> None:
        self.limit = failures
        self.cooldown = cooldown
        self.failures = 0
        self.generation = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self, now: float) -> Ticket | None:
        """A ticket if a call may go out now (in the half-open state, the probe's), else
        None."""
        if self.opened_at is None:
            return Ticket(self.generation)
        if self.probing or now - self.opened_at < self.cooldown:
            return None
        self.probing = True
        return Ticket(self.generation, probe=True)

    def success(self, ticket: Ticket) -> None:
        if ticket.generation != self.generation:
            return
        self.failures = 0
        if ticket.probe:
            self.opened_at = None
            self.probing = False
            self.generation += 1

    def failure(self, ticket: Ticket, now: float) -> None:
        if ticket.generation != self.generation:
            return
        self.failures += 1
        if ticket.probe or self.failures >= self.limit:
            self.opened_at = now
            self.probing = False
            self.generation += 1

    def release(self, ticket: Ticket) -> None:
        """A call ended without a verdict on the backend (cancelled): if it was the probe,
        let another one through."""
        if ticket.probe and ticket.generation == self.generation:
            self.probing = False


# -- request bodies ---------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    # msgpack clients may publish binary data: the backend gets base64, as JSON clients do;
    # anything else msgpack can carry (an extension type) as text, as JSON subscribers get it.
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def encode(body: dict[str, Any]) -> bytes:
    """JSON bytes of a request body, whatever a client put in it: orjson, or the standard
    library for what orjson refuses (lone surrogates, which it escapes; huge integers; deep
    nesting). ValueError for what neither can write."""
    try:
        return orjson.dumps(body, default=_json_default)
    except orjson.JSONEncodeError:
        pass
    try:
        return json.dumps(body, separators=(",", ":"), default=_json_default).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"cannot be sent to the backend: {type(exc).__name__}") from None


def claims_view(claims: Claims) -> dict[str, Any]:
    exp = claims.expires
    return {"user": claims.user, "exp": int(exp) if math.isfinite(exp) else None,
            "channels": list(claims.channels), "publish": list(claims.publish),
            "presence": list(claims.presence)}


def connect_body(*, gateway: str, transport: str, remote_addr: str | None,
                 origin: str | None, user_agent: str | None, headers: dict[str, str],
                 params: dict[str, str], claims: Claims | None) -> dict[str, Any]:
    return {
        "event": "connect", "gateway": gateway, "transport": transport,
        "remote_addr": remote_addr, "origin": origin, "user_agent": user_agent,
        "headers": headers, "params": {k: v for k, v in params.items() if k != "token"},
        "claims": claims_view(claims) if claims is not None else None,
    }


def forwarded_headers(allowed: tuple[str, ...], get: Any) -> dict[str, str]:
    """The allow-listed request headers that are present, by lower-case name (``get`` looks
    one up, e.g. ``request.headers.get``)."""
    out: dict[str, str] = {}
    for name in allowed:
        value = get(name)
        if value is not None:
            out[name.lower()] = value
    return out


def connection_body(event: str, *, gateway: str, claims: Claims, conn_id: str,
                    session: str, **extra: Any) -> dict[str, Any]:
    """Subscribe, publish and refresh: who asks (with the connect proxy's ``info``)."""
    return {"event": event, "gateway": gateway, "user": claims.user, "conn": conn_id,
            "session": session, "claims": claims_view(claims), "info": info_of(claims),
            **extra}


# -- claims granted by the backend ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyClaims(Claims):
    """Claims of a connection the connect or refresh proxy decided: ``info`` is the
    backend's object, kept for the connection's lifetime and sent with later calls."""

    info: dict[str, Any] | None = None


def info_of(claims: Claims) -> dict[str, Any] | None:
    return claims.info if isinstance(claims, ProxyClaims) else None


@dataclass(frozen=True, slots=True)
class Denied:
    """The backend said no (``status``: the HTTP status of a refused connect)."""

    reason: str
    status: int = 403


@dataclass(frozen=True, slots=True)
class ConnectGrant:
    user: str | None
    channels: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    join: tuple[str, ...] = ()
    info: dict[str, Any] | None = None
    expire_at: float | None = None
    presence: tuple[str, ...] = ()

    def claims(self, token: Claims | None) -> ProxyClaims:
        """The connection's claims: the token's (if any) widened by the grant. The backend's
        user wins; without one, the token's user."""
        user = self.user or (token.user if token is not None else None)
        if user is None:
            raise BadAnswer("'user' is required when the connect carried no token")
        expires = self.expire_at if self.expire_at is not None else (
            token.expires if token is not None else math.inf)
        base_ch = token.channels if token is not None else ()
        base_pub = token.publish if token is not None else ()
        base_pres = token.presence if token is not None else ()
        return ProxyClaims(user=user, expires=expires,
                           channels=tuple(dict.fromkeys(base_ch + self.channels)),
                           publish=tuple(dict.fromkeys(base_pub + self.publish)),
                           presence=tuple(dict.fromkeys(base_pres + self.presence)),
                           info=self.info)


@dataclass(frozen=True, slots=True)
class Allowed:
    """A subscribe or publish may go ahead; ``data`` replaces a publish's data if
    ``rewritten``. ``presence`` (subscribe): the backend turned the channel's join and leave
    events on or off for this connection (None: its claims decide)."""

    rewritten: bool = False
    data: Any = None
    presence: bool | None = None


@dataclass(frozen=True, slots=True)
class Refreshed:
    expire_at: float
    channels: tuple[str, ...] | None = None
    publish: tuple[str, ...] | None = None
    info: dict[str, Any] | None = None
    replace_info: bool = False
    presence: tuple[str, ...] | None = None

    def claims(self, old: Claims) -> ProxyClaims:
        return ProxyClaims(
            user=old.user, expires=self.expire_at,
            channels=old.channels if self.channels is None else self.channels,
            publish=old.publish if self.publish is None else self.publish,
            presence=old.presence if self.presence is None else self.presence,
            info=self.info if self.replace_info else info_of(old))


# -- parsing answers --------------------------------------------------------------------------


def _load(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_ANSWER_BYTES:
        raise BadAnswer(f"answer larger than {MAX_ANSWER_BYTES} bytes")
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadAnswer("answer is not JSON") from None
    if not isinstance(answer, dict):
        raise BadAnswer("answer is not a JSON object")
    if not isinstance(answer.get("allow"), bool):
        raise BadAnswer("answer has no boolean 'allow'")
    return answer


def _reason(answer: dict[str, Any]) -> str:
    reason = answer.get("reason", "")
    if not isinstance(reason, str):
        raise BadAnswer("'reason' must be a string")
    return reason[:MAX_REASON]


def _patterns(answer: dict[str, Any], name: str) -> tuple[str, ...] | None:
    value = answer.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(v, str) and 0 < len(v) <= 65 for v in value):
        raise BadAnswer(f"'{name}' must be a list of channel names or prefix* patterns")
    return tuple(value)


def _info(answer: dict[str, Any]) -> dict[str, Any] | None:
    """The answer's ``info``, refused unless every later call can carry it: JSON that parses
    may still be too deep to encode again (``encode`` would raise in each of those calls)."""
    info = answer.get("info")
    if info is None:
        return None
    if not isinstance(info, dict):
        raise BadAnswer("'info' must be an object")
    if _depth(info) > MAX_INFO_DEPTH:
        raise BadAnswer(f"'info' nested deeper than {MAX_INFO_DEPTH} levels")
    try:
        size = len(encode({"info": info}))
    except ValueError as exc:
        raise BadAnswer(f"'info' {exc}") from None
    if size > MAX_INFO_BYTES:
        raise BadAnswer(f"'info' larger than {MAX_INFO_BYTES} bytes")
    return info


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (iteratively: no recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item \
            if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_INFO_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _expire_at(answer: dict[str, Any], required: bool = False) -> float | None:
    value = answer.get("expire_at")
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value):
        raise BadAnswer("'expire_at' must be a number (Unix seconds)")
    return float(value)


def parse_connect(body: bytes) -> ConnectGrant | Denied:
    answer = _load(body)
    if not answer["allow"]:
        status = answer.get("status", 403)
        if status not in (401, 403):
            raise BadAnswer("'status' of a refused connect must be 401 or 403")
        return Denied(_reason(answer), status)
    user = answer.get("user")
    if user is not None and not streams.valid_user(user):
        raise BadAnswer("'user' is not a valid user id")
    join = _patterns(answer, "join") or ()
    if not all(streams.valid_channel(c) for c in join):
        raise BadAnswer("'join' must list channel names")
    return ConnectGrant(user=user, channels=_patterns(answer, "channels") or (),
                        publish=_patterns(answer, "publish") or (),
                        join=tuple(dict.fromkeys(join)), info=_info(answer),
                        expire_at=_expire_at(answer),
                        presence=_patterns(answer, "presence") or ())


def parse_subscribe(body: bytes) -> Allowed | Denied:
    answer = _load(body)
    if not answer["allow"]:
        return Denied(_reason(answer))
    presence = answer.get("presence")
    if presence is not None and not isinstance(presence, bool):
        raise BadAnswer("'presence' must be true or false")
    return Allowed(presence=presence)


def parse_publish(body: bytes) -> Allowed | Denied:
    answer = _load(body)
    if not answer["allow"]:
        return Denied(_reason(answer))
    if "data" in answer:
        return Allowed(rewritten=True, data=answer["data"])
    return Allowed()


def parse_refresh(body: bytes) -> Refreshed | Denied:
    answer = _load(body)
    if not answer["allow"]:
        return Denied(_reason(answer), 401)
    return Refreshed(expire_at=_expire_at(answer, required=True) or 0.0,
                     channels=_patterns(answer, "channels"),
                     publish=_patterns(answer, "publish"),
                     info=_info(answer), replace_info="info" in answer,
                     presence=_patterns(answer, "presence"))


# -- when to refresh --------------------------------------------------------------------------


def refresh_lead(timeout: float) -> float:
    """How long before a connection's expiry the refresh is asked: room for the call and
    a few retries of it (at least a second)."""
    return max(1.0, 3 * timeout)
