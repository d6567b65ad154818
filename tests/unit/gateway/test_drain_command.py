"""The router's drain command as the gateway gets it: a ``drain`` control envelope starts the
same drain as SIGTERM, once, however often it comes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from switchboard import contract
from switchboard.contract import Control
from tests.unit.gateway.inproc import Env, publish, until


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = Env()
    yield e
    await e.close()


async def test_a_drain_envelope_drains_the_gateway_and_ends_its_run(env: Env) -> None:
    node = env.node(drain_window=0.2)
    clients = [await node.welcomed(f"u{i}") for i in range(3)]
    run = asyncio.ensure_future(node.gateway.run_until_stopped())
    await asyncio.sleep(0)
    assert not run.done()
    node.gateway.delivery.control(Control(contract.OP_DRAIN, ("admin",)))
    # again, as a retried command would: no second-signal abort
    node.gateway.delivery.control(Control(contract.OP_DRAIN, ("admin",)))
    await asyncio.wait_for(run, 5)
    assert [c.close_code for c in clients] == [1012] * 3
    assert all(c.of_type("reconnect")[-1]["reason"] == "drain" for c in clients)
    assert node.gateway_id not in env.cluster.registry


async def test_a_drain_envelope_without_a_drain_hook_is_ignored(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    node = env.node()
    client = await node.welcomed("alice")
    node.gateway.delivery._drain = None
    with caplog.at_level(logging.WARNING, logger="switchboard.gateway"):
        node.gateway.delivery.control(Control(contract.OP_DRAIN, ()))
    assert "nothing here can drain" in caplog.text
    # still serving: the client gets its messages and no reconnect
    publish(env.cluster, "broadcast", "still here")
    await until(lambda: [d for _, _, d in client.stream("broadcast")] == ["still here"],
                "delivery")
    assert not client.of_type("reconnect") and client.close_code is None


async def test_the_heartbeat_reports_live_deliveries(env: Env) -> None:
    node = env.node()
    await node.welcomed("alice")
    await node.welcomed("bob")
    publish(env.cluster, "broadcast", "hello")
    await until(lambda: node.gateway.metrics.delivered_total() == 2, "2 deliveries")
    await node.backplane.heartbeat()
    assert env.cluster.registry[node.gateway_id].delivered == 2
