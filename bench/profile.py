"""An optional py-spy profile of one part during the full-speed phase, and its top frames.

py-spy is not a dependency of the project: `--profile PART` needs it on PATH or in the
virtualenv (`.venv/bin/pip install py-spy`). The profile is written in speedscope
format (open it at speedscope.app) next to the report, and summarised in the report:
the frames where the samples were (self), the innermost frame of the project's own code
above each sample, and the packages the self time was in.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parents[1]) + "/"


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, output: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    """Record `pid` for `seconds` without pausing it (sampling costs py-spy's own CPU)."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    return subprocess.Popen(  # noqa: S603 (py-spy on our own child)
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            str(rate),
            "--format",
            "speedscope",
            "--output",
            str(output),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _frame_name(frame: dict[str, Any]) -> str:
    file = frame.get("file") or ""
    for marker in ("site-packages/", ROOT, "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    line = frame.get("line")
    return f"{frame.get('name', '?')} ({file}:{line})" if file else str(frame.get("name", "?"))


def _own(frame: dict[str, Any]) -> bool:
    file = frame.get("file") or ""
    return file.startswith(ROOT) and "site-packages" not in file


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """The top frames by self time, by the innermost frame of our own code, by package.

    Shares are of the sampled time of every thread (py-spy leaves idle time out). Code
    run inside SQLAlchemy's greenlets is sampled with a stack that starts in the greenlet,
    so such samples have no frame of ours above the library: they count as
    "(library only)" in `top_own`.
    """
    document = json.loads(path.read_text())
    frames = document["shared"]["frames"]
    self_counts: Counter[int] = Counter()
    own: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0.0
    for profile in document["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=False):
            if not stack:
                continue
            total += weight
            self_counts[stack[-1]] += weight
            mine = [i for i in stack if _own(frames[i])]
            own[_frame_name(frames[mine[-1]]) if mine else "(library only)"] += weight
            modules[_module(frames[stack[-1]].get("file") or "?")] += weight

    def rows(counter: Counter[Any], name: Any) -> list[dict[str, Any]]:
        return [
            {"frame": name(key), "share": round(count / total, 3) if total else 0.0}
            for key, count in counter.most_common(top)
        ]

    return {
        "seconds_sampled": round(total, 2),
        "file": str(path),
        "top_self": rows(self_counts, lambda i: _frame_name(frames[i])),
        "top_own": rows(own, lambda k: k),
        "self_by_package": rows(modules, lambda m: m),
    }


def _module(file: str) -> str:
    """The package a file belongs to: `sqlalchemy`, `asyncio`, `saga`, ..."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    if file.startswith(ROOT):
        return file.split(ROOT, 1)[1].split("/", 1)[0]
    if "lib/python3" in file:
        rest = file.split("lib/python3", 1)[1].split("/", 2)
        return "stdlib:" + (rest[1].removesuffix(".py") if len(rest) > 1 else "?")
    return file or "?"
