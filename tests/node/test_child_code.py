"""Replica processes run the launcher's code, whatever directory they start from.

``python -m node.cli`` puts the working directory first on ``sys.path``: a benchmark
started from one checkout with another on ``PYTHONPATH`` (an A/B comparison) ran the
working directory's replicas in both arms.  ``node_command`` and ``child_env`` fix
the child to the code that launched it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from node.cluster import CODE_ROOT, child_env, node_command

IMPOSTOR = "impostor node package"


def _impostor(directory: Path) -> Path:
    package = directory / "node"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text(f"print({IMPOSTOR!r})\n")
    return directory


def test_a_plain_module_run_picks_the_working_directory_package(tmp_path: Path) -> None:
    """The hazard itself, so the test below is not vacuous."""
    where = _impostor(tmp_path)
    ran = subprocess.run(
        [sys.executable, "-m", "node.cli", "--help"],
        cwd=where, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert IMPOSTOR in ran.stdout


def test_a_replica_command_runs_the_launchers_code(tmp_path: Path) -> None:
    where = _impostor(tmp_path)
    ran = subprocess.run(
        node_command("--help"), cwd=where, env=child_env(), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert IMPOSTOR not in ran.stdout
    assert ran.returncode == 0 and "usage: aegis" in ran.stdout, ran.stderr
    probe = subprocess.run(
        [*node_command()[:2], "-c", "import node; print(node.__file__)"],
        cwd=where, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert Path(probe.stdout.strip()).resolve().parent.parent == CODE_ROOT
