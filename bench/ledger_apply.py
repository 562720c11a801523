"""Ledger apply throughput: batches of 8189 transfers over 10,000 accounts.

Workload per batch (seeded, built before timing): 80% single-phase, 10%
pending, 10% post or void of earlier pending transfers; about 5% of events in
linked chains of 2-4; a few deliberate failures (unknown account, overdraft).
The state hash is computed after every batch, as a replica does per block.

Prints one JSON line: transfers_per_second (wall clock), transfers_per_cpu_second
(process CPU time), batch_apply_ms_p50/p99, peak_rss_mb and the run's parameters.
Never asserts a timing.

    python bench/ledger_apply.py [--batches 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time

from ledger import Account, AccountFlags, Ledger, Transfer, TransferFlags

ACCOUNTS = 10_000
BATCH = 8189
LEDGER_ID = 700
TIMESTAMP_STEP_NS = 1_000_000_000


def build_batches(batches: int, seed: int) -> list[list[Transfer]]:
    rng = random.Random(seed)
    next_id = 1_000_000
    open_pending: list[int] = []
    out: list[list[Transfer]] = []
    for _ in range(batches):
        batch: list[Transfer] = []
        while len(batch) < BATCH:
            chain = rng.randint(2, 4) if rng.random() < 0.05 / 3 else 1
            chain = min(chain, BATCH - len(batch))
            for position in range(chain):
                next_id += 1
                linked = TransferFlags.LINKED if position < chain - 1 else 0
                roll = rng.random()
                debit = rng.randrange(1, ACCOUNTS + 1)
                credit = rng.randrange(1, ACCOUNTS)
                credit += credit >= debit  # different from debit
                if roll < 0.001:
                    debit = ACCOUNTS + 5  # unknown account: a failure
                if roll < 0.8:
                    t = Transfer(id=next_id, debit_account_id=debit, credit_account_id=credit,
                                 amount=rng.randint(1, 10_000), ledger=LEDGER_ID, code=1,
                                 flags=linked)  # fmt: skip
                elif roll < 0.9 or not open_pending:
                    t = Transfer(id=next_id, debit_account_id=debit, credit_account_id=credit,
                                 amount=rng.randint(1, 10_000), ledger=LEDGER_ID, code=1,
                                 flags=linked | TransferFlags.PENDING, timeout=3600)  # fmt: skip
                    open_pending.append(next_id)
                else:
                    pending_id = open_pending.pop(rng.randrange(len(open_pending)))
                    kind = (
                        TransferFlags.POST_PENDING_TRANSFER
                        if rng.random() < 0.5
                        else TransferFlags.VOID_PENDING_TRANSFER
                    )
                    t = Transfer(id=next_id, debit_account_id=0, credit_account_id=0,
                                 amount=0 if kind == TransferFlags.VOID_PENDING_TRANSFER
                                 else (1 << 128) - 1, pending_id=pending_id, ledger=0, code=0,
                                 flags=linked | kind)  # fmt: skip
                batch.append(t)
        out.append(batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="timed batches (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    ledger = Ledger()
    accounts = [
        Account(id=i, ledger=LEDGER_ID, code=1,
                flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS if i % 97 == 0 else 0)
        for i in range(1, ACCOUNTS + 1)
    ]  # fmt: skip
    timestamp = 10**18
    for start in range(0, ACCOUNTS, BATCH):
        chunk = accounts[start : start + BATCH]
        timestamp += TIMESTAMP_STEP_NS
        assert all(r == 0 for r in ledger.create_accounts(chunk, timestamp))
    batches = build_batches(args.batches, args.seed)

    durations_ms: list[float] = []
    failed = 0
    cpu_started = time.process_time()
    for batch in batches:
        timestamp += TIMESTAMP_STEP_NS
        start_ns = time.perf_counter_ns()
        results = ledger.create_transfers(batch, timestamp)
        ledger.state_hash()
        durations_ms.append((time.perf_counter_ns() - start_ns) / 1e6)
        failed += sum(1 for r in results if r != 0)
    cpu_s = time.process_time() - cpu_started
    ledger.check_invariants()
    total_s = sum(durations_ms) / 1000
    quantiles = statistics.quantiles(durations_ms, n=100, method="inclusive")
    print(
        json.dumps(
            {
                "benchmark": "ledger_apply",
                "transfers_per_second": round(len(batches) * BATCH / total_s),
                # CPU time is immune to time stolen by other tenants of a shared host.
                "transfers_per_cpu_second": round(len(batches) * BATCH / cpu_s),
                "batch_apply_ms_p50": round(statistics.median(durations_ms), 2),
                "batch_apply_ms_p99": round(quantiles[98], 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "batches": len(batches),
                "batch_events": BATCH,
                "accounts": ACCOUNTS,
                "failed_events": failed,
                "seed": args.seed,
                "python": sys.version.split()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
