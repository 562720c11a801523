"""The asyncio driver: one replica's core objects, fed from the network, the clock and
clients, with the Effects contract kept.

Guarantees:

* The core is the simulator's: a ``ModeController`` around a ``BftReplica`` and a
  ``RaftCore`` sharing one ``LedgerExecutor`` (``build_core``).  Only the driver's
  task steps or ticks it; everything else reads it between rounds.
* Persist before send (``consensus.effects``): in every round the persist records
  of all inputs stepped are appended to the write-ahead log as one batch
  (``writev`` + ``fdatasync``); only then are that round's messages handed to the
  transport and its replies to waiting clients, and ``Persisted(upto=...)`` is
  stepped back in (its own effects go through the same gate).
* Recovery: on start the WAL's records are handed to the cores, which rebuild
  from them; a corrupt log (``WalCorruption``) stops the start with the report.
* Time: ticks follow the monotonic clock from a start value read off the wall
  clock relative to the cluster's ``genesis_ns`` (so replicas stamp blocks with
  comparable times); at most ``TICKS_PER_ROUND_MAX`` ticks are run per round, so a
  stalled loop catches up gradually instead of firing every timeout at once.
* Reads (``read_model``) see FINAL state only: a second executor applies decided
  blocks (the core's own executor also holds speculative and provisional blocks);
  it is rebuilt from the core's checkpoint and log whenever it falls out of step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from consensus.bft.replica import BftReplica, Genesis, ReplicaConfig, genesis_header
from consensus.crypto import Ed25519Verifier
from consensus.effects import Effects, PersistRecord
from consensus.messages import DecidedBlock, Finality, Persisted, Reply, Request
from consensus.mode import ModeConfig, ModeController, assemble
from consensus.raft.core import RaftConfig
from consensus.wire import encode
from finality.executor import LedgerExecutor
from ledger import Ledger
from node.config import NodeConfig
from node.transport import Inbound, Transport
from node.wal import WAL_BATCH_RECORDS_MAX, WriteAheadLog

TICKS_PER_ROUND_MAX: Final = 50
INPUTS_PER_ROUND_MAX: Final = 64  # frames or client requests stepped before one WAL batch
WAITERS_MAX: Final = 16_384  # client calls waiting for an answer, all clients together
WATCHERS_MAX: Final = 64  # WatchCommits streams
WATCH_BLOCKS_MAX: Final = 256  # decided blocks queued for one watcher before it is dropped
log = logging.getLogger("aegis.driver")


class Overloaded(RuntimeError):
    """The replica cannot take more client work right now; the client should retry."""


def genesis_of(config: NodeConfig) -> Genesis:
    """Height 0 of a cluster: an empty ledger, stamped just before ``genesis_ns``."""
    ledger = Ledger()
    return Genesis(
        header=genesis_header(ledger.state_hash(), config.genesis_ns - 1),
        snapshot=ledger.snapshot(),
    )


def new_executor(config: NodeConfig, genesis: Genesis) -> LedgerExecutor:
    executor = LedgerExecutor(Ledger.restore(genesis.snapshot))
    executor.operators = frozenset(c.id for c in config.clients if c.operator)
    return executor


def build_core(
    config: NodeConfig, records: Sequence[PersistRecord], ticks: int, rng: random.Random
) -> ModeController:
    """The replica's cores, wired exactly as the simulator wires them."""
    genesis = genesis_of(config)
    tuning = config.tuning
    tick_ns = config.tick_ms * 1_000_000
    signer = config.signer()
    verifier = Ed25519Verifier({p.id: p.public_key for p in config.replicas}, cache_max=1 << 14)
    client_verifier = Ed25519Verifier({c.id: c.public_key for c in config.clients})
    executor = new_executor(config, genesis)
    return assemble(
        ReplicaConfig(
            replica_id=config.replica_id,
            replicas=config.n,
            genesis_ns=config.genesis_ns,
            tick_ns=tick_ns,
            checkpoint_interval=tuning.checkpoint_interval,
            request_timeout_ticks=tuning.request_timeout_ticks,
            regency_timeout_ticks=tuning.regency_timeout_ticks,
        ),
        RaftConfig(
            replica_id=config.replica_id,
            replicas=config.n,
            genesis_ns=config.genesis_ns,
            tick_ns=tick_ns,
        ),
        ModeConfig(enabled=tuning.fallback, fallback_after_ticks=tuning.fallback_after_ticks),
        signer,
        verifier,
        client_verifier,
        executor,
        genesis,
        rng,
        records,
        ticks=ticks,
    )


class ReadModel:
    """The FINAL state, for lookups: decided blocks applied to an executor of its own."""

    def __init__(self, config: NodeConfig, core: BftReplica) -> None:
        self.config = config
        self.executor = new_executor(config, genesis_of(config))
        self.height = 0
        self.rebuild(core)

    def rebuild(self, core: BftReplica) -> None:
        self.executor.restore(core.base_snapshot, core.base_header.state_hash)
        self.height = core.base_height
        for height in range(core.base_height + 1, core.decided_height + 1):
            self._execute(core.log[height])
        assert self.height == core.decided_height

    def apply(self, decided: DecidedBlock, core: BftReplica) -> None:
        if decided.block.header.height != self.height + 1:
            self.rebuild(core)  # a checkpoint was installed (state transfer) or we lagged
        else:
            self._execute(decided)

    def _execute(self, decided: DecidedBlock) -> None:
        header = decided.block.header
        assert header.height == self.height + 1
        execution = self.executor.execute(
            decided.block.requests, header.timestamp, fallback_term=header.fallback_term
        )
        assert execution.state_hash == header.state_hash, "the read model diverged"
        self.height = header.height

    @property
    def ledger(self) -> Ledger:
        return self.executor.ledger


@dataclass(slots=True)
class _Waiter:
    level: Finality
    future: asyncio.Future[Reply]


class Watch:
    """One WatchCommits stream: FINAL blocks in height order, as they are decided.

    ``queue`` holds at most ``WATCH_BLOCKS_MAX`` blocks; a watcher that falls further
    behind is ended (``overflowed``) rather than allowed to hold memory."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[DecidedBlock | None] = asyncio.Queue(WATCH_BLOCKS_MAX + 1)
        self.overflowed = False

    def offer(self, decided: DecidedBlock) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= WATCH_BLOCKS_MAX:
            self.overflowed = True
            self.queue.put_nowait(None)  # wakes the stream, which then ends
            return
        self.queue.put_nowait(decided)


@dataclass(slots=True)
class DriverStats:
    rounds: int = 0
    wal_batches: int = 0
    wal_records: int = 0
    messages_stepped: int = 0
    requests_submitted: int = 0
    blocks_decided: int = 0
    blocks_provisional: int = 0
    ticks_behind_max: int = 0


class Driver:
    """Owns the core, the WAL and the read model; ``run`` is the replica's main loop."""

    def __init__(
        self, config: NodeConfig, wal: WriteAheadLog, records: Sequence[PersistRecord]
    ) -> None:
        self.config = config
        self.wal = wal
        self.tick_ns = config.tick_ms * 1_000_000
        start_ticks = max(0, (time.time_ns() - config.genesis_ns) // self.tick_ns)
        self._ticks_origin = start_ticks
        self._monotonic_origin = time.monotonic_ns()
        rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        self.core = build_core(config, records, start_ticks, rng)
        self.seq_base = wal.last_seq - len(records)  # records before the ones recovered
        assert self.seq_base == 0, "WAL snapshots are not taken, so replay starts at 1"
        self.read_model = ReadModel(config, self.core.bft)
        self.inbound: asyncio.Queue[Inbound] = asyncio.Queue(
            maxsize=config.tuning.inbound_frames_max
        )
        self.transport: Transport | None = None
        self.waiters: dict[tuple[int, int], list[_Waiter]] = {}
        self.waiter_count = 0
        self.watches: list[Watch] = []
        self.stats = DriverStats()
        self._stopping = False

    # ---------------------------------------------------------------- clients

    def submit(self, request: Request, level: Finality) -> asyncio.Future[Reply]:
        """Queue a (validated) client request; the future gets the first reply at least as
        final as ``level``.  ``Overloaded`` if the replica cannot take it now."""
        if self.waiter_count >= WAITERS_MAX:
            raise Overloaded(f"{WAITERS_MAX} client calls are already waiting")
        try:
            self.inbound.put_nowait(request)
        except asyncio.QueueFull:
            raise Overloaded("the replica's input queue is full") from None
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(request.key, []).append(_Waiter(level, future))
        self.waiter_count += 1
        return future

    def forget(self, key: tuple[int, int], future: asyncio.Future[Reply]) -> None:
        """A client call ended (answered, timed out or cancelled): drop its waiter."""
        waiters = self.waiters.get(key, [])
        kept = [w for w in waiters if w.future is not future]
        self.waiter_count -= len(waiters) - len(kept)
        if kept:
            self.waiters[key] = kept
        else:
            self.waiters.pop(key, None)
        assert self.waiter_count >= 0

    def watch(self) -> Watch:
        """Start a WatchCommits stream: blocks decided from now on (the caller reads the
        backlog from ``core.bft.log`` in the same step, so nothing falls between)."""
        if len(self.watches) >= WATCHERS_MAX:
            raise Overloaded(f"{WATCHERS_MAX} commit watchers already")
        watch = Watch()
        self.watches.append(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        self.watches.remove(watch)

    # ---------------------------------------------------------------- main loop

    def stop(self) -> None:
        self._stopping = True

    def ticks_due(self) -> int:
        elapsed = (time.monotonic_ns() - self._monotonic_origin) // self.tick_ns
        return self._ticks_origin + elapsed - self.core.bft.ticks

    async def run(self) -> None:
        assert self.transport is not None, "connect a transport first"
        while not self._stopping:
            due = self.ticks_due()
            inputs: list[Inbound] = []
            if due <= 0:
                wait_s = (1 - due) * self.tick_ns / 1e9
                with contextlib.suppress(TimeoutError):
                    inputs.append(await asyncio.wait_for(self.inbound.get(), wait_s))
            while len(inputs) < INPUTS_PER_ROUND_MAX and not self.inbound.empty():
                inputs.append(self.inbound.get_nowait())
            parts = [effects for item in inputs for effects in self._step(item)]
            due = self.ticks_due()
            self.stats.ticks_behind_max = max(self.stats.ticks_behind_max, due)
            for _ in range(min(due, TICKS_PER_ROUND_MAX)):
                parts.append(self.core.tick())
            await self._execute(parts)
            self.stats.rounds += 1

    def _step(self, item: Inbound) -> list[Effects]:
        if isinstance(item, Request):
            self.stats.requests_submitted += 1
            assert self.transport is not None
            self.transport.send(None, encode(item))  # every replica learns of it
            return [self.core.step(item)]
        self.stats.messages_stepped += len(item.messages)
        return [self.core.step(message) for message in item.messages]

    async def _execute(self, parts: list[Effects]) -> None:
        """Persist, then release: the Effects contract for one round."""
        while True:
            records = [record for part in parts for record in part.persist]
            if not records:
                break
            last = await asyncio.to_thread(self._append, records)
            upto = last - self.seq_base
            assert upto == self.core.bft.persist_seq, (upto, self.core.bft.persist_seq)
            self._release(parts)
            parts = [self.core.step(Persisted(upto=upto))]
        self._release(parts)
        if self.read_model.height != self.core.bft.decided_height:
            self.read_model.rebuild(self.core.bft)  # a checkpoint came by state transfer

    def _append(self, records: list[PersistRecord]) -> int:
        """Append in WAL-sized batches (each atomic; together they need not be)."""
        last = self.wal.last_seq
        for start in range(0, len(records), WAL_BATCH_RECORDS_MAX):
            last = self.wal.append(records[start : start + WAL_BATCH_RECORDS_MAX])
            self.stats.wal_batches += 1
        self.stats.wal_records += len(records)
        return last

    def _release(self, parts: list[Effects]) -> None:
        transport = self.transport
        assert transport is not None
        for part in parts:
            for send in part.send:
                transport.send(send.to, encode(send.message))
            for decided in part.decided:
                self.stats.blocks_decided += 1
                self.read_model.apply(decided, self.core.bft)
                for watch in self.watches:
                    watch.offer(decided)
            self.stats.blocks_provisional += len(part.committed)
            for reply in part.replies:
                self._answer(reply)
            for line in part.trace:
                log.debug("%s", line)

    def _answer(self, reply: Reply) -> None:
        for waiter in self.waiters.get((reply.client_id, reply.request_number), []):
            if reply.level >= waiter.level and not waiter.future.done():
                waiter.future.set_result(reply)
