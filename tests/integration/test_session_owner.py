"""A session belongs to the user who first bound it, with real Redis (DESIGN 6: sb:session).

Naming another user's session is refused 4004; the refused connection's clean-up must not
make the session its own, or the intruder would resume it next time and its owner be refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients import WsClient, until
from tests.integration.cluster import cluster
from tests.support import RedisServer

pytestmark = pytest.mark.integration


async def test_a_refused_intruder_never_takes_the_session_over(
    redis_server: RedisServer, logdir: Path
) -> None:
    with cluster(redis_server, logdir, gateways=1) as c:
        alice = await WsClient(c.ws_url(0, "alice")).start()
        assert alice.welcome is not None
        session = alice.welcome["session"]
        await alice.close()
        key = f"sb:session:{session}"
        await until(lambda: redis_server.cli("GET", key).strip() == "alice", 5,
                    "alice's session outlives her connection")

        for _ in range(2):  # the second try would be welcomed if the first took it over
            bob = await WsClient(c.ws_url(0, "bob", session=session)).start()
            await until(lambda bob=bob: bob.closed, 5, "bob refused")
            assert bob.close_code == 4004 and bob.welcome is None
            # bob's connection was mapped before the refusal; its clean-up is flushed in a
            # batch: wait until his map entry is gone, then check who owns the session
            await until(lambda: redis_server.cli("HLEN", "sb:{u:bob}:conns").strip() == "0",
                        5, "bob's connection unregistered")
            assert redis_server.cli("GET", key).strip() == "alice"

        again = await WsClient(c.ws_url(0, "alice", session=session)).start()
        assert again.welcome is not None and again.welcome["resumed"] is True
        await again.close()
