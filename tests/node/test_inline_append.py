"""Which WAL batches the driver appends on the loop's own thread (``_small``): votes and
blocks of a few events, whose write and fdatasync take about a millisecond, less than a
hand-off to a worker thread and back; big blocks and checkpoints go to a worker."""

from __future__ import annotations

from consensus.effects import DecidedRecord, ProofRecord, RegencyRecord, VoteRecord
from consensus.messages import DecidedBlock, WriteProof
from node.driver import INLINE_APPEND_EVENTS_MAX, _small
from sim.script import ScriptedCluster


def _decided(transfers: int) -> DecidedBlock:
    cluster = ScriptedCluster()
    cluster.run(f"request client=0 transfers={transfers}")
    cluster.run("stabilize")
    return cluster.sim.core(0).log[1]


def test_votes_and_small_blocks_are_appended_inline_big_blocks_are_not() -> None:
    small, big = _decided(10), _decided(INLINE_APPEND_EVENTS_MAX + 1)
    vote = VoteRecord(kind="accept", regency=0, height=1, digest=bytes(32))
    assert _small([RegencyRecord(regency=1), vote])
    for decided, inline in ((small, True), (big, False)):
        block = decided.block
        write = VoteRecord(kind="write", regency=0, height=1, digest=block.digest, block=block)
        proof = ProofRecord(proof=WriteProof(regency=0, height=1, block=block, writes=()))
        assert _small([write]) is inline
        assert _small([proof]) is inline
        assert _small([DecidedRecord(decided=decided)]) is inline
    # Several small blocks in one batch add up.
    many = [DecidedRecord(decided=small)] * (INLINE_APPEND_EVENTS_MAX // 10 + 1)
    assert not _small(many)
