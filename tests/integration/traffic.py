"""Steady, bounded traffic through the router, and the check that every client got all of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tests.integration.sdk import Consumer
from tests.support import API_KEY, Proc


class Publisher:
    """Numbered broadcasts and per-user unicasts at a steady, bounded rate."""

    def __init__(self, router: Proc, users: list[str]) -> None:
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}",
                                      headers={"Authorization": f"Bearer {API_KEY}"})
        self.users = users
        self.broadcasts: list[int] = []
        self.unicasts: dict[str, list[int]] = {u: [] for u in users}
        self.stop = asyncio.Event()

    async def run(self, rate: float, limit: int) -> None:
        n = 0
        while not self.stop.is_set() and n < limit:
            user = self.users[n % len(self.users)]
            batch = [{"broadcast": True, "data": n}, {"user": user, "data": n}]
            resp = await self.http.post("/v1/publish/batch", json={"messages": batch})
            assert resp.status_code == 200, resp.text
            self.broadcasts.append(n)
            self.unicasts[user].append(n)
            n += 1
            await asyncio.sleep(1 / rate)

    def check(self, consumers: list[Consumer], users: list[str]) -> None:
        for c, user in zip(consumers, users, strict=True):
            assert c.data("broadcast") == self.broadcasts, f"{user}: broadcasts differ"
            assert c.data("user") == self.unicasts[user], f"{user}: unicasts differ"
            assert not c.recoveries, f"{user}: lost history {c.recoveries}"


def everyone_has(pub: Publisher, consumers: list[Consumer], users: list[str]) -> Callable[[],
                                                                                        bool]:
    return lambda: all(
        len(c.data("broadcast")) == len(pub.broadcasts)
        and len(c.data("user")) == len(pub.unicasts[u])
        for c, u in zip(consumers, users, strict=True)
    )
