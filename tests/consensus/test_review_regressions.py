"""Regressions from an adversarial review of the replica core.

Each test replays one attack found in review, by hand, against real replicas:
the attack must now be refused with evidence, and honest replicas must stay
consistent.
"""

from __future__ import annotations

import dataclasses

from consensus.effects import DecidedRecord
from consensus.messages import (
    Accept,
    Block,
    Blocks,
    DecidedBlock,
    Propose,
    Stop,
    StopData,
    Sync,
    Write,
)
from sim.script import ScriptedCluster


def _decide(cluster: ScriptedCluster, blocks: int, without: int | None = None) -> None:
    """Decide ``blocks`` blocks; ``without`` hears nothing of them."""
    for _ in range(blocks):
        cluster.run("request client=0 transfers=2")
        for _ in range(200):
            batch = [i for i in cluster.queue if without is None or f"r{without}" not in i[:2]]
            cluster.queue = [i for i in cluster.queue if i not in batch]
            if not batch:
                break
            for item in batch:
                cluster._deliver_one(*item)
    cluster.queue.clear()


def _evidence(cluster: ScriptedCluster, replica: int) -> str:
    return "\n".join(cluster.sim.core(replica).evidence)


def test_a_leader_cannot_stand_in_for_the_replica_it_syncs() -> None:
    """SYNC carrying an unsigned STOP-DATA 'from' its receiver, hiding the receiver's proof."""
    cluster = ScriptedCluster()
    cluster.run("request client=0 transfers=2")
    cluster.run("deliver type=Request")
    cluster.queue = [i for i in cluster.queue if i[1] != "r3"]
    cluster.run("deliver type=Propose")
    cluster.queue = [i for i in cluster.queue if i[1] != "r3"]
    cluster.run("deliver type=Write")  # r0, r1, r2 now hold write proofs for block A
    cluster.queue.clear()
    r0 = cluster.sim.core(0)
    assert r0.best_proof is not None
    genesis = cluster.sim.genesis.header
    leader_entry = cluster.signed(
        StopData(
            sender=1,
            regency=1,
            decided_height=0,
            decided_header=genesis,
            decided_certificate=None,
            proof=None,
        ),
    )
    stand_in = StopData(
        sender=0,
        regency=1,
        decided_height=0,
        decided_header=genesis,
        decided_certificate=None,
        proof=None,
    )  # not signed by r0
    third = cluster.signed(dataclasses.replace(leader_entry, sender=3))
    other = cluster.sim.core(1)._build_block([])  # a different block B
    sync = cluster.signed(
        Sync(sender=1, regency=1, height=1, block=other, stop_data=(leader_entry, stand_in, third)),
    )
    r0.step(sync)
    assert "unsigned STOP-DATA" in _evidence(cluster, 0)
    assert 1 not in r0.proposals


def test_catch_up_refuses_a_certified_header_with_a_forged_body() -> None:
    cluster = ScriptedCluster()
    _decide(cluster, 2, without=3)
    r3 = cluster.sim.core(3)
    good = cluster.sim.core(0).log[1]
    forged = tuple(
        dataclasses.replace(r, request_number=10**12, signature=b"") for r in good.block.requests
    )
    bad = DecidedBlock(
        block=Block(header=good.block.header, requests=forged), certificate=good.certificate
    )
    effects = r3.step(cluster.signed(Blocks(sender=1, checkpoint=None, blocks=(bad,))))
    assert r3.decided_height == 0 and not effects.persist
    assert "forged body" in _evidence(cluster, 3)
    r3.step(cluster.signed(Blocks(sender=1, checkpoint=None, blocks=(good,))))
    assert r3.decided_height == 1  # the genuine block still goes through


def test_a_garbage_checkpoint_snapshot_changes_nothing() -> None:
    cluster = ScriptedCluster()
    _decide(cluster, 2)
    _decide(cluster, 8, without=3)  # the others pass checkpoint h8 without r3
    r3 = cluster.sim.core(3)
    checkpoint = cluster.sim.core(0).base_checkpoint
    assert checkpoint is not None and r3.decided_height == 2
    before = r3.sm.state_hash()
    r3.step(
        cluster.signed(
            Blocks(
                sender=2, checkpoint=dataclasses.replace(checkpoint, snapshot=b"garbage"), blocks=()
            ),
        )
    )
    assert "checkpoint snapshot rejected" in _evidence(cluster, 3)
    assert r3.sm.state_hash() == before == r3.last_header.state_hash
    third = next(
        r.decided
        for r in cluster.sim.disks[0]
        if isinstance(r, DecidedRecord) and r.decided.block.header.height == 3
    )
    r3.step(cluster.signed(Blocks(sender=2, checkpoint=None, blocks=(third,))))
    assert r3.decided_height == 3


def test_replicas_meet_again_after_a_long_total_outage() -> None:
    cluster = ScriptedCluster()
    _decide(cluster, 1)
    cluster.run("request client=0 transfers=1")
    cluster.run("deliver type=Request")
    for _ in range(20_000):  # every message lost: each replica times out alone, again and again
        cluster.run("tick")
        cluster.queue.clear()
    assert all(cluster.sim.core(i).stop_sent <= cluster.sim.core(i).regency + 4 for i in range(4))
    for _ in range(2_000):
        cluster.run("tick")
        cluster.run("stabilize")
        if all(cluster.sim.core(i).decided_height >= 2 for i in range(4)):
            break
    assert all(cluster.sim.core(i).decided_height >= 2 for i in range(4))


def test_far_future_messages_cannot_fill_the_buffer() -> None:
    cluster = ScriptedCluster()
    r0 = cluster.sim.core(0)
    digest = bytes(32)
    for height in range(2, 3000):
        r0.step(cluster.signed(Accept(sender=1, regency=0, height=height, digest=digest)))
    for regency in range(1, 3000):
        r0.step(cluster.signed(Stop(sender=1, regency=regency)))
    assert len(r0.future) <= r0.cfg.future_messages_max // r0.n
    assert max(r0.stops, default=0) <= r0.regency + r0.n + 1


# ------------------------------------------------- second review, same method


def test_a_restart_keeps_the_write_proof_of_the_open_height() -> None:
    """All honest: a restart must not forget a proof, or a regency change forks."""
    cluster = ScriptedCluster()
    core = cluster.sim.core
    _decide(cluster, 1)  # a decided block after the last checkpoint, replayed on restart
    cluster.run("request client=0 transfers=2")
    cluster.run("deliver type=Request")
    cluster.run("deliver type=Propose")
    cluster.run("drop type=Write to=3")
    cluster.run("deliver type=Write")  # r0, r1, r2 hold proofs for D and ACCEPT
    cluster.run("deliver type=Accept to=0")  # only r0 decides D
    cluster.queue.clear()
    decided = core(0).log[2].block.digest
    for replica in (1, 2):
        cluster.run(f"crash {replica}")
        cluster.run(f"restart {replica}")
        proof = core(replica).best_proof
        assert proof is not None and proof.height == 2 and proof.block.digest == decided
    # r0 falls silent; the others change regency and must re-propose D.
    cluster.run("request client=1 transfers=1")
    for _ in range(400):
        cluster.run("tick")
        cluster.queue = [i for i in cluster.queue if "r0" not in i[:2]]
        for _ in range(50):
            batch, cluster.queue = cluster.queue, []
            for item in batch:
                if "r0" not in item[:2]:
                    cluster._deliver_one(*item)
            if not cluster.queue:
                break
        if all(core(i).decided_height >= 2 for i in (1, 2, 3)):
            break
    assert [core(i).log[2].block.digest for i in (1, 2, 3)] == [decided] * 3


def test_future_stop_data_cannot_overflow_the_buffer() -> None:
    cluster = ScriptedCluster()
    r0 = cluster.sim.core(0)
    genesis = cluster.sim.genesis.header
    for k in range(1, 600):
        r0.step(
            cluster.signed(
                StopData(
                    sender=1,
                    regency=4 * k,
                    decided_height=0,
                    decided_header=genesis,
                    decided_certificate=None,
                    proof=None,
                ),
            )
        )
    assert len(r0.future) <= r0.cfg.future_messages_max // r0.n
    digest = bytes(32)
    r0.step(cluster.signed(Accept(sender=2, regency=0, height=2, digest=digest)))  # no crash


def test_following_a_regency_by_sync_still_waits_for_its_sync() -> None:
    """A lagging replica that adopts a regency from a SYNC must not take a plain PROPOSE."""
    cluster = ScriptedCluster()
    _decide(cluster, 1, without=3)
    r = [cluster.sim.core(i) for i in range(4)]
    for sender in (0, 1, 2):
        stop = cluster.signed(Stop(sender=sender, regency=1))
        for target in (0, 2):
            if target != sender:
                cluster._handle(target, r[target].step(stop))
    stop_data = [m for _, dst, m in cluster.queue if isinstance(m, StopData) and dst == "r1"]
    cluster.queue.clear()
    leader_entry = cluster.signed(
        StopData(
            sender=1,
            regency=1,
            decided_height=1,
            decided_header=r[0].last_header,
            decided_certificate=r[0].last_certificate,
            proof=None,
        ),
    )
    sync = cluster.signed(
        Sync(
            sender=1,
            regency=1,
            height=2,
            block=r[1]._build_block([]),
            stop_data=(stop_data[0], leader_entry, stop_data[1]),
        ),
    )
    r[3].step(sync)
    assert r[3].regency == 1 and r[3].in_sync  # adopted, and waiting for that regency's SYNC
    other = ScriptedCluster().sim.core(1)._build_block([])  # a block for the decided height 1
    effects = r[3].step(cluster.signed(Propose(sender=1, regency=1, height=1, block=other)))
    assert not any(isinstance(s.message, Write) for s in effects.send)


# ------------------------------------------------- third review (random adversarial driver)


def test_replicas_stranded_in_different_regencies_meet_again() -> None:
    """Honest replicas at regencies 0, 3 and 4 with the fourth silent must converge."""
    cluster = ScriptedCluster()
    core = cluster.sim.core
    cluster.run("crash 1")  # the Byzantine replica says nothing from now on

    def install(replica: int, regency: int, signers: tuple[int, ...]) -> None:
        for signer in signers:
            core(replica).step(cluster.signed(Stop(sender=signer, regency=regency)))
        assert core(replica).regency == regency

    install(0, 4, (1, 2, 3))  # r0 saw a quorum for 4 that r2 and r3 never completed
    install(3, 3, (0, 1, 2))
    cluster.queue.clear()
    cluster.run("request client=0 transfers=1")
    cluster.run("deliver type=Request")
    for _ in range(8_000):  # alone, each times out up to the cap of its own regency
        cluster.run("tick")
        cluster.queue.clear()
    assert [core(i).regency for i in (0, 2, 3)] == [4, 0, 3]
    assert [core(i).stop_sent for i in (0, 2, 3)] == [8, 4, 7]
    for _ in range(6_000):  # regency timeouts have grown to 3840 ticks by now
        cluster.run("tick")
        cluster.run("stabilize")
        if all(core(i).decided_height >= 1 for i in (0, 2, 3)):
            break
    assert all(core(i).decided_height >= 1 for i in (0, 2, 3))
    assert len({core(i).regency for i in (0, 2, 3)}) == 1
