"""A simulator run read as a behaviour of ``proofs/BftCore.tla`` (trace validation).

The simulator samples schedules of the real code; TLC covers every schedule of the
spec.  Trace validation ties the two (after etcd-io/raft's ``Traceetcdraft.tla``):
``BftTrace`` watches every honest replica's steps in a run and writes down, in the
order they happened, the spec action each one took; ``proofs/TraceBftCore.tla``
then replays that sequence and TLC says whether every event is a step the spec
allows from the state the earlier ones left (``proofs.trace.check``).  A rejected
trace means the code did something the spec does not describe, or the spec misses
a behaviour of the code: either way the proofs no longer speak for the code.

What an honest replica did is read from what it persisted, which the Effects
contract orders as it happened (every vote and decision is durable before it
leaves), and from what it sent in the same step:

* ``VoteRecord(write)`` at (regency g, height h, block v): ``propose`` if the same
  step sent its PROPOSE for (g, h) (the spec's Propose includes the leader's own
  WRITE), ``sync`` if it sent a SYNC for (g, h) (likewise), ``follow`` if the step
  accepted a SYNC (the "accept sync" trace line: the spec's FollowSync writes the
  re-proposed block), otherwise ``write``;
* ``VoteRecord(accept)``: ``accept``; ``DecidedRecord``: ``decide`` (consensus or
  catch-up alike, as in the spec);
* ``RegencyRecord`` for regency G: one ``stop`` per regency from the one the replica
  was in up to G (the spec moves one regency at a time; the STOP-DATA contents,
  decided height and write proof, are checked for G when the replica sent one);
* a SYNC stepped that takes the replica out of the sync state without a WRITE (it
  decided that height already): ``follow`` without a block.

Blocks become the integers 1, 2, ... in order of first appearance.  Byzantine
replicas are not traced: the spec lets them sign anything.

A checkpoint installed from a peer decides every height up to it at once; the spec
has no checkpoints, so those heights are ``decide`` events one by one, with the
blocks the others decided there and regency ``NONE``: the code keeps its sync state
then, where the spec's Decide would leave it for a certificate of the replica's own
regency, so ``TraceBftCore.tla`` lets the spec choose for these events.

A run that enters fallback mode makes the trace ``unsupported`` (with the reason),
to be refused rather than judged: ``Fallback.tla`` is not traced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from consensus.effects import CheckpointRecord, DecidedRecord, Effects, RegencyRecord, VoteRecord
from consensus.messages import Propose, StopData, Sync
from consensus.mode import Mode
from consensus.quorum import leader_of
from sim.simulation import SimConfig, SimResult, Simulation

NO_BLOCK = 0  # "no block" in an event; the spec's NoBlock
NONE = -1  # "no regency" in an event; the spec's None
UNCHECKED = -2  # a STOP-DATA the replica did not send itself (a regency skipped)
_ACCEPT_SYNC = re.compile(r"accept sync h(\d+) v(\d+)$")


@dataclass(frozen=True, slots=True)
class Event:
    """One honest replica's action, as the spec names it."""

    kind: str  # propose | write | accept | decide | stop | sync | follow
    replica: int
    regency: int = 0
    height: int = 0
    block: int = NO_BLOCK
    # stop only: what the STOP-DATA reported (UNCHECKED when none was sent)
    decided_height: int = UNCHECKED
    proof_regency: int = NONE
    proof_block: int = NO_BLOCK

    def tla(self) -> str:
        fields = (
            f'k |-> "{self.kind}", r |-> {self.replica}, g |-> {self.regency}, '
            f"h |-> {self.height}, v |-> {self.block}, dh |-> {self.decided_height}, "
            f"pg |-> {self.proof_regency}, pv |-> {self.proof_block}"
        )
        return f"[{fields}]"


@dataclass(slots=True)
class Trace:
    """The events of one run, and what the spec's constants must be to replay them."""

    replicas: int
    byzantine: tuple[int, ...]
    events: list[Event] = field(default_factory=list)
    blocks: int = 0  # blocks are 1..blocks
    unsupported: str = ""  # why the spec cannot replay this run, if it cannot

    @property
    def max_height(self) -> int:
        return max((e.height for e in self.events), default=0) or 1

    @property
    def max_regency(self) -> int:
        return max((e.regency for e in self.events), default=0)


class BftTrace:
    """Records a ``Simulation``'s honest steps as ``Trace`` events; add with ``attach``."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.trace = Trace(replicas=sim.n, byzantine=tuple(sorted(sim.byzantine)))
        self._ids: dict[bytes, int] = {}
        self._regency = {r: 0 for r in range(sim.n)}
        self._decided = {r: 0 for r in range(sim.n)}
        self._awaiting_sync = {r: False for r in range(sim.n)}  # the spec's inSync

    @classmethod
    def attach(cls, sim: Simulation) -> BftTrace:
        recorder = cls(sim)
        sim.observers.append(recorder.observe)
        return recorder

    def _block(self, digest: bytes) -> int:
        if digest not in self._ids:
            self._ids[digest] = len(self._ids) + 1
            self.trace.blocks = len(self._ids)
        return self._ids[digest]

    def _add(self, event: Event) -> None:
        self.trace.events.append(event)
        r = event.replica
        if event.kind == "stop":
            self._awaiting_sync[r] = True
        elif event.kind in ("follow", "sync") or (
            event.kind == "decide" and event.regency == self._regency[r]
        ):
            self._awaiting_sync[r] = False

    def observe(self, replica: int, stepped: object | None, effects: Effects) -> None:
        if replica in self.sim.byzantine or self.trace.unsupported:
            return
        controller = self.sim.controller(replica)
        if controller.mode is not Mode.BFT or effects.committed:
            self.trace.unsupported = f"r{replica} entered fallback mode (Fallback.tla's part)"
            return
        core = controller.bft
        sent = [s.message for s in effects.send]
        announced = {(type(m), m.regency, m.height) for m in sent if isinstance(m, Propose | Sync)}
        follows = {
            (int(m.group(2)), int(m.group(1)))
            for line in effects.trace
            if (m := _ACCEPT_SYNC.search(line))
        }
        followed = False
        for record in effects.persist:
            match record:
                case VoteRecord(kind="write", regency=g, height=h, digest=digest):
                    kind = "write"
                    if (Propose, g, h) in announced:
                        kind = "propose"
                    elif (Sync, g, h) in announced:
                        kind = "sync"
                    elif (g, h) in follows:
                        kind, followed = "follow", True
                    self._add(Event(kind, replica, g, h, self._block(digest)))
                case VoteRecord(kind="accept", regency=g, height=h, digest=digest):
                    self._add(Event("accept", replica, g, h, self._block(digest)))
                case DecidedRecord(decided=decided):
                    header = decided.block.header
                    self._decided[replica] = header.height
                    self._add(
                        Event(
                            "decide",
                            replica,
                            decided.certificate.regency,
                            header.height,
                            self._block(decided.block.digest),
                        )
                    )
                case RegencyRecord(regency=regency):
                    self._stops(replica, regency, sent, core.stop_data)
                case CheckpointRecord(checkpoint=stable):
                    if not self._installed(replica, stable.height):
                        return
                case _:
                    pass
        if (
            isinstance(stepped, Sync)
            and not followed
            and self._awaiting_sync[replica]
            and stepped.regency == core.regency == self._regency[replica]
            and not core.in_sync
        ):
            # It had decided the SYNC's height already: it leaves the sync state only.
            self._add(Event("follow", replica, core.regency))

    def _installed(self, replica: int, height: int) -> bool:
        """A checkpoint taken from a peer decides every height up to its own at once; the
        spec has no checkpoints, so it reads as deciding them one by one (the blocks the
        others decided there; no regency, so the sync state stays as it was)."""
        for h in range(self._decided[replica] + 1, height + 1):
            digest = self.sim.decided_at.get(h)
            if digest is None:
                self.trace.unsupported = f"r{replica} installed h{height}, h{h} unknown"
                return False
            self._add(Event("decide", replica, NONE, h, self._block(digest)))
        self._decided[replica] = max(self._decided[replica], height)
        return True

    def _stops(
        self,
        replica: int,
        regency: int,
        sent: Sequence[object],
        stop_data: dict[int, dict[int, StopData]],
    ) -> None:
        own = next((m for m in sent if isinstance(m, StopData) and m.regency == regency), None)
        if own is None and leader_of(regency, self.sim.n) == replica:
            own = stop_data.get(regency, {}).get(replica)
        for g in range(self._regency[replica] + 1, regency + 1):
            if g < regency or own is None:
                self._add(Event("stop", replica, g))
                continue
            proof = own.proof
            self._add(
                Event(
                    "stop",
                    replica,
                    g,
                    decided_height=own.decided_height,
                    proof_regency=proof.regency if proof is not None else NONE,
                    proof_block=self._block(proof.block.digest) if proof else NO_BLOCK,
                )
            )
        self._regency[replica] = max(self._regency[replica], regency)


def record(config: SimConfig) -> tuple[SimResult, Trace]:
    """Run ``config`` with a recorder attached: the result and the trace."""
    sim = Simulation(config)
    recorder = BftTrace.attach(sim)
    result = sim.run()
    return result, recorder.trace
