"""The ``aegis`` console script as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _aegis(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("aegis", path=str(Path(sys.executable).parent)) or "aegis"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


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
