"""``bench/checkpoint_costs.py`` runs end to end on a small ledger and prints the figures
it promises; it checks the shape of the JSON and that the rollback replayed something,
never a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "checkpoint_costs.py"


def test_a_small_run_prints_each_run_and_the_medians() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--transfers", "14000", "--block", "2000",
         "--accounts", "50", "--interval", "2", "--runs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line.get("run") for line in lines[:-1]] == [1, 2]
    medians = lines[-1]
    assert medians["medians_of"] == 2 and medians["blocks_replayed"] >= 1
    for key in ("snapshot_ms", "ledger_restore_ms", "rollback_ms_tracking", "rollback_ms_plain",
                "capture_ms_per_block", "read_model_apply_ms"):  # fmt: skip
        assert isinstance(medians[key], float), key
