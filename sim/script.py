"""Scripted clusters, in the style of etcd-io/raft's ``testdata/*.txt``.

A script drives real replica cores step by step with no randomness at all:
messages wait in one FIFO until a command delivers or drops them.  Each
command prints what happened (messages delivered, trace lines), so a checked-in
transcript pins the protocol's exact behaviour on that path.

Commands (``key=value`` filters are optional)::

    request client=C transfers=K   a client broadcasts a new signed request
    deliver from=A to=B type=T     deliver the queued messages that match, once
    drop from=A to=B type=T        discard the queued messages that match
    stabilize                      deliver until nothing is queued
    tick count=N replica=R         advance every live replica (or one) N ticks
    crash R / restart R            stop a replica / start it from its persisted records
    equivocate                     the leader sends a second, different block to replica 1
    status                         regency, decided height and evidence per replica
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from consensus.effects import Effects
from consensus.encoding import canonical
from consensus.messages import (
    FallbackMessage,
    Message,
    PeerMessage,
    Propose,
    Reply,
    Request,
)
from ledger import Transfer, encode_transfers
from sim.simulation import SimConfig, Simulation

ROUNDS_MAX = 1000


_Signed = TypeVar("_Signed", bound=PeerMessage | FallbackMessage)


class ScriptedCluster:
    def __init__(
        self,
        replicas: int = 4,
        fallback: bool = False,
        *,
        checkpoint_interval: int = 8,
        snapshot_chunk_bytes: int | None = None,
    ) -> None:
        # A Simulation gives the keys, genesis and replica wiring; its network and
        # clock are not used: this class delivers by hand.  Scripts exercise the BFT
        # core unless they ask for the fallback mode.
        self.sim = Simulation(
            SimConfig(
                seed=0,
                scenario="happy",
                replicas=replicas,
                fallback=fallback,
                checkpoint_interval=checkpoint_interval,
                snapshot_chunk_bytes=snapshot_chunk_bytes,
            )
        )
        self.queue: list[tuple[str, str, Message | Reply]] = []
        self.next_number = {c: 1 for c in range(len(self.sim.clients))}
        self.next_transfer = 1
        self.out: list[str] = []

    def signed(self, message: _Signed) -> _Signed:
        """``message`` signed by its sender's replica key (tests forge with this what a
        Byzantine replica could send)."""
        cleared = dataclasses.replace(message, signature=b"")
        signature = self.sim.replica_signers[message.sender].sign(canonical(cleared))
        return dataclasses.replace(cleared, signature=signature)

    # ------------------------------------------------------------------ plumbing

    def _handle(self, replica: int, effects: Effects) -> None:
        if effects.persist:
            self.sim.disks[replica].extend(effects.persist)
        self.out.extend(effects.trace)
        for send in effects.send:
            targets = (
                [send.to] if send.to is not None else [p for p in range(self.sim.n) if p != replica]
            )
            for target in targets:
                self.queue.append((f"r{replica}", f"r{target}", send.message))
        for reply in effects.replies:
            self.queue.append((f"r{replica}", f"c{reply.client_id}", reply))

    @staticmethod
    def _describe(message: object) -> str:
        name = type(message).__name__
        parts = [name]
        for field in ("height", "regency"):
            value = getattr(message, field, None)
            if value is not None:
                parts.append(f"{field[0]}{value}")
        digest = getattr(message, "digest", None)
        if isinstance(digest, bytes):
            parts.append(digest.hex()[:8])
        return " ".join(parts)

    def _matches(self, item: tuple[str, str, object], filters: dict[str, str]) -> bool:
        source, target, message = item
        return (
            filters.get("from") in (None, source[1:])
            and filters.get("to") in (None, target[1:])
            and filters.get("type") in (None, type(message).__name__)
        )

    def _deliver_one(self, source: str, target: str, message: Message | Reply) -> None:
        if target.startswith("c"):
            self.out.append(f"{source}>{target} Reply")
            return
        replica = int(target[1:])
        if replica not in self.sim.alive:
            self.out.append(f"{source}>{target} {self._describe(message)} (dropped: down)")
            return
        self.out.append(f"{source}>{target} {self._describe(message)}")
        assert not isinstance(message, Reply)
        self._handle(replica, self.sim.replicas[replica].step(message))

    # ------------------------------------------------------------------ commands

    def run(self, command: str) -> str:
        self.out = []
        words = shlex.split(command)
        name, args = words[0], words[1:]
        filters = dict(a.split("=", 1) for a in args if "=" in a)
        positional = [a for a in args if "=" not in a]
        match name:
            case "request":
                self._request(int(filters.get("client", "0")), int(filters.get("transfers", "1")))
            case "deliver":
                batch = [i for i in self.queue if self._matches(i, filters)]
                self.queue = [i for i in self.queue if not self._matches(i, filters)]
                for item in batch:
                    self._deliver_one(*item)
            case "drop":
                before = len(self.queue)
                self.queue = [i for i in self.queue if not self._matches(i, filters)]
                self.out.append(f"dropped {before - len(self.queue)}")
            case "stabilize":
                for _ in range(ROUNDS_MAX):
                    if not self.queue:
                        break
                    batch, self.queue = self.queue, []
                    for item in batch:
                        self._deliver_one(*item)
            case "tick":
                self._tick(int(filters.get("count", "1")), filters.get("replica"))
            case "crash":
                self.sim.alive.discard(int(positional[0]))
                self.out.append(f"r{positional[0]} crashed")
            case "restart":
                self.sim._start(int(positional[0]))
                self.out.append(f"r{positional[0]} restarted")
            case "equivocate":
                self._equivocate()
            case "status":
                for replica in range(self.sim.n):
                    core = self.sim.core(replica)
                    state = "up" if replica in self.sim.alive else "down"
                    self.out.append(
                        f"r{replica} {state} regency={core.regency} decided=h{core.decided_height} "
                        f"in_sync={core.in_sync} evidence={core.evidence_count}"
                    )
            case _:
                raise ValueError(f"unknown script command {name!r}")
        return "\n".join(self.out) or "(nothing)"

    def _request(self, client: int, transfers: int) -> None:
        batch = []
        for _ in range(transfers):
            batch.append(
                Transfer(
                    id=self.next_transfer,
                    debit_account_id=1,
                    credit_account_id=2,
                    amount=10,
                    ledger=1,
                    code=1,
                )
            )
            self.next_transfer += 1
        request = Request(
            client_id=client,
            request_number=self.next_number[client],
            transfers=encode_transfers(batch),
        )
        self.next_number[client] += 1
        signed = dataclasses.replace(
            request, signature=self.sim.client_signers[client].sign(canonical(request))
        )
        for replica in range(self.sim.n):
            self.queue.append((f"c{client}", f"r{replica}", signed))
        self.out.append(f"c{client} request {request.request_number}: {transfers} transfers")

    def _tick(self, count: int, only: str | None) -> None:
        for _ in range(count):
            for replica in sorted(self.sim.alive):
                if only is None or int(only) == replica:
                    self._handle(replica, self.sim.replicas[replica].tick())

    def _equivocate(self) -> None:
        leader = self.sim.core(0)
        proposal = leader.proposals.get(leader.regency)
        assert proposal is not None, "equivocate needs the leader's open proposal"
        other = leader._build_block(list(proposal.requests[:-1]))
        leader._rollback_speculation()
        leader._validate_block(proposal)
        assert other is not None
        message = Propose(sender=0, regency=leader.regency, height=leader.height, block=other)
        signed = dataclasses.replace(message, signature=leader.signer.sign(canonical(message)))
        self.queue.append(("r0", "r1", signed))
        self.out.append("r0 sends a second block to r1")


def parse(path: Path) -> Iterator[tuple[str, str]]:
    """(command, expected output) pairs: a command, a '----' line, output, a blank line."""
    for block in path.read_text().split("\n\n"):
        lines = block.strip("\n").splitlines()
        if not lines:
            continue
        split = lines.index("----") if "----" in lines else len(lines)
        yield "\n".join(lines[:split]).strip(), "\n".join(lines[split + 1 :])


def render(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{command}\n----\n{output}\n\n" for command, output in pairs)
