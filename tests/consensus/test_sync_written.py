"""A SYNC with no write proof re-proposes the block its STOP-DATAs report WRITTEN.

The S2 corner that TLC found in ``proofs/Fallback.tla`` (model
``mutant_fallback_sync_ignores_writes``): at regency 0 replicas 0, 1 and 2 WRITE
block A and only replica 0 collects the write proof.  Replicas 1, 2 and 3 move to
regency 1 without it.  Before the fix the new leader, seeing no proof, proposed a
block of its own; a fallback majority could then commit that block provisionally
and the heal's SYNC, seeing replica 0's proof, roll it back.  Now the leader must
re-propose A, which replicas 1 and 2 report WRITTEN, and followers refuse a SYNC
that does not.
"""

from __future__ import annotations

import dataclasses

from consensus.messages import Block, StopData, Sync, WrittenBlock
from sim.script import ScriptedCluster


def _proof_held_by_r0_only(cluster: ScriptedCluster) -> Block:
    """r0, r1, r2 WRITE the regency-0 block; only r0 hears the WRITEs.  Returns the block."""
    cluster.run("request client=0 transfers=2")
    cluster.run("deliver type=Request")
    cluster.run("drop type=Propose to=3")
    cluster.run("deliver type=Propose")
    cluster.run("deliver type=Write to=0")
    cluster.queue.clear()
    r0 = cluster.sim.core(0)
    assert r0.best_proof is not None and r0.best_proof.regency == 0
    for replica in (1, 2):
        assert cluster.sim.core(replica).best_proof is None
    return r0.best_proof.block


def _stop_data_at_r1(cluster: ScriptedCluster) -> list[StopData]:
    """r0 silent; r1, r2, r3 time out into regency 1; the STOP-DATAs r1 collects."""
    cluster.run("crash 0")
    core = cluster.sim.core
    for _ in range(2_000):
        cluster.run("tick")
        cluster.run("deliver type=Stop")
        cluster.run("deliver type=Stop")
        if all(core(i).regency >= 1 for i in (1, 2, 3)):
            break
    assert [core(i).regency for i in (1, 2, 3)] == [1, 1, 1]
    collected = [m for _, dst, m in cluster.queue if isinstance(m, StopData) and dst == "r1"]
    own = core(1).stop_data.get(1, {}).get(1)
    return [*([own] if own else []), *collected]


def test_the_new_leader_re_proposes_the_written_block_it_has_no_proof_for() -> None:
    cluster = ScriptedCluster()
    written = _proof_held_by_r0_only(cluster)
    cluster.run("crash 0")
    core = cluster.sim.core
    for _ in range(3_000):
        cluster.run("tick")
        cluster.run("stabilize")
        if all(core(i).decided_height >= 1 for i in (1, 2, 3)):
            break
    assert all(core(i).regency >= 1 for i in (1, 2, 3))
    assert [core(i).log[1].block.digest for i in (1, 2, 3)] == [written.digest] * 3
    # r0, which holds the regency-0 proof for that very block, agrees on return.
    cluster.run("restart 0")
    for _ in range(3_000):
        cluster.run("tick")
        cluster.run("stabilize")
        if core(0).decided_height >= 1:
            break
    assert core(0).log[1].block.digest == written.digest


def test_a_restart_keeps_the_written_block_of_the_open_height() -> None:
    cluster = ScriptedCluster()
    written = _proof_held_by_r0_only(cluster)
    cluster.run("crash 1")
    cluster.run("restart 1")
    kept = cluster.sim.core(1).written
    assert kept is not None and kept.regency == 0 and kept.block == written


def test_a_sync_ignoring_the_written_block_is_refused() -> None:
    cluster = ScriptedCluster()
    written = _proof_held_by_r0_only(cluster)
    stop_data = _stop_data_at_r1(cluster)
    assert len(stop_data) >= 3
    assert any(s.written and s.written.block.digest == written.digest for s in stop_data)
    cluster.queue.clear()
    r1, r2 = cluster.sim.core(1), cluster.sim.core(2)
    other = r1._build_block([])  # a block nobody WROTE
    assert other is not None and other.digest != written.digest
    lying = cluster.signed(
        Sync(sender=1, regency=1, height=1, block=other, stop_data=tuple(stop_data[:3])),
    )
    r2.step(lying)
    assert "did not re-propose the highest WRITTEN block" in "\n".join(r2.evidence)
    assert 1 not in r2.proposals  # no WRITE for it
    honest = cluster.signed(dataclasses.replace(lying, block=written, signature=b""))
    r2.step(honest)
    assert r2.proposals.get(1) == written


def test_stop_data_with_a_misplaced_written_block_is_refused() -> None:
    cluster = ScriptedCluster()
    written = _proof_held_by_r0_only(cluster)
    stop_data = _stop_data_at_r1(cluster)
    r1 = cluster.sim.core(1)
    genuine = next(s for s in stop_data if s.sender == 2)
    wrong_height = dataclasses.replace(
        written, header=dataclasses.replace(written.header, height=2)
    )
    for bad, why in (
        (WrittenBlock(regency=0, block=wrong_height), "written block for the wrong height"),
        (WrittenBlock(regency=1, block=written), "WRITE in a regency not yet over"),
    ):
        r1.stop_data.get(1, {}).pop(2, None)
        forged = cluster.signed(dataclasses.replace(genuine, written=bad, signature=b""))
        r1.step(forged)
        assert why in "\n".join(r1.evidence)
        assert 2 not in r1.stop_data.get(1, {})
