"""``aegis sim`` and ``python -m sim`` as an engineer uses them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _aegis() -> str:
    return shutil.which("aegis", path=str(Path(sys.executable).parent)) or "aegis"


def test_run_prints_summary_and_trace_hash(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    done = _run(
        _aegis(), "sim", "run", "--seed", "5", "--scenario", "leader-crash", "--trace", str(trace)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^blocks decided\s+\d+$", done.stdout, re.M)
    assert re.search(r"^check: agreement\s+ok$", done.stdout, re.M)
    hash_line = re.search(r"^trace hash\s+([0-9a-f]{16})$", done.stdout, re.M)
    assert hash_line
    assert "install regency" in trace.read_text()
    again = _run(sys.executable, "-m", "sim", "run", "--seed", "5", "--scenario", "leader-crash")
    assert hash_line.group(1) in again.stdout  # python -m sim: same seed, same hash


def test_fuzz_sweeps_and_scenarios_lists() -> None:
    done = _run(_aegis(), "sim", "fuzz", "--seeds", "1..3", "--scenario", "happy")
    assert done.returncode == 0
    assert "3 runs (1 scenarios x 3 seeds)" in done.stdout and "0 failed" in done.stdout
    assert "3/3" in done.stderr  # the progress bar
    listing = _run(_aegis(), "sim", "scenarios").stdout
    assert "equivocating-leader" in listing and "byzantine-stopdata" in listing


def test_bad_arguments_are_clear() -> None:
    done = _run(_aegis(), "sim", "run", "--seed", "1", "--scenario", "nope")
    assert done.returncode == 2 and "unknown scenario 'nope'" in done.stderr
    done = _run(_aegis(), "sim", "run", "--seed", "1", "--replicas", "5")
    assert done.returncode == 2 and "3f+1" in done.stderr
    done = _run(_aegis(), "sim", "fuzz", "--seeds", "9..2")
    assert done.returncode == 2 and "A <= B" in done.stderr


def test_compare_prints_both_modes_side_by_side() -> None:
    done = _run(
        _aegis(), "sim", "compare", "--scenario", "partial-partition", "--seeds", "1..2", "--json"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    bft, fallback = report["modes"]["bft-only"], report["modes"]["bft+fallback"]
    assert fallback["transfers_committed_before_heal"] > bft["transfers_committed_before_heal"]
    assert report["failures"] == []
    table = _run(_aegis(), "sim", "compare", "--scenario", "happy", "--seeds", "1..2")
    assert table.returncode == 0
    assert "BFT+fallback" in table.stdout
    assert "same final ledger state: 2 of 2 seeds" in table.stdout


def test_run_reports_the_fallback_and_can_switch_it_off() -> None:
    done = _run(_aegis(), "sim", "run", "--seed", "1", "--scenario", "partial-partition")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^fallback epochs\s+[1-9]", done.stdout, re.M)
    assert re.search(r"^check: S2 provisional kept\s+ok$", done.stdout, re.M)
    off = _run(_aegis(), "sim", "run", "--seed", "1", "--scenario", "partial-partition",
               "--no-fallback")  # fmt: skip
    assert off.returncode == 0 and re.search(r"^fallback epochs\s+off$", off.stdout, re.M)
