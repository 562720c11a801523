"""The fallback core: Raft over blocks above the BFT-final height (DESIGN 3.3).

Guarantees:

* Sans-IO like the BFT core: ``step(message)`` and ``tick()`` return
  ``Effects``; election timeouts come from an injected ``random.Random``.
* Raft's persistent state (term, vote, log) is in ``persist`` before any vote,
  acknowledgement or append leaves: a restarted replica never votes twice in a
  term and never forgets an entry it acknowledged.
* The log holds blocks at heights above the replica's BFT-final height only, so
  no honest replica ever truncates below it.  A vote goes only to a candidate
  whose BFT-final height is at least the voter's and whose log is at least as
  up to date (Raft's rule); terms start above every BFT regency seen.
* Every appended block is checked as a BFT block is: parent hash, client
  signatures, and re-execution giving exactly the header.  A leader that sends
  two different blocks at one height in one term is recorded as evidence.
* Blocks committed by a majority are PROVISIONAL; they are reported in
  ``Effects.committed`` with PROVISIONAL replies.  Making them FINAL is the
  BFT core's job (re-certification), driven by the mode controller.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, assert_never

from consensus.bft.replica import StateOwner
from consensus.blocks import body_problem, mismatch, seal
from consensus.certificate import election_valid
from consensus.crypto import Signer, Verifier
from consensus.effects import Effects, EffectsBuilder, EntryRecord, PersistRecord, Send, TermRecord
from consensus.encoding import canonical
from consensus.messages import (
    FALLBACK_ENTRIES_MAX,
    AppendAck,
    AppendEntries,
    Block,
    BlockHeader,
    ElectionProof,
    FallbackMessage,
    FallbackReport,
    Finality,
    LogEntry,
    Presence,
    Reply,
    Request,
    RequestVote,
    Vote,
)
from consensus.state_machine import Execution, StateMachine

_M = TypeVar("_M", RequestVote, Vote, AppendEntries, AppendAck, Presence)
EVIDENCE_KEPT_MAX = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftConfig:
    replica_id: int
    replicas: int
    genesis_ns: int
    tick_ns: int = 10_000_000
    election_ticks_min: int = 30
    election_ticks_max: int = 60
    heartbeat_ticks: int = 6
    # A leader appends at most one block per interval (unless the block is full): fewer,
    # larger provisional blocks, each of which costs one BFT instance to re-certify.
    append_interval_ticks: int = 10
    block_requests_max: int = 64
    block_events_max: int = 8189
    entries_per_append_max: int = 16
    suffix_blocks_max: int = 128  # provisional blocks above the BFT-final height, at most
    timestamp_skew_max_ns: int = 2_000_000_000
    # Deliberately unsafe variant, only for tests that prove the checkers can fail:
    # grant votes without the BFT-final height and log up-to-date checks.
    unsafe_vote_any: bool = False

    def __post_init__(self) -> None:
        assert 0 <= self.replica_id < self.replicas
        assert 1 <= self.election_ticks_min <= self.election_ticks_max
        assert self.heartbeat_ticks < self.election_ticks_min
        assert 1 <= self.suffix_blocks_max <= FALLBACK_ENTRIES_MAX


class RandomSource(Protocol):
    """The injected PRNG (a ``random.Random`` in the simulator and the node)."""

    def randint(self, a: int, b: int) -> int: ...


class Anchor:
    """What the fallback core needs from the BFT core: the BFT-final point, and a way
    to put the shared state machine back there."""

    def __init__(
        self,
        final_header: Callable[[], BlockHeader],
        restore_final: Callable[[], None],
        owner: StateOwner,
    ) -> None:
        self.final_header = final_header
        self.restore_final = restore_final
        self.owner = owner


class RaftCore:
    """One replica's fallback protocol state.  Inactive until ``activate``."""

    def __init__(
        self,
        config: RaftConfig,
        signer: Signer,
        verifier: Verifier,
        client_verifier: Verifier,
        state_machine: StateMachine,
        anchor: Anchor,
        rng: RandomSource,
        records: Sequence[PersistRecord] = (),
        ticks: int = 0,
    ) -> None:
        self.cfg = config
        self.id = config.replica_id
        self.n = config.replicas
        self.majority = self.n // 2 + 1
        self.signer = signer
        self.verifier = verifier
        self.client_verifier = client_verifier
        self.sm = state_machine
        self.anchor = anchor
        self.rng = rng
        self.ticks = ticks
        self.active = False
        self.frozen = False  # BFT is about to take over: append nothing new
        self.proven: dict[int, bytes] = {}  # height -> block with a BFT write proof here
        self.term = 0
        self.voted_for: int | None = None
        self.log: list[LogEntry] = []  # log[i] sits at height base + 1 + i
        self.base = 0  # the BFT-final height the log starts above
        self.applied = 0  # entries of ``log`` the state machine holds (when it is ours)
        self.holds_state = False
        self.commit_height = 0
        self.role = "follower"
        self.leader: int | None = None
        self.election: ElectionProof | None = None  # for the current term, once known
        self.last_election: ElectionProof | None = None  # for the term of the last entry
        self.votes: dict[int, Vote] = {}
        self.next_height: dict[int, int] = {}
        self.match_height: dict[int, int] = {}
        self.election_deadline = 0
        self.last_heartbeat = 0
        self.leader_contact = 0  # tick of the last append from the current leader
        self.last_append = -config.append_interval_ticks  # as leader
        self.evidence: deque[str] = deque(maxlen=EVIDENCE_KEPT_MAX)
        self.evidence_count = 0
        self.waiting: Callable[[], Iterable[Request]] = lambda: ()
        self.results: dict[bytes, tuple[tuple[int, int, bytes], ...]] = {}  # by block digest
        self._out = EffectsBuilder()
        self._recover(records)

    # ================================================================ driver API

    def activate(self, term_floor: int, tentative: LogEntry | None, proven: bool) -> Effects:
        """Enter fallback: terms above ``term_floor`` (every regency seen); the block this
        replica voted for at the open BFT height joins the log as a tentative entry.

        A block with a BFT write proof (``proven``) outranks anything at that height
        in re-certification, so it replaces an uncommitted entry there, is never
        truncated, and votes go only to candidates whose log holds it."""
        self._out = EffectsBuilder()
        self.active = True
        self._rebase()
        self.proven = {}
        if term_floor > self.term:
            self.term = term_floor
            self.voted_for = None
            self._out.persist.append(TermRecord(term=self.term, voted_for=None))
        if tentative is not None:
            height = tentative.block.header.height
            held = self.entry_at(height)
            replaces = held is not None and held.block.digest != tentative.block.digest
            if proven and replaces and height > self.commit_height:
                self._truncate(height)
                held = None
            if held is None and height == self.last_height + 1:
                self._take_state()
                if self._check_block(tentative.block) is None:
                    self._append(tentative)
            if proven and self.entry_at(height) == tentative:
                self.proven[height] = tentative.block.digest
        self.role = "follower"
        # Nobody leads a fallback that just began: the first timeout need not outwait a
        # heartbeat gap, only spread the candidates apart (PreVote absorbs near-ties).
        self.election_deadline = self.ticks + self.rng.randint(1, self.cfg.election_ticks_min)
        self._trace(f"fallback on: term {self.term}, final h{self.base}, log {len(self.log)}")
        return self._out.build()

    def deactivate(self) -> None:
        """Leave fallback (BFT took over).  The log stays, for the re-certification report."""
        self.active = False
        self.role = "follower"
        self.leader = None
        self.holds_state = False

    def step(self, message: FallbackMessage, authenticated: bool = False) -> Effects:
        """``authenticated``: the driver (the mode controller) checked the signature."""
        self._out = EffectsBuilder()
        if (authenticated or self._authentic(message)) and self.active:
            self._dispatch(message)
            self._maybe_propose()
        return self._out.build()

    def tick(self) -> Effects:
        self._out = EffectsBuilder()
        self.ticks += 1
        if self.active:
            if self.role == "leader":
                if self.ticks - self.last_heartbeat >= self.cfg.heartbeat_ticks:
                    self._replicate_all()
                self._maybe_propose()
            elif self.ticks >= self.election_deadline:
                self._pre_campaign()
        return self._out.build()

    def poke(self) -> Effects:
        """A request arrived: a leader may have a block to append."""
        self._out = EffectsBuilder()
        self._maybe_propose()
        return self._out.build()

    def report(self) -> FallbackReport | None:
        """The provisional suffix up to its last entry of an elected leader's term (later
        tentative entries are BFT votes, which STOP-DATA reports its own way), with the
        election proof of that term."""
        self._rebase()
        entries = list(self.log)
        while entries and entries[-1].tentative:
            entries.pop()
        election = self.last_election
        if not entries or election is None or election.term != entries[-1].term:
            return None
        return FallbackReport(term=election.term, election=election, entries=tuple(entries))

    def entries_above(self, height: int) -> list[LogEntry]:
        """The log's entries above ``height`` (at or below the BFT-final height: none)."""
        self._rebase()
        return [e for e in self.log if e.block.header.height > height]

    def entry_at(self, height: int) -> LogEntry | None:
        index = height - self.base - 1
        return self.log[index] if 0 <= index < len(self.log) else None

    @property
    def last_height(self) -> int:
        return self.base + len(self.log)

    @property
    def last_term(self) -> int:
        return self.log[-1].term if self.log else 0

    # ================================================================ plumbing

    def _sign(self, message: _M) -> _M:
        return dataclasses.replace(message, signature=self.signer.sign(canonical(message)))

    def _send(self, to: int | None, message: FallbackMessage) -> None:
        self._out.send.append(Send(to=to, message=message))

    def _trace(self, text: str) -> None:
        self._out.trace.append(f"r{self.id} raft {text}")

    def _blame(self, sender: int, why: str) -> None:
        self.evidence_count += 1
        self.evidence.append(f"from {sender}: {why}")
        self._trace(f"evidence from {sender}: {why}")

    def _authentic(self, message: FallbackMessage) -> bool:
        sender = message.sender
        if not 0 <= sender < self.n or sender == self.id:
            self._blame(sender, f"{type(message).__name__} from an impossible sender")
            return False
        if not self.verifier.verify(sender, canonical(message), message.signature):
            self._blame(sender, f"{type(message).__name__} with a bad signature")
            return False
        return True

    def _set_term(self, term: int, voted_for: int | None) -> None:
        if (term, voted_for) != (self.term, self.voted_for):
            self.term = term
            self.voted_for = voted_for
            self._out.persist.append(TermRecord(term=term, voted_for=voted_for))

    def _reset_election_timer(self) -> None:
        low, high = self.cfg.election_ticks_min, self.cfg.election_ticks_max
        self.election_deadline = self.ticks + self.rng.randint(low, high)

    # ================================================================ recovery

    def _recover(self, records: Sequence[PersistRecord]) -> None:
        """Term, vote and the log above the BFT-final height, from the records.

        Records of earlier episodes (at heights BFT has decided since) stay on disk;
        only the run starting just above the final height, chained to it, is the log."""
        entries: dict[int, tuple[LogEntry, ElectionProof | None]] = {}
        for record in records:
            match record:
                case TermRecord(term=term, voted_for=voted_for):
                    self.term, self.voted_for = term, voted_for
                case EntryRecord(height=height, entry=entry, election=election):
                    for stale in [h for h in entries if h >= height]:
                        del entries[stale]
                    entries[height] = (entry, election)
                case _:
                    pass  # the BFT core's and the controller's records
        final = self.anchor.final_header()
        self.base = final.height
        parent = final.digest
        height = final.height + 1
        while height in entries:
            entry, election = entries[height]
            if entry.block.header.parent_hash != parent:
                break
            self.log.append(entry)
            if not entry.tentative:
                self.last_election = election
            parent = entry.block.digest
            height += 1
        self.commit_height = self.base

    # ================================================================ the state machine

    def _rebase(self) -> None:
        """Drop entries at or below the BFT-final height (BFT decided them, maybe otherwise)."""
        final = self.anchor.final_header()
        if final.height <= self.base:
            return
        drop = min(final.height - self.base, len(self.log))
        kept_parent = self.log[drop - 1].block.digest if drop else None
        self.log = self.log[drop:]
        if kept_parent is not None and kept_parent != final.digest:
            self.log = []  # the final chain left this suffix: none of it can follow
        elif self.log and self.log[0].block.header.parent_hash != final.digest:
            self.log = []
        self.base = final.height
        self.commit_height = max(self.commit_height, self.base)
        self.proven = {h: d for h, d in self.proven.items() if h > self.base}
        kept = {e.block.digest for e in self.log}
        self.results = {d: r for d, r in self.results.items() if d in kept}
        self.holds_state = False  # the BFT core moved the state machine

    def _take_state(self) -> bool:
        """Make the state machine hold final state plus ``log[:applied]``; False if the
        log cannot be re-applied (it never happens to blocks this core checked)."""
        self._rebase()
        if not self.holds_state or self.anchor.owner.holder != "raft":
            self.anchor.restore_final()
            self.anchor.owner.holder = "raft"
            self.applied = 0
            self.holds_state = True
        while self.applied < len(self.log):
            block = self.log[self.applied].block
            self._execute(block)
            self.applied += 1
        return True

    def _execute(self, block: Block) -> Execution:
        header = block.header
        execution = self.sm.execute(
            block.requests, header.timestamp, fallback_term=header.fallback_term
        )
        assert execution.state_hash == header.state_hash, "provisional block diverged"
        self.results[block.digest] = execution.results
        return execution

    def _tip(self) -> BlockHeader:
        return self.log[-1].block.header if self.log else self.anchor.final_header()

    def _check_block(self, block: Block) -> str | None:
        """Why ``block`` cannot follow the log's tip, or None after executing it.

        Leaves the state machine at the tip plus ``block`` on success; on failure the
        state is marked foreign so the next use re-applies the log."""
        header = block.header
        tip = self._tip()
        if header.height != tip.height + 1 or header.parent_hash != tip.digest:
            return "does not extend the log"
        if block.events > self.cfg.block_events_max:
            return "too many events"
        if (problem := body_problem(block, self._request_valid)) is not None:
            return problem
        if header.timestamp <= self.sm.last_timestamp():
            return "timestamp does not advance"
        if header.timestamp > self._now_ns() + self.cfg.timestamp_skew_max_ns:
            return "timestamp too far ahead of this replica's clock"
        expected, execution = seal(
            self.sm,
            block.requests,
            parent=tip,
            first=header.timestamp,
            fallback_term=header.fallback_term,
        )
        if expected != header:
            self.holds_state = False
            return mismatch(expected, header)
        self.results[block.digest] = execution.results
        return None

    def _request_valid(self, request: Request) -> bool:
        return (
            self.client_verifier.verify(request.client_id, canonical(request), request.signature)
            and self.sm.check_request(request) is None
        )

    def _now_ns(self) -> int:
        return self.cfg.genesis_ns + self.ticks * self.cfg.tick_ns

    def _append(self, entry: LogEntry) -> None:
        """Append an entry already executed on top of the tip; persist it."""
        self.log.append(entry)
        self.applied = len(self.log)
        self._out.persist.append(
            EntryRecord(height=self.last_height, entry=entry, election=self.last_election)
        )

    def _truncate(self, height: int) -> None:
        """Drop entries from ``height`` on (never at or below the BFT-final height)."""
        assert height > self.base, "truncating below the BFT-final height"
        keep = height - self.base - 1
        if keep < self.applied:
            self.holds_state = False
        self.log = self.log[:keep]
        self.applied = min(self.applied, keep)
        self._trace(f"truncate from h{height}")

    # ================================================================ elections

    def _vote_request(self, term: int, pre: bool) -> RequestVote:
        return self._sign(
            RequestVote(
                sender=self.id,
                term=term,
                final_height=self.base,
                last_height=self.last_height,
                last_term=self.last_term,
                chain=tuple(e.block.digest for e in self.log),
                pre=pre,
            )
        )

    def _pre_campaign(self) -> None:
        """PreVote (etcd-io/raft, Raft thesis 9.6): ask first whether a majority would
        vote, without raising the term.  A replica that reaches only some peers (the
        partial partitions fallback exists for) then cannot keep deposing a leader
        that everyone reaches, nor keep resetting its timer with requests."""
        self._rebase()
        self.role = "precandidate"
        self.leader = None
        self.votes = {self.id: Vote(sender=self.id, term=self.term + 1, candidate=self.id,
                                    granted=True, pre=True)}  # fmt: skip
        self._reset_election_timer()
        self._send(None, self._vote_request(self.term + 1, pre=True))
        if len(self.votes) >= self.majority:
            self._campaign()

    def _campaign(self) -> None:
        self._rebase()
        self._set_term(self.term + 1, self.id)
        self.role = "candidate"
        self.leader = None
        self.votes = {}
        self._reset_election_timer()
        request = self._vote_request(self.term, pre=False)
        own = self._sign(Vote(sender=self.id, term=self.term, candidate=self.id, granted=True))
        self.votes[self.id] = own
        self._trace(f"campaign term {self.term} at h{self.last_height}")
        self._send(None, request)
        self._maybe_win()

    def _dispatch(self, message: FallbackMessage) -> None:
        pre = isinstance(message, RequestVote | Vote) and message.pre
        if message.term > self.term and not isinstance(message, Presence) and not pre:
            self._set_term(message.term, None)
            self.role = "follower"
            self.leader = None
        match message:
            case RequestVote():
                self._on_request_vote(message)
            case Vote():
                self._on_vote(message)
            case AppendEntries():
                self._on_append(message)
            case AppendAck():
                self._on_ack(message)
            case Presence():
                pass  # the mode controller's business
            case _:
                assert_never(message)

    def _on_request_vote(self, request: RequestVote) -> None:
        self._rebase()
        up_to_date = (request.last_term, request.last_height) >= (self.last_term, self.last_height)
        final_ok = request.final_height >= self.base
        proof_ok = all(
            height <= request.final_height
            or (
                0 <= height - request.final_height - 1 < len(request.chain)
                and request.chain[height - request.final_height - 1] == digest
            )
            for height, digest in self.proven.items()
        )
        if self.cfg.unsafe_vote_any:
            up_to_date = final_ok = proof_ok = True
        if request.pre:
            # Would vote: a later term, its log fits, and no live leader is heard from.
            leader_alive = (
                self.leader is not None
                and self.ticks - self.leader_contact < self.cfg.election_ticks_min
            )
            granted = request.term > self.term and final_ok and up_to_date and proof_ok
            granted = granted and not leader_alive
            answer = Vote(sender=self.id, term=request.term, candidate=request.sender,
                          granted=granted, pre=True)  # fmt: skip
            self._send(request.sender, self._sign(answer))
            return
        granted = (
            request.term == self.term
            and self.voted_for in (None, request.sender)
            and final_ok
            and up_to_date
            and proof_ok
        )
        if granted:
            self._set_term(self.term, request.sender)  # durable before the vote leaves
            self._reset_election_timer()
        vote = self._sign(
            Vote(sender=self.id, term=self.term, candidate=request.sender, granted=granted)
        )
        self._send(request.sender, vote)

    def _on_vote(self, vote: Vote) -> None:
        if vote.pre:
            wanted = (self.role, self.term + 1, self.id, True)
            if (vote.term, vote.candidate, vote.granted) == wanted[1:] and wanted[0] == (
                "precandidate"
            ):
                self.votes[vote.sender] = vote
                if len(self.votes) >= self.majority:
                    self._campaign()
            return
        if self.role != "candidate" or vote.term != self.term or vote.candidate != self.id:
            return
        if vote.granted:
            self.votes[vote.sender] = vote
            self._maybe_win()

    def _maybe_win(self) -> None:
        if len(self.votes) < self.majority:
            return
        self.role = "leader"
        self.leader = self.id
        self.election = ElectionProof(
            term=self.term,
            candidate=self.id,
            votes=tuple(self.votes[v] for v in sorted(self.votes))[: self.majority],
        )
        self.next_height = {p: self.last_height + 1 for p in range(self.n) if p != self.id}
        self.match_height = {p: 0 for p in range(self.n) if p != self.id}
        self._trace(f"leader of term {self.term} at h{self.last_height}")
        self._take_state()
        self._maybe_propose(force=True)  # an entry of this term commits the ones before it
        self._replicate_all()

    def _election_valid(self, election: ElectionProof, term: int, leader: int) -> bool:
        return election.candidate == leader and election_valid(
            election, term, self.verifier, self.n
        )

    # ================================================================ replication

    def _maybe_propose(self, force: bool = False) -> bool:
        """Append a block of waiting requests when leading; True if one was sent."""
        if not self.active or self.role != "leader" or self.frozen:
            return False
        if len(self.log) >= self.cfg.suffix_blocks_max:
            return False  # bounded: the suffix waits for BFT to re-certify it
        in_log = {r.key for e in self.log for r in e.block.requests}
        requests: list[Request] = []
        events = 0
        for request in self.waiting():
            if request.key in in_log or len(requests) == self.cfg.block_requests_max:
                continue
            if events + request.events > self.cfg.block_events_max:
                continue
            requests.append(request)
            events += request.events
        needs_own_entry = self.last_term != self.term and self.log
        if not requests and not (force and needs_own_entry):
            return False
        if self.last_height > self.commit_height and not force:
            return False  # one uncommitted block at a time: simple, the suffix stays short
        full = len(requests) == self.cfg.block_requests_max
        if not (force or full) and self.ticks - self.last_append < self.cfg.append_interval_ticks:
            return False  # gather a bigger block: each one costs a BFT instance to re-certify
        self._take_state()
        tip = self._tip()
        first = max(self.sm.last_timestamp() + 1, self._now_ns())
        header, execution = seal(
            self.sm, requests, parent=tip, first=first, fallback_term=self.term
        )
        block = Block(header=header, requests=tuple(requests), verdicts=execution.verdicts)
        self.results[block.digest] = execution.results
        self.last_append = self.ticks
        self.last_election = self.election
        self._append(LogEntry(term=self.term, block=block))
        self._trace(f"append h{header.height} term {self.term} {len(requests)} requests")
        self._replicate_all()
        return True

    def _replicate_all(self) -> None:
        self.last_heartbeat = self.ticks
        for peer in sorted(self.next_height):
            self._replicate(peer)

    def _replicate(self, peer: int) -> None:
        assert self.election is not None
        next_height = max(self.next_height[peer], self.base + 1)
        prev = next_height - 1
        start = next_height - self.base - 1
        entries = tuple(self.log[start : start + self.cfg.entries_per_append_max])
        append = self._sign(
            AppendEntries(
                sender=self.id,
                term=self.term,
                prev_height=prev,
                prev_digest=self._digest_at(prev),
                entries=entries,
                commit_height=self.commit_height,
                election=self.election,
            )
        )
        self._send(peer, append)

    def _on_append(self, append: AppendEntries) -> None:
        if append.term < self.term:
            self._ack(append.sender, False, self.last_height)
            return
        if not self._election_valid(append.election, append.term, append.sender):
            self._blame(append.sender, f"append for term {append.term} without an election")
            return
        self.role = "follower"
        self.leader = append.sender
        self.leader_contact = self.ticks
        self._reset_election_timer()
        self._rebase()
        prev = append.prev_height
        if prev < self.base or prev > self.last_height:
            self._ack(append.sender, False, max(self.base, min(prev, self.last_height)))
            return
        if self._digest_at(prev) != append.prev_digest:
            self._ack(append.sender, False, max(self.base, prev - 1))
            return
        height = prev
        for entry in append.entries:
            height += 1
            if entry.term > append.term or (
                not entry.tentative and entry.term != entry.block.header.fallback_term
            ):
                self._blame(append.sender, f"entry at h{height} with an impossible term")
                return
            held = self.entry_at(height)
            if held is not None:
                if held.block.digest == entry.block.digest:
                    continue
                if held.term == entry.term and not (held.tentative or entry.tentative):
                    self._blame(append.sender, f"two blocks at h{height} in term {entry.term}")
                    return
                if height <= self.commit_height:
                    self._blame(append.sender, f"append replaces committed h{height}")
                    return
                if self.proven.get(height) == held.block.digest:
                    # A write-proven block outranks this one at re-certification: keep it.
                    self._ack(append.sender, False, height - 1)
                    return
                self._truncate(height)
            self._take_state()
            if (problem := self._check_block(entry.block)) is not None:
                self._blame(append.sender, f"invalid fallback block h{height}: {problem}")
                self._ack(append.sender, False, height - 1)
                return
            if entry.term == append.term:
                self.last_election = append.election
            self._append(entry)
        self._advance_commit(min(append.commit_height, height))
        self._ack(append.sender, True, height)

    def _digest_at(self, height: int) -> bytes:
        if height == self.base:
            return self.anchor.final_header().digest
        entry = self.entry_at(height)
        assert entry is not None
        return entry.block.digest

    def _ack(self, leader: int, success: bool, match: int) -> None:
        self._send(
            leader,
            self._sign(
                AppendAck(sender=self.id, term=self.term, success=success, match_height=match)
            ),
        )

    def _on_ack(self, ack: AppendAck) -> None:
        if self.role != "leader" or ack.term != self.term or ack.sender not in self.next_height:
            return
        if ack.success and ack.match_height > self.last_height:
            self._blame(ack.sender, f"acknowledged h{ack.match_height} beyond the log")
            return
        if ack.success:
            self.match_height[ack.sender] = max(self.match_height[ack.sender], ack.match_height)
            self.next_height[ack.sender] = self.match_height[ack.sender] + 1
            self._leader_commit()
            if self.next_height[ack.sender] <= self.last_height:
                self._replicate(ack.sender)
        else:
            before = self.next_height[ack.sender]
            self.next_height[ack.sender] = max(self.base + 1, min(before - 1, ack.match_height + 1))
            if self.next_height[ack.sender] != before:
                self._replicate(ack.sender)  # else: wait for the heartbeat, no storms

    def _leader_commit(self) -> None:
        for height in range(self.last_height, self.commit_height, -1):
            entry = self.entry_at(height)
            assert entry is not None
            if entry.term != self.term:
                break  # Raft: only an entry of the leader's own term commits by counting
            holders = 1 + sum(1 for m in self.match_height.values() if m >= height)
            if holders >= self.majority:
                self._advance_commit(height)
                if not self._maybe_propose():
                    self._replicate_all()  # followers learn the commit now, not at a heartbeat
                break

    def _advance_commit(self, height: int) -> None:
        height = min(height, self.last_height)
        if height <= self.commit_height:
            return
        self._take_state()
        newly = []
        for h in range(max(self.commit_height, self.base) + 1, height + 1):
            entry = self.entry_at(h)
            assert entry is not None
            newly.append(entry.block)
        self.commit_height = height
        for block in newly:
            self._out.committed.append(block)
            self._trace(f"provisional h{block.header.height} {block.digest.hex()[:12]}")
            results = self.results.get(block.digest, ())
            for request in block.requests:
                self._out.replies.append(
                    Reply(
                        replica_id=self.id,
                        client_id=request.client_id,
                        request_number=request.request_number,
                        header=block.header,
                        certificate=None,
                        results=results,
                        level=Finality.PROVISIONAL,
                    )
                )
