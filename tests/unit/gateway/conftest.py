from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.gateway.inproc import Env


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """Gateways on one in-memory cluster (tests/unit/gateway/inproc.py), closed afterwards."""
    e = Env()
    try:
        yield e
    finally:
        await e.close()
