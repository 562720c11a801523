"""``aegis cluster up``: the replicas of a cluster directory as child processes.

Guarantees: one ``aegis node start`` process per ``replica-*/node.toml``, each
in its own session (a terminal's Ctrl-C reaches only this supervisor) with its
log in ``replica-*/node.log``; a status table every ``interval_s``; on SIGINT or
SIGTERM every child gets SIGTERM by its PID, then SIGKILL by PID after
``STOP_WAIT_S`` if it has not exited.  Children are never looked up by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final, TextIO

from node.client import Client, ClientError
from node.config import load_client_config

STOP_WAIT_S: Final = 10.0
STATUS_TIMEOUT_S: Final = 1.0
CODE_ROOT: Final = Path(__file__).resolve().parent.parent  # the directory holding node/


def node_command(*args: str, python: Sequence[str] = ()) -> list[str]:
    """``aegis`` as a child process running this very code (run it with ``child_env``).

    ``-P`` keeps the working directory off the child's ``sys.path``: started from a
    directory that holds another ``node`` package (another checkout), ``python -m
    node.cli`` would run that one.  ``python``: options for the interpreter first
    (``-m cProfile -o FILE``)."""
    return [sys.executable, "-P", *python, "-m", "node.cli", *args]


def child_env() -> dict[str, str]:
    """The environment with this code's root first on ``PYTHONPATH``."""
    rest = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CODE_ROOT), rest]))}


def node_configs(directory: Path) -> list[Path]:
    configs = sorted(directory.glob("replica-*/node.toml"), key=lambda p: int(p.parent.name[8:]))
    if not configs:
        raise FileNotFoundError(f"no replica-*/node.toml under {directory}; run 'aegis cluster "
                                f"init --dir {directory}' first")  # fmt: skip
    return configs


def start_replicas(configs: Sequence[Path]) -> list[subprocess.Popen[bytes]]:
    processes = []
    for config in configs:
        with (config.parent / "node.log").open("ab") as log_file:
            processes.append(
                subprocess.Popen(
                    node_command("node", "start", "--config", str(config)),
                    env=child_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return processes


def stop_replicas(
    processes: Sequence[subprocess.Popen[bytes]], wait_s: float = STOP_WAIT_S
) -> None:
    """SIGTERM each by PID, wait, then SIGKILL by PID whatever is left."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def status_table(client: Client, count: int) -> list[str]:
    rows: list[dict[str, object] | str] = []
    for replica in range(count):
        try:
            rows.append(client.status(replica))
        except ClientError as error:
            rows.append(str(error))
    return status_lines(rows)


def status_lines(rows: list[dict[str, object] | str]) -> list[str]:
    """The table ``aegis cluster up`` prints: a status (``service.status_of``) or why
    the replica did not answer, per replica; notes flag what an operator should look at."""
    heights = [int(str(r["height"])) for r in rows if isinstance(r, dict)]
    top = max(heights, default=0)
    lines = ["replica  mode      regency  height  lag  pending  checkpoint  peers"]
    for replica, row in enumerate(rows):
        if isinstance(row, str):
            lines.append(f"{replica:>7}  down: {row}")
            continue
        height = int(str(row["height"]))
        peers = ",".join(str(p) for p in row["peers_connected"])  # type: ignore[attr-defined]
        notes = []
        fence = row.get("fenced")
        if isinstance(fence, dict):
            notes.append(f"fenced: {fence['reason']}")
        checkpoints = row.get("checkpoints")
        stable: object = "-"
        if isinstance(checkpoints, dict):
            stable = checkpoints["stable_height"]
            if checkpoints["not_persisted"]:
                notes.append(
                    f"{checkpoints['not_persisted']} checkpoints too large for the WAL: "
                    "a restart replays the blocks above the last persisted one"
                )
        note = "".join(f"  {n}" for n in notes)
        lines.append(
            f"{replica:>7}  {row['mode']!s:<8}  {row['regency']!s:>7}  {height:>6}  "
            f"{top - height:>3}  {row['pending_requests']!s:>7}  {stable!s:>10}  {peers}{note}"
        )
    return lines


def up(directory: Path, interval_s: float, out: TextIO) -> int:
    """Run the cluster until SIGINT/SIGTERM; 0 after a clean stop, 1 if a replica died."""
    configs = node_configs(directory)
    client_config = load_client_config(directory / "client-0" / "client.toml")
    stop = False

    def on_signal(number: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    previous = {n: signal.signal(n, on_signal) for n in (signal.SIGINT, signal.SIGTERM)}
    processes = start_replicas(configs)
    print(f"started {len(processes)} replicas: PIDs {[p.pid for p in processes]}; "
          f"logs in replica-*/node.log; Ctrl-C stops them", file=out, flush=True)  # fmt: skip
    died: list[int] = []
    try:
        with Client(client_config, timeout_s=STATUS_TIMEOUT_S) as client:
            next_status = time.monotonic() + interval_s
            while not stop:
                time.sleep(0.1)
                died = [i for i, p in enumerate(processes) if p.poll() is not None]
                if died:
                    print(f"replica(s) {died} exited; see their node.log", file=out, flush=True)
                    break
                if time.monotonic() >= next_status:
                    next_status += interval_s
                    print("\n".join(status_table(client, len(configs))), file=out, flush=True)
    finally:
        stop_replicas(processes)
        for number, handler in previous.items():
            signal.signal(number, handler)
    print("stopped: exit codes " + ", ".join(str(p.returncode) for p in processes), file=out)
    return 1 if died else 0
