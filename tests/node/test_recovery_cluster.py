"""Crash recovery with real processes: four replicas on loopback (``test_cluster``'s
fixture and helpers), one follower's disk abused, a client writing all the while.

(a) SIGKILL of a follower at random moments under sustained traffic;
(b) garbage over the tail of a stopped follower's newest WAL segment;
(c) a stopped follower's newest snapshot deleted, then every snapshot deleted.

Each time the follower comes back, catches up to the others' height and state hash,
and every transfer the client saw acknowledged is on every replica."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from ledger import Account, Transfer
from node.client import Client, ClientError
from tests.node.test_cluster import (
    _eventually,
    _replicas,
    _start,
    _status,
    _until_agreed,
    cluster,
)

__all__ = ["cluster"]  # the fixture, shared with test_cluster

FOLLOWER = 3
KILLS = 4
ACCOUNTS = 8
TRANSFERS_PER_CALL = 20
LOOKUP_IDS_MAX = 4000


class Load(threading.Thread):
    """Sustained traffic: one create call after another, new ids each time.  Only what
    the cluster answered FINAL with every code 0 counts as acknowledged."""

    def __init__(self, cluster: Path) -> None:
        super().__init__(name="load", daemon=True)
        self.path = str(cluster / "client-0" / "client.toml")
        self.acknowledged: list[int] = []
        self.failed_calls = 0
        self.done = threading.Event()
        self.next_id = 10_000

    def run(self) -> None:
        with Client.from_file(self.path, timeout_s=10) as client:
            while not self.done.is_set():
                ids = range(self.next_id, self.next_id + TRANSFERS_PER_CALL)
                self.next_id += TRANSFERS_PER_CALL
                transfers = [
                    Transfer(id=i, debit_account_id=1 + i % ACCOUNTS,
                             credit_account_id=1 + (i + 1) % ACCOUNTS, amount=1, ledger=1,
                             code=1)
                    for i in ids
                ]  # fmt: skip
                try:
                    answer = client.create_transfers(transfers)
                except ClientError:
                    self.failed_calls += 1  # outcome unknown: not counted either way
                    continue
                assert answer.codes == (0,) * TRANSFERS_PER_CALL
                assert answer.level.name == "FINAL"
                self.acknowledged += ids

    def stop(self) -> None:
        self.done.set()
        self.join(30)
        assert not self.is_alive()

    def wait_for(self, count: int) -> None:
        _eventually(lambda: len(self.acknowledged) >= count, f"{count} transfers acknowledged")


def _setup(client: Client) -> None:
    _eventually(lambda: all(_status(client, i) for i in range(4)), "all replicas answer")
    accounts = [Account(id=i, ledger=1, code=1) for i in range(1, ACCOUNTS + 1)]
    assert client.create_accounts(accounts).codes == (0,) * ACCOUNTS


def _height(client: Client, replica: int) -> int:
    value = _status(client, replica).get("final_height", -1)
    assert isinstance(value, int)
    return value


def _deciding(client: Client, replica: int) -> None:
    """Wait until the replica decides a block: it is busy writing its WAL."""
    height = _height(client, replica)
    _eventually(lambda: _height(client, replica) > height, f"replica {replica} decides")


def _caught_up(client: Client, replica: int) -> None:
    """The replica answers and has reached the height the others had when asked."""
    target = max(_height(client, i) for i in range(4) if i != replica)
    _eventually(lambda: _height(client, replica) >= target, f"replica {replica} at h{target}")


def _agreed_and_nothing_lost(client: Client, load: Load) -> None:
    _until_agreed(client)
    ids = load.acknowledged
    assert ids, "the load got nothing acknowledged"
    for replica in range(4):
        found = 0
        for start in range(0, len(ids), LOOKUP_IDS_MAX):
            found += len(client.lookup_transfers(ids[start : start + LOOKUP_IDS_MAX], replica))
        assert found == len(ids), f"replica {replica} holds {found} of {len(ids)} acknowledged"


def _kill(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(20) == 0


def _log(cluster: Path, replica: int) -> str:
    return (cluster / f"replica-{replica}" / "test.log").read_text()


def _data(cluster: Path, replica: int) -> Path:
    return cluster / f"replica-{replica}" / "data"


def test_sigkill_of_a_follower_under_load_loses_nothing(cluster: Path) -> None:
    rng = random.Random(20)
    with (
        _replicas(cluster) as processes,
        Client.from_file(str(cluster / "client-0" / "client.toml"), timeout_s=10) as client,
    ):
        _setup(client)
        load = Load(cluster)
        load.start()
        try:
            load.wait_for(200)
            for kill in range(KILLS):
                _deciding(client, FOLLOWER)
                time.sleep(rng.uniform(0.0, 0.5))  # anywhere in its stream of WAL writes
                _kill(processes[FOLLOWER])
                before = len(load.acknowledged)
                time.sleep(rng.uniform(0.0, 0.5))
                processes[FOLLOWER] = _start(cluster, FOLLOWER)
                load.wait_for(before + 100)  # the others went on meanwhile
                _caught_up(client, FOLLOWER)
                log = _log(cluster, FOLLOWER)
                assert "fenced" not in log, "a SIGKILL leaves only a cut, never lost records"
                assert "damaged" not in log, kill
        finally:
            load.stop()
        _agreed_and_nothing_lost(client, load)
        cut_tails = _log(cluster, FOLLOWER).count("cut short (an unacknowledged write)")
        print(f"{KILLS} kills: {cut_tails} landed inside a WAL write (recovered as cut tails); "
              f"{len(load.acknowledged)} transfers acknowledged, {load.failed_calls} calls "
              f"failed over")  # fmt: skip


def _fence_in_status(client: Client) -> object:
    """The restarted follower's Status ``fenced`` field, once it answers (None if never)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return client.status(FOLLOWER).get("fenced")
        except ClientError:
            time.sleep(0.1)  # not listening yet
    return None


def test_garbage_over_a_stopped_followers_wal_tail_is_reported_and_recovered(
    cluster: Path,
) -> None:
    with (
        _replicas(cluster) as processes,
        Client.from_file(str(cluster / "client-0" / "client.toml"), timeout_s=10) as client,
    ):
        _setup(client)
        load = Load(cluster)
        load.start()
        try:
            load.wait_for(200)
            _terminate(processes[FOLLOWER])
            segment = sorted(_data(cluster, FOLLOWER).glob("wal-*.log"))[-1]
            data = segment.read_bytes()
            garbage = random.Random(5).randbytes(128)
            # Over the end of its last records; a segment just begun gets garbage after it.
            damaged = data[: -len(garbage)] + garbage if len(data) > 1024 else data + garbage
            segment.write_bytes(damaged)
            processes[FOLLOWER] = _start(cluster, FOLLOWER)
            fenced = _fence_in_status(client)  # fenced for at least the 2 s skew bound
            _eventually(lambda: "fence lifted" in _log(cluster, FOLLOWER), "the fence lifted")
            _caught_up(client, FOLLOWER)
            assert client.status(FOLLOWER)["fenced"] is None
        finally:
            load.stop()
        assert isinstance(fenced, dict) and fenced["reason"] and fenced["until_ns"] > 0, fenced
        log = _log(cluster, FOLLOWER)
        assert re.search(rf"torn tail in {segment.name} at offset \d+, damaged: ", log), log
        assert "acknowledged records may be lost" in log
        assert re.search(r"replica 3 fenced: .* it casts no vote until", log)
        assert not (_data(cluster, FOLLOWER) / "AMNESIA").exists()
        _agreed_and_nothing_lost(client, load)


def test_a_deleted_snapshot_falls_back_to_the_older_one_then_to_the_peers(
    cluster: Path,
) -> None:
    data = _data(cluster, FOLLOWER)
    with (
        _replicas(cluster) as processes,
        Client.from_file(str(cluster / "client-0" / "client.toml"), timeout_s=10) as client,
    ):
        _setup(client)
        load = Load(cluster)
        load.start()
        try:
            _eventually(lambda: len(list(data.glob("snapshot-*.snap"))) == 2, "two snapshots")
            _terminate(processes[FOLLOWER])
            older, newest = sorted(data.glob("snapshot-*.snap"))
            newest.unlink()
            processes[FOLLOWER] = _start(cluster, FOLLOWER)
            _caught_up(client, FOLLOWER)
            log = _log(cluster, FOLLOWER)
            assert f"recovered from snapshot {int(older.name[9:29])}:" in log, log
            assert "fenced" not in log  # the older snapshot and its records: nothing lost
            # Every snapshot gone: the records they covered are gone with them (compacted),
            # so the log is repaired down to nothing and the state comes from the peers.
            _terminate(processes[FOLLOWER])
            for snapshot in data.glob("snapshot-*.snap"):
                snapshot.unlink()
            processes[FOLLOWER] = _start(cluster, FOLLOWER)
            _eventually(lambda: "fence lifted" in _log(cluster, FOLLOWER), "the fence lifted")
            _caught_up(client, FOLLOWER)
        finally:
            load.stop()
        log = _log(cluster, FOLLOWER)
        assert re.search(r"records 1\.\.\d+ are missing", log) and "set aside as" in log
        assert list(data.glob("wal-*.log.damaged-*"))  # kept for the operator
        _agreed_and_nothing_lost(client, load)
