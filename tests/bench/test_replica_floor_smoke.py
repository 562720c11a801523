"""``bench/replica_floor.py`` runs end to end on a few small blocks and prints the
figures it promises; it checks the JSON's shape and arithmetic, never a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "replica_floor.py"


def test_a_small_run_prints_the_costs_and_the_bounds_they_set() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", "1", "--blocks", "2", "--block", "1000",
         "--request", "500"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    per = figures["us_per_transfer"]
    assert set(per) == {"decode", "execute", "verify", "total"}
    assert all(per[k] > 0 for k in ("decode", "execute", "verify"))
    assert abs(per["total"] - (per["decode"] + per["execute"] + per["verify"])) < 0.05
    ceilings = figures["ceilings"]
    expected = figures["cpus"] * 1e6 / (ceilings["replicas"] * per["total"])
    assert abs(ceilings["throughput_per_s"] - expected) / expected < 0.01
    assert ceilings["critical_path_ms"] > 0 and figures["request"] == 500


def test_bad_counts_are_refused_with_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--blocks", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2 and "positive" in done.stderr
