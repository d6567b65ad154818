"""A small real cluster for integration tests: redis-server, gateways, a router."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from switchboard.auth import mint
from tests.support import API_KEY, JWT_SECRET, Proc, RedisServer, start_gateway, start_router


@dataclass
class Cluster:
    redis: RedisServer
    gateways: list[Proc]
    router: Proc
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.router.port}",
            headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10,
        )

    def ws_url(self, gw: int, user: str, **params: str) -> str:
        query = "&".join([f"token={token(user)}", *(f"{k}={v}" for k, v in params.items())])
        return f"ws://127.0.0.1:{self.gateways[gw].port}/ws?{query}"

    def sse_path(self, user: str) -> str:
        return f"/sse?token={token(user)}"

    def publish(self, **body: Any) -> dict[str, Any]:
        resp = self.http.post("/v1/publish", json=body)
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    def publish_batch(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        resp = self.http.post("/v1/publish/batch", json={"messages": messages})
        assert resp.status_code == 200, resp.text
        results: list[dict[str, Any]] = resp.json()["results"]
        return results

    def metric(self, gw: int, name: str, **labels: str) -> float:
        """Sum of a metric's samples on one gateway, filtered by labels."""
        text = httpx.get(f"http://127.0.0.1:{self.gateways[gw].port}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, label_text = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total


def token(user: str, **kwargs: Any) -> str:
    return mint(JWT_SECRET, user, **kwargs)


@contextmanager
def cluster(redis: RedisServer, logdir: Path, gateways: int = 2,
            **gateway_env: str) -> Iterator[Cluster]:
    started: list[Proc] = []
    try:
        for _ in range(gateways):
            started.append(start_gateway(redis, logdir, **gateway_env))
        router = start_router(redis, logdir)
        started.append(router)
        c = Cluster(redis, started[:gateways], router)
        yield c
        c.http.close()
    finally:
        for proc in started:
            proc.stop()
