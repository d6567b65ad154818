"""The router process: ``switchboard router`` calls :func:`run`."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Generator
from urllib.parse import urlsplit

import uvicorn

from router.app import create_app
from switchboard import limits
from switchboard.config import RouterSettings

log = logging.getLogger("switchboard.router")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the SIGTERM/SIGINT that stopped it once it has shut down, which
            # would kill us by the signal; a signalled, graceful shutdown is a clean exit (0).
            self._captured_signals.clear()


def redis_location(url: str) -> str:
    """host:port/db of a Redis URL, without credentials, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}"


def run(settings: RouterSettings) -> int:
    if not settings.api_keys:
        raise SystemExit(
            "switchboard router: no API keys configured; set --api-keys or "
            "SWITCHBOARD_API_KEYS (comma-separated) so publishers can authenticate"
        )
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Every publisher connection (and each Redis connection) is a file descriptor.
    open_files, _ = limits.raise_nofile_limit()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.router_port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        log_level="info",
        access_log=False,  # one line per publish is noise; /metrics counts requests
        server_header=False,
        lifespan="on",
    )
    server = _Server(config)
    log.info("router on http://%s:%d, redis at %s, %d API key(s), open files limit %d",
             settings.host, settings.router_port, redis_location(settings.redis_url),
             len(settings.api_keys), open_files)
    server.run()
    return 0 if server.started else 1
