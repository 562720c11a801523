"""A ledger whose checkpoint snapshot outgrows the wire bound, with the real driver.

The bounds are lowered (``WIRE_BYTES_MAX`` to 24 KiB: a snapshot is about 128 bytes
per transfer) so that a few hundred transfers do what 520,000 do at the real bound.

* A checkpoint over ``WIRE_BYTES_MAX`` is stored under the WAL's own bound
  (``WAL_CHECKPOINT_RECORD_BYTES_MAX``), in a WAL snapshot (a replica's own
  checkpoints are not appended, the driver leaves them to the next snapshot); no
  replica dies, and a restart recovers the very cores a replay of everything
  persisted gives.
* A checkpoint over the WAL's bound too is left out of the snapshot with an error
  logged; no replica dies, and a restart replays from the previous checkpoint to the
  same state.
* A lagging replica catches up from a checkpoint over the wire bound: the snapshot
  goes in chunks (``snapshot_chunk_bytes``, lowered to 8 KiB here with the bound) and
  no answer is too large to send.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from consensus import wire
from consensus.effects import CheckpointRecord, PersistRecord
from consensus.messages import Finality, Request
from node import wal as wal_module
from node.cluster import status_lines
from node.config import Tuning, init_cluster
from node.driver import Driver, build_core
from node.service import checkpoints_of, status_of
from tests.node.test_driver import MemoryLinks, _accounts, _configs, _open, _run, _transfers
from tests.node.test_recovery import fingerprint

WIRE_BYTES_MAX_LOWERED = 24 * 1024
REQUESTS = 40  # 10 transfers each: the snapshot passes 24 KiB near request 20
CHUNK_BYTES = 8 * 1024  # chunks and their envelope stay well inside the lowered bound


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(wire, "WIRE_BYTES_MAX", WIRE_BYTES_MAX_LOWERED)
    tuning = Tuning(checkpoint_interval=2, snapshot_chunk_bytes=CHUNK_BYTES)
    init_cluster(tmp_path / "c", replicas=4, tuning=tuning)
    return tmp_path / "c"


def _workload(cluster: Path, first: int, end: int) -> list[Request]:
    head = [_accounts(cluster)] if first == 1 else []
    return head + [_transfers(cluster, n) for n in range(max(first, 2), end)]


def _durable(links: MemoryLinks, replica: int) -> list[PersistRecord]:
    """What ``replica`` appended to its WAL."""
    return [r for kind, i, batch in links.events if kind == "durable" and i == replica
            for r in batch]  # fmt: skip


def _persisted(links: MemoryLinks, replica: int) -> list[PersistRecord]:
    """What ``replica`` persisted: appended, or (its own checkpoints) left to a snapshot."""
    return [r for kind, i, batch in links.events
            if kind in ("durable", "deferred") and i == replica for r in batch]  # fmt: skip


def _big_checkpoints(records: list[PersistRecord]) -> list[int]:
    return [
        r.checkpoint.height
        for r in records
        if isinstance(r, CheckpointRecord) and len(r.checkpoint.snapshot) > WIRE_BYTES_MAX_LOWERED
    ]


def test_checkpoints_over_the_wire_bound_are_logged_and_recovered(cluster: Path) -> None:
    links = MemoryLinks()
    drivers = _open(cluster, links)
    asyncio.run(_run(drivers, _workload(cluster, 1, REQUESTS)))  # raises if a driver died
    logs = {i: _persisted(links, i) for i in range(4)}
    assert all(len(_big_checkpoints(logs[i])) >= 3 for i in range(4)), "not past the bound"
    assert not any(_big_checkpoints(_durable(links, i)) for i in range(4))  # all in snapshots
    assert {d.core.bft.sm.state_hash() for d in drivers} == {drivers[0].core.bft.sm.state_hash()}
    assert all(d.stats.checkpoints_not_persisted == 0 for d in drivers)
    assert all(d.stats.wal_snapshots > 0 for d in drivers)  # snapshots hold big checkpoints

    # Restart: from the newest snapshot (which holds a big checkpoint) and the tail.
    links = MemoryLinks()
    reopened = _open(cluster, links)
    for driver, config in zip(reopened, _configs(cluster), strict=True):
        whole = build_core(config, logs[config.replica_id], 0, random.Random(0))
        assert fingerprint(driver.core) == fingerprint(whole)
        assert len(driver.core.bft.base_snapshot) > WIRE_BYTES_MAX_LOWERED
    asyncio.run(_run(reopened, _workload(cluster, REQUESTS, REQUESTS + 6)))
    assert all(d.core.bft.decided_height >= drivers[0].core.bft.decided_height + 5
               for d in reopened)  # fmt: skip


def test_a_checkpoint_over_the_wal_bound_is_left_out_and_the_replica_goes_on(
    cluster: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(wal_module, "WAL_CHECKPOINT_RECORD_BYTES_MAX", WIRE_BYTES_MAX_LOWERED)
    links = MemoryLinks()
    drivers = _open(cluster, links)
    asyncio.run(_run(drivers, _workload(cluster, 1, REQUESTS)))  # raises if a driver died
    assert all(d.stats.checkpoints_not_persisted >= 1 for d in drivers)
    assert "too large for the WAL" in caplog.text
    # ``aegis cluster up`` flags it on each replica's line.
    statuses: list[dict[str, object] | str] = [status_of(d) for d in drivers]
    table = status_lines(statuses)
    for driver, line in zip(drivers, table[1:], strict=True):
        count = driver.stats.checkpoints_not_persisted
        assert f"{count} checkpoints too large for the WAL" in line, line
        assert f" {driver.core.bft.base_height} " in line, line
    quiet = {
        **status_of(drivers[0]),
        "checkpoints": {**checkpoints_of(drivers[0]), "not_persisted": 0},
    }
    assert "too large" not in status_lines([quiet])[1]
    assert "WAL_CHECKPOINT_RECORD_BYTES_MAX" in caplog.text
    for i in range(4):
        assert len(_big_checkpoints(_persisted(links, i))) >= 3  # made, and left out
        assert not _big_checkpoints(_durable(links, i))

    links = MemoryLinks()
    reopened = _open(cluster, links)
    for before, after in zip(drivers, reopened, strict=True):
        assert after.core.bft.decided_height == before.core.bft.decided_height
        assert after.core.bft.sm.state_hash() == before.core.bft.sm.state_hash()
        assert after.core.bft.last_header == before.core.bft.last_header
        assert after.core.bft.base_height < before.core.bft.base_height  # an older checkpoint
    asyncio.run(_run(reopened, _workload(cluster, REQUESTS, REQUESTS + 6)))
    assert len({d.core.bft.sm.state_hash() for d in reopened}) == 1


async def _run_three_then_four(drivers: list[Driver], requests: list[Request]) -> None:
    """Replicas 0..2 decide ``requests`` while replica 3 is away, then replica 3 joins
    and asks them to catch it up (within 10 s)."""
    late = drivers[3]
    tasks = [asyncio.create_task(d.run()) for d in drivers[:3]]
    try:
        for request in requests:
            target = drivers[request.request_number % 3]
            await asyncio.wait_for(target.submit(request, Finality.FINAL), 20)
        tasks.append(asyncio.create_task(late.run()))
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if late.core.bft.decided_height >= drivers[0].core.bft.decided_height:
                break
    finally:
        for driver in drivers:
            driver.stop()
        await asyncio.gather(*tasks)  # raises if a driver died
        for driver in drivers:
            driver.wal.close()


def test_a_lagging_replica_catches_up_from_a_checkpoint_over_the_wire_bound(
    cluster: Path,
) -> None:
    links = MemoryLinks()
    drivers = _open(cluster, links)
    late = links.drivers.pop(3)  # away: nothing reaches it until it runs
    run_late = late.run

    async def run_attached() -> None:
        links.drivers[3] = late
        await run_late()

    late.run = run_attached  # type: ignore[method-assign]
    asyncio.run(_run_three_then_four(drivers, _workload(cluster, 1, REQUESTS)))
    first = drivers[0].core.bft
    assert len(first.base_snapshot) > WIRE_BYTES_MAX_LOWERED  # one message could not hold it
    assert late.core.bft.decided_height == first.decided_height
    assert late.core.bft.sm.state_hash() == first.sm.state_hash()
    assert late.core.bft.base_height > 0  # installed a checkpoint, did not replay from h1
    # An installed checkpoint has no decided blocks below it in the late replica's log:
    # it is appended, not left to a snapshot.
    installed = [r for r in _durable(links, 3) if isinstance(r, CheckpointRecord)]
    assert installed and len(installed[0].checkpoint.snapshot) > WIRE_BYTES_MAX_LOWERED
    assert late.read_model.height == first.decided_height  # the read model followed
    assert sum(d.stats.oversized_sends_dropped for d in drivers) == 0
    assert late.core.bft.evidence_count == 0
