"""The webhook contract's scripts (switchboard/whcontract.py), registered on one redis-py
client and called by their :class:`~switchboard.pipelined.Script`."""

from __future__ import annotations

from typing import Any

from switchboard.pipelined import Script


class Scripts:
    def __init__(self, redis: Any, *scripts: Script) -> None:
        self._registered = {s.sha: redis.register_script(s.source) for s in scripts}

    async def run(self, script: Script, keys: list[str], args: list[Any],
                  client: Any = None) -> Any:
        """EVALSHA, loading the script on NOSCRIPT; on ``client`` (a pipeline), queued."""
        return await self._registered[script.sha](keys=keys, args=args, client=client)
