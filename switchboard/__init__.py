"""Switchboard: a horizontally scaled WebSocket + SSE gateway cluster over Redis.

Shared core used by the gateway, the router and the CLI:

- :mod:`switchboard.config`     frozen settings objects, one per process kind
- :mod:`switchboard.closecodes` close codes and what clients should do about them
- :mod:`switchboard.contract`   the Redis contract: keys, Lua scripts, envelopes
- :mod:`switchboard.streams`    stream names, offsets, cursors
- :mod:`switchboard.auth`       JWT verification and minting
"""

__version__ = "0.1.0"
