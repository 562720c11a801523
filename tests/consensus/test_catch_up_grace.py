"""Catch-up answers to a peer that is only late, the body-check memo, and a lone STOP.

In the normal case of n = 4 the fourth replica's votes arrive after the other three
decided: it is late, not lost, and decides the block itself a moment later.  Sending it
the whole block then is work for nothing on both sides (a benchmark follower spent a
fifth of its time on such answers), so a peer one block behind gets the block only
``catch_up_grace_ticks`` after we decided it.
"""

from __future__ import annotations

import dataclasses

from consensus.messages import Block, Blocks, DecidedBlock, FetchBlocks, Stop
from sim.script import ScriptedCluster


def _sent(cluster: ScriptedCluster, source: int, kind: type) -> list[object]:
    return [m for s, _, m in cluster.queue if s == f"r{source}" and isinstance(m, kind)]


def _decide_with_r3_late(cluster: ScriptedCluster) -> None:
    """r0..r2 decide h1; r3 has the proposal and the WRITEs but no ACCEPT yet."""
    cluster.run("request client=0 transfers=2")
    cluster.run("deliver type=Request")
    cluster.run("deliver type=Propose")
    cluster.run("deliver type=Write")
    late = [i for i in cluster.queue if i[1] == "r3" or i[0] == "r3"]
    cluster.queue = [i for i in cluster.queue if i not in late]
    cluster.run("stabilize")
    assert [cluster.sim.core(i).decided_height for i in range(4)] == [1, 1, 1, 0]
    cluster.queue = late


def test_a_late_peer_is_not_sent_the_block_it_is_deciding() -> None:
    cluster = ScriptedCluster()
    _decide_with_r3_late(cluster)
    cluster.run("deliver from=3")  # r3's votes for h1 reach replicas already at h2
    assert not [m for r in range(3) for m in _sent(cluster, r, Blocks)]
    cluster.run("stabilize")  # the ACCEPTs reach r3: it decides h1 by itself
    assert cluster.sim.core(3).decided_height == 1


def test_a_peer_still_behind_after_the_grace_gets_the_block() -> None:
    cluster = ScriptedCluster()
    _decide_with_r3_late(cluster)
    cluster.queue = [i for i in cluster.queue if i[1] != "r3"]  # r3's ACCEPTs are lost
    r0 = cluster.sim.core(0)
    grace = r0.cfg.catch_up_grace_ticks
    cluster.run("deliver from=3")
    assert not _sent(cluster, 0, Blocks)
    cluster.run(f"tick count={grace}")  # r3 keeps re-sending its votes meanwhile
    cluster.queue = [i for i in cluster.queue if i[0] == "r3" and i[1] == "r0"]
    assert cluster.queue, "r3 re-sends its votes while undecided"
    cluster.run("deliver")
    assert _sent(cluster, 0, Blocks), "a peer stuck one block behind is pushed the block"
    cluster.run("stabilize")
    assert cluster.sim.core(3).decided_height == 1


def test_a_probe_from_a_late_peer_is_answered_only_after_the_grace() -> None:
    cluster = ScriptedCluster()
    _decide_with_r3_late(cluster)
    cluster.queue.clear()
    r0 = cluster.sim.core(0)
    probe = cluster.signed(FetchBlocks(sender=3, after_height=0))
    cluster._handle(0, cluster.sim.replicas[0].step(probe))
    assert not _sent(cluster, 0, Blocks)
    cluster.run(f"tick count={r0.cfg.catch_up_grace_ticks} replica=0")
    cluster.queue.clear()
    cluster._handle(0, cluster.sim.replicas[0].step(probe))
    assert _sent(cluster, 0, Blocks)


def test_a_forged_body_under_the_header_already_checked_is_still_refused() -> None:
    """The memo of the last body checked must compare the body, not only the digest."""
    cluster = ScriptedCluster()
    _decide_with_r3_late(cluster)
    r3 = cluster.sim.core(3)
    good = cluster.sim.core(0).log[1]
    assert r3.body_checked is not None and r3.body_checked.digest == good.block.digest
    forged = tuple(
        dataclasses.replace(r, request_number=10**12, signature=b"") for r in good.block.requests
    )
    bad = DecidedBlock(
        block=Block(header=good.block.header, requests=forged, verdicts=good.block.verdicts),
        certificate=good.certificate,
    )
    effects = r3.step(cluster.signed(Blocks(sender=1, checkpoint=None, blocks=(bad,))))
    assert r3.decided_height == 0 and not effects.persist
    assert "forged body" in "\n".join(r3.evidence)
    r3.step(cluster.signed(Blocks(sender=1, checkpoint=None, blocks=(good,))))
    assert r3.decided_height == 1


def test_a_lone_stop_is_dropped_once_the_regency_decides() -> None:
    """A replica whose STOP nobody joined, while its regency goes on deciding, must not
    climb regencies alone and repeat its STOPs forever."""
    cluster = ScriptedCluster()
    r3 = cluster.sim.core(3)
    cluster._handle(3, r3.request_regency_change())  # as the mode controller does
    assert r3.stop_sent == 1 and _sent(cluster, 3, Stop)
    cluster.run("stabilize")  # one STOP of f + 1: nobody joins
    assert {cluster.sim.core(i).regency for i in range(4)} == {0}
    cluster.run("request client=0 transfers=2")
    cluster.run("stabilize")
    assert r3.decided_height == 1
    assert r3.stop_sent == r3.regency == 0
    cluster.run(f"tick count={4 * r3.cfg.regency_timeout_ticks} replica=3")
    assert not _sent(cluster, 3, Stop)
    assert r3.regency == 0
