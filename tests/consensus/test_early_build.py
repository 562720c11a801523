"""The leader executes its next block while the followers execute its proposal.

``BftReplica._maybe_build_next`` runs once the leader's WRITE for its proposal is
durable (so the PROPOSE has left); ``_take_next_block`` proposes the block the moment
the proposal is decided, if it still sits on the decided chain and the executor still
holds it.  These runs check that such blocks are proposed and decided as built, never
on top of a checkpoint height, that every replica agrees (the simulator's checkers:
agreement, validity, state hashes, exactly once), and that a block built on a proposal
a regency change replaced is never proposed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from consensus.bft.replica import BftReplica
from consensus.messages import Block, DecidedBlock
from sim.simulation import SimConfig, Simulation


@dataclass
class Record:
    proposed: list[Block] = field(default_factory=list)  # early blocks proposed
    decided: dict[int, set[bytes]] = field(default_factory=dict)  # height -> digests


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch) -> Record:
    seen = Record()
    take, apply = BftReplica._take_next_block, BftReplica._apply_decided

    def taking(self: BftReplica) -> Block | None:
        block = take(self)
        if block is not None:
            seen.proposed.append(block)
        return block

    def applying(self: BftReplica, decided: DecidedBlock, replaying: bool) -> None:
        block = decided.block
        seen.decided.setdefault(block.header.height, set()).add(block.digest)
        apply(self, decided, replaying)

    monkeypatch.setattr(BftReplica, "_take_next_block", taking)
    monkeypatch.setattr(BftReplica, "_apply_decided", applying)
    return seen


@pytest.mark.parametrize("scenario", ["happy", "leader-crash", "lossy-network"])
def test_early_blocks_are_proposed_and_decided_as_built(scenario: str, record: Record) -> None:
    sim = Simulation(SimConfig(seed=1, scenario=scenario, record_trace=True))
    result = sim.run()
    assert result.ok, result.failures
    assert len(record.proposed) >= 5, "the leader never proposed a block it built early"
    interval = sim.config.checkpoint_interval
    for block in record.proposed:
        assert (block.header.height - 1) % interval != 0, "built on a checkpoint's proposal"
    assert all(len(digests) == 1 for digests in record.decided.values())  # agreement
    decided = [b for b in record.proposed if block_decided(record, b)]
    assert len(decided) >= len(record.proposed) * 3 // 4, "early blocks mostly wasted"
    assert any(" early, " in line for line in result.trace)


def block_decided(record: Record, block: Block) -> bool:
    return record.decided.get(block.header.height) == {block.digest}


def test_a_block_built_on_a_replaced_proposal_is_never_proposed(record: Record) -> None:
    sim = Simulation(SimConfig(seed=2, scenario="leader-crash"))
    result = sim.run()
    assert result.ok, result.failures
    assert result.regency_changes >= 1
    assert record.proposed
    for block in record.proposed:
        parents = record.decided.get(block.header.height - 1, set())
        assert parents == {block.header.parent_hash}, "proposed on a chain it does not fit"
