"""The mode controller: BFT by default, Raft fallback while BFT cannot progress.

Guarantees (DESIGN 3.3):

* One replica is one ``ModeController`` around a ``BftReplica`` and a
  ``RaftCore`` sharing one state machine; the driver sees the same
  ``step``/``tick``/``Effects`` interface as for either core.
* Transitions follow ``TRANSITIONS`` only (after h11's explicit state
  machine): BFT -> FALLBACK when BFT decided nothing for
  ``fallback_after_ticks`` while requests wait and a regency change has
  failed since the last decision; FALLBACK -> BFT as soon as BFT progresses
  (a block is decided, or a regency above the one fallback started in passes
  its SYNC).  While in fallback the replica casts no BFT vote in the stalled
  regency; when q replicas hear each other again it starts the regency change
  that re-certifies the provisional suffix.
* Nothing here weakens BFT: FINAL comes only from BFT certificates; the
  fallback log lives strictly above the BFT-final height.
* Mode changes, epochs, re-certifications and rollbacks are in the trace and
  in ``metrics``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from consensus.bft.replica import BftReplica, Genesis, ReplicaConfig, StateOwner
from consensus.crypto import Signer, Verifier
from consensus.effects import Effects, ModeRecord, PersistRecord, Send
from consensus.encoding import canonical
from consensus.messages import (
    Accept,
    AppendAck,
    AppendEntries,
    Block,
    LogEntry,
    Message,
    Persisted,
    Presence,
    Propose,
    Request,
    RequestVote,
    Sync,
    Vote,
    Write,
)
from consensus.quorum import quorum
from consensus.raft.core import Anchor, RaftConfig, RaftCore, RandomSource
from consensus.state_machine import StateMachine


class Mode(Enum):
    BFT = "bft"
    FALLBACK = "fallback"


class Event(Enum):
    STALLED = "bft stalled"  # no decision for fallback_after_ticks, requests waiting
    BFT_PROGRESS = "bft progressed"  # a block decided, or a newer regency synchronised


TRANSITIONS: dict[tuple[Mode, Event], Mode] = {
    (Mode.BFT, Event.STALLED): Mode.FALLBACK,
    (Mode.FALLBACK, Event.BFT_PROGRESS): Mode.BFT,
}


class ModeError(RuntimeError):
    """An event that has no transition from the current mode."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeConfig:
    enabled: bool = True  # False: BFT only (the comparison baseline)
    fallback_after_ticks: int = 100
    presence_ticks: int = 10  # reachability gossip period while in fallback
    reach_window_ticks: int = 40  # a peer heard within this is reachable
    heal_retry_ticks: int = 120  # between re-certification attempts
    # Deliberately unsafe variants, only for tests that prove the checkers can fail.
    unsafe_final_on_majority: bool = False  # treat a fallback majority commit as FINAL
    unsafe_never_heal: bool = False  # never start the re-certifying regency change


@dataclass(slots=True)
class Metrics:
    mode_changes: int = 0
    fallback_epochs: int = 0
    provisional_blocks: int = 0
    recertified_blocks: int = 0
    rolled_back_blocks: int = 0
    heal_attempts: int = 0


def _merge(parts: Sequence[Effects]) -> Effects:
    if len(parts) == 1:
        return parts[0]
    return Effects(
        persist=tuple(r for p in parts for r in p.persist),
        send=tuple(s for p in parts for s in p.send),
        replies=tuple(r for p in parts for r in p.replies),
        decided=tuple(d for p in parts for d in p.decided),
        committed=tuple(c for p in parts for c in p.committed),
        trace=tuple(t for p in parts for t in p.trace),
    )


class ModeController:
    def __init__(
        self,
        bft: BftReplica,
        raft: RaftCore,
        config: ModeConfig,
        records: Sequence[PersistRecord] = (),
    ) -> None:
        self.bft = bft
        self.raft = raft
        self.cfg = config
        self.id = bft.id
        self.n = bft.n
        self.q = quorum(self.n)
        self.mode = Mode.BFT
        self.epoch = 0
        self.metrics = Metrics()
        self.entry_regency = 0
        self.entry_height = 0
        self.last_progress = bft.ticks
        self.stops_at_progress = bft.stop_sent
        self.heard: dict[int, int] = {}  # peer -> tick last heard from
        self.fallback_heard_at = -config.reach_window_ticks - 1  # last fallback message
        self.peer_heard: dict[int, frozenset[int]] = {}  # peer -> whom it last said it heard
        self.last_presence = 0
        self.last_heal = -config.heal_retry_ticks
        self.provisional: dict[int, Block] = {}  # height -> block committed provisionally
        raft.waiting = lambda: (request for request, _ in bft.pending.values())
        bft.fallback_report = raft.report
        bft.fallback_conflict = self._fallback_conflict
        bft.sync_allowed = self._sync_allowed
        last_mode = "bft"
        for record in records:
            if isinstance(record, ModeRecord):
                self.epoch = max(self.epoch, record.epoch)
                last_mode = record.mode
        self._parts: list[Effects] = []
        # A replica that crashed in fallback comes back in fallback: in BFT mode it could
        # vote again in the stalled regency, behind the fallback's back.
        self.resume_fallback = last_mode == "fallback" and config.enabled

    # ================================================================ driver API

    def step(self, message: Message) -> Effects:
        self._parts = []
        match message:
            case Persisted():
                self._bft(lambda: self.bft.step(message))
            case Request():
                self._bft(lambda: self.bft.step(message))
                if self.mode is Mode.FALLBACK:
                    self._raft(self.raft.poke())
            case RequestVote() | Vote() | AppendEntries() | AppendAck() | Presence():
                self._on_fallback_message(message)
            case Propose() | Write() | Accept():
                self._heard_from(message.sender)
                # No BFT vote in the stalled regency while in fallback; a newer regency's
                # messages are kept by the BFT core until that regency is installed.
                if self.mode is Mode.BFT or message.regency > self.bft.regency:
                    self._bft(lambda: self.bft.step(message))
            case _:
                self._heard_from(message.sender)
                self._bft(lambda: self.bft.step(message))
        return _merge(self._parts) if self._parts else Effects()

    def tick(self) -> Effects:
        self._parts = []
        if self.resume_fallback:
            self.resume_fallback = False
            self.epoch -= 1  # the same epoch as before the crash
            self._transition(Event.STALLED)
        self._bft(self.bft.tick)
        if self.mode is Mode.FALLBACK or (
            self.cfg.enabled
            and self.bft.ticks - self.fallback_heard_at <= self.cfg.reach_window_ticks
        ):
            # In BFT mode only while a peer is in fallback: it needs to learn who hears it.
            self._gossip_presence()
        if self.mode is Mode.FALLBACK:
            self._raft(self.raft.tick())
            self._maybe_heal()
        else:
            self.raft.ticks += 1  # one clock for both cores
            self._maybe_fall_back()
        return _merge(self._parts) if self._parts else Effects()

    def fall_back_now(self) -> Effects:
        """Enter fallback without waiting for the stall rule (tests, operator drills).
        Safe at any time: FINAL still comes only from BFT certificates."""
        self._parts = []
        if self.mode is Mode.BFT:
            self._transition(Event.STALLED)
        return _merge(self._parts) if self._parts else Effects()

    # ================================================================ plumbing

    def _bft(self, call: Callable[[], Effects]) -> None:
        height = self.bft.decided_height
        effects = call()
        self._parts.append(effects)
        for decided in effects.decided:
            self._on_final(decided.block)
        if self.bft.decided_height > height:
            self.last_progress = self.bft.ticks
            self.stops_at_progress = self.bft.stop_sent
        if self.mode is Mode.FALLBACK and self._bft_works():
            self._transition(Event.BFT_PROGRESS)

    def _raft(self, effects: Effects) -> None:
        if effects.persist:
            self.bft.persist_seq += len(effects.persist)  # one sequence per disk
        self._parts.append(effects)
        for block in effects.committed:
            self.provisional[block.header.height] = block
            self.metrics.provisional_blocks += 1
            if self.cfg.unsafe_final_on_majority:
                term = self.raft.term
                self._bft(functools.partial(self.bft.unsafe_finalize, block, term))

    def _persist(self, record: ModeRecord) -> None:
        self._raft(Effects(persist=(record,)))  # counted in the one sequence per disk

    def _trace(self, text: str) -> None:
        self._parts.append(Effects(trace=(f"r{self.id} mode {text}",)))

    # ================================================================ transitions

    def _transition(self, event: Event) -> None:
        target = TRANSITIONS.get((self.mode, event))
        if target is None:
            raise ModeError(f"no transition from {self.mode.value} on {event.value}")
        self.mode = target
        self.metrics.mode_changes += 1
        if target is Mode.FALLBACK:
            self.epoch += 1
            self.metrics.fallback_epochs += 1
            self.entry_regency = self.bft.regency
            self.entry_height = self.bft.decided_height
            self.bft.timers_paused = True
            self.heard = {}
            self.peer_heard = {}
            self._persist(ModeRecord(mode="fallback", epoch=self.epoch))
            self._trace(
                f"fallback epoch {self.epoch}: {event.value} at h{self.bft.decided_height} "
                f"regency {self.bft.regency}"
            )
            # The stalled regency's votes stop travelling: a late quorum of them must not
            # form a write proof behind the fallback's back.
            self.bft.resend = [
                s for s in self.bft.resend if not isinstance(s.message, Propose | Write | Accept)
            ]
            self.bft.forget_sync_suffix()
            floor = max(self.bft.stop_sent, self.bft.regency)
            tentative, proven = self._tentative_entry()
            self._raft(self.raft.activate(floor, tentative, proven))
        else:
            self.raft.deactivate()
            self.bft.timers_paused = False
            self.last_progress = self.bft.ticks
            self.stops_at_progress = self.bft.stop_sent
            self._persist(ModeRecord(mode="bft", epoch=self.epoch))
            self._trace(
                f"bft again after epoch {self.epoch}: {event.value}, regency "
                f"{self.bft.regency}, provisional up to h{self.raft.last_height}"
            )

    def _bft_works(self) -> bool:
        """A block was decided, or a newer regency got past its SYNC: q replicas act.
        (Installing a regency alone proves little: in a star partition the hub installs
        every regency from the STOPs it relays, and nobody else can follow.)"""
        bft = self.bft
        newer_regency_running = bft.regency > self.entry_regency and not bft.in_sync
        return bft.decided_height > self.entry_height or newer_regency_running

    def _tentative_entry(self) -> tuple[LogEntry | None, bool]:
        """What this replica voted for at the open BFT height, as a log entry whose term
        is that regency (DESIGN 3.3): its write proof, or else the block it WROTE.

        A written block is enough to matter: with q WRITEs somewhere it has (or may
        later get, from retransmitted votes) a write proof, which re-certification
        must honour; Raft's up-to-date rule then carries it, so the fallback commits
        it rather than a block BFT would later overrule."""
        bft = self.bft
        candidates: list[tuple[int, bool, Block]] = []
        proof = bft.best_proof
        if proof is not None and proof.height == bft.height:
            candidates.append((proof.regency, True, proof.block))
        for (kind, regency, height), digest in bft.votes.items():
            block = bft.proposals.get(regency)
            if kind == "write" and height == bft.height and block and block.digest == digest:
                candidates.append((regency, False, block))
        if not candidates:
            return None, False
        regency, proven, block = max(candidates, key=lambda c: (c[0], c[1], c[2].digest))
        return LogEntry(term=regency, block=block, tentative=True), proven

    def _maybe_fall_back(self) -> None:
        if not self.cfg.enabled or not self.bft.pending:
            return
        stalled = self.bft.ticks - self.last_progress >= self.cfg.fallback_after_ticks
        # A STOP sent since the last progress: the regency then in charge failed.
        if stalled and self.bft.stop_sent > self.stops_at_progress:
            self._transition(Event.STALLED)

    def _on_final(self, block: Block) -> None:
        """A block became FINAL: its provisional twin, if any, was re-certified or lost."""
        height = block.header.height
        provisional = self.provisional.pop(height, None)
        if provisional is None:
            return
        if provisional.digest == block.digest:
            self.metrics.recertified_blocks += 1
            self._trace(f"re-certified h{height} {block.digest.hex()[:12]}")
        else:
            self.metrics.rolled_back_blocks += 1
            self._trace(f"rolled back provisional h{height} {provisional.digest.hex()[:12]}")

    # ================================================================ reachability

    def _on_fallback_message(
        self, message: RequestVote | Vote | AppendEntries | AppendAck | Presence
    ) -> None:
        sender = message.sender
        if not 0 <= sender < self.n or sender == self.id:
            return
        if not self.bft.verifier.verify(sender, canonical(message), message.signature):
            if self.mode is Mode.FALLBACK:
                self._raft(self.raft.step(message))  # checks again, records the evidence
            return
        self._heard_from(sender)
        self.fallback_heard_at = self.bft.ticks
        if isinstance(message, Presence):
            self.peer_heard[sender] = frozenset(p for p in message.heard if 0 <= p < self.n)
            return
        if self.mode is Mode.FALLBACK:
            if isinstance(message, AppendEntries | RequestVote):
                final = message.prev_height if isinstance(message, AppendEntries) else 0
                if isinstance(message, RequestVote):
                    final = message.final_height
                if final > self.bft.decided_height:
                    self._bft(lambda: self.bft.fetch_from(sender))  # catch up on FINAL blocks
            self._raft(self.raft.step(message, authenticated=True))

    def _heard_from(self, sender: int) -> None:
        """Reachability: any message counts (BFT ones are authenticated by the BFT core
        later; a forged sender can only make a heal attempt come early)."""
        if 0 <= sender < self.n and sender != self.id:
            self.heard[sender] = self.bft.ticks

    def _recent(self) -> set[int]:
        window = self.cfg.reach_window_ticks
        return {p for p, t in self.heard.items() if self.bft.ticks - t <= window}

    def _gossip_presence(self) -> None:
        if self.bft.ticks - self.last_presence < self.cfg.presence_ticks:
            return
        self.last_presence = self.bft.ticks
        presence = Presence(
            sender=self.id, term=self.raft.term, heard=tuple(sorted(self._recent()))
        )
        signed = dataclasses.replace(presence, signature=self.bft.signer.sign(canonical(presence)))
        self._parts.append(Effects(send=(Send(to=None, message=signed),)))

    def reachable_quorum(self) -> bool:
        """Do q replicas (this one included) hear each other, as far as gossip tells?"""
        recent = self._recent()
        group = {self.id} | recent
        mutual = {
            p
            for p in recent
            if len((self.peer_heard.get(p, frozenset()) | {p}) & group) >= self.q
            and self.id in self.peer_heard.get(p, frozenset())
        }
        return len(mutual) + 1 >= self.q

    def _maybe_heal(self) -> None:
        if self.cfg.unsafe_never_heal:
            return
        reachable = self.reachable_quorum()
        # While q replicas hear each other BFT is about to take over: the fallback log
        # stops growing, so the STOP-DATAs of the re-certifying regency stay fresh.
        self.raft.frozen = reachable
        if not reachable or self.bft.ticks - self.last_heal < self.cfg.heal_retry_ticks:
            return
        self.last_heal = self.bft.ticks
        self.metrics.heal_attempts += 1
        self._trace(f"q replicas reachable: regency change to re-certify (epoch {self.epoch})")
        self._bft(self.bft.request_regency_change)

    def _sync_allowed(self) -> bool:
        """A leader in fallback sends its SYNC only once q replicas hear each other."""
        return self.mode is Mode.BFT or self.reachable_quorum()

    def _fallback_conflict(self, sync: Sync) -> str | None:
        """Why this replica must not follow ``sync``.

        * In fallback, until q replicas hear each other: a SYNC from a hub that
          reaches everyone (a star partition) would pull replicas back into a BFT
          that still cannot decide; the fallback goes on instead.
        * Its fallback log above the SYNC's parent is more up to date (Raft's order)
          than the suffix the SYNC re-certifies, so it may hold provisional commits
          the leader's STOP-DATAs did not show."""
        if self.mode is Mode.FALLBACK and not self.reachable_quorum():
            return "q replicas do not hear each other yet; the fallback goes on"
        # What this replica can prove (``report``): its log up to the last entry of an
        # elected term.  Trailing tentative entries are BFT votes, governed by BFT's own
        # rules, and nothing commits in a fallback without an elected term's entry.
        report = self.raft.report()
        if report is None:
            return None
        mine = [e for e in report.entries if e.block.header.height > sync.height - 1]
        if not mine:
            return None
        chain = [sync.block]
        if sync.suffix is not None:
            chain += [e.block for e in sync.suffix.entries if e.block.header.height > sync.height]
        if len(mine) <= len(chain) and all(
            e.block.digest == b.digest for e, b in zip(mine, chain, strict=False)
        ):
            return None  # our log is a prefix of what the SYNC re-certifies
        _, proof = self.bft._sync_choice(sync.stop_data)
        if proof is not None and proof.block.digest != mine[0].block.digest:
            # A write proof at the open height outranks any fallback log (S1 first).
            return None
        ours = (report.term, mine[-1].block.header.height)
        theirs = (0, sync.height - 1)
        if sync.suffix is not None and sync.suffix.entries:
            theirs = (sync.suffix.term, sync.suffix.entries[-1].block.header.height)
        if ours <= theirs:
            return None
        return f"own fallback log (term {ours[0]}, h{ours[1]}) beyond the SYNC's {theirs}"

    # ================================================================ observers

    @property
    def evidence_count(self) -> int:
        return self.bft.evidence_count + self.raft.evidence_count


def assemble(
    config: ReplicaConfig,
    raft_config: RaftConfig,
    mode_config: ModeConfig,
    signer: Signer,
    verifier: Verifier,
    client_verifier: Verifier,
    state_machine: StateMachine,
    genesis: Genesis,
    rng: RandomSource,
    records: Sequence[PersistRecord] = (),
    ticks: int = 0,
) -> ModeController:
    """One replica's cores wired together, the same way for the simulator and the node:
    the BFT core and the fallback core share the state machine, and the fallback core's
    anchor is the BFT core's FINAL state."""
    owner = StateOwner()
    bft = BftReplica(
        config, signer, verifier, client_verifier, state_machine, genesis, records,
        ticks=ticks, owner=owner,
    )  # fmt: skip
    anchor = Anchor(lambda: bft.last_header, bft.restore_final_state, owner)
    raft = RaftCore(
        raft_config, signer, verifier, client_verifier, state_machine, anchor, rng, records,
        ticks=ticks,
    )  # fmt: skip
    return ModeController(bft, raft, mode_config, records)
