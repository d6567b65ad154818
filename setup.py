"""The server distribution's dependencies, which pin ``switchboard-client`` to VERSION.

Everything else is in pyproject.toml. The pin is computed here because pyproject.toml cannot
read a file into a requirement, and the server speaks exactly its own client's protocol.
"""

from pathlib import Path

from setuptools import setup

VERSION = (Path(__file__).parent / "VERSION").read_text().strip()

setup(install_requires=[
    f"switchboard-client=={VERSION}",
    "websockets>=14,<18",
    "redis[hiredis]>=5.0",
    "msgpack>=1.0",
    "orjson>=3.9",
    "prometheus-client>=0.20",
    "PyJWT[crypto]>=2.8",
    "fastapi>=0.110",
    "uvicorn>=0.29",
    # the gateway's backend proxy (gateway/proxy.py; imported only when a proxy URL is set)
    "httpx>=0.27,<1",
    "uvloop>=0.19; sys_platform != 'win32'",
])
