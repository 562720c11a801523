"""Byzantine replicas: an honest core whose outgoing traffic is corrupted.

Each behaviour keeps the replica's own key (it can sign as itself, never as
another replica) and draws every choice from the simulation's PRNG.  The
honest replicas must stay safe against all of them; the checkers never look
at a Byzantine replica's state.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import TypeVar

from consensus.blocks import seal
from consensus.effects import Effects, Send
from consensus.encoding import canonical
from consensus.messages import (
    Accept,
    AppendAck,
    AppendEntries,
    Block,
    LogEntry,
    Message,
    PeerMessage,
    Propose,
    Request,
    Stop,
    StopData,
    Sync,
    Write,
    WriteProof,
)
from consensus.mode import ModeController
from finality.executor import LedgerExecutor
from finality.gate import AgentGate

_Signed = TypeVar("_Signed", PeerMessage, AppendEntries, AppendAck)

BEHAVIOURS = (
    "silent",
    "equivocate",
    "forge",
    "replay",
    "lying-stopdata",
    "bad-header",
    "raft-equivocate",
    "wrong-verdicts",
    "huge-ack",
    "poison-term",
)
POISONED_TERM = 10**12


class ByzantineReplica:
    def __init__(self, node: ModeController, behaviour: str, rng: random.Random) -> None:
        assert behaviour in BEHAVIOURS, behaviour
        self.node = node
        self.core = node.bft
        self.silent_after = 400  # poison-term: the tick it stops talking
        self.behaviour = behaviour
        self.rng = rng
        self.seen: list[PeerMessage] = []  # for replays; bounded
        self.id = node.id
        # height -> (twin block digest, replicas that were shown the twin)
        self.twins: dict[int, tuple[bytes, frozenset[int]]] = {}

    def step(self, message: Message) -> Effects:
        if isinstance(message, PeerMessage) and len(self.seen) < 256:
            self.seen.append(message)
        return self._corrupt(self.node.step(message))

    def tick(self) -> Effects:
        raft = self.node.raft
        leads = ("raft-equivocate", "poison-term")
        if self.behaviour in leads and raft.active and raft.role == "follower":
            raft.election_deadline = 0  # campaign at once: it wants to lead the fallback
        return self._corrupt(self.node.tick())

    def _other_block(self, requests: list[Request]) -> Block:
        """A validly sealed block the honest core did not choose; the core's own
        speculation is put back afterwards so it keeps working normally."""
        core = self.core
        honest = core.proposals.get(core.regency)
        block = core._build_block(requests)
        assert block is not None
        core._rollback_speculation()
        if honest is not None:
            core._validate_block(honest)
        return block

    def _resign(self, message: _Signed) -> _Signed:
        cleared = dataclasses.replace(message, signature=b"")
        signature = self.core.signer.sign(canonical(cleared))
        return dataclasses.replace(message, signature=signature)

    def _corrupt(self, effects: Effects) -> Effects:
        handler: Callable[[Send], list[Send]] = {
            "silent": lambda send: [],
            "equivocate": self._equivocate,
            "forge": self._forge,
            "replay": self._replay,
            "lying-stopdata": self._lie,
            "bad-header": self._bad_header,
            "raft-equivocate": self._raft_equivocate,
            "wrong-verdicts": self._wrong_verdicts,
            "huge-ack": self._huge_ack,
            "poison-term": self._poison_term,
        }[self.behaviour]
        sends: list[Send] = []
        for send in effects.send:
            sends.extend(handler(send))
        return dataclasses.replace(effects, send=tuple(sends), replies=())

    def _wrong_verdicts(self, send: Send) -> list[Send]:
        """As leader: propose blocks executed with no agents at all, so transfers the
        limits deny go through and the verdicts (none) differ from everyone else's."""
        message = send.message
        if not isinstance(message, Propose) or not message.block.verdicts:
            return [send]
        executor = self.core.sm
        assert isinstance(executor, LedgerExecutor)
        gate, executor.gate = executor.gate, AgentGate(())
        try:
            other = self._other_block(list(message.block.requests))
        finally:
            executor.gate = gate
        lie = self._resign(dataclasses.replace(message, block=other))
        return [dataclasses.replace(send, message=lie)]

    def _huge_ack(self, send: Send) -> list[Send]:
        """As fallback follower: acknowledge heights far beyond what the leader sent."""
        message = send.message
        if not isinstance(message, AppendAck):
            return [send]
        lie = dataclasses.replace(message, success=True, match_height=message.match_height + 1000)
        return [dataclasses.replace(send, message=self._resign(lie))]

    def _poison_term(self, send: Send) -> list[Send]:
        """As fallback leader: give replicas 1 and 2 a block of their own whose entry claims
        a huge term no election supports; fall silent once the network heals."""
        if self.core.ticks >= self.silent_after:
            return []
        message = send.message
        if not isinstance(message, AppendEntries) or send.to not in (1, 2):
            return [send]
        send = self._raft_equivocate(send)[0]
        message = send.message
        assert isinstance(message, AppendEntries)
        entries = tuple(
            dataclasses.replace(e, term=POISONED_TERM) if e.term == message.term else e
            for e in message.entries
        )
        lie = dataclasses.replace(message, entries=entries)
        return [dataclasses.replace(send, message=self._resign(lie))]

    def _raft_equivocate(self, send: Send) -> list[Send]:
        """As fallback leader: show each follower its own valid block at each new height
        (one request fewer per follower) and claim it committed at once, so followers
        answer PROVISIONAL for blocks no majority holds.  Honest followers that meet
        two blocks at one height in one term refuse the second."""
        message = send.message
        raft = self.node.raft
        if not isinstance(message, AppendEntries) or not message.entries or send.to is None:
            return [send]
        last = message.entries[-1]
        requests = list(last.block.requests)
        if last.term != raft.term or len(requests) < 2:
            return [send]
        variant = send.to % len(requests)
        other = self._other_fallback_block(requests[:variant] + requests[variant + 1 :])
        if other is None:
            return [send]
        entries = (*message.entries[:-1], LogEntry(term=last.term, block=other))
        lie = dataclasses.replace(
            message, entries=entries, commit_height=other.header.height, signature=b""
        )
        return [dataclasses.replace(send, message=self._resign(lie))]

    def _other_fallback_block(self, requests: list[Request]) -> Block | None:
        """A block at the fallback tip's height built from ``requests``, validly sealed."""
        raft = self.node.raft
        if not raft.log:
            return None
        tip = raft.log[-1].block.header
        parent = raft.log[-2].block.header if len(raft.log) > 1 else raft.anchor.final_header()
        raft.holds_state = False  # rebuild the parent state, then let the core re-apply
        raft.anchor.restore_final()
        for entry in raft.log[:-1]:
            raft.sm.execute(
                entry.block.requests,
                entry.block.header.timestamp,
                fallback_term=entry.block.header.fallback_term,
            )
        header, execution = seal(
            raft.sm,
            requests,
            parent=parent,
            first=tip.timestamp,
            fallback_term=tip.fallback_term,
        )
        raft.holds_state = False
        raft.anchor.owner.holder = "raft"  # not the BFT core's view any more
        return Block(header=header, requests=tuple(requests), verdicts=execution.verdicts)

    # ------------------------------------------------------------ behaviours

    def _equivocate(self, send: Send) -> list[Send]:
        """Show half the replicas a different valid block, and vote for it to them."""
        message = send.message
        core = self.core
        peers = [p for p in range(core.n) if p != core.id]
        if isinstance(message, Write | Accept) and message.height in self.twins:
            digest, shown = self.twins[message.height]
            twin_vote = self._resign(dataclasses.replace(message, digest=digest))
            return [Send(to=p, message=twin_vote if p in shown else message) for p in peers]
        if not isinstance(message, Propose) or len(message.block.requests) < 2:
            return [send]
        # A second, valid block with one request fewer, to half of the replicas.
        other = self._other_block(list(message.block.requests[:-1]))
        twin = self._resign(dataclasses.replace(message, block=other))
        self.rng.shuffle(peers)
        shown = frozenset(peers[: len(peers) // 2])
        self.twins = {message.height: (other.digest, shown)}
        return [Send(to=p, message=twin if p in shown else message) for p in peers]

    def _forge(self, send: Send) -> list[Send]:
        out = [send]
        message = send.message
        roll = self.rng.random()
        if roll < 0.3:  # claim to be someone else, with garbage for a signature
            victim = self.rng.randrange(self.core.n)
            forged = dataclasses.replace(message, sender=victim, signature=self.rng.randbytes(64))
            out.append(Send(to=None, message=forged))
        elif roll < 0.5:  # flip a bit in our own message after signing
            out.append(
                Send(
                    to=None,
                    message=dataclasses.replace(
                        message, signature=bytes([message.signature[0] ^ 1]) + message.signature[1:]
                    ),
                )
            )
        elif roll < 0.6:  # push the others towards a regency change on our own
            out.append(
                Send(
                    to=None,
                    message=self._resign(
                        Stop(sender=self.id, regency=self.core.regency + self.rng.randint(1, 3))
                    ),
                )
            )
        return out

    def _replay(self, send: Send) -> list[Send]:
        out = [send]
        if self.seen and self.rng.random() < 0.5:
            old = self.rng.choice(self.seen)
            out.append(Send(to=None, message=old))  # someone else's, stale: must be harmless
        return out

    def _lie(self, send: Send) -> list[Send]:
        message = send.message
        if isinstance(message, StopData):
            if message.proof is not None and self.rng.random() < 0.5:
                # Pretend our proof is from a much later regency (the signatures will not hold).
                proof = message.proof
                fake = WriteProof(
                    regency=proof.regency + 7,
                    height=proof.height,
                    block=proof.block,
                    writes=tuple(
                        dataclasses.replace(w, regency=proof.regency + 7) for w in proof.writes
                    ),
                )
                return [
                    dataclasses.replace(
                        send, message=self._resign(dataclasses.replace(message, proof=fake))
                    )
                ]
            # Hide what we wrote and what was decided.
            return [
                dataclasses.replace(
                    send, message=self._resign(dataclasses.replace(message, proof=None))
                )
            ]
        if isinstance(message, Sync) and any(s.proof is not None for s in message.stop_data):
            requests = list(message.block.requests)
            block = self._other_block(requests[1:] if requests else [])
            return [
                dataclasses.replace(
                    send, message=self._resign(dataclasses.replace(message, block=block))
                )
            ]
        return [send]

    def _bad_header(self, send: Send) -> list[Send]:
        message = send.message
        if not isinstance(message, Propose):
            return [send]
        header = message.block.header
        if self.rng.random() < 0.5:
            bad = dataclasses.replace(header, parent_hash=self.rng.randbytes(32))
        else:
            bad = dataclasses.replace(header, timestamp=header.timestamp + 10**15)
        block = dataclasses.replace(message.block, header=bad)
        return [
            dataclasses.replace(
                send, message=self._resign(dataclasses.replace(message, block=block))
            )
        ]
