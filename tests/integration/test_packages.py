"""The two Python distributions as users get them: built with ``python -m build``, and the
client wheel installed alone in a fresh venv, where it talks to a live cluster.

A mobile or backend developer installs only ``switchboard-client``: it must bring websockets
and msgpack and nothing of the server (no FastAPI, uvicorn, redis), and still reconnect and
resume without losing a message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster, cluster, token
from tests.support import RedisServer

# two isolated builds and a fresh venv, each fetching from the index on a fresh machine
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "VERSION").read_text().strip()
# What the client distribution may pull in (its own deps and theirs), and what it must not
SERVER_ONLY = ("switchboard", "gateway", "router", "fastapi", "uvicorn", "redis", "orjson")

# Run by the fresh venv's interpreter in isolated mode (-I: no PYTHONPATH, no user site, no
# script directory), from a directory outside the checkout, so only the wheel can be imported.
CLIENT_SCRIPT = r"""
import asyncio, importlib.util, json, sys

from switchboard_client import Client, Message, Recovery, __version__

url, token, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
print(json.dumps({"version": __version__,
                  "server_importable": [m for m in sys.argv[4].split(",")
                                        if importlib.util.find_spec(m) is not None]}),
      flush=True)

async def main() -> None:
    async with Client(url, token=token) as c:
        print(json.dumps({"ready": c.session}), flush=True)
        got = 0
        async for item in c:
            if isinstance(item, Recovery):
                print(json.dumps({"lost": sorted(item.streams)}), flush=True)
            elif isinstance(item, Message) and item.stream == "user":
                print(json.dumps({"offset": item.offset, "data": item.data,
                                  "reconnects": c.stats.reconnects}), flush=True)
                got += 1
                if got == want:
                    return

asyncio.run(asyncio.wait_for(main(), 60))
"""


def build(source: Path, out: Path) -> tuple[Path, Path]:
    """sdist then a wheel from it (python -m build's default): what a release uploads."""
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0], sdists[0]


def metadata(wheel: Path) -> tuple[list[str], dict[str, list[str]]]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    return names, {key: meta.get_all(key) or [] for key in ("Name", "Version", "Requires-Dist")}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    client_wheel, _ = build(ROOT / "client" / "python", out / "client")
    server_wheel, _ = build(ROOT, out / "server")
    return {"client": client_wheel, "server": server_wheel}


def test_client_distribution_holds_only_the_client(wheels: dict[str, Path]) -> None:
    names, meta = metadata(wheels["client"])
    assert meta["Name"] == ["switchboard-client"] and meta["Version"] == [VERSION]
    requires = sorted(r.split(">")[0].split("<")[0].split("=")[0] for r in meta["Requires-Dist"])
    assert requires == ["msgpack", "websockets"]
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"switchboard_client"}
    assert "switchboard_client/py.typed" in names


def test_server_distribution_pins_its_client_and_ships_the_browser_sdk(
        wheels: dict[str, Path]) -> None:
    names, meta = metadata(wheels["server"])
    assert meta["Name"] == ["switchboard"] and meta["Version"] == [VERSION]
    assert f"switchboard-client=={VERSION}" in meta["Requires-Dist"]
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"switchboard", "gateway", "router"}
    # gateway/static/client.js is a symlink in the checkout: the wheel must hold the module
    with zipfile.ZipFile(wheels["server"]) as z:
        served = z.read("gateway/static/client.js")
    assert served == (ROOT / "client" / "js" / "switchboard.js").read_bytes()
    assert {"router/static/admin.html", "router/static/admin.js"} <= set(names)


@pytest.fixture(scope="module")
def client_venv(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheels["client"])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return python


@pytest.fixture
def live(redis_server: RedisServer, logdir: Path) -> Iterator[Cluster]:
    with cluster(redis_server, logdir, gateways=1) as c:
        yield c


def read_event(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the script bounds itself (wait_for 60 s)
    assert line, f"client exited: {proc.wait(10)} {proc.stderr.read() if proc.stderr else ''}"
    event: dict[str, object] = json.loads(line)
    return event


def test_client_wheel_alone_reconnects_and_resumes(client_venv: Path, live: Cluster,
                                                   tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{live.gateways[0].port}/ws"
    proc = subprocess.Popen(
        [str(client_venv), "-I", "-c", CLIENT_SCRIPT, url, token("carol"), "6",
         ",".join(SERVER_ONLY)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = read_event(proc)
        assert first == {"version": VERSION, "server_importable": []}
        assert "ready" in read_event(proc)
        for i in range(3):
            live.publish(user="carol", data={"n": i})
        before = [read_event(proc) for _ in range(3)]
        # the router cuts every connection of carol (close 4201); what is published while
        # the client waits out its jitter must come with the resume, once
        resp = live.http.post("/v1/users/carol/disconnect", json={})
        assert resp.status_code == 200, resp.text
        for i in range(3, 6):
            live.publish(user="carol", data={"n": i})
        after = [read_event(proc) for _ in range(3)]
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    events = before + after
    assert [e["data"] for e in events] == [{"n": i} for i in range(6)]
    assert [e["offset"] for e in events] == list(range(1, 7))
    assert after[-1]["reconnects"] == 1
