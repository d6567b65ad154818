"""The router: Switchboard's stateless HTTP API (DESIGN section 9).

Backend services publish here; the router runs the publish script in Redis and answers only
after it ran, so a 2xx means the message is in the replay buffer. It also answers presence and
cluster queries and asks gateways to disconnect a user.

Modules, one job each:

- :mod:`router.validation` — pure parsing and validation of request bodies (no I/O)
- :mod:`router.errors` — the error hierarchy every non-2xx answer comes from
- :mod:`router.auth` — API key check (constant time)
- :mod:`router.bodies` — reading bodies under a size limit, answering JSON or msgpack
- :mod:`router.publish`, :mod:`router.users`, :mod:`router.cluster`, :mod:`router.probes` — routes
- :mod:`router.models` — pydantic models, for the OpenAPI document only
- :mod:`router.metrics`, :mod:`router.middleware` — Prometheus metrics
- :mod:`router.app` — the FastAPI application factory; :mod:`router.main` — the process
"""
