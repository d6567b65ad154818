"""Client worker processes: each runs uvloop and a :class:`~loadtest.bench.client.Fleet`.

One process cannot hold 20,000 sockets here (20,000 open files per process, hard limit), and
one Python thread would be the bottleneck anyway, so the coordinator spreads connections over
several workers. Each worker connects from its own loopback source address (127.0.0.2,
127.0.0.3, ...) so ephemeral ports never run short. The coordinator talks to a worker through
a pipe: it sends ``(command, kwargs)`` and gets back one result (or an error) per command;
connections and reconnects carry on in the worker's loop between commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from loadtest.bench.client import Fleet, Peer

PER_WORKER = 8_500  # connections one worker is asked to hold at most


def workers_for(connections: int, minimum: int = 1) -> int:
    return max(minimum, -(-connections // PER_WORKER))


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """Contiguous, nearly equal chunks (sizes differ by at most one)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def source_ip(worker: int) -> str:
    return f"127.0.0.{2 + worker}"


# -- inside a worker process --------------------------------------------------------------------


class Worker:
    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.fleet: Fleet | None = None

    def _fleet(self) -> Fleet:
        if self.fleet is None:
            raise RuntimeError("setup first")
        return self.fleet

    async def setup(self, **kwargs: Any) -> None:
        if self.fleet is not None:
            await self.fleet.close_all()
        self.fleet = Fleet(source_ip=source_ip(self.ident), **kwargs)

    async def open(self, users: list[str], secret: str, parse_every: int = 0,
                   track: bool = False, concurrency: int = 100,
                   limit_s: float = 30.0) -> dict[str, Any]:
        from switchboard.auth import mint

        fleet = self._fleet()
        queries = [f"token={mint(secret, user, ttl=6 * 3600)}" for user in users]
        peers = fleet.add_peers(queries, parse_every, track)
        result = await fleet.open_all(peers, concurrency, limit_s)
        result["gateways"] = dict(Counter(p.gateway for p in peers if p.connected))
        return result

    async def stats(self, reset: bool = False) -> dict[str, Any]:
        f = self._fleet()
        out = {
            "messages": f.messages, "duplicates": f.duplicates, "replayed": f.replayed,
            "latency": (list(f.latency.values), f.latency.seen), "errors": dict(f.errors),
            "closes": dict(f.closes), "open": f.open_now, "peers": len(f.peers),
        }
        if reset:
            f.messages = 0
            f.latency.clear()
        return out

    async def messages(self) -> int:
        return self._fleet().messages

    async def storm_mode(self, on: bool) -> None:
        f = self._fleet()
        f.reconnect = on
        f.record_accepts = on
        f.accepts, f.resumed = [], []

    async def storm_report(self, since: float) -> dict[str, Any]:
        f = self._fleet()
        lost = [p for p in f.peers if p.lost_at >= since]
        return {
            "lost": len(lost),
            "waiting": sum(1 for p in lost if not p.connected),
            "accepts": list(f.accepts),
            "resumed": list(f.resumed),
            "unrecovered": sum(p.state.unrecovered for p in f.peers),
            "gateways": dict(Counter(p.gateway for p in f.peers if p.connected)),
            "errors": dict(f.errors),
        }

    async def audit(self, stream: str, top: int, wait: float) -> dict[str, Any]:
        """Wait (bounded) until every peer reached ``top``, then count loss and duplicates."""
        f = self._fleet()

        # a peer that never got its first welcome has no position to audit; it is counted
        # as a connect failure instead
        audited = [p for p in f.peers if p.state.welcomes > 0]

        def behind() -> list[Peer]:
            out = []
            for p in audited:
                acc = p.state.streams.get(stream)
                if acc is None or acc.offset < top:
                    out.append(p)
            return out

        deadline = time.monotonic() + wait
        # the peers' progress is spread over thousands of protocols; polling is the simple way
        while behind() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        totals: Counter[str] = Counter()
        for p in audited:
            totals.update(p.state.audit(stream, top))
        return {**totals, "peers": len(audited), "behind": len(behind()),
                "duplicates_seen": f.duplicates, "replayed": f.replayed}

    async def close(self) -> None:
        if self.fleet is not None:
            await self.fleet.close_all()


async def _serve(conn: Connection, ident: int) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(ident)
    with ThreadPoolExecutor(1) as pool:
        while True:
            name, kwargs = await loop.run_in_executor(pool, conn.recv)
            if name == "exit":
                await worker.close()
                conn.send(("ok", None))
                return
            try:
                result = await getattr(worker, name)(**kwargs)
                conn.send(("ok", result))
            except Exception:
                conn.send(("error", traceback.format_exc()))


def worker_main(conn: Connection, ident: int) -> None:
    from switchboard.limits import raise_nofile_limit

    raise_nofile_limit()
    try:
        import uvloop

        uvloop.run(_serve(conn, ident))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(_serve(conn, ident))


# -- in the coordinator -------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker command raised; the message is the worker's traceback."""


class Pool:
    """The coordinator's handle on its worker processes (started and stopped by PID)."""

    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for k in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, k), daemon=True,
                               name=f"bench-worker-{k}")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self._exec = ThreadPoolExecutor(count)

    def __len__(self) -> int:
        return len(self.conns)

    def _recv(self, k: int) -> Any:
        status, value = self.conns[k].recv()
        if status == "error":
            raise WorkerError(f"worker {k}:\n{value}")
        return value

    async def call(self, k: int, name: str, **kwargs: Any) -> Any:
        self.conns[k].send((name, kwargs))
        return await asyncio.get_running_loop().run_in_executor(self._exec, self._recv, k)

    async def call_all(self, name: str, per_worker: list[dict[str, Any]] | None = None,
                       **kwargs: Any) -> list[Any]:
        """The same command on every worker at once; ``per_worker`` adds worker-specific args."""
        return list(await asyncio.gather(*(
            self.call(k, name, **kwargs, **(per_worker[k] if per_worker else {}))
            for k in range(len(self.conns))
        )))

    async def messages(self) -> int:
        return sum(await self.call_all("messages"))

    def close(self, timeout: float = 15.0) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if proc.is_alive():
                with contextlib.suppress(OSError):  # it may be dying already
                    conn.send(("exit", {}))
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self._exec.shutdown(wait=False, cancel_futures=True)
