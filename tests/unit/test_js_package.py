"""client/js as an npm package: one version everywhere, no runtime dependencies, the right files.

The project's version lives in ``VERSION`` at the repository root; the npm package and the
``VERSION`` the module exports (which browsers get from ``/client.js``) must say the same.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest

from tests.support import ROOT

JS = ROOT / "client" / "js"
# What `npm publish` ships; npm adds package.json and README.md by itself.
SHIPPED = {"package.json", "README.md", "switchboard.js", "switchboard.d.ts"}


def package() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((JS / "package.json").read_text())
    return doc


def test_one_version_for_the_project_the_npm_package_and_the_module() -> None:
    project = (ROOT / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project), f"VERSION holds {project!r}"
    module = re.search(r'^export const VERSION = "([^"]+)";$',
                       (JS / "switchboard.js").read_text(), re.MULTILINE)
    assert module, "switchboard.js exports no VERSION constant"
    lock = json.loads((JS / "package-lock.json").read_text())
    assert {
        "package.json": package()["version"],
        "switchboard.js": module.group(1),
        "package-lock.json": lock["version"],
        "package-lock.json root package": lock["packages"][""]["version"],
    } == dict.fromkeys(["package.json", "switchboard.js", "package-lock.json",
                        "package-lock.json root package"], project)


def test_package_json_an_es_module_with_types_and_no_runtime_dependencies() -> None:
    pkg = package()
    assert pkg["type"] == "module"
    assert pkg["exports"]["."] == {"types": "./switchboard.d.ts", "default": "./switchboard.js"}
    assert pkg["types"] == "./switchboard.d.ts"
    assert "dependencies" not in pkg and "peerDependencies" not in pkg
    assert pkg["engines"]["node"] == ">=18"
    # dev dependencies are pinned exactly, and the lockfile is what `npm ci` installs
    lock = json.loads((JS / "package-lock.json").read_text())
    for name, version in pkg["devDependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned: {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert lock["packages"][""]["devDependencies"] == pkg["devDependencies"]


def test_npm_pack_ships_exactly_the_module_its_types_and_readme() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed; make test installs it")
    run = subprocess.run([npm, "pack", "--dry-run", "--json", "--ignore-scripts"], cwd=JS,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"npm pack failed:\n{run.stdout}\n{run.stderr}"
    [packed] = json.loads(run.stdout)
    assert (packed["name"], packed["version"]) == ("switchboard-client", package()["version"])
    assert {f["path"] for f in packed["files"]} == SHIPPED
