"""py-spy around a bench phase, and a text summary of where the time went.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... COUNT`` per line).
:func:`summarize` turns them into the top functions by *self* samples (time spent in the
function's own code) and by *inclusive* samples (time with the function anywhere on the
stack), which is what BENCHMARKS.md's "Where the time goes" reports. Summarizing is pure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# "deliver (gateway/hub.py:83)" -> "deliver (gateway/hub.py)": lines split one function apart
_LINE = re.compile(r"^(.*) \((.*?):\d+\)$")


def pyspy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes] | None:
    """Sample ``pid`` for ``seconds`` into ``out`` (collapsed stacks); None without py-spy."""
    exe = pyspy()
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--rate", str(rate), "--format", "raw", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def short(frame: str) -> str:
    """A frame without its line number and with the path cut to package/module."""
    m = _LINE.match(frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    elif len(parts) > 2:
        parts = parts[-2:]
    return f"{func} ({'/'.join(parts)})"


def summarize(collapsed: str, top: int = 20) -> dict[str, Any]:
    """Top functions by self and by inclusive share of samples, from collapsed stacks."""
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";") if f]
        # the first entry may be the process/thread label py-spy adds, not a frame
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        total += count
        self_samples[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "percent": round(100 * c / total, 1), "samples": c}
                for f, c in counter.most_common(top)]

    return {"samples": total, "self": table(self_samples) if total else [],
            "inclusive": table(inclusive) if total else []}


def finish(proc: subprocess.Popen[bytes] | None, out: Path, timeout: float = 60) -> dict[str, Any]:
    """Wait for py-spy and summarize what it wrote (or say why there is nothing)."""
    if proc is None:
        return {"error": "py-spy is not installed (pip install -e '.[load]')"}
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not out.exists():
        return {"error": f"py-spy wrote nothing (exit {proc.returncode}); it needs ptrace"}
    summary = summarize(out.read_text(errors="replace"))
    summary["file"] = str(out)
    return summary
