"""The fallback (Raft) core and the mode controller, driven message by message.

Covers the persistence contract (term, vote and log durable before answers:
the restart bugs PySyncObj has must be impossible here), the vote rules
(BFT-final height, log up to date), the BFT-final floor, and bad input from a
fallback leader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from consensus.effects import EntryRecord, TermRecord
from consensus.messages import (
    AppendEntries,
    Block,
    Finality,
    LogEntry,
    Propose,
    RequestVote,
    Vote,
)
from consensus.mode import TRANSITIONS, Event, Mode, ModeController, ModeError
from sim.script import ScriptedCluster


def _cluster() -> ScriptedCluster:
    cluster = ScriptedCluster(fallback=True)
    for replica in range(4):
        cluster._handle(replica, cluster.sim.controller(replica).fall_back_now())
    return cluster


def _node(cluster: ScriptedCluster, replica: int) -> ModeController:
    return cluster.sim.controller(replica)


def _elect(cluster: ScriptedCluster, leader: int) -> None:
    """Let ``leader`` campaign first and win; deliver everything."""
    _node(cluster, leader).raft.election_deadline = 0
    cluster.run(f"tick replica={leader}")
    cluster.run("stabilize")
    assert _node(cluster, leader).raft.role == "leader"


def _commit_one(cluster: ScriptedCluster, client: int = 0) -> None:
    """A request, appended and committed; a heartbeat later the followers know it."""
    cluster.run(f"request client={client} transfers=2")
    cluster.run("deliver type=Request")
    cluster.run("stabilize")
    for _ in range(7):
        cluster.run("tick")
        cluster.run("stabilize")


def test_a_vote_is_durable_in_the_same_effects_that_send_it() -> None:
    cluster = _cluster()
    voter = _node(cluster, 1).raft
    term = voter.term + 1
    request = RequestVote(sender=2, term=term, final_height=0, last_height=0, last_term=0)
    effects = voter.step(cluster.signed(request))  # type: ignore[arg-type]
    votes = [s.message for s in effects.send if isinstance(s.message, Vote)]
    assert votes and votes[0].granted
    assert TermRecord(term=term, voted_for=2) in effects.persist


def test_a_restarted_replica_never_votes_twice_in_one_term() -> None:
    cluster = _cluster()
    disk = cluster.sim.disks[1]
    term = _node(cluster, 1).raft.term + 1
    first = RequestVote(sender=2, term=term, final_height=0, last_height=0, last_term=0)
    cluster._handle(1, _node(cluster, 1).raft.step(cluster.signed(first)))  # type: ignore[arg-type]
    cluster.run("crash 1")
    cluster.run("restart 1")
    restarted = _node(cluster, 1)
    assert restarted.raft.term == term and restarted.raft.voted_for == 2  # from its disk
    cluster._handle(1, restarted.fall_back_now())
    second = RequestVote(sender=3, term=term, final_height=0, last_height=0, last_term=0)
    effects = restarted.raft.step(cluster.signed(second))  # type: ignore[arg-type]
    votes = [s.message for s in effects.send if isinstance(s.message, Vote)]
    assert votes and not votes[0].granted
    assert len(disk) > 0


def test_acknowledged_entries_survive_a_restart() -> None:
    cluster = _cluster()
    _elect(cluster, 0)
    _commit_one(cluster)
    follower = _node(cluster, 2).raft
    assert follower.commit_height > follower.base
    held = [e.block.digest for e in follower.log]
    cluster.run("crash 2")
    cluster.run("restart 2")
    assert [e.block.digest for e in _node(cluster, 2).raft.log] == held
    assert any(isinstance(r, EntryRecord) for r in cluster.sim.disks[2])


def test_provisional_commits_answer_clients_at_provisional_level() -> None:
    cluster = _cluster()
    _elect(cluster, 0)
    cluster.run("request client=1 transfers=2")
    cluster.run("deliver type=Request")
    replies = []
    for _ in range(50):
        if not cluster.queue:
            break
        batch, cluster.queue = cluster.queue, []
        for item in batch:
            if item[1].startswith("c"):
                replies.append(item[2])
            else:
                cluster._deliver_one(*item)
    provisional = [r for r in replies if getattr(r, "level", None) == Finality.PROVISIONAL]
    assert len({r.replica_id for r in provisional}) >= 3  # a majority answered
    assert all(r.certificate is None for r in provisional)


def test_votes_need_the_candidates_bft_final_height_and_an_up_to_date_log() -> None:
    cluster = _cluster()
    _elect(cluster, 0)
    _commit_one(cluster)
    voter = _node(cluster, 1).raft
    term = voter.term + 1
    stale = RequestVote(sender=3, term=term, final_height=0, last_height=0, last_term=0)
    effects = voter.step(cluster.signed(stale))  # type: ignore[arg-type]
    assert not next(s.message for s in effects.send if isinstance(s.message, Vote)).granted
    voter.base = 5  # as if BFT had decided up to height 5 here
    behind = RequestVote(
        sender=2, term=term + 1, final_height=4, last_height=9, last_term=voter.last_term + 9
    )
    effects = voter.step(cluster.signed(behind))  # type: ignore[arg-type]
    assert not next(s.message for s in effects.send if isinstance(s.message, Vote)).granted


def test_entries_at_or_below_the_bft_final_height_are_never_taken() -> None:
    cluster = _cluster()
    _elect(cluster, 0)
    _commit_one(cluster)
    follower = _node(cluster, 2).raft
    before = list(follower.log)
    leader = _node(cluster, 0).raft
    assert leader.election is not None
    below = AppendEntries(
        sender=0,
        term=leader.term,
        prev_height=follower.base - 1 if follower.base else 0,
        prev_digest=bytes(32),
        entries=tuple(leader.log),
        commit_height=leader.commit_height,
        election=leader.election,
    )
    follower.step(cluster.signed(below))  # type: ignore[arg-type]
    assert follower.log == before
    with pytest.raises(AssertionError, match="below the BFT-final height"):
        follower._truncate(follower.base)


def test_a_fallback_leader_that_equivocates_or_forges_is_evidence_and_changes_nothing() -> None:
    cluster = _cluster()
    _elect(cluster, 0)
    _commit_one(cluster)
    follower = _node(cluster, 2).raft
    leader = _node(cluster, 0).raft
    assert leader.election is not None
    held = list(follower.log)
    entry = held[-1]
    # Same height, same term, another block: a twin the leader must never send.
    header = entry.block.header
    twin_header = dataclasses.replace(header, timestamp=header.timestamp + 1)
    twin = LogEntry(term=entry.term, block=Block(header=twin_header, requests=entry.block.requests))
    prev = entry.block.header.height - 1
    equivocation = AppendEntries(
        sender=0,
        term=leader.term,
        prev_height=prev,
        prev_digest=follower._digest_at(prev),
        entries=(twin,),
        commit_height=leader.commit_height,
        election=leader.election,
    )
    before = follower.evidence_count
    follower.step(cluster.signed(equivocation))  # type: ignore[arg-type]
    assert follower.evidence_count == before + 1 and "two blocks" in follower.evidence[-1]
    assert follower.log == held
    # A block whose header does not match its execution, at the next height.
    bad = dataclasses.replace(entry.block.header, height=entry.block.header.height + 1)
    forged = dataclasses.replace(
        equivocation,
        prev_height=entry.block.header.height,
        prev_digest=entry.block.digest,
        entries=(LogEntry(term=leader.term, block=Block(header=bad, requests=())),),
    )
    follower.step(cluster.signed(forged))  # type: ignore[arg-type]
    assert "invalid fallback block" in follower.evidence[-1]
    assert follower.log == held
    # An append signed by someone else, and one without an election behind it.
    unsigned = dataclasses.replace(forged, signature=b"\x00" * 64)
    follower.step(unsigned)
    assert "bad signature" in follower.evidence[-1]
    no_election = dataclasses.replace(
        forged, term=leader.term + 5, election=dataclasses.replace(leader.election, votes=())
    )
    follower.step(cluster.signed(no_election))  # type: ignore[arg-type]
    assert "without an election" in follower.evidence[-1]
    assert follower.log == held


def test_the_mode_table_is_explicit_and_refuses_other_events() -> None:
    assert TRANSITIONS == {
        (Mode.BFT, Event.STALLED): Mode.FALLBACK,
        (Mode.FALLBACK, Event.BFT_PROGRESS): Mode.BFT,
    }
    cluster = _cluster()
    node = _node(cluster, 0)
    assert node.mode is Mode.FALLBACK and node.metrics.fallback_epochs == 1
    with pytest.raises(ModeError):
        node._transition(Event.STALLED)


def test_bft_progress_ends_fallback_and_recertifies_the_suffix() -> None:
    cluster = _cluster()
    _elect(cluster, 0)
    _commit_one(cluster)
    provisional = {e.block.digest for e in _node(cluster, 1).raft.log}
    assert provisional
    for replica in range(4):  # the network is whole: a regency change takes over
        cluster._handle(replica, _node(cluster, replica).bft.request_regency_change())
    cluster.run("stabilize")
    for _ in range(5):
        cluster.run("tick")
        cluster.run("stabilize")
    for replica in range(4):
        node = _node(cluster, replica)
        assert node.mode is Mode.BFT
        final = {node.bft.log[h].block.digest for h in node.bft.log}
        assert provisional <= final
        assert node.metrics.recertified_blocks == len(provisional)


def _provisional_suffix(cluster: ScriptedCluster, blocks: int) -> list[Block]:
    """``blocks`` fallback blocks committed while presence gossip is lost, so the
    fallback does not see q replicas reachable and stays on."""
    _elect(cluster, 0)
    for client in range(blocks):
        cluster.run(f"request client={client} transfers=2")
        while len(_node(cluster, 1).raft.log) <= client:
            cluster.run("tick")
            cluster.run("drop type=Presence")
            cluster.run("stabilize")
    suffix = [e.block for e in _node(cluster, 1).raft.log]
    assert len(suffix) == blocks
    assert all(_node(cluster, r).bft.decided_height == 0 for r in range(4))
    return suffix


def _heal(cluster: ScriptedCluster, until: Callable[[], bool]) -> None:
    """Presence flows again: the fallback hands back to BFT.  Every PROPOSE is lost."""
    for _ in range(50):
        if until():
            return
        cluster.run("tick")
        while cluster.queue and not until():
            source, target, message = cluster.queue.pop(0)
            if not isinstance(message, Propose):
                cluster._deliver_one(source, target, message)
    raise AssertionError("the heal did not get there in 50 ticks")


def test_followers_take_the_sync_suffix_as_proposed() -> None:
    """The SYNC commits its leader to the whole suffix: with every PROPOSE lost,
    re-certification still finishes, in the one regency, on every replica."""
    cluster = _cluster()
    suffix = _provisional_suffix(cluster, 3)
    top = suffix[-1].header.height
    _heal(cluster, lambda: all(_node(cluster, r).bft.decided_height == top for r in range(4)))
    assert {_node(cluster, r).bft.regency for r in range(4)} == {1}, "one regency change only"
    for replica in range(4):
        bft = _node(cluster, replica).bft
        assert [bft.log[h].block.digest for h in range(1, top + 1)] == [b.digest for b in suffix]
        assert not bft.evidence


def test_a_propose_other_than_the_sync_suffix_is_refused_without_blame() -> None:
    """The follower WROTE the suffix block and never WRITEs another in that regency.
    It does not blame the leader: a leader restarted after its SYNC no longer knows
    the suffix and may honestly propose something else."""
    cluster = _cluster()
    suffix = _provisional_suffix(cluster, 2)
    _heal(cluster, lambda: _node(cluster, 2).bft.decided_height == 1)
    follower = _node(cluster, 2).bft
    assert follower.leader != follower.id
    assert follower.proposals[follower.regency].digest == suffix[1].digest  # WROTE it
    leader = _node(cluster, follower.leader).bft
    forged = leader._build_block([])
    assert forged is not None and forged.digest != suffix[1].digest
    propose = Propose(
        sender=leader.id, regency=follower.regency, height=follower.height, block=forged
    )
    effects = follower.step(cluster.signed(propose))  # type: ignore[arg-type]
    assert not follower.evidence
    assert follower.proposals[follower.regency].digest == suffix[1].digest
    assert not [s for s in effects.send if type(s.message).__name__ == "Write"]
    assert any("differs from the SYNC suffix" in line for line in effects.trace)


def test_a_new_fallback_epoch_forgets_the_sync_suffix() -> None:
    """A follower that falls back mid re-certification casts no BFT vote from the
    old SYNC's suffix: the fallback log may move on, and the next regency's SYNC
    re-certifies what is current."""
    cluster = _cluster()
    suffix = _provisional_suffix(cluster, 3)
    _heal(cluster, lambda: _node(cluster, 2).bft.decided_height == 1)
    node = _node(cluster, 2)
    assert node.bft.reproposals  # mid re-certification
    cluster._handle(2, node.fall_back_now())
    assert node.mode is Mode.FALLBACK
    assert not node.bft.reproposals and node.bft.reproposal_regency == -1
    assert node.bft.timers_paused  # and _follow_sync_suffix stays out of fallback
    assert suffix[1].digest in {e.block.digest for e in node.raft.log}  # kept as fallback log
