"""``bench/cluster_throughput.py`` runs end to end and prints the figures it promises.

A smoke run with sub-second windows: real replica processes (and PySyncObj nodes when
the ``bench`` extra is installed), every one stopped by the script.  It checks the
shape of the JSON and that the replicas agreed, never a timing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "cluster_throughput.py"
HAS_PYSYNCOBJ = importlib.util.find_spec("pysyncobj") is not None
SYSTEMS = "aegis,pysyncobj-default,pysyncobj-tuned" if HAS_PYSYNCOBJ else "aegis"
LATENCY_FIELDS = {"ops_per_s", "latency_ms_p50", "latency_ms_p99"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_help_explains_the_options() -> None:
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--duration", "--runs", "--quick", "--batch", "--small-batch", "--systems"):
        assert option in done.stdout


def test_quick_run_prints_each_run_and_the_medians() -> None:
    # Small batches keep requests short enough to finish inside one-second windows.
    done = _run("--quick", "--duration", "1", "--warmup", "0.3", "--systems", SYSTEMS,
                "--batch", "200", "--latency-batch", "200",
                "--pysyncobj-in-flight", "16")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 2, done.stdout  # one run, then the medians
    run, summary = lines
    assert run["run"] == 1 and len(run["load_average_start"]) == 3
    aegis = run["aegis"]
    for phase in ("closed", "closed_small_batch", "half_peak", "half_peak_small_batch"):
        assert set(aegis[phase]) >= LATENCY_FIELDS, phase
        assert aegis[phase]["replicas"]["state_hashes_agree"], phase
        assert len(aegis[phase]["cpu_s_replicas"]) == 4
    assert aegis["closed"]["batch"] == 200 and aegis["closed_small_batch"]["batch"] == 10
    half = aegis["closed"]["ops_per_s"] / 2
    assert aegis["half_peak"]["offered_ops_per_s"] == pytest.approx(half, abs=0.1)
    assert summary["medians_of_runs"] == 1 and "load_average_max" in summary
    assert summary["checks"]["aegis_state_hashes_agree"]
    assert summary["checks"]["aegis_failed_requests"] == 0
    if HAS_PYSYNCOBJ:
        for name in ("pysyncobj-default", "pysyncobj-tuned"):
            assert set(run[name]["closed"]) >= LATENCY_FIELDS, name
            assert "half_peak" in run[name] and run[name]["counters"]["agree"], name
        assert {"vs_pysyncobj_default", "vs_pysyncobj_tuned"} <= set(summary["ratio"])
        assert "throughput_at_least_tuned_pysyncobj" in summary["target_met"]
    assert "p99_at_half_peak_at_most_50_ms" in summary["target_met"]
