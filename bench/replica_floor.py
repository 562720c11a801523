"""What each replica must spend per transfer before any consensus, and what that bounds.

Every replica decodes each request's transfers, runs the agents' gate and executes
the ledger with change tracking (DESIGN: every replica re-runs the agents; the node
tracks changes for its read model), and checks each request's client signature.  This
measures that work in one process, on blocks shaped as the cluster benchmark sends
them (``--block`` transfers in requests of ``--request``), and prints one JSON line:

* ``us_per_transfer``: ``decode`` (request bytes to transfers), ``execute`` (gate,
  ledger, change tracking, state hash; decoding excluded), ``verify`` (the Ed25519
  check of the request, shared by its transfers) and their ``total``; medians over
  ``--runs``.  Process CPU time, not wall time: the question is a CPU budget (and a
  shared host's other tenants then distort it less, though not at all is too much to
  hope for).
* ``ceilings``: what the machine could do if replicas did nothing else -- no
  consensus messages, signatures on votes, WAL, gRPC or clients:
  ``throughput_per_s`` = CPUs / (replicas x total), and ``critical_path_ms`` for one
  request of ``--request`` transfers: the leader executes it before proposing, then
  the followers check and execute it before voting, so at least 2 x request x total.

Asserts nothing about time.  Compare it with ``cluster_throughput.py``'s figures.

    python bench/replica_floor.py [--runs 5] [--block 8000] [--request 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from typing import Any

from checkpoint_costs import accounts_block, transfer_block  # the same workload

from consensus.crypto import Ed25519Signer, Ed25519Verifier
from consensus.encoding import canonical
from finality.executor import LedgerExecutor
from ledger import Ledger, decode_transfers

REPLICAS = 4
ACCOUNTS = 10_000


def run_once(args: argparse.Namespace, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    signer = Ed25519Signer.from_seed(rng.randbytes(32))
    verifier = Ed25519Verifier({0: signer.public_key_bytes()})
    executor = LedgerExecutor(Ledger(), track_changes=True)
    stamp = 10**18
    for request in accounts_block(ACCOUNTS):
        stamp += 10_000_000
        executor.execute([request], stamp)
    decode_s = execute_s = verify_s = 0.0
    transfers = 0
    for block_index in range(args.blocks):
        requests = transfer_block(
            rng, 1 + block_index * args.block, args.block, ACCOUNTS, args.request
        )
        signed = [(canonical(r), signer.sign(canonical(r))) for r in requests]
        started = time.process_time()
        for data, signature in signed:
            assert verifier.verify(0, data, signature)
        verify_s += time.process_time() - started
        started = time.process_time()
        for request in requests:
            decode_transfers(request.transfers)
        decode_s += time.process_time() - started
        for request in requests:  # what the replica's request check leaves in the cache
            assert executor.check_request(request) is None
        stamp += 10_000_000
        started = time.process_time()
        executor.execute(requests, stamp)
        execute_s += time.process_time() - started
        transfers += args.block
    per = 1e6 / transfers
    return {"decode": decode_s * per, "execute": execute_s * per, "verify": verify_s * per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs; medians are printed (5)")
    parser.add_argument("--blocks", type=int, default=10, help="blocks per run (10)")
    parser.add_argument("--block", type=int, default=8000, help="transfers per block (8000)")
    parser.add_argument(
        "--request", type=int, default=2000, help="transfers per request, as the cluster's (2000)"
    )
    args = parser.parse_args()
    if min(args.runs, args.blocks, args.block, args.request) <= 0:
        parser.error("every count must be positive")
    runs = [run_once(args, seed) for seed in range(1, args.runs + 1)]
    per: dict[str, float] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    total = sum(per.values())
    cpus = os.cpu_count() or 1
    figures: dict[str, Any] = {
        "runs": args.runs,
        "block": args.block,
        "request": args.request,
        "cpus": cpus,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "us_per_transfer": {**{k: round(v, 2) for k, v in per.items()}, "total": round(total, 2)},
        "ceilings": {
            "replicas": REPLICAS,
            "throughput_per_s": round(cpus * 1e6 / (REPLICAS * total)),
            "critical_path_ms": round(2 * args.request * total / 1000, 1),
        },
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
