"""Simulator throughput: 4 replicas in one process, signatures on, no faults.

Prints one JSON line:
  sim_transfers_per_second   transfers committed per wall-clock second (target >= 20,000)
  consensus_cpu_ms_per_block CPU of the replica cores per block and replica, excluding
                             ledger execution (signing, verifying, encoding, bookkeeping)
  execute_ms_per_block       ledger execution per block and replica
plus the run's parameters.  Never asserts a timing; quote medians of several runs.

    python bench/sim_throughput.py [--seed 1] [--clients 16] [--transfers 400]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from consensus.messages import Request
from consensus.state_machine import Execution
from finality.executor import LedgerExecutor
from sim.simulation import SimConfig, Simulation


class TimedExecutor(LedgerExecutor):
    execute_seconds = 0.0

    def execute(
        self, requests: Sequence[Request], first_timestamp: int, fallback_term: int = 0
    ) -> Execution:
        started = time.perf_counter()
        try:
            return super().execute(requests, first_timestamp, fallback_term)
        finally:
            TimedExecutor.execute_seconds += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--transfers", type=int, default=400, help="mean transfers per request")
    args = parser.parse_args()

    Simulation.executor_factory = TimedExecutor
    config = SimConfig(seed=args.seed, scenario="happy", clients=args.clients,
                       transfers_per_request=args.transfers, request_rate=1.0,
                       accounts=1000, checkpoint_interval=64)  # fmt: skip
    simulation = Simulation(config)
    started_wall = time.perf_counter()
    started_cpu = time.process_time()
    result = simulation.run()
    wall = time.perf_counter() - started_wall
    cpu = time.process_time() - started_cpu
    assert result.ok, result.failures
    blocks = max(result.blocks_decided, 1)
    replica_blocks = blocks * config.replicas
    print(
        json.dumps(
            {
                "benchmark": "sim_throughput",
                "sim_transfers_per_second": round(result.transfers_committed / wall),
                "consensus_cpu_ms_per_block": round(
                    (cpu - TimedExecutor.execute_seconds) * 1000 / replica_blocks, 3
                ),
                "execute_ms_per_block": round(
                    TimedExecutor.execute_seconds * 1000 / replica_blocks, 3
                ),
                "transfers_committed": result.transfers_committed,
                "blocks": blocks,
                "transfers_per_block": round(result.transfers_committed / blocks, 1),
                "wall_seconds": round(wall, 2),
                "replicas": config.replicas,
                "clients": args.clients,
                "seed": args.seed,
                "signatures": "ed25519",
            }
        )
    )


if __name__ == "__main__":
    main()
