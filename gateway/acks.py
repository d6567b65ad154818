"""A client's ``ack`` of its user stream, and the batch its gateway writes them in.

An ack is cumulative ("I processed everything up to N in epoch E"), so of one session's acks
between two writes only the highest matters: the batch keeps one entry per session, and the
backplane writes the batch as one small call per user (:data:`switchboard.receipts.ACK`).
Acks are checked against what the connection was actually sent: an ack covers the offsets
from the connection's ``ack_floor`` (where it started, or its last gap) up to the last one
it delivered, so a client can never acknowledge a message it did not get.
"""

from __future__ import annotations

from typing import Any

from gateway.ports import Client, Services
from switchboard import streams
from switchboard.receipts import Ack


class AckBatch:
    """The highest ack of each session (and range start) since the last write."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str, int], Ack] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, ack: Ack) -> None:
        # keyed by the range's start too: a session's acks from before a reconnect (another
        # floor) cover other offsets, and must not be replaced by the newer range
        key = (ack.session, ack.epoch, ack.floor)
        held = self._pending.get(key)
        if held is None or held.offset < ack.offset:
            self._pending[key] = ack

    def take(self) -> list[list[Ack]]:
        """Everything gathered, grouped by user (one write each), and a fresh batch."""
        by_user: dict[str, list[Ack]] = {}
        for ack in self._pending.values():
            by_user.setdefault(ack.user, []).append(ack)
        self._pending = {}
        return list(by_user.values())


def command(svc: Services, conn: Client, msg: dict[str, Any]) -> str | None:
    """Handle ``{"type":"ack","stream":"user","epoch":E,"offset":N}``: None when taken (or
    ignored as stale), else why it is refused (``bad_request``). No reply on success: acks
    are fire and forget, and answering each would double their traffic."""
    if msg.get("stream") != "user":
        return "ack needs \"stream\": \"user\" (only the user stream is acknowledged)"
    epoch, offset = msg.get("epoch"), msg.get("offset")
    if not isinstance(epoch, str) or not streams.EPOCH_RE.fullmatch(epoch):
        return "ack needs 'epoch', the epoch of the messages acknowledged"
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return "ack needs 'offset', a non-negative integer"
    session = conn.session
    delivered = session.position(streams.user_key(session.user))
    if delivered is None or delivered.epoch != epoch:
        # The stream moved to a new epoch since (or the welcome is not out yet): an ack of
        # the old one says nothing about the new, so it is dropped, not refused.
        svc.metrics.acks("stale")
        return None
    if offset > delivered.offset:
        svc.metrics.acks("refused")
        return f"ack of offset {offset}, but this connection was sent up to " \
               f"{delivered.offset}"
    if offset <= session.ack_floor:
        # Not sent by this connection (it started above, or skipped them): acks from an
        # earlier connection of the session, carried over by the SDK, land here.
        svc.metrics.acks("stale")
        return None
    svc.backplane.ack(Ack(session.user, session.session_id, conn.conn_id, epoch,
                          session.ack_floor, offset))
    return None
