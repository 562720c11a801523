"""Snapshots and amnesia with the real driver: four drivers linked in memory (the helpers
of ``test_driver``), each with its write-ahead log on disk.

* Snapshots at checkpoints keep each WAL bounded by the live state, and a driver
  reopened from snapshot + tail has the very cores a replay of its whole log gives.
* A deleted or corrupt snapshot falls back to the older one, with the same cores.
* A damaged tail fences the replica: no vote leaves it until it has decided a block
  stamped after the fence; every vote after that is above every height it voted at
  before the damage; the cluster agrees on one state, nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from consensus.effects import CheckpointRecord, Effects, PersistRecord, Send
from consensus.messages import (
    Accept,
    Blocks,
    FetchBlocks,
    Finality,
    Reply,
    Request,
    Write,
)
from consensus.wire import encode
from node.config import NodeConfig, Tuning, init_cluster, load_node_config
from node.driver import Driver, Fence, build_core
from node.replica import StartError, open_wal
from node.service import status_of
from node.wal import WriteAheadLog
from tests.node.test_driver import (
    MemoryLinks,
    _accounts,
    _configs,
    _open,
    _run,
    _stop,
    _transfers,
    _until_decided,
)
from tests.node.test_recovery import fingerprint

CHECKPOINT_INTERVAL = 2


def _cluster(path: Path) -> Path:
    init_cluster(path, replicas=4, tuning=Tuning(checkpoint_interval=CHECKPOINT_INTERVAL))
    return path


def _workload(cluster: Path, end: int) -> list[Request]:
    """Accounts (request 1), then transfers (requests 2 .. end - 1)."""
    return [_accounts(cluster)] + [_transfers(cluster, n) for n in range(2, end)]


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _full_logs(links: MemoryLinks, logs: dict[int, list[PersistRecord]]) -> None:
    """Every record persisted: appended to the WAL, or (a checkpoint the replica made
    itself) left to the next WAL snapshot."""
    for kind, replica, item in links.events:
        if kind in ("durable", "deferred"):
            logs[replica] += item


def _from_whole_log(config: NodeConfig, records: list[PersistRecord]) -> dict[str, object]:
    return fingerprint(build_core(config, records, 0, random.Random(0)))


def test_snapshots_bound_the_wal_and_recovery_from_them_equals_a_full_replay(
    tmp_path: Path,
) -> None:
    cluster = _cluster(tmp_path / "c")
    configs = _configs(cluster)
    logs: dict[int, list[PersistRecord]] = {i: [] for i in range(4)}
    sizes: list[tuple[int, int]] = []  # (WAL directory, last snapshot's state) of replica 0
    number = 1
    deferred_bytes = 0  # replica 0's checkpoints left to snapshots, not appended
    for round_ in range(5):
        links = MemoryLinks()
        drivers = _open(cluster, links)
        if round_:  # reopened: from the newest snapshot, and the same cores as a replay
            for driver, config in zip(drivers, configs, strict=True):
                assert driver.stats.wal_snapshots == 0 and driver.seq_base > 0
                assert fingerprint(driver.core) == _from_whole_log(config, logs[config.replica_id])
        requests = [_accounts(cluster)] if number == 1 else []
        requests += [_transfers(cluster, n) for n in range(max(number, 2), number + 12)]
        number += 12
        asyncio.run(_run(drivers, requests))
        _full_logs(links, logs)
        deferred_bytes += sum(len(encode(r)) for kind, replica, batch in links.events
                              if kind == "deferred" and replica == 0 for r in batch)  # fmt: skip
        assert min(d.stats.checkpoints_deferred for d in drivers) >= 12 // CHECKPOINT_INTERVAL - 2
        assert min(d.stats.wal_snapshots for d in drivers) >= 12 // CHECKPOINT_INTERVAL - 2
        sizes.append((_dir_bytes(configs[0].data_dir), drivers[0].stats.snapshot_bytes))
    persisted = sum(len(encode(r)) for r in logs[0])
    print(f"replica 0, (WAL directory, snapshot) bytes after each round: {sizes}; "
          f"{persisted} bytes persisted in all ({deferred_bytes} of them checkpoints left "
          f"to snapshots), {len(logs[0])} records")  # fmt: skip
    # Two snapshots, the segments after the older one, the segment being written: a
    # few times the live state, whatever the history; without snapshots every record
    # would stay, and every checkpoint (itself a ledger snapshot) would be appended.
    for directory, state in sizes:
        assert directory <= 4 * state + 16 * 1024, sizes
    assert sizes[-1][0] * 4 < persisted
    assert len(list(configs[0].data_dir.glob("snapshot-*.snap"))) == 2
    assert len(list(configs[0].data_dir.glob("wal-*.log"))) <= 4


def test_recovery_time_from_a_snapshot_and_from_the_whole_log(tmp_path: Path) -> None:
    """Figures, not a bound: the same log recovered from its snapshot, then with every
    record replayed (written out again into a WAL that never took a snapshot)."""
    cluster = _cluster(tmp_path / "c")
    links = MemoryLinks()
    drivers = _open(cluster, links)
    asyncio.run(
        _run(drivers, [_accounts(cluster)] + [_transfers(cluster, n) for n in range(2, 50)])
    )
    logs: dict[int, list[PersistRecord]] = {i: [] for i in range(4)}
    _full_logs(links, logs)
    config = _configs(cluster)[1]
    whole = tmp_path / "whole"
    with WriteAheadLog.open(whole)[0] as log:
        for start in range(0, len(logs[1]), 500):
            log.append(logs[1][start : start + 500])
    started = time.perf_counter()
    wal, driver = open_wal(config)
    from_snapshot_s = time.perf_counter() - started
    wal.close()
    started = time.perf_counter()
    log, recovered, _ = WriteAheadLog.open(whole)
    core = build_core(config, recovered.records, 0, random.Random(0))
    full_s = time.perf_counter() - started
    log.close()
    assert fingerprint(core) == fingerprint(driver.core)
    print(f"recovery of replica 1 at h{core.bft.decided_height}: from snapshot "
          f"{from_snapshot_s * 1000:.1f} ms ({_dir_bytes(config.data_dir)} bytes on disk), "
          f"full replay of {len(logs[1])} records {full_s * 1000:.1f} ms "
          f"({_dir_bytes(whole)} bytes on disk)")  # fmt: skip


def test_a_snapshot_being_written_does_not_stop_the_replica(tmp_path: Path) -> None:
    """Replica 0's first WAL snapshot is held in its write until the replica has decided
    four more blocks (the old driver awaited the write, so it decided none); then
    released, it is adopted, and the WAL reopens to the cores a replay of the whole
    log gives, the records appended during the write included."""
    cluster = _cluster(tmp_path / "c")
    links = MemoryLinks()
    drivers = _open(cluster, links)
    replica = drivers[0]
    release = threading.Event()
    held: list[int] = []  # the height replica 0 had decided when its write began
    write = replica.wal.write_snapshot

    def held_write(seq: int, state: bytes) -> None:
        if not held:
            held.append(replica.core.bft.decided_height)
            if not release.wait(20):
                raise TimeoutError("the test never released the snapshot")
        write(seq, state)

    replica.wal.write_snapshot = held_write  # type: ignore[method-assign]

    async def scenario() -> None:
        tasks = [asyncio.create_task(d.run()) for d in drivers]
        try:
            for number in range(1, 30):
                request = _accounts(cluster) if number == 1 else _transfers(cluster, number)
                future = drivers[number % 4].submit(request, Finality.FINAL)
                reply = await asyncio.wait_for(future, 20)
                if held and replica.core.bft.decided_height >= held[0] + 4:
                    break
            assert held, "no snapshot was started"
            assert replica.core.bft.decided_height >= held[0] + 4
            assert replica.stats.wal_snapshots == 0  # still being written
            release.set()
            await _until_decided(drivers, reply.header.height)
        finally:
            release.set()
            await _stop(drivers, tasks)

    asyncio.run(scenario())
    assert replica.stats.wal_snapshots >= 1
    logs: dict[int, list[PersistRecord]] = {i: [] for i in range(4)}
    _full_logs(links, logs)
    config = _configs(cluster)[0]
    wal, reopened = open_wal(config)
    wal.close()
    assert fingerprint(reopened.core) == _from_whole_log(config, logs[0])
    assert reopened.core.bft.decided_height >= held[0] + 4


def test_checkpoints_left_to_snapshots_never_written_are_replayed_from_the_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after a replica made checkpoints, before any snapshot stored them
    (here: no snapshot is ever written).  The WAL holds no checkpoint, but it holds
    every decided block, so a restart reaches the same decided state from an older
    base, and the cluster goes on."""
    cluster = _cluster(tmp_path / "c")
    monkeypatch.setattr(Driver, "_start_snapshot", lambda self, worth_records_max: None)
    links = MemoryLinks()
    drivers = _open(cluster, links)
    asyncio.run(_run(drivers, _workload(cluster, 14)))
    for driver in drivers:
        assert driver.stats.checkpoints_deferred >= 3 and driver.stats.wal_snapshots == 0
        assert driver.core.bft.base_height >= 3 * CHECKPOINT_INTERVAL
        # What an operator sees: the newest checkpoint is durable only in a snapshot to come.
        assert status_of(driver)["checkpoints"] == {
            "stable_height": driver.core.bft.base_height,
            "deferred": driver.stats.checkpoints_deferred,
            "awaiting_snapshot": True,
            "not_persisted": 0,
            "wal_snapshots": 0,
        }
    appended = [r for kind, _, batch in links.events if kind == "durable" for r in batch]
    assert not any(isinstance(r, CheckpointRecord) for r in appended)

    monkeypatch.undo()
    reopened = _open(cluster, MemoryLinks())
    for before, after in zip(drivers, reopened, strict=True):
        assert after.core.bft.base_height == 0  # no checkpoint survived
        assert after.core.bft.decided_height == before.core.bft.decided_height
        assert after.core.bft.last_header == before.core.bft.last_header
        assert after.core.bft.sm.state_hash() == before.core.bft.sm.state_hash()
    asyncio.run(_run(reopened, [_transfers(cluster, n) for n in range(14, 18)]))
    assert len({d.core.bft.sm.state_hash() for d in reopened}) == 1
    assert min(d.core.bft.decided_height for d in reopened) > drivers[0].core.bft.decided_height


def test_a_deleted_or_corrupt_snapshot_falls_back_to_the_older_one(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path / "c")
    drivers = _open(cluster, MemoryLinks())
    asyncio.run(
        _run(drivers, [_accounts(cluster)] + [_transfers(cluster, n) for n in range(2, 12)])
    )
    config = _configs(cluster)[2]
    snapshots = sorted(config.data_dir.glob("snapshot-*.snap"))
    assert len(snapshots) == 2
    wal, driver = open_wal(config)
    wal.close()
    expected = fingerprint(driver.core)
    newest = snapshots[1].read_bytes()
    snapshots[1].write_bytes(newest[:40] + bytes([newest[40] ^ 1]) + newest[41:])
    wal, recovered, report = WriteAheadLog.open(config.data_dir)
    wal.close()
    assert report.snapshot_seq == int(snapshots[0].name[9:29])
    assert "state checksum mismatch" in report.snapshots_rejected[0]
    assert recovered.amnesia is None  # nothing acknowledged was lost
    wal, driver = open_wal(config)
    wal.close()
    _same_decided_state(driver, expected)
    snapshots[1].unlink()
    wal, driver = open_wal(config)
    wal.close()
    _same_decided_state(driver, expected)
    assert driver.fence is None


def _same_decided_state(driver: Driver, expected: dict[str, object]) -> None:
    """The cores ``expected`` fingerprints, but maybe on an older checkpoint: the newest
    one was only in the snapshot that was lost (the driver leaves the checkpoints it
    makes to snapshots), so the replay applied the decided blocks above the older one."""
    got = fingerprint(driver.core)
    for key in expected.keys() - {"base", "decided"}:
        assert got[key] == expected[key], key
    decided, wanted = (
        cast(tuple[object, ...], got["decided"]),
        cast(tuple[object, ...], expected["decided"]),
    )
    assert decided[:3] == wanted[:3]  # height, header, certificate; the log starts lower
    assert driver.core.bft.base_height <= cast(tuple[int, ...], expected["base"])[0]


# ------------------------------------------------------------------ the fence


VOTES = (Write, Accept)


async def _traffic_until_the_fence_lifts(
    drivers: list[Driver], cluster: Path, number: int, fenced: Driver, voted: Callable[[], bool]
) -> list[Reply]:
    """Transfers through the replicas that are not fenced until ``fenced`` has lifted
    its fence, a few more blocks were decided, and it has voted again (``voted``: the
    other three decide without it, so it may still be catching up after the lift)."""
    tasks = [asyncio.create_task(d.run()) for d in drivers]
    replies: list[Reply] = []
    after_lift = 0
    deadline = time.monotonic() + 40
    try:
        while after_lift < 8 or not voted():
            assert time.monotonic() < deadline, "the fence was not lifted, or no vote followed"
            future = drivers[number % 3].submit(_transfers(cluster, number), Finality.FINAL)
            number += 1
            replies.append(await asyncio.wait_for(future, 20))
            after_lift += fenced.fence is None
        await _until_decided(drivers, replies[-1].header.height)
    finally:
        await _stop(drivers, tasks)
    return replies


def test_a_replica_with_a_damaged_tail_votes_only_above_what_it_may_have_forgotten(
    tmp_path: Path,
) -> None:
    cluster = tmp_path / "c"
    init_cluster(cluster, replicas=4)
    before = MemoryLinks()
    first = _open(cluster, before)
    replies = asyncio.run(_run(first, _workload(cluster, 8)))
    voted_before = [m for kind, r, m in before.events
                    if kind == "send" and r == 3 and isinstance(m, VOTES)]  # fmt: skip
    height_voted_max = max(m.height for m in voted_before)
    # Garbage over the end of replica 3's newest segment: its last batches are lost,
    # and they were acknowledged (their votes and decisions left the process).
    config = load_node_config(cluster / "replica-3" / "node.toml")
    segment = sorted(config.data_dir.glob("wal-*.log"))[-1]
    data = segment.read_bytes()
    segment.write_bytes(data[:-200] + random.Random(3).randbytes(200))

    after = MemoryLinks()
    second = _open(cluster, after)
    fenced = second[3]
    assert fenced.fence is not None and all(d.fence is None for d in second[:3])
    assert (config.data_dir / "AMNESIA").exists()
    assert fenced.core.bft.decided_height < height_voted_max  # it really forgot something
    clear = fenced.wal.clear_amnesia

    def logged_clear() -> None:  # the lift: before it, nothing of the fenced round leaves
        after.events.append(("lifted", 3, None))
        clear()

    def voted_since_lift() -> bool:
        kinds = list(after.events)
        lift = next((i for i, (kind, _, _) in enumerate(kinds) if kind == "lifted"), None)
        return lift is not None and any(
            kind == "send" and r == 3 and isinstance(m, VOTES) for kind, r, m in kinds[lift:]
        )

    fenced.wal.clear_amnesia = logged_clear  # type: ignore[method-assign]
    replies += asyncio.run(
        _traffic_until_the_fence_lifts(second, cluster, 8, fenced, voted_since_lift)
    )
    lifted = next(i for i, (kind, _, _) in enumerate(after.events) if kind == "lifted")
    sent = [(i, m) for i, (kind, r, m) in enumerate(after.events) if kind == "send" and r == 3]
    assert {type(m) for i, m in sent if i < lifted} <= {FetchBlocks, Blocks}
    assert any(isinstance(m, FetchBlocks) for i, m in sent if i < lifted)
    votes_after = [m for i, m in sent if isinstance(m, VOTES)]
    assert votes_after and min(m.height for m in votes_after) > height_voted_max
    assert not (config.data_dir / "AMNESIA").exists() and fenced.fence is None
    assert fenced.stats.fenced_inputs_dropped > 0
    assert len({d.core.bft.last_header.state_hash for d in second}) == 1
    # Nothing acknowledged is lost: every answered transfer is in every replica's ledger.
    ids = [r.request_number * 100 + i for r in replies[1:] for i in range(10)]
    for driver in second:
        assert len(driver.read_model.ledger.lookup_transfers(ids)) == len(ids)
    print(f"fenced for {sum(1 for i, _ in sent if i < lifted)} catch-up messages; "
          f"first vote after the lift at h{min(m.height for m in votes_after)}, "
          f"last vote before the damage at h{height_voted_max}")  # fmt: skip


def test_a_fenced_driver_lets_out_only_catch_up_and_final_answers(tmp_path: Path) -> None:
    cluster = tmp_path / "c"
    init_cluster(cluster, replicas=4)
    links = MemoryLinks()
    drivers = _open(cluster, links)
    (reply,) = asyncio.run(_run(drivers, _workload(cluster, 2)))
    write = next(m for kind, _, m in links.events if kind == "send" and isinstance(m, Write))
    fetch = FetchBlocks(sender=0, after_height=0)  # the transport would sign it
    wal, driver = open_wal(_configs(cluster)[0])
    wal.close()
    gate = MemoryLinks()
    gate.attach(driver)
    answered: list[Reply] = []
    driver._answer = answered.append  # type: ignore[method-assign,assignment]
    driver.fence = Fence(until_ns=2**62, reason="a test")
    provisional = dataclasses.replace(reply, level=Finality.PROVISIONAL, certificate=None)
    effects = Effects(
        send=(Send(to=None, message=write), Send(to=1, message=fetch)),
        replies=(provisional, reply),
    )
    driver._release([effects])
    assert [m for kind, _, m in gate.events if kind == "send"] == [fetch]
    assert answered == [reply] and driver.stats.fenced_outputs_dropped == 1
    driver.fence = None
    driver._release([effects])
    assert [m for kind, _, m in gate.events if kind == "send"] == [fetch, write, fetch]


def test_without_wal_repair_a_damaged_log_refuses_the_start_and_changes_nothing(
    tmp_path: Path,
) -> None:
    cluster = tmp_path / "c"
    init_cluster(cluster, replicas=4, tuning=Tuning(wal_repair=False))
    drivers = _open(cluster, MemoryLinks())
    asyncio.run(_run(drivers, _workload(cluster, 6)))
    config = _configs(cluster)[3]
    (segment,) = config.data_dir.glob("wal-*.log")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x40  # mid-log: later batches follow the damage
    segment.write_bytes(bytes(data))
    with pytest.raises(StartError, match=r"acknowledged records are damaged.*wal_repair = true"):
        open_wal(config)
    assert segment.read_bytes() == bytes(data) and not (config.data_dir / "AMNESIA").exists()
    repairing = dataclasses.replace(config, tuning=Tuning(wal_repair=True))
    wal, driver = open_wal(repairing)
    wal.close()
    assert driver.fence is not None and (config.data_dir / "AMNESIA").exists()
    assert list(config.data_dir.glob(f"{segment.name}.damaged-*"))
