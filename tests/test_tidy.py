"""House rules that keep the cores deterministic (STYLE.md habits 1, 2, 9)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORES = ["ledger", "consensus", "agents", "finality", "audit_chain"]
# Modules that reach the outside world or a source of nondeterminism.
FORBIDDEN = {"socket", "asyncio", "threading", "multiprocessing", "subprocess", "time", "os",
             "random", "datetime", "secrets", "uuid", "selectors", "signal", "io",
             "pathlib"}  # fmt: skip


def _core_files() -> list[Path]:
    files = []
    for package in CORES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "anchor" not in path.relative_to(ROOT).parts:  # anchor adapters may do IO
                files.append(path)
    return files


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_cores_do_no_io(path: Path) -> None:
    assert not _imports(path) & FORBIDDEN


@pytest.mark.parametrize(
    "path", sorted((ROOT / "ledger").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_ledger_is_stdlib_only(path: Path) -> None:
    outside = {n for n in _imports(path) if n not in sys.stdlib_module_names and n != "ledger"}
    assert not outside


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom random import random\n")
    assert _imports(bad) & FORBIDDEN == {"time", "random"}
