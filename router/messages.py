"""The history API: a stream's messages from its replay log, and its top position.

``GET /v1/users/{user}/messages``, ``/v1/channels/{channel}/messages`` and
``/v1/broadcast/messages`` page through a stream's log; ``.../top`` gives its position. This is
what a backend calls for a client told ``recovered:false``, and to render initial state
(docs/history.md).

A page is read in one atomic step with the top it is measured against
(:data:`switchboard.contract.READ_PAGE_LUA`, one slot, so Redis Cluster too) and bounded by
``limit`` (XRANGE with COUNT). What the page says is decided here, free of I/O:
:func:`start_offset` (where it starts, the rule the script applies) and :func:`make_page`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from router import models, render, validation
from router.context import Context
from router.errors import InvalidField
from switchboard import streams
from switchboard.contract import Message
from switchboard.store import PageQuery
from switchboard.streams import CHANNEL_RE, USER_RE, Position

Lost = Literal["epoch_changed", "trimmed"]


def start_offset(query: PageQuery, top: Position) -> int:
    """The first offset a page wants (the script's rule). A ``since`` in another epoch, or
    above the top (DESIGN 7: the same as an epoch change), starts at the epoch's first."""
    if query.mode == "last":
        return max(1, top.offset - query.last + 1)
    since = query.since
    if (query.mode == "since" and since is not None and since.epoch == top.epoch
            and since.offset <= top.offset):
        return since.offset + 1
    return 1


@dataclass(frozen=True, slots=True)
class Page:
    top: Position
    messages: list[Message]  # of the top's epoch, contiguous offsets
    next: Position | None  # where the following page starts; None: this one reaches the top
    lost: Lost | None  # None: nothing between the requested position and messages[0] is lost

    @property
    def complete(self) -> bool:
        return self.lost is None


def make_page(query: PageQuery, top: Position, entries: list[Message]) -> Page:
    """The page of ``entries`` (the log read from :func:`start_offset` up to ``top``)."""
    start = start_offset(query, top)
    messages: list[Message] = []
    for m in entries:
        if m.epoch != top.epoch or m.offset > top.offset:
            continue  # cannot happen with one atomic read; never shown if it did
        if messages and m.offset != messages[-1].offset + 1:
            break  # a hole: the next page starts there and reports it
        messages.append(m)
    since = query.since
    lost: Lost | None = None
    if query.mode == "since" and since is not None and (
            since.epoch != top.epoch or since.offset > top.offset):
        lost = "epoch_changed"
    elif start <= top.offset and (not messages or messages[0].offset != start):
        lost = "trimmed"
    nxt = None
    if messages and messages[-1].offset < top.offset:
        nxt = Position(top.epoch, messages[-1].offset)
    return Page(top, messages, nxt, lost)


def page_body(stream: str, page: Page) -> dict[str, Any]:
    top = page.top
    return {
        "stream": stream,
        "epoch": top.epoch,
        "top": {"epoch": top.epoch, "offset": top.offset},
        "messages": [{"offset": m.offset, "published_ms": m.published_ms, "data": m.data}
                     for m in page.messages],
        "next": f"{page.next.epoch}:{page.next.offset}" if page.next else None,
        "complete": page.complete,
        "lost": page.lost,
    }


def page_query(since: str | None, last: int | None) -> PageQuery:
    if since is not None and last is not None:
        raise InvalidField("give 'since' or 'last', not both", field="last")
    if since is not None:
        return PageQuery("since", validation.parse_since(since))
    if last is not None:
        return PageQuery("last", last=last)
    return PageQuery()


MSGPACK_ANSWER: dict[str, Any] = {"content": {validation.MSGPACK_TYPE: {}}}
MESSAGES_DESCRIPTION = f"""\
At most `limit` messages of the stream's replay log, oldest first, with contiguous offsets:
those after `since`, the `last` N before the top, or (neither) from the first still logged.
`next` is the `since` of the following page (null: this page reaches `top`).

`complete: false` says messages were lost between the requested position and the first one
returned: `lost` is `epoch_changed` when `since` is in another epoch than the stream's, or
above its top (its history was lost: the page starts at the current epoch's first message
still logged), `trimmed` when the log no longer reaches back that far (`history_size`,
`history_ttl`). Either way the page holds what is still there: rebuild your state from your
own records, then apply it.

`since` is {validation.SINCE_RULE}: a page's `next`, a `top`, or a client's position in the
stream (its cursor entry `STREAM:EPOCH:OFFSET` without the stream). Give `since` or `last`,
not both. A stream never published to gets its epoch on the first read, at offset 0, as when
a client first connects. Data comes as published; in a JSON
answer, data published as msgpack binary is base64 text (as gateways send it to JSON
clients). `Accept: application/msgpack` answers in msgpack, binary kept binary."""

Since = Annotated[str | None, Query(
    description=f"read after this position: {validation.SINCE_RULE}",
    json_schema_extra={"pattern": f"^{validation.SINCE_RE.pattern}$"})]
Last = Annotated[int | None, Query(ge=1, le=10**validation.MAX_OFFSET_DIGITS - 1,
                                   description="read the last N messages up to the top")]
Limit = Annotated[int, Query(ge=1, le=validation.MAX_PAGE,
                             description="most messages in this page")]
UserPath = Annotated[str, Path(pattern=f"^{USER_RE.pattern}$", description="a user id")]
ChannelPath = Annotated[str, Path(pattern=f"^{CHANNEL_RE.pattern}$",
                                  description="a channel name")]


def add_routes(api: APIRouter, ctx: Context) -> None:
    """Register on ``api``, the authenticated ``/v1`` router."""

    async def read(request: Request, key: str, query: PageQuery, limit: int) -> Response:
        with ctx.redis("messages"):
            raw = await ctx.store.read_page(key, query, limit)
        body = page_body(streams.wire_name(key), make_page(query, raw.top, raw.messages))
        content, media = render.respond_bytes(body, request.headers.get("accept"))
        return Response(content, media_type=media, headers={"Vary": "Accept"})

    async def top(key: str) -> JSONResponse:
        with ctx.redis("top"):
            position = await ctx.store.top(key)
        return JSONResponse({"stream": streams.wire_name(key), "epoch": position.epoch,
                             "offset": position.offset})

    messages: dict[str, Any] = {
        "response_model": models.MessagesPage,
        "description": MESSAGES_DESCRIPTION,
        "responses": {200: MSGPACK_ANSWER, **models.errors(401, 404, 422, 503)},
    }
    position: dict[str, Any] = {
        "response_model": models.StreamTop,
        "description": "The stream's epoch and latest offset (0: nothing published yet in "
        "this epoch). A stream never published to gets its epoch now, at offset 0, as when a "
        "client first connects, so `EPOCH:0` is a position a client can resume from.",
        "responses": models.errors(401, 404, 422, 503),
    }

    @api.get("/users/{user:path}/messages", tags=["history"],
             summary="The user's stream: messages from its replay log", **messages)
    async def user_messages(request: Request, user: UserPath, since: Since = None,
                            last: Last = None,
                            limit: Limit = validation.DEFAULT_PAGE) -> Response:
        user = validation.parse_user(user)
        query = page_query(since, last)
        return await read(request, streams.user_key(user), query, limit)

    @api.get("/users/{user:path}/top", tags=["history"],
             summary="The user's stream: its current position", **position)
    async def user_top(user: UserPath) -> JSONResponse:
        return await top(streams.user_key(validation.parse_user(user)))

    @api.get("/channels/{channel}/messages", tags=["history"],
             summary="A channel's stream: messages from its replay log", **messages)
    async def channel_messages(request: Request, channel: ChannelPath, since: Since = None,
                               last: Last = None,
                               limit: Limit = validation.DEFAULT_PAGE) -> Response:
        channel = validation.parse_channel(channel)
        query = page_query(since, last)
        return await read(request, streams.channel_key(channel), query, limit)

    @api.get("/channels/{channel}/top", tags=["history"],
             summary="A channel's stream: its current position", **position)
    async def channel_top(channel: ChannelPath) -> JSONResponse:
        return await top(streams.channel_key(validation.parse_channel(channel)))

    @api.get("/broadcast/messages", tags=["history"],
             summary="The broadcast stream: messages from its replay log", **messages)
    async def broadcast_messages(request: Request, since: Since = None, last: Last = None,
                                 limit: Limit = validation.DEFAULT_PAGE) -> Response:
        query = page_query(since, last)
        return await read(request, streams.BROADCAST_KEY, query, limit)

    @api.get("/broadcast/top", tags=["history"],
             summary="The broadcast stream: its current position", **position)
    async def broadcast_top() -> JSONResponse:
        return await top(streams.BROADCAST_KEY)
