"""Entry point of ``switchboard webhooks``: the dispatcher loops, /metrics, and a clean stop."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import start_http_server

from switchboard.config import WebhookSettings
from switchboard.store import connect
from switchboard.webhooks.dispatcher import Dispatcher
from switchboard.webhooks.metrics import WebhookMetrics

log = logging.getLogger("switchboard.webhooks")


async def serve(settings: WebhookSettings) -> int:
    metrics = WebhookMetrics()
    start_http_server(settings.webhook_port, settings.host, registry=metrics.registry)
    redis = connect(settings.redis_url, settings.redis_timeout, reconnect_retry=True)
    dispatcher = Dispatcher(settings, redis, metrics)
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
    await redis.aclose()
    return code


def run(settings: WebhookSettings) -> int:
    """Run until SIGTERM; ``switchboard.cli`` has checked the settings."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
