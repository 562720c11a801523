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

from consensus.bft.replica import BftReplica
from consensus.effects import Effects, Send
from consensus.encoding import canonical
from consensus.messages import (
    Accept,
    Block,
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

BEHAVIOURS = ("silent", "equivocate", "forge", "replay", "lying-stopdata", "bad-header")


class ByzantineReplica:
    def __init__(self, core: BftReplica, behaviour: str, rng: random.Random) -> None:
        assert behaviour in BEHAVIOURS, behaviour
        self.core = core
        self.behaviour = behaviour
        self.rng = rng
        self.seen: list[PeerMessage] = []  # for replays; bounded
        self.id = core.id
        # height -> (twin block digest, replicas that were shown the twin)
        self.twins: dict[int, tuple[bytes, frozenset[int]]] = {}

    def step(self, message: Message) -> Effects:
        if isinstance(message, PeerMessage) and len(self.seen) < 256:
            self.seen.append(message)
        return self._corrupt(self.core.step(message))

    def tick(self) -> Effects:
        return self._corrupt(self.core.tick())

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

    def _resign(self, message: PeerMessage) -> PeerMessage:
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
        }[self.behaviour]
        sends: list[Send] = []
        for send in effects.send:
            sends.extend(handler(send))
        return dataclasses.replace(effects, send=tuple(sends), replies=())

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
        block = Block(header=bad, requests=message.block.requests)
        return [
            dataclasses.replace(
                send, message=self._resign(dataclasses.replace(message, block=block))
            )
        ]
