"""Protocol messages: frozen, typed, validated on construction.

Guarantees: every message that exists has fields of the right types and
sizes (digests 32 bytes, signatures at most 64 bytes, ids and heights
non-negative), so a handler never meets a malformed shape; whether a message
is *authentic* and *timely* is the replica's business (signatures are
checked against ``canonical(message)``, which leaves the signature out).
Sizes are bounded: a block holds at most ``REQUESTS_PER_BLOCK_MAX`` requests
and a request at most ``ledger.BATCH_EVENTS_MAX`` transfers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

from consensus.encoding import canonical
from ledger import BATCH_EVENTS_MAX

DIGEST_SIZE = 32
REQUESTS_PER_BLOCK_MAX = 256
RECORD_SIZE = 128
SIGNATURE_SIZE_MAX = 64
CERTIFICATE_SIGNERS_MAX = 1024
BLOCKS_PER_ANSWER_MAX = 256


class MessageError(ValueError):
    """A message whose shape is wrong; raised on construction."""


def _nat(name: str, value: object) -> None:
    if type(value) is not int or value < 0:
        raise MessageError(f"{name} must be a non-negative int, got {value!r}")


def _digest(name: str, value: object) -> None:
    if type(value) is not bytes or len(value) != DIGEST_SIZE:
        raise MessageError(f"{name} must be {DIGEST_SIZE} bytes")


def _signature(value: object) -> None:
    if type(value) is not bytes or len(value) > SIGNATURE_SIZE_MAX:
        raise MessageError("signature must be at most 64 bytes")


def _instance(name: str, value: object, kind: type | tuple[type, ...]) -> None:
    if not isinstance(value, kind):
        raise MessageError(f"{name} has the wrong type ({type(value).__name__})")


def _tuple_of(name: str, value: object, kind: type, limit: int) -> None:
    if type(value) is not tuple or len(value) > limit:
        raise MessageError(f"{name} must be a tuple of at most {limit} items")
    for item in value:
        _instance(name, item, kind)


def digest_of(value: object) -> bytes:
    return hashlib.sha256(canonical(value)).digest()


def body_hash(requests: tuple[Request, ...]) -> bytes:
    """Commits to every request of a block, its client's signature included."""
    return digest_of(tuple((r.client_id, r.request_number, r.operation, r.transfers,
                            r.signature) for r in requests))  # fmt: skip


# ------------------------------------------------------------------ client side


OP_TRANSFERS = 0  # create_transfers: the payload is canonical 128-byte transfer records
OP_SET_LIMITS = 1  # replicated configuration: 128-byte amount-limit records (finality.gate)
OP_CREATE_ACCOUNTS = 2  # create_accounts: the payload is canonical 128-byte account records
OPERATIONS = (OP_TRANSFERS, OP_SET_LIMITS, OP_CREATE_ACCOUNTS)
NO_VERDICTS_HASH = hashlib.sha256(b"").digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A client's signed command: a batch of 128-byte records for ``operation``."""

    client_id: int
    request_number: int  # strictly increasing per client; replicas drop old numbers
    transfers: bytes  # 128-byte records: transfers, limits or accounts, as ``operation`` says
    signature: bytes = b""
    operation: int = OP_TRANSFERS

    def __post_init__(self) -> None:
        _nat("client_id", self.client_id)
        _nat("request_number", self.request_number)
        if self.operation not in OPERATIONS:
            raise MessageError(f"unknown operation {self.operation!r}")
        if type(self.transfers) is not bytes or not self.transfers:
            raise MessageError("transfers must be non-empty bytes")
        if len(self.transfers) % RECORD_SIZE or len(self.transfers) > (
            BATCH_EVENTS_MAX * RECORD_SIZE
        ):
            raise MessageError("transfers must be 1..8189 records of 128 bytes")
        _signature(self.signature)

    @property
    def key(self) -> tuple[int, int]:
        return (self.client_id, self.request_number)

    @property
    def events(self) -> int:
        return len(self.transfers) // RECORD_SIZE


class Finality(IntEnum):
    """How final an answer is (DESIGN 3.4).  Higher is stronger."""

    PROVISIONAL = 1  # committed by a fallback (Raft) majority; may still be rolled back
    FINAL = 2  # a commit certificate of q signed ACCEPTs; verifiable offline
    ANCHORED = 3  # its checkpoint is anchored (the audit-chain issue); not reachable yet


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A replica's answer: the block's header, the results table and how final they are.

    A FINAL answer carries the block's commit certificate and stands alone; a
    PROVISIONAL one carries none (a client trusts it on f + 1 matching answers).
    """

    replica_id: int
    client_id: int
    request_number: int
    header: BlockHeader
    certificate: Certificate | None
    results: tuple[tuple[int, int, bytes], ...]  # (client, request, result codes u8 each)
    level: Finality = Finality.FINAL

    def __post_init__(self) -> None:
        _nat("replica_id", self.replica_id)
        _nat("client_id", self.client_id)
        _nat("request_number", self.request_number)
        _instance("header", self.header, BlockHeader)
        _instance("level", self.level, Finality)
        if self.level == Finality.ANCHORED:
            raise MessageError("ANCHORED answers do not exist until the audit chain is anchored")
        if (self.certificate is None) != (self.level == Finality.PROVISIONAL):
            raise MessageError("a FINAL answer carries a certificate; a PROVISIONAL one none")
        _instance("certificate", self.certificate, (Certificate, type(None)))
        _tuple_of("results", self.results, tuple, REQUESTS_PER_BLOCK_MAX)
        for entry in self.results:
            if len(entry) != 3 or not isinstance(entry[2], bytes):
                raise MessageError("results entries are (client, request number, codes)")


# ------------------------------------------------------------------------ blocks


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockHeader:
    height: int
    parent_hash: bytes
    timestamp: int  # the first event's ledger timestamp, stamped by the leader
    merkle_root: bytes  # RFC 9162 over the block's transfer records
    log_size: int  # transfer records in all blocks up to and including this one
    body_hash: bytes  # ``body_hash(requests)``: ids, numbers, records and signatures
    results_hash: bytes  # commits to every event's result code
    state_hash: bytes  # the ledger's state hash after applying this block
    # The fallback term whose leader built the block, 0 for a block built in BFT mode.
    # Execution depends on it (the provisional exposure limit applies), so it is signed.
    fallback_term: int = 0
    verdicts_hash: bytes = NO_VERDICTS_HASH  # SHA-256 of the block's agent verdicts

    def __post_init__(self) -> None:
        _nat("height", self.height)
        _nat("fallback_term", self.fallback_term)
        _digest("verdicts_hash", self.verdicts_hash)
        _nat("timestamp", self.timestamp)
        _nat("log_size", self.log_size)
        for name in ("parent_hash", "merkle_root", "body_hash", "results_hash", "state_hash"):
            _digest(name, getattr(self, name))

    @property
    def digest(self) -> bytes:
        # Asked for again and again (chaining, votes, certificates): remember recent
        # ones.  A header is immutable and hashes by value, so the memo cannot go stale.
        known = _HEADER_DIGESTS.get(self)
        if known is None:
            known = digest_of(self)
            if len(_HEADER_DIGESTS) >= _HEADER_DIGESTS_MAX:
                _HEADER_DIGESTS.clear()
            _HEADER_DIGESTS[self] = known
        return known


_HEADER_DIGESTS: dict[BlockHeader, bytes] = {}
_HEADER_DIGESTS_MAX = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    header: BlockHeader
    requests: tuple[Request, ...]
    # The agent gate's non-ALLOW verdicts (finality.gate.encode_verdicts), so anyone
    # can re-derive each decision; the header's verdicts_hash commits to them.
    verdicts: bytes = b""

    def __post_init__(self) -> None:
        _instance("header", self.header, BlockHeader)
        _tuple_of("requests", self.requests, Request, REQUESTS_PER_BLOCK_MAX)
        _instance("verdicts", self.verdicts, bytes)

    @property
    def digest(self) -> bytes:
        return self.header.digest

    @property
    def events(self) -> int:
        return sum(r.events for r in self.requests)

    def canonical_stand_in(self) -> BlockHeader:
        """Signatures cover the header; its body hash covers the requests."""
        return self.header


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    """q signed ACCEPTs for one (regency, height, digest): proof that a block was decided."""

    regency: int
    height: int
    digest: bytes
    signatures: tuple[tuple[int, bytes], ...]  # (replica id, signature over the Accept)

    def __post_init__(self) -> None:
        _nat("regency", self.regency)
        _nat("height", self.height)
        _digest("digest", self.digest)
        if type(self.signatures) is not tuple or len(self.signatures) > CERTIFICATE_SIGNERS_MAX:
            raise MessageError("signatures must be a bounded tuple")
        for entry in self.signatures:
            if type(entry) is not tuple or len(entry) != 2:
                raise MessageError("each signature entry is (replica id, signature)")
            _nat("signer", entry[0])
            _signature(entry[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class DecidedBlock:
    block: Block
    certificate: Certificate

    def __post_init__(self) -> None:
        _instance("block", self.block, Block)
        _instance("certificate", self.certificate, Certificate)


# ------------------------------------------------------------- replica to replica


@dataclass(frozen=True, slots=True, kw_only=True)
class Propose:
    sender: int
    regency: int
    height: int
    block: Block
    signature: bytes = b""

    def __post_init__(self) -> None:
        _instance("block", self.block, Block)
        _nat("sender", self.sender)
        _nat("regency", self.regency)
        _nat("height", self.height)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Vote:
    """A signed vote for one digest at one (regency, height)."""

    sender: int
    regency: int
    height: int
    digest: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _nat("regency", self.regency)
        _nat("height", self.height)
        _digest("digest", self.digest)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class Write(_Vote):
    """First-phase vote: this replica holds the leader's block and backs it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept(_Vote):
    """Second-phase vote, sent on q matching WRITEs; q of these decide the block."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """Vote to leave the current regency for ``regency``."""

    sender: int
    regency: int
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _nat("regency", self.regency)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegencyProof:
    """The q signed STOPs that installed ``regency``, re-sent so a stranded peer can follow."""

    sender: int
    regency: int
    stops: tuple[Stop, ...]
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _nat("regency", self.regency)
        _tuple_of("stops", self.stops, Stop, CERTIFICATE_SIGNERS_MAX)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteProof:
    """q signed WRITEs for one block in one regency: the block may have been decided."""

    regency: int
    height: int
    block: Block
    writes: tuple[Write, ...]

    def __post_init__(self) -> None:
        _nat("regency", self.regency)
        _nat("height", self.height)
        _instance("block", self.block, Block)
        _tuple_of("writes", self.writes, Write, CERTIFICATE_SIGNERS_MAX)


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenBlock:
    """The block a replica WROTE in its highest regency at the open height, as its
    STOP-DATA reports it.  With no write proof and no fallback report in a SYNC's
    STOP-DATAs, the highest of these must be re-proposed (DESIGN 3.3): some quorum
    may have WRITTEN it, and a write proof for it held outside those STOP-DATAs
    would otherwise roll a provisional commit of another block back."""

    regency: int
    block: Block

    def __post_init__(self) -> None:
        _nat("regency", self.regency)
        _instance("block", self.block, Block)


# ------------------------------------------------------------- fallback (Raft) mode

FALLBACK_ENTRIES_MAX = 256  # a provisional suffix is bounded (the exposure limit bounds value)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    """One block of a replica's fallback log.  ``term`` is the fallback term whose
    leader appended it, or, for a ``tentative`` entry, the BFT regency in which a
    replica voted for the block before falling back (DESIGN 3.3)."""

    term: int
    block: Block
    tentative: bool = False

    def __post_init__(self) -> None:
        _nat("term", self.term)
        _instance("block", self.block, Block)
        _instance("tentative", self.tentative, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestVote:
    sender: int
    term: int
    final_height: int  # the candidate's last BFT-final height
    last_height: int  # the candidate's last log height (final_height when the log is empty)
    last_term: int  # the term of that entry (0 for the BFT-final block itself)
    chain: tuple[bytes, ...] = ()  # digests of its log above final_height, in order
    pre: bool = False  # a pre-vote: "would you vote for me in ``term``?" (nothing changes)
    signature: bytes = b""

    def __post_init__(self) -> None:
        for name in ("sender", "term", "final_height", "last_height", "last_term"):
            _nat(name, getattr(self, name))
        _tuple_of("chain", self.chain, bytes, FALLBACK_ENTRIES_MAX)
        _instance("pre", self.pre, bool)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote:
    sender: int
    term: int
    candidate: int
    granted: bool
    pre: bool = False  # the answer to a pre-vote; never part of an election proof
    signature: bytes = b""

    def __post_init__(self) -> None:
        for name in ("sender", "term", "candidate"):
            _nat(name, getattr(self, name))
        _instance("granted", self.granted, bool)
        _instance("pre", self.pre, bool)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class ElectionProof:
    """A majority of signed votes for ``candidate`` in ``term``: it led that term."""

    term: int
    candidate: int
    votes: tuple[Vote, ...]

    def __post_init__(self) -> None:
        _nat("term", self.term)
        _nat("candidate", self.candidate)
        _tuple_of("votes", self.votes, Vote, CERTIFICATE_SIGNERS_MAX)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntries:
    sender: int
    term: int
    prev_height: int
    prev_digest: bytes  # the block at prev_height (hash-chained: a match is a prefix match)
    entries: tuple[LogEntry, ...]
    commit_height: int
    election: ElectionProof  # why followers may believe the sender leads ``term``
    signature: bytes = b""

    def __post_init__(self) -> None:
        for name in ("sender", "term", "prev_height", "commit_height"):
            _nat(name, getattr(self, name))
        _digest("prev_digest", self.prev_digest)
        _tuple_of("entries", self.entries, LogEntry, FALLBACK_ENTRIES_MAX)
        _instance("election", self.election, ElectionProof)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendAck:
    sender: int
    term: int
    success: bool
    match_height: int  # on success the last height it holds; otherwise a hint where to retry
    signature: bytes = b""

    def __post_init__(self) -> None:
        for name in ("sender", "term", "match_height"):
            _nat(name, getattr(self, name))
        _instance("success", self.success, bool)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class Presence:
    """Reachability gossip while in fallback: whom the sender heard from lately."""

    sender: int
    term: int
    heard: tuple[int, ...]
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _nat("term", self.term)
        _tuple_of("heard", self.heard, int, CERTIFICATE_SIGNERS_MAX)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackReport:
    """A replica's fallback log above its BFT-final height, for re-certification.

    ``election`` proves that ``term`` (the term of the last entry) was led by a
    majority-elected replica, so a Byzantine replica cannot invent a suffix of a
    term nobody voted for; the blocks themselves are re-executed by everyone.
    """

    term: int
    election: ElectionProof
    entries: tuple[LogEntry, ...]

    def __post_init__(self) -> None:
        _nat("term", self.term)
        _instance("election", self.election, ElectionProof)
        _tuple_of("entries", self.entries, LogEntry, FALLBACK_ENTRIES_MAX)


@dataclass(frozen=True, slots=True, kw_only=True)
class StopData:
    """What a replica knows when a regency begins: its last decision and best write proof."""

    sender: int
    regency: int
    decided_height: int
    decided_header: BlockHeader  # the header at decided_height ...
    decided_certificate: Certificate | None  # ... and its certificate (None at genesis)
    proof: WriteProof | None  # for decided_height + 1, the highest-regency proof it holds
    fallback: FallbackReport | None = None  # its provisional suffix, after a fallback episode
    written: WrittenBlock | None = None  # for decided_height + 1, its highest-regency WRITE
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _nat("regency", self.regency)
        _nat("decided_height", self.decided_height)
        _instance("decided_header", self.decided_header, BlockHeader)
        _instance("decided_certificate", self.decided_certificate, (Certificate, type(None)))
        _instance("proof", self.proof, (WriteProof, type(None)))
        _instance("fallback", self.fallback, (FallbackReport, type(None)))
        _instance("written", self.written, (WrittenBlock, type(None)))
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync:
    """The new leader's proposal for a regency, justified by q STOP-DATAs."""

    sender: int
    regency: int
    height: int
    block: Block
    stop_data: tuple[StopData, ...]
    suffix: FallbackReport | None = None  # the provisional suffix it re-certifies, if any
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _nat("regency", self.regency)
        _nat("height", self.height)
        _instance("block", self.block, Block)
        _tuple_of("stop_data", self.stop_data, StopData, CERTIFICATE_SIGNERS_MAX)
        _instance("suffix", self.suffix, (FallbackReport, type(None)))
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointVote:
    sender: int
    height: int
    state_hash: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _nat("height", self.height)
        _digest("state_hash", self.state_hash)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchBlocks:
    """Ask a peer for decided blocks after ``after_height`` (catch-up)."""

    sender: int
    after_height: int
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _nat("after_height", self.after_height)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class StableCheckpoint:
    """A snapshot at ``height`` whose state hash q replicas signed."""

    height: int
    header: BlockHeader  # the header of the block at ``height``
    certificate: Certificate  # that header was decided
    snapshot: bytes
    votes: tuple[CheckpointVote, ...]

    def __post_init__(self) -> None:
        _nat("height", self.height)
        _instance("header", self.header, BlockHeader)
        _instance("certificate", self.certificate, Certificate)
        _instance("snapshot", self.snapshot, bytes)
        _tuple_of("votes", self.votes, CheckpointVote, CERTIFICATE_SIGNERS_MAX)


@dataclass(frozen=True, slots=True, kw_only=True)
class Blocks:
    """Catch-up answer: optionally a stable checkpoint, then decided blocks in order."""

    sender: int
    checkpoint: StableCheckpoint | None
    blocks: tuple[DecidedBlock, ...]
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _instance("checkpoint", self.checkpoint, (StableCheckpoint, type(None)))
        _tuple_of("blocks", self.blocks, DecidedBlock, BLOCKS_PER_ANSWER_MAX)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchChunk:
    """Ask a peer for the part of its checkpoint snapshot from ``offset`` on (chunked
    state transfer: a snapshot larger than one message travels in ``SnapshotChunk``s)."""

    sender: int
    checkpoint_height: int
    offset: int
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _nat("checkpoint_height", self.checkpoint_height)
        _nat("offset", self.offset)
        _signature(self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotChunk:
    """Catch-up answer for a checkpoint too large for one message: the stable checkpoint
    without its snapshot (its ``snapshot`` is empty), the snapshot's size, and the bytes
    ``data`` found at ``offset`` in it.  Nothing here is certified but the checkpoint's
    state hash: the receiver trusts the assembled snapshot only once it restores to it."""

    sender: int
    checkpoint: StableCheckpoint
    total: int
    offset: int
    data: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _nat("sender", self.sender)
        _instance("checkpoint", self.checkpoint, StableCheckpoint)
        _nat("total", self.total)
        _nat("offset", self.offset)
        _instance("data", self.data, bytes)
        _signature(self.signature)


# ---------------------------------------------------------------- driver inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class Persisted:
    """The driver's word that every persist record up to ``upto`` is durable."""

    upto: int


PeerMessage: TypeAlias = (
    Propose
    | Write
    | Accept
    | Stop
    | RegencyProof
    | StopData
    | Sync
    | CheckpointVote
    | FetchBlocks
    | Blocks
    | FetchChunk
    | SnapshotChunk
)
FallbackMessage: TypeAlias = RequestVote | Vote | AppendEntries | AppendAck | Presence
BftInput: TypeAlias = PeerMessage | Request | Persisted
Message: TypeAlias = PeerMessage | FallbackMessage | Request | Persisted
