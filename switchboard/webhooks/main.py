"""Entry point of ``switchboard webhooks``: the dispatcher loops, /metrics, and a clean stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from prometheus_client import start_http_server

from switchboard import whcontract as wh
from switchboard.clusterclient import connect_cluster
from switchboard.clusterpipe import ClusterPipelined
from switchboard.config import WebhookSettings
from switchboard.redisurl import is_cluster
from switchboard.store import connect
from switchboard.webhooks.dispatcher import Dispatcher
from switchboard.webhooks.metrics import WebhookMetrics

log = logging.getLogger("switchboard.webhooks")


async def serve(settings: WebhookSettings) -> int:
    metrics = WebhookMetrics()
    start_http_server(settings.webhook_port, settings.host, registry=metrics.registry)
    redis, peeker = open_redis(settings)
    dispatcher = Dispatcher(settings, redis, metrics, peeker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.create_task(dispatcher.run())
    log.info("webhook dispatcher %s posting to %s; metrics on http://%s:%d/metrics",
             dispatcher.id, settings.webhook_url, settings.host, settings.webhook_port)
    await asyncio.wait([work, asyncio.create_task(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    work.cancel()
    code = 0
    try:
        await work
    except asyncio.CancelledError:
        pass
    except Exception:  # a bug: stop, but hand the lease over first
        log.exception("webhook dispatcher failed")
        code = 1
    await dispatcher.release()
    if peeker is not None:
        peeker.close()
    await redis.aclose()
    return code


def open_redis(settings: WebhookSettings) -> tuple[Any, ClusterPipelined | None]:
    """redis-py's client; on Redis Cluster also the pipelined links that look at all the
    partitions: a quarter of the CPU redis-py's cluster pipeline spends on those 16,384
    calls (``python -m loadtest.webhook_look``)."""
    if not is_cluster(settings.redis_url):
        return connect(settings.redis_url, settings.redis_timeout, reconnect_retry=True), None
    name = f"{settings.prefix}webhooks"
    client, url = connect_cluster(settings.redis_url, settings.redis_timeout, client_name=name)
    return client, ClusterPipelined(client, url, settings.redis_timeout, client_name=name,
                                    scripts=[wh.PEEK])


def run(settings: WebhookSettings) -> int:
    """Run until SIGTERM; ``switchboard.cli`` has checked the settings."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
