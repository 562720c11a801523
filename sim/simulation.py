"""The deterministic simulation: replicas, clients, faults and checkers in one process.

Guarantees: one ``random.Random(seed)`` drives everything (network, faults,
workload, Byzantine choices) and keys derive from the seed, so the same seed
gives the same run and the same trace hash.  The replicas are the real
``BftReplica`` cores over real ledgers; only the network, the disk and the
clock are simulated.  Checkers run after every event; the first violation
stops the run and names the command that replays it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from consensus import certificate as certificates
from consensus.bft.replica import BftReplica, Genesis, ReplicaConfig, genesis_header
from consensus.crypto import Ed25519Signer, Ed25519Verifier
from consensus.effects import Effects, PersistRecord
from consensus.encoding import canonical
from consensus.messages import (
    OP_SET_LIMITS,
    OP_TRANSFERS,
    Block,
    DecidedBlock,
    Finality,
    Message,
    Persisted,
    Reply,
    Request,
    digest_of,
)
from consensus.mode import Mode, ModeConfig, ModeController, assemble
from consensus.quorum import faults_tolerated, leader_of
from consensus.raft.core import RaftConfig
from finality import ExposureLimit, FinalityResult
from finality.executor import LedgerExecutor
from finality.gate import LIMIT_ACCOUNT, AgentGate, decode_limits, encode_limits
from ledger import Account, AccountFlags, Ledger, TransferFlags, decode_transfers
from ledger.codec import _RECORD
from sim.byzantine import ByzantineReplica
from sim.network import Network
from sim.scenarios import SCENARIOS, Scenario

_MASK64 = (1 << 64) - 1
_POST_OR_VOID = TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER
GENESIS_NS = 1_800_000_000 * 10**9  # a fixed wall-clock epoch for the simulated ledger
OK_CODES = (0, 46)  # ok, exists: the transfer is in the ledger
OPERATORS = frozenset({0})  # client 0 may change the amount limits


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    seed: int
    scenario: str = "happy"
    replicas: int | None = None  # None: as the scenario says (4 unless it needs more)
    byzantine: int | None = None  # None: as many as the scenario names (at most f)
    checkpoint_interval: int = 8
    snapshot_chunk_bytes: int | None = None  # None: the replica's default (4 MiB)
    accounts: int = 16
    request_rate: float = 0.5  # chance per tick that an idle client submits
    clients: int | None = None  # None: as the scenario says
    transfers_per_request: int | None = None  # None: as the scenario says (a mean)
    record_trace: bool = False
    fallback: bool = True  # False: BFT only, the baseline of ``aegis sim compare``
    # Deliberately unsafe protocol variants, for tests that prove the checkers work.
    unsafe_quorum: int | None = None
    unsafe_skip_sync_reproposal: bool = False
    unsafe_vote_any: bool = False  # fallback votes ignore BFT-final height and log age
    unsafe_final_on_majority: bool = False  # a fallback majority commit counts as FINAL
    unsafe_never_heal: bool = False  # fallback never hands back to BFT
    unsafe_no_exposure_limit: bool = False  # provisional transfers are not capped
    unsafe_no_agents: bool = False  # the agent gate runs no agents: limits are ignored
    check_certificates: bool = True  # off only to show the agreement checker on its own

    def replay_command(self) -> str:
        extra = ""
        if self.byzantine is not None:
            extra = f" --byzantine {self.byzantine}"
        if self.checkpoint_interval != 8:
            extra += f" --checkpoint-interval {self.checkpoint_interval}"
        if not self.fallback:
            extra += " --no-fallback"
        return (
            f"aegis sim run --seed {self.seed} --scenario {self.scenario} "
            f"--replicas {self.replicas or SCENARIOS[self.scenario].replicas}{extra}"
        )


# Fields added after trace hashes were published: left out of a run's identity while
# None, so a run that does not use them keeps the hash it had.
_LATER_FIELDS: Final = ("snapshot_chunk_bytes",)


def _identity(config: SimConfig) -> str:
    # Whether the trace is kept in memory must not change the run's identity.
    text = repr(dataclasses.replace(config, record_trace=False))
    for name in _LATER_FIELDS:
        text = text.replace(f", {name}=None", "")
    return text


@dataclass(slots=True)
class SimResult:
    config: SimConfig
    ticks: int = 0
    blocks_decided: int = 0
    transfers_committed: int = 0
    requests_submitted: int = 0
    requests_acknowledged: int = 0
    regency_changes: int = 0
    fallback_epochs: int = 0
    mode_changes: int = 0
    provisional_blocks: int = 0
    recertified_blocks: int = 0
    rolled_back_blocks: int = 0
    rolled_back_amount: int = 0  # the largest, per replica and fallback epoch
    commit_latencies: list[int] = field(default_factory=list)  # ticks, per committed transfer
    committed_by_heal: int = 0  # transfers committed (any level) before the network healed
    committed_partitioned: int = 0  # transfers first committed while a partition was on
    messages_sent: int = 0
    messages_dropped: int = 0
    evidence: int = 0
    failures: list[str] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    trace_hash: str = ""
    final_state: str = ""  # the state hash at the last decided height, hex
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class CheckFailure(Exception):
    """A safety or liveness checker found a violation."""


class SimClient:
    """A client with one outstanding request, retried with the same number."""

    def __init__(self, client_id: int, sim: Simulation) -> None:
        self.id = client_id
        self.sim = sim
        self.signer = sim.client_signers[client_id]
        self.next_number = 1
        self.next_transfer = 1
        self.outstanding: Request | None = None
        self.sent_tick = 0
        self.acked: dict[tuple[int, int], bytes] = {}
        self.levels: dict[tuple[int, int], Finality] = {}
        self.retry_ticks = 40
        # Odd clients of a scenario that says so wait only for PROVISIONAL answers.
        self.wants_provisional = sim.scenario.provisional_clients and client_id % 2 == 1
        self.provisional_answers: dict[bytes, set[int]] = {}
        self.limits_sent = 0  # of the scenario's set_limits commands for this client

    def act(self, now: int, submitting: bool) -> None:
        if self.outstanding is None:
            due = [c for t, client, c in self.sim.scenario.limits if client == self.id and t <= now]
            if len(due) > self.limits_sent:
                self.outstanding = self._limits_request(due[self.limits_sent])
                self.limits_sent += 1
                self.sim.submitted[self.outstanding.key] = self.outstanding
                self.sim.submitted_at[self.outstanding.key] = now
                self._broadcast(now)
            elif submitting and self.sim.rng.random() < self.sim.config.request_rate:
                self.outstanding = self._new_request()
                self.sim.submitted[self.outstanding.key] = self.outstanding
                self.sim.submitted_at[self.outstanding.key] = now
                self._broadcast(now)
        elif now - self.sent_tick >= self.retry_ticks:
            self._broadcast(now)

    def _broadcast(self, now: int) -> None:
        assert self.outstanding is not None
        self.sent_tick = now
        for replica in range(self.sim.n):
            self.sim.network.send(now, f"c{self.id}", f"r{replica}", self.outstanding)

    def _limits_request(self, changes: tuple[tuple[int, int, int], ...]) -> Request:
        request = Request(
            client_id=self.id,
            request_number=self.next_number,
            transfers=encode_limits(changes),
            operation=OP_SET_LIMITS,
        )
        self.next_number += 1
        return dataclasses.replace(request, signature=self.signer.sign(canonical(request)))

    def _new_request(self) -> Request:
        rng = self.sim.rng
        records = []
        mean = self.sim.config.transfers_per_request or self.sim.scenario.transfers_per_request
        count = min(rng.randint(1, mean * 2 - 1), 8189)
        accounts = self.sim.config.accounts
        for position in range(count):
            debit = rng.randrange(accounts) + 1
            credit = rng.randrange(accounts - 1) + 1
            credit += credit >= debit  # any account but the debit one
            linked = TransferFlags.LINKED if position < count - 1 and rng.random() < 0.1 else 0
            transfer_id = (self.id + 1) << 48 | self.next_transfer
            # Packed straight into the canonical layout rather than through Transfer
            # objects, so that building workloads does not dominate the run.
            records.append(
                _RECORD.pack(
                    transfer_id & _MASK64,
                    transfer_id >> 64,
                    debit,
                    0,
                    credit,
                    0,
                    rng.randint(1, 500),
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    1,
                    1,
                    int(linked),
                    0,
                )
            )
            self.next_transfer += 1
        request = Request(
            client_id=self.id, request_number=self.next_number, transfers=b"".join(records)
        )
        self.next_number += 1
        return Request(
            client_id=request.client_id,
            request_number=request.request_number,
            transfers=request.transfers,
            signature=self.signer.sign(canonical(request)),
        )

    def on_reply(self, reply: Reply) -> None:
        request = self.outstanding
        if request is None or (reply.client_id, reply.request_number) != request.key:
            return
        if digest_of(reply.results) != reply.header.results_hash:
            return
        if reply.level == Finality.PROVISIONAL:
            # No certificate: f + 1 matching answers include an honest replica's.
            if not self.wants_provisional:
                return
            voters = self.provisional_answers.setdefault(reply.header.digest, set())
            voters.add(reply.replica_id)
            if len(voters) < self.sim.f + 1:
                return
        else:
            # One FINAL reply suffices: the certificate proves the header was decided,
            # and the header commits to every result.
            certificate = reply.certificate
            if certificate is None or reply.header.digest != certificate.digest:
                return
            if not certificates.verify(certificate, self.sim.replica_verifier, self.sim.n):
                return
        for client, number, codes in reply.results:
            if (client, number) == request.key:
                self.acked[request.key] = codes
                self.levels[request.key] = reply.level
                self.outstanding = None
                self.provisional_answers = {}
                return


class Simulation:
    # Benchmarks swap in an instrumented executor; everything else uses the real one.
    executor_factory: Callable[[Ledger], LedgerExecutor] = LedgerExecutor

    def __init__(self, config: SimConfig) -> None:
        if config.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {config.scenario!r}; see 'aegis sim scenarios'")
        self.config = config
        self.scenario: Scenario = SCENARIOS[config.scenario]
        self.n = config.replicas or self.scenario.replicas
        self.f = faults_tolerated(self.n)
        self.rng = random.Random(config.seed)
        self.result = SimResult(config=config)
        self.network: Network[Message | Reply] = Network(self.rng, self.scenario.network)
        self._trace = hashlib.sha256(f"aegis-sim {_identity(config)}".encode())
        self.now = 0
        self.client_count = config.clients or self.scenario.clients
        self._make_keys()
        self._make_genesis()
        self.byzantine = self._byzantine_ids()
        self.disks: dict[int, list[PersistRecord]] = {i: [] for i in range(self.n)}
        self.replicas: dict[int, ModeController | ByzantineReplica] = {}
        self.alive: set[int] = set()
        self.crash_after_persist: set[int] = set()
        # Called with (replica, what it stepped: a message, Persisted, or None for a
        # tick, its Effects) for every step of every replica, before anything is sent:
        # sim/spec_trace.py reads runs as behaviours of the TLA+ spec this way.
        self.observers: list[Callable[[int, object | None, Effects], None]] = []
        for replica in range(self.n):
            self._start(replica)
        self.clients = [SimClient(c, self) for c in range(self.client_count)]
        self.submitted: dict[tuple[int, int], Request] = {}
        self.decided_at: dict[int, bytes] = {}
        self.state_at: dict[int, bytes] = {}
        self.ok_transfers: dict[int, set[int]] = {i: set() for i in range(self.n)}
        # Fallback checkers: the first provisional block seen at each height (S2), each
        # honest replica's provisional blocks (S2/S3) and rolled-back value per epoch (S3).
        self.provisional_at: dict[int, bytes] = {}
        self.provisional_of: dict[int, dict[int, tuple[Block, int, int, int]]] = {
            i: {} for i in range(self.n)
        }
        self.rolled_back: dict[tuple[int, int], tuple[int, int]] = {}
        self.submitted_at: dict[tuple[int, int], int] = {}
        self.final_keys: set[tuple[int, int]] = set()
        # The amount-limit model, kept apart from the executor: limits by height.
        self.verdicts_checked: set[int] = set()
        self.account_limits: dict[int, int] = {}
        self.ledger_limits: dict[int, int] = {}
        self.first_commit_at: dict[tuple[int, int], tuple[int, int]] = {}  # tick, transfers

    # ------------------------------------------------------------------ set-up

    def _make_keys(self) -> None:
        seed = self.config.seed
        self.replica_signers = [
            Ed25519Signer.from_seed(f"replica {i} {seed}".encode()) for i in range(self.n)
        ]
        self.client_signers = [
            Ed25519Signer.from_seed(f"client {c} {seed}".encode()) for c in range(self.client_count)
        ]
        self.replica_verifier = Ed25519Verifier(
            {i: s.public_key_bytes() for i, s in enumerate(self.replica_signers)}, cache_max=1 << 16
        )
        self.client_verifier = Ed25519Verifier(
            {c: s.public_key_bytes() for c, s in enumerate(self.client_signers)}, cache_max=1 << 12
        )

    def _make_genesis(self) -> None:
        ledger = Ledger()
        accounts = [
            Account(
                id=i,
                ledger=1,
                code=1,
                flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS if i % 5 == 0 else 0,
            )
            for i in range(1, self.config.accounts + 1)
        ]
        ledger.create_accounts(accounts, GENESIS_NS - 1)
        header = genesis_header(ledger.state_hash(), GENESIS_NS - 1)
        self.genesis = Genesis(header=header, snapshot=ledger.snapshot())

    def _byzantine_ids(self) -> dict[int, str]:
        behaviours = list(self.scenario.byzantine)
        count = len(behaviours) if self.config.byzantine is None else self.config.byzantine
        if count > self.f:
            raise ValueError(f"{count} Byzantine replicas exceed f = {self.f} for n = {self.n}")
        if count and not behaviours:
            behaviours = ["forge"]
        if self.scenario.byzantine_ids and self.config.byzantine is None:
            ids: Sequence[int] = self.scenario.byzantine_ids
        elif self.scenario.byzantine_leads:
            ids = range(count)
        else:
            ids = range(self.n - count, self.n)
        return {i: behaviours[k % len(behaviours)] for k, i in enumerate(ids)}

    def _start(self, replica: int) -> None:
        chunk = self.config.snapshot_chunk_bytes
        chunking = {} if chunk is None else {"snapshot_chunk_bytes": chunk}
        config = ReplicaConfig(
            replica_id=replica,
            replicas=self.n,
            genesis_ns=GENESIS_NS,
            checkpoint_interval=self.config.checkpoint_interval,
            **chunking,
            unsafe_quorum=self.config.unsafe_quorum,
            unsafe_skip_sync_reproposal=self.config.unsafe_skip_sync_reproposal,
        )
        executor = self.executor_factory(Ledger.restore(self.genesis.snapshot))
        self._configure(executor)
        node = assemble(
            config,
            RaftConfig(
                replica_id=replica,
                replicas=self.n,
                genesis_ns=GENESIS_NS,
                unsafe_vote_any=self.config.unsafe_vote_any,
            ),
            ModeConfig(
                enabled=self.config.fallback,
                unsafe_final_on_majority=self.config.unsafe_final_on_majority,
                unsafe_never_heal=self.config.unsafe_never_heal,
            ),
            self.replica_signers[replica],
            self.replica_verifier,
            self.client_verifier,
            executor,
            self.genesis,
            random.Random(self.rng.getrandbits(64)),
            self.disks[replica],
            ticks=self.now,  # a restarted process reads the clock afresh
        )
        behaviour = self.byzantine.get(replica)
        self.replicas[replica] = ByzantineReplica(node, behaviour, self.rng) if behaviour else node
        self.alive.add(replica)
        self._record(f"start r{replica}" + (f" byzantine={behaviour}" if behaviour else ""))

    def honest(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.byzantine]

    def controller(self, replica: int) -> ModeController:
        node = self.replicas[replica]
        return node.node if isinstance(node, ByzantineReplica) else node

    def core(self, replica: int) -> BftReplica:
        return self.controller(replica).bft

    def _configure(self, executor: LedgerExecutor) -> None:
        self._limit_exposure(executor)
        executor.operators = OPERATORS
        if self.config.unsafe_no_agents:
            executor.gate = AgentGate(())

    def _limit_exposure(self, executor: LedgerExecutor) -> None:
        limit = self.scenario.exposure
        if self.config.unsafe_no_exposure_limit:
            limit = ExposureLimit(max_transfers=1 << 40, max_amount=1 << 100)
        executor.exposure = limit

    # ------------------------------------------------------------------ run

    def run(self) -> SimResult:
        try:
            self._run()
        except CheckFailure as failure:
            self.result.failures.append(f"tick {self.now}: {failure}")
        self._finish()
        return self.result

    def _run(self) -> None:
        schedule = sorted(self.scenario.schedule, key=lambda item: item[0])
        end = self.scenario.workload_ticks + self.scenario.liveness_ticks_max
        for self.now in range(1, end + 1):
            while schedule and schedule[0][0] == self.now:
                self._fault(schedule.pop(0)[1])
            for source, target, payload in self.network.due(self.now):
                self._deliver(source, target, payload)
            for replica in sorted(self.alive):
                self._handle(replica, self.replicas[replica].tick(), None)
            submitting = self.now < self.scenario.workload_ticks
            for client in self.clients:
                client.act(self.now, submitting)
            past_heal = self.now > max(self.scenario.workload_ticks, self.scenario.heal_tick)
            if past_heal and self._settled():
                break
        else:
            self._liveness_failure()
        self._check_end_state()

    def _deliver(self, source: str, target: str, payload: Message | Reply) -> None:
        self._record(f"{self.now} {source}>{target} {_describe(payload)}")
        if target.startswith("c"):
            assert isinstance(payload, Reply)
            self.clients[int(target[1:])].on_reply(payload)
            return
        replica = int(target[1:])
        if replica in self.alive:
            assert not isinstance(payload, Reply)
            self._handle(replica, self.replicas[replica].step(payload), payload)

    def _handle(self, replica: int, effects: Effects, stepped: object | None) -> None:
        for observe in self.observers:
            observe(replica, stepped, effects)
        if effects.persist:
            self.disks[replica].extend(effects.persist)  # durable before anything leaves
            if replica in self.crash_after_persist:
                # The process dies after its records hit the disk, before any send.
                self.crash_after_persist.discard(replica)
                self._crash(replica)
                return
        for line in effects.trace:
            self._record(line)
        honest = replica not in self.byzantine
        for decided in effects.decided:
            if honest:
                results = next(
                    (r.results for r in effects.replies if r.header.digest == decided.block.digest),
                    (),
                )
                self._check_decision(replica, decided, results)
        for block in effects.committed:
            if honest:
                self._check_provisional(replica, block)
        for send in effects.send:
            targets = (
                [send.to] if send.to is not None else [p for p in range(self.n) if p != replica]
            )
            for target in targets:
                self.network.send(self.now, f"r{replica}", f"r{target}", send.message)
        for reply in effects.replies:
            self.network.send(self.now, f"r{replica}", f"c{reply.client_id}", reply)
        if effects.persist:
            # What the driver does after an fsync, effects included (none today).
            node = self.replicas[replica]
            persisted = Persisted(upto=len(self.disks[replica]))
            self._handle(replica, node.step(persisted), persisted)

    # ------------------------------------------------------------------ faults

    def _fault(self, action: tuple[object, ...]) -> None:
        self._record(f"{self.now} fault {action}")
        match action:
            case ("crash", int() as replica):
                self._crash(replica)
            case ("crash_leader",):
                leader = leader_of(max(self.core(i).regency for i in self.alive), self.n)
                self._crash(leader)
            case ("restart", int() as replica):
                self._call_off_crash(replica)
                if replica not in self.alive:
                    self._start(replica)
            case ("restart_all",):
                for replica in range(self.n):
                    self._call_off_crash(replica)
                    if replica not in self.alive:
                        self._start(replica)
            case ("cut", int() as a, int() as b):
                self.network.block(f"r{a}", f"r{b}")
            case ("isolate", int() as replica):
                for other in range(self.n):
                    if other != replica:
                        self.network.block(f"r{replica}", f"r{other}")
                        self.network.block(f"r{other}", f"r{replica}")
            case ("partial", int() as replica):
                leader = leader_of(max(self.core(i).regency for i in self.alive), self.n)
                for other in range(self.n):
                    if other not in (replica, leader):
                        self.network.block(f"r{replica}", f"r{other}")
                        self.network.block(f"r{other}", f"r{replica}")
            case ("star", int() as hub):
                for a in range(self.n):
                    for b in range(self.n):
                        if a != b and hub not in (a, b):
                            self.network.block(f"r{a}", f"r{b}")
            case ("drop_kind", str() as kind, int() as replica):
                self.network.drop_kind(kind, f"r{replica}")
            case ("crash_after_persist", int() as replica):
                self.crash_after_persist.add(replica)
            case ("heal",):
                self.network.heal()
            case _:
                raise ValueError(f"unknown fault action {action!r}")

    def _call_off_crash(self, replica: int) -> None:
        """A restart ends its replica's fault window: a crash_after_persist that has not
        fired (the replica persisted nothing since) is called off.  Otherwise it fires
        after the heal and leaves the replica down for good, one fault more than the
        scenario allows: restart-under-byzantine seed 13105 lost liveness so, with r3
        Byzantine and r0 down from tick 205, once retransmission timing changed."""
        if replica in self.crash_after_persist:
            self.crash_after_persist.discard(replica)
            self._record(f"{self.now} crash_after_persist r{replica} called off")

    def _crash(self, replica: int) -> None:
        if replica in self.alive:
            self.alive.discard(replica)
            self._record(f"{self.now} crash r{replica}")

    # ------------------------------------------------------------------ checkers

    def _check_decision(
        self, replica: int, decided: DecidedBlock, results: tuple[tuple[int, int, bytes], ...]
    ) -> None:
        header = decided.block.header
        height = header.height
        first = self.decided_at.setdefault(height, decided.block.digest)
        if first != decided.block.digest:
            raise CheckFailure(
                f"agreement (S1): r{replica} decided a different FINAL block at h{height}"
            )
        if self.config.check_certificates and not certificates.verify(
            decided.certificate, self.replica_verifier, self.n
        ):
            raise CheckFailure(f"certificate: r{replica} decided h{height} without a valid one")
        self._check_rollback(replica, decided)
        if first == decided.block.digest and height not in self.verdicts_checked:
            self.verdicts_checked.add(height)
            self._check_verdicts(decided.block, results)
        for request in decided.block.requests:
            self.final_keys.add(request.key)
            if self.submitted.get(request.key) != request:
                raise CheckFailure(
                    f"validity: r{replica} decided request {request.key} that no client submitted"
                )
        core = self.core(replica)
        assert isinstance(core.sm, LedgerExecutor)
        try:
            core.sm.ledger.check_invariants()
        except AssertionError as error:
            raise CheckFailure(f"ledger invariant on r{replica} at h{height}: {error}") from None
        if core.decided_height == height and core.speculative is None:
            state = core.sm.state_hash()
            expected = self.state_at.setdefault(height, state)
            if state != expected or state != header.state_hash:
                raise CheckFailure(f"state hash: r{replica} diverged at h{height}")
        if digest_of(results) != header.results_hash:
            raise CheckFailure(f"results: r{replica} answered other results than h{height} holds")
        table = {(client, number): codes for client, number, codes in results}
        for request in decided.block.requests:
            if request.operation != OP_TRANSFERS:
                continue
            transfers = request.transfers
            for index, code in enumerate(table[request.key]):
                if code != 0:
                    continue
                transfer_id = int.from_bytes(transfers[index * 128 : index * 128 + 16], "little")
                if transfer_id in self.ok_transfers[replica]:
                    raise CheckFailure(
                        f"exactly-once: transfer {transfer_id} created twice on r{replica}"
                    )
                self.ok_transfers[replica].add(transfer_id)
        self.result.blocks_decided = max(self.result.blocks_decided, height)
        self._committed_value(decided.block, results)

    def _check_provisional(self, replica: int, block: Block) -> None:
        """S2 on every provisional commit; remember it for S2/S3 when BFT decides."""
        height = block.header.height
        digest = block.digest
        no_byzantine = not self.byzantine
        first = self.provisional_at.setdefault(height, digest)
        if no_byzantine and first != digest:
            raise CheckFailure(
                f"S2: r{replica} committed a different provisional block at h{height}"
            )
        final = self.decided_at.get(height)
        if no_byzantine and final is not None and final != digest:
            raise CheckFailure(f"S2: r{replica} committed provisionally over FINAL h{height}")
        node = self.controller(replica)
        results = node.raft.results.get(digest, ())
        if digest_of(results) != block.header.results_hash:
            raise CheckFailure(f"results: r{replica} provisional h{height} results differ")
        executor = node.bft.sm
        assert isinstance(executor, LedgerExecutor)
        try:
            executor.ledger.check_invariants()
        except AssertionError as error:
            raise CheckFailure(
                f"ledger invariant on r{replica} at provisional h{height}: {error}"
            ) from None
        amount, count = self._committed_value(block, results)
        epoch = node.bft.decided_height
        earlier = self.provisional_of[replica].get(height)
        if earlier is not None and earlier[0].digest != digest:
            # Replaced while still provisional: a rollback as much as a FINAL one is.
            self._roll_back(replica, height, earlier)
        self.provisional_of[replica][height] = (block, amount, count, epoch)

    def _committed_value(
        self, block: Block, results: tuple[tuple[int, int, bytes], ...]
    ) -> tuple[int, int]:
        """(amount, transfers) the block created, and note first commits for latency."""
        table = {(client, number): codes for client, number, codes in results}
        amount = count = 0
        for request in block.requests:
            codes = table.get(request.key, b"") if request.operation == OP_TRANSFERS else b""
            ok = 0
            for index, code in enumerate(codes):
                if code == 0:
                    raw = request.transfers[index * 128 : index * 128 + 128]
                    amount += int.from_bytes(raw[48:64], "little")
                    ok += 1
            count += ok
            if request.key not in self.first_commit_at:
                self.first_commit_at[request.key] = (self.now, ok)
                if self.network.blocked:
                    self.result.committed_partitioned += ok
        return amount, count

    def _check_verdicts(self, block: Block, results: tuple[tuple[int, int, bytes], ...]) -> None:
        """Every FINAL transfer over a limit active at the parent height is DENIED, and
        nothing else is; set_limits from the operator apply from the next block."""
        table = {(client, number): codes for client, number, codes in results}
        changes: list[tuple[int, int, int]] = []
        height = block.header.height
        for request in block.requests:
            codes = table[request.key]
            if request.operation == OP_SET_LIMITS:
                if request.client_id in OPERATORS and all(c == 0 for c in codes):
                    changes += decode_limits(request.transfers)
                continue
            for index, transfer in enumerate(decode_transfers(request.transfers)):
                over = not transfer.flags & _POST_OR_VOID and (
                    transfer.amount > self.account_limits.get(transfer.debit_account_id, 1 << 128)
                    or transfer.amount > self.ledger_limits.get(transfer.ledger, 1 << 128)
                )
                denied = codes[index] == FinalityResult.DENIED_BY_POLICY
                if over != denied:
                    raise CheckFailure(
                        f"agent verdicts: transfer {transfer.id} of {transfer.amount} at "
                        f"h{height} was {'denied' if denied else 'not denied'} against the "
                        f"limits in force"
                    )
        for kind, key, limit in changes:
            table_of = self.account_limits if kind == LIMIT_ACCOUNT else self.ledger_limits
            if limit:
                table_of[key] = limit
            else:
                table_of.pop(key, None)

    def _check_rollback(self, replica: int, decided: DecidedBlock) -> None:
        """S2 / S3 when a block becomes FINAL over a provisional one."""
        height = decided.block.header.height
        mine = self.provisional_of[replica].pop(height, None)
        if mine is None or mine[0].digest == decided.block.digest:
            return
        self._roll_back(replica, height, mine)

    def _roll_back(self, replica: int, height: int, mine: tuple[Block, int, int, int]) -> None:
        if not self.byzantine:
            raise CheckFailure(f"S2: r{replica} rolled back provisional h{height}")
        key = (replica, mine[3])
        amount, count = self.rolled_back.get(key, (0, 0))
        amount, count = amount + mine[1], count + mine[2]
        self.rolled_back[key] = (amount, count)
        self.result.rolled_back_amount = max(self.result.rolled_back_amount, amount)
        limit = self.scenario.exposure
        if amount > limit.max_amount or count > limit.max_transfers:
            raise CheckFailure(
                f"S3: r{replica} rolled back {count} provisional transfers worth {amount}, "
                f"over the exposure limit ({limit.max_transfers}, {limit.max_amount})"
            )

    def _settled(self) -> bool:
        if any(client.outstanding is not None for client in self.clients):
            return False
        live = [i for i in self.honest() if i in self.alive]
        if any(self.controller(i).mode is not Mode.BFT for i in live):
            return False
        if any(key not in self.final_keys for c in self.clients for key in c.acked):
            return False
        heights = {self.core(i).decided_height for i in live}
        return len(heights) == 1 and self.network.in_flight() == 0

    def _liveness_failure(self) -> None:
        waiting = [c.outstanding.key for c in self.clients if c.outstanding is not None]
        live = [i for i in self.honest() if i in self.alive]
        heights = {i: self.core(i).decided_height for i in live}
        modes = {i: self.controller(i).mode.value for i in live}
        not_final = [k for c in self.clients for k in c.acked if k not in self.final_keys]
        raise CheckFailure(
            f"L1 liveness: {self.scenario.liveness_ticks_max} ticks after the "
            f"workload, requests {waiting} unanswered, {len(not_final)} answered but not "
            f"FINAL, heights {heights}, modes {modes}"
        )

    def _check_end_state(self) -> None:
        live = [i for i in self.honest() if i in self.alive]
        acked_ids = []
        for client in self.clients:
            for key, codes in client.acked.items():
                if self.byzantine and client.levels[key] == Finality.PROVISIONAL:
                    continue  # may be rolled back with a Byzantine replica (S3 bounds it)
                request = self.submitted[key]
                if request.operation != OP_TRANSFERS:
                    continue
                for index, code in enumerate(codes):
                    if code in OK_CODES:
                        raw = request.transfers[index * 128 : index * 128 + 16]
                        acked_ids.append(int.from_bytes(raw, "little"))
        for replica in live:
            core = self.core(replica)
            assert isinstance(core.sm, LedgerExecutor)
            found = core.sm.ledger.lookup_transfers(acked_ids[:8189])
            if len(found) != len(acked_ids[:8189]):
                raise CheckFailure(f"durability: r{replica} lacks acknowledged transfers")
        self.result.checks = {
            "agreement": "ok",
            "validity": "ok",
            "ledger invariants": "ok",
            "state hashes": "ok",
            "exactly once": "ok",
            "acknowledged durable": "ok",
            "agent verdicts": "ok",
            "S2 provisional kept" if not self.byzantine else "S3 rollback within exposure": "ok",
            "L1 all final after heal": "ok",
            "liveness": "ok",
        }

    # ------------------------------------------------------------------ output

    def _record(self, line: str) -> None:
        self._trace.update(line.encode() + b"\n")
        if self.config.record_trace:
            self.result.trace.append(line)

    def _finish(self) -> None:
        result = self.result
        result.ticks = self.now
        result.trace_hash = self._trace.hexdigest()[:16]
        if self.state_at:
            result.final_state = self.state_at[max(self.state_at)].hex()
        result.messages_sent = self.network.sent
        result.messages_dropped = self.network.dropped
        result.requests_submitted = len(self.submitted)
        result.requests_acknowledged = sum(len(c.acked) for c in self.clients)
        result.transfers_committed = max((len(s) for s in self.ok_transfers.values()), default=0)
        result.regency_changes = max((self.core(i).regency for i in self.honest()), default=0)
        result.evidence = sum(self.controller(i).evidence_count for i in self.honest())
        honest = [self.controller(i).metrics for i in self.honest()]
        result.fallback_epochs = max((m.fallback_epochs for m in honest), default=0)
        result.mode_changes = sum(m.mode_changes for m in honest)
        result.provisional_blocks = max((m.provisional_blocks for m in honest), default=0)
        result.recertified_blocks = max((m.recertified_blocks for m in honest), default=0)
        result.rolled_back_blocks = sum(m.rolled_back_blocks for m in honest)
        result.commit_latencies = sorted(
            tick - self.submitted_at[key] for key, (tick, _) in self.first_commit_at.items()
        )
        result.committed_by_heal = sum(
            ok for tick, ok in self.first_commit_at.values() if tick <= self.scenario.heal_tick
        )
        if result.failures:
            result.checks = {}
            result.failures.append(f"replay: {self.config.replay_command()}")


def _describe(payload: object) -> str:
    name = type(payload).__name__
    height = getattr(payload, "height", "")
    regency = getattr(payload, "regency", "")
    sender = getattr(payload, "sender", getattr(payload, "client_id", ""))
    return f"{name}:{sender}:{height}:{regency}"
