"""End to end: ``aegis cluster init``, four real replica processes on loopback, the Python
client.  Every process is started here and stopped here by its PID."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ledger import Account, CreateTransferResult, Transfer
from node.client import Client, ClientError

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 20.0


def _aegis(*args: str) -> list[str]:
    return [sys.executable, "-m", "node.cli", *args]


def _start(cluster: Path, replica: int) -> subprocess.Popen[bytes]:
    config = cluster / f"replica-{replica}" / "node.toml"
    with (cluster / f"replica-{replica}" / "test.log").open("ab") as log:
        return subprocess.Popen(
            _aegis("node", "start", "--config", str(config)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip


def _stop(processes: dict[int, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        time.sleep(0.1)


def _until_agreed(client: Client) -> None:
    """Until all four replicas report one FINAL height and one state hash."""

    def agreed() -> bool:
        statuses = [_status(client, i) for i in range(4)]
        heights = {s.get("final_height") for s in statuses}
        hashes = {s.get("state_hash") for s in statuses}
        return len(heights) == 1 and None not in heights and len(hashes) == 1

    _eventually(agreed, "all four replicas at one height with one state hash")


def _status(client: Client, replica: int) -> dict[str, object]:
    try:
        return client.status(replica)
    except ClientError:
        return {}


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    command = _aegis("cluster", "init", "--replicas", "4", "--dir", str(tmp_path / "c"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return tmp_path / "c"


@contextlib.contextmanager
def _replicas(cluster: Path) -> Iterator[dict[int, subprocess.Popen[bytes]]]:
    processes = {i: _start(cluster, i) for i in range(4)}
    try:
        yield processes
    finally:
        _stop(processes)


def _tls12_refused(address: str, cluster: Path) -> bool:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cluster / "ca.crt")
    context.check_hostname = False
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cluster / "client-0" / "tls.crt", cluster / "client-0" / "tls.key")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            context.wrap_socket(raw, server_hostname="replica-0").close()
        except ssl.SSLError:
            return True
    return False


def test_four_processes_agree_survive_a_crash_and_stop_cleanly(cluster: Path) -> None:
    accounts = [Account(id=i, ledger=1, code=1) for i in range(1, 9)]
    with (
        _replicas(cluster) as processes,
        Client.from_file(str(cluster / "client-0" / "client.toml"), timeout_s=10) as client,
    ):
        _eventually(lambda: all(_status(client, i) for i in range(4)), "all replicas answer")
        twin = _start(cluster, 0)  # a second replica 0: its WAL is locked, it must not run
        assert twin.wait(20) == 1
        assert "is in use by another process" in (cluster / "replica-0" / "test.log").read_text()
        assert client.create_accounts(accounts).codes == (0,) * 8
        for batch in range(3):
            transfers = [
                Transfer(id=batch * 100 + k + 1, debit_account_id=1 + k % 8,
                         credit_account_id=1 + (k + 1) % 8, amount=7, ledger=1, code=1)
                for k in range(40)
            ]  # fmt: skip
            answer = client.create_transfers(transfers)
            assert answer.codes == (0,) * 40 and answer.level.name == "FINAL"
        bad = Transfer(id=999, debit_account_id=1, credit_account_id=77, amount=1, ledger=1, code=1)
        (code,) = client.create_transfers([bad]).codes
        assert code == CreateTransferResult.CREDIT_ACCOUNT_NOT_FOUND
        assert _tls12_refused(client.config.replicas[0].address, cluster)

        # Replica 3 crashes (SIGKILL); three replicas are a quorum and go on.
        os.kill(processes[3].pid, signal.SIGKILL)
        processes[3].wait()
        late = [Transfer(id=500, debit_account_id=2, credit_account_id=3, amount=1, ledger=1,
                         code=1)]  # fmt: skip
        assert client.create_transfers(late).codes == (0,)
        processes[3] = _start(cluster, 3)  # recovers from its WAL, catches up from peers

        _until_agreed(client)
        balances = [client.lookup_accounts(list(range(1, 9)), replica=i) for i in range(4)]
        assert balances[0] == balances[1] == balances[2] == balances[3]
        debits = {a.id: a.debits_posted for a in balances[0]}
        assert debits[1] == 3 * 5 * 7 and debits[2] == 3 * 5 * 7 + 1
        assert len(client.lookup_transfers([1, 140, 240, 500, 999], replica=3)) == 4
    for replica, process in processes.items():
        assert process.returncode == 0, (replica, (cluster / f"replica-{replica}" / "test.log"))
        log = (cluster / f"replica-{replica}" / "test.log").read_text()
        assert f"replica {replica} stopped" in log


def test_cluster_up_shows_status_and_stops_its_replicas_on_sigint(cluster: Path) -> None:
    up = subprocess.Popen(
        _aegis("cluster", "up", "--dir", str(cluster), "--interval", "0.5"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    lines: list[str] = []
    watchdog = threading.Timer(45, up.kill)  # a hung supervisor must not hang the suite
    watchdog.start()
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            if sum(bool(re.match(r"\s+\d\s+bft\s", x)) for x in lines[-4:]) == 4:
                break  # a table with four replicas in BFT mode
        os.kill(up.pid, signal.SIGINT)
        rest, _ = up.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if up.poll() is None:
            os.kill(up.pid, signal.SIGKILL)
            up.wait()
    output = "".join(lines) + rest
    assert up.returncode == 0, output
    assert "stopped: exit codes 0, 0, 0, 0" in output
    pids = [int(p) for p in re.findall(r"\d+", output.split("PIDs ", 1)[1].split("]", 1)[0])]
    assert len(pids) == 4
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped by 'cluster up': gone
