"""The gateway process: holds WebSocket and SSE connections and delivers messages.

I/O-free core: :mod:`gateway.wire` (encoding), :mod:`gateway.session` (positions, dedupe,
buffering before welcome), :mod:`gateway.hub` (who receives what), :mod:`gateway.ratelimit`.
Thin asyncio layer: :mod:`gateway.server` (drives websockets' Sans-I/O ``ServerProtocol``),
:mod:`gateway.transport` (write-only WS and SSE transports), :mod:`gateway.backplane` (Redis),
:mod:`gateway.app` (wiring and lifecycle).
"""
