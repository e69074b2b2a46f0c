"""`make peers` (bench/peers.sh) runs the shared harness against this checkout.

The harness itself takes minutes and root; here a stand-in harness records what it was
run with: from where, which peers, and the product queues its own lib.sh waits for.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "peers.sh"

STALE = "PRODUCT_QUEUES=(saga payment invoice email production)  # consumed: <namespace>.<name>\n"
FIXED = "PRODUCT_QUEUES=(payment invoice email production)  # consumed: <namespace>.<name>\n"
RUN_ALL = """#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
echo "dir=$PWD"
echo "peers=$PEERS"
echo "harness=$here"
grep '^PRODUCT_' "$here/lib.sh"
"""


def _harness(folder: Path, queues_line: str) -> Path:
    folder.mkdir()
    (folder / "lib.sh").write_text("# helpers\n" + queues_line + "PRODUCT_WORKERS=(relay saga)\n")
    (folder / "run_all.sh").write_text(RUN_ALL)
    return folder


def _run(harness: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PEERS", "PEERS_HARNESS")}
    environ.update(PEERS_HARNESS=str(harness), TMPDIR=str(tmp_path), **env)
    return subprocess.run(
        ["bash", str(SCRIPT)], env=environ, capture_output=True, text=True, check=False
    )


def test_a_harness_waiting_for_the_saga_queue_runs_as_a_copy_without_it(tmp_path: Path) -> None:
    harness = _harness(tmp_path / "peers", STALE)
    run = _run(harness, tmp_path)
    assert run.returncode == 0, run.stderr
    out = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line[:8])
    assert Path(out["dir"]).resolve() == ROOT  # the harness takes the product from there
    assert out["peers"] == "product celery naive"
    assert out["harness"] != str(harness)
    assert "PRODUCT_QUEUES=(payment invoice email production)" in run.stdout
    assert "PRODUCT_WORKERS=(relay saga)" in run.stdout  # only the queue list changes
    assert "{ns}.saga" in run.stderr  # and it says why
    assert (harness / "lib.sh").read_text().count(STALE) == 1  # the original untouched
    assert not Path(out["harness"]).exists()  # the copy is gone


def test_a_harness_that_no_longer_waits_for_it_runs_as_it_is(tmp_path: Path) -> None:
    harness = _harness(tmp_path / "peers", FIXED)
    run = _run(harness, tmp_path, PEERS="product celery")
    assert run.returncode == 0, run.stderr
    assert f"harness={harness}" in run.stdout
    assert "peers=product celery" in run.stdout
    assert run.stderr == ""


@pytest.mark.parametrize("missing", ["run_all.sh", "lib.sh"])
def test_no_harness_is_an_error_that_says_what_to_set(tmp_path: Path, missing: str) -> None:
    harness = _harness(tmp_path / "peers", FIXED)
    (harness / missing).unlink()
    run = _run(harness, tmp_path)
    assert run.returncode == 2
    assert "PEERS_HARNESS" in run.stderr
