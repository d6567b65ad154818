"""The publish path on Redis Cluster: one pipelined connection per master, routed by slot.

Each publish is one script whose keys share a slot, so it goes whole to the master of that
slot over that master's :class:`~switchboard.pipelined.PipelinedRedis`. The slot map is
redis-py's (``RedisCluster.nodes_manager``); a per-slot table of connections caches it, so
routing a call costs a CRC and a list index.

Redirections are followed, never guessed: ``MOVED`` (the slot has a new owner, the script did
not run) re-reads the map and sends the call again; ``ASK`` (the slot is being migrated and
the keys are already at the target) sends ``ASKING`` and the call to the target;
``TRYAGAIN`` (a migration is half way for these keys) waits a moment and retries. A connection
error or a timeout is *not* retried: the script may have run, and a second run would publish
twice. It is raised (the router answers 503) and the map is re-read in the background, so
the next call goes to the replica promoted after a failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from redis import exceptions
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from switchboard import resp
from switchboard.pipelined import Arg, PipelinedRedis, Script
from switchboard.redisurl import ClusterUrl

log = logging.getLogger("switchboard")

SLOTS = 16384
REDIRECTS = 5  # MOVED/ASK/TRYAGAIN followed per call before giving up (answered 503)


class ClusterPipelined:
    def __init__(self, cluster: RedisCluster, url: ClusterUrl, timeout: float, *,
                 client_name: str, scripts: Sequence[Script] = (),
                 fenced: bool = False) -> None:
        """``fenced``: each link's new connection first kills the one before it (see
        :class:`~switchboard.pipelined.PipelinedRedis`)."""
        self.cluster = cluster
        self.url = url
        self.timeout = timeout
        self.client_name = client_name
        self.scripts = list(scripts)
        self.fenced = fenced
        self._links: dict[tuple[str, int], PipelinedRedis] = {}
        self._by_slot: list[PipelinedRedis | None] = [None] * SLOTS
        self._refreshing: asyncio.Task[None] | None = None
        self._closed = False
        self._initialized = False

    @property
    def closed(self) -> bool:
        return self._closed

    # -- routing ------------------------------------------------------------------------------

    def _link_at(self, host: str, port: int) -> PipelinedRedis:
        link = self._links.get((host, port))
        if link is None:
            link = PipelinedRedis(self.url.node_url(host, port), self.timeout,
                                  client_name=self.client_name, scripts=self.scripts,
                                  fenced=self.fenced)
            self._links[(host, port)] = link
        return link

    async def _link(self, slot: int) -> PipelinedRedis:
        link = self._by_slot[slot]
        if link is not None:
            return link
        manager = self.cluster.nodes_manager
        if not manager.slots_cache:
            await self._refresh()
        try:
            node = manager.get_node_from_slot(slot)
        except exceptions.SlotNotCoveredError as exc:
            self._refresh_later()
            raise exceptions.ClusterDownError(f"no master serves slot {slot}") from exc
        link = self._link_at(node.host, int(node.port))
        self._by_slot[slot] = link
        return link

    async def _refresh(self) -> None:
        """Re-read the slot map and wait for it."""
        await asyncio.shield(self._refresh_later())

    async def _read_map(self) -> None:
        try:
            if not self._initialized:
                # The client's own start-up (slot map and its command table) and not only
                # the map: a client whose map was read behind its back thinks it has no
                # command table and fails its first command.
                await self.cluster.initialize()
                self._initialized = True
            else:
                await self.cluster.nodes_manager.initialize()
        finally:
            self._by_slot = [None] * SLOTS
            masters = {(n.host, int(n.port)) for n in self.cluster.get_primaries()}
            for addr in [a for a in self._links if a not in masters]:
                self._links.pop(addr).close()  # a former master (failed over or removed)

    def _refresh_later(self) -> asyncio.Task[None]:
        """Re-read the slot map, one read at a time: concurrent callers share it (and a
        failure nobody awaits is logged, not left unretrieved)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._read_map())
            self._refreshing.add_done_callback(_quiet)
        return self._refreshing

    # -- commands -----------------------------------------------------------------------------

    async def run_script(self, script: Script, keys: Sequence[Arg],
                         args: Sequence[Arg]) -> Any:
        slot = key_slot(_bytes(keys[0]))
        for attempt in range(REDIRECTS):
            # the slot table first: a coroutine per publish is a measurable share of its CPU
            link = self._by_slot[slot] or await self._link(slot)
            try:
                return await link.run_script(script, keys, args)
            except exceptions.MovedError:
                await self._refresh()
            except exceptions.AskError as ask:
                target = self._link_at(ask.host, int(ask.port))
                with contextlib.suppress(exceptions.AskError, exceptions.TryAgainError):
                    return await _asking(target, script, keys, args)
            except exceptions.TryAgainError:
                await asyncio.sleep(0.05 * (attempt + 1))
            except (exceptions.ConnectionError, exceptions.TimeoutError):
                self._refresh_later()  # the next call finds the promoted replica
                raise
        raise exceptions.ClusterDownError(f"slot {slot} kept moving: gave up after "
                                          f"{REDIRECTS} redirections")

    async def _by_link(self, keyed: Sequence[tuple[int, Arg]]
                       ) -> dict[int, tuple[PipelinedRedis, list[int]]]:
        """The indices of ``keyed`` (index, first key) grouped by the master link of their
        key's slot, each group in the given order."""
        groups: dict[int, tuple[PipelinedRedis, list[int]]] = {}
        for i, key in keyed:
            link = await self._link(key_slot(_bytes(key)))
            groups.setdefault(id(link), (link, []))[1].append(i)
        return groups

    async def run_script_many(self, script: Script,
                              calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]], *,
                              raise_on_error: bool = True) -> list[Any]:
        """Each master's calls in one write (their order kept); calls redirected by MOVED or
        ASK did not run and are sent again one by one; any other failure is raised. With
        ``raise_on_error=False`` an error reply, and a master's lost connection or timeout,
        is returned in place of each call it failed: one master down is not all of them."""
        if not calls:
            return []
        groups = await self._by_link([(i, keys[0]) for i, (keys, _) in enumerate(calls)])
        results: list[Any] = [None] * len(calls)
        outcomes = await asyncio.gather(*(
            link.run_script_many(script, [calls[i] for i in idx], raise_on_error=False)
            for link, idx in groups.values()), return_exceptions=True)
        redo: list[int] = []
        for (_, idx), outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, (exceptions.ConnectionError, exceptions.TimeoutError)):
                    self._refresh_later()
                if raise_on_error or not isinstance(outcome, Exception):
                    raise outcome
                for i in idx:
                    results[i] = outcome
                continue
            for i, reply in zip(idx, outcome, strict=True):
                if isinstance(reply, (exceptions.MovedError, exceptions.AskError,
                                      exceptions.TryAgainError)):
                    redo.append(i)
                elif isinstance(reply, BaseException) and raise_on_error:
                    raise reply
                else:
                    results[i] = reply
        for i in redo:
            results[i] = await self.run_script(script, *calls[i])
        return results

    async def execute_routed(self, commands: Sequence[Sequence[Arg]],
                             scripts: Sequence[Script] = ()) -> list[Any]:
        """Mixed commands, each at the master of its first key's slot (an ``EVALSHA``'s
        KEYS[1]), one write per master with their order kept; the ``scripts`` they call are
        loaded in front of them in that write, and a call that finds none anyway (NOSCRIPT)
        runs again as ``EVAL``. Calls redirected (MOVED, ASK, TRYAGAIN) did not run: they are
        sent again, in their order. Any other error reply is its command's result; a lost
        connection or a timeout raises (some commands may have run)."""
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        by_sha = {s.sha: s for s in scripts}
        for attempt in range(REDIRECTS):
            groups = await self._by_link([(i, _first_key(commands[i])) for i in todo])
            outcomes = await asyncio.gather(*(
                _send_group(link, [commands[i] for i in idx], by_sha)
                for link, idx in groups.values()), return_exceptions=True)
            redo: list[int] = []
            moved = False
            for (_, idx), outcome in zip(groups.values(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if isinstance(outcome, (exceptions.ConnectionError,
                                            exceptions.TimeoutError)):
                        self._refresh_later()
                    raise outcome
                for i, reply in zip(idx, outcome, strict=True):
                    if isinstance(reply, (exceptions.MovedError, exceptions.AskError,
                                          exceptions.TryAgainError)):
                        # ASK too: the map is read again, and the call waits for the slot
                        # to settle rather than chase a migration half way
                        moved = True
                        redo.append(i)
                    else:
                        results[i] = reply
            if not redo:
                return results
            todo = sorted(redo)
            if moved:
                await self._refresh()
            await asyncio.sleep(0.05 * (attempt + 1))
        raise exceptions.ClusterDownError(f"{len(todo)} commands kept being redirected: "
                                          f"gave up after {REDIRECTS} tries")

    def close(self) -> None:
        self._closed = True
        for link in self._links.values():
            link.close()
        self._links.clear()
        self._by_slot = [None] * SLOTS


async def _asking(link: PipelinedRedis, script: Script, keys: Sequence[Arg],
                  args: Sequence[Arg]) -> Any:
    """ASKING and the call in one write: ASKING only lets the very next command in."""
    replies = await link.execute_raw([resp.command("ASKING"), script.eval(keys, args)])
    return replies[1]


def _first_key(command: Sequence[Arg]) -> Arg:
    name = str(command[0]).upper()
    return command[3] if name in ("EVAL", "EVALSHA") else command[1]


async def _send_group(link: PipelinedRedis, commands: list[Sequence[Arg]],
                      scripts: dict[str, Script]) -> list[Any]:
    """One master's commands in one write, behind the loads of the scripts they call."""
    called = sorted({str(c[1]) for c in commands if str(c[0]).upper() == "EVALSHA"})
    loads = [resp.command("SCRIPT", "LOAD", scripts[sha].source) for sha in called]
    replies = (await link.execute_raw([*loads, *(resp.command(*c) for c in commands)],
                                      raise_on_error=False))[len(loads):]
    missing = [i for i, r in enumerate(replies) if isinstance(r, exceptions.NoScriptError)]
    if missing:  # a script flush inside the write: those did not run
        again = await link.execute_raw(
            [resp.command("EVAL", scripts[str(commands[i][1])].source, *commands[i][2:])
             for i in missing], raise_on_error=False)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


def _bytes(key: Arg) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


def _quiet(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("reading the Redis Cluster slot map failed: %s", task.exception())
