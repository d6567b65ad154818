"""The gateway process: holds WebSocket and SSE connections and delivers messages.

docs/architecture.md draws the layers and walks a message and a resume through them.

I/O-free core: :mod:`gateway.wire` (encoding), :mod:`gateway.session` (positions, dedupe,
buffering before welcome), :mod:`gateway.hub` (who receives what), :mod:`gateway.tracker`
(gaps and epochs per stream), :mod:`gateway.resume`, :mod:`gateway.handshake`,
:mod:`gateway.balance`, :mod:`gateway.admission`, :mod:`gateway.ratelimit`.
Ports: :mod:`gateway.ports` (what flows may use), :mod:`gateway.errors` (the exception tree).
Flows: :mod:`gateway.welcome`, :mod:`gateway.commands`, :mod:`gateway.attach`,
:mod:`gateway.delivery`, :mod:`gateway.mover`.
Thin asyncio layer: :mod:`gateway.connection` and :mod:`gateway.server` (drive websockets'
Sans-I/O ``ServerProtocol``), :mod:`gateway.transport` (write-only WS and SSE transports).
Backplanes: :mod:`gateway.backplane` (Redis, with :mod:`gateway.pubsub`), :mod:`gateway.memory`
(in memory, for tests). :mod:`gateway.app` is the composition root.
"""
