"""Effects: what one ``step`` or ``tick`` of a core asks its driver to do.

Ordering contract (after etcd-io/raft's ``Ready``): every record in
``persist`` must be durable BEFORE any message in ``send`` leaves the process
and before any reply reaches a client; the driver then steps
``Persisted(upto=...)`` back in.  ``decided`` and ``trace`` are for observers
(the simulator's checkers, metrics) and carry no obligation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from consensus.messages import (
    Block,
    DecidedBlock,
    ElectionProof,
    FallbackMessage,
    LogEntry,
    PeerMessage,
    Reply,
    StableCheckpoint,
    Stop,
    WriteProof,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegencyRecord:
    regency: int
    stops: tuple[Stop, ...] = ()  # the q STOPs that installed it, shared with stranded peers


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRecord:
    """A WRITE or ACCEPT this replica sent: it must never vote otherwise after a restart."""

    kind: str  # "write" | "accept"
    regency: int
    height: int
    digest: bytes
    # For a WRITE, the block itself: STOP-DATA reports it (``WrittenBlock``), so a
    # restart must not forget it.  None for an ACCEPT (the ProofRecord holds it).
    block: Block | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProofRecord:
    proof: WriteProof


@dataclass(frozen=True, slots=True, kw_only=True)
class DecidedRecord:
    decided: DecidedBlock


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRecord:
    checkpoint: StableCheckpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class TermRecord:
    """Fallback: the current term and the vote cast in it (Raft's persistent state).

    Durable before any vote or append answer leaves: a restarted replica must never
    vote twice in one term nor forget a term it joined."""

    term: int
    voted_for: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryRecord:
    """Fallback: ``entry`` now sits at ``height``; every record for a higher height is void."""

    height: int
    entry: LogEntry
    election: ElectionProof | None  # proves the term of the log's last entry was led


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeRecord:
    """The mode controller's durable view: the fallback epochs it entered."""

    mode: str  # "bft" | "fallback"
    epoch: int


PersistRecord: TypeAlias = (
    RegencyRecord
    | VoteRecord
    | ProofRecord
    | DecidedRecord
    | CheckpointRecord
    | TermRecord
    | EntryRecord
    | ModeRecord
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    to: int | None  # None: every other replica
    message: PeerMessage | FallbackMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class Effects:
    persist: tuple[PersistRecord, ...] = ()
    send: tuple[Send, ...] = ()
    replies: tuple[Reply, ...] = ()
    decided: tuple[DecidedBlock, ...] = ()
    committed: tuple[Block, ...] = ()  # provisionally committed by a fallback majority
    trace: tuple[str, ...] = ()


@dataclass(slots=True)
class EffectsBuilder:
    persist: list[PersistRecord] = field(default_factory=list)
    send: list[Send] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    decided: list[DecidedBlock] = field(default_factory=list)
    committed: list[Block] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    def build(self) -> Effects:
        return Effects(
            persist=tuple(self.persist),
            send=tuple(self.send),
            replies=tuple(self.replies),
            decided=tuple(self.decided),
            committed=tuple(self.committed),
            trace=tuple(self.trace),
        )
