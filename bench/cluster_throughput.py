"""Our 4-replica BFT cluster against a 3-node PySyncObj cluster: throughput and commit latency.

Both run on loopback on this machine, one after the other in the same run, driven by
closed-loop clients for the same duration (issue 6, section 4).

What one "operation" is:

* aegis: one transfer committed FINAL.  The client's ``create_transfers`` call returned
  a reply whose commit certificate (3 of 4 replica signatures) the client verified,
  with result code 0 for the transfer.  Four ``aegis node start`` processes (from
  ``init_cluster``, as ``aegis cluster init`` writes them), BFT mode, Ed25519
  signatures on, every WAL batch fdatasync'ed before anything leaves a replica.
  Clients batch: one request carries ``--batch`` transfers, because that is how our
  client API works; a second closed-loop phase uses ``--small-batch`` so the
  comparison does not rest on batching alone.
* pysyncobj: one increment of a ``@replicated`` counter whose callback fired with
  ``FAIL_REASON.SUCCESS`` on the node that submitted it, i.e. a majority (2 of 3)
  holds the entry and the submitting node applied it.  Three processes, each one
  ``SyncObj`` on a loopback TCP port; clients are callbacks inside each node process
  (``--pysyncobj-in-flight`` outstanding increments per node, re-submitted from
  the callback: closed loop, PySyncObj's cheapest way in).  Its log is in memory
  and nothing is fsync'ed (its default: no journal file) and nothing is signed, so
  it does less work per operation than we do.  Run twice: default ``SyncObjConf()``
  and tuned (``autoTickPeriod=0.005, appendEntriesPeriod=0.01``).

Throughput counts operations acknowledged inside the measurement window (after a
warm-up) divided by its length; latency is submit to acknowledgment of those
operations (for us one request = one batch, so all its transfers share it).

Phases per run (the order of the three systems rotates between runs; each aegis
phase gets a fresh cluster with 1000 accounts, so none pays for the ledger an earlier
one grew):

1. aegis ``closed``: ``--clients`` closed-loop clients x ``--batch`` transfers: our peak.
2. aegis ``closed_small_batch``: the same with ``--small-batch`` transfers per request.
3. aegis ``half_peak``: open loop at half of phase 1's throughput, requests of
   ``--latency-batch`` transfers, Poisson arrivals (seeded), served by up to 32
   clients; latency counts from the scheduled send time, so a request that waited
   for a free client is charged its wait.  The target: p99 <= 50 ms here.
4. aegis ``half_peak_small_batch``: the same at half of phase 2's throughput.
5. pysyncobj default, then tuned: closed loop at each ``--pysyncobj-in-flight``
   (its peak is the best of them), then open loop at half that peak.

The ratios ours / PySyncObj use the closed-loop peaks; in the medians line they are
ratios of the median figures.

Keep (warm-up + duration) x our peak well under 500,000 transfers: every 16 blocks a
replica copies its whole ledger into a checkpoint, and one over 64 MiB (about 520,000
transfers) stops every replica (bench/README.md, "What limits us").

Prints one JSON line per run to stdout, then one with the medians over runs; progress
goes to stderr.  Each line records ``os.getloadavg()`` at start and end, and CPU
seconds used by the replicas and by the clients in each window, so figures from a
busy host can be told apart.  Every process started here is stopped by its PID, on
failure and Ctrl-C too.  Never asserts a timing.

    python bench/cluster_throughput.py [--duration 10] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final

from cluster_transfers import ACCOUNTS, _wait_ready

from ledger import Account, Transfer
from node.client import Client, ClientError
from node.cluster import child_env, node_command, start_replicas, stop_replicas
from node.config import Tuning, free_ports, init_cluster

REPLICAS: Final = 4
PYSYNCOBJ_NODES: Final = 3
PYSYNCOBJ_CONFS: Final[dict[str, dict[str, float]]] = {
    "default": {},
    "tuned": {"autoTickPeriod": 0.005, "appendEntriesPeriod": 0.01},
}
SYSTEMS: Final = ("aegis", "pysyncobj-default", "pysyncobj-tuned")
LATENCY_TARGET_MS: Final = 50.0
OPEN_LOOP_CLIENTS_MAX: Final = 32  # client identities serving the open-loop schedule
READY_TIMEOUT_S: Final = 60.0
DRAIN_TIMEOUT_S: Final = 30.0  # operations still in flight after a window
SEND_SLACK_S: Final = 0.001  # open loop: sends up to this late, charged to latency
CLIENT_ID_BITS: Final = 36  # transfer id = client << 36 | sequence


def say(message: str) -> None:
    print(f"[cluster_throughput] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    assert sorted_values, "no samples"
    assert 0 < fraction <= 1
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """When load starts, when counting starts (after the warm-up) and when both end
    (``time.monotonic``, which is one clock for every process on Linux)."""

    start_at: float
    measure_from: float
    end: float

    @classmethod
    def after(cls, delay_s: float, warmup_s: float, duration_s: float) -> Window:
        assert delay_s >= 0 and warmup_s >= 0 and duration_s > 0
        start_at = time.monotonic() + delay_s
        return cls(start_at=start_at, measure_from=start_at + warmup_s,
                   end=start_at + warmup_s + duration_s)  # fmt: skip

    @property
    def duration_s(self) -> float:
        return self.end - self.measure_from

    def counts(self, finished: float) -> bool:
        return self.measure_from <= finished < self.end


@dataclass(slots=True)
class Samples:
    """Acknowledged operations of one phase; ``record`` keeps those inside the window."""

    window: Window
    operations: int = 0
    requests: int = 0
    failed_requests: int = 0
    latencies_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, started: float, finished: float, operations: int) -> None:
        if not self.window.counts(finished):
            return
        with self.lock:
            self.operations += operations
            self.requests += 1
            self.latencies_s.append(finished - started)

    def figures(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_s)
        duration_s = self.window.duration_s
        return {
            "ops_per_s": round(self.operations / duration_s, 1),
            "requests_per_s": round(self.requests / duration_s, 1),
            "latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 1) if latencies else None,
            "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
            "latency_ms_max": round(latencies[-1] * 1000, 1) if latencies else None,
            "failed_requests": self.failed_requests,
        }


def poisson_schedule(rate_per_s: float, window: Window, seed: int) -> Iterator[float]:
    """Send times of an open-loop load: Poisson arrivals from ``window.start_at`` to its end."""
    assert rate_per_s > 0
    rng = random.Random(seed)
    moment = window.start_at
    while True:
        moment += rng.expovariate(rate_per_s)
        if moment >= window.end:
            return
        yield moment


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Let clean-up run to its end: a SIGINT or SIGTERM arriving meanwhile is raised again
    after it (``signal`` handlers belong to the main thread, where clean-up runs)."""
    assert threading.current_thread() is threading.main_thread()
    caught: list[int] = []
    numbers = (signal.SIGINT, signal.SIGTERM)
    previous = {n: signal.signal(n, lambda number, frame: caught.append(number)) for n in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])


def sleep_until(moment: float) -> None:
    delay_s = moment - time.monotonic()
    if delay_s > 0:
        time.sleep(delay_s)


# ---------------------------------------------------------------------------- aegis


def transfers(first_id: int, count: int) -> list[Transfer]:
    """``count`` transfers of 1 between neighbouring accounts: all of them succeed."""
    return [
        Transfer(id=first_id + k, debit_account_id=1 + (first_id + k) % ACCOUNTS,
                 credit_account_id=1 + (first_id + k + 1) % ACCOUNTS, amount=1, ledger=1, code=1)
        for k in range(count)
    ]  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """One phase's load on our cluster: closed loop (``rate_ops_per_s`` None) or open loop."""

    batch: int
    clients: int
    rate_ops_per_s: float | None = None
    seed: int = 1


class AegisCluster:
    """Four replica processes in a temporary directory, started and stopped by PID."""

    def __init__(self, directory: Path, clients: int, profile: Path | None = None,
                 profiled_replica: int = 0, tuning: Tuning | None = None) -> None:  # fmt: skip
        self.directory = directory
        self.clients = clients
        self.tuning = tuning  # None: the node's defaults
        self.profile = profile  # where cProfile writes the profiled replica's statistics
        self.profiled_replica = profiled_replica
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> AegisCluster:
        self.layout = init_cluster(
            self.directory, replicas=REPLICAS, clients=self.clients, tuning=self.tuning
        )
        try:
            with uninterrupted():  # no process may start untracked
                self.processes = start_replicas(self.layout.node_configs)
                if self.profile is not None:
                    self._profile_one()
            say(f"aegis: replicas started, PIDs {[p.pid for p in self.processes]}")
            with Client.from_file(str(self.layout.client_configs[0]), timeout_s=30) as client:
                _wait_ready(client, REPLICAS)
                for first in range(1, ACCOUNTS + 1, 500):
                    accounts = [Account(id=i, ledger=1, code=1) for i in range(first, first + 500)]
                    client.create_accounts(accounts)
        except BaseException:
            self._stop()
            raise
        return self

    def _profile_one(self) -> None:
        """Restart one replica (before it took any work) under cProfile, which writes its
        statistics when the replica stops cleanly."""
        assert self.profile is not None
        replica = self.profiled_replica
        stop_replicas([self.processes[replica]])
        config = self.layout.node_configs[replica]
        self.profile.parent.mkdir(parents=True, exist_ok=True)
        with (config.parent / "node.log").open("ab") as log_file:
            self.processes[replica] = subprocess.Popen(
                node_command("node", "start", "--config", str(config),
                             python=("-m", "cProfile", "-o", str(self.profile))),
                env=child_env(),
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        self._stop()

    def _stop(self) -> None:
        # A profiled replica takes longer to stop, and writes its profile only if it does.
        with uninterrupted():
            stop_replicas(self.processes, wait_s=10 if self.profile is None else 60)
        for replica, process in enumerate(self.processes):
            if process.returncode not in (0, None):
                log = self.layout.node_configs[replica].parent / "node.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
                say(f"aegis: replica {replica} exited {process.returncode}; log ends:\n{tail}")

    def replica_cpu_seconds(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.processes]

    def run(self, load: Load, window: Window) -> dict[str, Any]:
        """Drive one phase to its window's end; its figures, with CPU per side."""
        assert load.clients <= self.clients, "more clients than identities"
        samples = Samples(window)
        errors: list[BaseException] = []
        if load.rate_ops_per_s is None:
            schedule: Iterator[float] | None = None
        else:
            rate_requests_per_s = load.rate_ops_per_s / load.batch
            schedule = poisson_schedule(rate_requests_per_s, window, load.seed)
        schedule_lock = threading.Lock()
        threads = [
            threading.Thread(
                target=self._client, daemon=True, name=f"aegis-client-{index}",
                args=(index, load, samples, schedule, schedule_lock, errors),
            )
            for index in range(load.clients)
        ]  # fmt: skip
        for thread in threads:
            thread.start()
        sleep_until(window.measure_from)
        replicas_before, clients_before = self.replica_cpu_seconds(), own_cpu_seconds()
        sleep_until(window.end)
        replicas_after, clients_after = self.replica_cpu_seconds(), own_cpu_seconds()
        for thread in threads:
            thread.join(DRAIN_TIMEOUT_S + 60)
        if errors:
            raise errors[0]
        figures = {"batch": load.batch, "clients": load.clients, **samples.figures()}
        if load.rate_ops_per_s is not None:
            figures["offered_ops_per_s"] = round(load.rate_ops_per_s, 1)
        figures["cpu_s_replicas"] = [round(b - a, 2) for a, b in
                                     zip(replicas_before, replicas_after, strict=True)]  # fmt: skip
        figures["cpu_s_clients"] = round(clients_after - clients_before, 2)
        return figures

    def _client(self, index: int, load: Load, samples: Samples, schedule: Iterator[float] | None,
                schedule_lock: threading.Lock, errors: list[BaseException]) -> None:  # fmt: skip
        """One client identity: closed loop (next request when the last is FINAL) or taking
        the next scheduled send time of the open-loop schedule."""
        path = str(self.layout.client_configs[index])
        id_base = index << CLIENT_ID_BITS
        try:
            with Client.from_file(path, timeout_s=60) as client:
                for number in range(1 << CLIENT_ID_BITS):
                    batch = transfers(id_base + number * load.batch + 1, load.batch)
                    if schedule is None:
                        if time.monotonic() >= samples.window.end:
                            return
                        sleep_until(samples.window.start_at)
                        started = time.monotonic()
                    else:
                        with schedule_lock:
                            started = next(schedule, math.inf)
                        if started == math.inf:
                            return
                        sleep_until(started)  # late when every client was busy: charged
                    answer = client.create_transfers(batch)
                    finished = time.monotonic()
                    if set(answer.codes) != {0}:
                        with samples.lock:
                            samples.failed_requests += 1
                        continue
                    samples.record(started, finished, load.batch)
        except BaseException as error:  # reported by ``run``; a thread must not die silently
            errors.append(error)

    def check(self) -> dict[str, Any]:
        """Every replica's mode, regency and FINAL height, and whether they agree on the
        state (at one height); a replica that does not answer counts as disagreeing."""
        statuses: list[dict[str, object] | None] = []
        with Client.from_file(str(self.layout.client_configs[0]), timeout_s=10) as client:
            deadline = time.monotonic() + 10
            while True:
                statuses = [self._status(client, replica) for replica in range(REPLICAS)]
                heights = {None if status is None else status["height"] for status in statuses}
                if len(heights) == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)

        def each(key: str) -> list[Any]:
            return [None if status is None else status[key] for status in statuses]

        return {
            "modes": [mode or "unreachable" for mode in each("mode")],
            "regencies": [regency or 0 for regency in each("regency")],
            "heights": [height or 0 for height in each("height")],
            "state_hashes_agree": None not in statuses and len(set(each("state_hash"))) == 1,
        }

    @staticmethod
    def _status(client: Client, replica: int) -> dict[str, object] | None:
        try:
            return client.status(replica)
        except ClientError as error:
            say(f"aegis: replica {replica} did not answer Status: {error}")
            return None


def _tuning(args: argparse.Namespace) -> Tuning | None:
    if args.checkpoint_interval is None:
        return None
    return Tuning(checkpoint_interval=args.checkpoint_interval)


def run_aegis(args: argparse.Namespace, run_index: int) -> dict[str, Any]:
    """Each phase on a fresh cluster (1000 accounts, no transfers yet), so no phase pays
    for the ledger an earlier one grew (checkpoints copy the whole ledger; README)."""
    seed = args.seed + run_index
    figures: dict[str, Any] = {}

    def phase(name: str, load: Load) -> dict[str, Any]:
        rate = "closed loop" if load.rate_ops_per_s is None else f"{load.rate_ops_per_s:.0f}/s"
        say(f"aegis: {name}: batch {load.batch}, {load.clients} clients, {rate}")
        profile = None
        if args.profile is not None:
            file = f"run-{run_index + 1}-{name}-replica-{args.profile_replica}.prof"
            profile = Path(args.profile) / file
        with (
            tempfile.TemporaryDirectory(prefix="aegis-bench-") as directory,
            AegisCluster(
                Path(directory) / "cluster",
                OPEN_LOOP_CLIENTS_MAX,
                profile,
                args.profile_replica,
                _tuning(args),
            ) as cluster,
        ):
            window = Window.after(0.2, args.warmup, args.duration)
            figures[name] = cluster.run(load, window)
            figures[name]["replicas"] = cluster.check()
        say(f"aegis: {name}: {json.dumps(figures[name])}")
        return figures[name]

    peak = phase("closed", Load(batch=args.batch, clients=args.clients))
    small = phase("closed_small_batch", Load(batch=args.small_batch, clients=args.clients))
    for name, closed, batch in (("half_peak", peak, args.latency_batch),
                                ("half_peak_small_batch", small, args.small_batch)):  # fmt: skip
        if closed["ops_per_s"] > 0:
            rate_ops_per_s = closed["ops_per_s"] / 2
            phase(name, Load(batch=batch, clients=OPEN_LOOP_CLIENTS_MAX,
                             rate_ops_per_s=rate_ops_per_s, seed=seed))  # fmt: skip
    return figures


# ---------------------------------------------------------------------------- pysyncobj


def pysyncobj_node(spec: dict[str, Any]) -> None:
    """A PySyncObj node process (hidden ``--pysyncobj-node``): one SyncObj with a replicated
    counter; answers each JSON command line on stdin with one JSON line on stdout."""
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self, address: str, partners: list[str], conf: SyncObjConf) -> None:
            super().__init__(address, partners, conf)
            self.value = 0

        @replicated  # type: ignore[misc]
        def increment(self) -> int:
            self.value += 1
            return self.value

    addresses = [f"127.0.0.1:{port}" for port in spec["ports"]]
    me = spec["index"]
    counter = Counter(addresses[me], addresses[:me] + addresses[me + 1 :],
                      SyncObjConf(**spec["conf"]))  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while counter._getLeader() is None or not counter.isReady():
        if time.monotonic() > deadline:
            raise SystemExit(f"pysyncobj node {me}: no leader within {READY_TIMEOUT_S} s")
        time.sleep(0.05)
    print(json.dumps({"ready": True}), flush=True)
    successes = 0
    for line in sys.stdin:
        command = json.loads(line)
        if command["phase"] == "stop":
            break
        if command["phase"] == "check":
            reply = {"counter": counter.value, "successes_total": successes}
        else:
            reply = pysyncobj_phase(counter, command, me, FAIL_REASON.SUCCESS)
            successes += reply.pop("successes")
        reply["leader"] = counter._isLeader()
        print(json.dumps(reply), flush=True)
    counter.destroy()


def pysyncobj_phase(counter: Any, command: dict[str, Any], me: int, success: int) -> dict[str, Any]:
    """One phase on one node: closed loop (``in_flight`` increments outstanding) or open
    loop (this node's third of ``offered_ops_per_s``, Poisson, seeded per node)."""
    window = Window(start_at=command["start_at"], measure_from=command["measure_from"],
                    end=command["end"])  # fmt: skip
    closed_loop = command["phase"] == "closed"
    driver = _PysyncobjLoad(counter, window, success, closed_loop)
    cpu = CpuMeter(window, time.process_time)  # the whole process: every thread
    cpu.start()
    if closed_loop:
        sleep_until(window.start_at)
        for _ in range(command["in_flight"]):
            driver.submit(time.monotonic())
    else:
        rate_per_s = command["offered_ops_per_s"] / PYSYNCOBJ_NODES
        seed = command["seed"] * PYSYNCOBJ_NODES + me
        for moment in poisson_schedule(rate_per_s, window, seed):
            if moment > time.monotonic():  # wake once per SEND_SLACK_S, not once per increment
                sleep_until(moment + SEND_SLACK_S)
            driver.submit(moment)
    cpu.join()
    drained = driver.drained.wait(DRAIN_TIMEOUT_S)
    return {
        "operations": driver.samples.operations,
        "latencies_us": [round(s * 1e6) for s in driver.samples.latencies_s],
        "failures": driver.failures,
        "drained": drained,
        "cpu_s": round(cpu.seconds, 2),
        "successes": driver.successes,
    }


class CpuMeter(threading.Thread):
    """How far ``read`` (CPU seconds) advanced inside a window, read on a thread of its own."""

    def __init__(self, window: Window, read: Callable[[], float]) -> None:
        super().__init__(daemon=True, name="cpu-meter")
        self.window = window
        self.read = read
        self.seconds = math.nan

    def run(self) -> None:
        sleep_until(self.window.measure_from)
        before = self.read()
        sleep_until(self.window.end)
        self.seconds = self.read() - before


class _PysyncobjLoad:
    """Submits increments with a callback.  Closed loop: the callback submits the next one
    until the window ends (it runs on the SyncObj's tick thread)."""

    def __init__(self, counter: Any, window: Window, success: int, closed_loop: bool) -> None:
        self.counter = counter
        self.window = window
        self.success = success
        self.closed_loop = closed_loop
        self.samples = Samples(window)
        self.failures: dict[str, int] = {}
        self.successes = 0
        self.in_flight = 0
        self.lock = threading.Lock()
        self.drained = threading.Event()
        self.drained.set()  # nothing in flight yet

    def submit(self, started: float) -> None:
        with self.lock:
            self.in_flight += 1
            self.drained.clear()
        self.counter.increment(callback=functools.partial(self.done, started))

    def done(self, started: float, result: object, error: int) -> None:
        finished = time.monotonic()
        if error == self.success:
            self.successes += 1
            self.samples.record(started, finished, 1)
        else:
            self.failures[str(error)] = self.failures.get(str(error), 0) + 1
        with self.lock:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.drained.set()
        if self.closed_loop and finished < self.window.end:
            self.submit(time.monotonic())


class PysyncobjCluster:
    """Three PySyncObj node processes, started and stopped by PID."""

    def __init__(self, conf: dict[str, float], log_dir: Path) -> None:
        self.conf = conf
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> PysyncobjCluster:
        ports = free_ports(PYSYNCOBJ_NODES)
        try:
            with uninterrupted():  # no process may start untracked
                for index in range(PYSYNCOBJ_NODES):
                    self._start_node(index, ports)
            say(f"pysyncobj: nodes started, PIDs {[p.pid for p in self.processes]}")
            self._replies(time.monotonic() + READY_TIMEOUT_S)
        except BaseException:
            self._stop()
            raise
        return self

    def _start_node(self, index: int, ports: list[int]) -> None:
        spec = json.dumps({"index": index, "ports": ports, "conf": self.conf})
        with (self.log_dir / f"pysyncobj-{index}.log").open("ab") as log_file:
            self.processes.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--pysyncobj-node", spec],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                start_new_session=True,
            ))  # fmt: skip

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        self._stop()

    def _stop(self) -> None:
        """Ask each node to stop (stdin), then SIGTERM / SIGKILL by PID what is left."""
        with uninterrupted():
            for process in self.processes:
                with contextlib.suppress(OSError, ValueError):
                    assert process.stdin is not None
                    process.stdin.write(b'{"phase": "stop"}\n')
                    process.stdin.close()
            deadline = time.monotonic() + 3
            for process in self.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.0, deadline - time.monotonic()))
            stop_replicas(self.processes, wait_s=5)

    def _replies(self, deadline: float) -> list[dict[str, Any]]:
        replies = []
        for index, process in enumerate(self.processes):
            assert process.stdout is not None
            ready, _, _ = select.select(
                [process.stdout], [], [], max(0, deadline - time.monotonic())
            )
            line = process.stdout.readline() if ready else b""
            if not line:
                log = self.log_dir / f"pysyncobj-{index}.log"
                raise RuntimeError(f"pysyncobj node {index} did not answer; see {log}: "
                                   f"{log.read_text()[-2000:]}")  # fmt: skip
            replies.append(json.loads(line))
        return replies

    def send(self, command: dict[str, Any]) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(json.dumps(command).encode() + b"\n")
            process.stdin.flush()

    def check(self) -> dict[str, Any]:
        """Whether every node's counter holds the same value, at least every acknowledged
        increment; ``applied_unacknowledged``: applied although their callback reported a
        failure (or has not fired)."""
        deadline = time.monotonic() + 10
        while True:
            self.send({"phase": "check"})
            replies = self._replies(time.monotonic() + 30)
            counters = [reply["counter"] for reply in replies]
            acknowledged = sum(reply["successes_total"] for reply in replies)
            agree = len(set(counters)) == 1 and counters[0] >= acknowledged
            if (agree and counters[0] == acknowledged) or time.monotonic() > deadline:
                return {"counters": counters, "acknowledged": acknowledged, "agree": agree,
                        "applied_unacknowledged": counters[0] - acknowledged}  # fmt: skip
            time.sleep(0.2)

    def run(self, command: dict[str, Any], window: Window) -> dict[str, Any]:
        self.send({**command, "start_at": window.start_at, "measure_from": window.measure_from,
                   "end": window.end})  # fmt: skip
        replies = self._replies(window.end + DRAIN_TIMEOUT_S + 30)
        samples = Samples(window)
        samples.operations = sum(reply["operations"] for reply in replies)
        samples.requests = samples.operations
        samples.latencies_s = [us / 1e6 for reply in replies for us in reply["latencies_us"]]
        failures: dict[str, int] = {}
        for reply in replies:
            for reason, count in reply["failures"].items():
                failures[reason] = failures.get(reason, 0) + count
        figures = samples.figures()
        del figures["requests_per_s"], figures["failed_requests"]
        return {
            **{k: v for k, v in command.items() if k not in ("phase", "seed")},
            **figures,
            "failures_by_reason": failures,
            "cpu_s_nodes": [reply["cpu_s"] for reply in replies],
            "leader": [reply["leader"] for reply in replies].index(True)
            if any(reply["leader"] for reply in replies) else None,
            "drained": all(reply["drained"] for reply in replies),
        }  # fmt: skip


def run_pysyncobj(args: argparse.Namespace, name: str, run_index: int) -> dict[str, Any]:
    conf = PYSYNCOBJ_CONFS[name]
    figures: dict[str, Any] = {"conf": conf or "SyncObjConf() defaults"}
    with (
        tempfile.TemporaryDirectory(prefix="pysyncobj-bench-") as directory,
        PysyncobjCluster(conf, Path(directory)) as cluster,
    ):
        by_in_flight = {}
        for in_flight in args.pysyncobj_in_flight:
            say(f"pysyncobj {name}: closed loop, {in_flight} in flight per node")
            window = Window.after(0.5, args.warmup, args.duration)
            by_in_flight[in_flight] = cluster.run(
                {"phase": "closed", "in_flight": in_flight}, window
            )
            say(f"pysyncobj {name}: closed: {json.dumps(by_in_flight[in_flight])}")
        closed = max(by_in_flight.values(), key=lambda figures: figures["ops_per_s"])
        figures["closed"] = closed  # its peak: the best of the concurrencies tried
        figures["closed_by_in_flight"] = {str(k): v for k, v in by_in_flight.items()}
        if closed["ops_per_s"] > 0:
            rate = {"phase": "rate", "offered_ops_per_s": closed["ops_per_s"] / 2,
                    "seed": args.seed + run_index}  # fmt: skip
            window = Window.after(0.5, args.warmup, args.duration)
            figures["half_peak"] = cluster.run(rate, window)
            say(f"pysyncobj {name}: half_peak: {json.dumps(figures['half_peak'])}")
        figures["counters"] = cluster.check()
    return figures


# ---------------------------------------------------------------------------- runs


def one_run(args: argparse.Namespace, run_index: int) -> dict[str, Any]:
    """One run of every selected system; the order rotates with ``run_index``."""
    figures: dict[str, Any] = {"run": run_index + 1, "load_average_start": load_average()}
    order = [s for s in SYSTEMS if s in args.systems]
    rotation = run_index % len(order)
    for system in order[rotation:] + order[:rotation]:
        say(f"run {run_index + 1}: {system} (load average {load_average()})")
        if system == "aegis":
            figures["aegis"] = run_aegis(args, run_index)
        else:
            figures[system] = run_pysyncobj(args, system.removeprefix("pysyncobj-"), run_index)
    figures["load_average_end"] = load_average()
    figures.update(verdict(figures))
    return figures


def verdict(figures: dict[str, Any]) -> dict[str, Any]:
    """Ratios ours / PySyncObj and whether the issue's targets are met by these figures."""
    ours = figures.get("aegis", {})
    result: dict[str, Any] = {"ratio": {}}
    for name in ("default", "tuned"):
        theirs = figures.get(f"pysyncobj-{name}", {}).get("closed", {}).get("ops_per_s")
        if not theirs or "closed" not in ours:
            continue
        result["ratio"][f"vs_pysyncobj_{name}"] = round(ours["closed"]["ops_per_s"] / theirs, 2)
        small = ours["closed_small_batch"]["ops_per_s"]
        result["ratio"][f"small_batch_vs_pysyncobj_{name}"] = round(small / theirs, 2)
    target: dict[str, Any] = {}
    if "vs_pysyncobj_tuned" in result["ratio"]:
        target["throughput_at_least_tuned_pysyncobj"] = result["ratio"]["vs_pysyncobj_tuned"] >= 1
    p99 = ours.get("half_peak", {}).get("latency_ms_p99")
    if p99 is not None:
        target[f"p99_at_half_peak_at_most_{LATENCY_TARGET_MS:g}_ms"] = p99 <= LATENCY_TARGET_MS
    result["target_met"] = target
    return result


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}{key}.")
    else:
        yield prefix[:-1], value


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric figure over the runs (per-replica lists element-wise), and
    the ratios and targets recomputed from those medians."""
    columns: dict[str, list[Any]] = {}
    for run in runs:
        for key, value in flatten(run):
            columns.setdefault(key, []).append(value)
    nested: dict[str, Any] = {}
    for key, values in columns.items():
        skipped = key.startswith(("ratio.", "target_met.")) or ".conf." in key or key == "run"
        if skipped or len(values) != len(runs):
            continue
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            median: Any = round(statistics.median(values), 3)
        elif all(isinstance(v, list) and all(isinstance(x, int | float) for x in v)
                 and len(v) == len(values[0]) for v in values):  # fmt: skip
            median = [round(statistics.median(c), 3) for c in zip(*values, strict=True)]
        else:
            continue
        place = nested
        *parents, leaf = key.split(".")
        for parent in parents:
            place = place.setdefault(parent, {})
        place[leaf] = median
    nested.update(verdict(nested))
    return nested


def checks(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What must hold in every run for its figures to mean anything: replicas agree and
    stayed in BFT mode; PySyncObj counters hold exactly the acknowledged increments."""
    aegis = [phase for run in runs for phase in run.get("aegis", {}).values()]
    pysyncobj = [run[s] for run in runs for s in SYSTEMS[1:] if s in run]
    phases = [phase for system in pysyncobj for phase in system["closed_by_in_flight"].values()]
    phases += [system["half_peak"] for system in pysyncobj if "half_peak" in system]
    return {
        "aegis_state_hashes_agree": all(p["replicas"]["state_hashes_agree"] for p in aegis),
        "aegis_always_bft_mode": all(m == "bft" for p in aegis for m in p["replicas"]["modes"]),
        "aegis_regency_max": max((r for p in aegis for r in p["replicas"]["regencies"]), default=0),
        "aegis_failed_requests": sum(p["failed_requests"] for p in aegis),
        "pysyncobj_counters_agree": all(system["counters"]["agree"] for system in pysyncobj),
        "pysyncobj_failed_increments": sum(
            sum(p.get("failures_by_reason", {}).values()) for p in phases
        ),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--duration", type=float,
        help="measured seconds per phase (10; --quick: 2); see the ledger bound above")  # fmt: skip
    add("--warmup", type=float, help="seconds of load before each window (2; --quick: 0.5)")
    add("--runs", type=int, help="runs, each printed, then their medians (3; --quick: 1)")
    add("--quick", action="store_true", help="smoke run: shorter defaults for the three above")
    add("--seed", type=int, default=1, help="seed of the open-loop schedules (1)")
    add("--clients", type=int, default=8, help="aegis closed-loop clients (8), one identity each")
    add("--batch", type=int, default=2000, help="transfers per aegis request at peak (2000)")
    add("--small-batch", type=int, default=10, help="transfers per request, small batches (10)")
    add("--latency-batch", type=int, default=2000, help="transfers per request at half peak (2000)")
    add("--pysyncobj-in-flight", default="1024,4096",
        help="outstanding increments per PySyncObj node, closed loop; one phase each, its "
        "peak is the best (1024,4096)")  # fmt: skip
    add("--systems", default=",".join(SYSTEMS), help=f"a subset of {','.join(SYSTEMS)}")
    add("--profile", metavar="DIR",
        help="run one of our replicas under cProfile, one file per run and phase in DIR "
        "(slows it: for finding where time goes, not for figures)")  # fmt: skip
    add("--profile-replica", type=int, default=0, choices=range(REPLICAS),
        help="which replica --profile profiles (0, the first leader)")  # fmt: skip
    add("--checkpoint-interval", type=int, metavar="BLOCKS",
        help="our replicas' checkpoint interval (the node's default, "
        f"{Tuning().checkpoint_interval}); a large one keeps checkpoints out of the "
        "windows, to see what they cost")  # fmt: skip
    add("--pysyncobj-node", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = {"duration": 2.0, "warmup": 0.5, "runs": 1} if args.quick else \
        {"duration": 10.0, "warmup": 2.0, "runs": 3}  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown or not args.systems:
        parser.error(f"--systems: unknown {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    try:
        args.pysyncobj_in_flight = [int(n) for n in args.pysyncobj_in_flight.split(",")]
    except ValueError:
        parser.error("--pysyncobj-in-flight: comma-separated integers")
    if not args.pysyncobj_in_flight or min(args.pysyncobj_in_flight) <= 0:
        parser.error("--pysyncobj-in-flight: positive integers")
    if args.checkpoint_interval is not None and args.checkpoint_interval <= 0:
        parser.error("--checkpoint-interval must be positive")
    for name in ("duration", "runs", "clients", "batch", "small_batch", "latency_batch"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.clients > OPEN_LOOP_CLIENTS_MAX:
        parser.error(f"--clients must be at most {OPEN_LOOP_CLIENTS_MAX}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.pysyncobj_node is not None:
        pysyncobj_node(json.loads(args.pysyncobj_node))
        return

    def on_terminate(number: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + number)  # unwinds through every cluster's clean-up

    signal.signal(signal.SIGTERM, on_terminate)
    say(f"{args.runs} run(s), {args.duration:g} s windows after {args.warmup:g} s warm-up, "
        f"{os.cpu_count()} CPUs, load average {load_average()}")  # fmt: skip
    runs = []
    for run_index in range(args.runs):
        runs.append(one_run(args, run_index))
        print(json.dumps(runs[-1]), flush=True)
    summary = {"medians_of_runs": len(runs), "cpus": os.cpu_count(),
               "aegis_checkpoint_interval": (args.checkpoint_interval
                                             or Tuning().checkpoint_interval),
               **medians(runs)}  # fmt: skip
    summary["checks"] = checks(runs)
    summary["load_average_max"] = max(max(r["load_average_start"][0], r["load_average_end"][0])
                                      for r in runs)  # fmt: skip
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
