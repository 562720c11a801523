"""End-to-end throughput of a real 4-process loopback cluster (mutual TLS gRPC, WAL fsync).

Prints one JSON line:
  transfers_per_second   FINAL transfers per wall-clock second, all clients together
  request_ms_p50 / p99   latency of one create_transfers call (a batch) until FINAL
plus the run's parameters.  Each of ``--clients`` threads has its own client identity
and one request in flight at a time; the replicas are stopped by PID at the end.
Never asserts a timing; quote medians of several runs.

    python bench/cluster_transfers.py [--clients 4] [--requests 10] [--batch 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ledger import Account, Transfer
from node.client import Client, ClientError
from node.cluster import child_env, node_command
from node.config import init_cluster

ACCOUNTS = 1000


def _wait_ready(client: Client, replicas: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            for replica in range(replicas):
                client.status(replica)
            return
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _load(path: Path, index: int, requests: int, batch: int, latencies: list[float]) -> None:
    with Client.from_file(str(path), timeout_s=60) as client:
        for number in range(requests):
            base = (index + 1) << 40 | number * batch
            transfers = [
                Transfer(id=base + k + 1, debit_account_id=1 + (base + k) % ACCOUNTS,
                         credit_account_id=1 + (base + k + 1) % ACCOUNTS, amount=1, ledger=1,
                         code=1)
                for k in range(batch)
            ]  # fmt: skip
            started = time.perf_counter()
            answer = client.create_transfers(transfers)
            latencies.append(time.perf_counter() - started)
            assert set(answer.codes) == {0}, set(answer.codes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=10, help="per client")
    parser.add_argument("--batch", type=int, default=2000, help="transfers per request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        layout = init_cluster(Path(directory) / "c", replicas=4, clients=args.clients)
        processes = [
            subprocess.Popen(
                node_command("node", "start", "--config", str(config)),
                env=child_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for config in layout.node_configs
        ]
        try:
            with Client.from_file(str(layout.client_configs[0]), timeout_s=30) as client:
                _wait_ready(client, 4)
                for first in range(1, ACCOUNTS + 1, 500):
                    client.create_accounts(
                        [Account(id=i, ledger=1, code=1) for i in range(first, first + 500)]
                    )
            latencies: list[float] = []
            threads = [
                threading.Thread(target=_load, args=(path, i, args.requests, args.batch, latencies))
                for i, path in enumerate(layout.client_configs)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
        finally:
            for process in processes:
                os.kill(process.pid, signal.SIGTERM)
            for process in processes:
                process.wait(30)
    total = args.clients * args.requests * args.batch
    latencies.sort()
    print(json.dumps({
        "clients": args.clients,
        "requests_per_client": args.requests,
        "batch": args.batch,
        "seconds": round(elapsed, 2),
        "transfers_per_second": round(total / elapsed),
        "request_ms_p50": round(statistics.median(latencies) * 1000, 1),
        "request_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
