"""Retransmission: each message on its own clock, backing off, only to peers that lack it.

All of a replica's unanswered messages used to go again together every
``retransmit_ticks``, counted from the last retransmission: right after an idle spell
every new vote went twice at the next tick, and under load (an instance of 400 ms
against 80 ms) a whole block went several times per instance to followers still
executing it.  A benchmark follower received 145 PROPOSEs for 22 heights.
"""

from __future__ import annotations

from consensus.messages import Propose, Stop, Write
from sim.script import ScriptedCluster


def _sent(cluster: ScriptedCluster, source: int, kind: type) -> list[tuple[str, object]]:
    return [(t, m) for s, t, m in cluster.queue if s == f"r{source}" and isinstance(m, kind)]


def _proposed_after_idle(idle_ticks: int) -> ScriptedCluster:
    cluster = ScriptedCluster()
    cluster.run(f"tick count={idle_ticks}")
    cluster.queue.clear()
    cluster.run("request client=0 transfers=1")
    cluster.run("deliver type=Request to=0")
    assert len(_sent(cluster, 0, Propose)) == 3
    return cluster


def test_a_new_vote_is_not_sent_again_at_the_next_tick_after_an_idle_spell() -> None:
    cluster = _proposed_after_idle(100)
    cluster.queue.clear()
    cluster.run("tick count=1 replica=0")
    assert not _sent(cluster, 0, Propose)
    assert not _sent(cluster, 0, Write)


def test_the_proposal_goes_again_only_to_the_peers_that_did_not_write() -> None:
    cluster = _proposed_after_idle(0)
    cluster.run("drop type=Propose to=3")  # lost on its way to r3
    cluster.run("deliver type=Propose")
    cluster.run("deliver type=Write to=0 from=1")  # r0 hears r1's WRITE, not r2's
    cluster.queue.clear()
    cluster.run(f"tick count={cluster.sim.core(0).cfg.retransmit_ticks} replica=0")
    again = sorted(target for target, _ in _sent(cluster, 0, Propose))
    assert again == ["r2", "r3"]
    cluster.run("stabilize")
    assert [cluster.sim.core(i).decided_height for i in range(4)] == [1, 1, 1, 1]


def test_a_message_that_gets_no_answer_is_resent_less_and_less_often() -> None:
    cluster = ScriptedCluster()
    cluster.run("request client=0 transfers=1")
    cluster.run("deliver type=Request to=1")  # only r1 knows of it: it asks for a new regency
    cluster.queue.clear()
    core = cluster.sim.core(1)
    first_stop: int | None = None
    resent_at: list[int] = []
    for _ in range(400):
        cluster.run("tick replica=1")  # r1 is cut off: nothing it sends arrives
        stops = [m for _, m in _sent(cluster, 1, Stop) if isinstance(m, Stop) and m.regency == 1]
        if stops and first_stop is None:
            first_stop = core.ticks
        elif stops:
            resent_at.append(core.ticks)
        cluster.queue.clear()
    assert first_stop is not None
    gaps = [b - a for a, b in zip([first_stop, *resent_at], resent_at, strict=False)]
    step, cap = core.cfg.retransmit_ticks, core.cfg.retransmit_ticks_max
    assert gaps[:4] == [step, 2 * step, 4 * step, cap]
    assert set(gaps[3:]) == {cap}, "never further apart than the bound"


def test_a_regency_that_decides_resets_the_regency_change_backoff() -> None:
    """Each regency change that times out doubles the next one's wait (up to 64x); a
    block decided in the replica's regency shows the cluster works again, so the wait
    starts over.  It used to stay doubled for the life of the process: after one long
    outage every later leader failure took up to 64 regency timeouts to notice."""
    cluster = ScriptedCluster()
    cluster.run("request client=0 transfers=1")
    cluster.run("deliver type=Request to=1")  # only r1 knows of it: it asks for a new regency
    core = cluster.sim.core(1)
    base = core.cfg.regency_timeout_ticks
    for _ in range(8 * base):
        cluster.run("tick replica=1")  # r1 is cut off: its regency changes go nowhere
        cluster.queue.clear()
    assert core.failed_regencies >= 2
    assert core._regency_timeout() >= 4 * base
    cluster.run("request client=1 transfers=1")
    cluster.run("stabilize")  # the link is back: regency 0 decides, r1 with it
    assert core.decided_height >= 1 and core.regency == 0
    assert core.failed_regencies == 0
    assert core._regency_timeout() == base
