"""The BFT replica core: Mod-SMaRt normal case, regency change, checkpoints, catch-up.

Guarantees, with n = 3f + 1 replicas of which at most f are Byzantine:

* Agreement: no two honest replicas decide different blocks at one height.
  A block is decided on q = 2f + 1 signed ACCEPTs for one (regency, height,
  digest); an honest replica ACCEPTs only after q signed WRITEs for that
  digest in that regency (a write proof), persists the proof first, and
  reports its highest-regency proof in STOP-DATA.  A new leader must
  re-propose the block of the highest-regency proof among q STOP-DATAs, and
  every replica re-checks that choice from the STOP-DATAs carried in SYNC.
* Validity: every request in a decided block carries its client's signature.
* Sans-IO: input is ``step(message)`` and ``tick()``; output is ``Effects``;
  no clock, no randomness, no IO.  Time is ticks; ledger timestamps derive
  from ``genesis_ns + ticks * tick_ns``.
* Remote input never crashes the core: malformed, unauthenticated, stale or
  contradictory messages are dropped and recorded as evidence.

Blocks are executed when proposed (the header commits to the state hash after
the block, so it must be computed before the vote); a speculative execution
that loses a regency change is undone by restoring the last stable checkpoint
and replaying the decided blocks after it.

Catch-up: a replica that lags asks a peer (``FetchBlocks``) and gets decided
blocks with their certificates, headed by the peer's stable checkpoint when it lags
past it.  A checkpoint snapshot larger than ``snapshot_chunk_bytes`` comes in
``SnapshotChunk``s instead, one per ``FetchChunk``, all from one peer: the first
carries the certified checkpoint without its snapshot, and the assembled snapshot is
installed only if it restores to the state hash q replicas signed (else the peer is
blamed and nothing changes).  Only a peer asked lately may start a transfer; every
chunk but the last must be a full one (``snapshot_chunk_bytes``, equal across the
cluster), and the whole must arrive within ``chunk_ticks_max`` ticks per chunk (plus
``chunk_stall_ticks``), or the peer is blamed and another asked.  A peer sends at most
one chunk per requester per tick, whatever asked for it, and keeps its previous
checkpoint and the decided blocks above it servable, so a transfer may take up to
about two checkpoint intervals.  Snapshots over ``snapshot_bytes_max`` (1 GiB) are
neither sent nor taken.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar, assert_never

from audit_chain.merkle import merkle_root
from consensus import certificate as certificates
from consensus.blocks import body_problem, mismatch, seal
from consensus.crypto import Signer, Verifier
from consensus.effects import (
    CheckpointRecord,
    DecidedRecord,
    Effects,
    EffectsBuilder,
    EntryRecord,
    ModeRecord,
    PersistRecord,
    ProofRecord,
    RegencyRecord,
    Send,
    TermRecord,
    VoteRecord,
)
from consensus.encoding import canonical
from consensus.messages import (
    Accept,
    BftInput,
    Block,
    BlockHeader,
    Blocks,
    Certificate,
    CheckpointVote,
    DecidedBlock,
    FallbackMessage,
    FallbackReport,
    FetchBlocks,
    FetchChunk,
    PeerMessage,
    Persisted,
    Propose,
    RegencyProof,
    Reply,
    Request,
    SnapshotChunk,
    StableCheckpoint,
    Stop,
    StopData,
    Sync,
    Write,
    WriteProof,
    WrittenBlock,
    digest_of,
)
from consensus.quorum import faults_tolerated, leader_of, quorum
from consensus.state_machine import Execution, StateMachine

ZERO_DIGEST = bytes(32)
EVIDENCE_KEPT_MAX = 1000
_M = TypeVar("_M", bound=PeerMessage)


@dataclass(slots=True)
class _Assembly:
    """A checkpoint snapshot arriving in chunks, all from one peer (snapshots of the
    same state need not be byte-identical across replicas)."""

    peer: int
    checkpoint: StableCheckpoint  # certified, without its snapshot
    total: int
    progress_tick: int
    deadline_tick: int  # the whole snapshot by then, or the peer is too slow (or lying)
    data: bytearray = field(default_factory=bytearray)


@dataclass(slots=True)
class Outstanding:
    """A message this replica may have to send again (lossy links), and when it last went."""

    send: Send
    sent_tick: int
    attempts: int = 0

    @property
    def message(self) -> PeerMessage | FallbackMessage:
        return self.send.message


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaConfig:
    replica_id: int
    replicas: int
    genesis_ns: int  # ledger time at tick 0
    tick_ns: int = 10_000_000
    checkpoint_interval: int = 16  # blocks between checkpoints
    request_timeout_ticks: int = 60  # a request waiting this long triggers a regency change
    regency_timeout_ticks: int = 60  # a regency change must finish within this (doubles)
    fetch_retry_ticks: int = 20
    # Re-send this replica's messages while they may still matter, each first after
    # retransmit_ticks, then doubling, at most retransmit_ticks_max apart; PROPOSE and
    # WRITE go only to the peers not known to hold them.  Over TCP (the node) a message
    # is lost only with its stream, and the first retransmission should come after a
    # loaded follower's WRITE would (node.config.Tuning); the simulator's lossy links
    # want it sooner.
    retransmit_ticks: int = 8
    retransmit_ticks_max: int = 64
    probe_ticks: int = 50  # ask a peer for newer blocks this often (anti-entropy)
    # A peer one block behind is sent that block only this long after this replica
    # decided it: until then its votes are most likely late, not lost, and it is about to
    # decide the block itself (a whole block sent early is work for nothing on both sides).
    catch_up_grace_ticks: int = 20
    timestamp_skew_max_ns: int = 2_000_000_000  # how far a leader's stamp may run ahead
    block_requests_max: int = 64
    block_events_max: int = 8189
    pending_requests_max: int = 4096
    future_messages_max: int = 512
    fetch_blocks_max: int = 32
    # Chunked state transfer: a checkpoint snapshot larger than one chunk is sent in
    # chunks of this many bytes (``SnapshotChunk``), each asked for by ``FetchChunk``.
    snapshot_chunk_bytes: int = 4 * 1024 * 1024
    snapshot_bytes_max: int = 1 << 30  # a larger snapshot is neither sent nor taken
    chunk_stall_ticks: int = 200  # an assembly without a new chunk this long is dropped
    chunk_ticks_max: int = 10  # and one taking longer than this per chunk (plus the above)
    # Deliberately unsafe variants, only for tests that prove the checkers can fail.
    unsafe_quorum: int | None = None
    unsafe_skip_sync_reproposal: bool = False

    def __post_init__(self) -> None:
        faults_tolerated(self.replicas)  # raises unless n = 3f + 1
        assert 0 <= self.replica_id < self.replicas
        assert self.checkpoint_interval >= 1 and self.tick_ns >= 1
        assert self.block_requests_max >= 1 and self.fetch_blocks_max >= 1
        assert 1 <= self.snapshot_chunk_bytes <= self.snapshot_bytes_max


@dataclass(frozen=True, slots=True, kw_only=True)
class Genesis:
    """The agreed starting point: height 0, its header, the state it describes."""

    header: BlockHeader
    snapshot: bytes


def genesis_header(state_hash: bytes, timestamp: int) -> BlockHeader:
    return BlockHeader(
        height=0,
        parent_hash=ZERO_DIGEST,
        timestamp=timestamp,
        merkle_root=merkle_root([]),
        log_size=0,
        body_hash=digest_of(()),
        results_hash=digest_of(()),
        state_hash=state_hash,
    )


class StateOwner:
    """Which core's view the shared state machine holds: the BFT core (decided state,
    maybe one speculative block) or the fallback core (decided state plus provisional
    blocks).  A core that finds the other's view restores its own before executing."""

    def __init__(self) -> None:
        self.holder = "bft"


class BftReplica:
    """One replica's protocol state.  Drive it with ``step`` and ``tick``."""

    def __init__(
        self,
        config: ReplicaConfig,
        signer: Signer,
        verifier: Verifier,
        client_verifier: Verifier,
        state_machine: StateMachine,
        genesis: Genesis,
        records: Sequence[PersistRecord] = (),
        ticks: int = 0,
        owner: StateOwner | None = None,
    ) -> None:
        self.cfg = config
        self.owner = owner or StateOwner()
        # Fallback hooks, set by the mode controller: this replica's provisional suffix
        # for STOP-DATA, and the blocks a re-certifying leader must re-propose.
        self.fallback_report: Callable[[], FallbackReport | None] = lambda: None
        # The provisional suffix a SYNC of regency ``reproposal_regency`` re-certifies,
        # by height: the leader re-proposes it block by block; followers take each
        # block as proposed as soon as its parent is decided (see _follow_sync_suffix).
        self.reproposals: dict[int, Block] = {}
        self.reproposal_regency = -1
        self.suffix_written: set[int] = set()  # regencies whose open-height WRITE came from it
        self.sync_suffix: FallbackReport | None = None  # what this leader's SYNC re-certifies
        # Why this replica must not follow a SYNC: its own fallback log is more up to date
        # than the suffix the SYNC re-certifies (the leader saw a stale STOP-DATA).
        self.fallback_conflict: Callable[[Sync], str | None] = lambda sync: None
        self.sync_allowed: Callable[[], bool] = lambda: True  # a leader's SYNC may go now
        self.timers_paused = False  # in fallback: no regency change of its own accord
        self.id = config.replica_id
        self.n = config.replicas
        self.f = faults_tolerated(self.n)
        self.q = config.unsafe_quorum or quorum(self.n)
        self.signer = signer
        self.verifier = verifier
        self.client_verifier = client_verifier
        self.sm = state_machine
        self.ticks = ticks  # a restarted process starts from the driver's clock
        self.evidence: deque[str] = deque(maxlen=EVIDENCE_KEPT_MAX)  # newest first to go
        self.evidence_count = 0
        self.regency = 0
        self.in_sync = False  # between installing a regency and accepting its SYNC
        self.stop_sent = 0
        self.failed_regencies = 0
        self.regency_deadline = 0
        self.stops: dict[int, dict[int, Stop]] = {}  # regency -> sender -> signed STOP
        self.install_proof: tuple[Stop, ...] = ()  # the q STOPs that installed self.regency
        self.stop_data: dict[int, dict[int, StopData]] = {}
        self.pending_sync: Sync | None = None
        # Decided history since the stable checkpoint (or genesis).
        self.base_height = 0
        self.base_header = genesis.header
        self.base_snapshot = genesis.snapshot
        self.base_checkpoint: StableCheckpoint | None = None
        self.previous_checkpoint: StableCheckpoint | None = None
        self.log: dict[int, DecidedBlock] = {}
        self.decided_height = 0
        self.decided_tick = 0  # when decided_height was reached
        self.last_header = genesis.header
        self.last_certificate: Certificate | None = None
        # The instance at decided_height + 1.
        self.proposals: dict[int, Block] = {}
        self.writes: dict[tuple[int, bytes], dict[int, Write]] = {}
        self.accepts: dict[tuple[int, bytes], dict[int, bytes]] = {}
        self.accepted_by: dict[tuple[int, int], bytes] = {}  # (sender, regency) -> digest
        self.written_by: dict[tuple[int, int], bytes] = {}  # (sender, regency) -> digest
        self.votes: dict[tuple[str, int, int], bytes] = {}  # (kind, regency, height) -> digest
        self.best_proof: WriteProof | None = None
        self.written: WrittenBlock | None = None  # our highest-regency WRITE here, with its block
        self.speculative: bytes | None = None  # digest of the block executed on top
        self.speculative_execution: Execution | None = None
        self.body_checked: Block | None = None  # the last block whose body passed the checks
        # Requests and catch-up.
        self.pending: dict[tuple[int, int], tuple[Request, int]] = {}
        self.client_decided: dict[int, int] = {}
        self.reply_cache: dict[int, Reply] = {}  # each client's latest answer, for retries
        self.future: list[PeerMessage] = []
        self.fetch_deadline = 0
        self.fetch_peer = (self.id + 1) % self.n
        self.pushed: set[tuple[int, int]] = set()  # (peer, height) catch-ups already sent
        self.answered: dict[int, int] = {}  # peer -> tick of the last fetch answered
        self.chunk_answered: dict[int, int] = {}  # peer -> tick of the last chunk sent
        self.chunk_wanted: dict[int, FetchChunk] = {}  # asks held for the next tick
        self.asked: dict[int, int] = {}  # peer -> tick of our last FetchBlocks to it
        self.assembly: _Assembly | None = None  # a snapshot arriving in chunks
        self.checkpoint_votes: dict[int, dict[int, CheckpointVote]] = {}
        self.checkpoint_pending: dict[int, tuple[bytes, BlockHeader, Certificate]] = {}
        # Own messages of the open instance / regency change, as sent (to None: everyone).
        self.resend: list[Outstanding] = []
        self.persist_seq = 0
        self.durable_upto = 0
        self._out = EffectsBuilder()
        self._recover(records)

    # ================================================================ driver API

    def step(self, message: BftInput) -> Effects:
        self._out = EffectsBuilder()
        match message:
            case Persisted(upto=upto):
                assert upto <= self.persist_seq, (upto, self.persist_seq)
                self.durable_upto = max(self.durable_upto, upto)
            case Request():
                self._on_request(message)
            case (
                Propose()
                | Write()
                | Accept()
                | Stop()
                | RegencyProof()
                | StopData()
                | Sync()
                | CheckpointVote()
                | FetchBlocks()
                | Blocks()
                | FetchChunk()
                | SnapshotChunk()
            ):
                self._on_peer(message)
            case _:
                assert_never(message)
        self._maybe_propose()
        self._follow_sync_suffix()
        self._check_invariants()
        return self._out.build()

    def tick(self) -> Effects:
        self._out = EffectsBuilder()
        self.ticks += 1
        if self.chunk_wanted:
            wanted, self.chunk_wanted = self.chunk_wanted, {}
            for fetch in wanted.values():
                self._answer_chunk(fetch)
        self._check_timeouts()
        self._maybe_sync()
        self._retransmit()
        self._maybe_propose()
        self._follow_sync_suffix()
        self._check_invariants()
        return self._out.build()

    def request_regency_change(self) -> Effects:
        """Start a regency change now (the mode controller heals a fallback this way)."""
        self._out = EffectsBuilder()
        self._start_regency_change(max(self.stop_sent, self.regency) + 1)
        return self._out.build()

    def unsafe_finalize(self, block: Block, term: int) -> Effects:
        """UNSAFE, tests only: decide a provisional block without a BFT certificate,
        the mistake the S1 checker must catch."""
        self._out = EffectsBuilder()
        if block.header.height == self.height and block.header.parent_hash == (
            self.last_header.digest
        ):
            fake = Certificate(regency=term, height=self.height, digest=block.digest, signatures=())
            self._decide(DecidedBlock(block=block, certificate=fake))
        return self._out.build()

    def fetch_from(self, peer: int) -> Effects:
        """Ask ``peer`` for decided blocks (a fallback peer is ahead in BFT-final height)."""
        self._out = EffectsBuilder()
        if peer != self.id:
            self._schedule_fetch(peer)
        return self._out.build()

    @property
    def leader(self) -> int:
        return leader_of(self.regency, self.n)

    @property
    def height(self) -> int:
        """The height being decided now."""
        return self.decided_height + 1

    # ================================================================ plumbing

    def _persist(self, record: PersistRecord) -> None:
        self.persist_seq += 1
        self._out.persist.append(record)

    def _sign(self, message: _M) -> _M:
        signature = self.signer.sign(canonical(message))
        return dataclasses.replace(message, signature=signature)

    def _broadcast(self, message: PeerMessage, remember: bool = True) -> None:
        send = Send(to=None, message=message)
        self._out.send.append(send)
        if remember:
            self._remember(send)

    def _remember(self, send: Send) -> None:
        """Send ``send`` again later if the instance is still undecided (it went just now)."""
        self.resend.append(Outstanding(send=send, sent_tick=self.ticks))
        del self.resend[:-16]  # bounded: the newest messages matter

    def _retransmit(self) -> None:
        """Lossy links: re-send what may not have arrived; probe for newer blocks."""
        if self.ticks % self.cfg.probe_ticks == 0:
            self._fetch()
            self._share_regency_proof()
        if not self.resend:
            return
        # A STOP for a regency already installed, or STOP-DATA for one left behind or
        # already synchronised, can help nobody: stop repeating it.
        self.resend = [
            s
            for s in self.resend
            if not (isinstance(s.message, Stop) and s.message.regency <= self.regency)
            and not (
                isinstance(s.message, StopData)
                and (s.message.regency != self.regency or not self.in_sync)
            )
        ]
        for item in self.resend:
            wait = min(
                self.cfg.retransmit_ticks << min(item.attempts, 16), self.cfg.retransmit_ticks_max
            )
            if self.ticks - item.sent_tick < wait:
                continue
            item.sent_tick = self.ticks
            item.attempts += 1
            missing = self._missing(item.send)
            if missing is None:
                self._out.send.append(item.send)
            else:
                self._out.send.extend(Send(to=peer, message=item.message) for peer in missing)

    def _missing(self, send: Send) -> list[int] | None:
        """The peers that may still lack a vote of the open instance (None: all of them).

        A peer that WROTE or ACCEPTED in the proposal's regency holds a proposal; one that
        ACCEPTED holds a write quorum.  (A Byzantine one may say so falsely and go
        without: it needs no help.)"""
        message = send.message
        if send.to is not None or not isinstance(message, Propose | Write):
            return None
        if message.height != self.height:
            return None
        regency = message.regency
        return [
            peer
            for peer in range(self.n)
            if peer != self.id
            and (peer, regency) not in self.accepted_by
            and (isinstance(message, Write) or (peer, regency) not in self.written_by)
        ]

    def _send(self, to: int, message: PeerMessage) -> None:
        assert to != self.id
        self._out.send.append(Send(to=to, message=message))

    def _trace(self, text: str) -> None:
        self._out.trace.append(f"r{self.id} {text}")

    def _blame(self, sender: int, why: str) -> None:
        """A peer or client sent something wrong: keep evidence, change nothing."""
        self.evidence_count += 1
        self.evidence.append(f"from {sender}: {why}")
        self._trace(f"evidence from {sender}: {why}")

    def _authentic(self, message: PeerMessage) -> bool:
        sender = message.sender
        if not 0 <= sender < self.n or sender == self.id:
            self._blame(sender, f"{type(message).__name__} from an impossible sender")
            return False
        try:
            signed = canonical(message)
        except (TypeError, ValueError) as error:  # a value no honest replica can produce
            self._blame(sender, f"{type(message).__name__} that cannot be encoded: {error}")
            return False
        if not self.verifier.verify(sender, signed, message.signature):
            self._blame(sender, f"{type(message).__name__} with a bad signature")
            return False
        return True

    def _check_invariants(self) -> None:
        assert self.decided_height >= self.base_height
        assert self.last_header.height == self.decided_height
        assert len(self.future) <= self.cfg.future_messages_max
        assert len(self.pending) <= self.cfg.pending_requests_max
        assert self.regency <= self.stop_sent <= self.regency + self.n
        if self.speculative is not None:
            assert self.speculative in {b.digest for b in self.proposals.values()}
        if self.assembly is not None:
            assert len(self.assembly.data) < self.assembly.total <= self.cfg.snapshot_bytes_max

    # ================================================================ recovery

    def _recover(self, records: Sequence[PersistRecord]) -> None:
        """Rebuild from persisted records: checkpoint, decided blocks, votes, proofs."""
        checkpoint = None
        decided: dict[int, DecidedBlock] = {}
        proofs: list[WriteProof] = []
        written: list[VoteRecord] = []
        for record in records:
            match record:
                case RegencyRecord(regency=regency, stops=stops):
                    if regency >= self.regency:
                        self.regency = regency
                        self.install_proof = stops  # empty when adopted from a SYNC
                    self.stop_sent = max(self.stop_sent, regency)
                case VoteRecord(kind=kind, regency=regency, height=height, digest=digest):
                    self.votes[(kind, regency, height)] = digest
                    if record.block is not None:
                        written.append(record)
                case ProofRecord(proof=proof):
                    proofs.append(proof)
                case DecidedRecord(decided=block):
                    decided[block.block.header.height] = block
                case CheckpointRecord(checkpoint=stable):
                    if checkpoint is None or stable.height > checkpoint.height:
                        checkpoint = stable
                case TermRecord() | EntryRecord() | ModeRecord():
                    pass  # the fallback core's and the mode controller's records
                case _:
                    assert_never(record)
        self.persist_seq = self.durable_upto = len(records)
        if checkpoint is not None:
            self._install_checkpoint(checkpoint)
        for height in sorted(decided):
            if height == self.decided_height + 1:
                self._apply_decided(decided[height], replaying=True)
        # Only after the replay (which clears the instance): the proof for the open
        # height is what STOP-DATA must report, so a restart must never drop it.
        current = [p for p in proofs if p.height == self.height]
        self.best_proof = max(current, key=lambda p: p.regency) if current else None
        # Likewise the block of our highest WRITE here: STOP-DATA reports it too.
        mine = [v for v in written if v.height == self.height]
        if mine:
            last = max(mine, key=lambda v: v.regency)
            assert last.block is not None
            self.written = WrittenBlock(regency=last.regency, block=last.block)
        self.in_sync = self.regency > 0  # wait for the regency's SYNC or the next one
        self.regency_deadline = self.ticks + self.cfg.regency_timeout_ticks

    # ================================================================ requests

    def _on_request(self, request: Request) -> None:
        if request.key in self.pending:
            return
        if request.request_number <= self.client_decided.get(request.client_id, -1):
            # Already decided: the reply may have been lost, so answer again from the cache.
            cached = self.reply_cache.get(request.client_id)
            if cached is not None and cached.request_number == request.request_number:
                self._out.replies.append(cached)
            return
        if not self.client_verifier.verify(
            request.client_id, canonical(request), request.signature
        ):
            self._blame(-1, f"request {request.key} with a bad client signature")
            return
        problem = self.sm.check_request(request)
        if problem is not None:
            self._blame(-1, f"request {request.key} cannot execute: {problem}")
            return
        if len(self.pending) >= self.cfg.pending_requests_max:
            self._trace(f"dropped request {request.key}: pending queue full")
            return
        self.pending[request.key] = (request, self.ticks)

    def _request_valid(self, request: Request) -> bool:
        held = self.pending.get(request.key)
        if held is not None and held[0] == request:
            return True  # these very bytes, signature included, passed on arrival
        return (
            self.client_verifier.verify(request.client_id, canonical(request), request.signature)
            and self.sm.check_request(request) is None
        )

    # ================================================================ leader

    def _maybe_propose(self) -> None:
        if self.leader != self.id or self.in_sync or self.regency in self.proposals:
            return
        reproposal = self.reproposals.get(self.height)
        if reproposal is not None and reproposal.header.parent_hash != self.last_header.digest:
            self.reproposals.clear()  # the certified chain left the provisional suffix
            reproposal = None
        if not (self.pending or reproposal) or self.votes.get(("write", self.regency, self.height)):
            return
        if reproposal is not None:
            # Re-certification: the provisional block, unchanged, so it keeps its results.
            if (problem := self._validate_block(reproposal)) is not None:
                self._trace(f"cannot re-certify h{self.height}: {problem}")
                self.reproposals.clear()
                return
            block = reproposal
        else:
            built = self._build_block(self._take_requests())
            if built is None:
                return
            block = built
        propose = self._sign(
            Propose(sender=self.id, regency=self.regency, height=self.height, block=block)
        )
        self._trace(f"propose h{self.height} v{self.regency} {len(block.requests)} requests")
        self._broadcast(propose)
        self._accept_proposal(self.regency, block)

    def _follow_sync_suffix(self) -> None:
        """A follower WRITEs the next block of the suffix its leader's SYNC re-certifies
        without waiting for the PROPOSE: the signed SYNC already commits the leader to
        those blocks, in order, so this is the PROPOSE received early (one message delay
        saved per re-certified block).  A different PROPOSE later is refused, but not
        blamed: a leader restarted after its SYNC honestly forgets the suffix."""
        if (
            self.leader == self.id
            or self.in_sync
            or self.timers_paused  # in fallback: no BFT vote in the stalled regency
            or self.reproposal_regency != self.regency
            or self.regency in self.proposals
        ):
            return
        block = self.reproposals.get(self.height)
        if block is None:
            return
        if block.header.parent_hash != self.last_header.digest or self._validate_block(block):
            self.reproposals.clear()  # the certified chain left the suffix: as the leader does
            return
        self.suffix_written.add(self.regency)
        self._accept_proposal(self.regency, block)

    def forget_sync_suffix(self) -> None:
        """A fallback epoch began: the suffix of the last SYNC is stale (the fallback log
        may have moved on) and the next regency's SYNC re-certifies what is current."""
        self.reproposals = {}
        self.reproposal_regency = -1
        self.sync_suffix = None

    def _take_requests(self) -> list[Request]:
        chosen: list[Request] = []
        events = 0
        for request, _ in self.pending.values():
            if len(chosen) == self.cfg.block_requests_max:
                break
            if events + request.events > self.cfg.block_events_max:
                continue
            chosen.append(request)
            events += request.events
        return chosen

    def _now_ns(self) -> int:
        return self.cfg.genesis_ns + self.ticks * self.cfg.tick_ns

    def _build_block(self, requests: list[Request]) -> Block | None:
        """Execute on top of the decided state and seal the header."""
        self._rollback_speculation()
        first = max(self.sm.last_timestamp() + 1, self._now_ns())
        header, execution = self._seal(requests, first)
        block = Block(header=header, requests=tuple(requests), verdicts=execution.verdicts)
        self.speculative = block.digest
        self.speculative_execution = execution
        return block

    def _seal(
        self, requests: Sequence[Request], first: int, fallback_term: int = 0
    ) -> tuple[BlockHeader, Execution]:
        self.owner.holder = "bft"
        return seal(
            self.sm, requests, parent=self.last_header, first=first, fallback_term=fallback_term
        )

    # ================================================================ peers

    def _on_peer(self, message: PeerMessage) -> None:
        if self._authentic(message):
            self._dispatch(message)

    def _dispatch(self, message: PeerMessage) -> None:
        """Handle an authenticated message (fresh, or deferred and replayed)."""
        match message:
            case Propose():
                self._on_propose(message)
            case Write():
                self._on_write(message)
            case Accept():
                self._on_accept(message)
            case Stop():
                self._on_stop(message)
            case RegencyProof():
                self._on_regency_proof(message)
            case StopData():
                self._on_stop_data(message)
            case Sync():
                self._on_sync(message)
            case CheckpointVote():
                self._on_checkpoint_vote(message)
            case FetchBlocks():
                self._on_fetch(message)
            case Blocks():
                self._on_blocks(message)
            case FetchChunk():
                self._on_fetch_chunk(message)
            case SnapshotChunk():
                self._on_snapshot_chunk(message)
            case _:
                assert_never(message)

    def _defer(self, message: PeerMessage) -> bool:
        """Keep a message for a later height or regency; True when kept or dropped."""
        height = getattr(message, "height", None)
        regency = getattr(message, "regency", self.regency)
        if height is not None and height < self.height:
            self._push_catch_up(message.sender, height)
            return True
        if (height is not None and height > self.height) or regency > self.regency:
            if height is not None and height > self.height + 1:
                # Far ahead: this replica lags.  Fetch (from a rotating peer), keep nothing.
                self._schedule_fetch(message.sender)
                return True
            self._keep_for_later(message)
            return True
        return False

    def _keep_for_later(self, message: PeerMessage) -> None:
        """Buffer an early message, within a regency window and a per-peer quota."""
        if getattr(message, "regency", self.regency) > self.regency + self.n:
            return  # beyond any regency change in progress: nothing to keep
        if message in self.future or len(self.future) >= self.cfg.future_messages_max:
            return
        quota = self.cfg.future_messages_max // self.n  # one peer cannot crowd the rest
        if sum(1 for m in self.future if m.sender == message.sender) < quota:
            self.future.append(message)

    def _replay_future(self) -> None:
        kept, self.future = self.future, []
        for message in kept:
            self._dispatch(message)

    # ---------------------------------------------------------------- normal case

    def _on_propose(self, propose: Propose) -> None:
        if self._defer(propose):
            return
        if propose.regency < self.regency or self.in_sync:
            return  # stale, or the regency has not been synchronised yet
        if propose.sender != leader_of(propose.regency, self.n):
            self._blame(propose.sender, f"PROPOSE from a non-leader in regency {propose.regency}")
            return
        if propose.height != propose.block.header.height:
            self._blame(propose.sender, "PROPOSE height disagrees with its block")
            return
        known = self.proposals.get(propose.regency)
        if known is not None:
            if known.digest == propose.block.digest:
                return
            if propose.regency in self.suffix_written:
                # Not provable equivocation: a leader restarted after its SYNC no longer
                # knows the suffix it sent.  This replica WROTE the suffix block and will
                # not WRITE another; if no quorum forms, the regency times out.
                self._trace(f"PROPOSE h{propose.height} differs from the SYNC suffix written")
                return
            self._blame(propose.sender, f"equivocation at h{propose.height}")
            self._start_regency_change(self.regency + 1)
            return
        problem = self._validate_block(propose.block)
        if problem is not None:
            self._blame(propose.sender, f"invalid proposal: {problem}")
            self._start_regency_change(self.regency + 1)
            return
        self._accept_proposal(propose.regency, propose.block)

    def _accept_proposal(self, regency: int, block: Block) -> None:
        """Record the regency's block and WRITE for it (once per regency and height)."""
        assert block.digest == self.speculative
        self.proposals[regency] = block
        key = ("write", regency, self.height)
        if key in self.votes:
            if self.votes[key] != block.digest:
                return  # voted otherwise before a restart: never equivocate
        else:
            self.votes[key] = block.digest
            self._persist(
                VoteRecord(
                    kind="write",
                    regency=regency,
                    height=self.height,
                    digest=block.digest,
                    block=block,
                )
            )
        if self.written is None or regency >= self.written.regency:
            self.written = WrittenBlock(regency=regency, block=block)
        write = self._sign(
            Write(sender=self.id, regency=regency, height=self.height, digest=block.digest)
        )
        self._broadcast(write)
        self._record_write(write)
        self._replay_future()

    def _on_write(self, write: Write) -> None:
        if self._defer(write):
            return
        if write.regency != self.regency:
            return
        self._record_write(write)

    def _record_write(self, write: Write) -> None:
        first = self.written_by.setdefault((write.sender, write.regency), write.digest)
        if first != write.digest:
            self._blame(write.sender, f"two WRITEs in regency {write.regency}")
            return
        bucket = self.writes.setdefault((write.regency, write.digest), {})
        bucket.setdefault(write.sender, write)
        block = self.proposals.get(write.regency)
        if block is None or block.digest != write.digest or len(bucket) < self.q:
            return
        key = ("accept", write.regency, self.height)
        if key in self.votes:
            return
        proof = WriteProof(
            regency=write.regency,
            height=self.height,
            block=block,
            writes=tuple(bucket[s] for s in sorted(bucket))[: self.q],
        )
        self.best_proof = proof
        self.votes[key] = write.digest
        self._persist(ProofRecord(proof=proof))
        self._persist(
            VoteRecord(
                kind="accept", regency=write.regency, height=self.height, digest=write.digest
            )
        )
        accept = self._sign(
            Accept(sender=self.id, regency=write.regency, height=self.height, digest=write.digest)
        )
        self._broadcast(accept)
        self._record_accept(accept)

    def _on_accept(self, accept: Accept) -> None:
        if self._defer(accept):
            return
        self._record_accept(accept)

    def _record_accept(self, accept: Accept) -> None:
        # Bounded memory against floods: regencies near ours, one digest per sender each.
        if abs(accept.regency - self.regency) > self.n:
            return
        first = self.accepted_by.setdefault((accept.sender, accept.regency), accept.digest)
        if first != accept.digest:
            self._blame(accept.sender, f"two ACCEPTs in regency {accept.regency}")
            return
        bucket = self.accepts.setdefault((accept.regency, accept.digest), {})
        bucket.setdefault(accept.sender, accept.signature)
        if len(bucket) < self.q:
            return
        block = next((b for b in self.proposals.values() if b.digest == accept.digest), None)
        if block is None:
            self._schedule_fetch(accept.sender)  # decided elsewhere; we lack the block
            return
        certificate = Certificate(
            regency=accept.regency,
            height=self.height,
            digest=accept.digest,
            signatures=tuple(sorted(bucket.items()))[: self.q],
        )
        self._decide(DecidedBlock(block=block, certificate=certificate))

    # ---------------------------------------------------------------- decisions

    def _decide(self, decided: DecidedBlock) -> None:
        assert decided.block.header.height == self.height
        self._persist(DecidedRecord(decided=decided))
        self._apply_decided(decided, replaying=False)
        self._trace(
            f"decide h{decided.block.header.height} "
            f"{decided.block.digest.hex()[:12]} v{decided.certificate.regency}"
        )
        self._replay_future()

    def _apply_decided(self, decided: DecidedBlock, replaying: bool) -> None:
        block = decided.block
        header = block.header
        assert header.height == self.decided_height + 1
        if self.speculative == block.digest and self.speculative_execution is not None:
            execution = self.speculative_execution
        else:
            self._rollback_speculation()
            execution = self.sm.execute(
                block.requests, header.timestamp, fallback_term=header.fallback_term
            )
            assert execution.state_hash == header.state_hash, "decided block diverged"
        self.speculative = None
        self.speculative_execution = None
        self.log[header.height] = decided
        self.decided_height = header.height
        self.decided_tick = self.ticks
        self.last_header = header
        self.last_certificate = decided.certificate
        self.proposals.clear()
        self.suffix_written.clear()
        self.writes.clear()
        self.accepts.clear()
        self.accepted_by.clear()
        self.written_by.clear()
        self.best_proof = None
        self.written = None
        self.resend = [s for s in self.resend if isinstance(s.message, Stop | StopData)]
        self.votes = {k: v for k, v in self.votes.items() if k[2] > header.height}
        for request in block.requests:
            self.pending.pop(request.key, None)
            previous = self.client_decided.get(request.client_id, -1)
            self.client_decided[request.client_id] = max(previous, request.request_number)
        if self.in_sync and decided.certificate.regency == self.regency and not replaying:
            # A block decided in this regency means its SYNC was accepted by a quorum:
            # a replica that missed the SYNC (restarted, lagging) may follow the leader.
            self.in_sync = False
        if self.stop_sent > self.regency == decided.certificate.regency and not replaying:
            self._abandon_regency_change()
        if decided.certificate.regency == self.regency and not replaying:
            self.failed_regencies = 0  # this regency works: the next change waits from scratch
        if not replaying:
            self._out.decided.append(decided)
            self._reply(decided, execution)
            if header.height % self.cfg.checkpoint_interval == 0:
                self._vote_checkpoint(decided)
        self._restart_request_timers()  # fresh progress: waiting requests get a full timeout

    def _restart_request_timers(self) -> None:
        if self.pending:
            self.pending = {k: (r, self.ticks) for k, (r, _) in self.pending.items()}

    def _reply(self, decided: DecidedBlock, execution: Execution) -> None:
        for request in decided.block.requests:
            self.reply_cache[request.client_id] = reply = Reply(
                replica_id=self.id,
                client_id=request.client_id,
                request_number=request.request_number,
                header=decided.block.header,
                certificate=decided.certificate,
                results=execution.results,
            )
            self._out.replies.append(reply)

    # ---------------------------------------------------------------- validation

    def _validate_block(self, block: Block) -> str | None:
        """Why ``block`` cannot be the next block, or None after executing it."""
        header = block.header
        if header.height != self.height:
            return f"height {header.height}, expected {self.height}"
        if header.parent_hash != self.last_header.digest:
            return "wrong parent hash"
        if sum(r.events for r in block.requests) > self.cfg.block_events_max:
            return "too many events"
        problem = self._body_problem(block)
        if problem is not None:
            return problem
        self._rollback_speculation()
        if header.timestamp <= self.sm.last_timestamp():
            return "timestamp does not advance"
        if header.timestamp > self._now_ns() + self.cfg.timestamp_skew_max_ns:
            return "timestamp too far ahead of this replica's clock"
        expected, execution = self._seal(block.requests, header.timestamp, header.fallback_term)
        self.speculative = block.digest
        self.speculative_execution = execution
        if expected != header:
            self._rollback_speculation()
            return mismatch(expected, header)
        return None

    def _body_problem(self, block: Block) -> str | None:
        # The same block often comes twice: proposed, then (from a peer that decided it
        # first) in a catch-up answer.  Its body was checked once; equal bytes need not be
        # hashed and verified again.
        checked = self.body_checked
        if (
            checked is not None
            and checked.digest == block.digest
            and checked.verdicts == block.verdicts
            and checked.requests == block.requests
        ):
            return None
        problem = body_problem(block, self._request_valid)
        if problem is None:
            self.body_checked = block
        return problem

    def _rollback_speculation(self) -> None:
        """Undo a speculative execution (or the fallback core's provisional blocks)."""
        if self.speculative is None and self.owner.holder == "bft":
            return
        self.restore_final_state()
        self._trace(f"rolled back speculation at h{self.height}")

    def restore_final_state(self) -> None:
        """Put the state machine at the last decided block: checkpoint, then replay."""
        self.sm.restore(self.base_snapshot, self.base_header.state_hash)
        for height in range(self.base_height + 1, self.decided_height + 1):
            header = self.log[height].block.header
            execution = self.sm.execute(
                self.log[height].block.requests,
                header.timestamp,
                fallback_term=header.fallback_term,
            )
            assert execution.state_hash == header.state_hash
        self.speculative = None
        self.speculative_execution = None
        self.owner.holder = "bft"

    # ================================================================ regency change

    def _check_timeouts(self) -> None:
        if self.fetch_deadline and self.ticks >= self.fetch_deadline:
            self.fetch_deadline = 0
            self._fetch()
        if self.timers_paused:
            return
        if self.in_sync or self.stop_sent > self.regency:
            if self.ticks >= self.regency_deadline:
                self.failed_regencies += 1
                self.regency_deadline = self.ticks + self._regency_timeout()
                self._start_regency_change(max(self.stop_sent, self.regency) + 1)
            return
        if not self.pending:
            return
        oldest = min(arrival for _, arrival in self.pending.values())
        if self.ticks - oldest >= self.cfg.request_timeout_ticks:
            self._trace(f"request timeout in regency {self.regency}")
            self._start_regency_change(self.regency + 1)

    def _start_regency_change(self, regency: int) -> None:
        # Never run ahead of the window peers accept (regency + n + 1): after a long
        # outage every replica stops at the same cap, and they meet there.
        regency = min(regency, self.regency + self.n)
        if regency <= self.stop_sent:
            return
        self.stop_sent = regency
        self.regency_deadline = self.ticks + self._regency_timeout()
        stop = self._sign(Stop(sender=self.id, regency=regency))
        self._broadcast(stop)
        self._record_stop(stop)

    def _abandon_regency_change(self) -> None:
        """A quorum decided a block in our regency after we asked to leave it (a timer
        raced the progress, or the mode controller asked for a heal that another
        regency change already made): the regency works, so stop escalating.  Without
        this a replica whose STOP too few peers joined climbs regencies alone and
        repeats its STOPs forever.  Our STOPs already sent still count if f + 1 peers
        later ask for that regency, and a request timeout may send them again."""
        self._trace(f"regency {self.regency} decides: regency change to {self.stop_sent} dropped")
        self.stop_sent = self.regency
        self.resend = [
            s
            for s in self.resend
            if not (isinstance(s.message, Stop) and s.message.regency > self.regency)
        ]

    def _regency_timeout(self) -> int:
        return self.cfg.regency_timeout_ticks << min(self.failed_regencies, 6)

    def _on_stop(self, stop: Stop) -> None:
        if stop.regency <= self.regency or stop.regency > self.regency + self.n + 1:
            return  # stale, or absurdly far ahead (bounds the memory a peer can claim)
        self._record_stop(stop)

    def _record_stop(self, stop: Stop) -> None:
        senders = self.stops.setdefault(stop.regency, {})
        senders.setdefault(stop.sender, stop)
        if len(senders) >= self.f + 1 and stop.regency > self.stop_sent:
            self._start_regency_change(stop.regency)  # f + 1 include an honest replica: join
        if len(senders) >= self.q and stop.regency > self.regency:
            self.install_proof = tuple(senders[s] for s in sorted(senders))[: self.q]
            self._install_regency(stop.regency)

    def _on_regency_proof(self, proof: RegencyProof) -> None:
        """A peer shows q signed STOPs for a regency above ours: we were stranded, follow."""
        if proof.regency <= self.regency:
            return
        signers = set()
        for stop in proof.stops:
            if stop.regency != proof.regency or not 0 <= stop.sender < self.n:
                break
            if not self.verifier.verify(stop.sender, canonical(stop), stop.signature):
                break
            signers.add(stop.sender)
        else:
            if len(signers) >= self.q:
                self.install_proof = proof.stops
                self._install_regency(proof.regency)
                return
        self._blame(proof.sender, f"regency proof for {proof.regency} does not hold")

    def _share_regency_proof(self) -> None:
        """Anti-entropy for regencies: replicas left in lower regencies (a partition, a
        restart, a peer that sent its STOP to only some) learn the one we installed."""
        if self.install_proof:
            self._out.send.append(
                Send(
                    to=None,
                    message=self._sign(
                        RegencyProof(sender=self.id, regency=self.regency, stops=self.install_proof)
                    ),
                )
            )

    def _install_regency(self, regency: int) -> None:
        self.regency = regency
        self.stop_sent = max(self.stop_sent, regency)
        self.in_sync = True
        self.regency_deadline = self.ticks + self._regency_timeout()
        self.stops = {r: s for r, s in self.stops.items() if r > regency}
        if self.install_proof and self.install_proof[0].regency != regency:
            self.install_proof = ()
        self._persist(RegencyRecord(regency=regency, stops=self.install_proof))
        self._restart_request_timers()  # the new leader gets a full timeout
        self._trace(f"install regency {regency} (leader {self.leader})")
        stop_data = self._sign(
            StopData(
                sender=self.id,
                regency=regency,
                decided_height=self.decided_height,
                decided_header=self.last_header,
                decided_certificate=self.last_certificate,
                proof=self.best_proof,
                fallback=self.fallback_report(),
                written=self.written,
            )
        )
        if self.leader == self.id:
            self.stop_data.setdefault(regency, {})[self.id] = stop_data
            self._maybe_sync()
        else:
            self._send(self.leader, stop_data)
            self.resend = [s for s in self.resend if not isinstance(s.message, StopData)]
            self._remember(Send(to=self.leader, message=stop_data))
        self._replay_future()

    def _on_stop_data(self, stop_data: StopData) -> None:
        if stop_data.regency < self.regency or leader_of(stop_data.regency, self.n) != self.id:
            return
        if stop_data.regency > self.regency:
            self._keep_for_later(stop_data)
            return
        problem = self._stop_data_problem(stop_data)
        if problem is not None:
            self._blame(stop_data.sender, f"lying STOP-DATA: {problem}")
            return
        self.stop_data.setdefault(stop_data.regency, {})[stop_data.sender] = stop_data
        self._maybe_sync()

    def _stop_data_problem(self, stop_data: StopData) -> str | None:
        header = stop_data.decided_header
        cert = stop_data.decided_certificate
        if header.height != stop_data.decided_height:
            return "decided header for another height"
        if stop_data.decided_height > 0 and (
            cert is None
            or cert.digest != header.digest
            or cert.height != header.height
            or not certificates.verify(cert, self.verifier, self.n)
        ):
            return "claims a decision it cannot show"
        proof = stop_data.proof
        if proof is not None:
            if proof.height != stop_data.decided_height + 1:
                return "write proof for the wrong height"
            if not self._proof_valid(proof):
                return "forged write proof"
        written = stop_data.written
        if written is not None:
            header = written.block.header
            if header.height != stop_data.decided_height + 1:
                return "written block for the wrong height"
            if header.parent_hash != stop_data.decided_header.digest:
                return "written block does not follow the decided header"
            if written.regency >= stop_data.regency:
                return "WRITE in a regency not yet over"
        return None

    def _certified(self, decided: DecidedBlock) -> bool:
        cert = decided.certificate
        return (
            cert.digest == decided.block.digest
            and cert.height == decided.block.header.height
            and certificates.verify(cert, self.verifier, self.n)
        )

    def _proof_valid(self, proof: WriteProof) -> bool:
        digest = proof.block.digest
        senders = set()
        for write in proof.writes:
            if (write.regency, write.height, write.digest) != (proof.regency, proof.height, digest):
                return False
            if not 0 <= write.sender < self.n or write.sender in senders:
                return False
            if not self.verifier.verify(write.sender, canonical(write), write.signature):
                return False
            senders.add(write.sender)
        return (
            len(senders) >= self.q
            and proof.block.header.height == proof.height
            and self._body_problem(proof.block) is None
        )

    def _sync_choice(self, stop_data: Iterable[StopData]) -> tuple[int, WriteProof | None]:
        """(height to synchronise, the proof whose block must be re-proposed or None)."""
        entries = list(stop_data)
        decided_max = max(s.decided_height for s in entries)
        proofs = [
            s.proof for s in entries if s.proof is not None and s.proof.height == decided_max + 1
        ]
        if not proofs or self.cfg.unsafe_skip_sync_reproposal:
            return decided_max + 1, None
        best = max(proofs, key=lambda p: (p.regency, p.block.digest))
        return decided_max + 1, best

    def _written_choice(self, stop_data: Iterable[StopData], height: int) -> list[Block]:
        """The blocks the STOP-DATAs report WRITTEN at ``height``, highest (regency,
        digest) first.  With no write proof and no fallback report, a SYNC must
        re-propose the first valid one (DESIGN 3.3, S2): some quorum may have WRITTEN
        it and a write proof for it may exist outside these STOP-DATAs, which a later
        regency would then pick over whatever this one commits; every quorum of
        STOP-DATAs holds an honest writer of such a block, at its regency or later.
        Only a block that cannot be re-executed (a Byzantine report) is passed over."""
        found: dict[tuple[int, bytes], Block] = {}
        for entry in stop_data:
            written = entry.written
            if written is not None and written.block.header.height == height:
                found[(written.regency, written.block.digest)] = written.block
        return [found[key] for key in sorted(found, reverse=True)]

    def _first_valid(self, blocks: Sequence[Block]) -> Block | None:
        """The first block of ``blocks`` that validates here, left executed."""
        return next((b for b in blocks if self._validate_block(b) is None), None)

    def _maybe_sync(self) -> None:
        collected = self.stop_data.get(self.regency, {})
        if not self.in_sync or len(collected) < self.q or self.leader != self.id:
            return
        if not self.sync_allowed():
            return  # retried every tick
        chosen = [collected[s] for s in sorted(collected)][: self.q]
        height, proof = self._sync_choice(chosen)
        if height != self.height:
            if height > self.height:
                self._catch_up_from(chosen)
            if height != self.height:
                return  # still behind: wait for blocks
        self._choose_suffix(chosen)
        reproposal = self.reproposals.get(height)
        if reproposal is not None and (
            reproposal.header.parent_hash != self.last_header.digest
            or (proof is not None and proof.block.digest != reproposal.digest)
            or (proof is None and self._validate_block(reproposal) is not None)
        ):
            # A write proof outranks the suffix (BFT evidence first, for S1), or the
            # suffix does not fit: it is not re-certified.
            self._trace(f"fallback suffix abandoned at h{height}")
            self.reproposals.clear()
            self.sync_suffix = None
        if proof is not None:
            block = proof.block
            if (problem := self._validate_block(block)) is not None:
                self._trace(f"cannot re-propose: {problem}")
                return
        elif reproposal is not None and self.reproposals:
            block = reproposal  # validated just above
        elif not self.cfg.unsafe_skip_sync_reproposal and (
            written := self._first_valid(self._written_choice(chosen, height))
        ):
            block = written  # executed by _first_valid
        else:
            built = self._build_block(self._take_requests())
            assert built is not None
            block = built
        sync = self._sign(
            Sync(
                sender=self.id,
                regency=self.regency,
                height=height,
                block=block,
                stop_data=tuple(chosen),
                suffix=self.sync_suffix,
            )
        )
        self._trace(f"sync h{height} v{self.regency} reproposal={proof is not None}")
        self.resend = []
        self._broadcast(sync)
        self.in_sync = False
        self.stop_data.pop(self.regency, None)
        self._accept_proposal(self.regency, block)

    def _choose_suffix(self, chosen: Sequence[StopData]) -> None:
        """Re-certification (DESIGN 3.3): queue the provisional suffix of the most
        up-to-date fallback log among the STOP-DATAs, Raft's rule, so that a suffix a
        fallback majority committed is in it.  A write proof at the open height still
        wins (``_sync_choice``): the suffix is dropped where the chain leaves it."""
        best: tuple[tuple[int, int, bytes], FallbackReport] | None = None
        # Our own report fresh, not as sent with our STOP-DATA: the log may have grown.
        reports = [(s.sender, s.fallback) for s in chosen if s.sender != self.id]
        reports.append((self.id, self.fallback_report()))
        for sender, report in reports:
            if report is None or not report.entries or report.entries[-1].term != report.term:
                continue
            if report.entries[-1].block.header.height < self.height:
                continue  # decided already
            if not certificates.election_valid(report.election, report.term, self.verifier, self.n):
                self._blame(sender, f"fallback report for term {report.term} unproven")
                continue
            last = report.entries[-1].block
            key = (report.term, last.header.height, last.digest)
            if best is None or key > best[0]:
                best = (key, report)
        self.reproposals = {}
        self.reproposal_regency = self.regency
        self.sync_suffix = None
        if best is not None:
            self.sync_suffix = best[1]
            self.reproposals = {e.block.header.height: e.block for e in best[1].entries}
            self._trace(f"re-certify fallback term {best[1].term} up to h{best[0][1]}")

    def _catch_up_from(self, stop_data: Sequence[StopData]) -> None:
        """Fetch the decided blocks the STOP-DATAs prove exist and this replica lacks."""
        ahead = max(stop_data, key=lambda s: s.decided_height)
        if ahead.decided_height > self.decided_height:
            self._schedule_fetch(ahead.sender)

    def _on_sync(self, sync: Sync) -> None:
        if sync.regency < self.regency or (sync.regency == self.regency and not self.in_sync):
            return
        if sync.sender != leader_of(sync.regency, self.n):
            self._blame(sync.sender, "SYNC from a non-leader")
            return
        problem = self._sync_problem(sync)
        if problem is not None:
            self._blame(sync.sender, f"lying SYNC: {problem}")
            return
        if sync.height == self.height and (conflict := self.fallback_conflict(sync)) is not None:
            # Not the leader's fault (STOP-DATA goes stale while fallback commits): let
            # this regency fail; the next one collects fresher reports.
            self._trace(f"refuse sync h{sync.height} v{sync.regency}: {conflict}")
            return
        if sync.regency > self.regency:
            # q valid STOP-DATAs prove q replicas moved: follow them, as if installed here,
            # so no plain PROPOSE of this regency is taken before its SYNC.
            self.regency = sync.regency
            self.stop_sent = max(self.stop_sent, sync.regency)
            self.in_sync = True
            self.regency_deadline = self.ticks + self._regency_timeout()
            self.stops = {r: s for r, s in self.stops.items() if r > sync.regency}
            self.install_proof = ()  # proven by STOP-DATAs, not by STOPs we could share
            self._persist(RegencyRecord(regency=sync.regency))
            self._restart_request_timers()
        height, _ = self._sync_choice(sync.stop_data)
        if height > self.height:
            self._catch_up_from(sync.stop_data)
        if height < self.height:
            self.in_sync = False  # already decided here; carry on in this regency
            return
        if height > self.height:
            self.pending_sync = sync  # re-tried once the missing blocks arrive
            return
        block_problem = self._validate_block(sync.block)
        if block_problem is not None:
            self._blame(sync.sender, f"SYNC block invalid: {block_problem}")
            self._start_regency_change(self.regency + 1)
            return
        self.in_sync = False
        self.pending_sync = None
        self.resend = []
        self._trace(f"accept sync h{sync.height} v{sync.regency}")
        self.reproposal_regency = sync.regency
        self.reproposals = (
            {e.block.header.height: e.block for e in sync.suffix.entries} if sync.suffix else {}
        )
        self._accept_proposal(sync.regency, sync.block)

    def _sync_problem(self, sync: Sync) -> str | None:
        senders = set()
        for entry in sync.stop_data:
            if entry.regency != sync.regency or entry.sender in senders:
                return "STOP-DATA for another regency or repeated"
            # Every entry, this replica's own included: a leader must not be able to
            # stand in for us and hide the write proof we hold.
            if not (
                0 <= entry.sender < self.n
                and self.verifier.verify(entry.sender, canonical(entry), entry.signature)
            ):
                return "unsigned STOP-DATA"
            if self._stop_data_problem(entry) is not None:
                return "STOP-DATA with a bad proof"
            senders.add(entry.sender)
        if len(senders) < self.q:
            return f"{len(senders)} STOP-DATAs, {self.q} needed"
        height, proof = self._sync_choice(sync.stop_data)
        if sync.height != height or sync.block.header.height != height:
            return f"height {sync.height}, the STOP-DATAs require {height}"
        if proof is not None and proof.block.digest != sync.block.digest:
            return "did not re-propose the block of the highest write proof"
        own = self.best_proof
        if (
            not self.cfg.unsafe_skip_sync_reproposal  # the broken variant drops the whole rule
            and own is not None
            and own.height == height
            and (proof is None or own.regency > proof.regency)
        ):
            return "ignores a write proof this replica holds"
        if not self.cfg.unsafe_skip_sync_reproposal and proof is None and sync.suffix is None:
            # Every WRITTEN block ranked above the SYNC's must fail to execute here.
            for block in self._written_choice(sync.stop_data, height):
                if block.digest == sync.block.digest:
                    break
                if self._validate_block(block) is None:
                    self._rollback_speculation()
                    return "did not re-propose the highest WRITTEN block"
        suffix = sync.suffix
        if suffix is not None and (
            not suffix.entries
            or suffix.entries[-1].term != suffix.term
            or not certificates.election_valid(suffix.election, suffix.term, self.verifier, self.n)
        ):
            return "re-certifies a fallback suffix no election supports"
        return None

    # ================================================================ checkpoints

    def _vote_checkpoint(self, decided: DecidedBlock) -> None:
        header = decided.block.header
        self.checkpoint_pending[header.height] = (self.sm.snapshot(), header, decided.certificate)
        vote = self._sign(
            CheckpointVote(sender=self.id, height=header.height, state_hash=header.state_hash)
        )
        self._broadcast(vote, remember=False)
        self._record_checkpoint_vote(vote)

    def _on_checkpoint_vote(self, vote: CheckpointVote) -> None:
        if vote.height <= self.base_height or vote.height > self.height + 4 * (
            self.cfg.checkpoint_interval
        ):
            return
        self._record_checkpoint_vote(vote)

    def _record_checkpoint_vote(self, vote: CheckpointVote) -> None:
        votes = self.checkpoint_votes.setdefault(vote.height, {})
        votes.setdefault(vote.sender, vote)
        pending = self.checkpoint_pending.get(vote.height)
        if pending is None:
            return
        snapshot, header, cert = pending
        matching = [v for v in votes.values() if v.state_hash == header.state_hash]
        if len(matching) < self.q:
            return
        stable = StableCheckpoint(
            height=header.height,
            header=header,
            certificate=cert,
            snapshot=snapshot,
            votes=tuple(sorted(matching, key=lambda v: v.sender))[: self.q],
        )
        self._persist(CheckpointRecord(checkpoint=stable))
        self._make_stable(stable)
        self._trace(f"checkpoint h{stable.height} stable")

    def _make_stable(self, stable: StableCheckpoint, keep_previous: bool = True) -> None:
        # The checkpoint before, and the decided blocks after it, stay servable: a peer
        # fetching that checkpoint in chunks may need longer than one interval, and then
        # needs the blocks above it (a checkpoint installed from a peer has no blocks
        # below it here, so nothing is kept then).
        previous = self.base_checkpoint if keep_previous else None
        kept_after = previous.height if previous is not None else stable.height
        self.base_height = stable.height
        self.base_header = stable.header
        self.base_snapshot = stable.snapshot
        self.previous_checkpoint = previous
        self.base_checkpoint = stable
        self.log = {h: b for h, b in self.log.items() if h > kept_after}
        self.checkpoint_pending = {
            h: p for h, p in self.checkpoint_pending.items() if h > stable.height
        }
        self.checkpoint_votes = {
            h: v for h, v in self.checkpoint_votes.items() if h > stable.height
        }

    def _install_checkpoint(self, stable: StableCheckpoint) -> None:
        self.sm.restore(stable.snapshot, stable.header.state_hash)
        self.owner.holder = "bft"
        self._make_stable(stable, keep_previous=False)
        self.decided_height = stable.height
        self.decided_tick = self.ticks
        self.last_header = stable.header
        self.last_certificate = stable.certificate
        self.speculative = None
        self.speculative_execution = None

    def _checkpoint_valid(self, stable: StableCheckpoint) -> bool:
        senders = set()
        for vote in stable.votes:
            if (vote.height, vote.state_hash) != (stable.height, stable.header.state_hash):
                return False
            if not 0 <= vote.sender < self.n or vote.sender in senders:
                return False
            if not self.verifier.verify(vote.sender, canonical(vote), vote.signature):
                return False
            senders.add(vote.sender)
        cert = stable.certificate
        return (
            len(senders) >= self.q
            and cert.digest == stable.header.digest
            and cert.height == stable.height
            and certificates.verify(cert, self.verifier, self.n)
        )

    # ================================================================ catch-up

    def _schedule_fetch(self, peer: int) -> None:
        if peer != self.id and 0 <= peer < self.n:
            self.fetch_peer = peer
        if not self.fetch_deadline:
            self.fetch_deadline = self.ticks + 1

    def _fetch(self) -> None:
        assembly = self.assembly
        if assembly is not None:
            if assembly.checkpoint.height <= self.decided_height:
                self.assembly = None  # caught up another way
            elif (
                self.ticks - assembly.progress_tick > self.cfg.chunk_stall_ticks
                or self.ticks > assembly.deadline_tick
            ):
                self._drop_assembly("too slow")
            else:
                self._fetch_chunk(assembly)
                return
        if self.fetch_peer == self.id:
            self.fetch_peer = (self.id + 1) % self.n
        self.asked[self.fetch_peer] = self.ticks
        self._send(
            self.fetch_peer,
            self._sign(FetchBlocks(sender=self.id, after_height=self.decided_height)),
        )
        self.fetch_peer = (self.fetch_peer + 1) % self.n
        self._trace(f"fetch after h{self.decided_height}")

    def _deciding_itself(self, after_height: int) -> bool:
        """Whether a peer whose decided height is ``after_height`` is most likely about to
        decide our newest block itself (see ``catch_up_grace_ticks``)."""
        return (
            after_height + 1 == self.decided_height
            and self.ticks - self.decided_tick < self.cfg.catch_up_grace_ticks
        )

    def _push_catch_up(self, peer: int, height: int) -> None:
        if (peer, height) in self.pushed or height > self.decided_height:
            return
        if self._deciding_itself(height - 1):
            return  # not remembered in pushed: a vote it repeats later gets the push
        if len(self.pushed) > 4 * self.n * self.cfg.fetch_blocks_max:
            self.pushed.clear()
        self.pushed.add((peer, height))
        self._answer_fetch(peer, height - 1)

    def _on_fetch(self, fetch: FetchBlocks) -> None:
        # At most one answer per peer per retry period: answers carry whole blocks.
        if self.ticks - self.answered.get(fetch.sender, -self.cfg.fetch_retry_ticks) < (
            self.cfg.fetch_retry_ticks
        ):
            return
        if fetch.after_height < self.decided_height and not self._deciding_itself(
            fetch.after_height
        ):
            self.answered[fetch.sender] = self.ticks
            self._answer_fetch(fetch.sender, fetch.after_height)

    def _answer_fetch(self, peer: int, after_height: int) -> None:
        checkpoint = None
        start = after_height + 1
        if start <= self.base_height and start not in self.log:
            checkpoint = self.base_checkpoint
            if checkpoint is None:
                return  # genesis base: nothing older to send
            if len(checkpoint.snapshot) > self.cfg.snapshot_chunk_bytes:
                # Too large for one message: its first chunk; the peer asks for the rest,
                # then for the blocks above it.  Within the per-tick budget of chunks.
                if self._chunk_budget(peer):
                    self._send_chunk(peer, checkpoint, 0)
                return
            start = checkpoint.height + 1
        blocks = tuple(self.log[h] for h in range(start, self.decided_height + 1) if h in self.log)[
            : self.cfg.fetch_blocks_max
        ]
        self._send(peer, self._sign(Blocks(sender=self.id, checkpoint=checkpoint, blocks=blocks)))

    def _on_blocks(self, answer: Blocks) -> None:
        progressed = False
        stable = answer.checkpoint
        if stable is not None and stable.height > self.decided_height:
            if not self._take_checkpoint(stable, answer.sender):
                return
            progressed = True
        for decided in answer.blocks:
            header = decided.block.header
            if header.height != self.height:
                continue
            if header.parent_hash != self.last_header.digest or not self._certified(decided):
                self._blame(answer.sender, f"uncertified block at h{header.height}")
                return
            if (problem := self._body_problem(decided.block)) is not None:
                self._blame(answer.sender, f"certified header with a forged body: {problem}")
                return
            self._persist(DecidedRecord(decided=decided))
            self._apply_decided(decided, replaying=False)
            progressed = True
        if progressed:
            self._caught_up(answer.sender)

    def _take_checkpoint(self, stable: StableCheckpoint, sender: int) -> bool:
        """Install a stable checkpoint a peer sent, if it is certified and its snapshot
        restores to the certified state hash; otherwise blame the peer, change nothing."""
        if not self._checkpoint_valid(stable):
            self._blame(sender, "forged checkpoint")
            return False
        self._rollback_speculation()
        try:
            self._install_checkpoint(stable)  # restore is all-or-nothing
        except ValueError as error:
            self._blame(sender, f"checkpoint snapshot rejected: {error}")
            return False
        self._persist(CheckpointRecord(checkpoint=stable))
        self._reset_instance()
        return True

    def _caught_up(self, sender: int) -> None:
        self._trace(f"caught up to h{self.decided_height} from {sender}")
        sync = self.pending_sync
        self.pending_sync = None
        if sync is not None:
            self._on_sync(sync)
        self._replay_future()
        self._maybe_sync()

    # ================================================================ chunked state transfer

    def _send_chunk(self, peer: int, stable: StableCheckpoint, offset: int) -> None:
        snapshot = stable.snapshot
        if len(snapshot) > self.cfg.snapshot_bytes_max:
            self._trace(f"snapshot h{stable.height} over snapshot_bytes_max: not sent")
            return
        chunk = SnapshotChunk(
            sender=self.id,
            checkpoint=replace(stable, snapshot=b""),
            total=len(snapshot),
            offset=offset,
            data=snapshot[offset : offset + self.cfg.snapshot_chunk_bytes],
        )
        self._send(peer, self._sign(chunk))

    def _fetch_chunk(self, assembly: _Assembly) -> None:
        fetch = FetchChunk(
            sender=self.id,
            checkpoint_height=assembly.checkpoint.height,
            offset=len(assembly.data),
        )
        self._send(assembly.peer, self._sign(fetch))

    def _chunk_budget(self, peer: int) -> bool:
        """At most one chunk per peer per tick, whatever asked for it (each carries
        megabytes, and a peer could ask for thousands); True: one may go now."""
        if self.chunk_answered.get(peer) == self.ticks:
            return False
        self.chunk_answered[peer] = self.ticks
        return True

    def _on_fetch_chunk(self, fetch: FetchChunk) -> None:
        if self.chunk_answered.get(fetch.sender) == self.ticks:
            self.chunk_wanted[fetch.sender] = fetch  # the latest ask: at the next tick
            return
        self._answer_chunk(fetch)

    def _answer_chunk(self, fetch: FetchChunk) -> None:
        stable = self.base_checkpoint
        if stable is None or len(stable.snapshot) <= self.cfg.snapshot_chunk_bytes:
            return  # nothing to send in chunks: the peer's next FetchBlocks gets blocks
        if not self._chunk_budget(fetch.sender):
            self.chunk_wanted[fetch.sender] = fetch
            return
        previous = self.previous_checkpoint
        if previous is not None and fetch.checkpoint_height == previous.height:
            stable = previous
        offset = fetch.offset
        if fetch.checkpoint_height != stable.height or offset >= len(stable.snapshot):
            offset = 0  # a checkpoint no longer kept (or a wrong offset): the newest, over
        if offset + self.cfg.snapshot_chunk_bytes >= len(stable.snapshot):
            # The last chunk: the peer asks for the blocks above it next; answer that
            # even if a FetchBlocks of it was answered lately.
            self.answered.pop(fetch.sender, None)
        self._send_chunk(fetch.sender, stable, offset)

    def _on_snapshot_chunk(self, chunk: SnapshotChunk) -> None:
        stable = chunk.checkpoint
        if stable.height <= self.decided_height:
            return  # caught up meanwhile
        if chunk.total > self.cfg.snapshot_bytes_max:
            self._trace(
                f"snapshot h{stable.height} of {chunk.total} bytes: over snapshot_bytes_max"
            )
            return  # a bound of ours, not necessarily the peer's fault
        if (
            stable.snapshot
            or not chunk.data
            or chunk.offset + len(chunk.data) > chunk.total
            or len(chunk.data) < min(self.cfg.snapshot_chunk_bytes, chunk.total - chunk.offset)
        ):
            self._blame(chunk.sender, "malformed snapshot chunk")
            if self.assembly is not None and self.assembly.peer == chunk.sender:
                self.assembly = None
            return
        assembly = self.assembly
        if assembly is None or stable.height > assembly.checkpoint.height:
            asked = self.asked.get(chunk.sender)
            if (
                chunk.offset != 0
                or asked is None
                or self.ticks - asked > self.cfg.chunk_stall_ticks
            ):
                return  # only a peer asked lately may start one (a late or unasked answer)
            if not self._checkpoint_valid(stable):
                self._blame(chunk.sender, "forged checkpoint")
                return
            chunks = -(-chunk.total // self.cfg.snapshot_chunk_bytes)
            deadline = self.ticks + self.cfg.chunk_stall_ticks + chunks * self.cfg.chunk_ticks_max
            assembly = _Assembly(chunk.sender, stable, chunk.total, self.ticks, deadline)
            self.assembly = assembly
            self._trace(f"snapshot h{stable.height} from {chunk.sender}: {chunk.total} bytes")
        elif (
            chunk.sender != assembly.peer
            or stable != assembly.checkpoint
            or chunk.total != assembly.total
            or chunk.offset != len(assembly.data)
        ):
            return  # another peer's snapshot, or a chunk out of order (a resend)
        assembly.data += chunk.data
        assembly.progress_tick = self.ticks
        if len(assembly.data) < assembly.total:
            self._fetch_chunk(assembly)
            return
        self.assembly = None
        if self._take_checkpoint(replace(stable, snapshot=bytes(assembly.data)), chunk.sender):
            self._schedule_fetch(chunk.sender)  # the blocks above the checkpoint
            self._caught_up(chunk.sender)
        else:
            self.fetch_peer = (chunk.sender + 1) % self.n  # ask another peer next

    def _drop_assembly(self, why: str) -> None:
        """Give up a snapshot arriving in chunks: blame its peer, ask another next."""
        assembly = self.assembly
        assert assembly is not None
        self.assembly = None
        self._blame(
            assembly.peer,
            f"snapshot h{assembly.checkpoint.height} {why}: {len(assembly.data)} of "
            f"{assembly.total} bytes by tick {self.ticks}",
        )
        self.fetch_peer = (assembly.peer + 1) % self.n

    def _reset_instance(self) -> None:
        self.proposals.clear()
        self.suffix_written.clear()
        self.writes.clear()
        self.accepts.clear()
        self.accepted_by.clear()
        self.written_by.clear()
        self.resend = [s for s in self.resend if isinstance(s.message, Stop | StopData)]
        # Which of them the checkpoint decided is unknown here: clients retry the rest.
        self.pending.clear()
        self.best_proof = None
        self.written = None
