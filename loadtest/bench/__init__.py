"""Benchmark harness: raw-socket WebSocket clients in worker processes, Switchboard and a
plain-websockets baseline measured side by side. Run ``python -m loadtest.bench --help``."""
