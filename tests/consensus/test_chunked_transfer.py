"""Chunked state transfer: a checkpoint snapshot larger than one chunk reaches a lagging
replica in ``SnapshotChunk``s, and a bad chunk is refused without changing anything.

The chunk size is shrunk to a few hundred bytes so that the small ledgers of these runs
already need several chunks; the node sends 4 MiB chunks (``Tuning.snapshot_chunk_bytes``).
"""

from __future__ import annotations

import dataclasses

import pytest

from consensus.messages import FetchChunk, SnapshotChunk
from sim.script import ScriptedCluster
from sim.simulation import SimConfig, Simulation

CHUNK = 256


def _lagging_cluster(chunk: int = CHUNK, transfers: int = 5) -> ScriptedCluster:
    """r3 is down while r0..r2 decide 7 blocks of ``transfers`` (stable checkpoints at
    h2, h4, h6), then restarts from its empty disk: it can catch up only by state
    transfer, in chunks of ``chunk`` bytes."""
    cluster = ScriptedCluster(checkpoint_interval=2, snapshot_chunk_bytes=chunk)
    cluster.run("crash 3")
    for _ in range(7):
        cluster.run(f"request client=0 transfers={transfers}")
        for _ in range(5):
            cluster.run("stabilize")
            cluster.run("tick")
    core = cluster.sim.core
    assert [core(i).decided_height for i in range(4)] == [7, 7, 7, 0]
    stable = core(0).base_checkpoint
    assert stable is not None and stable.height == 6
    assert len(stable.snapshot) > 4 * chunk  # several chunks
    cluster.run("restart 3")
    return cluster


def _run_until_caught_up(cluster: ScriptedCluster, ticks: int = 400) -> list[str]:
    core = cluster.sim.core
    lines: list[str] = []
    for _ in range(ticks):
        lines += cluster.run("tick").splitlines()
        lines += cluster.run("stabilize").splitlines()
        if core(3).decided_height == core(0).decided_height:
            break
    return lines


def _intercept(cluster: ScriptedCluster, ticks: int = 200) -> SnapshotChunk:
    """Deliver in order until r0's first SnapshotChunk for r3 comes up; take it."""
    for _ in range(ticks):
        cluster.run("tick")
        while cluster.queue:
            source, target, message = cluster.queue.pop(0)
            if isinstance(message, SnapshotChunk) and (source, target) == ("r0", "r3"):
                return message
            cluster._deliver_one(source, target, message)
    raise AssertionError("r0 sent r3 no snapshot chunk")


def test_a_lagging_replica_installs_a_snapshot_sent_in_chunks() -> None:
    cluster = _lagging_cluster()
    lines = _run_until_caught_up(cluster)
    core = cluster.sim.core
    assert core(3).decided_height == core(0).decided_height == 7
    assert core(3).sm.state_hash() == core(0).sm.state_hash()
    assert core(3).base_height == 6  # from the checkpoint, not by replaying blocks 1..6
    assert any(line.startswith("r3 snapshot h6 from") for line in lines), lines
    assert core(3).assembly is None and core(3).evidence_count == 0


def test_a_forged_chunk_is_refused_and_an_honest_peer_still_serves_the_snapshot() -> None:
    cluster = _lagging_cluster()
    core = cluster.sim.core
    first = _intercept(cluster)
    assert first.offset == 0 and first.total > len(first.data) == CHUNK
    # r0 turns Byzantine: it serves a snapshot of the right length but wrong bytes.
    forged_total = first.total
    for offset in range(0, forged_total, CHUNK):
        data = bytes([0xA5]) * min(CHUNK, forged_total - offset)
        forged = cluster.signed(dataclasses.replace(first, offset=offset, data=data))
        core(3).step(forged)
    assert core(3).decided_height == 0  # nothing installed
    assert core(3).assembly is None
    assert any("checkpoint snapshot rejected" in e for e in core(3).evidence)
    # The other replicas are honest: r3 fetches from them next and catches up.
    cluster.run("crash 0")
    lines = _run_until_caught_up(cluster, ticks=600)
    assert core(3).decided_height == core(1).decided_height >= 7
    assert core(3).sm.state_hash() == core(1).sm.state_hash()
    assert any(line.startswith("r3 snapshot h6 from") for line in lines)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"data": b""}, "malformed snapshot chunk"),
        ({"data": b"\0"}, "malformed snapshot chunk"),  # a drip: less than a chunk, not the end
        ({"offset": 1 << 20}, "malformed snapshot chunk"),  # past the end it claims
        ({"checkpoint_snapshot": b"x"}, "malformed snapshot chunk"),  # a manifest with bytes
        ({"checkpoint_votes": ()}, "forged checkpoint"),  # no quorum signed its state
    ],
)
def test_a_malformed_first_chunk_is_blamed_and_starts_nothing(
    change: dict[str, object], problem: str
) -> None:
    cluster = _lagging_cluster()
    core = cluster.sim.core
    first = _intercept(cluster)
    fields = {k: v for k, v in change.items() if not k.startswith("checkpoint_")}
    manifest = {k.removeprefix("checkpoint_"): v for k, v in change.items() if k not in fields}
    bad = dataclasses.replace(
        first, checkpoint=dataclasses.replace(first.checkpoint, **manifest), **fields
    )
    core(3).step(cluster.signed(bad))
    assert core(3).assembly is None and core(3).decided_height == 0
    assert any(problem in e for e in core(3).evidence), core(3).evidence


def test_a_snapshot_over_our_bound_is_not_taken_and_no_one_is_blamed() -> None:
    cluster = _lagging_cluster()
    core = cluster.sim.core
    first = _intercept(cluster)
    huge = cluster.signed(dataclasses.replace(first, total=(1 << 30) + 1))
    core(3).step(huge)
    assert core(3).assembly is None and core(3).evidence_count == 0


def test_an_unasked_first_chunk_starts_nothing() -> None:
    cluster = _lagging_cluster()
    core = cluster.sim.core
    first = _intercept(cluster)
    from_r2 = cluster.signed(dataclasses.replace(first, sender=2))  # r3 asked r0, not r2
    core(3).step(from_r2)
    assert core(3).assembly is None


def test_catch_up_completes_while_the_cluster_keeps_deciding() -> None:
    """The transfer takes longer than a checkpoint interval: the checkpoint it started
    with stays servable, and so do the blocks above it."""
    cluster = _lagging_cluster(chunk=4096, transfers=100)
    core = cluster.sim.core
    assert len(core(0).base_checkpoint.snapshot) > 10 * 4096  # over ten chunks
    for tick in range(3000):
        if tick % 10 == 0:
            cluster.run("request client=0 transfers=1")  # a block every few ticks
        cluster.run("stabilize")
        cluster.run("tick")
        if core(3).decided_height == core(0).decided_height:
            break
    assert core(3).decided_height == core(0).decided_height > 7
    assert core(3).sm.state_hash() == core(0).sm.state_hash()
    assert core(3).evidence_count == 0


def test_a_peer_that_starts_a_snapshot_and_stalls_is_blamed_and_another_serves_it() -> None:
    """r0 turns Byzantine: it opens a transfer of a 1 MiB snapshot (well-formed first
    chunk), never sends more and stops voting.  r3 must give it up, blame it, fetch from
    an honest peer and join r1 and r2, the quorum without r0."""
    cluster = _lagging_cluster()
    core = cluster.sim.core
    first = _intercept(cluster)
    core(3).step(cluster.signed(dataclasses.replace(first, total=1 << 20)))
    assert core(3).assembly is not None and core(3).assembly.peer == 0
    cluster.run("crash 0")
    for tick in range(3000):
        if tick % 20 == 0:
            cluster.run("request client=0 transfers=1")
        cluster.run("stabilize")
        cluster.run("tick")
        if core(3).decided_height > 7 and core(3).decided_height == core(1).decided_height:
            break
    assert core(3).decided_height == core(1).decided_height > 7
    assert any("snapshot h6 too slow" in e for e in core(3).evidence), core(3).evidence


def test_stale_votes_do_not_buy_more_than_one_chunk_per_tick() -> None:
    """Each stale-height vote makes a peer push a catch-up: chunks share the budget."""
    cluster = _lagging_cluster()
    r0 = cluster.sim.core(0)
    from consensus.messages import Write

    sent = []
    for height in range(1, 7):
        vote = cluster.signed(Write(sender=3, regency=0, height=height, digest=bytes(32)))
        sent += [s.message for s in r0.step(vote).send]
    ask = cluster.signed(FetchChunk(sender=3, checkpoint_height=r0.base_height, offset=CHUNK))
    sent += [s.message for s in r0.step(ask).send]
    assert sum(isinstance(m, SnapshotChunk) for m in sent) == 1


def test_chunks_out_of_order_or_from_another_peer_are_ignored() -> None:
    cluster = _lagging_cluster()
    core = cluster.sim.core
    first = _intercept(cluster)
    core(3).step(first)
    assembly = core(3).assembly
    assert assembly is not None and len(assembly.data) == CHUNK and assembly.peer == 0
    skipped = cluster.signed(dataclasses.replace(first, offset=2 * CHUNK))
    core(3).step(skipped)
    from_r1 = cluster.signed(dataclasses.replace(first, sender=1, offset=CHUNK))
    core(3).step(from_r1)
    assert len(assembly.data) == CHUNK  # neither was taken
    assert core(3).evidence_count == 0  # a resend or another peer's answer is no offence


def test_a_peer_answers_one_chunk_per_tick_and_holds_the_rest() -> None:
    cluster = _lagging_cluster()
    r0 = cluster.sim.core(0)
    height = r0.base_height
    asks = [r0.step(cluster.signed(FetchChunk(sender=3, checkpoint_height=height, offset=o)))
            for o in (0, CHUNK, 2 * CHUNK)]  # fmt: skip
    sent = [s.message for effects in asks for s in effects.send]
    assert [type(m) for m in sent] == [SnapshotChunk]  # the first; the latest ask is held
    later = [s.message for s in r0.tick().send if isinstance(s.message, SnapshotChunk)]
    assert [m.offset for m in later] == [2 * CHUNK]


def test_a_simulated_crash_across_checkpoints_catches_up_in_chunks() -> None:
    result = Simulation(
        SimConfig(
            seed=1, scenario="crash-restart-catch-up", snapshot_chunk_bytes=512, record_trace=True
        )
    ).run()
    assert result.ok, result.failures
    assert any(line.startswith("r3 snapshot h") for line in result.trace)
    assert result.checks["state hashes"] == "ok"
