"""What a checkpoint and a rollback of speculation cost one replica, in process.

Builds a ledger the way the cluster does (blocks of ``--block`` transfers over
``--accounts`` accounts, executed by a ``LedgerExecutor``, a checkpoint snapshot every
``--interval`` blocks) until it holds ``--transfers`` transfers, then measures:

* ``snapshot_ms``: ``executor.snapshot()`` at a checkpoint (what ``_vote_checkpoint``
  builds on the event loop), median over the checkpoints after the first.
* ``ledger_restore_ms``: ``Ledger.restore`` of the last snapshot (catch-up, restart,
  a read model's rebuild).
* ``rollback_ms``: what ``BftReplica.restore_final_state`` asks of the executor when a
  speculative block loses: ``restore`` of the last checkpoint, the decided blocks above
  it executed again, then another block executed.  Once with a change-tracking
  executor (the node's), once without (the simulator's, and every executor before).
* ``capture_ms_per_block`` / ``read_model_apply_ms``: executing a block with change
  tracking minus without, and a read model applying that change instead of executing.

Prints one JSON line; asserts no timing.  Runs against older trees too (``PYTHONPATH``
to another checkout): what they lack is reported as null.

    python bench/checkpoint_costs.py [--transfers 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from typing import Any

from consensus.messages import OP_CREATE_ACCOUNTS, Request
from finality.executor import LedgerExecutor
from ledger import Account, Ledger, Transfer, encode_accounts, encode_transfers

REQUEST_TRANSFERS_MAX = 2000  # as the cluster benchmark's clients send them


def accounts_block(accounts: int) -> list[Request]:
    """Requests creating accounts 1..``accounts`` (ledger 1, code 1), 8,000 a request."""
    records = [Account(id=i, ledger=1, code=1) for i in range(1, accounts + 1)]
    return [
        Request(client_id=9, request_number=1 + start, operation=OP_CREATE_ACCOUNTS,
                transfers=encode_accounts(records[start : start + 8000]))
        for start in range(0, accounts, 8000)
    ]  # fmt: skip


def transfer_block(
    rng: random.Random,
    first_id: int,
    size: int,
    accounts: int,
    per_request: int = REQUEST_TRANSFERS_MAX,
) -> list[Request]:
    """A block of ``size`` transfers of 1 between random accounts, with ids from
    ``first_id``, in requests of ``per_request`` (one client each, as the cluster
    benchmark's clients send them)."""
    requests = []
    for part, start in enumerate(range(0, size, per_request)):
        count = min(per_request, size - start)
        transfers = []
        for i in range(count):
            debit, credit = rng.sample(range(1, accounts + 1), 2)
            transfers.append(Transfer(id=first_id + start + i, debit_account_id=debit,
                                      credit_account_id=credit, amount=1, ledger=1,
                                      code=1))  # fmt: skip
        requests.append(Request(client_id=part, request_number=first_id,
                                transfers=encode_transfers(transfers)))  # fmt: skip
    return requests


def _executor(track: bool) -> LedgerExecutor | None:
    try:
        return LedgerExecutor(Ledger(), track_changes=track)
    except TypeError:  # an older tree: no change tracking
        return None


def run_once(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    stamp = 10**18
    blocks: list[tuple[list[Request], int]] = [(accounts_block(args.accounts), stamp)]
    next_id = 1
    while next_id <= args.transfers:
        stamp += 10_000_000
        blocks.append((transfer_block(rng, next_id, args.block, args.accounts), stamp))
        next_id += args.block
    loser = transfer_block(rng, 10**12, args.block, args.accounts)
    winner = transfer_block(rng, 2 * 10**12, args.block, args.accounts)
    warm = LedgerExecutor(Ledger())  # decoded requests are cached per process: fill it
    for requests, _ in [*blocks, (loser, 0), (winner, 0)]:
        for request in requests:
            assert warm.check_request(request) is None
    figures: dict[str, Any] = {}
    rollback: dict[str, float | None] = {}
    capture: list[float] = []
    applies: list[float] = []
    for track in (True, False):
        executor = _executor(track) if track else LedgerExecutor(Ledger())
        if executor is None:
            rollback["tracking"] = None
            continue
        reader = LedgerExecutor(Ledger())
        snapshots: list[float] = []
        checkpoint = (executor.snapshot(), executor.state_hash(), 0)
        for height, (requests, block_stamp) in enumerate(blocks):
            parent = executor.state_hash()
            started = time.perf_counter()
            execution = executor.execute(requests, block_stamp)
            elapsed = time.perf_counter() - started
            if track:
                change = executor.take_change(parent, execution.state_hash)
                assert change is not None
                started = time.perf_counter()
                reader.apply_change(change)
                applies.append(time.perf_counter() - started)
                capture.append(elapsed)
            else:
                capture.append(-elapsed)
            if height and height % args.interval == 0:
                started = time.perf_counter()
                snapshot = executor.snapshot()
                snapshots.append(time.perf_counter() - started)
                checkpoint = (snapshot, executor.state_hash(), height)
        # The decided blocks above the checkpoint, then a speculative block that loses.
        last_stamp = blocks[-1][1]
        executor.execute(loser, last_stamp + 10_000_000)
        started = time.perf_counter()
        executor.restore(checkpoint[0], checkpoint[1])
        for requests, block_stamp in blocks[checkpoint[2] + 1 :]:
            executor.execute(requests, block_stamp)
        executor.execute(winner, last_stamp + 20_000_000)
        rollback["tracking" if track else "plain"] = round(
            1000 * (time.perf_counter() - started), 1
        )
        if not track:
            figures["snapshot_ms"] = (
                1000 * statistics.median(snapshots[1:] or snapshots) if snapshots else None
            )
            figures["snapshot_mib"] = round(len(checkpoint[0]) / 2**20, 1)
            started = time.perf_counter()
            Ledger.restore(checkpoint[0])
            figures["ledger_restore_ms"] = 1000 * (time.perf_counter() - started)
            figures["blocks_replayed"] = len(blocks) - 1 - checkpoint[2]
    tracked = [c for c in capture if c > 0]
    plain = [-c for c in capture if c < 0]
    figures["rollback_ms"] = rollback
    figures["execute_ms_per_block"] = 1000 * statistics.median(plain)
    figures["capture_ms_per_block"] = (
        1000 * (statistics.median(tracked) - statistics.median(plain)) if tracked else None
    )
    figures["read_model_apply_ms"] = 1000 * statistics.median(applies) if applies else None
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=200_000)
    parser.add_argument("--block", type=int, default=8000, help="transfers per block")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=16, help="blocks between checkpoints")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        runs.append(run_once(args, seed=run + 1))
        print(json.dumps({"run": run + 1, **runs[-1]}), flush=True)

    def median(key: str, sub: str | None = None) -> float | None:
        values = [r[key] if sub is None else r[key][sub] for r in runs]
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 1) if values else None

    print(json.dumps({
        "medians_of": args.runs,
        "transfers": args.transfers,
        "load_average": os.getloadavg(),
        "snapshot_ms": median("snapshot_ms"),
        "snapshot_mib": median("snapshot_mib"),
        "ledger_restore_ms": median("ledger_restore_ms"),
        "rollback_ms_tracking": median("rollback_ms", "tracking"),
        "rollback_ms_plain": median("rollback_ms", "plain"),
        "blocks_replayed": median("blocks_replayed"),
        "execute_ms_per_block": median("execute_ms_per_block"),
        "capture_ms_per_block": median("capture_ms_per_block"),
        "read_model_apply_ms": median("read_model_apply_ms"),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
