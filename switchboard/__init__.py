"""Switchboard: a horizontally scaled WebSocket + SSE gateway cluster over Redis.

Shared core used by the gateway, the router and the CLI:

- :mod:`switchboard.config`     frozen settings objects, one per process kind
- :mod:`switchboard.closecodes` close codes and what clients should do about them
- :mod:`switchboard.contract`   the Redis contract: keys, Lua scripts, envelopes
- :mod:`switchboard.streams`    stream names, offsets, cursors
- :mod:`switchboard.auth`       JWT verification and minting
"""

from importlib.metadata import PackageNotFoundError, version

try:
    # VERSION's, through the installed distribution's metadata (pyproject reads that file)
    __version__ = version("switchboard")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"
