"""The read model follows decided blocks without executing them again, and the core's
executor rolls speculation back by undoing it, not by restoring the whole ledger.

* Executor level: a change-tracking ``LedgerExecutor`` driven through the BFT core's
  rollback pattern (restore the checkpoint, replay the decided blocks, execute another
  block) ends in exactly the state of a plain executor that executed only the blocks
  that count, returns the same results, and restores nothing in full.
* Driver level: four drivers in memory (``tests.node.test_driver``); each read model
  applied the core's changes and holds what executing the decided blocks gives."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from consensus.messages import OP_CREATE_ACCOUNTS, Request
from finality.executor import LedgerExecutor
from ledger import (
    Account,
    AccountFilter,
    AccountFlags,
    Ledger,
    SnapshotError,
    Transfer,
    TransferFlags,
    encode_accounts,
    encode_transfers,
)
from node.driver import genesis_of, new_executor
from tests.node.test_driver import MemoryLinks, _accounts, _configs, _open, _run, _transfers

ACCOUNT_IDS = list(range(1, 9))
SECOND_NS = 1_000_000_000


def _view(executor: LedgerExecutor) -> tuple[Any, ...]:
    ledger = executor.ledger
    every = [AccountFilter(account_id=i, limit=8189) for i in ACCOUNT_IDS]
    return (
        executor.state_hash(),
        executor.snapshot(),
        executor.last_timestamp(),
        ledger.lookup_accounts(ACCOUNT_IDS),
        [ledger.get_account_transfers(f) for f in every],
        [ledger.get_account_balances(f) for f in every],
    )


def _block(rng: random.Random, number: int) -> list[Request]:
    """Two requests of transfers: plain, pending with timeouts, posts and voids."""
    requests = []
    for part in range(2):
        transfers = []
        for i in range(rng.randint(1, 20)):
            transfer_id = number * 1000 + part * 100 + i
            debit, credit = rng.sample(ACCOUNT_IDS, 2)
            roll = rng.random()
            if roll < 0.6:
                transfers.append(Transfer(id=transfer_id, debit_account_id=debit,
                                          credit_account_id=credit, amount=rng.randint(1, 9),
                                          ledger=1, code=1))  # fmt: skip
            elif roll < 0.85:
                transfers.append(Transfer(id=transfer_id, debit_account_id=debit,
                                          credit_account_id=credit, amount=rng.randint(1, 9),
                                          ledger=1, code=1, timeout=rng.choice([0, 1, 2]),
                                          flags=TransferFlags.PENDING))  # fmt: skip
            else:
                earlier = (number - 1) * 1000 + rng.randint(0, 20)
                flag = rng.choice([TransferFlags.POST_PENDING_TRANSFER,
                                   TransferFlags.VOID_PENDING_TRANSFER])  # fmt: skip
                transfers.append(Transfer(id=transfer_id, debit_account_id=0,
                                          credit_account_id=0, pending_id=earlier, amount=0,
                                          ledger=0, code=0, flags=flag))  # fmt: skip
        requests.append(Request(client_id=part, request_number=number,
                                transfers=encode_transfers(transfers)))  # fmt: skip
    return requests


def _genesis_block() -> list[Request]:
    accounts = [Account(id=i, ledger=1, code=1, flags=AccountFlags.HISTORY if i % 2 else 0)
                for i in ACCOUNT_IDS]  # fmt: skip
    return [Request(client_id=9, request_number=1, transfers=encode_accounts(accounts),
                    operation=OP_CREATE_ACCOUNTS)]  # fmt: skip


def _stamp(height: int) -> int:
    return 10**18 + height * SECOND_NS  # a second per block: pending timeouts come due


@pytest.mark.parametrize("seed", range(6))
def test_rollback_by_undo_equals_executing_only_the_blocks_that_count(seed: int) -> None:
    rng = random.Random(seed)
    blocks = {1: _genesis_block()} | {h: _block(rng, h) for h in range(2, 9)}
    losing = _block(rng, 50)  # a speculative block 9 that loses a regency change
    winning = _block(rng, 60)
    tracked = LedgerExecutor(Ledger(), track_changes=True)
    plain = LedgerExecutor(Ledger())
    results = {}
    for height in range(1, 9):
        results[height] = tracked.execute(blocks[height], _stamp(height))
        assert plain.execute(blocks[height], _stamp(height)) == results[height]
        if height == 4:
            checkpoint, checkpoint_hash = tracked.snapshot(), tracked.state_hash()
    tracked.execute(losing, _stamp(9))
    restores = tracked.full_restores
    # The core's restore_final_state: the checkpoint, then the decided blocks above it.
    tracked.restore(checkpoint, checkpoint_hash)
    assert tracked.state_hash() == checkpoint_hash
    for height in range(5, 9):
        assert tracked.execute(blocks[height], _stamp(height)) == results[height]
    assert tracked.full_restores == restores, "the rollback restored the whole ledger"
    assert tracked.steps_replayed == 4
    winner = tracked.execute(winning, _stamp(9) + 5)
    assert tracked.steps_undone == 1  # only the losing block
    assert plain.execute(winning, _stamp(9) + 5) == winner
    assert _view(tracked) == _view(plain)
    # Rolled back further and left there: reads and the next block see the checkpoint.
    tracked.restore(checkpoint, checkpoint_hash)
    again = LedgerExecutor(Ledger())
    again.restore(checkpoint, checkpoint_hash)
    assert _view(tracked) == _view(again)
    assert tracked.execute(winning, _stamp(9)) == again.execute(winning, _stamp(9))
    assert _view(tracked) == _view(again)


def test_only_snapshot_bytes_it_made_or_checked_move_the_pointer() -> None:
    rng = random.Random(1)
    tracked = LedgerExecutor(Ledger(), track_changes=True)
    tracked.execute(_genesis_block(), _stamp(1))
    good, good_hash = tracked.snapshot(), tracked.state_hash()
    tracked.execute(_block(rng, 2), _stamp(2))
    # A peer's bytes claiming a state this executor passed through are checked in full.
    forged = Ledger().snapshot()
    with pytest.raises(SnapshotError):
        tracked.restore(forged, good_hash)
    restores = tracked.full_restores
    copy = bytes(bytearray(good))  # equal bytes, but not the object it made
    tracked.restore(copy, good_hash)
    assert tracked.full_restores == restores + 1
    tracked.execute(_block(rng, 3), _stamp(3))
    tracked.restore(copy, good_hash)  # checked once: now it is known
    assert tracked.full_restores == restores + 1
    assert tracked.state_hash() == good_hash


def test_a_read_model_applies_a_change_only_onto_its_parent_state() -> None:
    rng = random.Random(2)
    source = LedgerExecutor(Ledger(), track_changes=True)
    reader = LedgerExecutor(Ledger())
    parent = source.state_hash()
    first = source.execute(_genesis_block(), _stamp(1))
    change = source.take_change(parent, first.state_hash)
    assert change is not None and source.take_change(parent, first.state_hash) is None
    second = source.execute(_block(rng, 2), _stamp(2))
    later = source.take_change(first.state_hash, second.state_hash)
    assert later is not None
    with pytest.raises(AssertionError):
        reader.apply_change(later)  # the reader is not at its parent state
    reader.apply_change(change)
    reader.apply_change(later)
    assert _view(reader) == _view(source)


def test_read_models_follow_decided_blocks_by_applying_the_cores_changes(
    tmp_path: Path,
) -> None:
    from node.config import init_cluster

    cluster = tmp_path / "c"
    init_cluster(cluster, replicas=4)
    drivers = _open(cluster, MemoryLinks())
    requests = [_accounts(cluster)] + [_transfers(cluster, n) for n in range(2, 8)]
    asyncio.run(_run(drivers, requests))
    config = _configs(cluster)[0]
    for driver in drivers:
        read_model = driver.read_model
        bft = driver.core.bft
        assert read_model.height == bft.decided_height
        assert read_model.changes_applied >= 1
        assert read_model.changes_applied + read_model.blocks_executed >= bft.decided_height
        # What executing every decided block (the old read model) gives:
        executed = new_executor(config, genesis_of(config))
        for height in range(1, bft.decided_height + 1):
            header = bft.log[height].block.header
            executed.execute(bft.log[height].block.requests, header.timestamp)
        assert executed.snapshot() == read_model.executor.snapshot()
        every = [AccountFilter(account_id=i, limit=8189) for i in (1, 2, 3, 4)]
        assert [read_model.ledger.get_account_transfers(f) for f in every] == [
            executed.ledger.get_account_transfers(f) for f in every
        ]
