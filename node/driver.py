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
* Snapshots: whenever the core's stable checkpoint has advanced by
  ``wal_snapshot_checkpoints`` checkpoints (or ``SNAPSHOT_RECORDS_MAX`` records
  piled up and compaction at least halves them) the driver stores a WAL snapshot
  whose state is ``compact_records`` of everything persisted so far, in the
  WAL's own record encoding; the WAL then deletes the segments its kept
  snapshots cover, so the disk holds O(two checkpoints) of log.  The snapshot is
  written in a thread while rounds go on, and adopted (the WAL compacts) at the
  end of the round that finds it written; the loop waits for it before ``run``
  returns, so the WAL is never closed under it.
* A checkpoint the replica made itself from blocks it logged is not appended to
  the WAL: the next snapshot stores it (``_append`` says why a replay reaches the
  same state without it), so no replica stops while the whole ledger is written
  at every checkpoint; a clean stop snapshots one that no snapshot holds yet.
* Recovery: the cores are rebuilt from the newest valid snapshot's records plus
  the records after it, exactly as from the whole log (``compact_records`` says
  why); ``Persisted(upto=...)`` counts in the core's numbering, offset from the
  WAL's by ``seq_base``.
* The ledger's growth kills no replica.  A checkpoint record is stored under the
  WAL's own bound (``WAL_CHECKPOINT_RECORD_BYTES_MAX``, not the wire's); one over
  even that is left out of the WAL with an error logged (``_append_batch`` says why
  that is safe).  A catch-up answer whose checkpoint is over ``WIRE_BYTES_MAX`` is
  not sent, with an error logged; but a checkpoint snapshot larger than
  ``snapshot_chunk_bytes`` travels in chunks (``SnapshotChunk``), so a ledger of any
  size up to ``ReplicaConfig.snapshot_bytes_max`` can be transferred.
* Amnesia: when the WAL reports that acknowledged records may be lost (a damaged
  tail, a repaired log: ``Amnesia``) the replica starts *fenced* and stays fenced,
  across restarts too, until it has caught up past every promise it may have
  forgotten (``Fence`` says why that is safe and when it is lifted).
* Time: ticks follow the monotonic clock from a start value read off the wall
  clock relative to the cluster's ``genesis_ns`` (so replicas stamp blocks with
  comparable times); at most ``TICKS_PER_ROUND_MAX`` ticks are run per round, so a
  stalled loop catches up gradually instead of firing every timeout at once.
* Reads (``read_model``) see FINAL state only: a second executor follows the decided
  blocks (the core's own executor also holds speculative and provisional blocks);
  it is rebuilt from the core's checkpoint and log whenever it falls out of step.
  It does not execute a decided block again when the core's executor kept the change
  that block made to the very state the read model holds (``ReadModel`` says why
  that is exact); it applies that change instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, assert_never

from consensus.bft.replica import BftReplica, Genesis, ReplicaConfig, genesis_header
from consensus.crypto import Ed25519Verifier
from consensus.effects import (
    CheckpointRecord,
    DecidedRecord,
    Effects,
    EntryRecord,
    ModeRecord,
    PersistRecord,
    ProofRecord,
    RegencyRecord,
    TermRecord,
    VoteRecord,
)
from consensus.messages import (
    Block,
    Blocks,
    CheckpointVote,
    DecidedBlock,
    FetchBlocks,
    FetchChunk,
    Finality,
    Persisted,
    RegencyProof,
    Reply,
    Request,
    SnapshotChunk,
)
from consensus.mode import ModeConfig, ModeController, assemble
from consensus.raft.core import RaftConfig
from consensus.wire import WireError, encode
from finality.executor import LedgerExecutor
from ledger import Ledger
from node.config import NodeConfig
from node.telemetry import for_driver
from node.transport import Inbound, Transport
from node.wal import (
    WAL_BATCH_RECORDS_MAX,
    Amnesia,
    WalRecordTooLarge,
    WriteAheadLog,
    decode_record,
    encode_record,
)

TICKS_PER_ROUND_MAX: Final = 50
INPUTS_PER_ROUND_MAX: Final = 64  # frames or client requests stepped before one WAL batch
# A WAL batch whose blocks hold at most this many events is appended on the loop's own
# thread: the hand-off to a worker thread and back cost 1-10 ms per persist, more than
# such a batch's write and fdatasync (about 1 ms); larger ones go to a worker thread, so
# the loop serves peers and clients while they are written.
INLINE_APPEND_EVENTS_MAX: Final = 256
WAITERS_MAX: Final = 16_384  # client calls waiting for an answer, all clients together
WATCHERS_MAX: Final = 64  # WatchCommits streams
READERS_MAX: Final = 1024  # reads waiting for this replica's FINAL state to catch up
WATCH_BLOCKS_MAX: Final = 256  # decided blocks queued for one watcher before it is dropped
SNAPSHOT_RECORDS_MAX: Final = 65_536  # records since the last snapshot that call for one
REPLAY_RECORDS_MAX: Final = 1 << 20  # records in one snapshot's state
log = logging.getLogger("aegis.driver")


# ------------------------------------------------------------------ compaction


def compact_records(records: Sequence[PersistRecord]) -> list[PersistRecord]:
    """The records a replay must still see to rebuild the cores as ``records`` do.

    ``assemble(..., compacted + tail)`` builds the same cores as
    ``assemble(..., records + tail)`` for every ``tail``, apart from the
    persist counter (the driver offsets it, ``seq_base``) and from BFT vote
    entries at or below the decided height, which nothing reads (every lookup
    of ``BftReplica.votes`` is at ``decided_height + 1``).  Each core folds
    its records one type at a time, independently of the others, so the rule is
    per type.  Let ``base`` be the height of the highest checkpoint and
    ``final`` the decided height the replay reaches (``base``, then every
    consecutive decided record above it).  A replay with any tail reaches a
    final height >= ``final``: the highest checkpoint only grows, and the decided
    records above ``base`` are all kept.

    * CheckpointRecord: only the first of the highest (``BftReplica._recover``
      keeps the first of the highest; a later one must be strictly higher).
    * DecidedRecord: the last one per height above ``base`` (the replay keeps
      the last per height and never applies one at or below the checkpoint it
      installs, whose height is >= ``base``).
    * RegencyRecord: the last of those with the highest regency (the replay
      takes regency, stop_sent and install proof from exactly that one; any
      later record overrides or loses to it the same way with or without the
      dropped ones, which are all lower).
    * VoteRecord, ProofRecord: every one above ``final``, in order (those at or
      below are pruned by the replay of a decided block, or never looked up;
      the best proof is taken at the final height + 1 > ``final``; order decides
      ties, so it is kept).
    * TermRecord: the last one (the replay takes the last term and vote).
    * EntryRecord: the fallback log the replay folds them into (an entry at a
      height voids every entry at or above it), one record per height in
      ascending order, above ``final`` only: re-folding them gives the same
      map, and the fallback log is read only above the BFT-final height.
    * ModeRecord: the first with the highest epoch, then the last (the
      controller takes the highest epoch and the last mode).

    Idempotent, and its size is bounded by the live state: one checkpoint, the
    decided blocks above it, the open instance's votes and proofs, one term,
    the fallback log."""
    checkpoint: CheckpointRecord | None = None
    regency: RegencyRecord | None = None
    term: TermRecord | None = None
    mode_highest: ModeRecord | None = None
    mode_last: ModeRecord | None = None
    decided: dict[int, DecidedRecord] = {}
    entries: dict[int, EntryRecord] = {}
    for record in records:
        match record:
            case CheckpointRecord(checkpoint=stable):
                if checkpoint is None or stable.height > checkpoint.checkpoint.height:
                    checkpoint = record
            case DecidedRecord(decided=block):
                decided[block.block.header.height] = record
            case RegencyRecord():
                if regency is None or record.regency >= regency.regency:
                    regency = record
            case TermRecord():
                term = record
            case EntryRecord(height=height):
                for stale in [h for h in entries if h >= height]:
                    del entries[stale]
                entries[height] = record
            case ModeRecord():
                if mode_highest is None or record.epoch > mode_highest.epoch:
                    mode_highest = record
                mode_last = record
            case VoteRecord() | ProofRecord():
                pass  # kept below, once the final height is known
            case _:
                assert_never(record)
    base = checkpoint.checkpoint.height if checkpoint is not None else 0
    final = base
    while final + 1 in decided:
        final += 1
    kept: list[PersistRecord] = [] if checkpoint is None else [checkpoint]
    kept += [decided[h] for h in sorted(decided) if h > base]
    kept += [] if regency is None else [regency]
    kept += [
        r
        for r in records
        if (isinstance(r, VoteRecord) and r.height > final)
        or (isinstance(r, ProofRecord) and r.proof.height > final)
    ]
    kept += [] if term is None else [term]
    kept += [entries[h] for h in sorted(entries) if h > final]
    if mode_highest is not None and mode_highest is not mode_last:
        kept.append(mode_highest)
    kept += [] if mode_last is None else [mode_last]
    assert len(kept) <= len(records)
    return kept


_REPLAY_HEAD = struct.Struct(">8sI")  # magic, record count
_REPLAY_MAGIC = b"AEGRPL01"
_LENGTH = struct.Struct(">I")


def encode_replay_state(records: Sequence[PersistRecord]) -> bytes:
    """A snapshot's state: the records, each as the WAL stores it (``consensus.wire``)."""
    assert len(records) <= REPLAY_RECORDS_MAX
    parts = [_REPLAY_HEAD.pack(_REPLAY_MAGIC, len(records))]
    for record in records:
        # WireError for a checkpoint over WAL_CHECKPOINT_RECORD_BYTES_MAX (one left to
        # the snapshot by the driver); every other record went into the WAL: it fits.
        payload = encode_record(record)
        parts += [_LENGTH.pack(len(payload)), payload]
    return b"".join(parts)


def decode_replay_state(state: bytes) -> list[PersistRecord]:
    """The records of ``encode_replay_state``; ``ValueError`` says what is wrong."""
    if len(state) < _REPLAY_HEAD.size:
        raise ValueError(f"{len(state)} bytes, shorter than the header")
    magic, count = _REPLAY_HEAD.unpack_from(state)
    if magic != _REPLAY_MAGIC or count > REPLAY_RECORDS_MAX:
        raise ValueError("not a replay state (bad magic or record count)")
    records: list[PersistRecord] = []
    offset = _REPLAY_HEAD.size
    for index in range(count):
        if len(state) - offset < _LENGTH.size:
            raise ValueError(f"ends before record {index} of {count}")
        (length,) = _LENGTH.unpack_from(state, offset)
        offset += _LENGTH.size
        if length > len(state) - offset:  # decode_record bounds it by the record's type
            raise ValueError(f"record {index} of {count}: length {length} out of bounds")
        payload = state[offset : offset + length]
        records.append(decode_record(payload))
        offset += length
    if offset != len(state):
        raise ValueError(f"{len(state) - offset} bytes after the last record")
    return records


def replay_state_problem(state: bytes) -> str | None:
    """Why a snapshot's state cannot be used (the WAL then falls back to an older one)."""
    try:
        decode_replay_state(state)
    except ValueError as error:  # WireError is one
        return str(error)
    return None


# ------------------------------------------------------------------ the fence


@dataclass(frozen=True, slots=True)
class Fence:
    """A replica that may have forgotten promises it made stays silent until they are
    void.  Lifted once the decided tip is stamped after ``until_ns``.

    What may be forgotten is whatever the lost records held: WRITE/ACCEPT votes,
    write proofs, regencies installed, fallback terms, votes and entries.  While
    fenced the driver steps into the core only what teaches it certified facts or
    asks nothing of its word (``FENCED_INPUTS``: decided blocks and checkpoints,
    regency proofs, checkpoint votes, client requests, peers' catch-up requests) and
    lets out only catch-up traffic (``FENCED_OUTPUTS``) and FINAL replies.  The core
    casts no vote a peer sees, and it cannot complete a quorum with a vote of its own
    either: no peer's PROPOSE, WRITE, ACCEPT, SYNC or STOP reaches it, so every
    decision it makes comes from a certificate.

    Why the tip's stamp: every height a lost vote can concern is at most the
    replica's decided height before the loss + 1 (it votes only at the open height).
    A block decided at or below that height was stamped before the loss: an honest
    replica validated it before then, and validation refuses stamps more than
    ``timestamp_skew_max_ns`` ahead of its own clock.  With honest clocks within
    ``timestamp_skew_max_ns`` of each other, a certified block stamped more than twice
    that after the loss was found is therefore above every such height, and once it
    is decided here every forgotten vote is at or below the decided height, where the
    core never votes again.  A forgotten write proof is void the same way (proofs
    matter only at the open height), so is a forgotten fallback entry (one at or
    below the height is final; one above it, stamped before the tip, cannot extend
    the final chain), and so is a forgotten regency: the STOP-DATA it sent reported
    heights at or below it, and above it the core takes part as a newcomer would.
    On lifting, the messages the core queued for retransmission while fenced are
    dropped unsent: a STOP-DATA written then may omit a forgotten proof.

    What stays exposed: a forgotten fallback vote could be granted again in the same
    term if a later fallback runs in a term no higher than it; that can cost a
    PROVISIONAL block (never a FINAL one), as a Byzantine voter could, within the
    exposure limit (S3).  Liveness: the fenced replica counts as one of the f
    faulty ones until the cluster decides such a block."""

    until_ns: int
    reason: str


FENCED_INPUTS: Final = (
    Blocks, FetchBlocks, SnapshotChunk, FetchChunk, CheckpointVote, RegencyProof, Request
)  # fmt: skip
FENCED_OUTPUTS: Final = (FetchBlocks, Blocks, FetchChunk, SnapshotChunk)


def _reach(reaches: int, record: PersistRecord) -> int:
    """The decided height a replay of a log reaching ``reaches`` reaches once ``record``
    is appended to it: the next decided block, or a checkpoint (``compact_records``
    replays the highest checkpoint and the contiguous decided records above it)."""
    match record:
        case DecidedRecord(decided=decided) if decided.block.header.height == reaches + 1:
            return reaches + 1
        case CheckpointRecord(checkpoint=stable):
            return max(reaches, stable.height)
        case _:
            return reaches


def _small(records: Sequence[PersistRecord]) -> bool:
    """Whether ``records`` are small enough to append inline (``INLINE_APPEND_EVENTS_MAX``)."""
    events = 0
    for record in records:
        match record:
            case RegencyRecord() | TermRecord() | ModeRecord() | VoteRecord(block=None):
                pass
            case VoteRecord(block=Block() as block):
                events += block.events
            case ProofRecord():
                events += record.proof.block.events
            case DecidedRecord():
                events += record.decided.block.events
            case _:  # checkpoints and fallback entries: size unknown here, maybe large
                return False
    return events <= INLINE_APPEND_EVENTS_MAX


class Overloaded(RuntimeError):
    """The replica cannot take more client work right now; the client should retry."""


def genesis_of(config: NodeConfig) -> Genesis:
    """Height 0 of a cluster: an empty ledger, stamped just before ``genesis_ns``."""
    ledger = Ledger()
    return Genesis(
        header=genesis_header(ledger.state_hash(), config.genesis_ns - 1),
        snapshot=ledger.snapshot(),
    )


def new_executor(
    config: NodeConfig, genesis: Genesis, track_changes: bool = False
) -> LedgerExecutor:
    executor = LedgerExecutor(Ledger.restore(genesis.snapshot), track_changes=track_changes)
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
    executor = new_executor(config, genesis, track_changes=True)  # for the read model, rollbacks
    return assemble(
        ReplicaConfig(
            replica_id=config.replica_id,
            replicas=config.n,
            genesis_ns=config.genesis_ns,
            tick_ns=tick_ns,
            checkpoint_interval=tuning.checkpoint_interval,
            request_timeout_ticks=tuning.request_timeout_ticks,
            regency_timeout_ticks=tuning.regency_timeout_ticks,
            retransmit_ticks=tuning.retransmit_ticks,
            retransmit_ticks_max=tuning.retransmit_ticks_max,
            snapshot_chunk_bytes=tuning.snapshot_chunk_bytes,
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
    """The FINAL state, for lookups: decided blocks applied to an executor of its own.

    Only blocks the core decided (``Effects.decided``, or its log on a rebuild) reach
    it, in height order, so it never holds a speculative or provisional block.  A
    block is applied either by executing it, or, when the core's executor kept the
    change that executing this block made (``LedgerExecutor.take_change``), by
    applying that change.  The change is taken only under the pair (state hash the
    read model holds, the block's certified state hash): execution is a pure function
    of the state, the state hash commits to the whole state, so a change recorded
    between those two states is exactly what executing the block here would do,
    whether the core's execution was speculative or not and whatever the core did
    after it.  ``apply_change`` checks both hashes."""

    def __init__(self, config: NodeConfig, core: BftReplica) -> None:
        self.config = config
        self.executor = new_executor(config, genesis_of(config))
        self.height = 0
        self.state_hash = b""
        self.blocks_executed = 0  # blocks the read model executed itself
        self.changes_applied = 0  # blocks applied from the core's change
        self.rebuild(core)

    def rebuild(self, core: BftReplica) -> None:
        self.executor.restore(core.base_snapshot, core.base_header.state_hash)
        self.height = core.base_height
        self.state_hash = core.base_header.state_hash
        for height in range(core.base_height + 1, core.decided_height + 1):
            self._execute(core.log[height], core)
        assert self.height == core.decided_height

    def apply(self, decided: DecidedBlock, core: BftReplica) -> None:
        if decided.block.header.height != self.height + 1:
            self.rebuild(core)  # a checkpoint was installed (state transfer) or we lagged
        else:
            self._execute(decided, core)

    def _execute(self, decided: DecidedBlock, core: BftReplica) -> None:
        header = decided.block.header
        assert header.height == self.height + 1
        source = core.sm
        change = (
            source.take_change(self.state_hash, header.state_hash)
            if isinstance(source, LedgerExecutor)
            else None
        )
        if change is not None:
            self.executor.apply_change(change)  # checks both state hashes
            change.ledger.forget_chain()  # the core keeps the rest, for undo, a while
            self.changes_applied += 1
        else:
            execution = self.executor.execute(
                decided.block.requests, header.timestamp, fallback_term=header.fallback_term
            )
            assert execution.state_hash == header.state_hash, "the read model diverged"
            self.blocks_executed += 1
        self.height = header.height
        self.state_hash = header.state_hash

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


@dataclass(frozen=True, slots=True)
class _SnapshotWritten:
    """A WAL snapshot written in a thread, for the loop to adopt."""

    seq: int  # the WAL record it covers up to
    covered: int  # how many of ``Driver._replay``'s records it replaces
    compacted: list[PersistRecord]  # its state's records
    state_bytes: int
    checkpoints_dropped: list[int]  # heights of checkpoints too large even for the snapshot


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
    wal_snapshots: int = 0
    snapshot_records: int = 0  # in the last snapshot's state
    snapshot_bytes: int = 0  # the last snapshot's state
    fenced_inputs_dropped: int = 0
    fenced_outputs_dropped: int = 0
    checkpoints_not_persisted: int = 0  # over WAL_CHECKPOINT_RECORD_BYTES_MAX
    checkpoints_deferred: int = 0  # made here: left to the next WAL snapshot
    oversized_sends_dropped: int = 0  # over WIRE_BYTES_MAX (a catch-up answer's checkpoint)


class Driver:
    """Owns the core, the WAL and the read model; ``run`` is the replica's main loop.

    ``records`` rebuild the core: a snapshot's records, then those after it.
    ``amnesia``: the WAL may have lost acknowledged records; start fenced."""

    def __init__(
        self,
        config: NodeConfig,
        wal: WriteAheadLog,
        records: Sequence[PersistRecord],
        amnesia: Amnesia | None = None,
    ) -> None:
        self.config = config
        self.wal = wal
        self.tick_ns = config.tick_ms * 1_000_000
        start_ticks = max(0, (time.time_ns() - config.genesis_ns) // self.tick_ns)
        self._ticks_origin = start_ticks
        self._monotonic_origin = time.monotonic_ns()
        rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        self.core = build_core(config, records, start_ticks, rng)
        # The core counts the records it was built from, a snapshot's compacted ones
        # included; the WAL counts every record ever appended.
        self.seq_base = wal.last_seq - self.core.bft.persist_seq
        assert self.seq_base >= 0, (wal.last_seq, self.core.bft.persist_seq)
        self._replay = list(records)  # what a replay needs to rebuild the core as it is now
        # The decided height a replay of the log (segments and snapshot) reaches; a
        # checkpoint at or below it is left to the next snapshot (``_append``).
        self._log_reaches = self.core.bft.decided_height
        self._deferred_unsnapshotted = False  # a deferred checkpoint no snapshot covers
        self._records_since_snapshot = len(records)
        self._snapshot_height = self.core.bft.base_height
        self._snapshot_task: asyncio.Future[_SnapshotWritten | None] | None = None
        self.fence: Fence | None = None
        if amnesia is not None:
            skew_ns = self.core.bft.cfg.timestamp_skew_max_ns
            self.fence = Fence(until_ns=amnesia.detected_ns + 2 * skew_ns, reason=amnesia.reason)
            log.warning(
                "replica %d fenced: acknowledged records may be lost (%s); it casts no vote "
                "until it has decided a block stamped after %d ns (now %d ns), caught up "
                "from its peers",
                config.replica_id,
                amnesia.reason,
                self.fence.until_ns,
                time.time_ns(),
            )
        self.read_model = ReadModel(config, self.core.bft)
        self.inbound: asyncio.Queue[Inbound] = asyncio.Queue(
            maxsize=config.tuning.inbound_frames_max
        )
        self.transport: Transport | None = None
        self.waiters: dict[tuple[int, int], list[_Waiter]] = {}
        self.waiter_count = 0
        self.watches: list[Watch] = []
        self.readers: list[tuple[int, asyncio.Future[None]]] = []  # (height, woken at it)
        self.stats = DriverStats()
        self._stopping = False
        self.telemetry = for_driver(self)  # traces and metrics (node.telemetry); off: no-ops

    @property
    def checkpoint_awaits_snapshot(self) -> bool:
        """A checkpoint made here is durable only once the next WAL snapshot holds it."""
        return self._deferred_unsnapshotted

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

    async def read_at(self, height: int, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the read model holds FINAL state up to
        ``height``; whether it does.  ``Overloaded`` if too many reads wait already."""
        if self.read_model.height >= height:
            return True
        if len(self.readers) >= READERS_MAX:
            raise Overloaded(f"{READERS_MAX} reads are already waiting for FINAL state")
        reader = (height, asyncio.get_running_loop().create_future())
        self.readers.append(reader)
        try:
            await asyncio.wait_for(reader[1], timeout_s)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self.readers.remove(reader)
        return self.read_model.height >= height

    def _wake_readers(self) -> None:
        height = self.read_model.height
        waiting = []
        for reader in self.readers:
            if reader[0] > height:
                waiting.append(reader)
            elif not reader[1].done():
                reader[1].set_result(None)
        self.readers = waiting

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
        try:
            await self._loop()
        except BaseException:
            if self._snapshot_task is not None:  # the WAL is closed once this returns
                await asyncio.wait({self._snapshot_task})
            raise
        await self._finish_snapshot()
        if self._deferred_unsnapshotted:
            # A checkpoint left to the snapshot is in none yet: store it now, so that a
            # restart after a clean stop starts from it, not from the one before.
            self._start_snapshot(0)
            await self._finish_snapshot()

    async def _loop(self) -> None:
        while not self._stopping:
            due = self.ticks_due()
            inputs: list[Inbound] = []
            if due <= 0:
                wait_s = (1 - due) * self.tick_ns / 1e9
                with contextlib.suppress(TimeoutError):
                    inputs.append(await asyncio.wait_for(self.inbound.get(), wait_s))
            while len(inputs) < INPUTS_PER_ROUND_MAX and not self.inbound.empty():
                inputs.append(self.inbound.get_nowait())
            started_s = time.perf_counter()
            # The clock first: what the inputs cause is stamped with the time they are
            # stepped, not with the time before the previous round's work (a round that
            # executes a block takes a hundred milliseconds and more under load).
            due = self.ticks_due()
            self.stats.ticks_behind_max = max(self.stats.ticks_behind_max, due)
            parts = [self.core.tick() for _ in range(min(due, TICKS_PER_ROUND_MAX))]
            parts += [effects for item in inputs for effects in self._step(item)]
            stepped_s = time.perf_counter()
            await self._execute(parts)
            self.telemetry.round_finished(
                len(inputs), stepped_s - started_s, time.perf_counter() - stepped_s
            )
            await self._maybe_lift_fence()
            await self._maybe_snapshot()
            self.stats.rounds += 1

    def _step(self, item: Inbound) -> list[Effects]:
        if isinstance(item, Request):
            self.stats.requests_submitted += 1
            assert self.transport is not None
            self.transport.send(None, encode(item))  # every replica learns of it
            return [self.core.step(item)]
        messages = item.messages
        if self.fence is not None:
            messages = tuple(m for m in messages if isinstance(m, FENCED_INPUTS))
            self.stats.fenced_inputs_dropped += len(item.messages) - len(messages)
        self.stats.messages_stepped += len(messages)
        return [self.core.step(message) for message in messages]

    async def _execute(self, parts: list[Effects]) -> None:
        """Persist, then release: the Effects contract for one round."""
        while True:
            records = [record for part in parts for record in part.persist]
            if not records:
                break
            if _small(records):
                last = self._append(records)
            else:
                last = await asyncio.to_thread(self._append, records)
            upto = last - self.seq_base
            assert upto == self.core.bft.persist_seq, (upto, self.core.bft.persist_seq)
            self._release(parts)
            parts = [self.core.step(Persisted(upto=upto))]
        self._release(parts)
        if self.read_model.height != self.core.bft.decided_height:
            self.read_model.rebuild(self.core.bft)  # a checkpoint came by state transfer
        if self.readers:
            self._wake_readers()

    def _append(self, records: list[PersistRecord]) -> int:
        """Append in WAL-sized batches (each atomic; together they need not be).

        A checkpoint this replica made from blocks it logged itself is not appended:
        it goes into the next WAL snapshot (``_replay`` holds it), which is written
        off the loop, instead of stopping the loop while its snapshot, the whole
        ledger, is written twice.  Until that snapshot is adopted, a replay of the log
        starts from the previous checkpoint and applies the decided records above it,
        which the log holds (``_log_reaches`` is at or above the checkpoint's height),
        and reaches the same state: the same argument as for a checkpoint too large
        for the WAL (``_append_batch``).  A checkpoint installed from a peer has no
        decided records below it here and is appended."""
        last = self.wal.last_seq
        for start in range(0, len(records), WAL_BATCH_RECORDS_MAX):
            batch = records[start : start + WAL_BATCH_RECORDS_MAX]
            deferred = {id(record) for record in self._deferrable(batch)}
            appended: list[PersistRecord] = []
            if len(deferred) < len(batch):
                started_s = time.perf_counter()
                kept = [record for record in batch if id(record) not in deferred]
                last, appended = self._append_batch(kept)
                self.telemetry.wal_appended(time.perf_counter() - started_s, len(appended))
            self.seq_base -= len(deferred)
            self.stats.checkpoints_deferred += len(deferred)
            self._deferred_unsnapshotted |= bool(deferred)
            for record in appended:
                self._log_reaches = _reach(self._log_reaches, record)
            logged = deferred | {id(record) for record in appended}
            batch = [record for record in batch if id(record) in logged]
            self._replay += batch
            self._records_since_snapshot += len(batch)
            self.stats.wal_batches += 1
        self.stats.wal_records += len(records)
        return last

    def _deferrable(self, batch: list[PersistRecord]) -> list[PersistRecord]:
        """The checkpoints in ``batch`` a replay reaches without (see ``_append``)."""
        reaches = self._log_reaches
        deferred: list[PersistRecord] = []
        for record in batch:
            if isinstance(record, CheckpointRecord):
                if record.checkpoint.height <= reaches:
                    deferred.append(record)
                # else: installed from a peer and appended, unless too large for the
                # WAL, so the decided records after it are not counted as reached here
            else:
                reaches = _reach(reaches, record)
        return deferred

    def _append_batch(self, batch: list[PersistRecord]) -> tuple[int, list[PersistRecord]]:
        """Append one batch; a checkpoint too large for the WAL is left out (with an
        error logged) rather than kill the replica.  Returns the last seq and the batch
        as appended.

        Leaving one out is safe: the core keeps the checkpoint in memory, and a replay
        without it starts from the previous checkpoint (or genesis) and applies the
        decided records above it, all of which stay in the log (compaction keeps every
        decided record above the highest checkpoint the log holds).  ``seq_base`` moves
        so that the core's persist counter still maps onto the WAL's sequence."""
        for _ in range(len(batch) + 1):  # each retry drops one record
            try:
                return self.wal.append(batch), batch
            except WalRecordTooLarge as error:
                record = batch[error.index]
                if not isinstance(record, CheckpointRecord):
                    raise
                self._checkpoint_not_persisted(record.checkpoint.height, f"{error}; ")
                batch = batch[: error.index] + batch[error.index + 1 :]
                self.seq_base -= 1
        raise AssertionError("unreachable: every retry drops a record")

    def _checkpoint_not_persisted(self, height: int, detail: str = "") -> None:
        log.error(
            "replica %d: checkpoint h%d is too large for the WAL (%sthe bound is "
            "WAL_CHECKPOINT_RECORD_BYTES_MAX): not persisted, a restart replays from "
            "the previous checkpoint",
            self.config.replica_id,
            height,
            detail,
        )
        self.stats.checkpoints_not_persisted += 1

    # ---------------------------------------------------------------- snapshots

    async def _maybe_snapshot(self) -> None:
        """A WAL snapshot when the stable checkpoint moved on far enough, or when records
        pile up without one and compaction pays (fallback, a stalled checkpoint).

        The snapshot is compacted, encoded and written in a thread while the loop goes
        on (at tens of megabytes of ledger that takes about half a second, which all
        four replicas used to spend stalled at once).  It covers the records appended
        when it started; it is adopted (the WAL compacts) at the end of a later round,
        between appends, and records appended meanwhile stay in ``_replay`` after it."""
        if self._snapshot_task is not None:
            if not self._snapshot_task.done():
                return
            await self._finish_snapshot()  # a write that failed raises here
        bft = self.core.bft
        every = self.config.tuning.wal_snapshot_checkpoints * bft.cfg.checkpoint_interval
        if bft.base_height - self._snapshot_height >= every:
            self._snapshot_height = bft.base_height
            self._start_snapshot(0)
        elif self._records_since_snapshot >= SNAPSHOT_RECORDS_MAX:
            self._start_snapshot(len(self._replay) // 2)

    async def _finish_snapshot(self) -> None:
        """Wait for the snapshot being written, if any, and adopt it (before the WAL
        may be closed: it is being written in a thread)."""
        pending = self._snapshot_task
        if pending is not None:
            self._snapshot_task = None
            self._adopt_snapshot(await pending)

    def _start_snapshot(self, worth_records_max: int) -> None:
        """Snapshot every record appended so far (``worth_records_max``: only if they
        compact to at most that many; 0: always), in a thread."""
        self._records_since_snapshot = 0
        self._deferred_unsnapshotted = False
        records = list(self._replay)  # the records are immutable: a shallow copy suffices
        self._snapshot_task = asyncio.ensure_future(
            asyncio.to_thread(self._write_snapshot, records, self.wal.last_seq, worth_records_max)
        )

    def _write_snapshot(
        self, records: list[PersistRecord], seq: int, worth_records_max: int
    ) -> _SnapshotWritten | None:
        """In a thread: reads nothing of the driver's but its arguments.

        A checkpoint too large to encode (over ``WAL_CHECKPOINT_RECORD_BYTES_MAX``; the
        driver leaves the ones it makes to the snapshot) is left out, and the snapshot
        keeps the previous checkpoint and the decided records above it instead."""
        covered = len(records)
        dropped: list[int] = []
        while True:
            compacted = compact_records(records)
            if worth_records_max and len(compacted) > worth_records_max:
                return None  # nothing to gain: the records are live state
            try:
                state = encode_replay_state(compacted)
                break
            except WireError:
                big = next((r for r in compacted if isinstance(r, CheckpointRecord)), None)
                if big is None:
                    raise
                dropped.append(big.checkpoint.height)
                records = [record for record in records if record is not big]
        self.wal.write_snapshot(seq, state)
        return _SnapshotWritten(seq, covered, compacted, len(state), dropped)

    def _adopt_snapshot(self, written: _SnapshotWritten | None) -> None:
        if written is None:
            return
        for height in written.checkpoints_dropped:
            self._checkpoint_not_persisted(height)
        self.wal.adopt_snapshot(written.seq)
        self._replay = written.compacted + self._replay[written.covered :]
        self.stats.wal_snapshots += 1
        self.stats.snapshot_records = len(written.compacted)
        self.stats.snapshot_bytes = written.state_bytes
        log.debug("replica %d: WAL snapshot at record %d, %d records, %d bytes",
                  self.config.replica_id, written.seq, len(written.compacted),
                  written.state_bytes)  # fmt: skip

    # ---------------------------------------------------------------- the fence

    async def _maybe_lift_fence(self) -> None:
        fence = self.fence
        tip = self.core.bft.last_header
        if fence is None or tip.timestamp <= fence.until_ns:
            return
        # Queued while fenced, never sent: a STOP-DATA among them may omit a forgotten
        # write proof.  The core re-sends its votes of later instances itself.
        self.core.bft.resend.clear()
        await asyncio.to_thread(self.wal.clear_amnesia)  # the tip is durable already
        self.fence = None
        log.warning(
            "replica %d: fence lifted at h%d (stamped %d ns, after %d ns): it votes again",
            self.config.replica_id,
            tip.height,
            tip.timestamp,
            fence.until_ns,
        )

    def _release(self, parts: list[Effects]) -> None:
        transport = self.transport
        assert transport is not None
        fenced = self.fence is not None
        for part in parts:
            for send in part.send:
                if fenced and not isinstance(send.message, FENCED_OUTPUTS):
                    self.stats.fenced_outputs_dropped += 1
                    continue
                try:
                    payload = encode(send.message)
                except WireError as error:
                    # A catch-up answer carries up to ``fetch_blocks_max`` blocks and a
                    # checkpoint of at most ``snapshot_chunk_bytes`` (larger ones go in
                    # chunks), so this should not happen; if it does, our own state must
                    # not kill the replica: drop the answer, say why, go on.
                    if not isinstance(send.message, Blocks):
                        raise
                    self.stats.oversized_sends_dropped += 1
                    log.error(
                        "replica %d: catch-up answer to %s not sent: %s (the bound is "
                        "WIRE_BYTES_MAX); that peer must catch up from another replica",
                        self.config.replica_id,
                        send.to,
                        error,
                    )
                    continue
                transport.send(send.to, payload)
            for decided in part.decided:
                self.stats.blocks_decided += 1
                self.read_model.apply(decided, self.core.bft)
                self.telemetry.decided(decided)
                for watch in self.watches:
                    watch.offer(decided)
            self.stats.blocks_provisional += len(part.committed)
            self.telemetry.committed(part.committed)
            for reply in part.replies:
                if not fenced or reply.level is Finality.FINAL:  # FINAL: certified
                    self._answer(reply)
            for line in part.trace:
                log.debug("%s", line)

    def _answer(self, reply: Reply) -> None:
        self.telemetry.replied(reply)
        for waiter in self.waiters.get((reply.client_id, reply.request_number), []):
            if reply.level >= waiter.level and not waiter.future.done():
                waiter.future.set_result(reply)
