"""The ``aegis`` console script as a user runs it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _aegis(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("aegis", path=str(Path(sys.executable).parent)) or "aegis"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_demo_runs_the_scripted_day() -> None:
    done = _aegis("demo")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    results = dict(re.findall(r"^\d\d:\d\d  (\d+) .*?  (\w+)$", out, re.MULTILINE))
    assert results["1004"] == "exceeds_credits"  # the failing payment
    assert results["1007"] == "linked_event_failed"  # the chain that rolled back
    assert results["1008"] == "exceeds_credits"
    assert results["1011"] == "ok" and results["1012"] == "ok"  # posted, voided
    assert results["1013"] == "pending_transfer_already_posted"
    assert "1003  client retries transfer 1003" in out and re.search(r"1003 .* exists$", out, re.M)
    assert "double entry holds: debits $946.50, credits $946.50, pending $0.00" in out
    assert re.search(r"^bob +\$45\.00 +\$200\.00 +\$0\.00 +\$155\.00$", out, re.MULTILINE)


def test_demo_is_deterministic() -> None:
    assert _aegis("demo").stdout == _aegis("demo").stdout


@pytest.mark.parametrize("args", [("--help",), ("demo", "--help")])
def test_help_explains(args: tuple[str, ...]) -> None:
    done = _aegis(*args)
    assert done.returncode == 0
    assert "ledger" in done.stdout.lower()


def test_unknown_command_is_a_clear_error() -> None:
    done = _aegis("frobnicate")
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr
    assert done.stdout == ""
