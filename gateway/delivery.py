"""Live delivery and its recovery from the log: what the gateway does with backplane events.

:class:`Delivery` is the :class:`~gateway.ports.BackplaneEvents` handler. Live envelopes go
through the :class:`~gateway.tracker.Tracker` (gaps and new epochs are filled from the log, in
order) to the hub. After an outage it puts our connections back into the map, reads every
followed stream's top and fills what was missed; streams whose offsets went back are retired
and their followers moved (DESIGN 6b, 7).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial

from gateway import mover, presence
from gateway.errors import BackendUnavailable
from gateway.ports import Registration, Services
from gateway.retry import retrying
from gateway.tracker import Fill, Steps
from gateway.wire import Wire
from switchboard import contract, streams, untrusted
from switchboard.closecodes import Close
from switchboard.contract import Control, Message

log = logging.getLogger("switchboard.gateway")

# A catch-up reads again the streams whose epoch changed live while their tops were read.
CATCH_UP_ROUNDS = 3


class Delivery:
    def __init__(self, services: Services,
                 registrations: Callable[[], list[Registration]],
                 drain: Callable[[str], None] | None = None) -> None:
        """``drain(reason)``: start this gateway's drain, as SIGTERM does (a ``drain``
        control envelope asks for it; without the hook it is ignored)."""
        self.svc = services
        # The registrations of the connections that are welcomed (re-written after an outage).
        self._registrations = registrations
        self._drain = drain

    # -- BackplaneEvents ----------------------------------------------------------------------

    def message(self, message: Message) -> None:
        ready, fill = self.svc.tracker.live(message)
        for m in ready:
            self._deliver(m)
        if fill is not None:
            self.svc.spawn(self._fill(fill))

    def control(self, control: Control) -> None:
        if control.op == contract.OP_DISCONNECT and len(control.args) >= 1:
            user = str(control.args[0])
            code = int(control.args[1]) if len(control.args) > 1 else int(Close.DISCONNECTED)
            reason = str(control.args[2]) if len(control.args) > 2 else "disconnected"
            for client in self.svc.hub.user_clients(user):
                client.transport.close(code, reason)
        elif control.op == contract.OP_PRESENCE:
            presence.deliver(self.svc, control)
        elif control.op == contract.OP_DRAIN:
            reason = str(control.args[0]) if control.args else "drain"
            if self._drain is None:
                log.warning("drain requested over Redis (%s), but nothing here can drain",
                            untrusted.quotable(reason))
            else:
                self._drain(reason)

    def reconnecting(self) -> None:
        self.svc.tracker.hold_all()

    def resubscribed(self) -> None:
        self.svc.spawn(self._resync())

    async def registry_lost(self) -> None:
        await self._reregister()
        await self._catch_up()

    def load(self) -> dict[str, int]:
        counts = self.svc.hub.count_by_wire()
        ws = counts[Wire.JSON] + counts[Wire.MSGPACK]
        return {"connections": len(self.svc.hub), "ws": ws, "sse": counts[Wire.SSE],
                "delivered": self.svc.metrics.delivered_total()}

    # -- delivery -----------------------------------------------------------------------------

    def _deliver(self, message: Message) -> None:
        hub = self.svc.hub
        started = time.perf_counter()
        gaps_before = hub.gaps
        delivered = hub.deliver(message)
        elapsed = time.perf_counter() - started
        latency = (contract.now_ms() - message.published_ms) / 1000 if message.published_ms else -1
        metrics = self.svc.metrics
        metrics.delivered(delivered, elapsed, latency)
        for _ in range(hub.gaps - gaps_before):
            metrics.gap()

    def _run(self, steps: Steps) -> None:
        for m in steps.ready:
            self._deliver(m)
        for fill in steps.fills:
            self.svc.spawn(self._fill(fill))
        if steps.regressed:
            self.svc.spawn(self._retire(steps.regressed))

    async def _fill(self, fill: Fill) -> None:
        """Read a live gap from the log; deliver it and what queued behind it, in order."""
        tracker = self.svc.tracker
        entries: list[Message] = []
        if not fill.empty:
            # Retried: a fill often starts while Redis is coming back, and what it misses is
            # lost to every local follower (they would see the gap and have to resume).
            try:
                logs = await retrying(f"gap fill {fill}", lambda: self.svc.backplane.read_logs(
                    [(fill.key, fill.first, fill.last)]))
                entries = logs.get(fill.key, [])
            except BackendUnavailable:
                pass  # deliver what we have rather than stall the stream
        if not tracker.verify(fill, entries):
            # Another message at our own position: offsets of this epoch are being reused.
            self._run(Steps(regressed=[(fill.key, fill.epoch)]))
            return
        before = tracker.filled
        ready, more = tracker.complete(fill, entries)
        for m in ready:
            self._deliver(m)
        if not fill.empty:
            self.svc.metrics.fill(tracker.filled > before)
        if more is not None:
            self.svc.spawn(self._fill(more))

    # -- after an outage ----------------------------------------------------------------------

    async def _reregister(self) -> None:
        await self.svc.backplane.reregister(self._registrations())

    async def _resync(self) -> None:
        """Pub/sub is back after an outage. Envelopes published meanwhile are in the logs
        only, and if Redis restarted empty no publisher routes to us yet: register again
        first (so everything after the tops we read reaches us), then catch up."""
        async def register_again() -> None:
            if await self.svc.backplane.heartbeat():
                log.warning("registry entry was gone: re-registering connections")
                await self._reregister()

        # On failure the heartbeat loop keeps trying; catch up with what we can read.
        with contextlib.suppress(BackendUnavailable):
            await retrying("re-registration", register_again)
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Bring every followed stream up to its top from the log."""
        tracker = self.svc.tracker
        first = reading = tracker.reading()  # what the tops are compared with: read from now
        for _ in range(CATCH_UP_ROUNDS):
            try:
                tops = await retrying("catch-up", partial(self.svc.backplane.read_tops,
                                                          reading.keys))
            except BackendUnavailable:
                log.error("catch-up gave up: clients will resume when they notice their gaps")
                self._run(tracker.release_all(reading))
                return
            steps = tracker.catch_up(reading, tops)
            self._run(steps)
            if not steps.stale:
                return
            reading = tracker.reread(first, steps.stale)
        # Still moving between epochs: their next live message is checked as ever.
        log.warning("catch-up: %d streams kept changing epoch while read", len(reading.keys))

    async def _retire(self, regressed: list[tuple[str, str]]) -> None:
        """Redis came back with older data: these streams' offsets are being reused. Retire
        their epochs first, all of them, so a resume from any position in one says
        ``recovered:false``; then move every local follower so it resumes (DESIGN 6b, 7)."""
        backplane = self.svc.backplane
        for key, epoch in regressed:
            log.error("stream %s went back in epoch %s: retiring it and moving its followers",
                      streams.wire_name(key), epoch)

            async def retire(key: str = key, epoch: str = epoch) -> bool:
                return await backplane.retire_epoch(key, epoch)

            # On failure they are moved all the same: a resume above the top is told it lost
            # history, and the reused offsets have not overtaken the cursors yet.
            with contextlib.suppress(BackendUnavailable):
                await retrying(f"retiring {key}", retire)
            self.svc.metrics.history_lost()
        hub = self.svc.hub
        moved = {c.conn_id: c for key, _ in regressed for c in hub.followers(key)}
        for client in moved.values():
            mover.move(client, Close.SERVICE_RESTART, "history_lost", jitter_ms=2000)
